"""Section ``baselines``: the anchors of issue 12, brought up and measured in the same run.

Ours is only ever compared with an anchor measured minutes apart on the same host: figures on
this shared 2-vCPU machine move from run to run, ratios taken in one run much less. This
module owns the two switch anchors (the third, ``ovs-ofctl --bundle``, runs inside the
``programming`` section on the same switch as ours; see ``programming.ofctl_load``).

The beds: our topology (one node, N pods) switched by something else than us, under this
run's own prefix (``kbx<hex>s-`` and ``kbx<hex>l-``; never ``mclab-``), entirely inside network
namespaces created here and always torn down (the netns, the private OVS daemons, the dir):
- ``SnoopingOvsBed``: OVS switching by its own IGMP snooping. A private ovsdb-server +
  ovs-vswitchd (``tools.mclab.ovsnode.OvsNode``, userspace datapath) in the switch netns,
  bridge ``br0`` with ``mcast_snooping_enable=true``, unregistered multicast not flooded, and
  one priority-0 ``NORMAL`` flow (NOTES §C1). Pods are netns + veth, ports of ``br0``.
- ``LinuxBridgeBed``: a Linux bridge with ``mcast_snooping 1`` and its own querier (IGMPv3,
  as the pods speak to our agent), receiver ports with ``mcast_flood off`` (NOTES §C2).
Pods are what our lab's pods are to the traffic tools (``lab.Pod``: eth0, a /24 address, the
multicast route, tx checksum offload off on both veth ends), so ``podtool``, tcpdump and the
join/throughput code run on them unchanged. Each bed tells how many ports its snooping table
has for a group, so a measurement starts once the switch knows the receivers, as ours waits
for the agent to list them, and checks before use that it does not flood unjoined groups.

What is measured:
- on OVS snooping: join latency with the very sampling ``joinlat`` does for our node (same
  sender rate, lead time, podtool and tcpdump split), and delivery 1 -> 4/8 receivers at the
  rates, durations and repetitions of the ``throughput`` section
  (``throughput.start_receivers/send/tally/series``), vswitchd figures read the same way;
- on the Linux bridge: join latency. Its throughput is not measured: it replicates inside the
  sender's ``sendmsg`` and never loses (NOTES §C2), so it has no rate where it "starts to
  lose" to compare at.
Each bed is guarded on its own: one that fails is recorded as ``{"error": ...}`` beside the
other's figures.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Self

from pyroute2 import IPRoute

from tools.bench import joinlat, throughput
from tools.bench.common import BenchError, CpuMeter, wait_for
from tools.bench.lab import Pod, PodProcs
from tools.mclab import netns
from tools.mclab.lab import _address, _enslave, _multicast_route, _tx_off, _veth
from tools.mclab.ovsnode import OvsNode

log = logging.getLogger(__name__)

BRIDGE = "br0"
PROBE_GROUP = "239.207.0.1"
# The Linux bridge forwards by its snooping table only once a querier "exists"; its own
# querier counts after a delay of one query response interval from when it is switched on
# (10 s by default). A 1 s interval keeps that delay short; it only bounds how long pods wait
# before answering a general query, not their unsolicited reports when they join.
LB_RESPONSE_INTERVAL_CS = 100


class Bed(PodProcs):
    """Namespaces under ``prefix`` and a scratch dir; ``with`` brings up and always tears down.

    Pod ``j`` (1-based) is netns ``<prefix>p<j>`` with eth0 ``<subnet>.<j>/24``; its other veth
    end is ``<port_prefix><j>`` in the switch's netns ``<prefix>sw``."""

    kind = ""
    subnet = ""
    port_prefix = ""

    def __init__(self, tag: str, pods: int) -> None:
        super().__init__()
        self.prefix = f"kbx{tag}{self.kind[0]}-"
        self.dir = Path(f"/tmp/kbx{tag}-{self.kind}")
        self.switch_ns = f"{self.prefix}sw"
        self.pods = [Pod(f"{self.kind}-p{j}", self.kind, f"{self.subnet}.{j}",
                         f"{self.prefix}p{j}") for j in range(1, pods + 1)]
        self.up_s = 0.0

    def __enter__(self) -> Self:
        if netns.list_netns(self.prefix) or self.dir.exists():
            raise BenchError(f"a bed with prefix {self.prefix} or dir {self.dir} exists already")
        t0 = time.monotonic()
        try:
            self.dir.mkdir(parents=True)
            self._switch_up()
            for j, pod in enumerate(self.pods, 1):
                self._pod_up(j, pod)
            self._ready()
        except BaseException:
            self.down()
            raise
        self.up_s = round(time.monotonic() - t0, 2)
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def down(self) -> None:
        """Stop our processes and the switch, delete every netns of the prefix and the dir."""
        self.stop_all()
        try:
            self._switch_down()
        finally:
            for name in netns.list_netns(self.prefix):
                netns.delete(name)
            shutil.rmtree(self.dir, ignore_errors=True)

    def _pod_up(self, j: int, pod: Pod) -> None:
        port = f"{self.port_prefix}{j}"
        netns.create(pod.netns)
        _veth(self.switch_ns, port, pod.netns, "eth0")
        _address(pod.netns, "eth0", f"{pod.ip}/24")
        _multicast_route(pod.netns, "eth0")
        _tx_off(pod.netns, "eth0")  # see tools.mclab.lab: UDP with partial checksums is lost
        _tx_off(self.switch_ns, port)
        self._attach(j, port)

    def wait_members(self, group: str, ports: int, timeout: float = 10.0) -> None:
        """Until the switch's snooping table has ``ports`` ports in ``group``."""
        wait_for(lambda: self.members(group) >= ports, timeout,
                 f"{ports} ports in {group} on the {self.kind} bed", interval=0.02)

    # -- per switch ---------------------------------------------------------------------------

    def _switch_up(self) -> None:
        raise NotImplementedError

    def _switch_down(self) -> None:
        raise NotImplementedError

    def _attach(self, j: int, port: str) -> None:
        raise NotImplementedError

    def _ready(self) -> None:
        """Check that the switch gates multicast nobody joined: a receiver pod must not see a
        burst pod 1 sends to a group no one is in (else join latency would measure nothing)."""
        seen = self.tcpdump(self.pods[1], f"udp and dst host {PROBE_GROUP}", count=1)
        try:
            self.podtool_run(self.pods[0], "send", PROBE_GROUP, "5009", "--pps", "2000",
                             "--duration", "0.1", timeout=10)
            time.sleep(0.05)
            if seen.poll() is not None:
                raise BenchError(f"the {self.kind} bed floods multicast nobody joined")
        finally:
            self.stop_all()

    def members(self, group: str) -> int:
        raise NotImplementedError


