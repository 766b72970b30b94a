"""igmp.packets: parsing real kernel frames, malformed input, builders, and a real kernel
answering the queries we build (lab test, root)."""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
import struct
import time
from pathlib import Path

import pytest

from agent.multicast.igmp.membership import NO_SOURCE, Membership, transition
from agent.multicast.igmp.packets import (
    REASONS,
    GroupRecord,
    LeaveV2,
    MalformedIgmp,
    Query,
    RecordType,
    ReportV1,
    ReportV2,
    ReportV3,
    build_query,
    build_v2_leave,
    build_v2_report,
    build_v3_reports,
    checksum,
    decode_code,
    encode_code,
    multicast_mac,
    parse_frame,
)

DATA = Path(__file__).parent / "data"
HOST = "10.88.0.2"  # the capturing lab's addresses (data/capture.py)
SRC_IP, SRC_MAC = "10.77.0.254", "02:00:00:00:00:fe"
IS_IN, IS_EX, TO_IN, TO_EX, ALLOW, BLOCK = RecordType


def load(name: str) -> list[bytes]:
    lines = (DATA / f"{name}.hex").read_text().splitlines()
    return [bytes.fromhex(line) for line in lines if line and not line.startswith("#")]


def ip_len(frame: bytes) -> int:
    return struct.unpack_from("!H", frame, 16)[0]


# ------------------------------------------------------------------ captured frames

def test_v1_report_from_kernel() -> None:
    (frame,) = load("v1_join_leave")
    assert parse_frame(frame) == ReportV1("239.1.0.1", src=HOST, dst="239.1.0.1")


def test_v2_report_and_leave_from_kernel() -> None:
    report, leave = (parse_frame(f) for f in load("v2_join_leave"))
    assert report == ReportV2("239.1.0.2", src=HOST, dst="239.1.0.2")
    assert leave == LeaveV2("239.1.0.2", src=HOST, dst="224.0.0.2")


def test_v3_any_source_join_block_leave_from_kernel() -> None:
    msgs = [parse_frame(f) for f in load("v3_asm")]
    assert all(isinstance(m, ReportV3) and m.dst == "224.0.0.22" and m.src == HOST for m in msgs)
    assert [m.records for m in msgs] == [  # the kernel sends every state change twice
        (GroupRecord(TO_EX, "239.1.0.3"),)] * 2 + [
        (GroupRecord(BLOCK, "239.1.0.3", ("10.88.0.9",)),)] * 2 + [
        (GroupRecord(TO_IN, "239.1.0.3"),)] * 2


def test_v3_source_specific_from_kernel() -> None:
    msgs = [parse_frame(f) for f in load("v3_ssm")]
    got = [(r.kind, r.sources) for m in msgs for r in m.records]
    assert got == [(ALLOW, ("10.88.0.1",))] * 2 + [(ALLOW, ("10.88.0.5",))] * 2 + [
        (BLOCK, ("10.88.0.1",))] * 2 + [(BLOCK, ("10.88.0.5",))] * 2
    assert {r.group for m in msgs for r in m.records} == {"232.1.1.1"}


def test_our_query_as_the_host_saw_it() -> None:
    (frame,) = load("query_v3_seen_by_host")
    assert frame == build_query(3, "10.88.0.1", "02:88:00:00:00:01", max_resp_s=0.5)
    assert parse_frame(frame) == Query(3, "0.0.0.0", 0.5, (), 2, 125, False,
                                       src="10.88.0.1", dst="224.0.0.1")


def test_v3_query_answer_from_kernel() -> None:
    query, answer = (parse_frame(f) for f in load("v3_query_response"))
    assert isinstance(query, Query) and query.version == 3
    assert answer == ReportV3((GroupRecord(IS_IN, "232.1.1.2", ("10.88.0.1",)),
                               GroupRecord(IS_EX, "239.1.0.4")), src=HOST)


def test_v2_query_answer_from_kernel_drops_sources() -> None:
    query, *rest = (parse_frame(f) for f in load("v2_query_response"))
    assert query == Query(2, "0.0.0.0", 0.5, src="10.88.0.1", dst="224.0.0.1")
    # A v3 host in v2 compatibility mode reports its source-specific group as a v2 join.
    assert sorted(rest, key=repr) == [
        LeaveV2("239.1.0.4", src=HOST),
        ReportV2("232.1.1.2", src=HOST, dst="232.1.1.2"),
        ReportV2("239.1.0.4", src=HOST, dst="239.1.0.4")]


