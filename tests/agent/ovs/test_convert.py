"""agent.ofconvert: every match field and action kind, description -> wire bytes -> description.

The round trip goes through real serialization and os-ken's parser (and our raw bucket parser),
so it checks what the switch will see. Where ``ovs-ofctl`` is installed, OVS's own decoder must
also accept every message we encode (``ovs-ofctl ofp-print``); no switch is needed.
"""

from __future__ import annotations

import shutil
import struct
import subprocess

import policy_samples
import pytest
from os_ken.ofproto import nicira_ext, ofproto_parser, ofproto_protocol
from os_ken.ofproto import ofproto_v1_5 as ofp
from os_ken.ofproto import ofproto_v1_5_parser as ofpp

from agent.flowsync.switch import CookieDelete, describe
from agent.ovs import convert as ofconvert
from agent.ovs.buckets import MAX_GROUP_BUCKETS, BucketIdError, next_bucket_id
from agent.ovs.convert import OF_VERSION, Converter, ConvertError, error_text
from pipeline import layout, oversize, policy
from pipeline import multicast as mc
from pipeline.model import (
    OFPP_CONTROLLER,
    OFPP_TABLE,
    Bucket,
    CheckPktLarger,
    Conjunction,
    Controller,
    Ct,
    Drop,
    Flow,
    GotoTable,
    Group,
    GroupAction,
    GroupType,
    LoadReg,
    Match,
    Meter,
    Output,
    OutputReg,
    Resubmit,
    SetField,
    SetTunnelDst,
)
from pipeline.ops import Command, FlowOp, GroupOp, MeterOp
from pipeline.registers import (
    IN_CLASS,
    OUT_KIND,
    OUT_PORT,
    OVERSIZE,
    OutKind,
    PortClass,
    RegField,
)

P = layout.multicast_pipeline()
CONV = Converter(P)
DP = ofproto_protocol.ProtocolDesc(OF_VERSION)
OFCTL = shutil.which("ovs-ofctl")


def _wire(msg) -> bytes:
    msg.xid = 7
    msg.serialize()
    return bytes(msg.buf)


def _parse(raw: bytes):
    version, msg_type, length, xid = struct.unpack_from("!BBHI", raw)
    assert length == len(raw)
    return ofproto_parser.msg(DP, version, msg_type, length, xid, raw)


def _ovs_decodes(raw: bytes) -> str:
    """ovs-ofctl's decoding of a message; fails the test if OVS would refuse it."""
    if OFCTL is None:
        return ""
    out = subprocess.run([OFCTL, "ofp-print", raw.hex()], capture_output=True, text=True,
                         check=True).stdout
    assert "decode error" not in out, out
    return out


def _round_trip_flow(flow: Flow, command: Command = Command.ADD) -> Flow:
    raw = _wire(CONV.flow_mod(DP, FlowOp(command, flow)))
    _ovs_decodes(raw)
    return CONV.flow_from_ofp(_parse(raw))


ACTIONS = [
    (Output(3),),
    (Output(OFPP_CONTROLLER),),
    (OutputReg(OUT_PORT),),
    (GroupAction(9),),
    (Controller(b"\x01"),),
    (Controller(b"\x02\x03\x04\x05\x06", max_len=128),),
    (SetField("eth_src", "02:77:00:00:00:01"),),
    (SetField("ipv4_dst", "239.1.2.3"),),
    (LoadReg(IN_CLASS, PortClass.TUNNEL),),
    (LoadReg(OUT_PORT, 17),),
    (SetTunnelDst("192.168.77.2"),),
    (LoadReg(OUT_KIND, OutKind.LOCAL), Resubmit(layout.INGRESS_RULE)),
    (Ct(zone=65520, commit=True, nat_src="192.168.77.1"),),
    (Ct(zone=5, commit=False),),
    (Drop(),),
    (GotoTable(layout.EGRESS_RULE),),
    (LoadReg(IN_CLASS, PortClass.POD), LoadReg(OUT_KIND, OutKind.LOCAL),
     GotoTable(layout.EGRESS_RULE)),
    (LoadReg(IN_CLASS, PortClass.POD), oversize.check(1464), GotoTable(layout.EGRESS_RULE)),
    (CheckPktLarger(0xFFFF, RegField("reg7[31..31]", 7, 31, 31)),),  # as a synthesized field
    (Conjunction(7, 1, 2),),
    (Conjunction(0xFFFFFFFF, 64, 64), Conjunction(0, 1, 3)),
]


