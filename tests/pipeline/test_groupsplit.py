"""pipeline.groupsplit: byte sizes against os-ken's real encoding, and splitting.

Tests may import os_ken (pipeline/ may not): each size is compared with the length of the
message os-ken serialises for the equivalent actions, encoded the way OVS itself encodes them
for OpenFlow 1.3 (whole-register load as set_field, partial as NXAST_REG_LOAD).
"""

from __future__ import annotations

import pytest
from os_ken.ofproto import ofproto_protocol
from os_ken.ofproto import ofproto_v1_3 as of13
from os_ken.ofproto import ofproto_v1_3_parser as p13
from os_ken.ofproto import ofproto_v1_5 as of15
from os_ken.ofproto import ofproto_v1_5_parser as p15

from pipeline import layout
from pipeline import multicast as mc
from pipeline.groupsplit import (
    DEFAULT_BUCKET_CAP,
    MAX_BUNDLED_MESSAGE,
    action_size,
    bucket_size,
    group_mod_size,
    insert_buckets_size,
    op_size,
    split_group_op,
)
from pipeline.model import (
    Bucket,
    Controller,
    Ct,
    Drop,
    Group,
    GroupAction,
    GroupType,
    LoadReg,
    Output,
    OutputReg,
    Resubmit,
    SetField,
    SetTunnelDst,
)
from pipeline.ops import Command, GroupOp
from pipeline.registers import OUT_KIND, OUT_PORT, OutKind

P = layout.multicast_pipeline()
DP13 = ofproto_protocol.ProtocolDesc(version=of13.OFP_VERSION)
DP15 = ofproto_protocol.ProtocolDesc(version=of15.OFP_VERSION)


def osken_action(a: object, parser=p13) -> object:  # noqa: ANN001 - os-ken has no types
    """The os-ken action the adaptor sends for one of ours (OVS's own 1.3 encoding)."""
    match a:
        case Output(port=port):
            return parser.OFPActionOutput(port, max_len=0xFFFF)
        case GroupAction(group_id=gid):
            return parser.OFPActionGroup(gid)
        case OutputReg(field=f):
            return parser.NXActionOutputReg(ofs_nbits=(f.start << 6) | (f.width - 1),
                                            src=f.oxm, max_len=0)
        case Resubmit(table=t):
            return parser.NXActionResubmitTable(in_port=0xFFF8, table_id=P.table_id(t))
        case SetTunnelDst(ip=ip):
            return parser.OFPActionSetField(tun_ipv4_dst=ip)
        case SetField(name=name, value=value):
            return parser.OFPActionSetField(**{name: value})
        case LoadReg(field=f, value=v) if f.width == 32:
            return parser.OFPActionSetField(**{f.oxm: v})
        case LoadReg(field=f, value=v):
            return parser.NXActionRegLoad(ofs_nbits=(f.start << 6) | (f.width - 1), dst=f.oxm,
                                          value=v)
        case Controller(userdata=data, max_len=max_len):
            # OVS sends the max_len property only when it is not 65535.
            extra = {} if max_len == 0xFFFF else {"max_len": max_len}
            return parser.NXActionController2(userdata=data, **extra)
        case Ct(zone=zone, commit=commit, nat_src=nat_src):
            nat = [] if nat_src is None else [parser.NXActionNAT(
                flags=1, range_ipv4_min=nat_src, range_ipv4_max=nat_src)]
            return parser.NXActionCT(flags=int(commit), zone_src=None, zone_ofs_nbits=zone,
                                     recirc_table=255, alg=0, actions=nat)
    raise AssertionError(a)


def osken_group_mod(group: Group) -> bytes:
    buckets = [p13.OFPBucket(actions=[osken_action(a) for a in b.actions if a != Drop()])
               for b in group.buckets]
    msg = p13.OFPGroupMod(DP13, of13.OFPGC_ADD, of13.OFPGT_ALL, group.group_id, buckets)
    msg.serialize()
    return bytes(msg.buf)


def osken_insert(group: Group, first_id: int) -> bytes:
    buckets = [p15.OFPBucket(bucket_id=first_id + i, properties=[],
                             actions=[osken_action(a, p15) for a in b.actions])
               for i, b in enumerate(group.buckets)]
    msg = p15.OFPGroupMod(DP15, of15.OFPGC_INSERT_BUCKET, of15.OFPGT_ALL, group.group_id,
                          command_bucket_id=of15.OFPG_BUCKET_LAST, buckets=buckets)
    msg.serialize()
    return bytes(msg.buf)


CFG = mc.BridgeConfig(mc.Mode.ENCAP, 1, "192.168.77.1", "02:77:00:00:00:01", 100, 200)

