"""Conversion between pipeline descriptions and os-ken OpenFlow 1.5 messages, both ways.

This module owns the wire encoding of our flows, groups, meters and packet-outs as os-ken
messages, and their decoding from what the switch reports (flow desc, group desc, meter desc,
packet-in2); it does no I/O. The flow and group mods of a bundle are written by
``agent.ovs.fastwire`` instead, to the byte what os-ken makes of the messages here (which stay
the reference, and the fallback for what fastwire declines).

Why OpenFlow 1.5 rather than 1.3: a group larger than one message (> ~1000 remote buckets)
needs the INSERT_BUCKET group command in the same bundle as the ADD/MODIFY. OVS accepts that
command only in OF1.5 group mods; its NXT_GROUP_MOD carrier exists for OF1.0 connections only
(on OF1.3 OVS answers OFPBRC_BAD_SUBTYPE), and a bundle refuses inner messages of another
version (OFPBFC_BAD_VERSION). NX actions are version-independent, except NXAST_REG_LOAD2 which
OVS refuses in OF1.5: register loads are masked set_field actions instead.

os-ken's OF1.5 bucket parser reads past each bucket's end (it takes following buckets for
properties), so buckets are decoded here from the raw bytes, with os-ken's action parser.
Nicira actions os-ken has no class for (``check_pkt_larger``) are coded in ``nxactions``.
``conjunction(ID,K/N)`` is os-ken's NXActionConjunction, whose ``clause`` is the wire's: 0-based,
K-1 (OVS's nx_action_conjunction; ``ovs-ofctl ofp-print`` of os-ken's bytes shows K).
"""

from __future__ import annotations

import ipaddress
import logging
import struct
from collections.abc import Iterable, Sequence
from types import MappingProxyType
from typing import Any

from os_ken.ofproto import nicira_ext
from os_ken.ofproto import ofproto_v1_5 as ofp
from os_ken.ofproto import ofproto_v1_5_parser as ofpp

