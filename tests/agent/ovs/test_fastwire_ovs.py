"""The fast path against a real ovs-vswitchd: OVS takes its bundles and holds what was wanted.

Every flow and group of the golden sample states (both modes: IGMP punts through meters,
check_pkt_larger forks, SNAT with ct(nat), tunnel and local buckets) goes in one bundle written
by ``agent.ovs.fastwire`` -- no op left to os-ken -- and the switch dumps back exactly the
desired state. Then the same through every other command the agent sends: a group split into
ADD/MODIFY + INSERT_BUCKETS (bucket ids continuing), flow MODIFY and DELETE, an agent restart
(a new round: flows re-added under new cookies, groups modified, a delete by cookie), and back
to nothing. Each OVS is private, in its own netns (``ovs_node``, see ``oflab``).
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from mcast_samples import GROUP_IP, PEER_IPS, POD_PORTS, build_state, config
from policy_samples import sample_rules

from agent.flowsync.reconciler import Reconciler
from agent.flowsync.switch import CookieDelete, SwitchOp
from agent.ovs.switch import OpenFlowSwitch
from pipeline import multicast as mc
from pipeline import policy
from pipeline.cookies import Feature
from pipeline.diff import canonical
from pipeline.model import SwitchState
from pipeline.ops import Command, FlowOp, GroupOp, MeterOp

pytestmark = pytest.mark.ovs

P = mc.pipeline()
BIG_GROUP_ID = 9


class Recording:
    """The reconciler's switch: forwards to the real one, keeps every op it was given."""

    def __init__(self, sw: OpenFlowSwitch) -> None:
        self.sw = sw
        self.ops: list[SwitchOp] = []

    def apply(self, ops: Sequence[SwitchOp]) -> None:
        self.ops += ops
        self.sw.apply(ops)

    def dump(self) -> SwitchState:
        return self.sw.dump()


def _wanted(mode: mc.Mode, round_: int, pods: Sequence[int],
            big: int) -> dict[tuple[Feature, str], SwitchState]:
    """The golden sample state, plus a group of ``big`` buckets (split by a small bucket cap)."""
    cfg = config(mode, round_)
    remote = PEER_IPS if mode is mc.Mode.ENCAP else ()
    sample = build_state(mode, round_, pods, {GROUP_IP: (5, pods, remote)}, PEER_IPS[:1])
    remotes = [f"10.9.{i // 200}.{i % 200 + 1}" for i in range(big)]
    big_group = (mc.multicast_group(cfg, BIG_GROUP_ID, range(1, big + 1), ())
                 if mode is mc.Mode.NOENCAP else
                 mc.multicast_group(cfg, BIG_GROUP_ID, (1,), remotes))
    return {(Feature.PIPELINE, ""): sample,
            (Feature.GROUP, "239.2.2.2"): SwitchState(
                (mc.route_flow(cfg, "239.2.2.2", BIG_GROUP_ID),), (big_group,))}


def _flush(rec: Reconciler, rs: Recording, wanted: dict[tuple[Feature, str], SwitchState],
           startup: int | None = None) -> list[SwitchOp]:
    for key in set(rec.keys()) - set(wanted):
        rec.remove(*key)
    for key, state in wanted.items():
        rec.set(*key, state)
    fast, declined, first = rs.sw.encoder.fast.fast, rs.sw.encoder.fast.declined, len(rs.ops)
    if startup is None:
        rec.flush()
    else:
        rec.startup(startup)
    ops = rs.ops[first:]
    bundled = [op for op in ops if not isinstance(op, MeterOp)]
    assert rs.sw.encoder.fast.fast - fast == len(bundled) > 0  # every op written by fastwire
    assert rs.sw.encoder.fast.declined == declined
    assert canonical(rs.sw.dump(), P) == canonical(rec.desired(), P)
    return ops


def _kinds(ops: Sequence[SwitchOp]) -> set[tuple[str, str]]:
    return {(type(op).__name__, getattr(op, "command", Command.DELETE).value) for op in ops}


@pytest.mark.parametrize("mode", list(mc.Mode))
def test_fast_bundles_are_taken_and_read_back_equal(switch: OpenFlowSwitch,
                                                     mode: mc.Mode) -> None:
    rs = Recording(switch)
    rec = Reconciler(rs, P, bucket_cap=100)
    ops = _flush(rec, rs, _wanted(mode, 3, POD_PORTS, big=250))
    assert {("GroupOp", "add"), ("GroupOp", "insert_buckets"), ("FlowOp", "add")} <= _kinds(ops)
    # Members change and a pod leaves: MODIFY (+ INSERT_BUCKETS after the switch's bucket ids),
    # flow deletes and modifies.
    ops = _flush(rec, rs, _wanted(mode, 3, POD_PORTS[:1], big=310))
    assert {("GroupOp", "modify"), ("GroupOp", "insert_buckets"),
            ("FlowOp", "delete")} <= _kinds(ops)
    # The agent restarts with a new round: it reads the switch, re-adds flows under the new
    # cookies, modifies the group that changed meanwhile, and deletes by cookie whatever of the
    # old round is left.
    again = Reconciler(rs, P, bucket_cap=100)
    ops = _flush(again, rs, _wanted(mode, 4, POD_PORTS[:1], big=320), startup=4)
    assert any(isinstance(op, CookieDelete) for op in ops)
    assert {("GroupOp", "modify"), ("FlowOp", "add")} <= _kinds(ops)
    # And back to nothing but the pipeline: the big group and its route go.
    ops = _flush(again, rs, {k: v for k, v in _wanted(mode, 4, POD_PORTS[:1], big=1).items()
                             if k[0] is Feature.PIPELINE})
    assert {("GroupOp", "delete"), ("FlowOp", "delete")} <= _kinds(ops)
    assert all(isinstance(op, FlowOp | GroupOp | MeterOp | CookieDelete) for op in rs.ops)


@pytest.mark.parametrize("mode", list(mc.Mode))
def test_policy_conjunctions_are_taken_and_read_back_equal(switch: OpenFlowSwitch,
                                                          mode: mc.Mode) -> None:
    """Conjunctive flows and conj_id matches, written by fastwire, read back through os-ken
    as the very flows wanted: a second flush finds nothing to change (no spurious diff)."""
    rs = Recording(switch)
    rec = Reconciler(rs, P)
    cfg = config(mode, 3)
    rules = sample_rules()
    wanted = {(Feature.PIPELINE, ""): _wanted(mode, 3, POD_PORTS, big=1)[(Feature.PIPELINE, "")],
              (Feature.POLICY, "rules"): SwitchState(tuple(policy.policy_flows(cfg, rules)))}
    ops = _flush(rec, rs, wanted)
    assert any(isinstance(op, FlowOp) and op.flow.match.get("conj_id") for op in ops)
    again = Reconciler(rs, P)  # an agent restart in the same round: reads the switch back
    for key, state in wanted.items():
        again.set(*key, state)
    before = len(rs.ops)
    again.startup(3)
    assert rs.ops[before:] == []
    assert canonical(rs.sw.dump(), P) == canonical(again.desired(), P)
    # one rule goes: exactly its flows are deleted
    fewer = {**wanted, (Feature.POLICY, "rules"): SwitchState(tuple(policy.policy_flows(
        cfg, rules[1:])))}
    ops = _flush(again, rs, fewer)
    assert {op.command for op in ops} == {Command.DELETE}
    assert len(ops) == len(policy.rule_flows(cfg, rules[0]))
