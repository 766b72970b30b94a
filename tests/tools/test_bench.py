"""tools.bench: the quick benchmark runs end to end and reports every figure; its parsers work.

The lab test runs ``python -m tools.bench --quick`` for real (private OVS, 1- and 3-node
mclab labs under the benchmark's own prefix) and checks the results file's SHAPE: every
section is there, without errors, with numbers where figures belong, and with the counts
that prove the work happened (groups on the switch, datagrams delivered). Speed itself is
never asserted here: the figures are the benchmark's output, not a test verdict.

The other tests feed the parsers (pcap/OpenFlow, tcpdump text, OVS stats) canned input.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tools.bench import common, joinlat, throughput
from tools.mclab import netns

REPO = Path(__file__).resolve().parents[2]


def _num(d: Any, *path: str) -> float:
    for key in path:
        assert isinstance(d, dict) and key in d, f"missing {'.'.join(path)} (at {key})"
        d = d[key]
    assert isinstance(d, int | float) and not isinstance(d, bool), f"{'.'.join(path)} = {d!r}"
    return d


def _stats(d: dict, *path: str) -> None:
    for k in ("n", "min", "p50", "p99", "max"):
        _num(d, *path, k)
    assert _num(d, *path, "n") >= 1


@pytest.mark.lab
@pytest.mark.timeout(400)
def test_quick_bench_reports_every_section(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    res = subprocess.run([sys.executable, "-m", "tools.bench", "--quick", "--out", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=380)
    assert res.returncode == 0, f"stdout:\n{res.stdout}\nstderr:\n{res.stderr[-3000:]}"
    assert "[1] programming rate" in res.stdout and "[4] agent scale" in res.stdout
    r = json.loads(out.read_text())
    tag = r["meta"]["run_tag"]
    assert not netns.list_netns(tag), "the benchmark left namespaces behind"
    assert not list(Path("/tmp").glob(f"{tag}-*")), "the benchmark left its lab dirs behind"
    for key in ("programming", "join_latency", "throughput", "agent_scale"):
        assert key in r and "error" not in r[key], r.get(key, {}).get("error")

    prog = r["programming"]
    pure = prog["pure"][0]
    for k in ("build_us_per_group", "canonical_us_per_group", "diff_us_per_group"):
        assert _num(pure, k) > 0
    size = prog["sizes"][0]
    n = size["groups"]
    for phase in ("install", "modify_all", "delete_all"):
        for k in ("total_s", "apply_s", "encode_s", "groups_per_s"):
            _num(size, phase, k)
    _num(size, "install", "flows_per_s")
    assert size["on_switch_after_install"]["groups"] == prog["base_on_switch"]["groups"] + n
    assert size["on_switch_after_install"]["flows"] == prog["base_on_switch"]["flows"] + n
    assert size["on_switch_after_delete"] == prog["base_on_switch"]
    for k in ("apply_all_ms", "reconcile_all_ms"):
        _stats(size["per_change"], k)

    jl = r["join_latency"]
    assert jl["ok"] >= 1
    for k in ("join_to_first_ms", "join_to_report_ms", "report_to_first_ms"):
        _stats(jl, k)
    for k in joinlat.SPLIT_KEYS:
        _stats(jl["switch_split_ms"], k)

    single = r["throughput"]["single_node"]["series"]
    assert set(single) == {"4_receivers", "8_receivers"}
    cross = r["throughput"]["cross_node"]
    assert "error" not in cross, cross.get("error")
    for points in [*single.values(), cross["points"]]:
        assert points
        for p in points:
            for k in ("delivered_total_pps", "loss_pct_max", "vswitchd_cpu_pct"):
                _num(p, k)
            assert p["delivered_total_pps"] > 0

    sc = r["agent_scale"]
    _num(sc, "idle", "agent_rss_kib")
    _num(sc, "idle", "agent_idle_cpu_pct")
    for stage in ("groups_1", "entries_2"):
        assert sc[stage]["converged"], sc[stage]
        assert sc[stage]["ovs_groups"] >= sc[stage]["target"]
        for k in ("agent_rss_kib", "converge_s", "api_members_ms", "agent_idle_cpu_pct"):
            _num(sc, stage, k)
    _num(sc, "leave_all", "seconds")


# ------------------------------------------------------------------------------ parsers


def _pcap(frames: list[tuple[float, bytes]]) -> bytes:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for t, frame in frames:
        out += struct.pack("<IIII", int(t), int(round(t % 1 * 1e6)), len(frame), len(frame))
        out += frame
    return out


def _tcp_frame(sport: int, dport: int, payload: bytes) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 5 << 4, 0x18, 65535, 0, 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0,
                     bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]))
    return b"\0" * 12 + b"\x08\x00" + ip + tcp


def _of(msg_type: int, body: bytes) -> bytes:
    return struct.pack("!BBHI", 6, msg_type, 8 + len(body), 1) + body


def test_openflow_capture_is_split_into_punt_agent_bundle_datapath() -> None:
    pin = _of(4, struct.pack("!II", 0x2320, 30) + b"\0" * 8)
    opened = _of(33, struct.pack("!IHH", 7, 0, 3)) + _of(34, b"\0" * 16)  # two in one segment
    committed = _of(33, struct.pack("!IHH", 7, 5, 3))
    events = joinlat.parse_pcap(_pcap([
        (10.0001, _tcp_frame(40000, 6653, pin)),
        (10.0031, _tcp_frame(6653, 40000, opened)),
        (10.0041, _tcp_frame(40000, 6653, committed)),
    ]))
    assert [(e.kind, e.to_agent) for e in events] == [
        ("packet_in", True), ("bundle_open", False), ("other", False), ("commit_reply", True)]
    split = joinlat.split_after(events, t_report=10.0, t_first=10.0051)
    assert split == pytest.approx({"report_to_packet_in_ms": 0.1, "packet_in_to_bundle_ms": 3.0,
                                   "bundle_open_to_commit_ms": 1.0, "commit_to_first_ms": 1.0},
                                  abs=2e-3)
    assert joinlat.split_after(events, t_report=10.0002, t_first=10.0051) is None


def test_tcpdump_report_found_behind_another_groups_record() -> None:
    text = (
        "1795293365.200343 IP (tos 0xc0, ttl 1, id 0, offset 0, flags [DF], proto IGMP (2))\n"
        "    10.77.1.3 > 224.0.0.22: igmp v3 report, 2 group record(s) [gaddr 239.9.0.1 to_in,"
        " 0 source(s)] [gaddr 239.9.0.2 to_ex, 0 source(s)]\n"
        "1795293365.206209 IP (tos 0x0, ttl 8, id 53854, proto UDP (17), length 228)\n"
        "    10.77.1.2.41774 > 239.9.0.2.5000: UDP, length 200\n")
    assert joinlat.parse_tcpdump(text, "239.9.0.2") == (1795293365.200343, 1795293365.206209,
                                                         "v3")
    assert joinlat.parse_tcpdump(text, "239.9.0.3") == (None, None, None)


def test_ovs_stats_and_megaflows() -> None:
    stats = throughput.datapath_stats(
        "main thread:\n  packets received: 59763\n  emc hits: 59733\n"
        "  avg. packets per output batch: 11.31\n")
    assert stats == {"packets received": 59763, "emc hits": 59733,
                     "avg. packets per output batch": 11.31}
    flows = ("recirc_id(0),in_port(5),eth_type(0x0800),ipv4(dst=239.9.1.1,proto=17,frag=no), "
             "packets:2, bytes:9, used:0.001s, actions:6,7,8,9\n"
             "recirc_id(0),in_port(5),eth_type(0x0800),ipv4(dst=239.9.1.10,proto=17,frag=no), "
             "packets:2, bytes:9, used:0.001s, actions:6\n")
    assert throughput.megaflow_actions(flows, "239.9.1.1") == ["6,7,8,9"]


def test_summary_uses_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    s = common.summary(values)
    assert (s["n"], s["min"], s["p50"], s["p99"], s["max"]) == (100, 1.0, 50.5, 99.0, 100.0)
    assert common.summary([]) == {"n": 0}
