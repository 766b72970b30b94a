"""igmp.packets under hypothesis: the parser never fails in an unplanned way, and what it accepts
is what the wire said.

Inputs: arbitrary bytes, arbitrary IGMP payloads in a valid IPv4 header, and structure-aware
mutations of frames built by the module's own builders (see ``igmpfuzz``). Every property runs
in two tiers: a fast one always, and a ``slow`` one with many more examples (CI runs both).
"""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import strategies as st
from igmpfuzz import (
    ANY_IPS,
    GROUP_RECORDS,
    IGMP_PAYLOADS,
    IP_OFF,
    SRC_MAC,
    Raw,
    Tally,
    igmp_end,
    igmp_off,
    mutated_frames,
    programmed,
    raw_igmp,
    record_offsets,
    tiers,
    valid_messages,
    wrap_igmp,
)

from agent.multicast.igmp.membership import FilterMode, SourceFilter, transition
from agent.multicast.igmp.packets import (
    REASONS,
    TYPE_QUERY,
    TYPE_V1_REPORT,
    TYPE_V2_LEAVE,
    TYPE_V2_REPORT,
    GroupRecord,
    IgmpMessage,
    LeaveV2,
    MalformedIgmp,
    Query,
    RecordType,
    ReportV1,
    ReportV2,
    ReportV3,
    build_v2_leave,
    build_v2_report,
    build_v3_reports,
    parse_frame,
)

TALLY = Tally()


def parse_or_reason(frame: bytes) -> IgmpMessage | str:
    """The parsed message, or the reason of the `MalformedIgmp`; any other exception escapes."""
    try:
        return parse_frame(frame)
    except MalformedIgmp as e:
        assert e.reason in REASONS, e.reason
        return e.reason


def is_multicast(ip: str) -> bool:
    return ipaddress.IPv4Address(ip).is_multicast


def ntoa(raw: bytes) -> str:
    return str(ipaddress.IPv4Address(raw))


def check_message_against_wire(msg: IgmpMessage, frame: bytes) -> None:
    """What the parser promises about a message it accepted, read back from the frame's bytes
    with offsets computed here (`igmpfuzz`), not by the parser: addresses, type, group, the
    v3 query's sources, every known group record of a v3 report with its sources, in order."""
    start, end = igmp_off(frame), igmp_end(frame)
    igmp = frame[start:end]
    assert msg.src == ntoa(frame[IP_OFF + 12:IP_OFF + 16])
    assert msg.dst == ntoa(frame[IP_OFF + 16:IP_OFF + 20])
    if isinstance(msg, Query):
        assert igmp[0] == TYPE_QUERY and msg.group == ntoa(igmp[4:8])
        assert msg.group == "0.0.0.0" or is_multicast(msg.group)
        assert msg.max_resp_s >= 0 and msg.qqic_s >= 0
        if msg.version in (1, 2):
            assert len(igmp) == 8 and msg.sources == () and msg.qrv == 0 and not msg.s_flag
            assert msg.max_resp_s == (10.0 if msg.version == 1 else igmp[1] / 10)
        else:
            assert msg.version == 3 and len(igmp) >= 12 and 0 <= msg.qrv <= 7
            (nsrc,) = struct.unpack_from("!H", igmp, 10)
            assert msg.sources == tuple(ntoa(igmp[i:i + 4]) for i in range(12, 12 + 4 * nsrc, 4))
            assert 12 + 4 * nsrc <= len(igmp)
    elif isinstance(msg, ReportV1 | ReportV2 | LeaveV2):
        expected = {ReportV1: TYPE_V1_REPORT, ReportV2: TYPE_V2_REPORT, LeaveV2: TYPE_V2_LEAVE}
        assert igmp[0] == expected[type(msg)]
        assert is_multicast(msg.group) and msg.group == ntoa(igmp[4:8])
    else:
        assert isinstance(msg, ReportV3)
        (nrec,) = struct.unpack_from("!H", igmp, 6)
        offsets = record_offsets(frame)
        assert len(offsets) == nrec  # every record the count announces is there
        wire = []
        for off in offsets:
            (nsrc,) = struct.unpack_from("!H", frame, off + 2)
            if frame[off] in KNOWN_RECORD_TYPES:  # unknown types are skipped (RFC 3376 4.2.12)
                wire.append(GroupRecord(RecordType(frame[off]), ntoa(frame[off + 4:off + 8]),
                                        tuple(ntoa(frame[i:i + 4])
                                              for i in range(off + 8, off + 8 + 4 * nsrc, 4))))
        assert msg.records == tuple(wire)
        assert all(is_multicast(r.group) for r in msg.records)


KNOWN_RECORD_TYPES = frozenset(int(k) for k in RecordType)