@pytest.mark.parametrize("actions", ACTIONS, ids=lambda a: "+".join(type(x).__name__ for x in a))
def test_flow_actions_round_trip(actions: tuple) -> None:
    flow = Flow(layout.CLASSIFIER, 200, Match.of(in_port=1, eth_type=0x800), actions,
                cookie=0x0003_01_0000000001)
    assert _round_trip_flow(flow) == flow


MATCHES = [
    Match(),
    Match.of(in_port=7, eth_type=0x800, ip_proto=2),
    Match.of(eth_src="02:00:00:00:00:0a", eth_dst="01:00:5e:01:01:01"),
    Match.of(eth_type=0x800, ipv4_src="10.77.1.2", ipv4_dst="224.0.0.0/4"),
    Match.of(eth_type=0x800, ip_proto=17, ipv4_dst="239.1.1.1", udp_dst=5000),
    Match.of(tunnel_id=5001, tun_ipv4_src="192.168.77.2", tun_ipv4_dst="192.168.77.1"),
    Match.of((IN_CLASS, PortClass.POD), (OUT_KIND, OutKind.REMOTE), eth_type=0x800),
    Match.of((OUT_PORT, 3)),
    Match.of(reg7=0xFFFFFFFF),
    Match.of(conj_id=7, eth_type=0x800),
    Match.of((OVERSIZE, 0), conj_id=0xFFFFFFFF, eth_type=0x800),
]


@pytest.mark.parametrize("match", MATCHES, ids=lambda m: ",".join(sorted(m.names())) or "any")
def test_matches_round_trip(match: Match) -> None:
    flow = Flow(layout.ROUTING, 100, match, (Drop(),))
    assert _round_trip_flow(flow) == flow


def test_builder_flows_round_trip() -> None:
    for mode in mc.Mode:
        cfg = mc.BridgeConfig(mode, 3, "192.168.77.1", "02:77:00:00:00:01",
                              tunnel_port=100 if mode is mc.Mode.ENCAP else None, uplink_port=200,
                              max_pod_frame=1464, max_received_frame=1514)
        flows = [*mc.initial_flows(cfg), *mc.pod_flows(cfg, 4), mc.route_flow(cfg, "239.1.1.1", 5),
                 *mc.node_flows(cfg, "192.168.77.2"), mc.default_external_flow(cfg)]
        flows += policy.policy_flows(cfg, policy_samples.sample_rules())
        for flow in flows:
            assert _round_trip_flow(flow) == flow


def test_conjunction_bytes_are_what_ovs_encodes() -> None:
    """os-ken's clause is the wire's, 0-based: OVS reads K-1 as clause K and writes it back
    to the very same bytes (ovs-ofctl parse-actions prints no difference lines)."""
    assert OFCTL is not None, "ovs-ofctl is not installed (tools/install.sh installs it)"
    for action, text in ((Conjunction(7, 1, 2), "conjunction(7,1/2)"),
                         (Conjunction(0xFFFFFFFF, 64, 64), "conjunction(4294967295,64/64)")):
        buf = bytearray()
        CONV.action_to_ofp(action).serialize(buf, 0)
        assert len(buf) == 16 and buf[10] == action.clause - 1
        out = subprocess.run([OFCTL, "parse-actions", "OpenFlow15"], input=buf.hex(),
                             capture_output=True, text=True, check=True).stdout
        assert out.strip() == f"actions={text}", out


