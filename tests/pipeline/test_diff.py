"""pipeline.diff: add/modify/delete, the ordering rule, and replay with OVS semantics."""

from __future__ import annotations

from dataclasses import replace

import pytest
from mcast_samples import sample_state

from pipeline import layout
from pipeline import multicast as mc
from pipeline.diff import DiffError, apply_ops, canonical, diff, flow_sort_key
from pipeline.model import (
    Bucket,
    Drop,
    Flow,
    GotoTable,
    Group,
    GroupAction,
    Match,
    Meter,
    Output,
    SwitchState,
)
from pipeline.ops import Command, FlowOp, GroupOp, MeterOp, Op
from pipeline.switchmodel import index_flows

P = layout.multicast_pipeline()
ROUTE = layout.ROUTING


def _route(ip: str, gid: int, cookie: int = 1) -> Flow:
    return Flow(ROUTE, 200, Match.of(eth_type=0x800, ipv4_dst=ip), (GroupAction(gid),), cookie)


def _group(gid: int, *ports: int) -> Group:
    return Group(gid, tuple(Bucket((Output(p),)) for p in ports))


def _kinds(ops: list[Op]) -> list[tuple[str, Command]]:
    return [(type(op).__name__, op.command) for op in ops]


def test_equal_states_need_nothing() -> None:
    s = sample_state(mc.Mode.ENCAP)
    assert diff(s, s) == []


def test_add_everything_into_an_empty_switch() -> None:
    s = sample_state(mc.Mode.ENCAP)
    ops = diff(s, SwitchState())
    assert {op.command for op in ops} == {Command.ADD}
    assert apply_ops(SwitchState(), ops) == canonical(s)


def test_delete_everything() -> None:
    s = replace(sample_state(mc.Mode.NOENCAP), meters=(Meter(1, 100),))
    ops = diff(SwitchState(), s)
    assert {op.command for op in ops} == {Command.DELETE}
    assert _kinds(ops)[-3:] == [("GroupOp", Command.DELETE)] * 2 + [("MeterOp", Command.DELETE)]
    assert apply_ops(s, ops) == SwitchState()


def test_actions_change_is_modify_cookie_change_is_add() -> None:
    have = SwitchState(flows=(_route("239.1.1.1", 1), _route("239.1.1.2", 1)),
                        groups=(_group(1, 1), _group(2, 2)))
    want = SwitchState(flows=(_route("239.1.1.1", 2), _route("239.1.1.2", 1, cookie=9)),
                        groups=have.groups)
    ops = diff(want, have)
    assert ops == [FlowOp(Command.MODIFY, want.flows[0]), FlowOp(Command.ADD, want.flows[1])]
    assert apply_ops(have, ops) == canonical(want)


def test_modify_alone_would_keep_the_old_cookie() -> None:
    # What the replay knows about OVS: a modify keeps the cookie (OpenFlow 1.3 and 1.5 alike).
    have = SwitchState(flows=(_route("239.1.1.1", 1, cookie=1),), groups=(_group(1, 1),))
    new = _route("239.1.1.1", 1, cookie=2)
    after = apply_ops(have, [FlowOp(Command.MODIFY, new)])
    assert after.flows[0].cookie == 1
    assert apply_ops(have, [FlowOp(Command.ADD, new)]).flows[0].cookie == 2


def test_group_modify_and_order_of_classes() -> None:
    have = SwitchState(
        flows=(_route("239.1.1.1", 1), _route("239.1.1.9", 9)),
        groups=(_group(1, 1), _group(9, 9)),
        meters=(Meter(3, 10), Meter(4, 10)),
    )
    want = SwitchState(
        flows=(_route("239.1.1.1", 1), _route("239.1.1.2", 2)),
        groups=(_group(1, 1, 2), _group(2, 3)),
        meters=(Meter(3, 20), Meter(5, 10)),
    )
    ops = diff(want, have)
    assert _kinds(ops) == [
        ("MeterOp", Command.MODIFY), ("MeterOp", Command.ADD),
        ("GroupOp", Command.MODIFY), ("GroupOp", Command.ADD),
        ("FlowOp", Command.ADD),
        ("FlowOp", Command.DELETE),
        ("GroupOp", Command.DELETE),
        ("MeterOp", Command.DELETE),
    ]
    assert ops[2] == GroupOp(Command.MODIFY, want.groups[0])
    assert ops[-2] == GroupOp(Command.DELETE, have.groups[1])
    assert ops[-1] == MeterOp(Command.DELETE, Meter(4, 10))
    assert apply_ops(have, ops) == canonical(want)


