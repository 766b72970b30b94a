"""The agent's multicast core driven by real IGMP frames, its flows run on the fake OpenFlow table.

Everything here is the product's own code: the parser, membership, querier, forwarding builders,
differ and reconciler; the switch is the fake table (checked against real OVS elsewhere), and
time is a fake clock. Assertions are about where packets go and what the agent sends.
"""

from __future__ import annotations

import pytest
from fakeport import PI, Clock, Ports, TableSwitch

from agent.api.service import AgentService
from agent.config import parse_config
from agent.flowsync.reconciler import Reconciler
from agent.interfacestore import PodAttach
from agent.multicast.core import MulticastCore
from agent.multicast.igmp.packets import (
    GroupRecord,
    RecordType,
    build_v2_leave,
    build_v2_report,
    build_v3_reports,
    parse_frame,
)
from agent.multicast.igmp.packets import Query as IgmpQuery
from agent.multicast.igmp.packets import ReportV3 as IgmpReportV3
from pipeline.fake_table import FakeSwitch, Packet
from pipeline.layout import multicast_pipeline
from pipeline.model import OFPP_CONTROLLER, OFPP_TABLE, Output, SetTunnelDst
from pipeline.multicast import BridgeConfig, Mode, PuntReason
from wire.nodes import NodeInfo

# These tests are about membership, replication, policy and counters: every copy also goes
# out the uplink, as before the uplink chose (its own choice: test_core_uplink.py).
ALWAYS = "always"

NODE_IP, NODE_MAC = "192.168.77.1", "02:77:00:00:00:01"
NODE2, NODE3 = "192.168.77.2", "192.168.77.3"
TUNNEL, UPLINK = 65000, 65001
G, G2 = "239.1.1.1", "239.2.2.2"


@pytest.fixture
def env():
    cfg = parse_config({"node": {"name": "node1", "ip": NODE_IP},
                        "multicast": {"igmpQueryInterval": "10s",
                                      "multicastInterfaces": ["eth0"],
                                      "externalForwarding": ALWAYS}})
    bridge = BridgeConfig(Mode.ENCAP, 1, NODE_IP, NODE_MAC, tunnel_port=TUNNEL,
                          uplink_port=UPLINK)
    switch, clock, seeded = TableSwitch(tunnel_ports=(TUNNEL,)), Clock(), []
    agent = MulticastCore(cfg, bridge, switch, Reconciler(switch, multicast_pipeline()),
                           Ports(), clock=clock, neighbour_seeder=seeded.append)
    agent.start()
    pods = [agent.attach_pod(PodAttach("default", f"p{i}", f"cid{i}", f"veth{i}",
                                       f"10.77.1.{i + 1}", f"0a:00:00:00:00:0{i}"))
            for i in range(1, 5)]
    switch.sent()
    return agent, switch, clock, pods, seeded


def join_v3(agent, pod, group: str, kind: RecordType = RecordType.TO_EX) -> None:
    (frame,) = build_v3_reports([GroupRecord(kind, group, ())], pod.ip, pod.mac)
    agent.handle_packet_in(PI(pod.ofport, bytes([PuntReason.IGMP_POD]), frame))


def send(switch: TableSwitch, pod, group: str) -> list[int]:
    t = switch.table.process(Packet(pod.ofport, pod.mac, "01:00:5e:01:01:01", pod.ip, group, 17,
                                    udp_dst=5000))
    return sorted(d.port for d in t.deliveries)


def test_members_get_copies_and_nobody_else(env) -> None:
    agent, switch, _, (p1, p2, p3, p4), _ = env
    join_v3(agent, p2, G)
    frame = build_v2_report(G, p3.ip, p3.mac)
    agent.handle_packet_in(PI(p3.ofport, bytes([PuntReason.IGMP_POD]), frame))
    join_v3(agent, p4, G2)
    assert send(switch, p1, G) == [p2.ofport, p3.ofport, UPLINK]
    assert send(switch, p1, G2) == [p4.ofport, UPLINK]
    # a group nobody joined still reaches external receivers, and only them
    assert send(switch, p1, "239.9.9.9") == [UPLINK]
    assert {m.group: list(m.local_pods) for m in agent.members()} == {
        G: ["default/p2", "default/p3"], G2: ["default/p4"]}