def test_check_pkt_larger_bytes_are_what_ovs_encodes() -> None:
    """OVS decodes our check_pkt_larger and encodes it back to the very same bytes: ovs-ofctl
    parse-actions prints the action, then any byte that differs from its own encoding."""
    assert OFCTL is not None, "ovs-ofctl is not installed (tools/install.sh installs it)"
    for action, text in ((oversize.check(1464), "check_pkt_larger(1464)->NXM_NX_REG0[8]"),
                         (CheckPktLarger(9000, RegField("r3", 3, 17, 17)),
                          "check_pkt_larger(9000)->NXM_NX_REG3[17]")):
        buf = bytearray()
        CONV.action_to_ofp(action).serialize(buf, 0)
        assert len(buf) == 24
        out = subprocess.run([OFCTL, "parse-actions", "OpenFlow15"], input=buf.hex(),
                             capture_output=True, text=True, check=True).stdout
        assert out.strip() == f"actions={text}", out  # no difference lines follow


def test_modify_and_delete_are_strict() -> None:
    flow = Flow(layout.CLASSIFIER, 200, Match.of(in_port=1), (Output(2),), cookie=5)
    mod = _parse(_wire(CONV.flow_mod(DP, FlowOp(Command.MODIFY, flow))))
    assert mod.command == ofp.OFPFC_MODIFY_STRICT
    delete = _parse(_wire(CONV.flow_mod(DP, FlowOp(Command.DELETE, flow))))
    assert (delete.command, delete.priority, delete.instructions) == (
        ofp.OFPFC_DELETE_STRICT, 200, [])
    assert CONV.match_from_ofp(delete.match) == flow.match


def test_delete_by_cookie() -> None:
    raw = _wire(ofconvert.encode(CONV, DP, CookieDelete(0x3 << 48, 0xFFFF << 48), {}))
    msg = _parse(raw)
    assert (msg.command, msg.table_id, msg.cookie, msg.cookie_mask) == (
        ofp.OFPFC_DELETE, ofp.OFPTT_ALL, 0x3 << 48, 0xFFFF << 48)
    assert "DEL" in _ovs_decodes(raw) or OFCTL is None


def _group_round_trip(op: GroupOp, first: int) -> tuple[object, list[tuple[int, Bucket]]]:
    raw = _wire(CONV.group_mod(DP, op, first))
    text = _ovs_decodes(raw)
    header = struct.Struct("!HBxIHxxI")  # command, type, group_id, bucket_array_len, bucket id
    cmd, gtype, gid, blen, cmd_bucket = header.unpack_from(raw, 8)
    buckets = CONV.buckets_from_raw(raw, 8 + header.size, 8 + header.size + blen)
    return (cmd, gtype, gid, cmd_bucket, text), buckets


def test_group_round_trip_with_bucket_ids() -> None:
    cfg = mc.BridgeConfig(mc.Mode.ENCAP, 1, "192.168.77.1", "02:77:00:00:00:01", 100, 200)
    group = mc.multicast_group(cfg, 5, [1, 2], ["192.168.77.2", "192.168.77.3"])
    (cmd, gtype, gid, cmd_bucket, _), buckets = _group_round_trip(GroupOp(Command.ADD, group), 0)
    assert (cmd, gtype, gid, cmd_bucket) == (ofp.OFPGC_ADD, ofp.OFPGT_ALL, 5, ofp.OFPG_BUCKET_ALL)
    assert [i for i, _ in buckets] == [0, 1, 2, 3, 4]
    assert tuple(b for _, b in buckets) == group.buckets

    more = Group(5, (mc.remote_bucket("192.168.77.4"),))
    (cmd, _, _, cmd_bucket, text), buckets = _group_round_trip(
        GroupOp(Command.INSERT_BUCKETS, more), 5)
    assert (cmd, cmd_bucket) == (ofp.OFPGC_INSERT_BUCKET, ofp.OFPG_BUCKET_LAST)
    assert buckets == [(5, more.buckets[0])]
    if OFCTL:
        assert "INSERT_BUCKET command_bucket_id:last" in text and "bucket_id:5" in text


