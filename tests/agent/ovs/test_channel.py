"""agent.ovs.switch against a scripted fake bridge on loopback: handshake, errors by xid, fatal,
and the bytes of a bundle's adds (os-ken's, written by the fast path, with the switch's xids).

No OVS needed: the test plays the switch side of the OpenFlow 1.5 connection byte by byte.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
from collections.abc import Iterator

import pytest
from os_ken.ofproto import ofproto_protocol
from os_ken.ofproto import ofproto_v1_5 as ofp
from os_ken.ofproto import ofproto_v1_5_parser as ofpp
from wirecheck import os_ken_bundle_add

from agent.flowsync.switch import CookieDelete
from agent.ovs.channel import Channel
from agent.ovs.convert import OF_VERSION, ConvertError
from agent.ovs.switch import OpenFlowError, OpenFlowSwitch, SwitchDisconnected
from pipeline import layout
from pipeline import multicast as mc
from pipeline.cookies import round_cookie_mask
from pipeline.model import Bucket, Flow, Group, GroupAction, Match, Output, SetField
from pipeline.ops import Command, FlowOp, GroupOp

P = layout.multicast_pipeline()
HDR = struct.Struct("!BBHI")
DPID = 0x1234


class FakeBridge:
    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=5)

    def recv(self) -> tuple[int, int, bytes]:
        head = self._exactly(HDR.size)
        _, msg_type, length, xid = HDR.unpack(head)
        return msg_type, xid, head + self._exactly(length - HDR.size)

    def _exactly(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("controller closed")
            buf += chunk
        return buf

    def expect(self, msg_type: int) -> tuple[int, bytes]:
        got, xid, raw = self.recv()
        assert got == msg_type, f"expected message type {msg_type}, got {got}"
        return xid, raw

    def send(self, msg_type: int, xid: int, body: bytes = b"") -> None:
        self.sock.sendall(HDR.pack(OF_VERSION, msg_type, HDR.size + len(body), xid) + body)

    def handshake(self) -> None:
        self.expect(ofp.OFPT_HELLO)
        self.send(ofp.OFPT_HELLO, 1)
        xid, _ = self.expect(ofp.OFPT_FEATURES_REQUEST)
        self.send(ofp.OFPT_FEATURES_REPLY, xid, struct.pack("!QIBB2xII", DPID, 0, 254, 0, 0, 0))
        _, raw = self.expect(ofp.OFPT_EXPERIMENTER)  # NXT_SET_PACKET_IN_FORMAT
        assert struct.unpack_from("!IIi", raw, 8) == (0x2320, 16, 2)  # nxt_packet_in2
        self.expect(ofp.OFPT_SET_CONFIG)
        xid, _ = self.expect(ofp.OFPT_BARRIER_REQUEST)
        self.send(ofp.OFPT_BARRIER_REPLY, xid)

    def error(self, xid: int, type_: int, code: int, data: bytes) -> None:
        self.send(ofp.OFPT_ERROR, xid, struct.pack("!HH", type_, code) + data[:64])


@pytest.fixture
def fatal() -> list[BaseException]:
    return []


@pytest.fixture
def pair(fatal: list[BaseException]) -> Iterator[tuple[OpenFlowSwitch, FakeBridge]]:
    sw = OpenFlowSwitch(P, "127.0.0.1", 0, fatal=fatal.append, timeout=5)
    sw.start()
    bridge = FakeBridge(sw.address)
    try:
        bridge.handshake()
        assert sw.wait_connected(5) == DPID
        yield sw, bridge
    finally:
        bridge.sock.close()
        sw.stop()


def test_echo_is_answered(pair: tuple[OpenFlowSwitch, FakeBridge]) -> None:
    _, bridge = pair
    bridge.send(ofp.OFPT_ECHO_REQUEST, 77, b"ping")
    xid, raw = bridge.expect(ofp.OFPT_ECHO_REPLY)
    assert xid == 77 and raw[8:] == b"ping"


def test_refused_add_discards_the_bundle_and_names_the_op(
        pair: tuple[OpenFlowSwitch, FakeBridge]) -> None:
    sw, bridge = pair
    flow = Flow(layout.ROUTING, 200, Match.of(eth_type=0x800, ipv4_dst="239.9.9.9"),
                (GroupAction(999),), cookie=1)
    box: dict[str, BaseException] = {}

    def apply() -> None:
        try:
            sw.apply([FlowOp(Command.ADD, flow)])
        except BaseException as exc:  # noqa: BLE001 - checked below
            box["error"] = exc

    t = threading.Thread(target=apply)
    t.start()
    open_xid, _ = bridge.expect(ofp.OFPT_BUNDLE_CONTROL)
    add_xid, add_raw = bridge.expect(ofp.OFPT_BUNDLE_ADD_MESSAGE)
    barrier_xid, _ = bridge.expect(ofp.OFPT_BARRIER_REQUEST)
    bridge.error(add_xid, ofp.OFPET_BAD_ACTION, ofp.OFPBAC_BAD_OUT_GROUP, add_raw)
    bridge.send(ofp.OFPT_BARRIER_REPLY, barrier_xid)
    _, discard = bridge.expect(ofp.OFPT_BUNDLE_CONTROL)
    assert struct.unpack_from("!IH", discard, 8)[1] == ofp.OFPBCT_DISCARD_REQUEST
    t.join(5)
    err = box["error"]
    assert isinstance(err, OpenFlowError) and open_xid != add_xid
    assert "OFPET_BAD_ACTION/OFPBAC_BAD_OUT_GROUP" in str(err) and "239.9.9.9" in str(err)
    assert err.failed_ops == [FlowOp(Command.ADD, flow)]


def test_commit_failure_is_reported_against_the_add(
        pair: tuple[OpenFlowSwitch, FakeBridge]) -> None:
    sw, bridge = pair
    flow = Flow(layout.ROUTING, 200, Match.of(eth_type=0x800), (GroupAction(3),), cookie=1)
    box: dict[str, BaseException] = {}

    def apply() -> None:
        try:
            sw.apply([FlowOp(Command.ADD, flow)])
        except BaseException as exc:  # noqa: BLE001
            box["error"] = exc

    t = threading.Thread(target=apply)
    t.start()
    bridge.expect(ofp.OFPT_BUNDLE_CONTROL)
    add_xid, add_raw = bridge.expect(ofp.OFPT_BUNDLE_ADD_MESSAGE)
    xid, _ = bridge.expect(ofp.OFPT_BARRIER_REQUEST)
    bridge.send(ofp.OFPT_BARRIER_REPLY, xid)
    commit_xid, _ = bridge.expect(ofp.OFPT_BUNDLE_CONTROL)
    xid, _ = bridge.expect(ofp.OFPT_BARRIER_REQUEST)
    bridge.error(add_xid, ofp.OFPET_BAD_ACTION, ofp.OFPBAC_BAD_OUT_GROUP, add_raw)
    bridge.error(commit_xid, ofp.OFPET_BUNDLE_FAILED, ofp.OFPBFC_MSG_FAILED, b"")
    bridge.send(ofp.OFPT_BARRIER_REPLY, xid)
    t.join(5)
    labels = [label for label, _ in box["error"].failures]  # type: ignore[attr-defined]
    assert labels[0].startswith("add flow") and labels[1] == "commit"


def test_handler_failure_is_fatal(pair: tuple[OpenFlowSwitch, FakeBridge],
                                  fatal: list[BaseException]) -> None:
    sw, bridge = pair
    done = threading.Event()

    def broken(_pin: object) -> None:
        done.set()
        raise RuntimeError("bug in a packet-in handler")

    sw.on_packet_ins = broken
    dp = ofproto_protocol.ProtocolDesc(OF_VERSION)
    prop = ofpp.NXTPacketIn2PropPacket(data=bytes(60))
    prop.type = prop._PROP_TYPE
    msg = ofpp.NXTPacketIn2(dp, [prop])
    msg.xid = 0
    msg.serialize()
    bridge.sock.sendall(bytes(msg.buf))
    assert done.wait(5)
    for _ in range(50):
        if fatal:
            break
        threading.Event().wait(0.05)
    assert len(fatal) == 1 and "bug in a packet-in handler" in str(fatal[0])


def test_disconnect_fails_waiters(pair: tuple[OpenFlowSwitch, FakeBridge]) -> None:
    sw, bridge = pair
    box: dict[str, BaseException] = {}

    def barrier() -> None:
        try:
            sw.barrier()
        except BaseException as exc:  # noqa: BLE001
            box["error"] = exc

    t = threading.Thread(target=barrier)
    t.start()
    bridge.expect(ofp.OFPT_BARRIER_REQUEST)
    bridge.sock.close()
    t.join(5)
    assert isinstance(box["error"], SwitchDisconnected)
    assert not sw.connected
    with pytest.raises(SwitchDisconnected):
        sw.dump()


def test_reconnect_replaces_the_connection(fatal: list[BaseException]) -> None:
    sw = OpenFlowSwitch(P, "127.0.0.1", 0, fatal=fatal.append, timeout=5)
    connected: list[int] = []
    sw.on_connected = connected.append
    sw.start()
    first = FakeBridge(sw.address)
    try:
        first.handshake()
        sw.wait_connected(5)
        box: dict[str, BaseException] = {}

        def barrier() -> None:
            try:
                sw.barrier()
            except BaseException as exc:  # noqa: BLE001
                box["error"] = exc

        t = threading.Thread(target=barrier)
        t.start()
        first.expect(ofp.OFPT_BARRIER_REQUEST)
        second = FakeBridge(sw.address)  # e.g. vswitchd restarted: the new one wins
        second.handshake()
        t.join(5)
        assert isinstance(box["error"], SwitchDisconnected)  # asked on the old connection
        assert sw.wait_connected(5) == DPID
        t = threading.Thread(target=sw.barrier)
        t.start()
        xid, _ = second.expect(ofp.OFPT_BARRIER_REQUEST)
        second.send(ofp.OFPT_BARRIER_REPLY, xid)
        t.join(5)
        assert not t.is_alive()
        for _ in range(50):
            if len(connected) == 2:
                break
            threading.Event().wait(0.05)
        assert connected == [DPID, DPID] and not fatal
        second.sock.close()
    finally:
        first.sock.close()
        sw.stop()


def test_bundle_adds_are_os_kens_bytes_with_the_switchs_xids(
        pair: tuple[OpenFlowSwitch, FakeBridge], caplog: pytest.LogCaptureFixture) -> None:
    sw, bridge = pair
    flow = Flow(layout.ROUTING, 200, Match.of(eth_type=0x800, ipv4_dst="239.1.1.1"),
                (GroupAction(5),), cookie=1)
    group = Group(5, (mc.local_bucket(1), mc.remote_bucket("10.0.0.2")))
    more = Group(5, (mc.external_bucket(),))
    ops = [FlowOp(Command.ADD, flow), GroupOp(Command.ADD, group),
           GroupOp(Command.INSERT_BUCKETS, more), CookieDelete(*round_cookie_mask(2))]
    t = threading.Thread(target=sw.apply, args=(ops,))
    t.start()
    _, open_raw = bridge.expect(ofp.OFPT_BUNDLE_CONTROL)
    bundle_id, _, flags = struct.unpack_from("!IHH", open_raw, 8)
    adds = [bridge.expect(ofp.OFPT_BUNDLE_ADD_MESSAGE) for _ in ops]
    for op, first, (xid, raw) in zip(ops, [0, 0, 2, 0], adds, strict=True):
        assert raw == os_ken_bundle_add(op, first, xid, bundle_id, flags)
    assert [xid for xid, _ in adds] == list(range(adds[0][0], adds[0][0] + len(ops)))
    xid, _ = bridge.expect(ofp.OFPT_BARRIER_REQUEST)
    bridge.send(ofp.OFPT_BARRIER_REPLY, xid)
    bridge.expect(ofp.OFPT_BUNDLE_CONTROL)
    xid, _ = bridge.expect(ofp.OFPT_BARRIER_REQUEST)
    bridge.send(ofp.OFPT_BARRIER_REPLY, xid)
    t.join(5)
    assert not t.is_alive() and sw.encoder.fast.fast == len(ops)
    # An error that comes too late for the bundle still names the op (described only now).
    with caplog.at_level(logging.ERROR, logger="agent.ovs.switch"):
        bridge.error(adds[0][0], ofp.OFPET_BAD_ACTION, ofp.OFPBAC_BAD_OUT_GROUP, adds[0][1])
        bridge.send(ofp.OFPT_ECHO_REQUEST, 99)
        bridge.expect(ofp.OFPT_ECHO_REPLY)  # the error was handled before the echo
    assert "OpenFlow error for add flow" in caplog.text and "239.1.1.1" in caplog.text


def test_xids_taken_in_bulk_continue_the_sequence() -> None:
    a, b = socket.socketpair()
    try:
        conn = Channel(a, None, ofp, ofpp)
        conn._xid = 0xFFFFFFFE
        assert conn.take_xids(3) == [0xFFFFFFFF, 1, 2] and conn.take_xids(0) == []
        assert conn.set_xid(ofpp.OFPBarrierRequest(conn)) == 3
        conn.note_sent([(4, lambda: "described late"), (5, "plain")])
        assert conn.what(4) == "described late" and conn.what(5) == "plain"
        assert conn.what(6) == "an earlier message"
    finally:
        a.close()
        b.close()


def test_an_op_too_big_to_send_is_refused_before_anything_is_sent(
        pair: tuple[OpenFlowSwitch, FakeBridge]) -> None:
    sw, bridge = pair
    flow = Flow(layout.ROUTING, 200, Match.of(eth_type=0x800), (GroupAction(3),), cookie=1)
    big = Bucket((SetField("eth_src", "02:00:00:00:00:01"), Output(1)))  # 40 bytes
    group = Group(8, (big,) * 1637 + (Bucket((Output(1),)),))  # 65,528 bytes
    with pytest.raises(ConvertError, match=r"add group 0x8 \(1638 buckets\).*does not fit"):
        sw.apply([FlowOp(Command.ADD, flow), GroupOp(Command.ADD, group)])
    bridge.send(ofp.OFPT_ECHO_REQUEST, 5)
    assert bridge.expect(ofp.OFPT_ECHO_REPLY)[0] == 5  # no bundle was opened before it
