"""End-to-end tests of issue 4 on three-node labs: across nodes and beyond the cluster.

One lab per mode (``mclab up --nodes 3 --mode encap|noencap --query-interval 10s``), shared by
the tests of a class (``TestEncap``, ``TestNoEncap``); the tests both modes must pass live in
``_BothModes``, the encap-only ones in ``TestEncap`` (pytest runs inherited tests first, and the
test that kills node2's agent is the last one of the class). Pods ``n<i>s``, ``n<i>a``,
``n<i>b`` exist on every node ``i``; every test uses its own groups and ports, so tests never see
each other's traffic, and its own external host (a host that sends an IGMP query becomes a
multicast router port of the underlay bridge, which would then flood it with everything).

Traffic is real and counted at real receivers (``tools/mcprobe.py``, and
``tests/lab/many_groups.py`` for the 1000-group test); senders send N=10 datagrams at 2/s with
TTL 3 and then a burst of 1000 at 1000/s, and every member must count exactly N and then exactly
N + 1000. Non-members are AF_PACKET sniffers on the pod's multicast interface (no join): they
count frames the switch delivered. Remote members age out after 2 x 10 s + 5 s = 25 s without a
report.
Measured figures are printed as ``FIGURE ...`` lines (``pytest -rP`` shows them).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    PYTHON,
    Lab,
    Pod,
    Receiver,
    _teardown,
    figure,
    foreign_lab,
    fresh_lab,
    quiet,
    wait_for,
)

pytestmark = pytest.mark.lab

HERE = Path(__file__).resolve().parent
MANY_GROUPS = str(HERE / "many_groups.py")

NODES = 3
QUERY_INTERVAL = "10s"
AGING_S = 2 * 10 + 5  # robustness x query interval + max response (10 s / 2)
NODE_IP = {f"node{i}": f"192.168.77.{i}" for i in range(1, NODES + 1)}
TUNNEL = "mc-tun0"

N = 10
N_PPS = 2.0
BURST = 1000
BURST_PPS = 1000.0
TTL = 3
QUIET_S = 1.0  # after the expected count arrived: how long we watch for extra copies
LEAVE_BOUND_S = 5.0  # local group-specific query (~2 s) + agent-to-agent TO_IN{}
MANY = 1000


assert Lab.__module__ == "conftest" and Path(Lab.__init__.__code__.co_filename).parent == HERE, (
    "imported the wrong conftest module")



# ---------------------------------------------------------------------------- the lab


class MultiLab(Lab):
    """``Lab`` with what the cross-node tests ask of the agents (membership, debug dumps)."""

    # -- membership --------------------------------------------------------------------------

    def remote_nodes(self, node: str, group: str) -> set[str]:
        for row in self.mcctl_json(node, "members"):
            if row["group"] == group:
                return set(row["remoteNodes"])
        return set()

    def wait_joined(self, group: str, members: list[Pod], sender_node: str = "node1",
                    timeout: float = 10.0) -> None:
        """Every member is a local member on its node and, in encap, the sender's node lists
        exactly the other member nodes as remote members of ``group``."""
        by_node: dict[str, list[Pod]] = {}
        for p in members:
            by_node.setdefault(p.node, []).append(p)
        for node, pods in by_node.items():
            self.wait_members(node, group, pods, exact=True, timeout=timeout)
        want = {NODE_IP[n] for n in by_node if n != sender_node}
        if self.mode == "encap":
            wait_for(lambda: self.remote_nodes(sender_node, group) == want, timeout,
                     f"{sender_node} to list {sorted(want)} as remote members of {group} "
                     f"(now {sorted(self.remote_nodes(sender_node, group))})")
        else:  # the other nodes' reports upstream, heard on the sender's uplink
            wait_for(lambda: want <= self.outside_hosts(sender_node, group), timeout,
                     f"{sender_node} to hear {sorted(want)} report {group} on its uplink "
                     f"(now {sorted(self.outside_hosts(sender_node, group))})")

    # -- OVS counters ------------------------------------------------------------------------

    def tunnel_port(self, node: str) -> dict[str, int]:
        """rx/tx packets of the tunnel port of br-int (``ovs-ofctl dump-ports``)."""
        out = self.ofctl(node, "dump-ports", "br-int", TUNNEL)
        rx, tx = re.search(r"rx pkts=(\d+)", out), re.search(r"tx pkts=(\d+)", out)
        assert rx and tx, out
        return {"rx": int(rx.group(1)), "tx": int(tx.group(1))}

    def tunnel_data(self, node: str) -> int:
        """n_packets of the classifier flow taking multicast DATA in from the tunnel."""
        for line in self.ofctl(node, "dump-flows", "--names", "br-int").splitlines():
            if (f'in_port="{TUNNEL}"' in line or f"in_port={TUNNEL}" in line) \
                    and "nw_dst=224.0.0.0/4" in line and "nw_proto" not in line:
                m = re.search(r"n_packets=(\d+)", line)
                assert m, line
                return int(m.group(1))
        raise AssertionError(f"no tunnel data flow on {node}\n{self.debug(node)}")

    def remote_buckets(self, node: str, group: str) -> list[str]:
        """tun_dst of every bucket of the group ``group`` is routed to (sorted, repeats kept)."""
        gid = self.route_group(node, group)
        if gid is None:
            return []
        return sorted(ip for b in self.groups(node).get(gid, [])
                      for ip in re.findall(r"(\d+\.\d+\.\d+\.\d+)->tun_dst", b))

    def node_netns(self, node: str) -> str:
        return next(n["netns"] for n in self.state()["nodes"] if n["name"] == node)

    def metric(self, node: str, name: str, **labels: str) -> float:
        """One sample of the agent's Prometheus metrics (0 if absent)."""
        out = subprocess.run(["ip", "netns", "exec", self.node_netns(node), "curl", "-sf",
                              "http://127.0.0.1:9464/metrics"], capture_output=True, text=True,
                             timeout=10, check=True).stdout
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in out.splitlines():
            m = re.match(r"(\w+)(?:\{(.*)\})? (\S+)$", line)
            if m and m.group(1) == name and ",".join(sorted((m.group(2) or "").split(","))) \
                    == want:
                return float(m.group(3))
        return 0.0