def test_first_join_and_last_leave_are_announced_upstream(env) -> None:
    agent, switch, clock, (p1, p2, *_), _ = env
    join_v3(agent, p2, G)
    ((msg, actions),) = switch.sent()  # no other node yet: only the uplink
    assert actions == (Output(UPLINK),)
    assert isinstance(msg, IgmpReportV3) and msg.src == NODE_IP
    assert [(r.kind, r.group) for r in msg.records] == [(RecordType.TO_EX, G)]
    # v2 leave: a group-specific query first, removal after the last-member query time
    agent.handle_packet_in(PI(p2.ofport, bytes([PuntReason.IGMP_POD]),
                              build_v2_leave(G, p2.ip, p2.mac)))
    agent.tick()
    queries = [m for m, _ in switch.sent() if isinstance(m, IgmpQuery) and not m.is_general]
    assert [q.group for q in queries] == [G]
    assert send(switch, p1, G) == [p2.ofport, UPLINK]  # still a member while being queried
    clock.now += agent.local.timers.last_member_query_time_s + 0.1
    agent.tick()
    assert send(switch, p1, G) == [UPLINK]
    leave = [m for m, _ in switch.sent() if isinstance(m, IgmpReportV3)]
    assert [(r.kind, r.group) for m in leave for r in m.records] == [(RecordType.TO_IN, G)]


def test_silent_member_ages_out(env) -> None:
    agent, switch, clock, (p1, p2, *_), _ = env
    join_v3(agent, p2, G)
    clock.now += agent.local.timers.membership_timeout_s - 1
    agent.tick()
    assert send(switch, p1, G) == [p2.ofport, UPLINK]
    clock.now += 2
    agent.tick()
    assert send(switch, p1, G) == [UPLINK]
    assert agent.members() == []
    assert not [f for f in switch.table.flows() if f.match.get("ipv4_dst")
                and f.match.get("ipv4_dst").value == G]


def test_general_queries_go_to_every_pod_through_the_table(env) -> None:
    agent, switch, clock, *_ = env
    clock.now += 0.5
    agent.tick()
    outs = [(parse_frame(d), a, i) for d, a, i in switch.packet_outs]
    general = [(a, i) for m, a, i in outs if isinstance(m, IgmpQuery) and m.is_general]
    assert general == [((Output(OFPP_TABLE),), OFPP_CONTROLLER)], outs
    # Run that packet-out through the pipeline as OVS does: it reaches every local pod.
    t = switch.table.process(Packet(OFPP_CONTROLLER, NODE_MAC, "01:00:5e:00:00:01", NODE_IP,
                                    "224.0.0.1", 2))
    assert sorted(d.port for d in t.deliveries) == [1, 2, 3, 4]


def test_remote_members_from_tunnel_reports_and_node_removal(env) -> None:
    agent, switch, clock, (p1, p2, *_), seeded = env
    agent.set_nodes([NodeInfo("node1", (NODE_IP,)), NodeInfo("node2", (NODE2,)),
                     NodeInfo("node3", (NODE3,))])
    assert seeded == [NODE2, NODE3]  # neighbours resolved before anything is tunnelled
    sent = switch.sent()
    asked = sorted(a[0].ip for m, a in sent if isinstance(m, IgmpQuery) and a
                   and isinstance(a[0], SetTunnelDst))
    assert asked == [NODE2, NODE3]  # new nodes are asked for their membership
    (report,) = build_v3_reports([GroupRecord(RecordType.IS_EX, G, ())], NODE2, "02:77:00:00:00:02")
    agent.handle_packet_in(PI(TUNNEL, bytes([PuntReason.IGMP_TUNNEL]), report, tun_src=NODE2))
    t = switch.table.process(Packet(p1.ofport, p1.mac, "01:00:5e:01:01:01", p1.ip, G, 17))
    assert sorted((d.port, d.tun_dst) for d in t.deliveries) == [
        (TUNNEL, NODE2), (UPLINK, None)]
    # tunnel traffic for G reaches local members only: never back into the tunnel or outside
    join_v3(agent, p2, G)
    t = switch.table.process(Packet(TUNNEL, "02:77:00:00:00:02", "01:00:5e:01:01:01", p1.ip, G, 17,
                                    tun_src=NODE2))
    assert [d.port for d in t.deliveries] == [p2.ofport]
    # the node goes away: its membership ends at once
    agent.set_nodes([NodeInfo("node1", (NODE_IP,)), NodeInfo("node3", (NODE3,))])
    assert send(switch, p1, G) == [p2.ofport, UPLINK]


