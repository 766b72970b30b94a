"""pipeline.oversize on the fake table: frames over their limit are counted, punted, dropped.

The node of walks.py checks pods against what fits the tunnel (1464 bytes in encap, 1514 in
noEncap) and the tunnel and the uplink against what pods can receive (1514). Real OVS agrees
with every walk here (the oversized packets of walks.packets() in test_fake_vs_ovs.py).
"""

from __future__ import annotations

import pytest
from walks import (
    G1,
    G3,
    MAX_RECEIVED,
    MAX_SENT,
    OVERSIZED,
    PODS,
    TUNNEL,
    UPLINK,
    V3_REPORTS,
    from_pod,
    from_tunnel,
    from_uplink,
    node,
    pod_ip,
)

from pipeline import layout, oversize
from pipeline import multicast as mc
from pipeline.fake_table import Packet, Trace
from pipeline.model import (
    IP_PROTO_IGMP,
    ApplyMeter,
    Bucket,
    CheckPktLarger,
    Flow,
    FlowError,
    Match,
    Output,
)
from pipeline.multicast import Mode, PuntReason
from pipeline.oversize import PUNT_METER_ID, Punted, count_meter_id
from pipeline.registers import IN_CLASS, OVERSIZE, PortClass
from pipeline.render import render_action

BOTH = pytest.mark.parametrize("mode", [Mode.ENCAP, Mode.NOENCAP])


def pod_limit(mode: Mode) -> int:
    return MAX_SENT if mode is Mode.ENCAP else MAX_RECEIVED


def run(mode: Mode, packet: Packet) -> Trace:
    return node(mode).switch().process(packet)


def punted(t: Trace) -> list[tuple[Punted | None, str]]:
    return [(Punted.parse(p.userdata), p.table) for p in t.packet_ins]


@BOTH
def test_pod_frame_over_its_limit_is_counted_punted_and_dropped(mode: Mode) -> None:
    sw = node(mode).switch()
    t = sw.process(from_pod(1, G1).replace(length=OVERSIZED))
    assert t.deliveries == [] and t.suppressed == [], t.explain()
    assert punted(t) == [(Punted(PortClass.POD, pod_limit(mode)), layout.OUTPUT)]
    assert t.meters == [count_meter_id(1), PUNT_METER_ID]
    assert layout.ROUTING not in t.tables  # never routed: no group, no copy anywhere
    assert sw.meter_n_packets(count_meter_id(1)) == 1
    # At the limit exactly it goes where any packet goes, and counts nowhere.
    t = sw.process(from_pod(1, G1).replace(length=pod_limit(mode)))
    encap = mode is Mode.ENCAP
    assert t.ports() == [2, 3] + ([TUNNEL, TUNNEL] if encap else []) + [UPLINK], t.explain()
    assert t.packet_ins == [] and t.meters == []
    assert sw.meter_n_packets(count_meter_id(1)) == 1


def test_a_pod_frame_that_only_fits_the_interface_is_still_too_big_for_encap() -> None:
    """Between the route MTU and the interface MTU: local members could take it, the tunnel
    could not. It is dropped for everyone, so a sender sees the same thing wherever its
    receivers are."""
    t = run(Mode.ENCAP, from_pod(1, G1).replace(length=MAX_SENT + 1))
    assert t.deliveries == [] and punted(t)[0][0] == Punted(PortClass.POD, MAX_SENT)
    assert run(Mode.NOENCAP, from_pod(1, G1).replace(length=MAX_SENT + 1)).ports() == [
        2, 3, UPLINK]


@BOTH
def test_oversized_pod_frame_to_a_group_without_members_is_dropped_too(mode: Mode) -> None:
    t = run(mode, from_pod(1, G3).replace(length=OVERSIZED))
    assert t.deliveries == [] and len(t.packet_ins) == 1, t.explain()


@pytest.mark.parametrize(("mode", "source"), [(Mode.ENCAP, "tunnel"), (Mode.ENCAP, "uplink"),
                                              (Mode.NOENCAP, "uplink")])
def test_received_frame_over_the_pods_limit_is_counted_punted_and_dropped(
        mode: Mode, source: str) -> None:
    make, port, cls = ((from_tunnel, TUNNEL, PortClass.TUNNEL) if source == "tunnel"
                       else (from_uplink, UPLINK, PortClass.UPLINK))
    sw = node(mode).switch()
    t = sw.process(make(G1).replace(length=OVERSIZED))
    assert t.deliveries == [], t.explain()
    assert punted(t) == [(Punted(cls, MAX_RECEIVED), layout.OUTPUT)]
    assert t.meters == [count_meter_id(port), PUNT_METER_ID]
    assert sw.meter_n_packets(count_meter_id(port)) == 1
    assert sw.process(make(G1).replace(length=MAX_RECEIVED)).ports() == [2, 3]


