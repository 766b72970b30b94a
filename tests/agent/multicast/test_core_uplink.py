"""The external path only when needed (``multicast.externalForwarding: auto``, the default): the
core driven by real IGMP frames from pods and from the uplink, its flows run on the fake table.

Pod multicast leaves by the uplink for a group an outside host reported there, for link-local
groups, and for every group while a multicast router or querier is heard there; otherwise it
stays inside. Outside memberships age only while a querier asks the hosts; they survive a
restart (the uplink file).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fakeport import PI, Clock, Ports, TableSwitch

from agent.config import parse_config
from agent.flowsync.reconciler import Reconciler
from agent.interfacestore import PodAttach
from agent.multicast.core import MulticastCore
from agent.multicast.igmp.packets import (
    GroupRecord,
    RecordType,
    build_query,
    build_v2_leave,
    build_v2_report,
    build_v3_reports,
)
from pipeline.fake_table import Packet
from pipeline.layout import multicast_pipeline
from pipeline.multicast import BridgeConfig, Mode, PuntReason
from wire.nodes import NodeInfo

NODE_IP, NODE_MAC, NODE2 = "192.168.77.1", "02:77:00:00:00:01", "192.168.77.2"
HOST, HOST2, ROUTER = "192.168.77.200", "192.168.77.201", "192.168.77.254"
TUNNEL, UPLINK = 65000, 65001
G, G2, MDNS = "239.1.1.1", "239.2.2.2", "224.0.0.251"
UPLINK_IGMP = bytes([PuntReason.IGMP_UPLINK])


class Node:
    def __init__(self, tmp_path: Path, mode: Mode = Mode.ENCAP, external: str = "auto",
                 switch: TableSwitch | None = None, round_: int = 1) -> None:
        cfg = parse_config({"node": {"name": "node1", "ip": NODE_IP},
                            "multicast": {"igmpQueryInterval": "10s",
                                          "multicastInterfaces": ["eth0"],
                                          "externalForwarding": external}})
        tunnel = TUNNEL if mode is Mode.ENCAP else None
        bridge = BridgeConfig(mode, round_, NODE_IP, NODE_MAC, tunnel_port=tunnel,
                              uplink_port=UPLINK)
        self.switch = switch or TableSwitch(tunnel_ports=(TUNNEL,) if tunnel else ())
        self.clock = Clock()
        self.rec = Reconciler(self.switch, multicast_pipeline())
        self.core = MulticastCore(cfg, bridge, self.switch, self.rec, Ports(), clock=self.clock,
                                  uplink_file=tmp_path / "uplink.json")

    def start(self) -> Node:
        self.core.start()
        self.pods = [self.core.attach_pod(PodAttach(
            "default", f"p{i}", f"cid{i}", f"veth{i}", f"10.77.1.{i + 1}",
            f"0a:00:00:00:00:0{i}")) for i in range(1, 3)]
        return self

    def send(self, group: str, pod: int = 0) -> list[int]:
        p = self.pods[pod]
        t = self.switch.table.process(Packet(p.ofport, p.mac, "01:00:5e:01:01:01", p.ip, group,
                                             17, udp_dst=5000))
        return sorted(d.port for d in t.deliveries)

    def pod_joins(self, group: str, pod: int = 1) -> None:
        p = self.pods[pod]
        (frame,) = build_v3_reports([GroupRecord(RecordType.TO_EX, group, ())], p.ip, p.mac)
        self.core.handle_packet_in(PI(p.ofport, bytes([PuntReason.IGMP_POD]), frame))

    def from_uplink(self, frame: bytes) -> None:
        self.core.handle_packet_in(PI(UPLINK, UPLINK_IGMP, frame))

    def outside(self) -> dict[str, list[str]]:
        return {m.group: list(m.outside_hosts) for m in self.core.members() if m.outside_hosts}


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path).start()


def test_nothing_goes_out_until_an_outside_host_asks(node: Node) -> None:
    node.pod_joins(G)
    assert node.send(G) == [node.pods[1].ofport]  # the member only: nobody outside asked
    assert node.send(G2) == []  # nobody anywhere
    assert node.send(MDNS) == [UPLINK]  # link-local: flooded, as any switch does


def test_an_outside_hosts_report_and_leave_open_and_close_the_uplink(node: Node) -> None:
    node.pod_joins(G)
    node.from_uplink(build_v2_report(G, HOST, "02:00:00:00:00:c8"))
    (frame,) = build_v3_reports([GroupRecord(RecordType.TO_EX, G2, ())], HOST2,
                                "02:00:00:00:00:c9")
    node.from_uplink(frame)
    assert node.send(G) == [node.pods[1].ofport, UPLINK]
    assert node.send(G2) == [UPLINK]  # no member inside: a group for the uplink alone
    assert node.outside() == {G: [HOST], G2: [HOST2]}
    node.from_uplink(build_v2_leave(G, HOST, "02:00:00:00:00:c8"))  # at once: tracked per host
    (frame,) = build_v3_reports([GroupRecord(RecordType.TO_IN, G2, ())], HOST2,
                                "02:00:00:00:00:c9")
    node.from_uplink(frame)
    assert (node.send(G), node.send(G2)) == ([node.pods[1].ofport], [])
    assert node.outside() == {}


def test_one_of_two_outside_hosts_leaving_keeps_the_group_out(node: Node) -> None:
    for host in (HOST, HOST2):
        node.from_uplink(build_v2_report(G, host, "02:00:00:00:00:c8"))
    node.from_uplink(build_v2_leave(G, HOST, "02:00:00:00:00:c8"))
    assert node.send(G) == [UPLINK] and node.outside() == {G: [HOST2]}


def test_without_a_querier_outside_members_do_not_age(node: Node) -> None:
    node.from_uplink(build_v2_report(G, HOST, "02:00:00:00:00:c8"))
    node.clock.now += 10 * node.core.local.timers.membership_timeout_s
    node.core.tick()
    assert node.send(G) == [UPLINK]  # nobody asks the host to refresh: it is kept
    assert node.core.uplink.next_deadline() is None  # and the timer loop has nothing to do


def test_a_router_on_the_uplink_takes_every_group_until_it_goes_quiet(node: Node) -> None:
    node.pod_joins(G)
    # a v3 query: the router's own timers (robustness 2, 20 s, max response 4 s)
    node.from_uplink(build_query(3, ROUTER, "02:00:00:00:00:fe", max_resp_s=4, qrv=2,
                                 qqic_s=20))
    assert node.send(G) == [node.pods[1].ofport, UPLINK]
    assert node.send(G2) == [UPLINK]  # unjoined groups too: routers take everything
    assert node.core.uplink.router == ROUTER
    node.from_uplink(build_v2_report(G2, HOST, "02:00:00:00:00:c8"))  # a host answers
    present = 2 * 20 + 4 / 2
    node.clock.now += present - 1
    node.core.tick()
    node.pod_joins(G)  # the pod answers our own queries meanwhile
    assert node.send(G) == [node.pods[1].ofport, UPLINK]
    node.clock.now += 1
    node.core.tick()  # router port aged out
    assert node.core.uplink.router is None
    assert node.send(G) == [node.pods[1].ofport]
    assert node.send(G2) == [UPLINK]  # its host answered while the router asked: kept
    assert node.send("239.9.9.9") == []


def test_while_a_querier_asks_silent_outside_hosts_age_out(node: Node) -> None:
    node.from_uplink(build_v2_report(G, HOST, "02:00:00:00:00:c8"))
    for _ in range(5):  # the querier keeps asking, the host never answers again
        node.from_uplink(build_query(2, ROUTER, "02:00:00:00:00:fe", max_resp_s=4))
        node.clock.now += 60
        node.core.tick()
    assert node.outside() == {}  # aged out on the querier's timers (2 x 125 s + 4 s)
    assert node.send(G) == [UPLINK]  # the router still takes everything


def test_proxy_queries_and_our_own_frames_are_not_a_router(node: Node) -> None:
    node.from_uplink(build_query(2, "0.0.0.0", "02:00:00:00:00:fe"))  # a snooping switch's
    node.from_uplink(build_query(2, NODE_IP, NODE_MAC))
    node.from_uplink(build_v2_report(G, NODE_IP, NODE_MAC))
    assert node.core.uplink.router is None
    assert node.send(G) == [] and node.outside() == {}


def test_encap_peers_reports_upstream_are_not_outside_interest(node: Node) -> None:
    node.core.set_nodes([NodeInfo("node1", (NODE_IP,)), NodeInfo("node2", (NODE2,))])
    (frame,) = build_v3_reports([GroupRecord(RecordType.TO_EX, G, ())], NODE2,
                                "02:77:00:00:00:02")
    node.from_uplink(frame)  # node2 reporting upstream: it gets G through the tunnel
    assert node.send(G) == [] and node.outside() == {}


def test_noencap_peers_reports_are_how_nodes_find_each_other(tmp_path: Path) -> None:
    node = Node(tmp_path, Mode.NOENCAP).start()
    node.core.set_nodes([NodeInfo("node1", (NODE_IP,)), NodeInfo("node2", (NODE2,))])
    (frame,) = build_v3_reports([GroupRecord(RecordType.TO_EX, G, ())], NODE2,
                                "02:77:00:00:00:02")
    node.from_uplink(frame)
    assert node.send(G) == [UPLINK] and node.outside() == {G: [NODE2]}


def test_always_sends_every_group_out(tmp_path: Path) -> None:
    node = Node(tmp_path, external="always").start()
    node.pod_joins(G)
    assert (node.send(G), node.send(G2)) == ([node.pods[1].ofport, UPLINK], [UPLINK])


def test_a_restarted_agent_keeps_the_outside_hosts_and_the_router(node: Node,
                                                                    tmp_path: Path) -> None:
    node.from_uplink(build_v2_report(G, HOST, "02:00:00:00:00:c8"))
    again = Node(tmp_path, switch=node.switch, round_=2)
    again.clock.now = node.clock.now
    again.core.start(node.core.list_pods(), install=lambda: again.rec.startup(2),
                     found=node.switch.dump())
    again.pods = node.pods
    assert again.send(G) == [UPLINK] and again.outside() == {G: [HOST]}
    assert again.send(G2) == []
    # a router heard before a restart is still there after it
    again.from_uplink(build_query(2, ROUTER, "02:00:00:00:00:fe", max_resp_s=4))
    third = Node(tmp_path, switch=node.switch, round_=3)
    third.core.start(node.core.list_pods(), install=lambda: third.rec.startup(3),
                     found=node.switch.dump())
    third.pods = node.pods
    assert third.core.uplink.router == ROUTER and third.send(G2) == [UPLINK]


def test_outside_hosts_cannot_grow_the_table_past_the_node_cap(tmp_path: Path) -> None:
    node = Node(tmp_path).start()
    node.core.uplink.max_groups = 2
    for i in range(3):
        node.from_uplink(build_v2_report(f"239.5.0.{i}", HOST, "02:00:00:00:00:c8"))
    assert sorted(node.outside()) == ["239.5.0.0", "239.5.0.1"]  # the third refused
    assert node.send("239.5.0.2") == []
    node.from_uplink(build_v2_report("239.5.0.1", HOST2, "02:00:00:00:00:c9"))  # known group
    assert node.outside()["239.5.0.1"] == [HOST, HOST2]