def test_remote_members_age_out_and_unknown_nodes_are_refused(env) -> None:
    agent, switch, clock, (p1, *_), _ = env
    agent.set_nodes([NodeInfo("node2", (NODE2,))])
    (report,) = build_v3_reports([GroupRecord(RecordType.IS_EX, G, ())], NODE3, "02:77:00:00:00:03")
    agent.handle_packet_in(PI(TUNNEL, bytes([PuntReason.IGMP_TUNNEL]), report, tun_src=NODE3))
    assert send(switch, p1, G) == [UPLINK]
    (report,) = build_v3_reports([GroupRecord(RecordType.IS_EX, G, ())], NODE2, "02:77:00:00:00:02")
    agent.handle_packet_in(PI(TUNNEL, bytes([PuntReason.IGMP_TUNNEL]), report, tun_src=NODE2))
    assert send(switch, p1, G) == [TUNNEL, UPLINK]
    clock.now += agent.remote.timers.membership_timeout_s + 0.1
    agent.tick()
    assert send(switch, p1, G) == [UPLINK]


def test_queries_from_tunnel_and_uplink_are_answered_with_our_groups(env) -> None:
    agent, switch, _, (p1, p2, *_), _ = env
    join_v3(agent, p2, G)
    switch.sent()
    from agent.multicast.igmp.packets import build_query

    q = build_query(3, NODE3, "02:77:00:00:00:03")
    agent.handle_packet_in(PI(TUNNEL, bytes([PuntReason.IGMP_TUNNEL]), q, tun_src=NODE3))
    ((msg, actions),) = switch.sent()
    assert actions == (SetTunnelDst(NODE3), Output(TUNNEL))
    assert [r.group for r in msg.records] == [G]
    agent.handle_packet_in(PI(UPLINK, bytes([PuntReason.IGMP_UPLINK]),
                              build_query(2, "192.168.77.254", "02:00:00:00:00:fe")))
    ((msg, actions),) = switch.sent()
    assert actions == (Output(UPLINK),) and [r.group for r in msg.records] == [G]


def test_pod_detach_ends_its_memberships(env) -> None:
    agent, switch, _, (p1, p2, p3, _), _ = env
    join_v3(agent, p2, G)
    join_v3(agent, p3, G)
    agent.detach_pod("cid2")
    assert send(switch, p1, G) == [p3.ofport, UPLINK]
    assert all(p.name != "p2" for p in agent.list_pods())
    agent.detach_pod("cid2")  # idempotent


def test_malformed_and_unknown_port_igmp_change_nothing(env) -> None:
    agent, switch, _, (p1, *_), _ = env
    agent.handle_packet_in(PI(p1.ofport, bytes([PuntReason.IGMP_POD]), b"\x00" * 20))
    frame = build_v2_report(G, "10.77.1.99", "0a:00:00:00:00:99")
    agent.handle_packet_in(PI(77, bytes([PuntReason.IGMP_POD]), frame))
    assert agent.members() == []
    assert send(switch, p1, G) == [UPLINK]


def test_pod_stats_count_sent_and_delivered_packets(env) -> None:
    agent, switch, _, (p1, p2, *_), _ = env
    join_v3(agent, p2, G)
    for _ in range(3):
        send(switch, p1, G)
    stats = {s.name: (s.inbound, s.outbound) for s in agent.pod_stats()}
    assert stats["p1"] == (0, 3) and stats["p2"] == (3, 0) and stats["p3"] == (0, 0)


