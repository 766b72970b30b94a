"""IGMP wire format: parse punted Ethernet frames and build the frames the agent sends.

This module owns the byte layout of IGMPv1/v2/v3 (RFC 1112, 2236, 3376) carried in IPv4 over
Ethernet, and nothing else: no sockets, no os-ken. Parsing is strict and every rejection raises
`MalformedIgmp` with a short, stable `reason` token that the agent uses as a metric label.

Parsed messages are frozen dataclasses; addresses are dotted-quad strings. Frames are expected as
a switch punts them: Ethernet II, IPv4 (options such as Router Alert allowed), IGMP, possibly
followed by Ethernet padding (the IPv4 total length, not the frame length, bounds the message).
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

ETH_P_IP = 0x0800
IPPROTO_IGMP = 2
ALL_HOSTS = "224.0.0.1"
ALL_ROUTERS = "224.0.0.2"
IGMPV3_ROUTERS = "224.0.0.22"

TYPE_QUERY = 0x11
TYPE_V1_REPORT = 0x12
TYPE_V2_REPORT = 0x16
TYPE_V2_LEAVE = 0x17
TYPE_V3_REPORT = 0x22

# Every reason `MalformedIgmp` may carry; metric labels must come from a closed set.
REASONS = frozenset({
    "short", "not_ipv4", "not_igmp", "bad_ip_header", "bad_checksum", "unknown_type",
    "bad_group", "too_many_records", "truncated_record",
})

_ETH = struct.Struct("!6s6sH")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IGMP = struct.Struct("!BBH4s")            # type, max resp code, checksum, group
_V3_QUERY_TAIL = struct.Struct("!BBH")     # resv|S|QRV, QQIC, number of sources
_V3_REPORT_HEAD = struct.Struct("!BBHHH")  # type, reserved, checksum, reserved, records
_V3_RECORD = struct.Struct("!BBH4s")       # record type, aux words, sources, group
_ROUTER_ALERT = b"\x94\x04\x00\x00"        # RFC 2113, required on IGMPv2/v3 (RFC 3376 §4)
_IP_HEADER_LEN = 24                        # 20 bytes + Router Alert
_MIN_FRAME = 60                            # Ethernet minimum without FCS
_MAX_CODE_VALUE = 0x1F << 10               # largest value the 8-bit float code can carry


class MalformedIgmp(ValueError):
    """A frame that is not a valid IGMP message; `reason` is one of `REASONS`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class RecordType(enum.IntEnum):
    """IGMPv3 group record types (RFC 3376 §4.2.12)."""

    IS_IN = 1  # MODE_IS_INCLUDE
    IS_EX = 2  # MODE_IS_EXCLUDE
    TO_IN = 3  # CHANGE_TO_INCLUDE_MODE
    TO_EX = 4  # CHANGE_TO_EXCLUDE_MODE
    ALLOW = 5  # ALLOW_NEW_SOURCES
    BLOCK = 6  # BLOCK_OLD_SOURCES


@dataclass(frozen=True)
class Query:
    """Membership query. v1/v2 queries carry no sources; `qrv`/`qqic_s` are 0 there."""

    version: int
    group: str = "0.0.0.0"
    max_resp_s: float = 10.0
    sources: tuple[str, ...] = ()
    qrv: int = 0
    qqic_s: int = 0
    s_flag: bool = False
    src: str = field(default="0.0.0.0", kw_only=True)
    dst: str = field(default=ALL_HOSTS, kw_only=True)

    @property
    def is_general(self) -> bool:
        return self.group == "0.0.0.0"


@dataclass(frozen=True)
class ReportV1:
    group: str
    src: str = field(default="0.0.0.0", kw_only=True)
    dst: str = field(default="0.0.0.0", kw_only=True)


@dataclass(frozen=True)
class ReportV2:
    group: str
    src: str = field(default="0.0.0.0", kw_only=True)
    dst: str = field(default="0.0.0.0", kw_only=True)