def check_reencoding(msg: IgmpMessage) -> None:
    """An accepted report says the same thing once re-encoded by the builders and re-parsed."""
    if isinstance(msg, ReportV2 | LeaveV2):
        build = build_v2_report if isinstance(msg, ReportV2) else build_v2_leave
        again = parse_frame(build(msg.group, msg.src, SRC_MAC))
        assert type(again) is type(msg) and again.group == msg.group
    elif isinstance(msg, ReportV3) and msg.records:
        frames = build_v3_reports(msg.records, msg.src, SRC_MAC, mtu=0xFFFF)
        if len(frames) == 1:  # split records change kind: the split property's case
            again = parse_frame(frames[0])
            assert isinstance(again, ReportV3) and again.records == msg.records


# ------------------------------------------------------------------ properties


def arbitrary_bytes_give_a_message_or_a_known_reason(frames: list[bytes]) -> None:
    """Any bytes at all: the parser returns a message consistent with them or raises
    `MalformedIgmp` with a reason from `REASONS`; nothing else escapes."""
    TALLY.add(len(frames))
    for frame in frames:
        result = parse_or_reason(frame)
        if not isinstance(result, str):
            check_message_against_wire(result, frame)


def igmp_noise_in_valid_ipv4_is_parsed_or_refused_by_reason(frames: list[bytes]) -> None:
    """Any IGMP payload behind a valid Ethernet/IPv4 header (IGMP checksum fixed or not): a
    message consistent with its bytes and re-encodable, or a known reason of the IGMP layer."""
    TALLY.add(len(frames))
    for frame in frames:
        result = parse_or_reason(frame)
        if isinstance(result, str):
            assert result not in ("not_ipv4", "not_igmp", "bad_ip_header"), result
        else:
            check_message_against_wire(result, frame)
            check_reencoding(result)


def igmp_written_field_by_field_parses_as_laid_out(raws: list[Raw]) -> None:
    """IGMP written field by field without the builders: when every field was left valid
    (aux data and unknown record types included), the parser returns exactly the message laid
    out; with a count one off, a foreign group, a few bytes cut or added, a message consistent
    with its bytes, or a known reason of the IGMP layer."""
    TALLY.add(len(raws))
    for raw in raws:
        result = parse_or_reason(raw.frame)
        if raw.expected is not None:
            assert result == raw.expected
        elif isinstance(result, str):
            assert result not in ("not_ipv4", "not_igmp", "bad_ip_header"), result
        else:
            check_message_against_wire(result, raw.frame)
            check_reencoding(result)


def mutated_valid_frames_are_parsed_or_refused_by_reason(frame: bytes) -> None:
    """Valid frames with lengths, counts, checksums, options and types rewritten, cut or
    extended: a message consistent with its bytes (and re-encodable), or a known reason."""
    TALLY.add()
    result = parse_or_reason(frame)
    if not isinstance(result, str):
        check_message_against_wire(result, frame)
        check_reencoding(result)


def programmed_mutations_are_parsed_or_refused_by_reason(frames: list[bytes]) -> None:
    """The same mutations driven by byte programs over the corpus of valid frames, in bulk:
    a message consistent with its bytes (and re-encodable), or a known reason."""
    TALLY.add(len(frames))
    for frame in frames:
        result = parse_or_reason(frame)
        if not isinstance(result, str):
            check_message_against_wire(result, frame)
            check_reencoding(result)


def valid_frames_round_trip_and_ignore_ethernet_padding(built, padding: bytes) -> None:
    """A frame from the builders parses to exactly the message it was built from, with any
    Ethernet padding after the IPv4 total length."""
    TALLY.add()
    assert parse_frame(built.frame) == built.message
    assert parse_frame(built.frame + padding) == built.message


def cutting_a_valid_frame_before_its_end_is_short(built, cut: int) -> None:
    """A valid frame truncated anywhere before the end of its IPv4 packet is refused as
    `short`, whatever layer the cut falls in."""
    TALLY.add()
    end = IP_OFF + struct.unpack_from("!H", built.frame, IP_OFF + 2)[0]
    assert parse_or_reason(built.frame[:cut % end]) == "short"


# IPv4 header bytes that only the header checksum looks at: TOS, identification, TTL, protocol
# (checked after the checksum), the checksum itself, addresses, and the options.
CHECKSUM_ONLY_BYTES = (1, 4, 5, 8, 9, 10, 11, *range(12, 20))


