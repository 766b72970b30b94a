#!/usr/bin/env bash
# The README's demo: installs what it needs, brings up a 3-node lab (own OVS + agent per node,
# all inside network namespaces), starts receivers on two nodes and an external host, sends
# multicast from a pod and shows who received what. The lab stays up for you to explore;
# `.venv/bin/mclab down` removes it. MODE=noencap for the noEncap variant.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "demo: run as root (namespaces, OVS)"; exit 1; }
  exec sudo -E "$0" "$@"
fi
tools/install.sh
MODE=${MODE:-encap}
PY=$PWD/.venv/bin/python
PROBE=$PWD/tools/mcprobe.py
mclab() { .venv/bin/mclab "$@"; }
mcctl() { .venv/bin/mcctl "$@"; }
G=239.10.10.10
N=20

mclab down
mclab up --nodes 3 --mode "$MODE" --query-interval 10s
mclab pod create sender --node node1 >/dev/null
for p in "recv-a node1" "recv-b node2" "recv-c node3" "idle node3"; do
  set -- $p; mclab pod create "$1" --node "$2" >/dev/null
done
ext_ip=$(mclab external create outside | tail -1)
mclab status
echo
echo "== unicast keeps using the pod's primary network (eth0): sender pings the outside host"
mclab exec sender -- ping -c 1 -W 2 "$ext_ip" | sed -n 2p
echo
echo "== a MulticastPolicy: pods labelled app=blocked may not join $G (their reports are dropped)"
mclab pod label recv-c app=blocked
kubectl --kubeconfig "$(mclab kubeconfig)" apply -f - <<POLICY
apiVersion: multicast.kube-mcast.io/v1alpha1
kind: MulticastPolicy
metadata: {name: no-feed-for-blocked, namespace: default}
spec:
  priority: 10
  appliedTo: [{podSelector: {matchLabels: {app: blocked}}}]
  egress:
    - {name: no-joins, action: Drop, protocols: [{igmp: {groupAddress: $G}}]}
POLICY
for i in $(seq 1 50); do   # until node3's agent enforces it
  mcctl --node node3 get policystats -o json | grep -q no-joins && break; sleep 0.2
done
echo
out=$(mktemp -d)
for r in recv-a recv-b recv-c outside; do
  mclab exec "$r" -- "$PY" "$PROBE" recv $G 5000 --duration 12 --idle 4 >"$out/$r.json" &
done
mclab exec idle -- "$PY" "$PROBE" recv 239.99.0.1 5000 --duration 12 --idle 4 >"$out/idle.json" &
for i in $(seq 1 50); do   # until node1's and node2's agents have seen their receivers
  n=$(for k in 1 2; do mcctl --node node$k get members -o json; done | grep -c "\"$G\"" || true)
  # and node1 the outside host's report on its uplink: only then do its pods' datagrams go out
  [ "$n" -ge 2 ] && mcctl --node node1 get members -o json | grep -q "\"$ext_ip\"" && break
  sleep 0.2
done
echo "== members seen by node1's agent"; mcctl --node node1 get members; echo
echo "== sender (node1) sends $N datagrams to $G"
mclab exec sender -- "$PY" "$PROBE" send $G 5000 --count $N --pps 20 --ttl 3 >/dev/null
echo; echo "== kubectl get multicastgroups (the controller's MulticastGroup objects, while joined)"
kubectl --kubeconfig "$(mclab kubeconfig)" get multicastgroups
wait
echo
echo "== who received what ($N sent to $G; idle joined another group; recv-c is blocked)"
"$PY" - "$out" <<'TABLE'
import json, sys
where = {"recv-a": "node1", "recv-b": "node2", "recv-c": "node3", "outside": "external",
         "idle": "node3"}
print(f"{'RECEIVER':<10} {'WHERE':<9} {'GROUP':<14} {'RECEIVED':>8}  FROM")
for name, node in where.items():
    with open(f"{sys.argv[1]}/{name}.json") as f:
        r = json.loads(f.read().strip().splitlines()[-1])
    print(f"{name:<10} {node:<9} {r['group']:<14} {r['n']:>8}  {', '.join(r['sources']) or '-'}")
TABLE
rm -rf "$out"
echo; echo "== policy rules on node3: mcctl --node node3 get policystats"
mcctl --node node3 get policystats
echo; echo "== per-pod counters on node1: mcctl --node node1 get podmulticaststats"
mcctl --node node1 get podmulticaststats
echo; echo "== why did 'idle' (node3) not get $G from node1?"
echo "   mcctl --node node3 trace --pod default/idle --group $G --from-node 192.168.77.1"
mcctl --node node3 trace --pod default/idle --group $G --from-node 192.168.77.1 | sed -n 1,5p
echo
echo "The lab is still up: try '.venv/bin/mclab status', '.venv/bin/mcctl --node node2 get flows',"
echo "'kubectl --kubeconfig \$(.venv/bin/mclab kubeconfig) get mcp'. Remove it: .venv/bin/mclab down"