def test_restart_restores_members_from_the_switch_without_a_gap(env) -> None:
    agent, switch, clock, (p1, p2, p3, _), _ = env
    agent.set_nodes([NodeInfo("node2", (NODE2,))])
    join_v3(agent, p2, G)
    (report,) = build_v3_reports([GroupRecord(RecordType.IS_EX, G2, ())], NODE2,
                                 "02:77:00:00:00:02")
    agent.handle_packet_in(PI(TUNNEL, bytes([PuntReason.IGMP_TUNNEL]), report, tun_src=NODE2))
    before = {f.cookie >> 48 for f in switch.table.flows()}
    gids = dict(agent.groups.ids())
    # A new agent process: round 2, same switch, same pods (re-read from OVSDB).
    bridge = BridgeConfig(Mode.ENCAP, 2, NODE_IP, NODE_MAC, tunnel_port=TUNNEL,
                          uplink_port=UPLINK)
    rec = Reconciler(switch, multicast_pipeline())
    again = MulticastCore(agent.cfg, bridge, switch, rec, Ports(), clock=clock)
    again.start(agent.list_pods(), install=lambda: rec.startup(2), found=switch.dump())
    assert before == {1} and {f.cookie >> 48 for f in switch.table.flows()} == {2}
    assert again.groups.ids() == gids  # groups modified in place, never re-created
    assert send(switch, p1, G) == [p2.ofport, UPLINK]
    assert send(switch, p1, G2) == [TUNNEL, UPLINK]
    # restored members are ordinary members: silent ones age out
    clock.now += again.local.timers.membership_timeout_s + 1
    again.tick()
    assert send(switch, p1, G) == [UPLINK]


def test_metrics_read_state_at_scrape_time(env) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from agent.multicast.collector import MulticastCollector

    agent, switch, _, (p1, p2, *_), _ = env
    join_v3(agent, p2, G)
    send(switch, p1, G)
    registry = CollectorRegistry()
    registry.register(MulticastCollector(agent.members, agent.pod_stats))
    text = generate_latest(registry).decode()
    assert "kube_mcast_groups 1.0" in text
    assert 'kube_mcast_members{kind="local"} 1.0' in text
    assert 'kube_mcast_pod_inbound_packets_total{namespace="default",pod="p2"} 1.0' in text
    assert 'kube_mcast_pod_outbound_packets_total{namespace="default",pod="p1"} 1.0' in text
    spoofed = Packet(p1.ofport, p1.mac, "01:00:5e:01:01:01", "10.66.6.6", G, 17)
    switch.table.process(spoofed)
    text = generate_latest(registry).decode()
    assert ('kube_mcast_pod_dropped_packets_total{namespace="default",pod="p1",'
            'reason="spoofed"} 1.0') in text


def send_from(switch: TableSwitch, pod, source: str, group: str) -> list[int]:
    """A packet to ``group`` from ``pod``'s port and MAC carrying source address ``source``."""
    t = switch.table.process(Packet(pod.ofport, pod.mac, "01:00:5e:01:01:01", source, group, 17))
    return sorted(d.port for d in t.deliveries)


