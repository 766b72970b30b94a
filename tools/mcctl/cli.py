"""`mcctl get ...`: what one node's agent knows, over its local API.

    mcctl [--socket PATH | --node NODE] get podmulticaststats [POD] [-n NS] [-o json|yaml|wide]
    mcctl get policystats [POLICY] [-n NS] [-o json|yaml]
    mcctl get members | groups | pods | flows
    mcctl [--kubeconfig PATH] get multicastgroups [-o json|yaml]   # the cluster view, from the API

Columns are contracts (DESIGN.md §5): podmulticaststats prints NAMESPACE NAME INBOUND OUTBOUND;
pods prints NAMESPACE NAME IP PRIMARY-IP OFPORT INTERFACE; policystats prints NAMESPACE POLICY RULE
ACTION PACKETS BYTES (NAMESPACE ``-`` for cluster-scoped policies), one row per rule the node
enforces.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from agent.api.client import AgentClient
from agent.api.types import ApiError
from tools.mcctl.format import join_limited, structured, table

DEFAULT_SOCKET = "/var/run/kube-mcast/agent.sock"


class UsageError(Exception):
    pass


def _socket(args: argparse.Namespace) -> str:
    if args.node:
        from tools.mclab import state as lab_state  # the lab knows where each node's socket is

        lab = lab_state.load()
        if lab is None:
            raise UsageError("--node needs a running mclab lab")
        try:
            return lab.node(args.node).api_socket
        except KeyError as e:
            raise UsageError(str(e.args[0])) from None
    return args.socket or os.environ.get("MCCTL_SOCKET", DEFAULT_SOCKET)


def _podstats(client: AgentClient, args: argparse.Namespace) -> str:
    if args.name and not args.namespace:
        raise UsageError("a pod name needs its namespace: -n NAMESPACE")
    rows = client.pod_stats()
    if args.namespace:
        rows = [r for r in rows if r["namespace"] == args.namespace]
    if args.name:
        rows = [r for r in rows if r["name"] == args.name]
        if not rows:
            raise ApiError(404, f"pod {args.namespace}/{args.name} not found")
    if args.output in ("json", "yaml"):
        return structured(rows, args.output)
    headers = ["NAMESPACE", "NAME", "INBOUND", "OUTBOUND"]
    if args.output == "wide":
        pods = {(p.namespace, p.name): p for p in client.list_pods()}
        headers += ["SPOOFED", "NOT-MULTICAST", "IGMP-RATE-DROPS", "OVERSIZED", "IP", "OFPORT",
                    "INTERFACE"]
        return table(headers, [
            [r["namespace"], r["name"], r["inbound"], r["outbound"], *_drops(r),
             *_pod_extra(pods.get((r["namespace"], r["name"])))] for r in rows])
    return table(headers, [[r["namespace"], r["name"], r["inbound"], r["outbound"]]
                           for r in rows])


def _drops(row: dict[str, Any]) -> list[object]:
    """Packets br-int dropped from the pod, by reason (an older agent reports none).

    OVERSIZED: multicast larger than the pod may send (it would not fit the tunnel)."""
    d = row.get("dropped", {})
    return [d.get("spoofed", ""), d.get("notMulticast", ""), d.get("igmpRate", ""),
            d.get("oversized", "")]


def _pod_extra(pod: object | None) -> list[object]:
    if pod is None:
        return ["", "", ""]
    return [pod.ip or "<none>", pod.ofport, pod.host_ifname]  # type: ignore[attr-defined]


def _policystats(client: AgentClient, args: argparse.Namespace) -> str:
    """The node's view of its policy rules: packets and bytes each rule decided here."""
    rows = client.policy_stats()
    if args.namespace:
        rows = [r for r in rows if r["namespace"] == args.namespace]
    if args.name:
        rows = [r for r in rows if r["policy"] == args.name]
    rows.sort(key=lambda r: (r["namespace"] or "-", r["policy"], r["direction"], r["index"]))
    if args.output in ("json", "yaml"):
        return structured(rows, args.output)
    return table(["NAMESPACE", "POLICY", "RULE", "ACTION", "PACKETS", "BYTES"],
                 [[r["namespace"] or "-", r["policy"], r["rule"], r["action"], r["packets"],
                   r["bytes"]] for r in rows])


