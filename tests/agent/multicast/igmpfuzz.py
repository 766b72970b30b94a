"""Hypothesis strategies for IGMP frames, shared by the parser's and the core's fuzz tests.

Valid frames come from the product's own builders (`agent.multicast.igmp.packets`), each with
the message the parser must return for it. Malformed ones are arbitrary bytes, arbitrary IGMP
payloads in a valid IPv4 header, and structure-aware mutations of valid frames: the fields the
parser trusts (IP header length and options, total length, fragment bits, IGMP type, record and
source counts, aux data lengths) are rewritten, bytes cut, flipped or appended, and the
checksums usually fixed afterwards so that the mutation reaches the code behind them. The
mutations take their decisions from hypothesis's draws (`mutated_frames`) or, for volume, from a
program of random bytes over a fixed corpus of valid frames (`programmed`).

`tiers` turns one property into a fast test (always run) and a `slow` one, each with its own
example budget and a fixed seed, so CI runs are reproducible; hypothesis writes no database.
"""

from __future__ import annotations

import ipaddress
import random
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from agent.multicast.igmp.packets import (
    ALL_HOSTS,
    ALL_ROUTERS,
    IGMPV3_ROUTERS,
    GroupRecord,
    IgmpMessage,
    LeaveV2,
    Query,
    RecordType,
    ReportV1,
    ReportV2,
    ReportV3,
    build_query,
    build_v2_leave,
    build_v2_report,
    build_v3_reports,
    decode_code,
    encode_code,
)

IP_OFF = 14  # the IPv4 header follows an untagged Ethernet header
SRC_MAC = "02:00:00:00:00:aa"
MAX_CODE_VALUE = 0x1F << 10  # the largest value an IGMPv3 float code holds (RFC 3376 §4.1.1)

# ------------------------------------------------------------------ addresses


def _ip(n: int) -> str:
    return str(ipaddress.IPv4Address(n))


# Few draws per address (hypothesis spends 20-60 us a draw): a special value or any of its range.
MULTICAST_IPS = st.one_of(
    st.sampled_from(["224.0.0.1", "224.0.0.2", "224.0.0.22", "224.0.0.251", "232.1.1.1",
                     "239.1.1.1", "239.255.255.255", "224.0.0.0"]),
    st.integers(0xE0000000, 0xEFFFFFFF).map(_ip),
)
ANY_IPS = st.one_of(
    st.sampled_from(["0.0.0.0", "255.255.255.255", "127.0.0.1", "10.77.1.2", "192.168.77.2",
                     "224.0.0.1", "239.1.1.1"]),
    st.integers(0, 0xFFFFFFFF).map(_ip),
)
GROUP_RECORDS = st.builds(GroupRecord, st.sampled_from(RecordType), MULTICAST_IPS,
                          st.lists(ANY_IPS, max_size=4).map(tuple))


# ------------------------------------------------------------------ valid frames


@dataclass(frozen=True)
class Built:
    """A frame from the product's builders and the message parsing it must give."""

    frame: bytes
    message: IgmpMessage


@st.composite
def v2_messages(draw: st.DrawFn, src_ips: st.SearchStrategy[str] = ANY_IPS) -> Built:
    group, src = draw(MULTICAST_IPS), draw(src_ips)
    if draw(st.booleans()):
        return Built(build_v2_report(group, src, SRC_MAC), ReportV2(group, src=src, dst=group))
    return Built(build_v2_leave(group, src, SRC_MAC), LeaveV2(group, src=src, dst=ALL_ROUTERS))


@st.composite
def v3_reports(draw: st.DrawFn, src_ips: st.SearchStrategy[str] = ANY_IPS,
               max_records: int = 6) -> Built:
    """One IGMPv3 report (few enough records and sources that the builder needs one frame)."""
    records = tuple(draw(st.lists(GROUP_RECORDS, min_size=1, max_size=max_records)))
    src = draw(src_ips)
    (frame,) = build_v3_reports(records, src, SRC_MAC)
    return Built(frame, ReportV3(records, src=src, dst=IGMPV3_ROUTERS))