@pytest.fixture(scope="class")
def mlab(request: pytest.FixtureRequest) -> Iterator[MultiLab]:
    """The class's three-node lab in mode ``cls.MODE`` with pods attached as ``cls.ATTACH``
    says (chained unless set), always taken down (and checked)."""
    lab_dir, prefix = fresh_lab()
    why = foreign_lab(prefix)
    if why:
        pytest.fail(why, pytrace=False)
    attach = getattr(request.cls, "ATTACH", "chained")
    lab = MultiLab(lab_dir, prefix, NODES, request.cls.MODE, QUERY_INTERVAL, attach)
    try:
        started = time.monotonic()
        lab.mclab("up", "--nodes", str(NODES), "--mode", lab.mode, "--attach", attach,
                  "--query-interval", QUERY_INTERVAL, timeout=120.0)
        figure(f"{lab.mode}/{attach}: mclab up --nodes {NODES} took "
               f"{time.monotonic() - started:.1f}s")
        yield lab
    finally:
        _teardown(lab)


@pytest.fixture(scope="class")
def pods(mlab: MultiLab) -> dict[str, Pod]:
    """``n<i>s`` (sender), ``n<i>a``, ``n<i>b`` on every node i."""
    return {f"n{i}{k}": mlab.create_pod(f"n{i}{k}", f"node{i}")
            for i in range(1, NODES + 1) for k in "sab"}


def grp(lab: MultiLab, test_no: int, k: int = 1) -> str:
    """Group k of test ``test_no``: distinct per test and per mode."""
    return f"239.{40 + (lab.mode == 'noencap')}.{test_no}.{k}"


# ---------------------------------------------------------------------------- traffic helpers


