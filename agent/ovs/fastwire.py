"""The fast path of programming: the bytes of the flow and group mods the agent bundles.

This module owns the direct OpenFlow 1.5 encoding of what goes into a bundle: FLOW_MOD (add,
modify-strict, delete-strict, and the cookie-masked delete of old rounds) and GROUP_MOD (add,
modify, delete, insert-buckets, buckets numbered as ``agent.ovs.buckets`` says), each wrapped in
a BUNDLE_ADD_MESSAGE. It writes them with precompiled structs, and keeps the bytes of action
lists it has already seen (a local, remote or external bucket recurs in every group), instead
of building os-ken objects and running its generic serializer for every op, which cost some
300 µs per op. A message is plain bytes (xid 0 until it is framed): a bundle of 20,000 ops
leaves no objects per op behind for the garbage collector to walk.

The bytes are those os-ken makes of the same op through ``agent.ovs.convert``, to the byte,
xid and bundle wrapper included (tests/agent/ovs/test_fastwire.py proves it for every action
kind and for what the builders make). What this module does not know how to write exactly like
os-ken -- a match field or action outside the table below, a value in an unusual spelling, a
command a mod does not have -- it declines (``encode`` returns None) and the caller falls back
to os-ken: correctness never depends on coverage. Meter mods (never bundled), packet-outs,
requests and the parsing of replies stay with os-ken.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence
from types import MappingProxyType
from typing import Any

from os_ken.ofproto import nicira_ext, ofproto_protocol
from os_ken.ofproto import ofproto_v1_5 as ofp
from os_ken.ofproto.ofproto_common import NX_EXPERIMENTER_ID

from agent.flowsync.switch import CookieDelete, SwitchOp
from agent.ovs import convert as ofconvert
from agent.ovs.buckets import next_bucket_id
from agent.ovs.convert import (
    MAX_BUNDLED_MESSAGE,
    NX_CT_RECIRC_NONE,
    NX_NAT_F_SRC,
    Converter,
    ConvertError,
)
from agent.ovs.nxactions import NXAST_CHECK_PKT_LARGER
from pipeline.model import (
    FIELD_KINDS,
    OFPP_CONTROLLER,
    OFPP_IN_PORT,
    Action,
    ApplyMeter,
    CheckPktLarger,
    Conjunction,
    Controller,
    Ct,
    Drop,
    FieldMatch,
    GotoTable,
    GroupAction,
    GroupType,
    LoadReg,
    Match,
    Output,
    OutputReg,
    Resubmit,
    SetField,
    SetTunnelDst,
)
from pipeline.ops import Command, FlowOp, GroupOp, MeterOp
from pipeline.tables import Pipeline

OF_VERSION = ofp.OFP_VERSION
PROTOCOL = ofproto_protocol.ProtocolDesc(OF_VERSION)
"""The 'datapath' of os-ken messages built ahead of sending (their xid is set later)."""
OFP_MAX_MESSAGE = 0xFFFF
CACHE_LIMIT = 4096
"""Action lists whose bytes are kept (per kind: buckets, flow instructions); past it, forgotten."""

# -- OXM: the match fields the pipeline model has (pipeline.model.FIELD_KINDS) --------------------

_OFB, _NXM1 = 0x8000, 0x0001  # OpenFlow basic, Nicira NXM_NX_
_OXM_FIELDS = MappingProxyType({  # name: (class, field), as os-ken's OpenFlow 1.5 table has them
    "in_port": (_OFB, 0), "eth_dst": (_OFB, 3), "eth_src": (_OFB, 4), "eth_type": (_OFB, 5),
    "ip_proto": (_OFB, 10), "ipv4_src": (_OFB, 11), "ipv4_dst": (_OFB, 12),
    "udp_dst": (_OFB, 16), "tunnel_id": (_OFB, 38), "tun_ipv4_src": (_NXM1, 31),
    "tun_ipv4_dst": (_NXM1, 32), **{f"reg{i}": (_NXM1, i) for i in range(8)},
    "conj_id": (_NXM1, 37),
})
_KIND_BYTES = MappingProxyType({"8": 1, "16": 2, "32": 4, "64": 8, "ip": 4, "mac": 6})


class _Oxm:
    """One field: its OXM headers (plain and masked), value size, and os-ken's sort rank."""

    __slots__ = ("kind", "size", "plain", "masked", "rank")

    def __init__(self, name: str) -> None:
        cls, field = _OXM_FIELDS[name]
        self.kind = FIELD_KINDS[name]
        self.size = _KIND_BYTES[self.kind]
        self.plain = struct.pack("!I", cls << 16 | field << 9 | self.size)
        self.masked = struct.pack("!I", cls << 16 | field << 9 | 1 << 8 | 2 * self.size)
        self.rank = cls << 7 | field  # os-ken orders a match's fields by this number