@st.composite
def queries(draw: st.DrawFn, src_ips: st.SearchStrategy[str] = ANY_IPS) -> Built:
    """v1, v2 and v3 queries: general, group-specific, group-and-source-specific."""
    version = draw(st.sampled_from([1, 2, 3]))
    group = draw(st.one_of(st.just("0.0.0.0"), MULTICAST_IPS))
    src = draw(src_ips)
    dst = ALL_HOSTS if group == "0.0.0.0" else group
    if version == 1:
        return Built(build_query(1, src, SRC_MAC, group=group),
                     Query(1, group, 10.0, src=src, dst=dst))
    if version == 2:
        tenths = draw(st.integers(1, 255))
        return Built(build_query(2, src, SRC_MAC, group=group, max_resp_s=tenths / 10),
                     Query(2, group, tenths / 10, src=src, dst=dst))
    tenths = draw(st.integers(0, MAX_CODE_VALUE))
    qqic = draw(st.integers(0, MAX_CODE_VALUE))
    qrv = draw(st.integers(0, 10))
    s_flag = draw(st.booleans())
    sources = () if group == "0.0.0.0" else tuple(draw(st.lists(ANY_IPS, max_size=4)))
    frame = build_query(3, src, SRC_MAC, group=group, max_resp_s=tenths / 10, qrv=qrv,
                        qqic_s=qqic, sources=sources, s_flag=s_flag)
    return Built(frame, Query(3, group, decode_code(encode_code(tenths)) / 10, sources,
                              qrv if 0 < qrv <= 7 else 0, decode_code(encode_code(qqic)), s_flag,
                              src=src, dst=dst))


def valid_messages(src_ips: st.SearchStrategy[str] = ANY_IPS) -> st.SearchStrategy[Built]:
    return st.one_of(v2_messages(src_ips), v3_reports(src_ips), queries(src_ips))


def _corpus(size: int = 128) -> tuple[bytes, ...]:
    """Valid frames of every kind, built once from a fixed seed: a base for mutations that costs
    one draw instead of dozens (the slow tier's budget is mostly hypothesis's draws)."""
    rnd = random.Random(0x16)

    def ip(lo: int = 0, hi: int = 0xFFFFFFFF) -> str:
        return _ip(rnd.randint(lo, hi))

    def mcast() -> str:
        return ip(0xE0000000, 0xEFFFFFFF)

    frames = []
    for i in range(size):
        src = ip()
        kind = i % 7
        if kind == 0:
            frames.append(build_v2_report(mcast(), src, SRC_MAC))
        elif kind == 1:
            frames.append(build_v2_leave(mcast(), src, SRC_MAC))
        elif kind in (2, 3):
            group = "0.0.0.0" if rnd.random() < 0.5 else mcast()
            frames.append(build_query(kind - 1, src, SRC_MAC, group=group,
                                      max_resp_s=rnd.randint(1, 255) / 10))
        elif kind == 4:
            group = mcast()
            frames.append(build_query(3, src, SRC_MAC, group=group,
                                      max_resp_s=rnd.randint(0, MAX_CODE_VALUE) / 10,
                                      qrv=rnd.randint(0, 7), qqic_s=rnd.randint(0, 300),
                                      sources=[ip() for _ in range(rnd.randint(0, 4))],
                                      s_flag=rnd.random() < 0.5))
        else:
            records = [GroupRecord(rnd.choice(list(RecordType)), mcast(),
                                   tuple(ip() for _ in range(rnd.randint(0, 4))))
                       for _ in range(rnd.randint(1, 6))]
            frames.extend(build_v3_reports(records, src, SRC_MAC))
    return tuple(frames)


CORPUS = _corpus()


# ------------------------------------------------------------------ frame layout


def _u16(frame: bytearray, off: int) -> int | None:
    return struct.unpack_from("!H", frame, off)[0] if off + 2 <= len(frame) else None


def _put(frame: bytearray, off: int, value: bytes) -> None:
    """Overwrite bytes at `off`, as far as the frame reaches."""
    end = min(len(frame), off + len(value))
    if off < end:
        frame[off:end] = value[:end - off]


def ihl(frame: bytearray | bytes) -> int:
    return (frame[IP_OFF] & 0x0F) * 4 if len(frame) > IP_OFF else 0


def total_length(frame: bytearray | bytes) -> int:
    return struct.unpack_from("!H", frame, IP_OFF + 2)[0] if len(frame) >= IP_OFF + 4 else 0


def igmp_off(frame: bytearray | bytes) -> int:
    return IP_OFF + ihl(frame)


def igmp_end(frame: bytearray | bytes) -> int:
    return IP_OFF + total_length(frame)


