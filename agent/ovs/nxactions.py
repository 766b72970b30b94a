"""Nicira actions os-ken has no class for, carried as its generic Nicira action (a codec).

``check_pkt_larger`` (NXAST_CHECK_PKT_LARGER, OVS >= 2.12) is laid out as OVS's
``nx_action_check_pkt_larger`` (lib/ofp-actions.c): after the Nicira header and subtype, the
length to compare with, the result's bit offset and the 4-byte NXM header of the result field,
then zeros to 24 bytes in all. OVS writes the NXM (not the OXM) header whatever the OpenFlow
version, so the action is the same on every version, and so are our bytes.

os-ken parses a Nicira action it does not know into ``NXActionUnknown`` with the body after the
subtype, and serialises one from such a body: the action goes both ways without registering a
class in os-ken's global tables.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

from os_ken.ofproto import ofproto_v1_5 as ofp
from os_ken.ofproto import ofproto_v1_5_parser as ofpp

NXAST_CHECK_PKT_LARGER = 49
_CHECK_PKT_LARGER = struct.Struct("!HHI6x")  # pkt_len, offset, dst NXM header, pad


class NxActionError(ValueError):
    """Bytes that are not the action they claim to be."""


class CheckPktLargerArgs(NamedTuple):
    length: int
    field: str  # OXM name as os-ken spells it: "reg0"
    bit: int


def _nxm_header(field: str) -> int:
    buf = bytearray()
    ofp.oxm_serialize_header(ofp.oxm_from_user_header(field), buf, 0)
    return int.from_bytes(buf, "big")


def check_pkt_larger(length: int, field: str, bit: int) -> Any:
    """``check_pkt_larger(length)->field[bit]`` as an os-ken action."""
    body = _CHECK_PKT_LARGER.pack(length, bit, _nxm_header(field))
    return ofpp.NXActionUnknown(NXAST_CHECK_PKT_LARGER, bytearray(body))


def is_check_pkt_larger(action: Any) -> bool:
    return (isinstance(action, ofpp.NXActionUnknown)
            and action.subtype == NXAST_CHECK_PKT_LARGER)


def parse_check_pkt_larger(action: Any) -> CheckPktLargerArgs:
    """The arguments of a ``check_pkt_larger`` os-ken parsed as an unknown Nicira action."""
    body = bytes(action.data)
    if len(body) != _CHECK_PKT_LARGER.size:
        raise NxActionError(f"check_pkt_larger with a {len(body)}-byte body")
    length, bit, header = _CHECK_PKT_LARGER.unpack(body)
    try:
        n, _ = ofp.oxm_parse_header(header.to_bytes(4, "big"), 0)
        field = str(ofp.oxm_to_user_header(n))
    except (KeyError, struct.error) as exc:
        raise NxActionError(f"check_pkt_larger into unknown field {header:#010x}") from exc
    return CheckPktLargerArgs(length, field, bit)