def test_query_group_and_delete() -> None:
    group = mc.query_group([1, 2, 3])
    _, buckets = _group_round_trip(GroupOp(Command.MODIFY, group), 0)
    assert tuple(b for _, b in buckets) == group.buckets
    (cmd, _, gid, _, _), buckets = _group_round_trip(GroupOp(Command.DELETE, group), 0)
    assert (cmd, gid, buckets) == (ofp.OFPGC_DELETE, mc.QUERY_GROUP_ID, [])


def test_group_desc_reply_parse() -> None:
    g1 = Group(3, (Bucket((Output(1),)), Bucket((Output(2),))))
    g2 = Group(4, (Bucket((GroupAction(3),)),), GroupType.INDIRECT)
    body = b""
    for g in (g1, g2):
        buckets = b"".join(_bucket_bytes(i, b) for i, b in enumerate(g.buckets))
        gtype = ofp.OFPGT_ALL if g.type is GroupType.ALL else ofp.OFPGT_INDIRECT
        body += struct.pack("!HBxIH6x", 16 + len(buckets), gtype, g.group_id,
                            len(buckets)) + buckets
    raw = struct.pack("!BBHIHH4x", OF_VERSION, ofp.OFPT_MULTIPART_REPLY, 16 + len(body), 1,
                      ofp.OFPMP_GROUP_DESC, 0) + body
    assert CONV.group_desc_from_raw(raw) == [g1, g2]


def _bucket_bytes(bucket_id: int, bucket: Bucket) -> bytes:
    buf = bytearray()
    for a in CONV.actions_to_ofp(bucket.actions):
        off = len(buf)
        a.serialize(buf, off)
    return struct.pack("!HHI", 8 + len(buf), len(buf), bucket_id) + bytes(buf)


def test_bucket_ids_bookkeeping() -> None:
    ids: dict[int, int] = {}
    g = Group(7, tuple(Bucket((Output(i),)) for i in range(1, 4)))
    assert next_bucket_id(GroupOp(Command.ADD, g), ids) == 0
    assert next_bucket_id(GroupOp(Command.INSERT_BUCKETS, g), ids) == 3
    assert ids == {7: 6}
    assert next_bucket_id(GroupOp(Command.MODIFY, g), ids) == 0 and ids == {7: 3}
    next_bucket_id(GroupOp(Command.DELETE, g), ids)
    with pytest.raises(BucketIdError, match="not known"):
        next_bucket_id(GroupOp(Command.INSERT_BUCKETS, g), ids)
    big = Group(8, tuple(Bucket((Output(1),)) for _ in range(MAX_GROUP_BUCKETS + 1)))
    with pytest.raises(BucketIdError, match="at most"):
        next_bucket_id(GroupOp(Command.ADD, big), ids)


def test_meter_round_trip() -> None:
    meter = Meter(3, rate_pps=100, burst=20)
    raw = _wire(CONV.meter_mod(DP, MeterOp(Command.ADD, meter)))
    _ovs_decodes(raw)
    msg = _parse(raw)
    assert CONV.meter_from_ofp(msg) == meter


def test_packet_out() -> None:
    frame = bytes(range(60))
    raw = _wire(CONV.packet_out(DP, frame, (Output(OFPP_TABLE),), OFPP_CONTROLLER))
    text = _ovs_decodes(raw)
    if OFCTL:
        assert "in_port=CONTROLLER" in text and "actions=TABLE" in text
    assert raw.endswith(frame)