def inet_checksum(data: bytes) -> int:
    """RFC 1071, written here again so that the inputs do not lean on the code under test."""
    padded = data + b"\x00" * (len(data) % 2)
    total = sum(int.from_bytes(padded[i:i + 2], "big") for i in range(0, len(padded), 2))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def fix_checksums(frame: bytearray, igmp: bool = True, ip: bool = True) -> None:
    """Recompute the IGMP and IPv4 header checksums where the header fields allow it."""
    start, end = igmp_off(frame), igmp_end(frame)
    if igmp and ihl(frame) >= 20 and start + 4 <= end <= len(frame):
        frame[start + 2:start + 4] = b"\x00\x00"
        frame[start + 2:start + 4] = struct.pack("!H", inet_checksum(bytes(frame[start:end])))
    if ip and ihl(frame) >= 20 and igmp_off(frame) <= len(frame):
        frame[IP_OFF + 10:IP_OFF + 12] = b"\x00\x00"
        header = bytes(frame[IP_OFF:igmp_off(frame)])
        frame[IP_OFF + 10:IP_OFF + 12] = struct.pack("!H", inet_checksum(header))


def record_offsets(frame: bytearray | bytes) -> list[int]:
    """Where the IGMPv3 group records of a report start, walking the counts it carries."""
    start, out = igmp_off(frame), []
    end = min(len(frame), max(igmp_end(frame), start))
    nrec = _u16(bytearray(frame), start + 6) or 0
    off = start + 8
    while len(out) < nrec and off + 8 <= end:
        out.append(off)
        off += 8 + 4 * frame[off + 1] + 4 * struct.unpack_from("!H", frame, off + 2)[0]
    return out


