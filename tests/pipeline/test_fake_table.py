"""Packet walks of DESIGN.md section 2 on the fake table, both modes: assert where copies go.

The node (4 pods, tunnel, uplink, G1 = pods 2,3 + nodes B,C; G2 = pod 4) comes from walks.py and
is built only with the pipeline builders. The fake table's own semantics (priority, masks,
action-set buckets, NAT, counters, installation errors) are tested at the end.
"""

from __future__ import annotations

import pytest
from walks import (
    G1,
    G2,
    G3,
    G4,
    G5,
    NODE_B,
    NODE_C,
    NODE_IP,
    NODE_MAC,
    PODS,
    TUNNEL,
    UPLINK,
    V2_LEAVE,
    V3_REPORTS,
    from_pod,
    from_tunnel,
    from_uplink,
    node,
    packets,
    pod_ip,
    pod_mac,
    query,
)

from pipeline import layout
from pipeline import multicast as mc
from pipeline.fake_table import (
    AmbiguousMatch,
    FakeSwitch,
    FakeTableError,
    Packet,
    Trace,
    effective_bucket_actions,
)
from pipeline.model import (
    ETH_TYPE_IP,
    IP_PROTO_IGMP,
    Bucket,
    Ct,
    Drop,
    Flow,
    Group,
    GroupAction,
    Match,
    Output,
    OutputReg,
    SetField,
)
from pipeline.multicast import Mode, PuntReason
from pipeline.ops import Command, FlowOp, GroupOp
from pipeline.registers import OUT_PORT

BOTH = pytest.mark.parametrize("mode", [Mode.ENCAP, Mode.NOENCAP])


def run(mode: Mode, packet: Packet) -> Trace:
    return node(mode).switch().process(packet)


def unchanged(trace: Trace, port: int) -> bool:
    (d,) = trace.to(port)
    return d.packet.ipv4_src == trace.packet.ipv4_src and d.packet.eth_src == trace.packet.eth_src


# -- pod senders ------------------------------------------------------------------------------


@BOTH
def test_pod_to_group_reaches_members_remote_nodes_and_external(mode: Mode) -> None:
    t = run(mode, from_pod(1, G1))
    encap = mode is Mode.ENCAP
    assert t.ports() == [2, 3] + ([TUNNEL, TUNNEL] if encap else []) + [UPLINK], t.explain()
    assert unchanged(t, 2) and unchanged(t, 3)
    assert sorted(d.tun_dst for d in t.to(TUNNEL)) == ([NODE_B, NODE_C] if encap else [])
    assert all(d.packet.ipv4_src == pod_ip(1) for d in t.to(TUNNEL))
    (ext,) = t.to(UPLINK)
    if encap:  # SNAT to the node, and the node's MAC
        assert (ext.packet.ipv4_src, ext.packet.eth_src) == (NODE_IP, NODE_MAC)
    else:
        assert (ext.packet.ipv4_src, ext.packet.eth_src) == (pod_ip(1), pod_mac(1))
    assert ext.tun_dst is None and not t.packet_ins


@BOTH
def test_member_sender_gets_no_copy_back(mode: Mode) -> None:
    t = run(mode, from_pod(2, G1))
    assert 2 not in t.ports() and t.ports().count(3) == 1, t.explain()
    # The self-loop drop removes the sender's own copy before its ingress metric counts it,
    # so nothing even reaches OVS's implicit output-to-in_port drop.
    assert t.suppressed == [], t.explain()
    t = run(mode, from_pod(4, G2))
    assert t.ports() == [UPLINK] and t.suppressed == [], t.explain()


@BOTH
def test_group_with_one_member(mode: Mode) -> None:
    assert run(mode, from_pod(1, G2)).ports() == [4, UPLINK]


@BOTH
@pytest.mark.parametrize("group", [G3, G4], ids=["no-group", "empty-group"])
def test_group_without_member_goes_only_external(mode: Mode, group: str) -> None:
    t = run(mode, from_pod(1, group))
    assert t.ports() == [UPLINK], t.explain()
    src = NODE_IP if mode is Mode.ENCAP else pod_ip(1)
    assert t.deliveries[0].packet.ipv4_src == src


# -- IGMP -------------------------------------------------------------------------------------


@BOTH
@pytest.mark.parametrize("dst", [G1, G2, V2_LEAVE, V3_REPORTS], ids=["v1", "v2", "leave", "v3"])
def test_pod_igmp_is_punted_never_forwarded(mode: Mode, dst: str) -> None:
    t = run(mode, from_pod(3, dst, IP_PROTO_IGMP))
    assert t.deliveries == [] and t.suppressed == [], t.explain()
    assert [(p.userdata, p.table) for p in t.packet_ins] == [
        (mc.punt_userdata(PuntReason.IGMP_POD), layout.CLASSIFIER)
    ]
    assert t.tables == [layout.CLASSIFIER]  # never reaches data rules or metrics