def test_ethernet_padding_is_ignored() -> None:
    (frame,) = load("v1_join_leave")
    assert len(frame) < 60
    assert parse_frame(frame + b"\xaa" * (60 - len(frame))) == parse_frame(frame)


# ------------------------------------------------------------------ malformed input

def raw_frame(igmp: bytes, *, proto: int = 2, ihl_words: int = 6, frag: int = 0x4000,
              ethertype: int = 0x0800, fix_igmp: bool = True, fix_ip: bool = True) -> bytes:
    """An Ethernet/IPv4 frame around `igmp`, built independently of the module under test."""
    if fix_igmp:
        igmp = igmp[:2] + b"\x00\x00" + igmp[4:]
        igmp = igmp[:2] + struct.pack("!H", checksum(igmp)) + igmp[4:]
    opts = b"\x94\x04\x00\x00" * (ihl_words - 5) if ihl_words >= 5 else b""
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl_words, 0xC0, 20 + len(opts) + len(igmp), 0,
                      frag, 1, proto, 0, bytes([10, 0, 0, 1]), bytes([224, 0, 0, 22])) + opts
    if fix_ip:
        hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
    return b"\x01\x00\x5e\x00\x00\x16" + b"\x02" * 6 + struct.pack("!H", ethertype) + hdr + igmp


def v3_report(nrec: int, body: bytes) -> bytes:
    return struct.pack("!BBHHH", 0x22, 0, 0, 0, nrec) + body


def record(rtype: int, group: bytes, sources: list[bytes], nsrc: int | None = None,
           aux: int = 0) -> bytes:
    n = len(sources) if nsrc is None else nsrc
    return struct.pack("!BBH4s", rtype, aux, n, group) + b"".join(sources)


G = bytes([239, 1, 2, 3])
V2_REPORT = b"\x16\x00\x00\x00" + G
GOOD_V3 = raw_frame(v3_report(1, record(4, G, [])))

