"""Oversized multicast on a real ovs-vswitchd (netdev datapath): real frames, real counters.

A private vswitchd in a fresh netns (``ovs_node``) holds br-int with the agent's pipeline, built
and kept by the multicast core through the OpenFlow adaptor, with the frame limits of a node
whose pods have a 1400-byte interface and a 1350-byte multicast route. A sender pod (a veth into
its own netns, tx checksum offload off as the CNI plugin sets it), a receiver pod and the uplink
(veths whose far ends stay in the node netns) exchange frames through AF_PACKET sockets: what
fits is delivered; what is larger is not, is counted against its source by the datapath, and
reaches the agent as a punt that is logged.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import pytest
from oflab import add_veth, packet_socket, receive
from os_ken.lib.packet import ethernet, ipv4, packet, udp
from pyroute2 import IPRoute

from agent.cni.podnet import set_tx_checksum
from agent.config import parse_config
from agent.flowsync.reconciler import Reconciler
from agent.flowsync.switch import PacketIn
from agent.interfacestore import PodAttach
from agent.multicast.core import MulticastCore
from agent.multicast.igmp.packets import build_v2_report
from agent.ovs.ovsdb import Ovsdb
from agent.ovs.podports import OvsdbPodPorts
from agent.ovs.switch import OpenFlowSwitch
from agent.packetin import PacketInRouter
from agent.podnetwork import PodMtu
from pipeline import layout
from pipeline import multicast as mc
from pipeline.cookies import Feature, feature_of
from pipeline.diff import canonical
from pipeline.fake_table import multicast_mac
from pipeline.model import CheckPktLarger
from pipeline.oversize import Punted
from pipeline.registers import PortClass
from pipeline.render import render_flow
from tools.mclab import netns
from tools.mclab.ovsnode import OvsNode

pytestmark = pytest.mark.ovs

P = mc.pipeline()
NODE_IP, NODE_MAC = "192.168.77.1", "02:77:00:00:00:01"
UPLINK = 200
G = "239.7.7.7"
MTU = PodMtu(interface=1400, route=1350)  # every test frame fits the veths' 1500
SEND, RECEIVE = MTU.max_send_frame, MTU.max_receive_frame
SENDER_IP, SENDER_MAC = "10.77.1.1", "0a:00:00:00:01:01"
OUTSIDE_IP, OUTSIDE_MAC = "192.168.77.100", "02:77:00:00:00:64"
T = TypeVar("T")


def _veth_in_node(node: OvsNode, name: str) -> None:
    """A veth ``name`` (for br-int) whose peer ``<name>-peer`` stays in the node netns."""
    with IPRoute(netns=node.netns, flags=0) as ipr:
        ipr.link("add", ifname=name, kind="veth", peer={"ifname": f"{name}-peer"})
        for dev in (name, f"{name}-peer"):
            ipr.link("set", index=ipr.link_lookup(ifname=dev)[0], state="up")
    set_tx_checksum(f"{name}-peer", False, node.netns)


def _udp_frame(src_mac: str, src_ip: str, length: int) -> bytes:
    """An Ethernet/IPv4/UDP frame to G of exactly ``length`` bytes."""
    pkt = packet.Packet()
    pkt.add_protocol(ethernet.ethernet(dst=multicast_mac(G), src=src_mac, ethertype=0x0800))
    pkt.add_protocol(ipv4.ipv4(ttl=8, proto=17, src=src_ip, dst=G))
    pkt.add_protocol(udp.udp(src_port=4000, dst_port=5000))
    pkt.add_protocol(bytes(length - 14 - 20 - 8))
    pkt.serialize()
    assert len(pkt.data) == length
    return bytes(pkt.data)


def _wait(what: str, probe: Callable[[], T | None], timeout: float = 10.0) -> T:
    deadline = time.monotonic() + timeout
    while (found := probe()) is None:
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return found


def _to_group(length: int) -> Callable[[bytes], bool]:
    return lambda f: len(f) == length and f[30:34] == bytes(int(b) for b in G.split("."))


def _oversize_punt(punts: queue.Queue[PacketIn], length: int) -> PacketIn:
    while True:
        try:
            pin = punts.get(timeout=5)
        except queue.Empty:
            pytest.fail(f"no oversize punt of a {length}-byte frame")
        if len(pin.data) == length:
            return pin


def test_oversized_frames_are_dropped_counted_and_punted(
        switch: OpenFlowSwitch, ovs_node: OvsNode, db: Ovsdb, netns_name: str,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="agent.multicast.oversize")
    netns.create(netns_name)
    add_veth(ovs_node.netns, "vp1", netns_name, SENDER_IP)
    set_tx_checksum("eth0", False, netns_name)
    _veth_in_node(ovs_node, "vp2")
    _veth_in_node(ovs_node, "up0")
    ovs_node.vsctl("add-port", "br-int", "up0", "--", "set", "interface", "up0",
                   f"ofport_request={UPLINK}")
    cfg = parse_config({"node": {"name": "node1", "ip": NODE_IP}})
    bridge = mc.BridgeConfig(mc.Mode.NOENCAP, 1, NODE_IP, NODE_MAC, uplink_port=UPLINK,
                             max_pod_frame=MTU.max_send_frame,
                             max_received_frame=MTU.max_receive_frame)
    rec = Reconciler(switch, P)
    core = MulticastCore(cfg, bridge, switch, rec, OvsdbPodPorts(db, "br-int"))
    core.start()
    punts: queue.Queue[PacketIn] = queue.Queue()

    def oversize(batch: Sequence[PacketIn]) -> None:
        for pin in batch:
            punts.put(pin)
        core.oversize_log.handle_packet_ins(batch)

    router = PacketInRouter()
    router.register(Feature.IGMP, core.handle_packet_ins)
    router.register(Feature.OVERSIZE, oversize)
    switch.on_packet_ins = router
    sender = core.attach_pod(PodAttach("ns1", "sender", "c1", "vp1", SENDER_IP, SENDER_MAC))
    receiver = core.attach_pod(PodAttach("ns1", "receiver", "c2", "vp2", "10.77.1.2",
                                         "0a:00:00:00:01:02"))
    # OVS took our encoding of check_pkt_larger, dumps it as we render it, and os-ken's reading
    # of its dump decodes to what we sent.
    assert canonical(switch.dump(), P) == canonical(rec.desired(), P)
    fork = next(f for f in rec.desired().flows if f.table == layout.CLASSIFIER
                and any(isinstance(a, CheckPktLarger) for a in f.actions)
                and f.match.get("in_port") is not None
                and f.match.get("in_port").value == sender.ofport)  # type: ignore[union-attr]
    dumped = ovs_node.ofctl("dump-flows", "--names", "--no-stats", "br-int")
    assert render_flow(fork, P, {sender.ofport: "vp1"}) in [ln.strip()
                                                            for ln in dumped.splitlines()]
    assert f"check_pkt_larger({SEND})->NXM_NX_REG0[8]" in render_flow(fork, P)
    peer = packet_socket(ovs_node.netns, "vp2-peer", timeout=1.0)
    pod = packet_socket(netns_name)
    outside = packet_socket(ovs_node.netns, "up0-peer")
    try:
        peer.send(build_v2_report(G, receiver.ip, receiver.mac))  # a real join, punted
        _wait("the receiver's membership",
              lambda: True if any(m.local_pods for m in core.members()) else None)

        # What fits is delivered: the sender's largest frame, the uplink's largest.
        pod.send(_udp_frame(SENDER_MAC, SENDER_IP, SEND))
        receive(peer, _to_group(SEND))
        outside.send(_udp_frame(OUTSIDE_MAC, OUTSIDE_IP, RECEIVE))
        receive(peer, _to_group(RECEIVE))

        # One byte more from the pod: not delivered, counted against the pod, punted, logged.
        pod.send(_udp_frame(SENDER_MAC, SENDER_IP, SEND + 1))
        pin = _oversize_punt(punts, SEND + 1)
        assert feature_of(pin.cookie) is Feature.OVERSIZE and pin.in_port == sender.ofport
        assert Punted.parse(pin.userdata) == Punted(PortClass.POD, SEND)
        with pytest.raises(TimeoutError):
            receive(peer, _to_group(SEND + 1))
        stats = _wait("the sender's oversize count", lambda: next(
            (s for s in core.pod_stats() if s.name == "sender" and s.oversized), None))
        assert stats.oversized == 1
        assert {s.name: s.oversized for s in core.pod_stats()}["receiver"] == 0

        # One byte more than pods can receive, from the uplink: the same, counted as the uplink.
        outside.send(_udp_frame(OUTSIDE_MAC, OUTSIDE_IP, RECEIVE + 1))
        pin = _oversize_punt(punts, RECEIVE + 1)
        assert Punted.parse(pin.userdata) == Punted(PortClass.UPLINK, RECEIVE)
        with pytest.raises(TimeoutError):
            receive(peer, _to_group(RECEIVE + 1))
        assert _wait("the uplink's oversize count",
                     lambda: core.oversized() if core.oversized()["uplink"] else None) == {
            "uplink": 1}

        lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any(G in ln and SENDER_IP in ln and "pod ns1/sender" in ln
                   and f"{SEND + 1}-byte" in ln for ln in lines), lines
        assert any(OUTSIDE_IP in ln and "the uplink" in ln for ln in lines), lines
    finally:
        for sock in (peer, pod, outside):
            sock.close()