@BOTH
def test_igmp_is_never_size_checked(mode: Mode) -> None:
    t = run(mode, from_pod(3, V3_REPORTS, IP_PROTO_IGMP).replace(length=OVERSIZED))
    assert [p.userdata for p in t.packet_ins] == [mc.punt_userdata(PuntReason.IGMP_POD)]
    assert t.tables == [layout.CLASSIFIER] and t.meters == [3]
    t = run(mode, from_uplink("224.0.0.1", proto=IP_PROTO_IGMP).replace(length=OVERSIZED))
    assert [p.userdata for p in t.packet_ins] == [mc.punt_userdata(PuntReason.IGMP_UPLINK)]


@BOTH
def test_spoofed_oversized_frame_counts_as_spoofed_not_oversized(mode: Mode) -> None:
    sw = node(mode).switch()
    t = sw.process(from_pod(1, G1).replace(ipv4_src=pod_ip(2), length=OVERSIZED))
    assert t.deliveries == [] and t.packet_ins == [] and t.tables == [layout.CLASSIFIER]
    assert sw.meter_n_packets(count_meter_id(1)) == 0


@BOTH
def test_flows_behind_the_check_count_both_outcomes_like_ovs(mode: Mode) -> None:
    """OVS credits the flows of both outcomes of check_pkt_larger with every packet, so the
    per-source count is the meter's, never a flow's."""
    state = node(mode)
    sw = state.switch()
    count_flow = oversize.pod_count_flow(1, cookie=0)  # counters go by (table, priority, match)
    metric = state.flow(layout.EGRESS_METRIC, in_port=1)
    sw.process(from_pod(1, G1))
    sw.process(from_pod(1, G1).replace(length=OVERSIZED))
    assert sw.n_packets(count_flow) == 2 and sw.n_packets(metric) == 2
    assert sw.meter_n_packets(count_meter_id(1)) == 1
    assert sw.meter_n_packets(PUNT_METER_ID) == 1


def test_meters_and_flows_exist_only_for_the_limits_set() -> None:
    cfg = node(Mode.ENCAP).cfg
    plain = mc.BridgeConfig(cfg.mode, 1, cfg.node_ip, cfg.node_mac, cfg.tunnel_port,
                            cfg.uplink_port)
    assert not any(isinstance(a, CheckPktLarger)
                   for f in mc.initial_flows(plain) + mc.pod_flows(plain, 1) for a in f.actions)
    assert mc.initial_meters(plain) == [] and mc.pod_meters(plain, 1) == []
    assert [m.meter_id for m in mc.pod_meters(cfg, 1)] == [1, count_meter_id(1)]
    assert sorted(m.meter_id for m in mc.initial_meters(cfg)) == sorted(
        [TUNNEL, UPLINK, count_meter_id(TUNNEL), count_meter_id(UPLINK), PUNT_METER_ID])
    received_only = mc.BridgeConfig(cfg.mode, 1, cfg.node_ip, cfg.node_mac, cfg.tunnel_port,
                                    cfg.uplink_port, max_received_frame=MAX_RECEIVED)
    assert mc.pod_meters(received_only, 1) == []
    checked = {f.match.get("in_port").value: a.length  # type: ignore[union-attr]
               for f in mc.initial_flows(received_only) + mc.pod_flows(received_only, 1)
               for a in f.actions if isinstance(a, CheckPktLarger)}
    assert checked == {TUNNEL: MAX_RECEIVED, UPLINK: MAX_RECEIVED}


def test_userdata_round_trip_and_foreign_userdata() -> None:
    p = Punted(PortClass.TUNNEL, 1514)
    assert p.userdata() == b"\x02\x05\xea" and Punted.parse(p.userdata()) == p
    for bad in (b"", b"\x01", b"\x09\x05\xea", b"\x01\x05\xea\x00"):
        assert Punted.parse(bad) is None


def test_limits_and_ids_are_checked() -> None:
    with pytest.raises(ValueError, match="16 bits"):
        mc.BridgeConfig(Mode.NOENCAP, 1, "192.168.77.1", "02:77:00:00:00:01",
                        max_pod_frame=70000)
    with pytest.raises(ValueError, match="one bit"):
        CheckPktLarger(100, IN_CLASS)
    with pytest.raises(ValueError, match="no oversize counting meter"):
        count_meter_id(PUNT_METER_ID)
    assert count_meter_id(7) == 100_007


def test_rendering() -> None:
    assert render_action(oversize.check(1464), mc.pipeline()) == (
        "check_pkt_larger(1464)->NXM_NX_REG0[8]")
    assert OVERSIZE.nxm == "NXM_NX_REG0[8]"


def test_a_meter_must_come_first_and_never_in_a_bucket() -> None:
    """OVS's rule, which is why a source's count and the node's punt meter are two flows."""
    with pytest.raises(FlowError, match="first action"):
        Flow(layout.OUTPUT, 1, Match(), (Output(1), ApplyMeter(5)))
    with pytest.raises(FlowError, match="first action"):
        Bucket((ApplyMeter(5), Output(1)))


def test_every_pod_has_its_own_counter() -> None:
    sw = node(Mode.ENCAP).switch()
    for port in PODS:
        for _ in range(port):
            sw.process(from_pod(port, G1).replace(length=OVERSIZED))
    assert [sw.meter_n_packets(count_meter_id(p)) for p in PODS] == list(PODS)
    assert sw.meter_n_packets(PUNT_METER_ID) == sum(PODS)