def test_igmpv3_source_filters_are_enforced_in_the_data_plane(env) -> None:
    agent, switch, _, (p1, p2, p3, p4), _ = env
    s1, s2 = "10.77.1.2", "10.99.0.9"  # p1's own address and p5's, another sender
    p5 = agent.attach_pod(PodAttach("default", "p5", "cid5", "veth5", s2, "0a:00:00:00:00:05"))
    ssm = [(p2, RecordType.ALLOW, (s1,)), (p3, RecordType.TO_EX, ()),
           (p4, RecordType.TO_EX, (s1,))]
    for pod, kind, sources in ssm:  # p2: INCLUDE{s1}, p3: any source, p4: EXCLUDE{s1}
        (frame,) = build_v3_reports([GroupRecord(kind, G, sources)], pod.ip, pod.mac)
        agent.handle_packet_in(PI(pod.ofport, bytes([PuntReason.IGMP_POD]), frame))
    assert send_from(switch, p1, s1, G) == [p2.ofport, p3.ofport, UPLINK]
    assert send_from(switch, p5, s2, G) == [p3.ofport, p4.ofport, UPLINK]
    (row,) = AgentService(agent, switch, multicast_pipeline()).members()  # the API's JSON
    assert row["sourceFilters"] == {"default/p2": {"mode": "include", "sources": [s1]},
                                    "default/p4": {"mode": "exclude", "sources": [s1]}}
    # p2 drops s1 (BLOCK empties its INCLUDE set: it leaves), p3 leaves: p4 alone, still
    # excluding s1, which now only reaches external receivers
    for pod, kind, sources in [(p2, RecordType.BLOCK, (s1,)), (p3, RecordType.TO_IN, ())]:
        (frame,) = build_v3_reports([GroupRecord(kind, G, sources)], pod.ip, pod.mac)
        agent.handle_packet_in(PI(pod.ofport, bytes([PuntReason.IGMP_POD]), frame))
    switch.packet_outs.clear()
    _, _, clock, *_ = env
    clock.now += agent.local.timers.last_member_query_time_s + 0.1
    agent.tick()
    assert send_from(switch, p1, s1, G) == [UPLINK]
    assert send_from(switch, p5, s2, G) == [p4.ofport, UPLINK]
    # an INCLUDE-only group: other sources are not steered to the member at all
    (frame,) = build_v3_reports([GroupRecord(RecordType.ALLOW, G2, (s2,))], p3.ip, p3.mac)
    agent.handle_packet_in(PI(p3.ofport, bytes([PuntReason.IGMP_POD]), frame))
    assert send_from(switch, p5, s2, G2) == [p3.ofport, UPLINK]
    assert send_from(switch, p1, s1, G2) == [UPLINK]
    # s1 must be steered away from p4 by its own (S, G) flow; when p4 leaves, every id of G
    # is given back
    assert set(agent.groups.ids()) == {G, f"{G}/{s1}", f"{G2}/{s2}"}
    (frame,) = build_v3_reports([GroupRecord(RecordType.TO_IN, G, ())], p4.ip, p4.mac)
    agent.handle_packet_in(PI(p4.ofport, bytes([PuntReason.IGMP_POD]), frame))
    clock.now += agent.local.timers.last_member_query_time_s + 0.1
    agent.tick()
    assert set(agent.groups.ids()) == {f"{G2}/{s2}"}
    assert send_from(switch, p5, s2, G) == [UPLINK]


def test_a_disconnected_switch_defers_work_until_the_reconnect_sync(env) -> None:
    from agent.flowsync.switch import SwitchDisconnected

    agent, switch, clock, (p1, p2, *_), _ = env
    real_apply, real_out = switch.apply, switch.packet_out

    def down(*_a: object, **_k: object) -> None:
        raise SwitchDisconnected("no bridge")

    switch.apply = switch.packet_out = down  # ovs-vswitchd went away
    join_v3(agent, p2, G)  # no exception: the membership is kept, the flush waits
    clock.now += 1
    agent.tick()
    assert [m.group for m in agent.members()] == [G]
    switch.apply, switch.packet_out = real_apply, real_out
    switch.table = FakeSwitch(multicast_pipeline(), tunnel_ports=(TUNNEL,))  # restarted: empty
    agent._rec.startup(1)  # what the agent does on reconnect
    assert send(switch, p1, G) == [p2.ofport, UPLINK]


def test_ticking_only_at_next_deadline_does_all_the_work(env) -> None:
    """The timer loop sleeps until next_deadline: every timed action must happen by then."""
    agent, switch, clock, (p1, p2, *_), _ = env
    woken = []
    agent._wake = lambda: woken.append(clock.now)  # what main's loop waits on
    join_v3(agent, p2, G)
    assert woken, "an IGMP event must wake the timer loop"
    agent.handle_packet_in(PI(p2.ofport, bytes([PuntReason.IGMP_POD]),
                              build_v2_leave(G, p2.ip, p2.mac)))
    switch.sent()
    ticks = 0
    while send(switch, p1, G) != [UPLINK]:  # the leave completes by deadlines alone
        clock.now = agent.next_deadline()
        agent.tick()
        ticks += 1
        assert ticks < 10, "the leave never completed"
    queries = [m for m, _ in switch.sent() if isinstance(m, IgmpQuery) and not m.is_general]
    assert [q.group for q in queries] == [G, G]  # last-member query count (robustness 2)
    # with no leave pending, the next deadline is the querier's: a general query goes out
    clock.now = agent.next_deadline()
    agent.tick()
    assert [m.is_general for m, _ in switch.sent() if isinstance(m, IgmpQuery)] == [True]