class SnoopingOvsBed(Bed):
    """OVS with IGMP snooping and a NORMAL flow, in a private ovs-vswitchd of its own."""

    kind = "snoop"
    subnet = "10.78.0"
    port_prefix = "sp"

    def __init__(self, tag: str, pods: int) -> None:
        super().__init__(tag, pods)
        self.node = OvsNode("snoop", self.dir / "ovs", self.switch_ns)

    def _switch_up(self) -> None:
        self.node.start()  # creates the switch netns, and deletes it again on stop()
        self.node.vsctl(
            "add-br", BRIDGE, "--", "set", "bridge", BRIDGE, "datapath_type=netdev",
            "fail_mode=secure", "mcast_snooping_enable=true",
            "other_config:mcast-snooping-disable-flood-unregistered=true")
        self.node.ofctl("add-flow", BRIDGE, "priority=0,actions=NORMAL")

    def _switch_down(self) -> None:
        self.node.stop()

    def _attach(self, j: int, port: str) -> None:
        self.node.vsctl("add-port", BRIDGE, port, "--", "set", "interface", port,
                        f"ofport_request={j}")

    @property
    def vswitchd_pid(self) -> int:
        return self.node.pids()["ovs-vswitchd"]

    def members(self, group: str) -> int:
        return ovs_mdb_ports(self.node.appctl("mdb/show", BRIDGE), group)


class LinuxBridgeBed(Bed):
    """A Linux bridge with multicast snooping and its own IGMPv3 querier."""

    kind = "lbr"
    subnet = "10.79.0"
    port_prefix = "lp"

    def _switch_up(self) -> None:
        netns.create(self.switch_ns)
        with IPRoute(netns=self.switch_ns, flags=0) as ipr:
            ipr.link("add", ifname=BRIDGE, kind="bridge", br_mcast_snooping=1,
                     br_mcast_igmp_version=3,
                     br_mcast_query_response_intvl=LB_RESPONSE_INTERVAL_CS)
            ipr.link("set", index=ipr.link_lookup(ifname=BRIDGE)[0], state="up")

    def _switch_down(self) -> None:
        """Nothing runs: deleting the netns (``down``) removes the bridge and veths."""

    def _attach(self, j: int, port: str) -> None:
        _enslave(self.switch_ns, port, BRIDGE)
        if j > 1:  # pod 1 sends; the receivers' ports get only what they joined (NOTES §C2)
            self._bridge("link", "set", "dev", port, "mcast_flood", "off")

    def _ready(self) -> None:
        """Switch the querier on (in its own change, after the response interval is set: the
        kernel takes the delay from the interval in force then), wait until pod 1 has seen its
        first query and the delay is over, then check that unregistered traffic is gated."""
        probe = self.tcpdump(self.pods[0], "igmp[0] = 0x11", count=1)
        t0 = time.monotonic()
        with IPRoute(netns=self.switch_ns, flags=0) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname=BRIDGE)[0], kind="bridge",
                     br_mcast_querier=1)
        try:
            probe.wait(timeout=10)
        except subprocess.TimeoutExpired as exc:
            raise BenchError("the Linux bridge's querier sent no query within 10 s") from exc
        finally:
            self.stop_all()
        time.sleep(max(0.0, t0 + LB_RESPONSE_INTERVAL_CS / 100 + 0.3 - time.monotonic()))
        super()._ready()

    def members(self, group: str) -> int:
        return bridge_mdb_ports(self._bridge("-j", "mdb", "show"), group)

    def _bridge(self, *args: str) -> str:
        res = netns.run(self.switch_ns, ["bridge", *args], timeout=30)
        if res.returncode != 0:
            raise BenchError(f"bridge {' '.join(args)}: {res.stderr.strip()}")
        return res.stdout


