"""Rendered text against a real ovs-vswitchd (OVS 3.1): load it, dump it, compare line sets.

Each test gets a private vswitchd in a fresh netns (``ovs_node``), a br-int like the agent's
(userspace datapath, fail_mode=secure, tables named in OVSDB) and ports with the ofport numbers
the sample states use, so in_port and output references are valid and print as names.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from mcast_samples import (
    GROUP_IP,
    PEER_IPS,
    PORT_NAMES,
    TUNNEL_PORT,
    build_state,
    render_state,
    sample_state,
)
from mcast_samples import config as mc_config
from policy_samples import sample_rules

from pipeline import multicast as mc
from pipeline import policy
from pipeline.diff import diff
from pipeline.model import Group, Meter, SwitchState
from pipeline.ops import Command, GroupOp, MeterOp
from pipeline.render import (
    needs_openflow15,
    render_bundle,
    render_group,
    render_meter,
    render_meter_mod,
)
from tools.mclab.ovsnode import OvsError, OvsNode

pytestmark = pytest.mark.ovs

BR = "br-int"
P = mc.pipeline()


def make_bridge(node: OvsNode, protocols: str = "OpenFlow13") -> None:
    """br-int with named tables and the sample ports (internal ports + a flow-based VXLAN)."""
    args = ["add-br", BR, "--", "set", "bridge", BR, "datapath_type=netdev",
            "fail_mode=secure", f"protocols={protocols}"]
    for port, name in PORT_NAMES.items():
        if port == TUNNEL_PORT:
            args += ["--", "add-port", BR, name, "--", "set", "interface", name, "type=vxlan",
                     "options:remote_ip=flow", "options:key=flow", f"ofport_request={port}"]
        else:
            args += ["--", "add-port", BR, name, "--", "set", "interface", name,
                     "type=internal", f"ofport_request={port}"]
    for name in P.names:
        tid = P.table_id(name)
        args += ["--", f"--id=@t{tid}", "create", "Flow_Table", f"name={name}",
                 "--", "set", "bridge", BR, f"flow_tables:{tid}=@t{tid}"]
    node.vsctl(*args)
    ofports = node.vsctl("--bare", "--columns=name,ofport", "list", "interface").split()
    got = {int(v): n for n, v in zip(ofports[::2], ofports[1::2], strict=True) if n in
           PORT_NAMES.values()}
    assert got == PORT_NAMES, f"ofport_request not honoured: {got}"


def _lines(text: str) -> list[str]:
    """Entries of a dump: the indented lines (headers are not indented)."""
    return [line.strip() for line in text.splitlines() if line.startswith(" ")]


def dump_flows(node: OvsNode) -> list[str]:
    return sorted(_lines(node.ofctl("dump-flows", "--names", "--no-stats", BR)))


def dump_groups(node: OvsNode) -> list[str]:
    return sorted(_lines(node.ofctl("--names", "dump-groups", BR)))


def load_state(node: OvsNode, state: SwitchState, tmp: Path) -> None:
    for m in state.meters:  # meters cannot go in a bundle, and flows may only name existing ones
        node.ofctl("add-meter", BR, render_meter_mod(m))
    flows, groups = render_state(state, P, PORT_NAMES)
    (tmp / "groups.txt").write_text("".join(g + "\n" for g in groups))
    (tmp / "flows.txt").write_text("".join(f + "\n" for f in flows))
    node.ofctl("--bundle", "add-groups", BR, str(tmp / "groups.txt"))
    node.ofctl("--bundle", "add-flows", BR, str(tmp / "flows.txt"))


def assert_switch_holds(node: OvsNode, state: SwitchState) -> None:
    flows, groups = render_state(state, P, PORT_NAMES)
    assert dump_flows(node) == sorted(flows)
    assert dump_groups(node) == sorted(groups)


def apply_bundle(node: OvsNode, ops: list, tmp: Path, name: str = "bundle.txt") -> None:
    """Meter adds and modifies, then the bundle, then meter deletes: as the agent sends them."""
    meter_ops = [op for op in ops if isinstance(op, MeterOp)]
    for op in meter_ops:
        if op.command is not Command.DELETE:
            node.ofctl(f"{op.command.value}-meter", BR, render_meter_mod(op.meter))
    path = tmp / name
    bundled = [op for op in ops if not isinstance(op, MeterOp)]
    path.write_text(render_bundle(bundled, P, PORT_NAMES))
    version = ["-O", "OpenFlow15"] if needs_openflow15(bundled) else []  # the later -O wins
    node.ofctl(*version, "bundle", BR, str(path))
    for op in meter_ops:
        if op.command is Command.DELETE:
            node.ofctl("del-meter", BR, f"meter={op.meter.meter_id}")


@pytest.mark.parametrize("mode", [mc.Mode.ENCAP, mc.Mode.NOENCAP])
def test_rendered_state_is_what_ovs_dumps(ovs_node: OvsNode, tmp_path: Path,
                                          mode: mc.Mode) -> None:
    make_bridge(ovs_node)
    state = sample_state(mode)
    load_state(ovs_node, state, tmp_path)
    assert_switch_holds(ovs_node, state)


@pytest.mark.parametrize("mode", [mc.Mode.ENCAP, mc.Mode.NOENCAP])
def test_policy_flows_are_what_ovs_dumps(ovs_node: OvsNode, tmp_path: Path,
                                         mode: mc.Mode) -> None:
    """Conjunctions and conj_id matches: OVS takes the rendered text and dumps it back; a
    bundle that removes the rules removes exactly their flows."""
    make_bridge(ovs_node)
    base = sample_state(mode)
    rules = policy.policy_flows(mc_config(mode), sample_rules())
    state = replace(base, flows=base.flows + tuple(rules))
    load_state(ovs_node, state, tmp_path)
    assert_switch_holds(ovs_node, state)
    apply_bundle(ovs_node, diff(base, state), tmp_path)
    assert_switch_holds(ovs_node, base)


@pytest.mark.parametrize("mode", [mc.Mode.ENCAP, mc.Mode.NOENCAP])
def test_diff_bundle_reaches_the_desired_state(ovs_node: OvsNode, tmp_path: Path,
                                               mode: mc.Mode) -> None:
    make_bridge(ovs_node)
    old = sample_state(mode)
    load_state(ovs_node, old, tmp_path)
    # Pod 2 leaves (flow deletes, query group modified), GROUP_IP moves to a new group id
    # (group add, route flow modified, old group deleted last), another group appears, the
    # remote node changes.
    groups = {GROUP_IP: (7, (1,), PEER_IPS[1:]), "239.1.1.2": (6, (1,), PEER_IPS)}
    new = build_state(mode, 3, (1,), groups, PEER_IPS[1:])
    ops = diff(new, old)
    kinds = {(type(op).__name__, op.command) for op in ops}
    assert kinds >= {("FlowOp", Command.ADD), ("FlowOp", Command.MODIFY),
                     ("FlowOp", Command.DELETE), ("GroupOp", Command.ADD),
                     ("GroupOp", Command.MODIFY), ("GroupOp", Command.DELETE)}
    apply_bundle(ovs_node, ops, tmp_path)
    assert_switch_holds(ovs_node, new)
    # Then the agent restarts: a new round replaces every flow's cookie (ADD, not MODIFY).
    bumped = build_state(mode, 4, (1,), groups, PEER_IPS[1:])
    apply_bundle(ovs_node, diff(bumped, new), tmp_path, "bump.txt")
    assert_switch_holds(ovs_node, bumped)
    # And back to nothing: flows first, groups last.
    apply_bundle(ovs_node, diff(SwitchState(), bumped), tmp_path, "empty.txt")
    assert dump_flows(ovs_node) == [] and dump_groups(ovs_node) == []


def _big_group(n: int) -> Group:
    cfg = mc.BridgeConfig(mc.Mode.ENCAP, 1, "192.168.77.1", "02:77:00:00:00:01", TUNNEL_PORT,
                          200)
    return mc.multicast_group(cfg, 9, (), [f"10.{i >> 8 & 255}.{i & 255}.1"
                                           for i in range(1, n)])


def bucket_counts(node: OvsNode) -> dict[int, int]:
    """Buckets per group from dump-group-stats (which, unlike dump-groups, handles big groups)."""
    out = {}
    for line in _lines(node.ofctl("dump-group-stats", BR)):
        fields = line.split(",")
        gid = int(fields[0].removeprefix("group_id="))
        out[gid] = sum(1 for f in fields if f.startswith("bucket"))
    return out


def test_split_group_of_2000_buckets_in_one_bundle(ovs_node: OvsNode, tmp_path: Path) -> None:
    make_bridge(ovs_node, "OpenFlow13,OpenFlow15")
    big = _big_group(2000)
    assert len(big.buckets) == 2000  # 1999 remote + the external bucket
    ops = diff(SwitchState(groups=(big,)), SwitchState())
    assert [op.command for op in ops] == [Command.ADD] + [Command.INSERT_BUCKETS] * 2
    apply_bundle(ovs_node, ops, tmp_path)
    assert bucket_counts(ovs_node) == {9: 2000}
    # A MODIFY that shrinks, then one that grows (split again), in one bundle each.
    small = replace(big, buckets=big.buckets[:3])
    apply_bundle(ovs_node, diff(SwitchState(groups=(small,)), SwitchState(groups=(big,))),
                 tmp_path, "shrink.txt")
    assert dump_groups(ovs_node) == [render_group(small, P, PORT_NAMES)]
    ops = diff(SwitchState(groups=(big,)), SwitchState(groups=(small,)))
    assert [op.command for op in ops] == [Command.MODIFY] + [Command.INSERT_BUCKETS] * 2
    apply_bundle(ovs_node, ops, tmp_path, "grow.txt")
    assert bucket_counts(ovs_node) == {9: 2000}
    # OVS cannot describe a group over 64 KiB: the 16-bit length of its group-desc entry
    # wraps (OVS 3.1, any OpenFlow version), so dump-groups shows a decode error, not buckets.
    assert "decode error" in ovs_node.ofctl("dump-groups", BR)


def test_split_group_buckets_arrive_complete_and_in_order(ovs_node: OvsNode,
                                                         tmp_path: Path) -> None:
    make_bridge(ovs_node, "OpenFlow13,OpenFlow15")
    group = _big_group(850)  # under 64 KiB, so OVS can still dump its description
    ops = diff(SwitchState(groups=(group,)), SwitchState(), bucket_cap=300)
    assert [len(op.group.buckets) for op in ops] == [300, 300, 250]
    apply_bundle(ovs_node, ops, tmp_path)
    assert dump_groups(ovs_node) == [render_group(group, P, PORT_NAMES)]


def test_insert_buckets_is_refused_over_openflow13(ovs_node: OvsNode, tmp_path: Path) -> None:
    """Documents the limit: OVS takes insert-bucket only over OpenFlow 1.5."""
    make_bridge(ovs_node, "OpenFlow13,OpenFlow15")
    g = _big_group(3)
    path = tmp_path / "b.txt"
    path.write_text(render_bundle([GroupOp(Command.ADD, replace(g, buckets=g.buckets[:1])),
                                   GroupOp(Command.INSERT_BUCKETS,
                                           replace(g, buckets=g.buckets[1:]))], P))
    with pytest.raises(OvsError, match="OpenFlow 1.5"):
        ovs_node.ofctl("bundle", BR, str(path))
    assert dump_groups(ovs_node) == []  # nothing of the bundle was applied


def test_meters(ovs_node: OvsNode) -> None:
    make_bridge(ovs_node)
    meters = [Meter(1, 100), Meter(2, 1000, burst=50)]
    for m in meters:
        ovs_node.ofctl("add-meter", BR, render_meter_mod(m))
    text = ovs_node.ofctl("dump-meters", BR)
    body = text.split("\n", 1)[1]  # after the reply header
    assert [b.strip() for b in body.split("\n\n") if b.strip()] == [render_meter(m)
                                                                    for m in meters]
