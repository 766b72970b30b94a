"""Wire sizes of group mods, and splitting a large group into ADD/MODIFY + INSERT_BUCKETS.

An OpenFlow message carries its length in 16 bits, so a GroupMod holds at most 65,535 bytes;
inside a bundle it is wrapped in a BUNDLE_ADD message whose header counts too. A group with
more buckets than fit is sent as its first chunk (ADD or MODIFY, which replaces all buckets)
followed, in the same bundle, by INSERT_BUCKETS ops with the rest. Like Antrea we also cap a
message at 700 buckets, unless the bytes force fewer.

Sizes are computed purely from the descriptions, for what the agent actually sends: OpenFlow 1.5
group mods (INSERT_BUCKET exists only there; see agent/ovs/convert.py), every command with the
same layout: header 24, then per bucket a header of 8 and its actions, no bucket properties
(the adaptor sends no weight, and OVS gives select buckets weight 1). Actions as the os-ken
adaptor encodes them (tests/agent/ovs/test_groupmod_size.py checks every size against it):

- output 16, group 8, resubmit(,T) NXAST_RESUBMIT_TABLE 16, output:REG NXAST_OUTPUT_REG 24;
- set_field (also tun_dst and register loads, whole or masked: OVS refuses NXAST_REG_LOAD2 in
  1.5): 4 + OXM header 4 + value (+ mask), padded to 8 -- 16 for every field we set;
- controller is NXAST_CONTROLLER2: 16 + max_len property 8 (only when not 65535) + userdata
  property 4 + len padded to 8;
- ct is NXAST_CT 24 plus nested actions; nat(src=IP) is NXAST_NAT 16 + address padded to 8.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType

from pipeline.model import (
    FIELD_KINDS,
    Action,
    ApplyMeter,
    Bucket,
    CheckPktLarger,
    Controller,
    Ct,
    Drop,
    GotoTable,
    Group,
    GroupAction,
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
BUNDLE_ADD_OVERHEAD = 16
"""OpenFlow 1.5 OFPT_BUNDLE_ADD_MESSAGE wraps each message in ofp_header 8 + bundle_id 4 +
pad 2 + flags 2 (no properties); its own length is 16 bits too."""
MAX_BUNDLED_MESSAGE = OFP_MAX_MESSAGE - BUNDLE_ADD_OVERHEAD
"""Largest group mod that still fits in a bundle: the default limit of ``split_group_op``."""

GROUP_MOD_HEADER = 24
"""ofp_group_mod: ofp_header 8, command 2, type 1, pad 1, group_id 4, bucket_array_len 2, pad 2,
command_bucket_id 4 (the same for every command; DELETE is just this)."""
BUCKET_HEADER = 8
"""ofp_bucket: len 2, action_array_len 2, bucket_id 4; the adaptor adds no properties."""

_OXM_VALUE_BYTES = MappingProxyType({"32": 4, "16": 2, "8": 1, "64": 8, "ip": 4, "mac": 6})


def _pad8(n: int) -> int:
    return (n + 7) // 8 * 8


def _set_field_size(name: str, masked: bool = False) -> int:
    # OFPAT_SET_FIELD: type 2 + len 2, then the OXM (4-byte header for the OpenFlow and
    # Nicira classes we use) with its value and, when masked, as many mask bytes; padded to 8.
    value = _OXM_VALUE_BYTES[FIELD_KINDS[name]]
    return _pad8(4 + 4 + value * (2 if masked else 1))


_FIXED_SIZES: Mapping[type, int] = MappingProxyType({
    Output: 16, GroupAction: 8, OutputReg: 24, CheckPktLarger: 24, Resubmit: 16,
    SetTunnelDst: _set_field_size("tun_ipv4_dst"), Drop: 0, ApplyMeter: 8,
    LoadReg: _set_field_size("reg0"),  # registers are 4 bytes: 16 with a mask or without
})
"""Kinds whose size does not depend on their values (one lookup: the differ sizes every bucket
of every group it adds or modifies)."""


def action_size(action: Action) -> int:
    """Bytes of one action in an OpenFlow 1.5 message, as the adaptor encodes it."""
    fixed = _FIXED_SIZES.get(type(action))
    if fixed is not None:
        return fixed
    match action:
        case SetField(name=name):
            return _set_field_size(name)
        case Controller(userdata=data, max_len=max_len):
            return 16 + (0 if max_len == 0xFFFF else 8) + _pad8(4 + len(data))
        case Ct(nat_src=nat_src):
            return 24 + (0 if nat_src is None else 16 + 8)
        case GotoTable():
            raise ValueError("goto_table is an instruction, not a bucket action")
    raise TypeError(f"unknown action {action!r}")


_SIZE_ATTR = "_wire_size"


def bucket_size(bucket: Bucket) -> int:
    """Bytes of one bucket in an OpenFlow 1.5 group mod; worked out once per bucket object
    and kept on it (buckets are immutable, and the builders hand every group of a node the
    same object for the same member: the differ sizes each group it adds or modifies)."""
    size: int | None = bucket.__dict__.get(_SIZE_ATTR)
    if size is None:
        size = BUCKET_HEADER + sum(action_size(a) for a in bucket.actions)
        object.__setattr__(bucket, _SIZE_ATTR, size)  # not a field: eq and hash ignore it
    return size


def group_mod_size(group: Group) -> int:
    """Length of the group mod (ADD, MODIFY or INSERT_BUCKETS) carrying ``group.buckets``."""
    return GROUP_MOD_HEADER + sum(bucket_size(b) for b in group.buckets)


def op_size(op: GroupOp) -> int:
    """Length of the message ``op`` becomes (DELETE: a group mod without buckets)."""
    if op.command is Command.DELETE:
        return GROUP_MOD_HEADER
    return group_mod_size(op.group)


def _chunk(sizes: list[int], start: int, max_bytes: int, cap: int) -> int:
    """End index of the longest run of buckets from ``start`` that fits one message."""
    total, end = GROUP_MOD_HEADER, start
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
    if op.command not in (Command.ADD, Command.MODIFY, Command.INSERT_BUCKETS):
        raise ValueError(f"cannot split a group {op.command}")
    buckets = op.group.buckets
    sizes = [bucket_size(b) for b in buckets]
    if len(buckets) <= cap and GROUP_MOD_HEADER + sum(sizes) <= max_bytes:
        return [op]  # the usual case: one message
    out: list[GroupOp] = []
    start = 0
    command = op.command  # the first piece keeps it; the rest append to what it left
    while start < len(buckets):
        end = _chunk(sizes, start, max_bytes, cap)
        out.append(GroupOp(command, replace(op.group, buckets=buckets[start:end])))
        command, start = Command.INSERT_BUCKETS, end
    return out
