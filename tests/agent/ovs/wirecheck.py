"""What os-ken makes of an op, beside what ``agent.ovs.fastwire`` makes of it: the fast path's
tests compare the two byte for byte (message alone, and wrapped in a BUNDLE_ADD_MESSAGE).

The reference is the os-ken path the agent took before the fast path, and still takes where the
fast encoder declines: ``agent.ovs.convert``'s messages, serialized by os-ken, wrapped in
os-ken's ``OFPBundleAddMsg`` (which gives the inner message the outer xid).
"""

from __future__ import annotations

import struct
from typing import Any

from os_ken.ofproto import ofproto_protocol
from os_ken.ofproto import ofproto_v1_5_parser as ofpp

from agent.flowsync.switch import SwitchOp
from agent.ovs import convert as ofconvert
from agent.ovs.convert import OF_VERSION, Converter
from agent.ovs.fastwire import FastEncoder, bundle_add
from pipeline import multicast as mc
from pipeline.ops import Command, GroupOp

P = mc.pipeline()
CONV = Converter(P)
DP = ofproto_protocol.ProtocolDesc(OF_VERSION)
HEADER = struct.Struct("!BBHI")


def os_ken_msg(op: SwitchOp, first_bucket_id: int = 0) -> Any:
    if isinstance(op, GroupOp):
        return CONV.group_mod(DP, op, first_bucket_id)
    return ofconvert.encode(CONV, DP, op, {})


def os_ken_bytes(op: SwitchOp, first_bucket_id: int = 0, xid: int = 0) -> bytes:
    msg = os_ken_msg(op, first_bucket_id)
    msg.xid = xid
    msg.serialize()
    return bytes(msg.buf)


def os_ken_bundle_add(op: SwitchOp, first_bucket_id: int, xid: int, bundle_id: int,
                      flags: int) -> bytes:
    add = ofpp.OFPBundleAddMsg(DP, bundle_id, flags, os_ken_msg(op, first_bucket_id), [])
    add.xid = xid
    add.serialize()
    return bytes(add.buf)


def fast_bytes(enc: FastEncoder, op: SwitchOp, first_bucket_id: int = 0,
               xid: int = 0) -> bytes:
    """The fast encoder's message (xid 0), given ``xid`` here."""
    got = enc.encode(op, first_bucket_id)
    assert got is not None, f"the fast encoder declined {op!r}"
    version, _, length, zero = HEADER.unpack_from(got)
    assert (version, length, zero) == (OF_VERSION, len(got), 0)
    return got[:4] + xid.to_bytes(4, "big") + got[8:]


def assert_same(enc: FastEncoder, op: SwitchOp, first_bucket_id: int = 0, xid: int = 0x1234567,
                bundle_id: int = 0x89AB, flags: int = 3) -> bytes:
    """The fast bytes of ``op`` equal os-ken's, alone and in a bundle-add; returns them."""
    alone = fast_bytes(enc, op, first_bucket_id, xid)
    assert alone.hex() == os_ken_bytes(op, first_bucket_id, xid).hex(), op
    added = bundle_add(bundle_id, flags, xid, fast_bytes(enc, op, first_bucket_id))  # as sent
    assert added.hex() == os_ken_bundle_add(op, first_bucket_id, xid, bundle_id, flags).hex()
    return alone


def every_command(op_kind: type, thing: Any) -> list[SwitchOp]:
    """``thing`` under every command its kind of mod has (the differ's and the splitter's)."""
    commands = [Command.ADD, Command.MODIFY, Command.DELETE]
    if op_kind is GroupOp:
        commands.append(Command.INSERT_BUCKETS)
    return [op_kind(c, thing) for c in commands]