def settle(rxs: list[Receiver], want: int, timeout: float = 15.0, stall_s: float = 2.0
           ) -> list[int]:
    """Wait until every receiver counted ``want`` (or counts stopped moving for ``stall_s``),
    then watch QUIET_S longer for extra copies; the counts then."""
    deadline = time.monotonic() + timeout
    last: list[int] = []
    moved = time.monotonic()
    while True:
        now = time.monotonic()
        counts = [r.count() for r in rxs]
        if all(c >= want for c in counts) or now >= deadline:
            break
        if counts != last:
            last, moved = counts, now
        elif now - moved >= stall_s:
            break
        time.sleep(0.1)
    quiet(QUIET_S)
    return [r.count() for r in rxs]


def send_n_then_burst(lab: MultiLab, snd: Pod, group: str, port: int,
                      members: dict[str, Receiver], what: str) -> None:
    """N at 2/s, exactly N at each member; then BURST at 1000/s, exactly N + BURST at each."""
    rxs = list(members.values())
    lab.send(snd, group, port, N, N_PPS, ttl=TTL)
    counts = settle(rxs, N)
    assert counts == [N] * len(rxs), (
        f"{what}: after {N} datagrams at {N_PPS}/s: " + ", ".join(
            f"{name}={c}" for name, c in zip(members, counts, strict=True)))
    started = time.monotonic()
    lab.send(snd, group, port, BURST, BURST_PPS, ttl=TTL)
    counts = settle(rxs, N + BURST)
    burst = {name: c - N for name, c in zip(members, counts, strict=True)}
    figure(f"{lab.mode} {what}: burst of {BURST} at {BURST_PPS:.0f}/s delivered {burst} "
           f"(settled {time.monotonic() - started:.1f}s after the send began)")
    assert all(v == BURST for v in burst.values()), (
        f"{what}: burst of {BURST} at {BURST_PPS:.0f}/s, received per member: {burst}")


def ready(*rxs: Receiver) -> None:
    for r in rxs:
        r.wait_ready()


# ---------------------------------------------------------------------------- tcpdump


class Capture:
    """``tcpdump -tt -vv -l`` in a host, its packets collected as (timestamp, text)."""

    def __init__(self, lab: MultiLab, host: Pod, expr: str, seconds: int = 60) -> None:
        self.proc = lab.popen(host, "timeout", str(seconds), "tcpdump", "-i", host.iface, "-n",
                              "-l", "-tt", "-vv", expr)
        self.packets: list[tuple[float, str]] = []
        self.err: list[str] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read_out, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()
        wait_for(lambda: any("listening on" in e for e in self.err) or self._died(), 10.0,
                 "tcpdump to listen")

    def _died(self) -> bool:
        if self.proc.poll() is not None:
            pytest.fail(f"tcpdump exited {self.proc.returncode}: {self.err}", pytrace=False)
        return False

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            m = re.match(r"(\d+\.\d+) (.*)", line)
            with self._lock:
                if m:
                    self.packets.append((float(m.group(1)), m.group(2).strip()))
                elif self.packets:
                    ts, text = self.packets[-1]
                    self.packets[-1] = (ts, f"{text} {line.strip()}")

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.err.append(line)

    def find(self, pattern: str, after: float = 0.0) -> tuple[float, str] | None:
        rx = re.compile(pattern)
        with self._lock:
            return next(((ts, t) for ts, t in self.packets if ts >= after and rx.search(t)),
                        None)

    def text(self) -> str:
        with self._lock:
            return "\n".join(f"{ts:.6f} {t}" for ts, t in self.packets)


# A query sent by an external host: an AF_PACKET frame on its eth0 built by the agent's own
# IGMP code; prints the wall-clock time it was sent.
_SEND_QUERY = """
import socket, sys, time
from agent.multicast.igmp.packets import build_query
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
mac = s.getsockname()[4].hex(":")
frame = build_query(3, sys.argv[1], mac, max_resp_s=1.0)
t = time.time()
s.send(frame)
s.close()
print(t)
"""


# ---------------------------------------------------------------------------- tests

# name: (member pods, non-member pod, pod joined to another group); the sender is n1s (node1)
SCENARIOS = {
    "same-node": (["n1a", "n1b"], "n3a", "n2b"),
    "two-other-nodes": (["n2a", "n3a"], "n1a", "n2b"),
    "mixed": (["n1a", "n2a"], "n3a", "n1b"),
}