def any_bit_flip_behind_a_checksum_is_caught_by_it(built, bit: int, in_ip_header: bool) -> None:
    """One flipped bit anywhere in the IGMP message (type, counts, groups, sources) is caught
    by the IGMP checksum before any field is trusted (`bad_checksum`); one in an IPv4 header
    field that only the header checksum covers, options included, is `bad_ip_header`."""
    TALLY.add()
    frame = bytearray(built.frame)
    if in_ip_header:
        options = range(20, igmp_off(frame) - IP_OFF)
        offsets = [IP_OFF + i for i in (*CHECKSUM_ONLY_BYTES, *options)]
        expected = "bad_ip_header"
    else:
        offsets = list(range(igmp_off(frame), igmp_end(frame)))
        expected = "bad_checksum"
    bit %= 8 * len(offsets)
    frame[offsets[bit // 8]] ^= 0x80 >> bit % 8
    assert parse_or_reason(bytes(frame)) == expected


def split_v3_reports_give_the_state_of_the_unsplit_records(
        records: list[GroupRecord], mtu: int, start_filters: dict[str, SourceFilter]) -> None:
    """Records spread over several reports by a small MTU: every frame fits the MTU, and
    applying the parsed frames in order leaves every group in the state the original records
    give, from any starting filter (a split record continues as ALLOW/BLOCK)."""
    TALLY.add()
    frames = build_v3_reports(records, "10.77.1.2", SRC_MAC, mtu=mtu)
    parsed = [parse_frame(f) for f in frames]
    assert all(igmp_end(f) - IP_OFF <= mtu for f in frames)

    def fold(recs: list[GroupRecord]) -> dict[str, SourceFilter]:
        state = dict(start_filters)
        for r in recs:
            state[r.group] = transition(state.get(r.group, NO_FILTER), r.kind, r.sources)
        return state

    assert fold([r for m in parsed for r in m.records]) == fold(records)


NO_FILTER = SourceFilter(FilterMode.INCLUDE)
FILTERS = st.builds(SourceFilter, st.sampled_from(FilterMode), st.frozensets(ANY_IPS, max_size=4))

# Budgets, in examples: the fast tier checks about 5,000 inputs (4 s), the slow one about
# 99,500 (40 s CPU). Hypothesis spends far more per draw and per example than the parser does
# per input, so the cheap properties take a batch of inputs per example and the bulk of the
# mutations is driven by byte programs (one draw each).
test_arbitrary_bytes, test_arbitrary_bytes_slow = tiers(
    arbitrary_bytes_give_a_message_or_a_known_reason, fast=200, slow=5_000, tally=TALLY,
    frames=st.lists(st.binary(max_size=120), min_size=1, max_size=20))
test_igmp_noise, test_igmp_noise_slow = tiers(
    igmp_noise_in_valid_ipv4_is_parsed_or_refused_by_reason, fast=200, slow=2_500, tally=TALLY,
    frames=st.lists(st.builds(wrap_igmp, IGMP_PAYLOADS, fix_igmp=st.booleans()), min_size=1,
                    max_size=10))
test_raw_igmp, test_raw_igmp_slow = tiers(
    igmp_written_field_by_field_parses_as_laid_out, fast=200, slow=1_000, tally=TALLY,
    raws=st.lists(raw_igmp(), min_size=1, max_size=5))
test_mutated_frames, test_mutated_frames_slow = tiers(
    mutated_valid_frames_are_parsed_or_refused_by_reason, fast=300, slow=2_000, tally=TALLY,
    frame=mutated_frames())
test_programmed_mutations, test_programmed_mutations_slow = tiers(
    programmed_mutations_are_parsed_or_refused_by_reason, fast=100, slow=5_000, tally=TALLY,
    frames=st.lists(programmed(), min_size=1, max_size=20))
test_valid_round_trip, test_valid_round_trip_slow = tiers(
    valid_frames_round_trip_and_ignore_ethernet_padding, fast=150, slow=1_000, tally=TALLY,
    built=valid_messages(), padding=st.binary(max_size=40))
test_truncation, test_truncation_slow = tiers(
    cutting_a_valid_frame_before_its_end_is_short, fast=100, slow=1_000, tally=TALLY,
    built=valid_messages(), cut=st.integers(0, 0xFFFF))
test_bit_flips, test_bit_flips_slow = tiers(
    any_bit_flip_behind_a_checksum_is_caught_by_it, fast=100, slow=1_000, tally=TALLY,
    built=valid_messages(), bit=st.integers(0, 0xFFFF), in_ip_header=st.booleans())
test_v3_split, test_v3_split_slow = tiers(
    split_v3_reports_give_the_state_of_the_unsplit_records, fast=100, slow=500, tally=TALLY,
    records=st.lists(GROUP_RECORDS | st.builds(
        GroupRecord, st.sampled_from(RecordType), st.sampled_from(["239.1.1.1", "239.2.2.2"]),
        st.lists(ANY_IPS, max_size=40).map(tuple)), min_size=1, max_size=8),
    mtu=st.integers(24 + 8 + 8 + 4, 300),
    start_filters=st.dictionaries(st.sampled_from(["239.1.1.1", "239.2.2.2"]), FILTERS))