OXM = MappingProxyType({name: _Oxm(name) for name in _OXM_FIELDS})

# -- structs ------------------------------------------------------------------------------------

_BUNDLE_ADD = struct.Struct("!BBHII2xHBBHI")  # ofp_header, bundle_id, pad, flags, inner header
_FLOW_MOD = struct.Struct("!BBHIQQBBHHHIIIHH")  # ofp_header, cookie .. importance
_MATCH_HEADER = struct.Struct("!HH")  # OFPMT_OXM, length (fields, without padding)
_EMPTY_MATCH = struct.pack("!HH4x", ofp.OFPMT_OXM, 4)
_GROUP_MOD = struct.Struct("!BBHIHBxIH2xI")  # ofp_header .. buckets' length, command bucket
_BUCKET = struct.Struct("!HHI")  # len, action_array_len, bucket_id
_APPLY_ACTIONS = struct.Struct("!HH4x")
_GOTO_TABLE = struct.Struct("!HHB3x")
_OUTPUT = struct.Struct("!HHIH6x")
_ACTION_U32 = struct.Struct("!HHI")  # group, meter
_SET_FIELD_HEADER = struct.Struct("!HH")
_NX = "!HHIH"  # OFPAT_EXPERIMENTER, len, NX_EXPERIMENTER_ID, subtype: 10 bytes
_RESUBMIT = struct.Struct(_NX + "HB3x")  # in_port, table_id
_OUTPUT_REG = struct.Struct(_NX + "H4sH6x")  # ofs_nbits, src NXM header, max_len
_CHECK_PKT_LARGER = struct.Struct(_NX + "HH4s6x")  # pkt_len, dst bit, dst NXM header
_CONJUNCTION = struct.Struct(_NX + "BBI")  # clause (0-based), n_clauses, id
_CONTROLLER2 = struct.Struct(_NX + "6x")  # then properties
_C2_MAX_LEN = struct.Struct("!HHH2x")
_C2_USERDATA = struct.Struct("!HH")
_CT = struct.Struct(_NX + "H4xHB3xH")  # flags, zone_src (none), zone, recirc_table, alg
_NAT_SRC = struct.Struct(_NX + "2xHH4s4s")  # flags, range_present, ipv4 min, ipv4 max

_FLOW_COMMANDS = MappingProxyType({Command.ADD: ofp.OFPFC_ADD,
                                   Command.MODIFY: ofp.OFPFC_MODIFY_STRICT})
_GROUP_COMMANDS = MappingProxyType({
    Command.ADD: ofp.OFPGC_ADD, Command.MODIFY: ofp.OFPGC_MODIFY, Command.DELETE: ofp.OFPGC_DELETE,
    Command.INSERT_BUCKETS: ofp.OFPGC_INSERT_BUCKET})
_GROUP_TYPES = MappingProxyType({GroupType.ALL: ofp.OFPGT_ALL, GroupType.SELECT: ofp.OFPGT_SELECT,
                                 GroupType.INDIRECT: ofp.OFPGT_INDIRECT})
_NAT_RANGE_IPV4 = nicira_ext.NX_NAT_RANGE_IPV4_MIN | nicira_ext.NX_NAT_RANGE_IPV4_MAX


class Declined(Exception):
    """Not something this module writes exactly as os-ken would: the caller uses os-ken."""


def _pad8(n: int) -> int:
    return (n + 7) // 8 * 8


_IPS: dict[str, bytes] = {}


def _ip(value: object) -> bytes:
    """A dotted quad's 4 bytes, only for the canonical spelling (os-ken reads others its way)."""
    if not isinstance(value, str):
        raise Declined(f"address {value!r}")
    found = _IPS.get(value)
    if found is None:
        try:
            found = socket.inet_aton(value)
        except OSError as exc:
            raise Declined(f"address {value!r}") from exc
        if socket.inet_ntoa(found) != value:
            raise Declined(f"address {value!r} not in canonical form")
        if len(_IPS) >= 1 << 16:
            _IPS.clear()
        _IPS[value] = found
    return found


def _mac(value: object) -> bytes:
    if not (isinstance(value, str) and len(value) == 17 and value.count(":") == 5
            and all(value[i] == ":" for i in range(2, 17, 3))):
        raise Declined(f"MAC {value!r}")
    try:
        return bytes.fromhex(value.replace(":", ""))
    except ValueError as exc:
        raise Declined(f"MAC {value!r}") from exc


