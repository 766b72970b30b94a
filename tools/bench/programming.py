"""Section 1: how fast the agent's own path programs groups into a real ovs-vswitchd.

The path is the agent's: ``agent.forwarding`` / ``pipeline.multicast`` builders -> the
``agent.reconciler.Reconciler`` (``pipeline.diff`` against what is installed) ->
``agent.ofswitch.OpenFlowSwitch.apply`` (one OpenFlow 1.5 bundle). The switch is a private
ovs-vswitchd (``tools.mclab.ovsnode.OvsNode``, userspace datapath) in a netns of our own; the
controller socket is created inside that netns, as the agent's is.

Measured for each size N (multicast groups, each = one route flow + one type-ALL group with
5 local, 2 remote and 1 external bucket: 8 buckets), on top of a base pipeline with 8 pod ports:
- pure costs: builders and diff per group (µs), no switch involved;
- one reconcile installing N groups (one bundle): wall time, groups/s, flows/s, and where the
  time goes (op encoding: ``agent.ovs.fastwire``, os-ken where it declines, and the bundle
  framing; op descriptions; the rest = socket + OVS + commit), and how many ops each encoder
  wrote;
- one reconcile modifying all N groups, and one deleting them;
- per-change latency with N installed: a single group add or modify as one small bundle
  straight to ``apply``, and the same change through ``Reconciler.flush`` (what the agent does
  on every IGMP event: it re-diffs the whole desired state);
- the anchor, on the same switch right after: the very ops our install and delete sent,
  rendered by ``pipeline.render.render_bundle`` and loaded with ``ovs-ofctl bundle`` (one
  OpenFlow 1.5 bundle, ovs-ofctl's own C parser and encoder; process start included).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from agent.flowsync import switch as switchops
from agent.flowsync.reconciler import Reconciler
from agent.multicast import forwarding as fw
from agent.multicast.igmp.membership import ANY_SOURCE
from agent.ovs import channel as ofchannel
from agent.ovs.ovsdb import Ovsdb
from agent.ovs.switch import OpenFlowSwitch
from pipeline import multicast as mc
from pipeline.cookies import Feature
from pipeline.diff import canonical, diff
from pipeline.model import SwitchState
from pipeline.ops import FlowOp, GroupOp
from pipeline.render import render_bundle
from tools.bench.common import BenchError, CpuMeter, Stopwatch, rate, summary
from tools.mclab.netns import listen_in
from tools.mclab.ovsnode import OvsNode

log = logging.getLogger(__name__)

PIPE = mc.pipeline()
CONTROLLER_PORT = 6653
POD_PORTS = tuple(range(1, 9))
REMOTES = ("192.168.77.2", "192.168.77.3")
BASE_GROUP = int(ipaddress.IPv4Address("239.100.0.0"))
CFG = mc.BridgeConfig(mc.Mode.ENCAP, 1, "192.168.77.1", "02:77:00:00:00:01",
                      tunnel_port=100, uplink_port=200)


def group_ip(i: int) -> str:
    return str(ipaddress.IPv4Address(BASE_GROUP + i))


def local_ports(i: int, variant: int = 0) -> list[int]:
    """Five member ports of group ``i`` (``variant`` shifts them: a bucket-list change)."""
    return sorted({(i + k + variant) % len(POD_PORTS) + 1 for k in (0, 1, 3, 5, 6)})


def group_state(i: int, variant: int = 0) -> SwitchState:
    """What the agent wants for group ``i``: (*, G) route flow and group, members any-source."""
    members = {p: ANY_SOURCE for p in local_ports(i, variant)}
    return fw.group_state(CFG, group_ip(i), lambda _source: i + 1, members, REMOTES)


def base_states() -> dict[tuple[Feature, str], SwitchState]:
    states = {(Feature.PIPELINE, ""): fw.pipeline_state(CFG),
              (Feature.IGMP, "query"): fw.query_state(POD_PORTS)}
    for p in POD_PORTS:
        states[(Feature.POD, str(p))] = fw.pod_state(CFG, p)
    return states


class TimedSwitch:
    """The reconciler's switch: forwards to the real one and records each apply's duration."""

    def __init__(self, sw: OpenFlowSwitch) -> None:
        self.sw = sw
        self.applies: list[tuple[int, float]] = []  # (ops, seconds)

    def apply(self, ops: Sequence[Any]) -> None:
        with Stopwatch() as t:
            self.sw.apply(ops)
        self.applies.append((len(ops), t.s))

    def dump(self) -> SwitchState:
        return self.sw.dump()


@contextlib.contextmanager
def encode_clock() -> Iterator[dict[str, float]]:
    """Accumulates the CPU-side time ``apply`` spends encoding ops ("convert": to bytes, by
    fastwire or os-ken), framing and serialising messages ("serialize": bundle-adds, os-ken's
    control messages and meters), and describing ops (only those that fail, now)."""
    spent = {"convert": 0.0, "serialize": 0.0, "describe": 0.0}
    saved = (OpenFlowSwitch._encode, OpenFlowSwitch._bundle_adds, ofchannel.Channel.encode,
             switchops.describe)

    def timed(fn: Any, key: str) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - t0
        return wrapper

    OpenFlowSwitch._encode = timed(saved[0], "convert")  # type: ignore[method-assign]
    OpenFlowSwitch._bundle_adds = timed(saved[1], "serialize")  # type: ignore[method-assign]
    ofchannel.Channel.encode = timed(saved[2], "serialize")  # type: ignore[method-assign]
    switchops.describe = timed(saved[3], "describe")
    try:
        yield spent
    finally:
        OpenFlowSwitch._encode, OpenFlowSwitch._bundle_adds = saved[:2]  # type: ignore[method-assign]
        ofchannel.Channel.encode, switchops.describe = saved[2:]  # type: ignore[method-assign]


def ovs_counts(node: OvsNode) -> dict[str, int]:
    """Flows and groups on br-int as ovs-ofctl sees them (a check that the bundle landed)."""
    agg = node.ofctl("dump-aggregate", "br-int")
    flows = int(agg.split("flow_count=")[1].split()[0])
    groups = node.ofctl("dump-groups", "br-int")
    return {"flows": flows, "groups": groups.count("group_id=")}


def pure_costs(n: int) -> dict[str, float]:
    """Builders and diff per group, without a switch (µs per group)."""
    base = SwitchState()
    for st in base_states().values():
        base = SwitchState(base.flows + st.flows, base.groups + st.groups)
    with Stopwatch() as build:
        states = [group_state(i) for i in range(n)]
    desired = SwitchState(base.flows + tuple(f for s in states for f in s.flows),
                           base.groups + tuple(g for s in states for g in s.groups))
    with Stopwatch() as canon:
        desired = canonical(desired, PIPE)
    installed = canonical(base, PIPE)
    with Stopwatch() as d:
        ops = diff(desired, installed, pipeline=PIPE)
    with Stopwatch() as d_same:
        diff(desired, desired, pipeline=PIPE)
    return {"groups": n, "ops": len(ops),
            "build_us_per_group": round(build.s / n * 1e6, 2),
            "canonical_us_per_group": round(canon.s / n * 1e6, 2),
            "diff_us_per_group": round(d.s / n * 1e6, 2),
            "diff_unchanged_us_per_group": round(d_same.s / n * 1e6, 2)}


def _bulk(rec: Reconciler, timed: TimedSwitch, vswitchd: int, n: int,
          what: str) -> tuple[dict[str, Any], list[Any]]:
    """Flush whatever was set, as one reconcile; split its time. Returns the figures and the
    ops the reconcile sent."""
    timed.applies.clear()
    ovs_cpu = CpuMeter(vswitchd)
    fast = timed.sw.encoder.fast
    fast_before, declined_before = fast.fast, fast.declined
    with encode_clock() as enc, Stopwatch() as total:
        ops = rec.flush()
    apply_s = sum(s for _, s in timed.applies)
    flows = sum(1 for op in ops if getattr(op, "flow", None) is not None)
    groups = len(ops) - flows
    return {
        "what": what, "groups": n, "ops": len(ops), "flow_ops": flows, "group_ops": groups,
        "ops_per_s": rate(len(ops), total.s),
        "bundles": len(timed.applies),
        "total_s": round(total.s, 4), "apply_s": round(apply_s, 4),
        "diff_s": round(total.s - apply_s, 4),
        "encode_s": round(enc["convert"] + enc["serialize"], 4),
        "convert_s": round(enc["convert"], 4), "serialize_s": round(enc["serialize"], 4),
        "describe_s": round(enc["describe"], 4),
        "fast_ops": fast.fast - fast_before, "os_ken_ops": fast.declined - declined_before,
        "switch_s": round(apply_s - enc["convert"] - enc["serialize"] - enc["describe"], 4),
        "vswitchd_cpu_s": ovs_cpu.seconds(),
        "groups_per_s": rate(n, total.s), "flows_per_s": rate(flows, total.s),
        "apply_groups_per_s": rate(n, apply_s), "apply_flows_per_s": rate(flows, apply_s),
    }, list(ops)


def _changes(rec: Reconciler, sw: OpenFlowSwitch, n: int, count: int) -> dict[str, Any]:
    """Per-change latency with ``n`` groups installed: straight to apply, and via flush."""
    direct: dict[str, list[float]] = {"add": [], "modify": []}
    via_flush: dict[str, list[float]] = {"add": [], "modify": []}
    extra = n  # new groups get indices after the installed ones
    variant: dict[int, int] = {}  # what the reconciler installed, where not variant 0
    for k in range(count):
        kind = "add" if k % 2 == 0 else "modify"
        i = extra if kind == "add" else (k * 7919) % n
        # Straight to the switch: the small bundle one change needs (diff of that key alone).
        if kind == "add":
            new, old = group_state(i), SwitchState()
        else:
            new, old = group_state(i, variant=1000 + k), group_state(i, variant.get(i, 0))
        ops = diff(new, old, pipeline=PIPE)
        with Stopwatch() as t:
            sw.apply(ops)
        direct[kind].append(t.ms)
        # Undo it outside the clock so the reconciler's view stays the switch's.
        sw.apply(diff(old, new, pipeline=PIPE))
        # The same change as the agent makes it: set the key, flush the whole state.
        variant[i] = k + 1
        with Stopwatch() as t:
            rec.set(Feature.GROUP, group_ip(i), group_state(i, variant=k + 1))
            rec.flush()
        via_flush[kind].append(t.ms)
        extra += kind == "add"
    return {"installed_groups": n, "changes": count,
            "apply_ms": {k: summary(v) for k, v in direct.items()},
            "apply_all_ms": summary(direct["add"] + direct["modify"]),
            "reconcile_ms": {k: summary(v) for k, v in via_flush.items()},
            "reconcile_all_ms": summary(via_flush["add"] + via_flush["modify"])}


def _one_size(rec: Reconciler, timed: TimedSwitch, node: OvsNode, vswitchd: int, n: int,
              changes: int, workdir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"groups": n}
    with Stopwatch() as build:
        states = [(group_ip(i), group_state(i)) for i in range(n)]
    for key, st in states:
        rec.set(Feature.GROUP, key, st)
    out["install"], installed = _bulk(rec, timed, vswitchd, n, "add")
    out["install"]["build_s"] = round(build.s, 4)
    out["on_switch_after_install"] = ovs_counts(node)
    out["per_change"] = _changes(rec, timed.sw, n, changes)
    for i in range(n):
        rec.set(Feature.GROUP, group_ip(i), group_state(i, variant=changes + 7))
    out["modify_all"], _ = _bulk(rec, timed, vswitchd, n, "modify")
    for feature, key in rec.keys(Feature.GROUP):
        rec.remove(feature, key)
    out["delete_all"], deleted = _bulk(rec, timed, vswitchd, n, "delete")
    out["on_switch_after_delete"] = ovs_counts(node)
    out["ofctl_bundle"] = ofctl_load(node, vswitchd, n, installed, deleted, workdir)
    return out


def ofctl_load(node: OvsNode, vswitchd: int, n: int, install: Sequence[Any],
               delete: Sequence[Any], workdir: Path) -> dict[str, Any]:
    """The anchor for size ``n``: our install and delete ops as ``ovs-ofctl bundle`` files,
    each loaded in one bundle into the same switch (left as our delete left it)."""
    out: dict[str, Any] = {"groups": n, "tool": "ovs-ofctl -O OpenFlow15 bundle br-int FILE"}
    for what, ops in (("install", install), ("delete", delete)):
        if not all(isinstance(op, FlowOp | GroupOp) for op in ops):
            raise BenchError(f"{what} of {n}: ops other than flow/group mods cannot be bundled")
        path = workdir / f"ofctl-{what}-{n}.txt"
        with Stopwatch() as render:
            path.write_text(render_bundle(ops, PIPE))
        cpu = CpuMeter(vswitchd)
        with Stopwatch() as load:
            node.ofctl("-O", "OpenFlow15", "bundle", "br-int", str(path))  # the later -O wins
        flows = sum(1 for op in ops if isinstance(op, FlowOp))
        out[what] = {"ops": len(ops), "flow_ops": flows, "group_ops": len(ops) - flows,
                     "render_s": round(render.s, 4), "total_s": round(load.s, 4),
                     "ops_per_s": rate(len(ops), load.s), "groups_per_s": rate(n, load.s),
                     "vswitchd_cpu_s": cpu.seconds()}
        out[f"on_switch_after_{what}"] = ovs_counts(node)
        path.unlink()
    return out


def run(sizes: Sequence[int], changes: int, netns_name: str, workdir: Path) -> dict[str, Any]:
    """The whole section on a fresh private OVS node; always stops it."""
    node = OvsNode("bench-ovs", workdir / "ovs", netns_name)
    node.start()
    fatal: list[BaseException] = []
    try:
        vswitchd = node.pids()["ovs-vswitchd"]
        sw = OpenFlowSwitch(PIPE, listen_socket=listen_in(netns_name, CONTROLLER_PORT),
                            fatal=fatal.append, timeout=300)
        sw.start()
        try:
            with Ovsdb(node.db_sock) as db:
                db.ensure_bridge("br-int", "netdev",
                                 controller=f"tcp:127.0.0.1:{CONTROLLER_PORT}")
                db.set_table_names("br-int", PIPE)
            sw.wait_connected(20)
            timed = TimedSwitch(sw)
            rec = Reconciler(timed, PIPE)
            for (feature, key), st in base_states().items():
                rec.set(feature, key, st)
            rec.flush()
            base = ovs_counts(node)
            results = [_one_size(rec, timed, node, vswitchd, n, changes, workdir)
                       for n in sizes]
        finally:
            sw.stop()
        if fatal:
            raise fatal[0]
        return {"switch": "ovs-vswitchd (netdev) in a private netns, OpenFlow 1.5 bundles",
                "buckets_per_group": len(group_state(0).groups[0].buckets),
                "base_on_switch": base,
                "pure": [pure_costs(n) for n in sizes], "sizes": results}
    finally:
        node.stop()