@dataclass(frozen=True)
class LeaveV2:
    group: str
    src: str = field(default="0.0.0.0", kw_only=True)
    dst: str = field(default=ALL_ROUTERS, kw_only=True)


@dataclass(frozen=True)
class GroupRecord:
    kind: RecordType
    group: str
    sources: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReportV3:
    records: tuple[GroupRecord, ...]
    src: str = field(default="0.0.0.0", kw_only=True)
    dst: str = field(default=IGMPV3_ROUTERS, kw_only=True)


_RECORD_TYPES = frozenset(int(t) for t in RecordType)

MembershipReport = ReportV1 | ReportV2 | LeaveV2 | ReportV3
_V1_V2_TYPES: dict[int, type[ReportV1 | ReportV2 | LeaveV2]] = {
    TYPE_V1_REPORT: ReportV1, TYPE_V2_REPORT: ReportV2, TYPE_V2_LEAVE: LeaveV2}
IgmpMessage = Query | MembershipReport


# ---------------------------------------------------------------- helpers

def checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum (one's complement of the one's complement sum)."""
    if len(data) % 2:
        data += b"\x00"
    words: tuple[int, ...] = struct.unpack(f"!{len(data) // 2}H", data)
    total = sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _ntoa(raw: bytes) -> str:
    return f"{raw[0]}.{raw[1]}.{raw[2]}.{raw[3]}"


def _aton(ip: str) -> bytes:
    return ipaddress.IPv4Address(ip).packed


def _is_multicast(raw: bytes) -> bool:
    return 224 <= raw[0] <= 239


def multicast_mac(ip: str) -> str:
    """Ethernet address of an IPv4 multicast group: 01:00:5e + low 23 bits (RFC 1112 §6.4)."""
    raw = _aton(ip)
    if not _is_multicast(raw):
        raise ValueError(f"{ip} is not an IPv4 multicast address")
    return f"01:00:5e:{raw[1] & 0x7F:02x}:{raw[2]:02x}:{raw[3]:02x}"


def _mac_bytes(mac: str) -> bytes:
    raw = bytes.fromhex(mac.replace(":", "").replace("-", ""))
    if len(raw) != 6:
        raise ValueError(f"bad MAC address {mac!r}")
    return raw


def decode_code(code: int) -> int:
    """Max Resp Code / QQIC to a value (RFC 3376 §4.1.1, §4.1.7): linear below 128, else float."""
    if code < 0x80:
        return code
    return ((code & 0x0F) | 0x10) << (((code >> 4) & 0x07) + 3)


def encode_code(value: int) -> int:
    """Inverse of `decode_code`. Values that the float form cannot hold exactly are rounded
    down, so a querier never announces a longer wait than it will honour."""
    if not 0 <= value <= _MAX_CODE_VALUE:
        raise ValueError(f"{value} does not fit an IGMPv3 code (max {_MAX_CODE_VALUE})")
    if value < 0x80:
        return value
    exp = value.bit_length() - 5 - 3  # mantissa keeps 5 significant bits, the top one implied
    return 0x80 | (exp << 4) | ((value >> (exp + 3)) & 0x0F)


# ---------------------------------------------------------------- parsing

def parse_frame(frame: bytes) -> IgmpMessage:
    """Parse an Ethernet frame holding an IGMP message. VLAN-tagged frames are refused
    (`not_ipv4`): the agent's punt flows see untagged pod traffic only."""
    if len(frame) < _ETH.size:
        raise MalformedIgmp("short", f"frame of {len(frame)} bytes")
    _, _, ethertype = _ETH.unpack_from(frame)
    if ethertype != ETH_P_IP:
        raise MalformedIgmp("not_ipv4", f"ethertype 0x{ethertype:04x}")
    return parse_ipv4(frame[_ETH.size:])