from agent.flowsync.switch import CookieDelete, PacketIn, SwitchOp
from agent.ovs import nxactions
from agent.ovs.buckets import next_bucket_id
from pipeline.groupsplit import MAX_BUNDLED_MESSAGE as MAX_BUNDLED_MESSAGE  # one limit, OF1.5
from pipeline.model import (
    FIELD_KINDS,
    OFPP_CONTROLLER,
    OFPP_IN_PORT,
    Action,
    ApplyMeter,
    Bucket,
    CheckPktLarger,
    Conjunction,
    Controller,
    Ct,
    Drop,
    FieldMatch,
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
from pipeline.registers import REG_FIELDS, RegField
from pipeline.tables import Pipeline

log = logging.getLogger(__name__)

OF_VERSION = ofp.OFP_VERSION
NXPIF_NXT_PACKET_IN2 = 2  # nx_packet_in_format: os-ken names only the two older formats
NX_CT_RECIRC_NONE = 0xFF
NX_NAT_F_SRC = 1

_GROUP_TYPES = MappingProxyType({GroupType.ALL: ofp.OFPGT_ALL, GroupType.SELECT: ofp.OFPGT_SELECT,
                                 GroupType.INDIRECT: ofp.OFPGT_INDIRECT})
_GROUP_TYPES_BACK = MappingProxyType({v: k for k, v in _GROUP_TYPES.items()})
_GROUP_COMMANDS = MappingProxyType({
    Command.ADD: ofp.OFPGC_ADD, Command.MODIFY: ofp.OFPGC_MODIFY, Command.DELETE: ofp.OFPGC_DELETE,
    Command.INSERT_BUCKETS: ofp.OFPGC_INSERT_BUCKET})
_METER_COMMANDS = MappingProxyType({Command.ADD: ofp.OFPMC_ADD, Command.MODIFY: ofp.OFPMC_MODIFY,
                                   Command.DELETE: ofp.OFPMC_DELETE})
_FLOW_COMMANDS = MappingProxyType({Command.ADD: ofp.OFPFC_ADD,
                                  Command.MODIFY: ofp.OFPFC_MODIFY_STRICT})
_GROUP_DESC = struct.Struct("!HBxIH6x")  # ofp_group_desc (OF1.5)
_BUCKET = struct.Struct("!HHI")  # ofp_bucket (OF1.5)
_MP_HEADER = 16  # ofp_header + type + flags + pad of a multipart reply


class ConvertError(ValueError):
    """A description cannot be encoded, or a switch entry cannot be described."""


def _full_mask(name: str) -> int | str | None:
    kind = FIELD_KINDS[name]
    if kind == "ip":
        return "255.255.255.255"
    if kind == "mac":
        return "ff:ff:ff:ff:ff:ff"
    return (1 << int(kind)) - 1


def field_match(name: str, value: Any, mask: Any = None) -> FieldMatch:
    """A FieldMatch in the canonical form builders produce (full masks dropped, lower-case)."""
    if name not in FIELD_KINDS:
        raise ConvertError(f"switch matches on {name!r}, which the pipeline model lacks")
    kind = FIELD_KINDS[name]
    if isinstance(value, str):
        value = value.lower()
    if isinstance(mask, str):
        mask = mask.lower()
    if mask is not None and mask == _full_mask(name):
        mask = None
    if kind == "ip" and mask is not None:
        net = ipaddress.IPv4Network(f"{value}/{mask}", strict=False)
        value, mask = str(net.network_address), str(net.netmask)
    return FieldMatch(name, value, mask)


def _split_xreg(n: int, value: int, mask: int | None) -> list[FieldMatch]:
    """OVS reports register matches over OpenFlow 1.5 as 64-bit xregN = reg(2N) << 32 | reg(2N+1)
    (OXM_OF_PKT_REG); split them back into the two 32-bit registers."""
    mask = (1 << 64) - 1 if mask is None else mask
    out = []
    for reg, shift in ((2 * n, 32), (2 * n + 1, 0)):
        m = (mask >> shift) & 0xFFFFFFFF
        if m:
            out.append(field_match(f"reg{reg}", (value >> shift) & m, m))
    return out


def oxm_fields(buf: bytes) -> dict[str, Any]:
    """Decode a bare OXM field list (no ofp_match header), as in packet-in2 metadata."""
    out: dict[str, Any] = {}
    off = 0
    while off + 4 <= len(buf):
        n, value, mask, total = ofp.oxm_parse(buf, off)
        try:
            key, user = ofp.oxm_to_user(n, value, mask)
        except (KeyError, struct.error):  # a field os-ken does not know: skip it
            key, user = None, None
        if key is not None:
            out[str(key)] = user
        off += total
    return out


class Converter:
    """Encodes and decodes against one pipeline (table names <-> ids) and its registers."""

    def __init__(self, pipeline: Pipeline, reg_fields: Iterable[RegField] = REG_FIELDS) -> None:
        self.pipeline = pipeline
        self._regs = {(f.reg, f.start, f.end): f for f in reg_fields}

    # -- matches --------------------------------------------------------------------------------

    @staticmethod
    def match_to_ofp(match: Match) -> ofpp.OFPMatch:
        kw = {f.name: f.value if f.mask is None else (f.value, f.mask) for f in match.fields}
        return ofpp.OFPMatch(**kw)

    @staticmethod
    def match_from_ofp(m: ofpp.OFPMatch) -> Match:
        fields = []
        for name, value in m.items():
            v, mask = value if isinstance(value, tuple) else (value, None)
            if name.startswith("xreg"):
                fields.extend(_split_xreg(int(name[4:]), v, mask))
            else:
                fields.append(field_match(name, v, mask))
        return Match(tuple(sorted(fields)))

    # -- actions --------------------------------------------------------------------------------

    def _reg_field(self, reg: int, start: int, end: int) -> RegField:
        found = self._regs.get((reg, start, end))
        return found if found is not None else RegField(f"reg{reg}[{start}..{end}]", reg, start,
                                                        end)

    def action_to_ofp(self, a: Action) -> Any:
        match a:
            case Output(port):
                return ofpp.OFPActionOutput(port, 0xFFFF if port == OFPP_CONTROLLER else 0)
            case OutputReg(field):
                return ofpp.NXActionOutputReg(
                    ofs_nbits=nicira_ext.ofs_nbits(field.start, field.end), src=field.oxm,
                    max_len=0)
            case GroupAction(group_id):
                return ofpp.OFPActionGroup(group_id)
            case ApplyMeter(meter_id):
                return ofpp.OFPActionMeter(meter_id)
            case Controller(userdata, max_len):
                kw: dict[str, Any] = {"userdata": list(userdata)}
                if max_len != 0xFFFF:  # OVS leaves the default out when it reports the action
                    kw["max_len"] = max_len
                return ofpp.NXActionController2(**kw)
            case SetField(name, value):
                return ofpp.OFPActionSetField(**{name: value})
            case LoadReg(field, value):
                v, m = field.encode(value)
                return ofpp.OFPActionSetField(**{field.oxm: v if m == 0xFFFFFFFF else (v, m)})
            case SetTunnelDst(ip):
                return ofpp.OFPActionSetField(tun_ipv4_dst=ip)
            case Resubmit(table):
                return ofpp.NXActionResubmitTable(in_port=OFPP_IN_PORT & 0xFFFF,
                                                  table_id=self.pipeline.table_id(table))
            case CheckPktLarger(length, field):
                return nxactions.check_pkt_larger(length, field.oxm, field.start)
            case Conjunction(conj_id, clause, n_clauses):
                return ofpp.NXActionConjunction(clause=clause - 1, n_clauses=n_clauses,
                                                id_=conj_id)
            case Ct(zone, commit, nat_src):
                nat = []
                if nat_src is not None:
                    nat = [ofpp.NXActionNAT(flags=NX_NAT_F_SRC, range_ipv4_min=nat_src,
                                            range_ipv4_max=nat_src)]
                return ofpp.NXActionCT(
                    flags=nicira_ext.NX_CT_F_COMMIT if commit else 0, zone_src="",
                    zone_ofs_nbits=zone, recirc_table=NX_CT_RECIRC_NONE, alg=0, actions=nat)
        raise ConvertError(f"action {a!r} has no OpenFlow form here")

    def actions_to_ofp(self, actions: Sequence[Action]) -> list[Any]:
        return [self.action_to_ofp(a) for a in actions if not isinstance(a, Drop | GotoTable)]

    def instructions(self, actions: Sequence[Action]) -> list[Any]:
        """Apply-actions for everything but a final goto_table, which becomes its instruction."""
        out: list[Any] = []
        applied = self.actions_to_ofp(actions)
        if applied:
            out.append(ofpp.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, applied))
        if actions and isinstance(actions[-1], GotoTable):
            out.append(ofpp.OFPInstructionGotoTable(self.pipeline.table_id(actions[-1].table)))
        return out

    def _set_field_from_ofp(self, key: str, value: Any) -> Action:
        if key.startswith("xreg") and key[4:].isdigit():
            v, m = value if isinstance(value, tuple) else (value, (1 << 64) - 1)
            n = int(key[4:])
            high, low = (m >> 32) & 0xFFFFFFFF, m & 0xFFFFFFFF
            if high and low:
                raise ConvertError(f"set_field {key} spans two registers")
            reg, shift = (2 * n, 32) if high else (2 * n + 1, 0)
            return self._set_field_from_ofp(
                f"reg{reg}", ((v >> shift) & 0xFFFFFFFF, (m >> shift) & 0xFFFFFFFF))
        if key.startswith("reg") and key[3:].isdigit():
            reg = int(key[3:])
            v, m = value if isinstance(value, tuple) else (value, 0xFFFFFFFF)
            low = (m & -m).bit_length() - 1
            high = m.bit_length() - 1
            if m == 0 or m != ((1 << (high + 1)) - 1) ^ ((1 << low) - 1):
                raise ConvertError(f"set_field {key} with non-contiguous mask {m:#x}")
            field = self._regs.get((reg, low, high))
            if field is None and m == 0xFFFFFFFF:
                return SetField(key, v)
            return LoadReg(self._reg_field(reg, low, high), v >> low)
        if isinstance(value, tuple):
            raise ConvertError(f"masked set_field on {key} is not in the model")
        if key == "tun_ipv4_dst":
            return SetTunnelDst(value)
        return SetField(key, value.lower() if isinstance(value, str) else value)

    def action_from_ofp(self, a: Any) -> Action:
        if isinstance(a, ofpp.OFPActionOutput):
            return Output(a.port)
        if isinstance(a, ofpp.OFPActionGroup):
            return GroupAction(a.group_id)
        if isinstance(a, ofpp.OFPActionMeter):
            return ApplyMeter(a.meter_id)
        if isinstance(a, ofpp.OFPActionSetField):
            return self._set_field_from_ofp(a.key, a.value)
        if isinstance(a, ofpp.NXActionOutputReg | ofpp.NXActionOutputReg2):
            start, nbits = a.ofs_nbits >> 6, (a.ofs_nbits & 0x3F) + 1
            src = str(a.src)
            if not (src.startswith("reg") and src[3:].isdigit()):
                raise ConvertError(f"output from {src} is not in the model")
            return OutputReg(self._reg_field(int(src[3:]), start, start + nbits - 1))
        if isinstance(a, ofpp.NXActionController2):
            return Controller(bytes(getattr(a, "userdata", b"")), getattr(a, "max_len", 0xFFFF))
        if isinstance(a, ofpp.NXActionResubmitTable):
            if a.in_port != OFPP_IN_PORT & 0xFFFF:
                raise ConvertError(f"resubmit with in_port {a.in_port} is not in the model")
            return Resubmit(self.pipeline.name_of(a.table_id))
        if isinstance(a, ofpp.NXActionCT):
            if a.zone_src or a.recirc_table != NX_CT_RECIRC_NONE or a.alg:
                raise ConvertError("ct() with zone field, recirculation or alg is not in the model")
            nat_src = None
            for inner in a.actions:
                if isinstance(inner, ofpp.NXActionNAT) and inner.flags & NX_NAT_F_SRC:
                    nat_src = inner.range_ipv4_min or None
            return Ct(zone=a.zone_ofs_nbits, commit=bool(a.flags & nicira_ext.NX_CT_F_COMMIT),
                      nat_src=nat_src)
        if isinstance(a, ofpp.NXActionConjunction):
            return Conjunction(a.id, a.clause + 1, a.n_clauses)
        if nxactions.is_check_pkt_larger(a):
            length, field, bit = nxactions.parse_check_pkt_larger(a)
            if not (field.startswith("reg") and field[3:].isdigit()):
                raise ConvertError(f"check_pkt_larger into {field} is not in the model")
            return CheckPktLarger(length, self._reg_field(int(field[3:]), bit, bit))
        if isinstance(a, ofpp.NXActionRegLoad):  # what an OF1.3 peer may have left behind
            start, nbits = a.ofs_nbits >> 6, (a.ofs_nbits & 0x3F) + 1
            return self._set_field_from_ofp(
                str(a.dst), (a.value << start, ((1 << nbits) - 1) << start))
        raise ConvertError(f"switch action {type(a).__name__} is not in the model")

    def actions_from_ofp(self, acts: Iterable[Any]) -> tuple[Action, ...]:
        out = tuple(self.action_from_ofp(a) for a in acts)
        return out if out else (Drop(),)

    def flow_actions_from_instructions(self, instructions: Iterable[Any]) -> tuple[Action, ...]:
        actions: list[Action] = []
        goto: GotoTable | None = None
        for inst in instructions:
            apply = ofp.OFPIT_APPLY_ACTIONS
            if isinstance(inst, ofpp.OFPInstructionActions) and inst.type == apply:
                actions.extend(self.action_from_ofp(a) for a in inst.actions)
            elif isinstance(inst, ofpp.OFPInstructionGotoTable):
                goto = GotoTable(self.pipeline.name_of(inst.table_id))
            else:
                raise ConvertError(f"instruction {type(inst).__name__} is not in the model")
        if goto is not None:
            actions.append(goto)
        return tuple(actions) if actions else (Drop(),)

    # -- flows ----------------------------------------------------------------------------------

    def flow_mod(self, dp: Any, op: FlowOp) -> ofpp.OFPFlowMod:
        """ADD replaces a flow with the same (table, priority, match), cookie included, and
        keeps its counters; MODIFY is modify-strict: new actions, old cookie and duration (the
        differ sends a cookie change as ADD). DELETE is delete-strict."""
        f = op.flow
        table_id = self.pipeline.table_id(f.table)
        if op.command is Command.DELETE:
            return ofpp.OFPFlowMod(
                dp, table_id=table_id, command=ofp.OFPFC_DELETE_STRICT, priority=f.priority,
                out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY, match=self.match_to_ofp(f.match))
        if op.command not in _FLOW_COMMANDS:
            raise ConvertError(f"flow command {op.command} does not exist")
        return ofpp.OFPFlowMod(
            dp, cookie=f.cookie, table_id=table_id, command=_FLOW_COMMANDS[op.command],
            priority=f.priority, match=self.match_to_ofp(f.match),
            instructions=self.instructions(f.actions))

    @staticmethod
    def delete_by_cookie(dp: Any, cookie: int, mask: int) -> ofpp.OFPFlowMod:
        return ofpp.OFPFlowMod(
            dp, cookie=cookie, cookie_mask=mask, table_id=ofp.OFPTT_ALL,
            command=ofp.OFPFC_DELETE, out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY,
            match=ofpp.OFPMatch())

    def flow_from_ofp(self, entry: Any) -> Flow:
        """A Flow from an OFPFlowDesc (flow dump) or a decoded OFPFlowMod."""
        return Flow(
            table=self.pipeline.name_of(entry.table_id),
            priority=entry.priority,
            match=self.match_from_ofp(entry.match),
            actions=self.flow_actions_from_instructions(entry.instructions),
            cookie=entry.cookie,
        )

    # -- groups ---------------------------------------------------------------------------------

    def group_mod(self, dp: Any, op: GroupOp, first_bucket_id: int = 0) -> ofpp.OFPGroupMod:
        """Buckets get ids first_bucket_id.. so an INSERT_BUCKETS can append after them."""
        g = op.group
        cmd = _GROUP_COMMANDS.get(op.command)
        if cmd is None:
            raise ConvertError(f"group command {op.command} does not exist")
        buckets = []
        if op.command is not Command.DELETE:
            buckets = [ofpp.OFPBucket(bucket_id=first_bucket_id + i,
                                      actions=self.actions_to_ofp(b.actions))
                       for i, b in enumerate(g.buckets)]
        return ofpp.OFPGroupMod(
            dp, command=cmd, type_=_GROUP_TYPES[g.type], group_id=g.group_id,
            command_bucket_id=(ofp.OFPG_BUCKET_LAST if op.command is Command.INSERT_BUCKETS
                               else ofp.OFPG_BUCKET_ALL),
            buckets=buckets)

    def buckets_from_raw(self, buf: bytes, offset: int, end: int) -> list[tuple[int, Bucket]]:
        """(bucket_id, Bucket) for each ofp_bucket in buf[offset:end]."""
        out = []
        while offset + _BUCKET.size <= end:
            length, actions_len, bucket_id = _BUCKET.unpack_from(buf, offset)
            if length < _BUCKET.size or offset + length > end:
                raise ConvertError(f"bucket at offset {offset} has bad length {length}")
            acts, a_off = [], offset + _BUCKET.size
            a_end = a_off + actions_len
            while a_off < a_end:
                a = ofpp.OFPAction.parser(buf, a_off)
                acts.append(a)
                a_off += a.len
            out.append((bucket_id, Bucket(self.actions_from_ofp(acts))))
            offset += length
        return out

    def group_desc_from_raw(self, msg: bytes) -> list[Group]:
        """Groups of one OFPMP_GROUP_DESC reply message (raw bytes, OF1.5)."""
        groups, off = [], _MP_HEADER
        while off + _GROUP_DESC.size <= len(msg):
            length, gtype, group_id, buckets_len = _GROUP_DESC.unpack_from(msg, off)
            if length < _GROUP_DESC.size:
                raise ConvertError(f"group desc entry at offset {off} has bad length {length}")
            start = off + _GROUP_DESC.size
            buckets = self.buckets_from_raw(msg, start, start + buckets_len)
            groups.append(Group(group_id, tuple(b for _, b in buckets),
                                _GROUP_TYPES_BACK.get(gtype, GroupType.ALL)))
            off += length
        return groups

    # -- meters, packet-out ---------------------------------------------------------------------

    @staticmethod
    def meter_mod(dp: Any, op: MeterOp) -> ofpp.OFPMeterMod:
        m = op.meter
        cmd = _METER_COMMANDS.get(op.command)
        if cmd is None:
            raise ConvertError(f"meter command {op.command} does not exist")
        flags = ofp.OFPMF_PKTPS | (ofp.OFPMF_BURST if m.burst else 0)
        bands = [] if op.command is Command.DELETE else [
            ofpp.OFPMeterBandDrop(rate=m.rate_pps, burst_size=m.burst)]
        return ofpp.OFPMeterMod(dp, command=cmd, flags=flags, meter_id=m.meter_id, bands=bands)

    @staticmethod
    def meter_from_ofp(entry: Any) -> Meter:
        band = entry.bands[0]
        return Meter(entry.meter_id, band.rate, band.burst_size)

    def packet_out(self, dp: Any, data: bytes, actions: Sequence[Action],
                   in_port: int = OFPP_CONTROLLER) -> ofpp.OFPPacketOut:
        return ofpp.OFPPacketOut(dp, buffer_id=ofp.OFP_NO_BUFFER,
                                 match=ofpp.OFPMatch(in_port=in_port),
                                 actions=self.actions_to_ofp(actions), data=data)


