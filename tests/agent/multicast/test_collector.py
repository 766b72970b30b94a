"""The agent's Prometheus view (``agent.multicast.collector``, ``agent.metrics``) on the fake
table: groups and members, per-group traffic from route flows, per-pod packets, the cap on
per-group series, a scrape while the bridge is away, reconcile rounds and bundle sizes."""

from __future__ import annotations

import pytest
from fakeport import PI, Clock, Ports, TableSwitch
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.registry import Collector

from agent.config import parse_config
from agent.flowsync.reconciler import Reconciler
from agent.flowsync.switch import FlowStats, SwitchDisconnected
from agent.interfacestore import PodAttach
from agent.multicast.collector import AgentInfo, MulticastCollector, collector_of
from agent.multicast.core import GroupMembers, MulticastCore
from agent.multicast.igmp.packets import GroupRecord, RecordType, build_v3_reports
from agent.multicast.stats import GroupTraffic, PodStats, group_traffic
from pipeline import multicast as mc
from pipeline.cookies import Feature
from pipeline.fake_table import Packet
from pipeline.layout import multicast_pipeline
from pipeline.model import SwitchState
from pipeline.multicast import BridgeConfig, Mode, PuntReason
from pipeline.ops import Command

NODE_IP, NODE_MAC, NODE2 = "192.168.77.1", "02:77:00:00:00:01", "192.168.77.2"
TUNNEL, UPLINK = 65000, 65001
G, G2 = "239.1.1.1", "239.2.2.2"


@pytest.fixture
def env():
    cfg = parse_config({"node": {"name": "node1", "ip": NODE_IP},
                        "multicast": {"multicastInterfaces": ["eth0"]}})
    bridge = BridgeConfig(Mode.ENCAP, 7, NODE_IP, NODE_MAC, tunnel_port=TUNNEL,
                          uplink_port=UPLINK)
    switch = TableSwitch(tunnel_ports=(TUNNEL,))
    core = MulticastCore(cfg, bridge, switch, Reconciler(switch, multicast_pipeline()), Ports(),
                         clock=Clock())
    core.start()
    pods = [core.attach_pod(PodAttach("default", f"p{i}", f"cid{i}", f"veth{i}",
                                      f"10.77.1.{i + 1}", f"0a:00:00:00:00:0{i}"))
            for i in range(1, 4)]
    return core, switch, pods


def join(core: MulticastCore, pod, group: str, source: str | None = None) -> None:
    kind, sources = (RecordType.TO_EX, ()) if source is None else (RecordType.TO_IN, (source,))
    (frame,) = build_v3_reports([GroupRecord(kind, group, sources)], pod.ip, pod.mac)
    core.handle_packet_in(PI(pod.ofport, bytes([PuntReason.IGMP_POD]), frame))


def send(switch: TableSwitch, pod, group: str) -> None:
    switch.table.process(Packet(pod.ofport, pod.mac, "01:00:5e:01:01:01", pod.ip, group, 17,
                                udp_dst=5000))


def scrape(collector: Collector) -> dict[tuple[str, frozenset], float]:
    registry = CollectorRegistry()
    registry.register(collector)
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in registry.collect() for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_groups_members_and_traffic_from_the_switch(env) -> None:
    core, switch, (p1, p2, p3) = env
    join(core, p2, G)
    join(core, p3, G, source=p1.ip)  # an (S, G) group beside the (*, G) one
    join(core, p3, G2)
    core.set_nodes([])
    for _ in range(3):
        send(switch, p1, G)
    send(switch, p2, G2)
    got = scrape(collector_of(core, switch))
    assert value(got, "kube_mcast_agent_info", node_name="node1", node_ip=NODE_IP,
                 mode="encap") == 1
    assert value(got, "kube_mcast_flow_cookie_round") == 7
    assert value(got, "kube_mcast_switch_readable") == 1
    assert value(got, "kube_mcast_groups") == 2
    assert value(got, "kube_mcast_members", kind="local") == 3
    assert value(got, "kube_mcast_group_members", group=G, kind="local") == 2
    assert value(got, "kube_mcast_group_members", group=G2, kind="remote") == 0
    for group, pod in ((G, "p2"), (G, "p3"), (G2, "p3")):
        assert value(got, "kube_mcast_group_local_member", group=group, namespace="default",
                     pod=pod) == 1
    assert value(got, "kube_mcast_group_local_member", group=G2, namespace="default",
                 pod="p2") is None
    # p1's three packets took the (S, G) route, p2's one the (*, G2) route: once each.
    assert value(got, "kube_mcast_group_packets_total", group=G) == 3
    assert value(got, "kube_mcast_group_packets_total", group=G2) == 1
    assert value(got, "kube_mcast_pod_outbound_packets_total", namespace="default",
                 pod="p1") == 3
    assert value(got, "kube_mcast_pod_inbound_packets_total", namespace="default",
                 pod="p3") == 4
    assert value(got, "kube_mcast_pod_inbound_bytes_total", namespace="default",
                 pod="p3") == 0  # the fake table counts no bytes; OVS does (lab test)
    assert value(got, "kube_mcast_metric_series_omitted", family="group") == 0