def test_packet_ins_reach_the_core_through_the_router(env) -> None:
    """Routed by the punt flow's cookie, the way the OpenFlow adaptor delivers them."""
    from agent.flowsync.switch import PacketIn
    from agent.packetin import PacketInRouter
    from pipeline.cookies import Feature

    agent, switch, _, (p1, p2, *_), _ = env
    router = PacketInRouter()
    router.register(Feature.IGMP, agent.handle_packet_ins)
    (frame,) = build_v3_reports([GroupRecord(RecordType.TO_EX, G, ())], p2.ip, p2.mac)
    punt = next(f for f in switch.table.flows() if f.match.get("in_port")
                and f.match.get("in_port").value == p2.ofport and f.match.get("ip_proto"))
    router([PacketIn(p2.ofport, bytes([PuntReason.IGMP_POD]), frame, None, punt.cookie, 0, 0)])
    assert send(switch, p1, G) == [p2.ofport, UPLINK]
    # a cookie of another feature reaches no handler: the report is not applied
    other = agent.bridge.cookie(Feature.POD, p2.ofport)
    (frame,) = build_v3_reports([GroupRecord(RecordType.TO_EX, G2, ())], p2.ip, p2.mac)
    router([PacketIn(p2.ofport, bytes([PuntReason.IGMP_POD]), frame, None, other, 0, 0)])
    assert send(switch, p1, G2) == [UPLINK]
    with pytest.raises(ValueError, match="IGMP"):
        router.register(Feature.IGMP, agent.handle_packet_ins)


def test_deleting_the_last_member_pod_withdraws_the_group_at_once(env) -> None:
    """Peers and the upstream router stop sending to us when our last member goes, not when
    their record of us ages out minutes later."""
    agent, switch, _, (p1, p2, *_), _ = env
    agent.set_nodes([NodeInfo("node2", (NODE2,))])
    join_v3(agent, p2, G)
    switch.sent()
    agent.detach_pod(p2.container_id)
    withdrawn = sorted((r.kind, r.group, type(a[0]).__name__) for m, a in switch.sent()
                       if isinstance(m, IgmpReportV3) for r in m.records)
    assert withdrawn == [(RecordType.TO_IN, G, "Output"), (RecordType.TO_IN, G, "SetTunnelDst")]


def test_a_report_over_a_cap_is_refused_whole_and_counted(env) -> None:
    from prometheus_client import REGISTRY

    from agent.multicast.igmp.limits import Limits

    agent, switch, _, (p1, p2, p3, _), _ = env
    agent.limits = Limits(groups_per_pod=2)
    join_v3(agent, p2, G)
    before = REGISTRY.get_sample_value("kube_mcast_igmp_refused_total",
                                       {"cap": "groupsPerPod"}) or 0
    (frame,) = build_v3_reports([GroupRecord(RecordType.TO_EX, g, ())
                                 for g in (G2, "239.3.3.3")], p2.ip, p2.mac)
    agent.handle_packet_in(PI(p2.ofport, bytes([PuntReason.IGMP_POD]), frame))
    assert [m.group for m in agent.members()] == [G]  # neither group: not half-applied
    assert REGISTRY.get_sample_value("kube_mcast_igmp_refused_total",
                                     {"cap": "groupsPerPod"}) == before + 1
    join_v3(agent, p2, G2)  # one more is within the cap
    join_v3(agent, p3, "239.3.3.3")  # and another pod has its own budget
    assert send(switch, p1, G2) == [p2.ofport, UPLINK]
    assert send(switch, p1, "239.3.3.3") == [p3.ofport, UPLINK]


def test_a_burst_is_settled_in_bounded_bundles(env, monkeypatch) -> None:
    """Many reports in one batch: membership takes them all, the switch gets them in bundles
    of at most SETTLE_GROUPS groups, the rest on the following ticks."""
    from agent.multicast import core as core_mod

    agent, switch, clock, (p1, p2, *_), _ = env
    monkeypatch.setattr(core_mod, "SETTLE_GROUPS", 10)
    groups = [f"239.7.0.{i}" for i in range(25)]
    frames = [build_v2_report(g, p2.ip, p2.mac) for g in groups]
    agent.handle_packet_ins([PI(p2.ofport, bytes([PuntReason.IGMP_POD]), f) for f in frames])
    routed = [g for g in groups if send(switch, p1, g) != [UPLINK]]
    assert len(routed) == 10 and agent.next_deadline() == clock.now  # more work is due now
    agent.tick()
    agent.tick()
    assert all(send(switch, p1, g) == [p2.ofport, UPLINK] for g in groups)
    assert agent.next_deadline() > clock.now


