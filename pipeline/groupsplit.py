"""Wire sizes of group mods, and splitting a large group into ADD/MODIFY + INSERT_BUCKETS.

An OpenFlow message carries its length in 16 bits, so a GroupMod holds at most 65,535 bytes;
inside a bundle it is wrapped in a BUNDLE_ADD message whose header counts too. A group with
more buckets than fit is sent as its first chunk (ADD or MODIFY, which in OpenFlow 1.3 replaces
all buckets) followed, in the same bundle, by INSERT_BUCKETS ops with the rest. Like Antrea we
also cap a message at 700 buckets, unless the bytes force fewer.

Sizes are computed purely from the descriptions, action by action, as OVS encodes them for
OpenFlow 1.3 (and as the os-ken adaptor must encode them so that dumps match the renderer):

- output 16, group 8, resubmit(,T) NXAST_RESUBMIT_TABLE 16, output:REG NXAST_OUTPUT_REG 24;
- set_field (also tun_dst and whole-register loads): 4 + OXM header 4 + value, padded to 8;
- a partial register load is NXAST_REG_LOAD: 24;
- controller with userdata is NXAST_CONTROLLER2: 16 + max_len property 8 (only when not
  65535) + userdata property 4 + len padded to 8; without userdata it is output:CONTROLLER 16;
- ct is NXAST_CT 24 plus nested actions; nat(src=IP) is NXAST_NAT 16 + address padded to 8.

INSERT_BUCKETS is an OpenFlow 1.5 message (OVS accepts it over 1.5 only): header 24, bucket
header 8 (+8 weight property for select groups). Its actions are counted with the 1.3 sizes,
an upper bound of OVS's 1.5 encoding (masked set_field 16 instead of reg_load 24) and the exact
size when the adaptor keeps the same action classes.
"""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

