"""agent.reconciler against a fake switch that applies ops with OVS semantics (pipeline.diff)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest

from agent.flowsync.reconciler import ConflictError, Reconciler
from agent.flowsync.switch import CookieDelete, SwitchOp
from pipeline import layout
from pipeline import multicast as mc
from pipeline.cookies import Feature, round_of
from pipeline.diff import DiffError, apply_ops, canonical
from pipeline.model import Drop, Flow, Group, Match, SwitchState
from pipeline.ops import Command, FlowOp, GroupOp

P = layout.multicast_pipeline()


class FakeSwitch:
    """Atomic bundles: either every op applies or the state is left as it was."""

    def __init__(self, state: SwitchState | None = None) -> None:
        self.state = canonical(state or SwitchState(), P)
        self.bundles: list[list[SwitchOp]] = []
        self.fail_next = False

    def apply(self, ops: Sequence[SwitchOp]) -> None:
        if self.fail_next:
            self.fail_next = False
            raise DiffError("refused")
        state = self.state
        for op in ops:
            if isinstance(op, CookieDelete):
                state = replace(state, flows=tuple(
                    f for f in state.flows if f.cookie & op.mask != op.cookie))
            else:
                state = apply_ops(state, [op], P)
        self.state = state
        self.bundles.append(list(ops))

    def dump(self) -> SwitchState:
        return self.state


def _cfg(round_: int) -> mc.BridgeConfig:
    return mc.BridgeConfig(mc.Mode.ENCAP, round_, "192.168.77.1", "02:77:00:00:00:01", 100, 200)


def _load(rec: Reconciler, round_: int, ports: Sequence[int], remote: Sequence[str]) -> None:
    cfg = _cfg(round_)
    rec.set(Feature.PIPELINE, "", SwitchState(tuple(mc.initial_flows(cfg)),
                                         (mc.query_group(ports),)))
    for p in ports:
        rec.set(Feature.POD, str(p), SwitchState(tuple(mc.pod_flows(cfg, p))))
    rec.set(Feature.GROUP, "239.1.1.1", SwitchState(
        (mc.route_flow(cfg, "239.1.1.1", 5),), (mc.multicast_group(cfg, 5, ports, remote),)))


def test_flush_applies_only_the_difference() -> None:
    sw = FakeSwitch()
    rec = Reconciler(sw, P)
    _load(rec, 1, [1, 2], ["192.168.77.2"])
    first = rec.flush()
    assert sw.state == canonical(rec.desired(), P)
    assert rec.flush() == []  # nothing changed
    rec.remove(Feature.POD, "2")
    ops = rec.flush()
    assert ops and all(isinstance(op, FlowOp) and op.command is Command.DELETE for op in ops)
    assert len(sw.bundles) == 2 and len(first) > len(ops)


def test_failed_flush_keeps_the_cache() -> None:
    sw = FakeSwitch()
    rec = Reconciler(sw, P)
    _load(rec, 1, [1], [])
    rec.flush()
    before = rec.installed
    rec.remove(Feature.POD, "1")
    sw.fail_next = True
    with pytest.raises(DiffError):
        rec.flush()
    assert rec.installed == before
    assert rec.flush()  # retried whole
    assert sw.state == canonical(rec.desired(), P)


def test_startup_adopts_groups_and_drops_old_round() -> None:
    old = Reconciler(FakeSwitch(), P)
    _load(old, 1, [1, 2], ["192.168.77.2", "192.168.77.3"])
    old.flush()
    sw = FakeSwitch(old.installed)
    stray = Group(77, ())
    sw.state = replace(sw.state, groups=(*sw.state.groups, stray))
    undescribed = Flow(layout.CLASSIFIER, 5, Match.of(in_port=9), (Drop(),), _cfg(1).cookie(1))

    rec = Reconciler(sw, P)  # the restarted agent: round 2, pod 2 gone meanwhile
    _load(rec, 2, [1], ["192.168.77.2"])
    ops = rec.startup(2)
    assert {round_of(f.cookie) for f in sw.state.flows} == {2}
    assert sw.state == canonical(rec.desired(), P)
    group_ops = [(op.command, op.group.group_id) for op in ops if isinstance(op, GroupOp)]
    assert (Command.MODIFY, 5) in group_ops and (Command.DELETE, 77) in group_ops
    assert not any(c is Command.ADD for c, _ in group_ops)  # no gap: nothing re-created
    assert ops[-1] == CookieDelete(1 << 48, 0xFFFF << 48)
    # Same key, new cookie: flows are replaced by ADD, never deleted and re-added.
    deleted = {op.flow.key for op in ops if isinstance(op, FlowOp)
               and op.command is Command.DELETE}
    assert not deleted & {f.key for f in sw.state.flows}
    # The cookie delete also removes flows the dump may not have described.
    sw.state = replace(sw.state, flows=(*sw.state.flows, undescribed))
    sw.apply([CookieDelete(1 << 48, 0xFFFF << 48)])
    assert undescribed not in sw.state.flows


def test_failed_startup_resyncs_on_next_flush() -> None:
    sw = FakeSwitch()
    rec = Reconciler(sw, P)
    _load(rec, 1, [1], [])
    rec.flush()
    sw.fail_next = True
    with pytest.raises(DiffError):
        rec.startup(2)
    assert rec.installed is None
    rec.flush()  # reads the switch back instead of trusting an unknown cache
    assert sw.state == canonical(rec.desired(), P)


def test_conflicting_keys_are_named() -> None:
    rec = Reconciler(FakeSwitch(), P)
    rec.set(Feature.GROUP, "a", SwitchState(groups=(Group(3, ()),)))
    rec.set(Feature.IGMP, "b", SwitchState(groups=(mc.query_group([1]), replace(
        mc.query_group([1]), group_id=3))))
    with pytest.raises(ConflictError, match=r"group 3 wanted differently by group/a and igmp/b"):
        rec.desired()


def test_large_group_is_split_into_inserts() -> None:
    sw = FakeSwitch()
    rec = Reconciler(sw, P)
    cfg = _cfg(1)
    remotes = [f"10.{i // 250}.{i % 250}.1" for i in range(1500)]
    rec.set(Feature.GROUP, "g", SwitchState((mc.route_flow(cfg, "239.9.9.9", 9),),
                                       (mc.multicast_group(cfg, 9, [1], remotes),)))
    ops = rec.flush()
    kinds = [op.command for op in ops if isinstance(op, GroupOp)]
    assert kinds[0] is Command.ADD and kinds[1:] == [Command.INSERT_BUCKETS] * (len(kinds) - 1)
    assert len(sw.state.groups[0].buckets) == 1502


def test_incremental_flushes_end_where_a_full_diff_would() -> None:
    """Many small flushes (one key each) leave the switch exactly as desired."""
    sw = FakeSwitch()
    rec = Reconciler(sw, P)
    cfg = _cfg(1)
    _load(rec, 1, [1, 2, 3], [])
    rec.flush()
    for i in range(30):
        g = f"239.2.0.{i + 1}"
        rec.set(Feature.GROUP, g, SwitchState((mc.route_flow(cfg, g, 100 + i),),
                                         (mc.multicast_group(cfg, 100 + i, [1 + i % 3], []),)))
        rec.flush()
        assert len(sw.bundles[-1]) == 2  # one group, one flow: no re-diff of the rest
    for i in range(0, 30, 2):
        rec.remove(Feature.GROUP, f"239.2.0.{i + 1}")
        rec.flush()
    assert sw.state == canonical(rec.desired(), P)
    assert rec.installed == sw.state


def test_an_item_two_keys_want_lives_until_both_let_go() -> None:
    sw = FakeSwitch()
    rec = Reconciler(sw, P)
    shared = Flow(layout.OUTPUT, 300, Match.of(in_port=7), (Drop(),), 0x1)
    rec.set(Feature.GROUP, "a", SwitchState((shared,)))
    rec.set(Feature.GROUP, "b", SwitchState((shared,)))
    rec.flush()
    rec.remove(Feature.GROUP, "a")
    rec.flush()
    assert shared in sw.state.flows
    rec.remove(Feature.GROUP, "b")
    rec.flush()
    assert shared not in sw.state.flows
    # and a clash between a changed key and an unchanged one is named
    rec.set(Feature.GROUP, "a", SwitchState((shared,)))
    rec.flush()
    rec.set(Feature.GROUP, "b", SwitchState((replace(shared, cookie=0x2),)))
    with pytest.raises(ConflictError, match="flow"):
        rec.flush()