class _BothModes:
    MODE = ""

    @pytest.mark.parametrize("scenario", list(SCENARIOS))
    def test_pod_to_pods(self, mlab: MultiLab, pods: dict[str, Pod], scenario: str) -> None:
        no = 1 + list(SCENARIOS).index(scenario)
        g, g_other, port = grp(mlab, no), grp(mlab, no, 2), 6000 + 10 * no
        names, plain, joined_other = SCENARIOS[scenario]
        snd = pods["n1s"]
        members = {n: mlab.start_receiver(pods[n], g, port) for n in names}
        other_rx = mlab.start_receiver(pods[joined_other], g_other, port)
        sniffers = {n: mlab.start_sniffer(pods[n], g, port)
                    for n in (plain, joined_other, "n1s")}
        ready(*members.values(), other_rx, *sniffers.values())
        mlab.wait_joined(g, [pods[n] for n in names])
        mlab.wait_joined(g_other, [pods[joined_other]], sender_node=pods[joined_other].node)

        send_n_then_burst(mlab, snd, g, port, members, scenario)

        for name, rx in members.items():
            got = rx.stop()
            assert got["sources"] == {snd.ip: N + BURST}, f"{name}: {got}"
        assert other_rx.stop()["n"] == 0, f"{joined_other} (member of {g_other}) got {g}"
        seen = {n: s.stop()["n"] for n, s in sniffers.items()}
        assert seen == dict.fromkeys(sniffers, 0), (
            f"frames of {g} at non-members ({plain}: no group, {joined_other}: member of "
            f"{g_other}, n1s: the sender): {seen}")

    def test_pod_to_external(self, mlab: MultiLab, pods: dict[str, Pod]) -> None:
        g, port = grp(mlab, 4), 6040
        ext = mlab.create_external("x4")
        snd = pods["n1s"]
        members = {"external": mlab.start_receiver(ext, g, port),
                   "n2a": mlab.start_receiver(pods["n2a"], g, port)}  # a member inside too
        ready(*members.values())
        mlab.wait_joined(g, [pods["n2a"]])
        mlab.wait_outside("node1", g, [ext])  # its report, heard on node1's uplink

        send_n_then_burst(mlab, snd, g, port, members, "pod->external")

        want_src = NODE_IP["node1"] if mlab.mode == "encap" else snd.ip
        got = members["external"].stop()
        assert got["sources"] == {want_src: N + BURST}, (
            f"external receiver: want every datagram from {want_src} "
            f"({'node IP, SNAT' if mlab.mode == 'encap' else 'pod IP, no SNAT'}): {got}")
        inside = members["n2a"].stop()
        assert inside["sources"] == {snd.ip: N + BURST}, inside

    def test_external_to_pods(self, mlab: MultiLab, pods: dict[str, Pod]) -> None:
        g, g_other, port = grp(mlab, 5), grp(mlab, 5, 2), 6050
        ext = mlab.create_external("x5")
        members = {n: mlab.start_receiver(pods[n], g, port) for n in ("n1a", "n2a")}
        other_rx = mlab.start_receiver(pods["n1b"], g_other, port)
        sniffers = {n: mlab.start_sniffer(pods[n], g, port) for n in ("n3a", "n1b", "n2b")}
        ready(*members.values(), other_rx, *sniffers.values())
        for n in ("n1a", "n2a"):
            mlab.wait_members(pods[n].node, g, [pods[n]], exact=True)
        mlab.wait_members("node1", g_other, [pods["n1b"]], exact=True)

        send_n_then_burst(mlab, ext, g, port, members, "external->pods")

        for name, rx in members.items():
            got = rx.stop()
            assert got["sources"] == {ext.ip: N + BURST}, f"{name}: {got}"
        assert other_rx.stop()["n"] == 0
        seen = {n: s.stop()["n"] for n, s in sniffers.items()}
        assert seen == dict.fromkeys(sniffers, 0), f"frames of {g} at non-members: {seen}"

    def test_pod_traffic_leaves_by_the_uplink_only_while_outside_asks(
            self, mlab: MultiLab, pods: dict[str, Pod]) -> None:
        """RFC 4541 on the uplink (no querier there): while no outside host has reported G,
        none of a pod's datagrams to G leave its node (a sniffer on an outside host, joined to
        nothing, sees none); once one joins, all of them reach it; once it leaves, none again.
        Runs before the proxy test, whose query makes the uplink a router port for minutes."""
        g, port = grp(mlab, 12), 6120
        ext, snd = mlab.create_external("x12"), pods["n1s"]

        def leaves_nothing(when: str) -> None:
            sniffer = mlab.start_sniffer(ext, g, port).wait_ready()
            mlab.send(snd, g, port, N, ttl=TTL)
            time.sleep(QUIET_S)
            assert sniffer.stop()["n"] == 0, f"{when}: {g} left node1 with nobody outside asking"

        leaves_nothing("before any outside join")
        rx = mlab.start_receiver(ext, g, port).wait_ready()
        mlab.wait_outside("node1", g, [ext])
        mlab.send(snd, g, port, N, ttl=TTL)
        assert rx.wait_count(N) == N
        got = rx.stop()  # the socket closes: the host's kernel leaves (TO_IN {})
        assert got["n"] == N, got
        wait_for(lambda: not mlab.outside_hosts("node1", g), 10.0,
                 f"node1 to drop {ext.ip} from {g} after its leave")
        leaves_nothing("after the outside host left")

    def test_igmp_proxy_upstream(self, mlab: MultiLab, pods: dict[str, Pod]) -> None:
        g, port = grp(mlab, 6), 6060
        node_ip = NODE_IP["node1"]
        ext = mlab.create_external("x6")
        cap = Capture(mlab, ext, "igmp")

        # A pod on node1 joins: the agent reports the group upstream at once (TO_EX).
        started = time.time()
        rx = mlab.start_receiver(pods["n1a"], g, port).wait_ready()
        found = wait_for(lambda: cap.find(rf"^IP .*{re.escape(node_ip)} > 224\.0\.0\.22: igmp v3 "
                                          rf"report.*gaddr {re.escape(g)} to_ex"), 5.0,
                         f"a TO_EX report for {g} from {node_ip} on the underlay")
        figure(f"{mlab.mode}: upstream TO_EX for {g} seen {found[0] - started:.2f}s after the "
               f"receiver process was started (mclab exec and python start-up included)")

        # The upstream querier asks: node1 answers with a report listing g.
        def answered() -> float:
            return mlab.metric("node1", "kube_mcast_igmp_messages_total", type="Query",
                               verdict="answered")

        answered_before = answered()
        sent = float(mlab.exec(ext, PYTHON, "-c", _SEND_QUERY, ext.ip).stdout.strip())
        wait_for(lambda: cap.find(rf"{re.escape(ext.ip)} > 224\.0\.0\.1: igmp query v3",
                                  after=sent - 1.0), 5.0, "our query in the capture")
        found = wait_for(lambda: cap.find(rf"{re.escape(node_ip)} > 224\.0\.0\.22: igmp v3 "
                                          rf"report.*gaddr {re.escape(g)} is_ex", after=sent),
                         5.0, f"node1's answer listing {g} after the query\n{cap.text()}")
        figure(f"{mlab.mode}: query from the external host answered by node1 after "
               f"{(found[0] - sent) * 1000:.1f} ms")
        assert found[0] - sent < 1.0, (
            f"the report listing {g} came {found[0] - sent:.2f}s after the query: a periodic "
            f"refresh, not an answer?\n{cap.text()}")
        wait_for(lambda: answered() > answered_before, 5.0,
                 f"node1's answered-queries counter to grow from {answered_before}")

        # The last local receiver leaves: the agent leaves upstream (TO_IN {}).
        rx.stop()
        left = time.time()
        found = wait_for(lambda: cap.find(rf"{re.escape(node_ip)} > 224\.0\.0\.22: igmp v3 "
                                          rf"report.*gaddr {re.escape(g)} to_in", after=left),
                         8.0, f"a TO_IN report (leave) for {g} from {node_ip}\n{cap.text()}")
        figure(f"{mlab.mode}: upstream leave (TO_IN) for {g} {found[0] - left:.2f}s after the "
               f"receiver closed")

    @pytest.mark.timeout(240)
    def test_many_groups_on_one_node(self, mlab: MultiLab, pods: dict[str, Pod]) -> None:
        """1000 groups joined in one pod of node1, fed from node2: all deliver, right after the
        joins and again once every membership has outlived the aging time (so the periodic
        refreshes of 1000 groups, pod -> agent and agent -> agents/upstream, work too)."""
        base = f"239.{100 + (mlab.mode == 'noencap')}.0.1"
        port = 6070
        wanted = _group_list(base, MANY)
        rx_pod = mlab.create_pod("many-rx", "node1")
        snd = pods["n2s"]
        ext = mlab.create_external("x7")
        limit = mlab.exec(rx_pod, "sysctl", "-n", "net.ipv4.igmp_max_memberships").stdout
        mlab.exec(rx_pod, "sysctl", "-w", f"net.ipv4.igmp_max_memberships={2 * MANY}")
        figure(f"{mlab.mode}: igmp_max_memberships in the receiving pod raised from "
               f"{limit.strip()} to {2 * MANY}")

        rx = _many(mlab, rx_pod, "recv", base, str(MANY), str(port))
        watchers = {"n2a (sender's node)": _many(mlab, pods["n2a"], "sniff", str(port)),
                    "n3a": _many(mlab, pods["n3a"], "sniff", str(port)),
                    "external": _many(mlab, ext, "sniff", str(port))}
        ready(*watchers.values())
        rx.wait_ready(timeout=60.0)
        joined = time.monotonic()

        progress: dict[str, int] = {}

        def listed(node: str) -> int:
            key, value = (("localPods", rx_pod.ref) if node == "node1"
                          else ("remoteNodes", NODE_IP["node1"]))
            progress[node] = sum(1 for r in mlab.mcctl_json(node, "members")
                                 if r["group"] in wanted and value in r[key])
            return progress[node]

        # node1 knows its pod's 1000 groups; in encap the sender's node knows node1 has them
        watch = ["node1", "node2"] if mlab.mode == "encap" else ["node1"]
        for node in watch:
            wait_for(lambda n=node: listed(n) == MANY, 60.0,
                     f"{node} to list all {MANY} groups (listed: {progress})", interval=0.5)
            figure(f"{mlab.mode}: {node} listed all {MANY} groups "
                   f"{time.monotonic() - joined:.1f}s after the joins")

        self._feed_many(mlab, snd, rx, base, port, wanted, 1, "right after the joins")

        # Stay joined past the aging time: nothing may age out while refreshes flow.
        lowest = dict.fromkeys(watch, MANY)
        while time.monotonic() - joined < AGING_S + 6.0:
            for node in watch:
                lowest[node] = min(lowest[node], listed(node))
            time.sleep(1.0)
        figure(f"{mlab.mode}: lowest count of listed groups over "
               f"{time.monotonic() - joined:.0f}s: {lowest}")
        assert lowest == dict.fromkeys(watch, MANY), (
            f"memberships of the {MANY} groups aged out while the pod stayed joined: lowest "
            f"listed {lowest}\n{mlab.debug('node1')[-3000:]}")

        self._feed_many(mlab, snd, rx, base, port, wanted, 2,
                        f"{time.monotonic() - joined:.0f}s after the joins")
        rx.stop()
        seen = {n: w.stop() for n, w in watchers.items()}
        assert all(s["n"] == 0 for s in seen.values()), (
            "non-members saw frames of the groups: "
            + "; ".join(f"{n}: {s['n']} {dict(list(s['per_group'].items())[:5])}"
                        for n, s in seen.items()))

    @staticmethod
    def _feed_many(mlab: MultiLab, snd: Pod, rx: Receiver, base: str, port: int,
                   wanted: set[str], rounds: int, when: str) -> None:
        """One datagram per group from ``snd``; then ``rounds`` datagrams of each group must
        have arrived in all (the receiver keeps counting across calls)."""
        out = mlab.exec(snd, PYTHON, MANY_GROUPS, "send", base, str(MANY), str(port),
                        "--pps", "1000", "--ttl", str(TTL), timeout=60.0).stdout
        assert json.loads(out.strip().splitlines()[-1])["sent"] == MANY
        settle([rx], MANY * rounds)
        per = _status_per_group(rx)
        missing = sorted(g for g in wanted if per.get(g, 0) < rounds)
        wrong = {g: c for g, c in per.items() if c != rounds}
        figure(f"{mlab.mode}: {MANY} groups {when}: {sum(per.values())} datagrams in all, "
               f"{MANY - len(missing)} groups delivered, {len(wrong)} with a wrong count")
        assert not missing and not wrong, (
            f"{when}: {len(missing)} groups missing datagrams (first: {missing[:5]}); counts "
            f"other than {rounds}: {dict(list(wrong.items())[:10])}\n"
            f"{mlab.debug('node2')[-3000:]}")