def _value(oxm: _Oxm, value: object) -> bytes:
    if oxm.kind == "ip":
        return _ip(value)
    if oxm.kind == "mac":
        return _mac(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 8 * oxm.size:
        raise Declined(f"value {value!r} for a {oxm.size}-byte field")
    return value.to_bytes(oxm.size, "big")


def _oxm(name: str) -> _Oxm:
    found = OXM.get(name)
    if found is None:
        raise Declined(f"field {name}")
    return found


def _field(f: FieldMatch) -> tuple[int, bytes]:
    """(os-ken's rank, OXM TLV) of one match field; os-ken clears value bits outside a mask."""
    oxm = _oxm(f.name)
    value = _value(oxm, f.value)
    if f.mask is None:
        return oxm.rank, oxm.plain + value
    mask = _value(oxm, f.mask)
    value = bytes(v & m for v, m in zip(value, mask, strict=True))
    return oxm.rank, oxm.masked + value + mask


def match_bytes(match: Match) -> bytes:
    """ofp_match (OXM), padded to 8 bytes."""
    if not match.fields:
        return _EMPTY_MATCH
    fields = sorted(_field(f) for f in match.fields)
    if len({rank for rank, _ in fields}) != len(fields):
        raise Declined("a field twice in one match")
    body = b"".join(tlv for _, tlv in fields)
    length = 4 + len(body)
    return _MATCH_HEADER.pack(ofp.OFPMT_OXM, length) + body + bytes(_pad8(length) - length)


def _set_field(name: str, value: object, mask: object = None) -> bytes:
    oxm = _oxm(name)
    tlv = (oxm.plain + _value(oxm, value) if mask is None
           else oxm.masked + _value(oxm, value) + _value(oxm, mask))
    length = _pad8(4 + len(tlv))
    return _SET_FIELD_HEADER.pack(ofp.OFPAT_SET_FIELD, length) + tlv + bytes(length - 4 - len(tlv))


def _controller2(userdata: bytes, max_len: int) -> bytes:
    if not userdata:  # os-ken leaves such an action 4 bytes short of its length
        raise Declined("controller() without userdata")
    props = b"" if max_len == 0xFFFF else _C2_MAX_LEN.pack(nicira_ext.NXAC2PT_MAX_LEN, 8, max_len)
    prop_len = 4 + len(userdata)
    props += (_C2_USERDATA.pack(nicira_ext.NXAC2PT_USERDATA, prop_len) + bytes(userdata)
              + bytes(_pad8(prop_len) - prop_len))
    length = _CONTROLLER2.size + len(props)
    return _CONTROLLER2.pack(ofp.OFPAT_EXPERIMENTER, length, NX_EXPERIMENTER_ID,
                             nicira_ext.NXAST_CONTROLLER2) + props


def _ct(zone: int, commit: bool, nat_src: str | None) -> bytes:
    nat = b""
    if nat_src is not None:
        ip = _ip(nat_src)
        nat = _NAT_SRC.pack(ofp.OFPAT_EXPERIMENTER, _NAT_SRC.size, NX_EXPERIMENTER_ID,
                            nicira_ext.NXAST_NAT, NX_NAT_F_SRC, _NAT_RANGE_IPV4, ip, ip)
    flags = nicira_ext.NX_CT_F_COMMIT if commit else 0
    return _CT.pack(ofp.OFPAT_EXPERIMENTER, _CT.size + len(nat), NX_EXPERIMENTER_ID,
                    nicira_ext.NXAST_CT, flags, zone, NX_CT_RECIRC_NONE, 0) + nat


class FastEncoder:
    """Encodes bundled ops for one pipeline (table names -> ids); not thread-safe (the switch
    encodes one bundle at a time). ``fast`` and ``declined`` count ops each way."""

    def __init__(self, pipeline: Pipeline) -> None:
        self._tables = {name: pipeline.table_id(name) for name in pipeline.names}
        self._buckets: dict[tuple[Action, ...], bytes] = {}
        self._instructions: dict[tuple[Action, ...], bytes] = {}
        self.fast = 0
        self.declined = 0

    def _table(self, name: str) -> int:
        found = self._tables.get(name)
        if found is None:
            raise Declined(f"table {name}")
        return found

    # -- actions ------------------------------------------------------------------------------

    def action(self, a: Action) -> bytes:
        """One action as agent.ovs.convert has os-ken write it (Drop, GotoTable: nothing)."""
        match a:
            case Output(port):
                return _OUTPUT.pack(ofp.OFPAT_OUTPUT, 16, port,
                                    0xFFFF if port == OFPP_CONTROLLER else 0)
            case GroupAction(group_id):
                return _ACTION_U32.pack(ofp.OFPAT_GROUP, 8, group_id)
            case ApplyMeter(meter_id):
                return _ACTION_U32.pack(ofp.OFPAT_METER, 8, meter_id)
            case LoadReg(field, value):
                v, m = field.encode(value)
                return _set_field(field.oxm, v, None if m == 0xFFFFFFFF else m)
            case SetField(name, value):
                return _set_field(name, value)
            case SetTunnelDst(ip):
                return _set_field("tun_ipv4_dst", ip)
            case Resubmit(table):
                return _RESUBMIT.pack(ofp.OFPAT_EXPERIMENTER, 16, NX_EXPERIMENTER_ID,
                                      nicira_ext.NXAST_RESUBMIT_TABLE, OFPP_IN_PORT & 0xFFFF,
                                      self._table(table))
            case OutputReg(field):
                return _OUTPUT_REG.pack(ofp.OFPAT_EXPERIMENTER, 24, NX_EXPERIMENTER_ID,
                                        nicira_ext.NXAST_OUTPUT_REG,
                                        field.start << 6 | (field.end - field.start),
                                        _oxm(field.oxm).plain, 0)
            case CheckPktLarger(length, field):
                return _CHECK_PKT_LARGER.pack(ofp.OFPAT_EXPERIMENTER, 24, NX_EXPERIMENTER_ID,
                                              NXAST_CHECK_PKT_LARGER, length, field.start,
                                              _oxm(field.oxm).plain)
            case Controller(userdata, max_len):
                return _controller2(userdata, max_len)
            case Conjunction(conj_id, clause, n_clauses):
                return _CONJUNCTION.pack(ofp.OFPAT_EXPERIMENTER, 16, NX_EXPERIMENTER_ID,
                                         nicira_ext.NXAST_CONJUNCTION, clause - 1, n_clauses,
                                         conj_id)
            case Ct(zone, commit, nat_src):
                return _ct(zone, commit, nat_src)
            case Drop() | GotoTable():
                return b""
        raise Declined(f"action {a!r}")

    def _actions(self, actions: Sequence[Action]) -> bytes:
        try:
            return b"".join([self.action(a) for a in actions])
        except struct.error as exc:  # a number too big for its field: os-ken says so itself
            raise Declined(str(exc)) from exc

    @staticmethod
    def _remember(cache: dict[tuple[Action, ...], bytes], key: tuple[Action, ...],
                  data: bytes) -> bytes:
        if len(cache) >= CACHE_LIMIT:
            cache.clear()
        cache[key] = data
        return data

    def instructions(self, actions: tuple[Action, ...]) -> bytes:
        """Apply-actions for all but a final goto_table, which becomes its own instruction."""
        found = self._instructions.get(actions)
        if found is not None:
            return found
        applied = self._actions(actions)
        out = _APPLY_ACTIONS.pack(ofp.OFPIT_APPLY_ACTIONS, 8 + len(applied)) + applied \
            if applied else b""
        if actions and isinstance(actions[-1], GotoTable):
            out += _GOTO_TABLE.pack(ofp.OFPIT_GOTO_TABLE, 8, self._table(actions[-1].table))
        return self._remember(self._instructions, actions, out)

    def bucket_actions(self, actions: tuple[Action, ...]) -> bytes:
        found = self._buckets.get(actions)
        if found is None:
            found = self._remember(self._buckets, actions, self._actions(actions))
        return found

    # -- messages: whole, with xid 0 --------------------------------------------------------------

    def flow_mod(self, op: FlowOp) -> bytes:
        f = op.flow
        table_id = self._table(f.table)
        match = match_bytes(f.match)
        if op.command is Command.DELETE:
            return _FLOW_MOD.pack(
                OF_VERSION, ofp.OFPT_FLOW_MOD, _FLOW_MOD.size + len(match), 0, 0, 0, table_id,
                ofp.OFPFC_DELETE_STRICT, 0, 0, f.priority, ofp.OFP_NO_BUFFER, ofp.OFPP_ANY,
                ofp.OFPG_ANY, 0, 0) + match
        command = _FLOW_COMMANDS.get(op.command)
        if command is None:
            raise Declined(f"flow command {op.command}")
        instructions = self.instructions(f.actions)
        return _FLOW_MOD.pack(
            OF_VERSION, ofp.OFPT_FLOW_MOD, _FLOW_MOD.size + len(match) + len(instructions), 0,
            f.cookie, 0, table_id, command, 0, 0, f.priority, ofp.OFP_NO_BUFFER, 0, 0, 0,
            0) + match + instructions

    @staticmethod
    def cookie_delete(op: CookieDelete) -> bytes:
        return _FLOW_MOD.pack(
            OF_VERSION, ofp.OFPT_FLOW_MOD, _FLOW_MOD.size + len(_EMPTY_MATCH), 0, op.cookie,
            op.mask, ofp.OFPTT_ALL, ofp.OFPFC_DELETE, 0, 0, ofp.OFP_DEFAULT_PRIORITY,
            ofp.OFP_NO_BUFFER, ofp.OFPP_ANY, ofp.OFPG_ANY, 0, 0) + _EMPTY_MATCH

    def group_mod(self, op: GroupOp, first_bucket_id: int) -> bytes:
        """Buckets get ids first_bucket_id.. (as agent.ovs.convert numbers them)."""
        g = op.group
        command = _GROUP_COMMANDS.get(op.command)
        gtype = _GROUP_TYPES.get(g.type)
        if command is None or gtype is None:
            raise Declined(f"group command {op.command} or type {g.type}")
        parts = []
        if op.command is not Command.DELETE:
            pack, bucket_actions = _BUCKET.pack, self.bucket_actions
            for i, bucket in enumerate(g.buckets, first_bucket_id):
                acts = bucket_actions(bucket.actions)
                parts.append(pack(8 + len(acts), len(acts), i))
                parts.append(acts)
        buckets = b"".join(parts)
        last = op.command is Command.INSERT_BUCKETS
        return _GROUP_MOD.pack(OF_VERSION, ofp.OFPT_GROUP_MOD, _GROUP_MOD.size + len(buckets), 0,
                               command, gtype, g.group_id, len(buckets),
                               ofp.OFPG_BUCKET_LAST if last else ofp.OFPG_BUCKET_ALL) + buckets

    def encode(self, op: SwitchOp, first_bucket_id: int = 0) -> bytes | None:
        """The message of a bundled op (xid 0), or None where os-ken must write it."""
        try:
            match op:
                case FlowOp():
                    out = self.flow_mod(op)
                case GroupOp():
                    out = self.group_mod(op, first_bucket_id)
                case CookieDelete():
                    out = self.cookie_delete(op)
                case _:
                    raise Declined(f"op {type(op).__name__}")
        except (Declined, struct.error, ValueError, OverflowError):
            self.declined += 1
            return None
        self.fast += 1
        return out


def bundle_add(bundle_id: int, flags: int, xid: int, message: bytes) -> bytes:
    """OFPT_BUNDLE_ADD_MESSAGE carrying ``message`` (given the same xid inside as out, no
    properties). Raises ValueError when the whole does not fit OpenFlow's 16-bit length."""
    total = 16 + len(message)
    if total > OFP_MAX_MESSAGE:
        raise ValueError(f"message of {len(message)} bytes does not fit a bundle")
    return _BUNDLE_ADD.pack(OF_VERSION, ofp.OFPT_BUNDLE_ADD_MESSAGE, total, xid, bundle_id,
                            flags, message[0], message[1], len(message), xid) + message[8:]


def message_bytes(msg: Any) -> bytes:
    """An os-ken message, serialized (xid 0 unless it has one)."""
    try:
        msg.serialize()
    except struct.error as exc:  # a length field overflowed
        raise ConvertError("message too large for OpenFlow") from exc
    return bytes(msg.buf)


class OpEncoder:
    """Ops as the switch sends them: a meter op as os-ken's message (meters are never bundled),
    any other as the bytes of its message (xid 0) for a bundle -- this module's, or os-ken's
    where the fast encoder declines. Group buckets are numbered by ``agent.ovs.buckets``."""

    def __init__(self, conv: Converter) -> None:
        self.conv = conv
        self.fast = FastEncoder(conv.pipeline)

    def encode(self, op: SwitchOp, buckets: dict[int, int]) -> Any:
        """Raises ConvertError (or ValueError, KeyError from os-ken) for what cannot be sent."""
        if isinstance(op, MeterOp):
            return self.conv.meter_mod(PROTOCOL, op)
        first = next_bucket_id(op, buckets) if isinstance(op, GroupOp) else 0
        out = self.fast.encode(op, first)
        if out is None:
            msg = (self.conv.group_mod(PROTOCOL, op, first) if isinstance(op, GroupOp)
                   else ofconvert.encode(self.conv, PROTOCOL, op, buckets))
            out = message_bytes(msg)
        if len(out) > MAX_BUNDLED_MESSAGE:
            raise ConvertError(f"message of {len(out)} bytes does not fit a bundle")
        return out