def test_tunnel_igmp_is_punted() -> None:
    t = run(Mode.ENCAP, from_tunnel(V3_REPORTS, IP_PROTO_IGMP))
    assert t.deliveries == []
    assert [p.userdata for p in t.packet_ins] == [mc.punt_userdata(PuntReason.IGMP_TUNNEL)]


@BOTH
def test_uplink_igmp_is_punted(mode: Mode) -> None:
    t = run(mode, from_uplink("224.0.0.1", proto=IP_PROTO_IGMP))
    assert t.deliveries == []
    assert [p.userdata for p in t.packet_ins] == [mc.punt_userdata(PuntReason.IGMP_UPLINK)]


@BOTH
def test_query_packet_out_floods_every_pod(mode: Mode) -> None:
    t = run(mode, query())
    assert t.ports() == list(PODS) and not t.packet_ins, t.explain()


# -- traffic arriving from other nodes or the outside ----------------------------------------


def test_tunnel_traffic_goes_to_local_members_only() -> None:
    t = run(Mode.ENCAP, from_tunnel(G1))
    assert t.ports() == [2, 3], t.explain()
    assert unchanged(t, 2) and all(d.tun_dst is None for d in t.deliveries)
    assert run(Mode.ENCAP, from_tunnel(G3)).ports() == []


@BOTH
def test_uplink_traffic_goes_to_local_members_only(mode: Mode) -> None:
    t = run(mode, from_uplink(G1))
    assert t.ports() == [2, 3] and unchanged(t, 3), t.explain()
    assert run(mode, from_uplink(G3)).ports() == []


def test_encap_drops_other_nodes_snat_traffic_on_uplink() -> None:
    t = run(Mode.ENCAP, from_uplink(G1, src=NODE_B))
    assert t.ports() == [] and t.tables == [layout.CLASSIFIER], t.explain()
    assert run(Mode.ENCAP, from_uplink(G1, src=NODE_C)).ports() == []


def test_noencap_has_no_tunnel() -> None:
    state = node(Mode.NOENCAP)
    assert TUNNEL not in state.ports
    assert not any(isinstance(a, Output) and a.port == TUNNEL
                   for f in state.flows for a in f.actions)
    assert run(Mode.NOENCAP, from_tunnel(G1)).ports() == []
    # another node's pod traffic arrives on the uplink unchanged and reaches local members
    assert run(Mode.NOENCAP, from_uplink(G1, src=NODE_B)).ports() == [2, 3]


@BOTH
def test_unknown_port_is_dropped(mode: Mode) -> None:
    t = run(mode, from_pod(1, G1).replace(in_port=99))
    assert t.deliveries == [] and t.packet_ins == []
    assert t.drops == [f"miss in {layout.CLASSIFIER}"]


@BOTH
@pytest.mark.parametrize("forged", [{"ipv4_src": pod_ip(2)}, {"eth_src": pod_mac(2)}],
                         ids=["ip", "mac"])
def test_spoofed_multicast_is_dropped_at_the_classifier(mode: Mode, forged: dict) -> None:
    """A pod forging another pod's address reaches no pod, node or outside (issue 11)."""
    t = run(mode, from_pod(1, G1).replace(**forged))
    assert t.deliveries == [] and t.packet_ins == [], t.explain()
    assert t.tables == [layout.CLASSIFIER] and t.drops == [f"drop by flow in {layout.CLASSIFIER}"]
    honest = run(mode, from_pod(1, G1))
    assert honest.deliveries, honest.explain()


@BOTH
def test_pod_igmp_passes_its_port_meter(mode: Mode) -> None:
    assert run(mode, from_pod(3, G1, IP_PROTO_IGMP)).meters == [3]


def test_every_walk_runs_in_both_modes() -> None:
    for mode in Mode:
        sw = node(mode).switch()
        for name, p in packets().items():
            assert sw.process(p) is not None, name


# -- metrics ----------------------------------------------------------------------------------


@BOTH
def test_metrics_count_egress_once_and_ingress_per_delivered_copy(mode: Mode) -> None:
    state = node(mode)
    sw = state.switch()
    egress = state.flow(layout.EGRESS_METRIC, in_port=1)

    def ingress(port: int) -> Flow:
        return state.flow(layout.INGRESS_METRIC, **{OUT_PORT.oxm: port})

    for _ in range(3):
        sw.process(from_pod(1, G1))
    sw.process(from_pod(1, V3_REPORTS, IP_PROTO_IGMP))  # IGMP never counts
    assert sw.n_packets(egress) == 3
    assert [sw.n_packets(ingress(p)) for p in PODS] == [0, 3, 3, 0]
    assert sw.group_n_packets(1) == 3
    sw.process(from_uplink(G2))
    assert sw.n_packets(ingress(4)) == 1 and sw.n_packets(egress) == 3
    sw.reset_counters()
    assert sw.n_packets(egress) == 0


def test_member_sender_inbound_metric_counts_nothing_for_itself() -> None:
    state = node(Mode.ENCAP)
    sw = state.switch()
    ingress2 = state.flow(layout.INGRESS_METRIC, **{OUT_PORT.oxm: 2})
    sw.process(from_pod(2, G1))
    assert sw.n_packets(ingress2) == 0