def test_group_deletes_come_after_the_flows_that_used_them() -> None:
    have = SwitchState(flows=(_route("239.1.1.1", 1),), groups=(_group(1, 1),))
    want = SwitchState(flows=(_route("239.1.1.1", 2),), groups=(_group(2, 2),))
    ops = diff(want, have)
    assert _kinds(ops) == [("GroupOp", Command.ADD), ("FlowOp", Command.MODIFY),
                           ("GroupOp", Command.DELETE)]
    assert apply_ops(have, ops) == canonical(want)
    # The other order would lose the flow: OpenFlow deletes flows that use a deleted group...
    bad = [ops[0], ops[2], ops[1]]
    assert apply_ops(have, bad).flows == ()
    # ...and refuses a flow that uses a group not yet added.
    with pytest.raises(DiffError, match="missing groups"):
        apply_ops(have, [ops[1], ops[0]])


def test_deterministic_sort_within_a_class() -> None:
    flows = [
        Flow(layout.OUTPUT, 5, Match(), (Drop(),)),
        Flow(layout.CLASSIFIER, 200, Match.of(in_port=2), (Drop(),)),
        Flow(layout.CLASSIFIER, 200, Match.of(in_port=10), (Drop(),)),
        Flow(layout.CLASSIFIER, 100, Match.of(in_port=3), (Drop(),)),
        Flow(layout.CLASSIFIER, 200, Match.of(eth_type=0x800, ipv4_dst="224.0.0.0/4"),
             (Drop(),)),
        Flow(layout.CLASSIFIER, 200, Match.of(eth_type=0x800, ipv4_dst="224.0.0.0"), (Drop(),)),
        Flow(layout.EGRESS_RULE, 0, Match(), (GotoTable(layout.EGRESS_METRIC),)),
    ]
    want = SwitchState(flows=tuple(flows))
    got = [op.flow for op in diff(want, SwitchState())]
    assert got == sorted(flows, key=lambda f: flow_sort_key(f, P))
    assert [(f.table, f.priority) for f in got] == [
        (layout.CLASSIFIER, 100), *[(layout.CLASSIFIER, 200)] * 4, (layout.EGRESS_RULE, 0),
        (layout.OUTPUT, 5)]
    ports = [f.match.get("in_port").value for f in got[1:5] if f.match.get("in_port")]
    assert ports == [2, 10]  # numeric, not textual
    # The same ops whatever order the states list things in.
    assert diff(SwitchState(flows=tuple(reversed(flows))), SwitchState()) == \
        diff(want, SwitchState())


def test_large_group_is_split_in_order() -> None:
    big = Group(7, tuple(mc.remote_bucket(f"10.0.{i // 200}.{i % 200 + 1}") for i in range(1500)))
    want = SwitchState(flows=(_route("239.1.1.7", 7),), groups=(big,))
    ops = diff(want, SwitchState(), bucket_cap=700)
    assert _kinds(ops) == [("GroupOp", Command.ADD), ("GroupOp", Command.INSERT_BUCKETS),
                           ("GroupOp", Command.INSERT_BUCKETS), ("FlowOp", Command.ADD)]
    assert apply_ops(SwitchState(), ops) == canonical(want)
    shrink = replace(big, buckets=big.buckets[:10])
    ops = diff(replace(want, groups=(shrink,)), want)
    assert ops == [GroupOp(Command.MODIFY, shrink)]


def test_inconsistent_states_are_refused() -> None:
    a, b = _route("239.1.1.1", 1), _route("239.1.1.1", 2)
    with pytest.raises(DiffError, match="share key"):
        diff(SwitchState(flows=(a, b)), SwitchState())
    assert index_flows([a, a]) == {a.key: a}  # identical duplicates merge
    with pytest.raises(DiffError, match="group"):
        diff(SwitchState(groups=(_group(1, 1), _group(1, 2))), SwitchState())


def test_replay_errors_like_ovs() -> None:
    g = _group(1, 1)
    with pytest.raises(DiffError, match="EXISTS"):
        apply_ops(SwitchState(groups=(g,)), [GroupOp(Command.ADD, g)])
    with pytest.raises(DiffError, match="UNKNOWN_GROUP"):
        apply_ops(SwitchState(), [GroupOp(Command.MODIFY, g)])
    with pytest.raises(DiffError, match="UNKNOWN_METER"):
        apply_ops(SwitchState(), [MeterOp(Command.MODIFY, Meter(1, 1))])
    # modify of a missing flow does nothing (only OpenFlow 1.0 added it)
    assert apply_ops(SwitchState(groups=(g,)), [FlowOp(Command.MODIFY, _route("239.1.1.1", 1))]
                     ).flows == ()


def test_round_bump_replaces_every_flow_by_add() -> None:
    old, new = sample_state(mc.Mode.ENCAP, round_=3), sample_state(mc.Mode.ENCAP, round_=4)
    ops = diff(new, old)
    assert ops and all(isinstance(op, FlowOp) and op.command is Command.ADD for op in ops)
    assert len(ops) == len(new.flows)
    assert apply_ops(old, ops) == canonical(new)