def _members(client: AgentClient, args: argparse.Namespace) -> str:
    rows = client.members()
    if args.output in ("json", "yaml"):
        return structured(rows, args.output)
    return table(["GROUP", "LOCAL ENDPOINTS", "REMOTE NODES"], [
        [r["group"], ",".join(r["localPods"]) or "<none>", ",".join(r["remoteNodes"]) or "<none>"]
        for r in rows])


def _groups(client: AgentClient, args: argparse.Namespace) -> str:
    rows = [r for r in client.members() if r["localPods"]]
    if args.output in ("json", "yaml"):
        return structured([{"group": r["group"], "pods": r["localPods"]} for r in rows],
                          args.output)
    return table(["GROUP", "PODS"], [[r["group"], join_limited(r["localPods"])] for r in rows])


def _pods(client: AgentClient, args: argparse.Namespace) -> str:
    pods = client.list_pods()
    if args.output in ("json", "yaml"):
        return structured([p.__dict__ for p in pods], args.output)
    # IP: the multicast interface's address (the source its datagrams carry); PRIMARY-IP: the
    # pod's address on its primary network (equal in chained and Multus mode, or "<none>")
    return table(["NAMESPACE", "NAME", "IP", "PRIMARY-IP", "OFPORT", "INTERFACE"],
                 [[p.namespace, p.name, p.ip or "<none>", p.primary_ip or "<none>", p.ofport,
                   p.host_ifname] for p in pods])


def _flows(client: AgentClient, args: argparse.Namespace) -> str:
    return "\n".join(client.flows())


MCG = ("multicast.kube-mcast.io", "v1alpha1", "multicastgroups")


def _kubeconfig(args: argparse.Namespace) -> str | None:
    """--kubeconfig, else $KUBECONFIG, else a running lab's, else the client's default."""
    if args.kubeconfig or os.environ.get("KUBECONFIG"):
        return str(args.kubeconfig or os.environ["KUBECONFIG"])
    from tools.mclab import control
    from tools.mclab import state as lab_state

    lab = lab_state.load()
    return str(control.kubeconfig_path()) if lab is not None and lab.control_plane else None


def _multicastgroups(args: argparse.Namespace) -> str:
    """``GROUP  PODS``: every MulticastGroup object the controller keeps."""
    from kubernetes import client as k8s
    from kubernetes import config as k8s_config
    from kubernetes.client.rest import ApiException

    try:
        api = k8s.CustomObjectsApi(k8s_config.new_client_from_config(_kubeconfig(args)))
        listed: dict[str, Any] = api.list_cluster_custom_object(*MCG)  # type: ignore[assignment]
        items = listed["items"]
    except (ApiException, k8s_config.ConfigException, OSError) as e:
        raise ApiError(503, f"cannot list multicastgroups: {e}") from None
    rows = sorted((i.get("status") or {} for i in items), key=lambda st: st.get("group", ""))
    if args.output in ("json", "yaml"):
        return structured(rows, args.output)
    return table(["GROUP", "PODS"], [[r.get("group", ""), r.get("podsSummary", "")]
                                     for r in rows])


RESOURCES = {
    "podmulticaststats": _podstats,
    "policystats": _policystats,
    "members": _members,
    "groups": _groups,
    "pods": _pods,
    "flows": _flows,
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mcctl", description="Inspect a kube-mcast agent")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--socket", help=f"agent API socket (default {DEFAULT_SOCKET})")
    where.add_argument("--node", help="a node of the local mclab lab")
    p.add_argument("--kubeconfig", help="for multicastgroups (default $KUBECONFIG, the lab's)")
    sub = p.add_subparsers(dest="verb", required=True)
    get = sub.add_parser("get")
    get.add_argument("resource", choices=sorted([*RESOURCES, "multicastgroups"]))
    get.add_argument("name", nargs="?")
    get.add_argument("-n", "--namespace")
    get.add_argument("-o", "--output", choices=["json", "yaml", "wide"])
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.resource == "multicastgroups":
            print(_multicastgroups(args))
            return 0
        client = AgentClient(_socket(args), timeout=10)
        print(RESOURCES[args.resource](client, args))
    except UsageError as e:
        print(f"mcctl: {e}", file=sys.stderr)
        return 2
    except ApiError as e:
        print(f"mcctl: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