MALFORMED = {
    "empty frame": (b"", "short"),
    "no IPv4 header": (GOOD_V3[:20], "short"),
    "cut inside IGMP": (GOOD_V3[:-4], "short"),
    "IGMP below 8 bytes": (raw_frame(b"\x16\x00\x00\x00"), "short"),
    "query of 10 bytes": (raw_frame(b"\x11\x64\x00\x00" + bytes(4) + b"\x00\x00"), "short"),
    "IPv6 ethertype": (raw_frame(V2_REPORT, ethertype=0x86DD), "not_ipv4"),
    "802.1Q tagged": (GOOD_V3[:12] + b"\x81\x00\x00\x05" + GOOD_V3[12:], "not_ipv4"),
    "IP version 6 nibble": (GOOD_V3[:14] + b"\x66" + GOOD_V3[15:], "not_ipv4"),
    "UDP": (raw_frame(V2_REPORT, proto=17), "not_igmp"),
    "IHL 4": (raw_frame(V2_REPORT, ihl_words=4), "bad_ip_header"),
    "IP header checksum": (raw_frame(V2_REPORT, fix_ip=False), "bad_ip_header"),
    "fragment": (raw_frame(V2_REPORT, frag=0x2000), "bad_ip_header"),
    "IGMP checksum": (GOOD_V3[:-1] + b"\x01", "bad_checksum"),
    "unknown type 0x13": (raw_frame(b"\x13\x00\x00\x00" + G), "unknown_type"),
    "mtrace 0x1f": (raw_frame(b"\x1f\x00\x00\x00" + G), "unknown_type"),
    "v2 report for unicast": (raw_frame(b"\x16\x00\x00\x00" + bytes([10, 1, 1, 1])), "bad_group"),
    "v1 report for 0.0.0.0": (raw_frame(b"\x12\x00\x00\x00" + bytes(4)), "bad_group"),
    "leave for unicast": (raw_frame(b"\x17\x00\x00\x00" + bytes([10, 1, 1, 1])), "bad_group"),
    "query for unicast": (raw_frame(b"\x11\x64\x00\x00" + bytes([10, 1, 1, 1])), "bad_group"),
    "v3 record for unicast": (raw_frame(v3_report(1, record(4, bytes([8, 8, 8, 8]), []))),
                              "bad_group"),
    "record count beyond payload": (raw_frame(v3_report(100, record(4, G, []))),
                                    "too_many_records"),
    "absurd record count": (raw_frame(v3_report(65535, b"")), "too_many_records"),
    "query source count beyond payload": (
        raw_frame(b"\x11\x64\x00\x00" + G + b"\x02\x7d\x00\x32" + bytes(8)), "too_many_records"),
    "record source count beyond payload": (
        raw_frame(v3_report(1, record(1, G, [b"\x0a\x00\x00\x01"], nsrc=2))), "truncated_record"),
    "record aux data beyond payload": (raw_frame(v3_report(1, record(1, G, [], aux=3))),
                                       "truncated_record"),
    "second record cut": (raw_frame(v3_report(2, record(1, G, [], nsrc=1) + record(4, G, []))),
                          "truncated_record"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_reason(case: str) -> None:
    frame, reason = MALFORMED[case]
    with pytest.raises(MalformedIgmp) as exc:
        parse_frame(frame)
    assert exc.value.reason == reason, exc.value


def test_every_reason_is_exercised() -> None:
    assert {reason for _, reason in MALFORMED.values()} == REASONS


def test_well_formed_fixtures_parse() -> None:
    assert parse_frame(GOOD_V3).records == (GroupRecord(TO_EX, "239.1.2.3"),)
    assert parse_frame(raw_frame(V2_REPORT)) == ReportV2("239.1.2.3", src="10.0.0.1",
                                                         dst="224.0.0.22")


def test_unknown_record_type_is_skipped_and_aux_data_too() -> None:
    body = record(9, G, []) + record(1, G, [b"\x0a\x00\x00\x01"], aux=1) + b"AUX!"
    msg = parse_frame(raw_frame(v3_report(2, body)))
    assert msg.records == (GroupRecord(IS_IN, "239.1.2.3", ("10.0.0.1",)),)


# ------------------------------------------------------------------ builders

def test_multicast_mac() -> None:
    assert multicast_mac("224.0.0.1") == "01:00:5e:00:00:01"
    assert multicast_mac("239.129.2.3") == "01:00:5e:01:02:03"  # the 24th bit is dropped
    with pytest.raises(ValueError):
        multicast_mac("10.0.0.1")


def test_code_encoding_is_exact_for_every_code() -> None:
    for code in range(256):
        assert encode_code(decode_code(code)) == code
    assert decode_code(0x80) == 128 and decode_code(0xFF) == 31744


def test_code_encoding_rounds_down_within_one_sixteenth() -> None:
    for value in range(31745):
        got = decode_code(encode_code(value))
        assert got <= value and (value - got) * 16 <= value
    with pytest.raises(ValueError):
        encode_code(31745)


def test_query_frame_layout() -> None:
    frame = build_query(3, SRC_IP, SRC_MAC, max_resp_s=10)
    assert len(frame) == 60  # padded to the Ethernet minimum
    assert frame[:6] == bytes.fromhex("01005e000001")
    assert frame[6:12] == bytes.fromhex(SRC_MAC.replace(":", ""))
    assert frame[14] == 0x46 and frame[15] == 0xC0 and frame[22] == 1  # IHL 6, TOS, TTL 1
    assert frame[34:38] == b"\x94\x04\x00\x00"  # Router Alert
    assert checksum(frame[14:38]) == 0 and checksum(frame[38:14 + ip_len(frame)]) == 0


@pytest.mark.parametrize("version,group,max_resp,expected", [
    (1, "0.0.0.0", 3.0, Query(1, "0.0.0.0", 10.0)),  # v1 carries 0 = "10 s"
    (2, "0.0.0.0", 2.5, Query(2, "0.0.0.0", 2.5)),
    (2, "239.9.9.9", 25.5, Query(2, "239.9.9.9", 25.5)),
    (3, "0.0.0.0", 12.7, Query(3, "0.0.0.0", 12.7, qrv=2, qqic_s=125)),
    (3, "239.9.9.9", 100.0, Query(3, "239.9.9.9", 99.2, qrv=2, qqic_s=125)),  # float code
    (3, "0.0.0.0", 3174.4, Query(3, "0.0.0.0", 3174.4, qrv=2, qqic_s=125)),  # the maximum
])
def test_query_round_trip(version: int, group: str, max_resp: float, expected: Query) -> None:
    msg = parse_frame(build_query(version, SRC_IP, SRC_MAC, group, max_resp))
    dst = "224.0.0.1" if group == "0.0.0.0" else group
    assert msg == Query(**{**expected.__dict__, "src": SRC_IP, "dst": dst})


def test_v3_query_with_sources_large_qqic_and_flags() -> None:
    frame = build_query(3, SRC_IP, SRC_MAC, "232.1.1.1", max_resp_s=1, qrv=5, qqic_s=1000,
                        sources=["10.0.0.1", "10.0.0.2"], s_flag=True)
    assert frame[:6] == bytes.fromhex(multicast_mac("232.1.1.1").replace(":", ""))
    assert parse_frame(frame) == Query(3, "232.1.1.1", 1.0, ("10.0.0.1", "10.0.0.2"), 5, 992,
                                       True, src=SRC_IP, dst="232.1.1.1")
    # QRV above 7 is sent as 0 (RFC 3376 §4.1.6).
    assert parse_frame(build_query(3, SRC_IP, SRC_MAC, qrv=9)).qrv == 0


@pytest.mark.parametrize("kwargs", [
    {"version": 4}, {"version": 2, "max_resp_s": 26}, {"version": 2, "max_resp_s": 0},
    {"version": 3, "max_resp_s": 4000}, {"version": 3, "group": "10.1.1.1"},
    {"version": 3, "sources": ["10.0.0.1"]},  # sources need a group
    {"version": 2, "group": "239.1.1.1", "sources": ["10.0.0.1"]},
])
def test_build_query_rejects(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        build_query(src_ip=SRC_IP, src_mac=SRC_MAC, **kwargs)


def test_v2_report_and_leave_round_trip() -> None:
    rep = build_v2_report("239.3.3.3", SRC_IP, SRC_MAC)
    assert parse_frame(rep) == ReportV2("239.3.3.3", src=SRC_IP, dst="239.3.3.3")
    assert parse_frame(build_v2_leave("239.3.3.3", SRC_IP, SRC_MAC)) == LeaveV2(
        "239.3.3.3", src=SRC_IP, dst="224.0.0.2")
    assert rep[:6] == bytes.fromhex("01005e030303")


def test_built_v2_report_matches_kernel_bytes() -> None:
    """Byte for byte what Linux sent, padding aside: our builder mimics the kernel's header."""
    report, leave = load("v2_join_leave")
    mac = "02:88:00:00:00:02"
    assert build_v2_report("239.1.0.2", HOST, mac)[:len(report)] == report
    assert build_v2_leave("239.1.0.2", HOST, mac)[:len(leave)] == leave


def reports_of(frames: list[bytes], mtu: int) -> list[GroupRecord]:
    records = []
    for frame in frames:
        assert ip_len(frame) <= mtu
        msg = parse_frame(frame)
        assert isinstance(msg, ReportV3) and msg.dst == "224.0.0.22" and msg.src == SRC_IP
        records.extend(msg.records)
    return records


def test_v3_reports_split_1000_groups() -> None:
    rng = random.Random(7)
    records = [GroupRecord(rng.choice(list(RecordType)), f"239.{i // 250}.{i % 250}.1",
                           tuple(f"10.1.{i % 200}.{j}" for j in range(rng.randrange(0, 6))))
               for i in range(1000)]
    for mtu in (1500, 576, 9000):
        frames = build_v3_reports(records, SRC_IP, SRC_MAC, mtu=mtu)
        assert reports_of(frames, mtu) == records  # every record once, in order, unsplit
        room = mtu - 24 - 8
        needed = sum(8 + 4 * len(r.sources) for r in records)
        assert len(frames) <= needed // (room - 8 - 4 * 5) + 1  # packed, not one per record


@pytest.mark.parametrize("kind,continuation", [(IS_IN, ALLOW), (TO_IN, ALLOW), (ALLOW, ALLOW),
                                               (IS_EX, BLOCK), (TO_EX, BLOCK), (BLOCK, BLOCK)])
def test_v3_reports_split_one_group_with_1000_sources(kind: RecordType,
                                                      continuation: RecordType) -> None:
    sources = tuple(f"10.2.{i // 250}.{i % 250}" for i in range(1000))
    small = GroupRecord(TO_EX, "239.5.5.1")
    huge = GroupRecord(kind, "239.5.5.5", sources)
    frames = build_v3_reports([small, huge, small], SRC_IP, SRC_MAC)
    records = reports_of(frames, 1500)
    assert len(frames) == 3  # (1500 - 24 - 8 - 8) / 4 = 365 sources per report
    parts = [r for r in records if r.group == "239.5.5.5"]
    assert [r.kind for r in parts] == [kind] + [continuation] * (len(parts) - 1)
    got = [s for r in parts for s in r.sources]
    assert sorted(got) == sorted(sources) and len(got) == len(sources)
    assert [r for r in records if r.group == "239.5.5.1"] == [small, small]
    # Applied in order, the parts mean the same to a member as the unsplit record.
    table = Membership(fast_leave=True)
    for frame in frames:
        table.apply(0.0, "m", parse_frame(frame))
    expected = transition(NO_SOURCE, kind, sources)
    assert table.members("239.5.5.5") == ({} if expected.is_empty else {"m": expected})


def test_v3_reports_edge_cases() -> None:
    assert build_v3_reports([], SRC_IP, SRC_MAC) == []
    # The smallest MTU: IP header with Router Alert, report header, one record, one source.
    three = GroupRecord(IS_IN, "239.1.1.1", ("10.0.0.1", "10.0.0.2", "10.0.0.3"))
    frames = build_v3_reports([three], SRC_IP, SRC_MAC, mtu=44)
    assert reports_of(frames, 44) == [GroupRecord(IS_IN, "239.1.1.1", ("10.0.0.1",)),
                                      GroupRecord(ALLOW, "239.1.1.1", ("10.0.0.2",)),
                                      GroupRecord(ALLOW, "239.1.1.1", ("10.0.0.3",))]
    with pytest.raises(ValueError):
        build_v3_reports([three], SRC_IP, SRC_MAC, mtu=43)
    with pytest.raises(ValueError):
        build_v3_reports([GroupRecord(TO_IN, "10.1.1.1")], SRC_IP, SRC_MAC)


# ------------------------------------------------------------------ a real kernel (lab)

def _lab_module():
    spec = importlib.util.spec_from_file_location("kmi_capture", DATA / "capture.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _after_query(frames: list[bytes], query: bytes) -> list:
    """Messages captured after our `query` went out (the capture holds the sent frame too)."""
    msgs = [parse_frame(f) for f in frames]
    sent = parse_frame(query)
    idx = max(i for i, m in enumerate(msgs) if m == sent)
    return msgs[idx + 1:]


@pytest.mark.lab
def test_linux_answers_our_queries() -> None:
    if os.geteuid() != 0:
        pytest.fail("this lab test needs root: it creates kmi-* network namespaces")
    for tool in ("ip", "tcpdump"):
        if shutil.which(tool) is None:
            pytest.fail(f"this lab test needs `{tool}` (Debian: iproute2, tcpdump)")
    capture = _lab_module()
    with capture.Lab(f"t{os.getpid()}") as lab:
        # Unsolicited reports repeat 10 ms apart instead of up to 1 s: they end before we query.
        lab.sysctl(lab.host, "net.ipv4.conf.eth0.igmpv3_unsolicited_report_interval", 10)
        member = lab.member()
        member.do("join", "239.1.0.7")
        member.do("join", "239.1.0.8")
        time.sleep(0.3)
        dump = lab.tcpdump(lab.querier, "lab")
        qmac, qip = capture.QUERIER_MAC, capture.QUERIER_IP

        def ask(query: bytes, pred) -> list:
            lab.inject(lab.querier, query)
            frames = dump.wait_for(lambda fs: pred(_after_query(fs, query)), timeout=5)
            answers = _after_query(frames, query)
            assert pred(answers), f"no answer to {parse_frame(query)}: {answers}"
            return answers

        def records(msgs: list) -> set:
            return {(r.kind, r.group) for m in msgs if isinstance(m, ReportV3) for r in m.records}

        general = build_query(3, qip, qmac, max_resp_s=0.5)
        ask(general, lambda ms: records(ms) == {(IS_EX, "239.1.0.7"), (IS_EX, "239.1.0.8")})

        specific = build_query(3, qip, qmac, "239.1.0.7", max_resp_s=0.5)
        answers = ask(specific, lambda ms: records(ms) >= {(IS_EX, "239.1.0.7")})
        assert records(answers) == {(IS_EX, "239.1.0.7")}  # not the other group

        v2 = build_query(2, qip, qmac, max_resp_s=0.5)
        answers = ask(v2, lambda ms: {m.group for m in ms if isinstance(m, ReportV2)} == {
            "239.1.0.7", "239.1.0.8"})
        assert all(m.src == capture.HOST_IP for m in answers)
        assert "V2" in lab.igmp_proc()  # the host now stays in v2 compatibility mode
    assert not [ns for ns in os.listdir("/run/netns") if ns.startswith(f"kmi-t{os.getpid()}")]