def test_packet_in2_parse() -> None:
    meta = bytearray()
    off = ofp.oxm_serialize(*ofp.oxm_from_user("in_port", 4), meta, 0)
    ofp.oxm_serialize(*ofp.oxm_from_user("tun_ipv4_src", "192.168.77.2"), meta, off)
    props = [
        ofpp.NXTPacketIn2PropPacket(data=b"\x01\x00\x5e" + bytes(57)),
        ofpp.NXTPacketIn2PropTableId(data=struct.pack("!B", 0) + bytes(3)),
        ofpp.NXTPacketIn2PropCookie(data=bytes(4) + struct.pack("!Q", 0x2_02_0000000004)),
        ofpp.NXTPacketIn2PropReason(data=struct.pack("!B", 1) + bytes(3)),
        ofpp.NXTPacketIn2PropMetadata(data=bytes(meta)),
        ofpp.NXTPacketIn2PropUserData(data=b"\x01"),
    ]
    for p in props:
        p.type = p._PROP_TYPE
    msg = ofpp.NXTPacketIn2(DP, props)
    pin = ofconvert.packet_in_from(_parse(_wire(msg)))
    assert (pin.in_port, pin.userdata, pin.tun_src, pin.cookie, pin.reason) == (
        4, b"\x01", "192.168.77.2", 0x2_02_0000000004, 1)
    assert pin.data[:3] == b"\x01\x00\x5e" and len(pin.data) == 60


def test_unsupported_switch_content_is_named() -> None:
    with pytest.raises(ConvertError, match="NXActionDecTtl"):
        CONV.action_from_ofp(ofpp.NXActionDecTtl())
    with pytest.raises(ConvertError, match="non-contiguous"):
        CONV.action_from_ofp(ofpp.OFPActionSetField(reg0=(5, 5)))
    with pytest.raises(ConvertError, match="vlan_vid"):
        CONV.match_from_ofp(ofpp.OFPMatch(vlan_vid=3))
    # An unknown register slice still round-trips as a synthesized field.
    load = CONV.action_from_ofp(ofpp.OFPActionSetField(reg5=(0x300, 0xF00)))
    assert isinstance(load, LoadReg) and (load.field.reg, load.field.start, load.value) == (5, 8, 3)


def test_xreg_matches_and_loads_split_into_registers() -> None:
    # OVS reports registers over OpenFlow 1.5 as 64-bit xregN = reg(2N) << 32 | reg(2N+1).
    m = ofpp.OFPMatch(eth_type=0x800, xreg0=((0x21 << 32) | 5, (0xFF << 32) | 0xFFFFFFFF))
    assert CONV.match_from_ofp(m) == Match.of(
        (IN_CLASS, PortClass.POD), (OUT_KIND, OutKind.REMOTE), (OUT_PORT, 5), eth_type=0x800)
    load = CONV.action_from_ofp(ofpp.OFPActionSetField(xreg0=(0x20 << 32, 0xF0 << 32)))
    assert load == LoadReg(OUT_KIND, OutKind.REMOTE)
    with pytest.raises(ConvertError, match="spans two registers"):
        CONV.action_from_ofp(ofpp.OFPActionSetField(xreg0=(1 << 32 | 1, 1 << 32 | 1)))


def test_error_text_and_describe() -> None:
    assert error_text(2, 9) == "OFPET_BAD_ACTION/OFPBAC_BAD_OUT_GROUP"
    assert error_text(99, 1) == "error type 99 code 1"
    flow = Flow(layout.ROUTING, 200, Match.of(eth_type=0x800, ipv4_dst="239.1.1.1"),
                (GroupAction(5),), cookie=0x10)
    text = describe(FlowOp(Command.ADD, flow), P)
    assert text.startswith("add flow ") and "group:5" in text and "239.1.1.1" in text
    assert describe(GroupOp(Command.INSERT_BUCKETS, Group(5, ()))) == (
        "insert_buckets group 0x5 (0 buckets)")
    assert describe(CookieDelete(1, 3)) == "delete flows cookie=0x1/0x3"


def test_nx_constants_still_match() -> None:
    # os-ken spells these; OVS's values must not drift under us.
    assert nicira_ext.NX_CT_F_COMMIT == 1 and ofp.OFPG_BUCKET_LAST == 0xFFFFFFFE