def wrap_igmp(payload: bytes, src: str = "10.77.1.2", dst: str = IGMPV3_ROUTERS,
              fix_igmp: bool = True) -> bytes:
    """An Ethernet/IPv4 frame (Router Alert, valid header checksum) around any IGMP payload."""
    ip_header = struct.pack("!BBHHHBBH4s4s", 0x46, 0xC0, 24 + len(payload), 0, 0x4000, 1, 2, 0,
                            ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    frame = bytearray(b"\x01\x00\x5e\x00\x00\x16" + bytes.fromhex(SRC_MAC.replace(":", ""))
                      + b"\x08\x00" + ip_header + b"\x94\x04\x00\x00" + payload)
    fix_checksums(frame, igmp=fix_igmp)
    return bytes(frame)


# ------------------------------------------------------------------ mutations
# A mutation edits a frame in place, asking `Choices` for every decision: hypothesis's draws
# (`mutated_frames`: shrinks field by field) or the bytes of a mutation program (`programmed`:
# one draw for a whole mutation, ten times cheaper, for the slow tier's volume).


class Choices(Protocol):
    def int(self, lo: int, hi: int) -> int: ...

    def bytes(self, lo: int, hi: int) -> bytes: ...


class DrawChoices:
    def __init__(self, draw: st.DrawFn) -> None:
        self._draw = draw

    def int(self, lo: int, hi: int) -> int:
        return self._draw(st.integers(lo, hi))

    def bytes(self, lo: int, hi: int) -> bytes:
        return self._draw(st.binary(min_size=lo, max_size=hi))


class ProgramChoices:
    """Choices read from a byte string, libFuzzer style; a used-up program reads zeros."""

    def __init__(self, program: bytes) -> None:
        self._program = program
        self._pos = 0

    def _take(self, n: int) -> bytes:
        out = self._program[self._pos:self._pos + n]
        self._pos += n
        return out.ljust(n, b"\x00")

    def int(self, lo: int, hi: int) -> int:
        width = max(1, ((hi - lo).bit_length() + 7) // 8)
        return lo + int.from_bytes(self._take(width), "big") % (hi - lo + 1)

    def bytes(self, lo: int, hi: int) -> bytes:
        return self._take(self.int(lo, hi))


def _pick(c: Choices, specials: Sequence[int], lo: int, hi: int) -> int:
    """A value worth trying (half the time) or any value of the field."""
    return c.int(lo, hi) if c.int(0, 1) else specials[c.int(0, len(specials) - 1)]


def _put16(f: bytearray, off: int, value: int) -> None:
    _put(f, off, struct.pack("!H", value & 0xFFFF))


def _ip_bytes(c: Choices) -> bytes:
    return bytes([_pick(c, [0, 224, 239, 10, 255], 0, 255)]) + c.bytes(3, 3)


def _truncate(c: Choices, f: bytearray) -> None:
    del f[c.int(0, len(f)):]


def _pad(c: Choices, f: bytearray) -> None:
    f.extend(c.bytes(1, 64))


def _set_byte(c: Choices, f: bytearray) -> None:
    if f:
        f[c.int(0, len(f) - 1)] = c.int(0, 255)


def _flip_bit(c: Choices, f: bytearray) -> None:
    if f:
        f[c.int(0, len(f) - 1)] ^= 1 << c.int(0, 7)


def _ethertype(c: Choices, f: bytearray) -> None:
    _put16(f, 12, _pick(c, [0x8100, 0x86DD, 0x0806], 0, 0xFFFF))


def _ip_version(c: Choices, f: bytearray) -> None:
    if len(f) > IP_OFF:
        f[IP_OFF] = c.int(0, 15) << 4 | f[IP_OFF] & 0x0F


def _ihl(c: Choices, f: bytearray) -> None:
    if len(f) > IP_OFF:
        f[IP_OFF] = f[IP_OFF] & 0xF0 | c.int(0, 15)


def _ip_options(c: Choices, f: bytearray) -> None:
    """Insert IPv4 options (any bytes, whole words) and grow the header and total lengths."""
    if len(f) < IP_OFF + 20:
        return
    words = c.int(1, 10)
    at = IP_OFF + 20 + c.int(0, max(0, ihl(f) - 20))
    f[at:at] = c.bytes(4 * words, 4 * words)
    f[IP_OFF] = f[IP_OFF] & 0xF0 | min(15, (f[IP_OFF] & 0x0F) + words)
    _put16(f, IP_OFF + 2, total_length(f) + 4 * words)


def _total_length(c: Choices, f: bytearray) -> None:
    _put16(f, IP_OFF + 2, total_length(f) + c.int(-12, 12) if c.int(0, 1) else c.int(0, 0xFFFF))


def _fragment(c: Choices, f: bytearray) -> None:
    _put16(f, IP_OFF + 6, _pick(c, [0x2000, 0x0001, 0x8000], 0, 0xFFFF))


def _protocol(c: Choices, f: bytearray) -> None:
    _put(f, IP_OFF + 9, bytes([_pick(c, [17, 6, 103], 0, 255)]))


IGMP_TYPES = (0x11, 0x12, 0x16, 0x17, 0x22)


def _igmp_type(c: Choices, f: bytearray) -> None:
    _put(f, igmp_off(f), bytes([_pick(c, IGMP_TYPES, 0, 255)]))


def _igmp_code(c: Choices, f: bytearray) -> None:
    _put(f, igmp_off(f) + 1, bytes([c.int(0, 255)]))


def _group(c: Choices, f: bytearray) -> None:
    _put(f, igmp_off(f) + 4, _ip_bytes(c))


def _record_count(c: Choices, f: bytearray) -> None:
    """IGMPv3 report: the number of group records (bytes 6-7 of the message)."""
    _put16(f, igmp_off(f) + 6, _pick(c, range(65), 0, 0xFFFF))


def _query_sources(c: Choices, f: bytearray) -> None:
    """IGMPv3 query: the number of sources (bytes 10-11 of the message)."""
    _put16(f, igmp_off(f) + 10, _pick(c, range(65), 0, 0xFFFF))


def _record_field(c: Choices, f: bytearray) -> None:
    """One field of one IGMPv3 group record: type, aux data length, source count or group."""
    offsets = record_offsets(f)
    if not offsets:
        return
    off = offsets[c.int(0, len(offsets) - 1)]
    field = c.int(0, 3)
    if field == 0:
        _put(f, off, bytes([_pick(c, range(9), 0, 255)]))  # record type
    elif field == 1:
        _put(f, off + 1, bytes([_pick(c, range(5), 0, 255)]))  # aux data words
    elif field == 2:
        _put16(f, off + 2, _pick(c, range(65), 0, 0xFFFF))  # number of sources
    else:
        _put(f, off + 4, _ip_bytes(c))


def _grow_igmp(c: Choices, f: bytearray) -> None:
    """Append bytes to the IGMP message (sources, aux data, trailing junk) and its length."""
    end = min(len(f), igmp_end(f))
    extra = c.bytes(1, 48)
    f[end:end] = extra
    _put16(f, IP_OFF + 2, total_length(f) + len(extra))


def _shrink_igmp(c: Choices, f: bytearray) -> None:
    """Cut bytes off the end of the IGMP message and off the IPv4 total length alike."""
    end = min(len(f), igmp_end(f))
    cut = c.int(1, 16)
    del f[max(0, end - cut):end]
    _put16(f, IP_OFF + 2, max(0, total_length(f) - cut))


# Deepest first: a program of zeros (where shrinking ends) edits a group record, not the frame.
# The fields behind the checksum, which only these mutations reach, are listed more than once.
MUTATIONS: tuple[Callable[[Choices, bytearray], None], ...] = (
    _record_field, _record_count, _query_sources, _grow_igmp, _shrink_igmp, _group, _igmp_type,
    _record_field, _record_count, _query_sources, _group, _igmp_type, _record_field,
    _igmp_code, _ip_options, _total_length, _ihl, _fragment, _protocol, _ip_version, _ethertype,
    _set_byte, _flip_bit, _pad, _truncate,
)
FIXES = ((True, True), (True, True), (True, True), (True, False), (False, True), (False, False))


def mutate(frame: bytes, c: Choices) -> bytes:
    """One to four mutations, then the checksums fixed most of the time (igmp, ip)."""
    f = bytearray(frame)
    for _ in range(c.int(1, 4)):
        MUTATIONS[c.int(0, len(MUTATIONS) - 1)](c, f)
    igmp, ip = FIXES[c.int(0, len(FIXES) - 1)]
    fix_checksums(f, igmp=igmp, ip=ip)
    return bytes(f)


@st.composite
def mutated_frames(draw: st.DrawFn, base: st.SearchStrategy[bytes] | None = None) -> bytes:
    """A valid frame (from `CORPUS` or freshly built) mutated by hypothesis's draws."""
    if base is None:
        base = st.one_of(st.sampled_from(CORPUS), valid_messages().map(lambda b: b.frame))
    return mutate(draw(base), DrawChoices(draw))


def programmed(base: st.SearchStrategy[bytes] | None = None) -> st.SearchStrategy[bytes]:
    """A valid frame (from `CORPUS` by default) mutated by a program of random bytes."""
    return st.builds(lambda frame, program: mutate(frame, ProgramChoices(program)),
                     st.sampled_from(CORPUS) if base is None else base,
                     st.binary(min_size=2, max_size=40))


@dataclass(frozen=True)
class Raw:
    """A frame laid out here field by field, and the message it must parse to when every field
    was left valid (None when one was not: then any reason, or a message, may come back)."""

    frame: bytes
    expected: IgmpMessage | None


def _packed(ips: Sequence[str]) -> bytes:
    return b"".join(ipaddress.IPv4Address(s).packed for s in ips)


def _is_group(ip: str) -> bool:
    return ipaddress.IPv4Address(ip).is_multicast


@st.composite
def raw_igmp(draw: st.DrawFn) -> Raw:
    """IGMP messages written without the builders, with values they refuse: any group (not only
    multicast), any record type, aux data, record and source counts one off the truth, a
    message a few bytes short or long; or all of it right, with the message it must parse to."""
    # Half the messages aim to be valid (else all fields right at once would be rare); in the
    # others each field may be wrong, but most are right, so that the checks behind it run.
    aim_valid = draw(st.booleans())
    some_group = MULTICAST_IPS if aim_valid else MULTICAST_IPS | ANY_IPS
    groups = st.just("0.0.0.0") | some_group
    off_by = st.just(0) if aim_valid else st.sampled_from([0, 0, -1, 1])
    src, group = draw(ANY_IPS), draw(groups)
    kind = draw(st.sampled_from(["v3 report", "v3 query", "v1/v2"]))
    expected: IgmpMessage | None
    if kind == "v1/v2":
        igmp_type, code = draw(st.sampled_from(IGMP_TYPES)), draw(st.integers(0, 255))
        payload = bytes([igmp_type, code, 0, 0]) + ipaddress.IPv4Address(group).packed
        simple = {0x12: ReportV1, 0x16: ReportV2, 0x17: LeaveV2}
        if igmp_type in simple:
            expected = simple[igmp_type](group, src=src, dst=IGMPV3_ROUTERS) \
                if _is_group(group) else None
        elif igmp_type == 0x11 and (group == "0.0.0.0" or _is_group(group)):
            expected = Query(1 if code == 0 else 2, group, 10.0 if code == 0 else code / 10,
                             src=src, dst=IGMPV3_ROUTERS)
        else:
            expected = None  # a v3 message of 8 bytes: not this generator's business
    elif kind == "v3 query":
        sources = draw(st.lists(ANY_IPS, max_size=4))
        code, flags, qqic = (draw(st.integers(0, 255)) for _ in range(3))
        delta = draw(off_by)
        payload = struct.pack("!BBH4sBBH", 0x11, code, 0, ipaddress.IPv4Address(group).packed,
                              flags, qqic, max(0, len(sources) + delta)) + _packed(sources)
        valid = delta == 0 and (group == "0.0.0.0" or _is_group(group))
        expected = Query(3, group, decode_code(code) / 10, tuple(sources), flags & 0x07,
                         decode_code(qqic), bool(flags & 0x08), src=src,
                         dst=IGMPV3_ROUTERS) if valid else None
    else:
        body, records, valid = b"", [], True
        count = draw(st.integers(0, 5))
        for _ in range(count):
            rtype = draw(st.integers(1, 6) | st.integers(0, 255))
            rgroup = draw(some_group)
            sources = draw(st.lists(ANY_IPS, max_size=3))
            aux, delta = draw(st.integers(0, 2)), draw(off_by)
            body += struct.pack("!BBH4s", rtype, aux, max(0, len(sources) + delta),
                                ipaddress.IPv4Address(rgroup).packed)
            body += _packed(sources) + draw(st.binary(min_size=4 * aux, max_size=4 * aux))
            valid = valid and delta == 0 and _is_group(rgroup)
            if 1 <= rtype <= 6:
                records.append(GroupRecord(RecordType(rtype), rgroup, tuple(sources)))
        delta = draw(off_by)
        payload = struct.pack("!BBHHH", 0x22, 0, 0, 0, max(0, count + delta)) + body
        expected = ReportV3(tuple(records), src=src) if valid and delta == 0 else None
    if not aim_valid:
        cut, extra = draw(st.integers(0, 3)), draw(st.binary(max_size=3))
        if cut or extra:
            payload, expected = payload[:len(payload) - cut] + extra, None
    fix = aim_valid or draw(st.sampled_from([True, True, True, False]))
    return Raw(wrap_igmp(payload, src=src, fix_igmp=fix), expected if fix else None)


IGMP_PAYLOADS = st.one_of(
    st.binary(max_size=80),
    st.tuples(st.sampled_from([0x11, 0x12, 0x16, 0x17, 0x22]),
              st.binary(min_size=7, max_size=80))
    .map(lambda t: bytes([t[0]]) + t[1]),
)
"""IGMP messages of any content, most starting with a known type byte and at least 8 bytes long
(shorter ones only reach the length check)."""


def any_frames() -> st.SearchStrategy[bytes]:
    """Everything a punt may carry: noise, IGMP noise in valid IPv4, mutated and valid frames."""
    return st.one_of(
        st.binary(max_size=120),
        st.builds(wrap_igmp, IGMP_PAYLOADS, fix_igmp=st.booleans()),
        raw_igmp().map(lambda r: r.frame),
        mutated_frames(),
        programmed(),
        st.sampled_from(CORPUS),
        valid_messages().map(lambda b: b.frame),
    )


# ------------------------------------------------------------------ tiers


class Tally:
    """What a property checked: each example calls `add` once, with the inputs it fed in."""

    def __init__(self) -> None:
        self.examples = 0
        self.inputs = 0

    def add(self, inputs: int = 1) -> None:
        self.examples += 1
        self.inputs += inputs


def tiers(prop: Callable[..., None], *, fast: int, slow: int, tally: Tally,
          **strategies: st.SearchStrategy[Any]) -> tuple[Callable[[], None], Callable[[], None]]:
    """A fast and a `slow` test of one property, with `fast` and `slow` examples.

    Both run from a fixed seed (the same inputs on every run, in CI too) and keep no example
    database. Each prints how many examples and inputs it checked (`pytest -s`) and fails if
    hypothesis ran fewer examples than the budget: a tier that quietly checks less than it
    claims proves less.
    """

    def make(budget: int, salt: int) -> Callable[[], None]:
        run = seed(salt)(settings(max_examples=budget, deadline=None, database=None,
                                  suppress_health_check=[HealthCheck.too_slow,
                                                         HealthCheck.data_too_large],
                                  print_blob=True)(given(**strategies)(prop)))

        def test() -> None:
            examples, inputs = tally.examples, tally.inputs
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            examples, inputs = tally.examples - examples, tally.inputs - inputs
            print(f"{prop.__name__}: {examples} examples, {inputs} inputs, "
                  f"{time.perf_counter() - wall:.1f} s ({time.process_time() - cpu:.1f} s CPU)")
            assert examples >= budget, f"only {examples} of {budget} examples were run"

        test.__doc__ = prop.__doc__
        return test

    return make(fast, 1), pytest.mark.slow(make(slow, 2))