from pipeline.model import (
    FIELD_KINDS,
    Action,
    Bucket,
    Controller,
    Ct,
    Drop,
    GotoTable,
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

DEFAULT_BUCKET_CAP = 700
"""Buckets per group message, as Antrea sends them."""
OFP_MAX_MESSAGE = 0xFFFF
BUNDLE_ADD_OVERHEAD = 24
"""OpenFlow 1.3 bundles (ONF extension 2301): ofp_header 8 + experimenter 8 + bundle_id 4 +
pad 2 + flags 2 wrap each message; the outer length is 16 bits too. (OpenFlow 1.4+: 16.)"""
MAX_BUNDLED_MESSAGE = OFP_MAX_MESSAGE - BUNDLE_ADD_OVERHEAD
"""Largest group mod that still fits in a bundle: the default limit of ``split_group_op``."""

OF13_GROUP_MOD_HEADER = 16  # ofp_header 8, command 2, type 1, pad 1, group_id 4
OF13_BUCKET_HEADER = 16  # len 2, weight 2, watch_port 4, watch_group 4, pad 4
OF15_GROUP_MOD_HEADER = 24  # + bucket_array_len 2, pad 2, command_bucket_id 4
OF15_BUCKET_HEADER = 8  # len 2, action_array_len 2, bucket_id 4
OF15_WEIGHT_PROPERTY = 8  # sent for select groups only

_OXM_VALUE_BYTES = MappingProxyType({"32": 4, "16": 2, "8": 1, "64": 8, "ip": 4, "mac": 6})


def _pad8(n: int) -> int:
    return (n + 7) // 8 * 8


def _set_field_size(name: str) -> int:
    # OFPAT_SET_FIELD: type 2 + len 2, then the OXM (4-byte header for the OpenFlow and
    # Nicira classes we use), padded to 8.
    return _pad8(4 + 4 + _OXM_VALUE_BYTES[FIELD_KINDS[name]])


def action_size(action: Action) -> int:
    """Bytes of one action in an OpenFlow 1.3 message (OVS's encoding; see module doc)."""
    match action:
        case Output():
            return 16
        case GroupAction():
            return 8
        case OutputReg():
            return 24
        case Resubmit():
            return 16
        case SetField(name=name):
            return _set_field_size(name)
        case SetTunnelDst():
            return _set_field_size("tun_ipv4_dst")
        case LoadReg(field=f):
            return _set_field_size(f.oxm) if f.width == 32 else 24
        case Controller(userdata=data, max_len=max_len):
            if not data:
                return 16
            return 16 + (0 if max_len == 0xFFFF else 8) + _pad8(4 + len(data))
        case Ct(nat_src=nat_src):
            return 24 + (0 if nat_src is None else 16 + 8)
        case Drop():
            return 0
        case GotoTable():
            raise ValueError("goto_table is an instruction, not a bucket action")
    raise TypeError(f"unknown action {action!r}")


def bucket_size(bucket: Bucket) -> int:
    """Bytes of one bucket in an OpenFlow 1.3 group mod."""
    return OF13_BUCKET_HEADER + sum(action_size(a) for a in bucket.actions)


def _insert_bucket_size(bucket: Bucket, gtype: GroupType) -> int:
    weight = OF15_WEIGHT_PROPERTY if gtype is GroupType.SELECT else 0
    return OF15_BUCKET_HEADER + weight + sum(action_size(a) for a in bucket.actions)


def group_mod_size(group: Group) -> int:
    """Length of the OpenFlow 1.3 ADD/MODIFY message for ``group``."""
    return OF13_GROUP_MOD_HEADER + sum(bucket_size(b) for b in group.buckets)


def insert_buckets_size(group: Group) -> int:
    """Length of the OpenFlow 1.5 INSERT_BUCKET message appending ``group.buckets``."""
    return OF15_GROUP_MOD_HEADER + sum(_insert_bucket_size(b, group.type) for b in group.buckets)


def op_size(op: GroupOp) -> int:
    """Length of the message ``op`` becomes (DELETE: a bare 1.3 group mod)."""
    if op.command is Command.INSERT_BUCKETS:
        return insert_buckets_size(op.group)
    if op.command is Command.DELETE:
        return OF13_GROUP_MOD_HEADER
    return group_mod_size(op.group)


def _chunk(sizes: list[int], start: int, header: int, max_bytes: int, cap: int) -> int:
    """End index of the longest run of buckets from ``start`` that fits one message."""
    total, end = header, start
    while end < len(sizes) and end - start < cap and total + sizes[end] <= max_bytes:
        total += sizes[end]
        end += 1
    if end == start:
        raise ValueError(
            f"bucket {start} alone ({sizes[start]} bytes) does not fit a {max_bytes}-byte message"
        )
    return end


def split_group_op(op: GroupOp, max_bytes: int = MAX_BUNDLED_MESSAGE,
                   cap: int = DEFAULT_BUCKET_CAP) -> list[GroupOp]:
    """``op`` as a list of messages that each fit ``max_bytes`` and hold ≤ ``cap`` buckets.

    ADD/MODIFY becomes ADD/MODIFY of the first chunk plus INSERT_BUCKETS of the rest (in bucket
    order, so the group ends with exactly the original buckets); an oversized INSERT_BUCKETS
    becomes several; DELETE is returned as is. All pieces belong in the same bundle.
    """
    if cap < 1:
        raise ValueError(f"bucket cap {cap} must be at least 1")
    if op.command is Command.DELETE or not op.group.buckets:
        return [op]
    buckets = op.group.buckets
    gtype = op.group.type
    out: list[GroupOp] = []
    start = 0
    if op.command in (Command.ADD, Command.MODIFY):
        sizes = [bucket_size(b) for b in buckets]
        start = _chunk(sizes, 0, OF13_GROUP_MOD_HEADER, max_bytes, cap)
        out.append(GroupOp(op.command, replace(op.group, buckets=buckets[:start])))
    elif op.command is not Command.INSERT_BUCKETS:
        raise ValueError(f"cannot split a group {op.command}")
    sizes = [_insert_bucket_size(b, gtype) for b in buckets]
    while start < len(buckets):
        end = _chunk(sizes, start, OF15_GROUP_MOD_HEADER, max_bytes, cap)
        out.append(GroupOp(Command.INSERT_BUCKETS, replace(op.group, buckets=buckets[start:end])))
        start = end
    return out