def encode(conv: Converter, dp: Any, op: SwitchOp, buckets: dict[int, int]) -> Any:
    """The os-ken message for one op (``buckets``: group id -> next bucket id, updated)."""
    match op:
        case FlowOp():
            return conv.flow_mod(dp, op)
        case GroupOp():
            return conv.group_mod(dp, op, next_bucket_id(op, buckets))
        case MeterOp():
            return conv.meter_mod(dp, op)
        case CookieDelete(cookie, mask):
            return conv.delete_by_cookie(dp, cookie, mask)
    raise ConvertError(f"unknown op {op!r}")


def _cookie(msg: Any) -> int:
    # OVS pads 64-bit properties to 8-byte alignment (4 zero bytes after the property
    # header); os-ken reads the cookie from the padding, so take the last 8 bytes ourselves.
    for p in msg.properties:
        if p.type == nicira_ext.NXPINT_COOKIE and len(p.data) >= 8:
            return int.from_bytes(bytes(p.data[-8:]), "big")
    return 0


def packet_in_from(msg: Any) -> PacketIn:
    """PacketIn from an NXTPacketIn2: in_port and tun_src come from its metadata match."""
    meta = oxm_fields(bytes(msg.metadata or b""))
    return PacketIn(
        in_port=int(meta.get("in_port", 0)),
        userdata=bytes(msg.userdata or b""),
        data=bytes(msg.data or b""),
        tun_src=meta.get("tun_ipv4_src"),
        cookie=_cookie(msg),
        table_id=msg.table_id or 0,
        reason=msg.reason or 0,
    )


def error_message_text(msg: Any) -> str:
    """Readable text of an OFPErrorMsg (experimenter errors carry exp_type, not code)."""
    if msg.type == ofp.OFPET_EXPERIMENTER:
        return (f"OFPET_EXPERIMENTER experimenter={getattr(msg, 'experimenter', 0):#x} "
                f"exp_type={getattr(msg, 'exp_type', 0)}")
    return error_text(msg.type, msg.code, msg.data)


def error_text(type_: int, code: int, data: bytes = b"") -> str:
    """'OFPET_BAD_ACTION/OFPBAC_BAD_OUT_GROUP' style names of an OpenFlow error."""
    try:
        tname = ofp.ofp_error_type_to_str(type_)
        cname = ofp.ofp_error_code_to_str(type_, code)
    except (KeyError, ValueError):
        tname = cname = "Unknown"
    if tname.startswith("Unknown") or cname.startswith("Unknown"):
        return f"error type {type_} code {code}"
    text = f"{tname.split('(')[0]}/{cname.split('(')[0]}"
    if type_ == ofp.OFPET_HELLO_FAILED and data:
        text += f": {bytes(data).decode(errors='replace')}"
    return text