def parse_ipv4(packet: bytes) -> IgmpMessage:
    """Parse an IPv4 packet holding an IGMP message (trailing padding is ignored)."""
    if len(packet) < _IPV4.size:
        raise MalformedIgmp("short", f"IPv4 packet of {len(packet)} bytes")
    ver_ihl, _, total_len, _, frag, _, proto, _, src, dst = _IPV4.unpack_from(packet)
    if ver_ihl >> 4 != 4:
        raise MalformedIgmp("not_ipv4", f"IP version {ver_ihl >> 4}")
    ihl = (ver_ihl & 0x0F) * 4
    if ihl < 20 or total_len < ihl:
        raise MalformedIgmp("bad_ip_header", f"ihl {ihl}, total length {total_len}")
    if len(packet) < total_len:
        raise MalformedIgmp("short", f"{len(packet)} bytes for IPv4 total length {total_len}")
    if frag & 0x3FFF:
        # IGMP messages are never fragmented by their senders; we do not reassemble.
        raise MalformedIgmp("bad_ip_header", "fragment")
    if checksum(packet[:ihl]) != 0:
        raise MalformedIgmp("bad_ip_header", "IPv4 header checksum")
    if proto != IPPROTO_IGMP:
        raise MalformedIgmp("not_igmp", f"IP protocol {proto}")
    return parse_igmp(packet[ihl:total_len], src=_ntoa(src), dst=_ntoa(dst))


def parse_igmp(msg: bytes, src: str = "0.0.0.0", dst: str = "0.0.0.0") -> IgmpMessage:
    """Parse the IGMP message itself (the whole IPv4 payload, checksum included)."""
    if len(msg) < _IGMP.size:
        raise MalformedIgmp("short", f"IGMP message of {len(msg)} bytes")
    if checksum(msg) != 0:
        raise MalformedIgmp("bad_checksum")
    kind, code, _, group = _IGMP.unpack_from(msg)
    if kind == TYPE_QUERY:
        return _parse_query(msg, code, group, src, dst)
    if kind in (TYPE_V1_REPORT, TYPE_V2_REPORT, TYPE_V2_LEAVE):
        if not _is_multicast(group):
            raise MalformedIgmp("bad_group", f"{_ntoa(group)} in type 0x{kind:02x}")
        cls = _V1_V2_TYPES[kind]
        return cls(_ntoa(group), src=src, dst=dst)
    if kind == TYPE_V3_REPORT:
        return _parse_v3_report(msg, src, dst)
    raise MalformedIgmp("unknown_type", f"type 0x{kind:02x}")


def _parse_query(msg: bytes, code: int, group: bytes, src: str, dst: str) -> Query:
    if group != b"\x00\x00\x00\x00" and not _is_multicast(group):
        raise MalformedIgmp("bad_group", f"query for {_ntoa(group)}")
    # Version by length and code, RFC 3376 §7.1.
    if len(msg) == 8:
        if code == 0:
            # v1 hosts answer within 10 s (RFC 2236 §4), whatever the field says.
            return Query(1, _ntoa(group), 10.0, src=src, dst=dst)
        return Query(2, _ntoa(group), code / 10, src=src, dst=dst)
    if len(msg) < 12:
        # 9..11 bytes is no version at all; RFC 3376 §7.1 says ignore it.
        raise MalformedIgmp("short", f"query of {len(msg)} bytes")
    flags, qqic, nsrc = _V3_QUERY_TAIL.unpack_from(msg, 8)
    if 12 + 4 * nsrc > len(msg):
        raise MalformedIgmp("too_many_records", f"{nsrc} sources in {len(msg) - 12} bytes")
    sources = tuple(_ntoa(msg[i:i + 4]) for i in range(12, 12 + 4 * nsrc, 4))
    return Query(3, _ntoa(group), decode_code(code) / 10, sources, flags & 0x07,
                 decode_code(qqic), bool(flags & 0x08), src=src, dst=dst)