ACTIONS = [
    Output(3), GroupAction(5), OutputReg(OUT_PORT), Resubmit(layout.OUTPUT),
    SetTunnelDst("10.0.0.1"), SetField("eth_src", "02:00:00:00:00:01"),
    SetField("ipv4_src", "10.0.0.1"), SetField("tunnel_id", 5), SetField("udp_dst", 53),
    LoadReg(OUT_PORT, 3), LoadReg(OUT_KIND, OutKind.REMOTE), Controller(b"\x01"),
    Controller(b"\x01\x02\x03\x04\x05", max_len=128), Ct(65520, True, "192.168.77.1"),
    Ct(7, True),
]  # fmt: skip


@pytest.mark.parametrize("action", ACTIONS, ids=lambda a: type(a).__name__)
def test_action_size_matches_osken(action: object) -> None:
    group = Group(1, (Bucket((action,)),))  # type: ignore[arg-type]
    assert group_mod_size(group) == len(osken_group_mod(group))


def test_action_sizes() -> None:
    assert [action_size(a) for a in (Output(1), GroupAction(1), Drop())] == [16, 8, 0]
    assert bucket_size(mc.remote_bucket("10.0.0.1")) == 16 + 24 + 16 + 16


@pytest.mark.parametrize("bucket", [mc.remote_bucket("10.1.2.3"), mc.local_bucket(7),
                                    mc.external_bucket()], ids=["remote", "local", "external"])
def test_700_buckets_match_osken_and_fit(bucket: Bucket) -> None:
    group = Group(9, (bucket,) * DEFAULT_BUCKET_CAP)
    real = len(osken_group_mod(group))
    assert group_mod_size(group) == real
    assert real < MAX_BUNDLED_MESSAGE < 65535


def test_insert_size_matches_osken_of15() -> None:
    group = Group(9, tuple(mc.remote_bucket(f"10.0.{i // 250}.{i % 250 + 1}") for i in range(700)))
    assert insert_buckets_size(group) == len(osken_insert(group, 700))
    assert op_size(GroupOp(Command.INSERT_BUCKETS, group)) == insert_buckets_size(group)
    assert op_size(GroupOp(Command.DELETE, group)) == 16


def _remote_group(n: int) -> Group:
    return Group(9, tuple(mc.remote_bucket(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
                          for i in range(1, n + 1)))


@pytest.mark.parametrize("command", [Command.ADD, Command.MODIFY])
def test_5000_buckets_split_into_fitting_pieces(command: Command) -> None:
    group = _remote_group(5000)
    pieces = split_group_op(GroupOp(command, group))
    assert pieces[0].command is command
    assert all(p.command is Command.INSERT_BUCKETS for p in pieces[1:])
    assert [len(p.group.buckets) for p in pieces] == [700] * 7 + [100]
    assert sum((p.group.buckets for p in pieces), ()) == group.buckets  # all, once, in order
    assert len(osken_group_mod(pieces[0].group)) == op_size(pieces[0]) <= MAX_BUNDLED_MESSAGE
    for i, piece in enumerate(pieces[1:], start=1):
        real = len(osken_insert(piece.group, 700 * i))
        assert real == op_size(piece) <= MAX_BUNDLED_MESSAGE


def test_bytes_force_fewer_buckets_than_the_cap() -> None:
    big = Bucket((Ct(1, True, "10.0.0.1"), Controller(b"\x01" * 200), Output(1)))
    group = Group(3, (big,) * 1000)
    pieces = split_group_op(GroupOp(Command.ADD, group), max_bytes=65535)
    assert len(pieces[0].group.buckets) < DEFAULT_BUCKET_CAP
    assert all(op_size(p) <= 65535 for p in pieces)
    assert len(osken_group_mod(pieces[0].group)) == op_size(pieces[0])
    assert sum(len(p.group.buckets) for p in pieces) == 1000


def test_small_cap_and_untouched_ops() -> None:
    group = _remote_group(5)
    assert [len(p.group.buckets) for p in split_group_op(GroupOp(Command.ADD, group),
                                                         cap=2)] == [2, 2, 1]
    ins = split_group_op(GroupOp(Command.INSERT_BUCKETS, group), cap=3)
    assert [(p.command, len(p.group.buckets)) for p in ins] == [
        (Command.INSERT_BUCKETS, 3), (Command.INSERT_BUCKETS, 2)]
    for op in (GroupOp(Command.DELETE, group), GroupOp(Command.ADD, Group(4, ())),
               GroupOp(Command.ADD, group)):
        assert split_group_op(op) == [op]


def test_select_group_pieces_keep_their_type() -> None:
    group = Group(3, _remote_group(3).buckets, GroupType.SELECT)
    pieces = split_group_op(GroupOp(Command.ADD, group), cap=1)
    assert {p.group.type for p in pieces} == {GroupType.SELECT}
    assert op_size(pieces[1]) == 24 + 8 + 8 + 56  # 1.5 header, bucket, weight, actions


def test_a_bucket_that_cannot_fit_is_an_error() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        split_group_op(GroupOp(Command.ADD, _remote_group(2)), max_bytes=60)
    with pytest.raises(ValueError):
        split_group_op(GroupOp(Command.ADD, _remote_group(2)), cap=0)