def ovs_mdb_ports(text: str, group: str) -> int:
    """Ports in ``group`` in ``ovs-appctl mdb/show`` (lines ``port VLAN GROUP age``)."""
    rows = (line.split() for line in text.splitlines())
    return sum(1 for r in rows if len(r) >= 3 and r[2] == group)


def bridge_mdb_ports(text: str, group: str) -> int:
    """Ports in ``group`` in ``bridge -j mdb show`` (a list of tables with ``mdb`` entries)."""
    tables = json.loads(text or "[]")
    return sum(1 for table in tables for e in table.get("mdb", []) if e.get("grp") == group)


# ------------------------------------------------------------------------------ the section


SNOOP_JOIN_PREFIX = "239.205"
BRIDGE_JOIN_PREFIX = "239.206"
SNOOP_TP_OCTET = 204  # groups 239.204.<receivers>.x


def _guard(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - recorded; the other bed still runs
        log.error("baseline %s failed: %s", name, exc)
        return {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}


def _join(bed: Bed, reps: int, prefix: str) -> dict[str, Any]:
    sender, receiver = bed.pods[0], bed.pods[1]
    samples, failures = joinlat.collect(bed, sender, receiver, reps, prefix)
    return joinlat.figures(samples, reps, failures)


def _snoop_point(bed: SnoopingOvsBed, sender: Pod, receivers: Sequence[Pod], group: str,
                 pps: int, duration: float) -> dict[str, Any]:
    """One delivery point through OVS snooping, read like ours (``throughput._point``):
    the receivers have joined and the switch lists them before the sender starts."""
    procs = throughput.start_receivers(bed, receivers, group, duration)
    bed.wait_members(group, len(receivers))
    bed.node.appctl("dpif-netdev/pmd-stats-clear")
    ovs = CpuMeter(bed.vswitchd_pid)
    tx = throughput.send(bed, sender, group, pps, duration)
    ovs_pct, ovs_cpu_s = ovs.percent(), ovs.seconds()
    dp = throughput.datapath_stats(bed.node.appctl("dpif-netdev/pmd-stats-show"))
    actions = throughput.megaflow_actions(bed.node.appctl("dpctl/dump-flows"), group)
    out = throughput.tally(receivers, procs, tx, group, pps, duration)
    out["path"] = "ovs_snooping"
    out.update(throughput.ovs_figures(dp, tx["sent"], ovs_pct, ovs_cpu_s))
    out["megaflow_actions"] = actions
    return out


def _snoop_throughput(bed: SnoopingOvsBed, counts: Sequence[int], rates: Sequence[int],
                      duration: float, reps: int) -> dict[str, Any]:
    sender = bed.pods[0]
    series = {}
    for k in counts:
        receivers = bed.pods[1:k + 1]

        def point(group: str, pps: int, _bypass: bool,
                  receivers: Sequence[Pod] = receivers) -> dict[str, Any]:
            return _snoop_point(bed, sender, receivers, group, pps, duration)

        series[f"{k}_receivers"] = throughput.series(bed, point, k, rates, reps, k,
                                                     octet=SNOOP_TP_OCTET)
    return {"duration_s": duration, "reps": reps, "payload_bytes": throughput.SIZE,
            "rates_pps": list(rates), "series": series}


def _ovs_snooping(tag: str, join_reps: int, counts: Sequence[int], rates: Sequence[int],
                  duration: float, reps: int) -> dict[str, Any]:
    with SnoopingOvsBed(tag, 1 + max(counts)) as bed:
        return {"switch": "ovs-vswitchd (netdev), br0 mcast_snooping_enable=true, "
                          "flood-unregistered off, priority=0 actions=NORMAL",
                "bed_up_s": bed.up_s,
                "join_latency": _join(bed, join_reps, SNOOP_JOIN_PREFIX),
                "throughput": _snoop_throughput(bed, counts, rates, duration, reps)}


def _linux_bridge(tag: str, join_reps: int) -> dict[str, Any]:
    with LinuxBridgeBed(tag, 2) as bed:
        return {"switch": "Linux bridge, mcast_snooping 1, own IGMPv3 querier, "
                          "receiver ports mcast_flood off",
                "bed_up_s": bed.up_s,
                "join_latency": _join(bed, join_reps, BRIDGE_JOIN_PREFIX)}


def run(tag: str, join_reps: int, counts: Sequence[int], rates: Sequence[int],
        duration: float, reps: int) -> dict[str, Any]:
    """Both beds, one after the other (never beside each other or a lab of ours: they would
    share the 2 vCPUs with it)."""
    return {
        "ovs_snooping": _guard("ovs_snooping", lambda: _ovs_snooping(
            tag, join_reps, counts, rates, duration, reps)),
        "linux_bridge": _guard("linux_bridge", lambda: _linux_bridge(tag, join_reps)),
    }