def _status_per_group(rx: Receiver) -> dict[str, int]:
    """The per-group counts of a running many_groups receiver (its status file)."""
    assert rx.status_file is not None
    return json.loads(rx.status_file.read_text()).get("per_group", {})


def _group_list(base: str, count: int) -> set[str]:
    a, b, c, d = (int(x) for x in base.split("."))
    first = (a << 24) | (b << 16) | (c << 8) | d
    return {".".join(str((first + i) >> s & 255) for s in (24, 16, 8, 0)) for i in range(count)}


def _many(lab: MultiLab, host: Pod, cmd: str, *args: str) -> Receiver:
    ready_f, status_f = lab._probe_files(host, f"many-{cmd}")
    proc = lab.popen(host, PYTHON, MANY_GROUPS, cmd, *args, "--duration", "150",
                     "--ready", str(ready_f), "--status", str(status_f))
    return Receiver("recv", host, "many", int(args[-1]), proc, ready_f, status_f)


class TestEncap(_BothModes):
    MODE = "encap"

    def test_node_without_receivers_gets_no_tunnel_traffic(
            self, mlab: MultiLab, pods: dict[str, Pod]) -> None:
        g, port = grp(mlab, 8), 6080
        snd = pods["n1s"]
        members = {n: mlab.start_receiver(pods[n], g, port) for n in ("n1a", "n2a")}
        ready(*members.values())
        mlab.wait_joined(g, [pods["n1a"], pods["n2a"]])
        assert mlab.remote_buckets("node1", g) == [NODE_IP["node2"]], (
            f"node1's group for {g}: want exactly one remote bucket, to node2\n"
            f"{mlab.debug('node1')}")

        before = {n: mlab.tunnel_data(n) for n in NODE_IP}
        port3 = mlab.tunnel_port("node3")
        send_n_then_burst(mlab, snd, g, port, members, "tunnel counters")
        want = N + BURST
        # flow statistics reach OpenFlow about once a second
        wait_for(lambda: mlab.tunnel_data("node2") - before["node2"] >= want, 10.0,
                 f"node2's tunnel data counter to grow by {want}")
        quiet(QUIET_S)
        delta = {n: mlab.tunnel_data(n) - before[n] for n in NODE_IP}
        port3_after = mlab.tunnel_port("node3")
        rx3 = port3_after["rx"] - port3["rx"]
        figure(f"encap: tunnel data in per node while node1 sent {want} to {g}: {delta}; "
               f"node3 {TUNNEL} rx_packets delta {rx3} (agents' IGMP reports included)")
        assert delta == {"node1": 0, "node2": want, "node3": 0}, (
            f"multicast data in from the tunnel per node, want node2={want} only: {delta}")
        assert rx3 < 20, f"node3's tunnel port received {rx3} packets: more than IGMP"
        for rx in members.values():
            assert rx.stop()["n"] == want

    def test_leave_stops_tunnelling(self, mlab: MultiLab, pods: dict[str, Pod]) -> None:
        g, port = grp(mlab, 9), 6090
        snd = pods["n1s"]
        rx2 = mlab.start_receiver(pods["n2a"], g, port)
        rx3 = mlab.start_receiver(pods["n3a"], g, port)  # keeps node1 sending (control)
        ready(rx2, rx3)
        mlab.wait_joined(g, [pods["n2a"], pods["n3a"]])
        mlab.send(snd, g, port, N, 200.0, ttl=TTL)
        assert settle([rx2, rx3], N) == [N, N]

        started = time.monotonic()
        assert rx2.stop()["n"] == N  # closes the socket: the pod's kernel sends a leave
        wait_for(lambda: NODE_IP["node2"] not in mlab.remote_nodes("node1", g), 15.0,
                 f"node1 to drop node2 from the remote members of {g}", interval=0.05)
        took = time.monotonic() - started
        figure(f"encap: leave on node2 -> node1 stopped listing node2 for {g} after {took:.2f}s")
        assert took <= LEAVE_BOUND_S, f"leave round trip took {took:.2f}s (> {LEAVE_BOUND_S}s)"
        assert mlab.remote_buckets("node1", g) == [NODE_IP["node3"]], mlab.debug("node1")

        sniff2 = mlab.start_sniffer(pods["n2a"], g, port).wait_ready()
        data2 = mlab.tunnel_data("node2")
        mlab.send(snd, g, port, N, N_PPS, ttl=TTL)
        assert settle([rx3], 2 * N) == [2 * N]
        quiet(QUIET_S)  # flow statistics lag by up to a second
        assert mlab.tunnel_data("node2") == data2, "node1 still tunnels the group to node2"
        assert sniff2.stop()["n"] == 0
        assert rx3.stop()["n"] == 2 * N

    @pytest.mark.timeout(180)
    def test_killed_agent_ages_out(self, mlab: MultiLab, pods: dict[str, Pod]) -> None:
        """Last test of the class: node2 has no agent afterwards."""
        g, port = grp(mlab, 10), 6100
        snd = pods["n1s"]
        rx2 = mlab.start_receiver(pods["n2b"], g, port)  # stays joined throughout
        rx3 = mlab.start_receiver(pods["n3b"], g, port)  # control: node3 keeps its agent
        ready(rx2, rx3)
        mlab.wait_joined(g, [pods["n2b"], pods["n3b"]])
        mlab.send(snd, g, port, N, 200.0, ttl=TTL)
        assert settle([rx2, rx3], N) == [N, N]

        # Kill node2's agent right after it sent a report through the tunnel (its periodic
        # refresh, every query interval), so the aging time is measured from its last report.
        pid = next(n["agent_pid"] for n in mlab.state()["nodes"] if n["name"] == "node2")
        assert pid and Path(f"/proc/{pid}").exists(), mlab.state()
        tx = mlab.tunnel_port("node2")["tx"]
        wait_for(lambda: mlab.tunnel_port("node2")["tx"] > tx, 15.0,
                 "node2's agent to send its periodic report", interval=0.02)
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: not Path(f"/proc/{pid}").exists()
                 or "zombie" in Path(f"/proc/{pid}/status").read_text(errors="replace"),
                 5.0, f"agent {pid} to die")

        def node2_listed() -> bool:
            return NODE_IP["node2"] in mlab.remote_nodes("node1", g)

        wait_for(lambda: not node2_listed(), AGING_S + 30.0,
                 "node1 to age node2 out of the remote members", interval=0.25)
        took = time.monotonic() - killed
        figure(f"encap: node2's agent SIGKILLed right after a report -> node1 aged node2 out "
               f"of {g} after {took:.1f}s (membership interval {AGING_S}s)")
        assert AGING_S - 5.0 <= took <= AGING_S + 15.0, (
            f"node2 aged out {took:.1f}s after its agent died (want ~{AGING_S}s)")
        assert mlab.remote_buckets("node1", g) == [NODE_IP["node3"]], mlab.debug("node1")

        data2 = mlab.tunnel_data("node2")
        mlab.send(snd, g, port, N, 200.0, ttl=TTL)
        assert settle([rx3], 2 * N) == [2 * N]
        quiet(QUIET_S)
        assert mlab.tunnel_data("node2") == data2, "node1 still tunnels the group to node2"
        assert rx2.stop()["n"] == N, "the receiver behind the dead agent still gets traffic"
        assert rx3.stop()["n"] == 2 * N


class TestNoEncap(_BothModes):
    MODE = "noencap"