def _parse_v3_report(msg: bytes, src: str, dst: str) -> ReportV3:
    _, _, _, _, nrec = _V3_REPORT_HEAD.unpack_from(msg)
    # Cheap bound first: every record takes at least 8 bytes.
    if 8 + nrec * _V3_RECORD.size > len(msg):
        raise MalformedIgmp("too_many_records", f"{nrec} records in {len(msg) - 8} bytes")
    records: list[GroupRecord] = []
    off = 8
    for _ in range(nrec):
        if off + _V3_RECORD.size > len(msg):
            raise MalformedIgmp("truncated_record", f"record header at offset {off}")
        rtype, aux_words, nsrc, group = _V3_RECORD.unpack_from(msg, off)
        start = off + _V3_RECORD.size
        end = start + 4 * nsrc + 4 * aux_words
        if end > len(msg):
            raise MalformedIgmp("truncated_record", f"record at {off} needs {end - len(msg)} more")
        if not _is_multicast(group):
            raise MalformedIgmp("bad_group", f"record for {_ntoa(group)}")
        if rtype in _RECORD_TYPES:
            sources = tuple(_ntoa(msg[i:i + 4]) for i in range(start, start + 4 * nsrc, 4))
            records.append(GroupRecord(RecordType(rtype), _ntoa(group), sources))
        # else: unknown record types MUST be silently ignored (RFC 3376 §4.2.12).
        off = end
    return ReportV3(tuple(records), src=src, dst=dst)


# ---------------------------------------------------------------- building

def _frame(src_mac: str, src_ip: str, dst_ip: str, igmp: bytes) -> bytes:
    """Wrap an IGMP message the way Linux sends one: TOS 0xc0, DF, TTL 1, Router Alert."""
    total = _IP_HEADER_LEN + len(igmp)
    header = _IPV4.pack(0x46, 0xC0, total, 0, 0x4000, 1, IPPROTO_IGMP, 0,
                        _aton(src_ip), _aton(dst_ip)) + _ROUTER_ALERT
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    eth = _ETH.pack(_mac_bytes(multicast_mac(dst_ip)), _mac_bytes(src_mac), ETH_P_IP)
    return (eth + header + igmp).ljust(_MIN_FRAME, b"\x00")


def _with_checksum(msg: bytes) -> bytes:
    return msg[:2] + struct.pack("!H", checksum(msg)) + msg[4:]


def build_query(version: int, src_ip: str, src_mac: str, group: str = "0.0.0.0",
                max_resp_s: float = 10.0, qrv: int = 2, qqic_s: int = 125,
                sources: Iterable[str] = (), s_flag: bool = False) -> bytes:
    """General query (group 0.0.0.0, to 224.0.0.1) or group-specific query (to the group).

    v1 queries always carry max resp 0; v2 carries tenths of seconds up to 25.5 s; v3 uses the
    float encoding (up to 3174.4 s), rounded down. `sources` makes a v3 group-and-source query.
    """
    sources = tuple(sources)
    gbytes = _aton(group)
    general = gbytes == b"\x00\x00\x00\x00"
    if not general and not _is_multicast(gbytes):
        raise ValueError(f"query group {group} is not multicast")
    if sources and (version != 3 or general):
        raise ValueError("sources need a v3 group-specific query")
    tenths = round(max_resp_s * 10)
    if version == 1:
        head = _IGMP.pack(TYPE_QUERY, 0, 0, gbytes)
    elif version == 2:
        if not 1 <= tenths <= 255:
            raise ValueError(f"v2 max response {max_resp_s} s outside 0.1..25.5 s")
        head = _IGMP.pack(TYPE_QUERY, tenths, 0, gbytes)
    elif version == 3:
        # QRV above 7 is sent as 0 (RFC 3376 §4.1.6).
        flags = (0x08 if s_flag else 0) | (qrv if 0 < qrv <= 7 else 0)
        head = (_IGMP.pack(TYPE_QUERY, encode_code(tenths), 0, gbytes)
                + _V3_QUERY_TAIL.pack(flags, encode_code(qqic_s), len(sources))
                + b"".join(_aton(s) for s in sources))
    else:
        raise ValueError(f"IGMP version {version}")
    return _frame(src_mac, src_ip, ALL_HOSTS if general else group, _with_checksum(head))