def test_remote_members_by_node() -> None:
    rows = [GroupMembers(G, (), (NODE2, "192.168.77.10")), GroupMembers(G2, ("a/b",), (NODE2,))]
    got = scrape(MulticastCollector(lambda: rows, list))
    assert value(got, "kube_mcast_remote_node_groups", remote_node=NODE2) == 2
    assert value(got, "kube_mcast_remote_node_groups", remote_node="192.168.77.10") == 1
    assert value(got, "kube_mcast_members", kind="remote") == 3


def test_per_group_series_are_capped_lowest_addresses_first() -> None:
    rows = [GroupMembers(f"239.0.0.{i}", ("ns/a", "ns/b"), ()) for i in (3, 1, 20, 2)]
    traffic = [GroupTraffic("239.0.0.9", 5, 500)]  # routed, but no member left in the view
    got = scrape(MulticastCollector(lambda: rows, list, group_traffic=lambda: traffic,
                                    series_cap=3))
    kept = {dict(k)["group"] for (name, k) in got if name == "kube_mcast_group_members"}
    assert kept == {"239.0.0.1", "239.0.0.2", "239.0.0.3"}
    members = [k for (name, k) in got if name == "kube_mcast_group_local_member"]
    assert len(members) == 3
    assert value(got, "kube_mcast_metric_series_omitted", family="group") == 2
    assert value(got, "kube_mcast_metric_series_omitted", family="pod_group") == 5
    assert value(got, "kube_mcast_members", kind="local") == 8  # totals are never capped


def test_a_scrape_while_the_bridge_is_away_keeps_the_membership() -> None:
    def away() -> list[PodStats]:
        raise SwitchDisconnected("no bridge")

    rows = [GroupMembers(G, ("ns/a",), ())]
    got = scrape(MulticastCollector(lambda: rows, away, info=AgentInfo("n", NODE_IP, "encap", 1)))
    assert value(got, "kube_mcast_switch_readable") == 0
    assert value(got, "kube_mcast_group_members", group=G, kind="local") == 1
    assert not [k for (name, k) in got if name.startswith("kube_mcast_pod_")]


def test_group_traffic_sums_the_routes_of_a_group() -> None:
    cfg = BridgeConfig(Mode.ENCAP, 1, NODE_IP, NODE_MAC, tunnel_port=TUNNEL)
    flows = [FlowStats(mc.route_flow(cfg, G, 1), 10, 1000),
             FlowStats(mc.source_route_flow(cfg, "10.0.0.5", G, 2), 3, 300),
             FlowStats(mc.route_flow(cfg, "224.0.1.1", 3), 1, 100)]
    assert group_traffic(flows) == [GroupTraffic("224.0.1.1", 1, 100),
                                    GroupTraffic(G, 13, 1300)]


class _Refusing(TableSwitch):
    def apply(self, ops) -> None:
        raise SwitchDisconnected("gone")


def _rounds(kind: str, result: str) -> float:
    return REGISTRY.get_sample_value("kube_mcast_reconcile_rounds_total",
                                     {"kind": kind, "result": result}) or 0.0


def test_reconcile_rounds_and_bundle_sizes_are_counted(env) -> None:
    core, switch, (p1, *_) = env
    before = {(k, r): _rounds(k, r) for k in ("incremental", "full") for r in ("ok", "failed")}
    ops_before = REGISTRY.get_sample_value("kube_mcast_bundle_operations_count",
                                           {"kind": "incremental"}) or 0.0
    add_group = REGISTRY.get_sample_value("kube_mcast_flow_operations_total",
                                          {"kind": f"group_{Command.ADD}"}) or 0.0
    join(core, p1, G)
    assert _rounds("incremental", "ok") == before[("incremental", "ok")] + 1
    assert REGISTRY.get_sample_value("kube_mcast_bundle_operations_count",
                                     {"kind": "incremental"}) == ops_before + 1
    assert REGISTRY.get_sample_value("kube_mcast_flow_operations_total",
                                     {"kind": "group_add"}) == add_group + 1
    rec = Reconciler(_Refusing(), multicast_pipeline())
    with pytest.raises(SwitchDisconnected):
        rec.startup(1)
    assert _rounds("full", "failed") == before[("full", "failed")] + 1
    rec = Reconciler(TableSwitch(), multicast_pipeline())
    rec.set(Feature.GROUP, G, SwitchState())
    rec.startup(2)
    assert _rounds("full", "ok") == before[("full", "ok")] + 1
    assert (REGISTRY.get_sample_value("kube_mcast_flow_operation_seconds_count",
                                      {"kind": "full"}) or 0) >= 2