# -- semantics of the simulator itself --------------------------------------------------------


def test_snat_leaks_into_later_buckets_like_ovs() -> None:
    """ct(nat) cannot be rolled back between buckets: builders must keep external LAST."""
    t = run(Mode.ENCAP, from_pod(1, G5))
    assert [(d.port, d.packet.ipv4_src) for d in t.deliveries] == [
        (UPLINK, NODE_IP), (2, NODE_IP),
    ]
    t = run(Mode.ENCAP, from_pod(1, G1))  # builder order: external last, nothing leaks
    assert [d.packet.ipv4_src for d in t.deliveries if d.port != UPLINK] == [pod_ip(1)] * 4


def _tiny(flows: list[Flow], groups: tuple[Group, ...] = (), **kw: object) -> FakeSwitch:
    return FakeSwitch(mc.pipeline(), flows, groups, **kw)  # type: ignore[arg-type]


def _cls(priority: int, actions: tuple, **match: int | str) -> Flow:
    return Flow(layout.CLASSIFIER, priority, Match.of(eth_type=ETH_TYPE_IP, **match), actions)


def test_priority_masks_and_ambiguity() -> None:
    sw = _tiny([
        _cls(10, (Output(2),), ipv4_dst="224.0.0.0/4"),
        _cls(20, (Output(3),), ipv4_dst="239.1.0.0/16"),
        _cls(20, (Output(4),), in_port=7),
    ])  # fmt: skip
    assert sw.process(from_pod(1, G1)).ports() == [3]
    assert sw.process(from_pod(1, G2)).ports() == [2]
    with pytest.raises(AmbiguousMatch):
        sw.process(from_pod(7, G1))


def test_buckets_are_action_sets() -> None:
    odd = Bucket((Output(2), SetField("eth_src", "02:00:00:00:00:99"), Output(3)))
    assert effective_bucket_actions(odd) == odd.actions[1:]
    assert effective_bucket_actions(Bucket((OutputReg(OUT_PORT),))) == ()
    groups = (Group(9, (odd, Bucket((Ct(1, nat_src=NODE_IP),)), Bucket((Output(4),)))),)
    flows = [_cls(10, (GroupAction(9),))]
    with pytest.raises(FakeTableError, match="action set"):
        _tiny(flows, groups)
    t = _tiny(flows, groups, strict_buckets=False).process(from_pod(1, G1))
    assert [(d.port, d.packet.eth_src, d.packet.ipv4_src) for d in t.deliveries] == [
        (3, "02:00:00:00:00:99", pod_ip(1)), (4, pod_mac(1), NODE_IP),
    ]


def test_switch_refuses_what_ovs_refuses() -> None:
    with pytest.raises(FakeTableError, match="BAD_OUT_GROUP"):
        _tiny([_cls(10, (GroupAction(9),))])
    with pytest.raises(FakeTableError, match="prerequisite|eth_type"):
        _tiny([Flow(layout.CLASSIFIER, 1, Match.of(ip_proto=2), (Drop(),))])
    sw = _tiny([], (Group(9, ()),))
    with pytest.raises(FakeTableError, match="GROUP_EXISTS"):
        sw.add_group(Group(9, ()))
    with pytest.raises(FakeTableError, match="UNKNOWN_GROUP"):
        sw.modify_group(Group(8, ()))


def test_apply_ops_in_order() -> None:
    cfg = node(Mode.NOENCAP).cfg
    group = mc.multicast_group(cfg, 7, [2], [])
    route = mc.route_flow(cfg, G1, 7)
    sw = _tiny(list(mc.initial_flows(cfg)) + mc.pod_flows(cfg, 1) + mc.pod_flows(cfg, 2),
               (mc.query_group(PODS),),
               meters=mc.initial_meters(cfg) + mc.pod_meters(cfg, 1) + mc.pod_meters(cfg, 2))
    sw.apply([GroupOp(Command.ADD, group), FlowOp(Command.ADD, route)])
    assert sw.process(from_pod(1, G1)).ports() == [2, UPLINK]
    sw.apply([GroupOp(Command.INSERT_BUCKETS, Group(7, (mc.local_bucket(3),)))])
    assert sw.process(from_pod(1, G1)).ports() == [2, 3, UPLINK]
    sw.apply([GroupOp(Command.DELETE, group)])  # takes the route flow with it
    assert route not in sw.flows()
    assert sw.process(from_pod(1, G1)).ports() == [UPLINK]
    sw.apply([FlowOp(Command.MODIFY, route)])  # modify never adds (only OpenFlow 1.0 did)
    assert route not in sw.flows()


def test_loops_are_cut() -> None:
    # OVS refuses group loops (OFPGMFC_LOOP); the fake table only makes sure it terminates.
    sw = _tiny([_cls(10, (GroupAction(9),))], (Group(9, ()),))
    sw.modify_group(Group(9, (Bucket((GroupAction(9),)),)))
    t = sw.process(from_pod(1, G1))
    assert t.deliveries == [] and t.drops == ["translation deeper than 64"]
