"""Oversized multicast, agent side: per-pod and node counts, metrics, the rate-limited log.

The core runs on the fake OpenFlow table (checked against real OVS in tests/pipeline) with the
frame limits of an encap node behind a 1500-byte uplink: pods may send 1464-byte frames and
receive 1514-byte ones. Punts the table makes are handed to the core's oversize handler as the
switch would hand them (``PacketIn``, the punt flow's cookie).
"""

from __future__ import annotations

import logging
import socket
import struct

import pytest
from fakeport import Ports, TableSwitch
from prometheus_client import CollectorRegistry, generate_latest

from agent.config import parse_config
from agent.flowsync.reconciler import Reconciler
from agent.flowsync.switch import PacketIn
from agent.interfacestore import PodAttach, PodInfo
from agent.multicast.collector import MulticastCollector
from agent.multicast.core import MulticastCore
from agent.multicast.igmp.packets import build_v2_report
from agent.multicast.oversize import LOG_INTERVAL_S, OversizeLog
from agent.packetin import PacketInRouter
from agent.podnetwork import PodMtu
from pipeline.cookies import Feature
from pipeline.fake_table import Packet, Trace, multicast_mac
from pipeline.layout import multicast_pipeline
from pipeline.multicast import BridgeConfig, Mode, PuntReason
from pipeline.oversize import Punted
from pipeline.registers import PortClass

# These tests are about membership, replication, policy and counters: every copy also goes
# out the uplink, as before the uplink chose (its own choice: test_core_uplink.py).
ALWAYS = "always"

NODE_IP, NODE_MAC, NODE2 = "192.168.77.1", "02:77:00:00:00:01", "192.168.77.2"
TUNNEL, UPLINK = 65000, 65001
G = "239.1.1.1"
MTU = PodMtu(interface=1500, route=1450)
SEND, RECEIVE = MTU.max_send_frame, MTU.max_receive_frame


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def env():
    cfg = parse_config({"node": {"name": "node1", "ip": NODE_IP},
                        "multicast": {"multicastInterfaces": ["eth0"],
                                      "externalForwarding": ALWAYS}})
    bridge = BridgeConfig(Mode.ENCAP, 1, NODE_IP, NODE_MAC, tunnel_port=TUNNEL,
                          uplink_port=UPLINK, max_pod_frame=SEND, max_received_frame=RECEIVE)
    switch, clock = TableSwitch(tunnel_ports=(TUNNEL,)), Clock()
    core = MulticastCore(cfg, bridge, switch, Reconciler(switch, multicast_pipeline()), Ports(),
                         clock=clock)
    core.start()
    pods = [core.attach_pod(PodAttach("default", f"p{i}", f"cid{i}", f"veth{i}",
                                      f"10.77.1.{i + 1}", f"0a:00:00:00:00:0{i}"))
            for i in (1, 2)]
    return core, switch, clock, pods


def frame(p: Packet) -> bytes:
    """The Ethernet/IPv4/UDP frame ``p`` stands for, ``p.length`` bytes long."""
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, p.length - 14, 0, 0, 1, 17, 0,
                     socket.inet_aton(p.ipv4_src), socket.inet_aton(p.ipv4_dst))
    eth = bytes.fromhex(p.eth_dst.replace(":", "") + p.eth_src.replace(":", "")) + b"\x08\x00"
    return (eth + ip).ljust(p.length, b"\x00")


def punts(core: MulticastCore, t: Trace) -> list[PacketIn]:
    """The packet-ins a trace's punts become on the wire (cookie: the oversize punt flow's)."""
    cookie = core.bridge.cookie(Feature.OVERSIZE)
    return [PacketIn(t.packet.in_port, p.userdata, frame(t.packet), t.packet.tun_src, cookie,
                     0, 1) for p in t.packet_ins]


def from_pod(pod: PodInfo, length: int) -> Packet:
    return Packet(pod.ofport, pod.mac, multicast_mac(G), pod.ip, G, 17, 5000, length=length)


def from_tunnel(length: int, src: str = "10.77.2.9") -> Packet:
    return Packet(TUNNEL, "0a:00:00:00:02:09", multicast_mac(G), src, G, 17, 5000,
                  tun_src=NODE2, tun_dst=NODE_IP, length=length)


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
            and r.name == "agent.multicast.oversize"]