def test_spoofed_multicast_reaches_nobody_and_is_counted(env) -> None:
    """A pod forging another pod's source address bypasses no (S, G) filter: it is dropped
    before anything else, and counted against the spoofing pod."""
    agent, switch, _, (p1, p2, p3, _), _ = env
    (frame,) = build_v3_reports([GroupRecord(RecordType.ALLOW, G, (p1.ip,))], p2.ip, p2.mac)
    agent.handle_packet_in(PI(p2.ofport, bytes([PuntReason.IGMP_POD]), frame))  # wants p1 only
    assert send_from(switch, p1, p1.ip, G) == [p2.ofport, UPLINK]
    assert send_from(switch, p3, p1.ip, G) == []  # p3 forging p1's address
    forged_mac = Packet(p3.ofport, p1.mac, "01:00:5e:01:01:01", p3.ip, G, 17)
    assert switch.table.process(forged_mac).deliveries == []  # or p1's MAC
    arp_like = Packet(p3.ofport, p3.mac, "ff:ff:ff:ff:ff:ff", p3.ip, "10.77.1.2", 17)
    assert switch.table.process(arp_like).deliveries == []  # not multicast: nothing to do here
    stats = {s.name: s for s in agent.pod_stats()}
    assert (stats["p3"].spoofed, stats["p3"].not_multicast, stats["p3"].outbound) == (2, 1, 0)
    assert (stats["p1"].spoofed, stats["p1"].outbound) == (0, 1)


def test_link_local_groups_reach_peers_but_never_upstream(env) -> None:
    """mDNS (224.0.0.251) between pods of different nodes works; the upstream router is not
    told about link-local groups (RFC 4605)."""
    agent, switch, *_ = env
    p2 = env[3][1]
    agent.set_nodes([NodeInfo("node2", (NODE2,))])
    switch.sent()
    join_v3(agent, p2, "224.0.0.251")
    sent = [(type(a[0]).__name__, [r.group for r in m.records]) for m, a in switch.sent()
            if isinstance(m, IgmpReportV3)]
    assert sent == [("SetTunnelDst", ["224.0.0.251"])]


def test_an_idle_core_never_asks_the_timer_loop_to_spin(env) -> None:
    """The loop ticks, then sleeps until next_deadline unless woken: a tick must not wake it,
    and with nothing due the deadline must lie ahead (a wake per tick spun a whole core)."""
    agent, switch, clock, (_, p2, *_), _ = env
    woken = []
    agent._wake = lambda: woken.append(clock.now)
    clock.now = agent.next_deadline()
    agent.tick()  # a general query falls due
    join_v3(agent, p2, G)  # an event: wakes the loop once
    assert len(woken) == 1
    for _ in range(5):
        agent.tick()
    assert len(woken) == 1 and agent.next_deadline() > clock.now


def test_a_stable_membership_costs_no_flow_work(env, monkeypatch) -> None:
    """Refresh reports and timer ticks of an unchanged membership rebuild no group and send
    no op to the switch."""
    from agent.multicast import forwarding

    agent, switch, clock, (p1, p2, *_), _ = env
    join_v3(agent, p2, G)
    built, applied = [], []
    real_state, real_apply = forwarding.group_state, switch.apply
    monkeypatch.setattr(forwarding, "group_state", lambda *a: built.append(a) or real_state(*a))
    monkeypatch.setattr(switch, "apply", lambda ops: applied.append(ops) or real_apply(ops))
    for _ in range(20):  # each member re-reports, as pods do at every query
        join_v3(agent, p2, G, RecordType.IS_EX)
        frame = build_v2_report(G, p2.ip, p2.mac)
        agent.handle_packet_in(PI(p2.ofport, bytes([PuntReason.IGMP_POD]), frame))
        clock.now += 1
        agent.tick()
    assert built == [] and applied == []
    assert send(switch, p1, G) == [p2.ofport, UPLINK]