def _build_simple(kind: int, group: str, dst: str, src_ip: str, src_mac: str) -> bytes:
    gbytes = _aton(group)
    if not _is_multicast(gbytes):
        raise ValueError(f"{group} is not multicast")
    return _frame(src_mac, src_ip, dst, _with_checksum(_IGMP.pack(kind, 0, 0, gbytes)))


def build_v2_report(group: str, src_ip: str, src_mac: str) -> bytes:
    """IGMPv2 membership report, sent to the group itself (RFC 2236 §3)."""
    return _build_simple(TYPE_V2_REPORT, group, group, src_ip, src_mac)


def build_v2_leave(group: str, src_ip: str, src_mac: str) -> bytes:
    """IGMPv2 leave group, sent to all-routers 224.0.0.2 (RFC 2236 §3)."""
    return _build_simple(TYPE_V2_LEAVE, group, ALL_ROUTERS, src_ip, src_mac)


# A record continued in a later report must not replace the state its first part set up:
# an INCLUDE-ish record continues as ALLOW, an EXCLUDE-ish one as BLOCK. RFC 3376 §4.2.16
# would drop the overflow of an EXCLUDE record instead; we keep every source.
_CONTINUATION = {
    RecordType.IS_IN: RecordType.ALLOW, RecordType.TO_IN: RecordType.ALLOW,
    RecordType.ALLOW: RecordType.ALLOW, RecordType.IS_EX: RecordType.BLOCK,
    RecordType.TO_EX: RecordType.BLOCK, RecordType.BLOCK: RecordType.BLOCK,
}


def _encode_record(kind: RecordType, group: bytes, sources: list[str]) -> bytes:
    return (_V3_RECORD.pack(kind, 0, len(sources), group)
            + b"".join(_aton(s) for s in sources))


def build_v3_reports(records: Iterable[GroupRecord], src_ip: str, src_mac: str,
                     mtu: int = 1500) -> list[bytes]:
    """IGMPv3 reports to 224.0.0.22 carrying `records` in order, packed into few frames.

    Each IP packet is at most `mtu` bytes. A record that does not fit the current report starts
    a new one; a record too large for any report is split by sources, in order, its later parts
    typed per `_CONTINUATION`, so sending the frames in list order yields the same state.
    """
    room = min(mtu, 0xFFFF) - _IP_HEADER_LEN - _V3_REPORT_HEAD.size  # record bytes per report
    if room < _V3_RECORD.size + 4:
        raise ValueError(f"MTU {mtu} too small for an IGMPv3 report")
    reports: list[list[bytes]] = [[]]
    used = 0
    for rec in records:
        gbytes = _aton(rec.group)
        if not _is_multicast(gbytes):
            raise ValueError(f"record group {rec.group} is not multicast")
        size = _V3_RECORD.size + 4 * len(rec.sources)
        # A record that does not fit what is left starts a new report if that avoids a split;
        # one too big for any report is split anyway, so it fills what is left first.
        left = room - used
        if used and size > left and (size <= room or left < _V3_RECORD.size + 4):
            reports.append([])
            used = 0
        kind, sources = rec.kind, list(rec.sources)
        while True:
            take = min(len(sources), (room - used - _V3_RECORD.size) // 4)
            chunk = _encode_record(kind, gbytes, sources[:take])
            reports[-1].append(chunk)
            used += len(chunk)
            sources = sources[take:]
            if not sources:
                break
            kind = _CONTINUATION[rec.kind]
            reports.append([])
            used = 0
    frames = []
    for chunks in reports:
        if not chunks:
            continue
        head = _V3_REPORT_HEAD.pack(TYPE_V3_REPORT, 0, 0, 0, len(chunks))
        frames.append(_frame(src_mac, src_ip, IGMPV3_ROUTERS,
                             _with_checksum(head + b"".join(chunks))))
    return frames