def test_an_oversized_pod_frame_is_counted_for_the_pod_and_logged(env, caplog) -> None:
    core, switch, _, (p1, p2) = env
    report = build_v2_report(G, p2.ip, p2.mac)
    core.handle_packet_ins([PacketIn(p2.ofport, bytes([PuntReason.IGMP_POD]), report, None,
                                     core.bridge.cookie(Feature.IGMP, p2.ofport), 0, 1)])
    assert sorted(d.port for d in switch.table.process(from_pod(p1, SEND)).deliveries) == [
        p2.ofport, UPLINK]
    t = switch.table.process(from_pod(p1, SEND + 1))
    assert t.deliveries == [] and [Punted.parse(p.userdata) for p in t.packet_ins] == [
        Punted(PortClass.POD, SEND)]
    caplog.set_level(logging.WARNING)
    router = PacketInRouter()
    router.register(Feature.IGMP, lambda b: pytest.fail("an oversize punt is not IGMP"))
    router.register(Feature.OVERSIZE, core.oversize_log.handle_packet_ins)
    router(punts(core, t))
    (line,) = warnings(caplog)
    assert all(s in line for s in (G, p1.ip, "pod default/p1", f"{SEND + 1}-byte",
                                   f"{SEND} bytes pods may send")), line
    stats = {s.name: s for s in core.pod_stats()}
    assert (stats["p1"].oversized, stats["p2"].oversized) == (1, 0)
    assert stats["p2"].inbound >= 1  # (OVS credits the flows behind the check both ways)
    assert core.oversized() == {"tunnel": 0, "uplink": 0}


def test_one_line_per_group_and_source_per_interval(env, caplog) -> None:
    core, switch, clock, (p1, p2) = env
    caplog.set_level(logging.WARNING)
    handle = core.oversize_log.handle_packet_ins
    for _ in range(5):
        handle(punts(core, switch.table.process(from_pod(p1, 2000))))
    handle(punts(core, switch.table.process(from_pod(p2, 2000))))  # another source: its own
    assert len(warnings(caplog)) == 2
    clock.now += LOG_INTERVAL_S
    handle(punts(core, switch.table.process(from_pod(p1, 2000))))
    lines = warnings(caplog)
    assert len(lines) == 3 and "4 more from this source" in lines[-1], lines
    assert {s.name: s.oversized for s in core.pod_stats()} == {"p1": 6, "p2": 1}


def test_tunnel_and_uplink_frames_over_the_receive_limit(env, caplog) -> None:
    core, switch, _, _ = env
    caplog.set_level(logging.WARNING)
    assert switch.table.process(from_tunnel(RECEIVE)).packet_ins == []
    t = switch.table.process(from_tunnel(RECEIVE + 1))
    assert t.deliveries == [] and [Punted.parse(p.userdata) for p in t.packet_ins] == [
        Punted(PortClass.TUNNEL, RECEIVE)]
    core.oversize_log.handle_packet_ins(punts(core, t))
    uplink = Packet(UPLINK, "02:77:00:00:00:64", multicast_mac(G), "192.168.77.100", G, 17,
                    5000, length=9000)
    core.oversize_log.handle_packet_ins(punts(core, switch.table.process(uplink)))
    tunnel_line, uplink_line = warnings(caplog)
    assert f"the tunnel from node {NODE2}" in tunnel_line and "10.77.2.9" in tunnel_line
    assert "the uplink" in uplink_line and "9000-byte" in uplink_line
    assert f"{RECEIVE} bytes pods can receive" in uplink_line
    assert core.oversized() == {"tunnel": 1, "uplink": 1}


def test_metrics(env) -> None:
    core, switch, _, (p1, _) = env
    switch.table.process(from_pod(p1, SEND + 100))
    switch.table.process(from_tunnel(RECEIVE + 1))
    registry = CollectorRegistry()
    registry.register(MulticastCollector(core.members, core.pod_stats, core.punt_drops,
                                         core.oversized))
    text = generate_latest(registry).decode()
    assert ('kube_mcast_pod_dropped_packets_total{namespace="default",pod="p1",'
            'reason="oversized"} 1.0') in text
    assert 'kube_mcast_oversized_packets_total{source="tunnel"} 1.0' in text
    assert 'kube_mcast_oversized_packets_total{source="uplink"} 0.0' in text


def test_the_log_table_is_bounded_and_foreign_punts_are_ignored(caplog) -> None:
    clock = Clock()
    log = OversizeLog(lambda port: None, clock, max_tracked=3)
    caplog.set_level(logging.WARNING)
    data = Punted(PortClass.UPLINK, RECEIVE).userdata()
    for i in range(10):
        p = Packet(UPLINK, "02:00:00:00:00:01", multicast_mac(G), f"192.168.77.{i + 10}", G,
                   17, length=RECEIVE + 1)
        log.handle_packet_ins([PacketIn(UPLINK, data, frame(p), None, 0, 0, 1)])
    assert log.tracked() == 3 and len(warnings(caplog)) == 10
    log.handle_packet_ins([PacketIn(UPLINK, bytes([PuntReason.IGMP_UPLINK]), b"x" * 60, None,
                                    0, 0, 1),  # not an oversize punt's userdata
                           PacketIn(UPLINK, data, b"\x00" * 60, None, 0, 0, 1)])  # not IPv4
    assert len(warnings(caplog)) == 10
    pod = PacketIn(9, Punted(PortClass.POD, SEND).userdata(), frame(p), None, 0, 0, 1)
    found = log.describe(pod)
    assert found is not None and found.sender == "unknown pod port 9"
