"""pipeline.policy: the flows of multicast policy rules, as text (golden) and as where packets go.

The golden file holds the ovs-ofctl text of ``policy_samples.sample_rules`` (``UPDATE_GOLDEN=1``
rewrites it; test_real_ovs_render.py proves OVS dumps that text back). The fake-table tests put
rules on the walks' node (``walks``: pods 1-4; G1 = pods 2,3 + nodes B,C; G2 = pod 4; G5 = pod
2) and assert deliveries and counters; test_fake_vs_ovs.py proves real OVS agrees.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from mcast_samples import config
from policy_samples import ALLOW, DROP, EGRESS, INGRESS, sample_rules, walk_packets, walk_rules
from walks import G1, G2, G3, G5, OUTSIDE_IP, TUNNEL, UPLINK, from_pod, from_uplink, node, pod_ip

from pipeline import layout
from pipeline import multicast as mc
from pipeline.cookies import Feature, feature_of
from pipeline.fake_table import FakeSwitch, Trace
from pipeline.model import Conjunction, Drop, Flow, FlowError, GotoTable, Match, Output
from pipeline.policy import (
    RULE_PRIORITIES,
    DataRule,
    PolicyError,
    metric_flow,
    policy_flows,
    rule_flows,
    rule_stats_of,
)
from pipeline.registers import OUT_PORT, OVERSIZE
from pipeline.render import render_flow

GOLDEN = Path(__file__).parent / "golden" / "policy.txt"
P = mc.pipeline()


def test_golden() -> None:
    cfg = config(mc.Mode.ENCAP)
    text = "".join(render_flow(f, P) + "\n" for f in policy_flows(cfg, sample_rules()))
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text)
    want = GOLDEN.read_text()
    if text != want:
        delta = "".join(difflib.unified_diff(want.splitlines(True), text.splitlines(True),
                                             "golden/policy.txt", "rendered"))
        pytest.fail(f"policy flows differ from golden/policy.txt (UPDATE_GOLDEN=1 to accept):"
                    f"\n{delta}", pytrace=False)


# -- the flows of one rule ---------------------------------------------------------------------


def test_one_conjunction_per_dimension_value_and_one_metric_flow() -> None:
    cfg = config(mc.Mode.ENCAP)
    rule = DataRule(9, 1500, INGRESS, DROP, (3, 1, 3), ("239.1.1.1", "239.2.0.0/16"),
                    ("10.0.0.1",), (5000, 5001, 5000))
    flows = rule_flows(cfg, rule)
    assert {f.priority for f in flows} == {1500}
    assert {f.table for f in flows} == {layout.INGRESS_RULE}
    clauses = [a for f in flows for a in f.actions if isinstance(a, Conjunction)]
    # pods 1, 3 | 2 groups | 1 source | 2 ports: one flow per distinct value, 4 clauses
    assert sorted(c.clause for c in clauses) == [1, 1, 2, 2, 3, 4, 4]
    assert {(c.conj_id, c.n_clauses) for c in clauses} == {(9, 4)}
    assert flows[0].match == Match.of((OUT_PORT, 1), eth_type=0x800)
    assert flows[-1] == metric_flow(cfg, rule)
    assert flows[-1].match == Match.of(conj_id=9, eth_type=0x800)
    assert flows[-1].actions == (Drop(),)
    assert [rule_stats_of(f) for f in flows] == [None] * 7 + [9]
    assert {feature_of(f.cookie) for f in flows} == {Feature.POLICY}


def test_a_rule_of_pods_alone_still_has_two_clauses() -> None:
    """OVS wants two clauses at least: the group dimension is all of 224.0.0.0/4."""
    cfg = replace(config(mc.Mode.NOENCAP), max_pod_frame=None)
    flows = rule_flows(cfg, DataRule(5, 1000, EGRESS, ALLOW, (7,)))
    assert [(f.match, f.actions) for f in flows] == [
        (Match.of(in_port=7, eth_type=0x800), (Conjunction(5, 1, 2),)),
        (Match.of(eth_type=0x800, ipv4_dst="224.0.0.0/4"), (Conjunction(5, 2, 2),)),
        (Match.of(conj_id=5, eth_type=0x800), (GotoTable(layout.EGRESS_METRIC),)),
    ]


def test_egress_rules_under_the_size_check_count_one_outcome() -> None:
    """The classifier's check_pkt_larger makes OVS credit egress rules once per outcome: the
    metric flow takes frames that are not oversized, a twin (not counted) the others."""
    rule = DataRule(5, 1000, EGRESS, DROP, (7,))
    *_, metric, twin = rule_flows(config(mc.Mode.ENCAP), rule)
    assert metric.match == Match.of((OVERSIZE, 0), conj_id=5, eth_type=0x800)
    assert twin.match == Match.of((OVERSIZE, 1), conj_id=5, eth_type=0x800)
    assert metric.actions == twin.actions == (Drop(),)
    assert (rule_stats_of(metric), rule_stats_of(twin)) == (5, None)
    ingress = rule_flows(config(mc.Mode.ENCAP), replace(rule, direction=INGRESS))
    assert ingress[-1].match == Match.of(conj_id=5, eth_type=0x800)  # one outcome gets there


def test_no_pod_here_no_flows() -> None:
    assert rule_flows(config(mc.Mode.ENCAP), DataRule(5, 1000, INGRESS, DROP, ())) == []


@pytest.mark.parametrize("kw", [
    {"conj_id": 0}, {"conj_id": 1 << 32}, {"priority": RULE_PRIORITIES.start - 1},
    {"priority": RULE_PRIORITIES.stop}, {"groups": ("10.0.0.0/8",)}, {"groups": ("224/4",)},
    {"sources": ("10.0.0.1",)}, {"ports": (0xFFFFFFFE,)}, {"udp_ports": (70000,)},
])
def test_rules_that_cannot_be_flows(kw: dict[str, object]) -> None:
    args: dict[str, object] = {"conj_id": 1, "priority": 2000, "direction": EGRESS,
                               "verdict": DROP, "ports": (1,), **kw}
    with pytest.raises(PolicyError):
        DataRule(**args)  # type: ignore[arg-type]


def test_rule_sets_ovs_would_resolve_arbitrarily_are_refused() -> None:
    cfg = config(mc.Mode.ENCAP)
    with pytest.raises(PolicyError, match="conj_id 1"):
        policy_flows(cfg, [DataRule(1, 2000, EGRESS, DROP, (1,)),
                           DataRule(1, 3000, INGRESS, DROP, (1,))])
    with pytest.raises(PolicyError, match="priority 2000"):
        policy_flows(cfg, [DataRule(1, 2000, EGRESS, DROP, (1,)),
                           DataRule(2, 2000, EGRESS, ALLOW, (2,))])
    same = DataRule(1, 2000, EGRESS, DROP, (1,))
    assert policy_flows(cfg, [same, same]) == rule_flows(cfg, same)
    # one priority in each direction is fine: different tables
    policy_flows(cfg, [same, DataRule(2, 2000, INGRESS, DROP, (1,))])


def test_conjunction_flows_hold_only_conjunctions() -> None:
    m = Match.of(in_port=1, eth_type=0x800)
    with pytest.raises(FlowError, match="conjunction cannot be combined"):
        Flow(layout.EGRESS_RULE, 2000, m, (Conjunction(1, 1, 2), Output(2)))
    for bad in ((1, 0, 2), (1, 3, 2), (1, 1, 1), (1, 1, 65), (1 << 32, 1, 2)):
        with pytest.raises(FlowError):
            Conjunction(*bad)
    Flow(layout.EGRESS_RULE, 2000, m, (Conjunction(1, 1, 2), Conjunction(2, 64, 64)))


def test_stats_are_read_only_off_metric_flows() -> None:
    cfg = config(mc.Mode.ENCAP)
    flows = policy_flows(cfg, sample_rules())
    assert sorted(i for f in flows if (i := rule_stats_of(f)) is not None) == sorted(
        r.conj_id for r in sample_rules())
    assert all(rule_stats_of(f) is None for f in mc.initial_flows(cfg))


# -- where packets go ------------------------------------------------------------------------


def _switch(mode: mc.Mode, rules: Sequence[DataRule]) -> tuple[FakeSwitch, list[Flow]]:
    state = node(mode)
    extra = policy_flows(state.cfg, rules)
    sw = FakeSwitch(P, state.flows + tuple(extra), state.groups, meters=state.meters,
                    tunnel_ports={TUNNEL} if state.cfg.tunnel_port else (), ports=state.ports)
    return sw, extra


def _metric(sw: FakeSwitch, flows: list[Flow], conj_id: int) -> int:
    return sw.n_packets(next(f for f in flows if rule_stats_of(f) == conj_id))


def _pods(t: Trace) -> list[int]:
    return [p for p in t.ports() if p not in (TUNNEL, UPLINK)]


@pytest.mark.parametrize("mode", list(mc.Mode))
def test_egress_drop_of_one_group_before_the_pods_outbound_count(mode: mc.Mode) -> None:
    sw, flows = _switch(mode, [DataRule(7, 2000, EGRESS, DROP, (1,), (G2,))])
    outbound = node(mode).flow(layout.EGRESS_METRIC, in_port=1)
    t = sw.process(from_pod(1, G2))
    assert t.ports() == [] and "drop by flow in MulticastEgressRule" in t.drops, t.explain()
    assert sw.n_packets(outbound) == 0  # a dropped packet is not the pod's outbound multicast
    assert _metric(sw, flows, 7) == 1
    assert sw.process(from_pod(1, G3)).ports() == [UPLINK]  # no group: external only
    assert _pods(sw.process(from_pod(1, G1))) == [2, 3]
    assert sw.n_packets(outbound) == 2 and _metric(sw, flows, 7) == 1
    # OVS credits only the flow its lookup runs: never a conjunctive flow
    assert all(sw.n_packets(f) == 0 for f in flows if isinstance(f.actions[0], Conjunction))


@pytest.mark.parametrize("mode", list(mc.Mode))
def test_ingress_drop_of_one_group(mode: mc.Mode) -> None:
    sw, flows = _switch(mode, [DataRule(7, 2000, INGRESS, DROP, (2,), (G1,))])
    inbound2 = node(mode).flow(layout.INGRESS_METRIC, **{OUT_PORT.oxm: 2})
    assert _pods(sw.process(from_pod(1, G1))) == [3]
    assert _pods(sw.process(from_pod(1, G5))) == [2]  # pod 2's other group
    assert _pods(sw.process(from_uplink(G1))) == [3]
    assert _metric(sw, flows, 7) == 2 and sw.n_packets(inbound2) == 1


@pytest.mark.parametrize("mode", list(mc.Mode))
def test_ingress_drop_of_one_source(mode: mc.Mode) -> None:
    sw, flows = _switch(mode, [DataRule(7, 2000, INGRESS, DROP, (3,), (G1,), (pod_ip(1),))])
    assert _pods(sw.process(from_pod(1, G1))) == [2]
    assert _pods(sw.process(from_pod(4, G1))) == [2, 3]
    assert _pods(sw.process(from_uplink(G1))) == [2, 3]
    assert _metric(sw, flows, 7) == 1


@pytest.mark.parametrize("mode", list(mc.Mode))
def test_the_first_matching_rule_wins_and_no_rule_allows(mode: mc.Mode) -> None:
    allow_g1 = DataRule(1, 3000, EGRESS, ALLOW, (1,), (G1,))
    drop_239 = DataRule(2, 2000, EGRESS, DROP, (1,), ("239.0.0.0/8",))
    sw, flows = _switch(mode, [allow_g1, drop_239])
    assert _pods(sw.process(from_pod(1, G1))) == [2, 3]
    assert sw.process(from_pod(1, G2)).ports() == []
    assert _pods(sw.process(from_pod(4, G1))) == [2, 3]  # no rule for pod 4
    assert sw.process(from_pod(1, "238.1.1.1")).ports() == [UPLINK]  # outside 239/8
    assert (_metric(sw, flows, 1), _metric(sw, flows, 2)) == (1, 1)
    # the same rules, priorities swapped: the drop comes first now
    sw, _ = _switch(mode, [DataRule(1, 2000, EGRESS, ALLOW, (1,), (G1,)),
                           DataRule(2, 3000, EGRESS, DROP, (1,), ("239.0.0.0/8",))])
    assert sw.process(from_pod(1, G1)).ports() == []


@pytest.mark.parametrize("mode", list(mc.Mode))
def test_udp_port_restriction(mode: mc.Mode) -> None:
    sw, flows = _switch(mode, [DataRule(7, 2000, INGRESS, DROP, (2, 3), (G1,),
                                        udp_ports=(5001, 5002))])
    assert _pods(sw.process(from_pod(1, G1))) == [2, 3]  # UDP 5000
    assert _pods(sw.process(from_pod(1, G1).replace(udp_dst=5002))) == []
    assert _metric(sw, flows, 7) == 2  # one packet, two copies dropped


@pytest.mark.parametrize("mode", list(mc.Mode))
def test_a_partly_matched_rule_falls_through_to_the_next(mode: mc.Mode) -> None:
    sw, flows = _switch(mode, [DataRule(1, 3000, INGRESS, ALLOW, (2,), (G5,), (pod_ip(4),)),
                               DataRule(2, 2000, INGRESS, DROP, (2,), (), (OUTSIDE_IP,))])
    assert _pods(sw.process(from_pod(4, G5))) == [2]  # rule 1 whole
    assert _pods(sw.process(from_uplink(G5))) == []  # rule 1 lacks the source: rule 2
    assert _pods(sw.process(from_pod(1, G5))) == [2]  # neither whole: the miss allows
    assert (_metric(sw, flows, 1), _metric(sw, flows, 2)) == (1, 1)


@pytest.mark.parametrize("mode", list(mc.Mode))
def test_self_loop_drop_stays_above_every_rule(mode: mc.Mode) -> None:
    sw, flows = _switch(mode, [DataRule(7, RULE_PRIORITIES.stop - 1, INGRESS, ALLOW, (2,))])
    t = sw.process(from_pod(2, G1))
    assert _pods(t) == [3] and not t.suppressed, t.explain()
    assert _metric(sw, flows, 7) == 0


@pytest.mark.parametrize("mode", list(mc.Mode))
def test_walk_rules(mode: mc.Mode) -> None:
    """The rule set the real-OVS comparison uses, spelled out on the fake table."""
    sw, _ = _switch(mode, walk_rules())
    got = {name: _pods(sw.process(p)) for name, p in walk_packets().items()}
    assert got == {
        "pod1->G1:5001 (allow above drop)": [2, 3],
        "pod1->G1:5000 (allow incomplete, drop below)": [],
        "pod1->G2 (drop)": [],
        "pod2->G1 (no egress rule, self-loop)": [3],
        "pod3->G1 (allow)": [2],
        "pod3->G2 (drop)": [],
        "pod4->G2 (drop)": [],
        "pod4->G1 (no egress rule)": [2, 3],
        "pod4->G3 (no group, no rule)": [],
        "pod2->G5 (sender is the member)": [],
        "pod4->G5 (pod 2 allowed)": [2],
        "tunnel->G1 (pod 2 drops the source)": [3] if mode is mc.Mode.ENCAP else [],
        "uplink->G1 (source rule incomplete, allow below)": [2, 3],
        "uplink->G5 (drop from outside)": [],
        "uplink->G2:5000 (pod 4 drops)": [],
        "uplink->G2:6000 (no rule)": [4],
    }
