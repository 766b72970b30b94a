"""tools.bench: the quick benchmark runs end to end and reports every figure; its parsers work.

The lab test runs ``python -m tools.bench --quick`` for real (private OVS, 1- and 3-node
mclab labs, the anchors' OVS-snooping and Linux-bridge beds, the hostile section's 1-node
labs, all under the benchmark's own prefix) and checks the results file's SHAPE: every
section is there, without errors, with numbers where figures belong, with the counts that
prove the work happened (groups on the switch, datagrams delivered, attacks sent), every
ratio to an anchor with both raw figures, and the plots written. Speed itself is never
asserted here, nor whether a target is met: the figures are the benchmark's output, not a
test verdict.

The other tests feed the parsers (pcap/OpenFlow, tcpdump text, OVS stats, snooping tables,
per-pod drop counters) canned input, and the ratios and plots a made-up results file.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tools.bench import (
    baselines,
    common,
    hostile,
    joinlat,
    plots,
    policy,
    ratios,
    report,
    throughput,
)
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
    assert "[5] anchors" in res.stdout and "[6] hostile" in res.stdout
    assert "[ratios]" in res.stdout
    r = json.loads(out.read_text())
    tag = r["meta"]["run_tag"]
    assert not netns.list_netns(tag), "the benchmark left namespaces behind"
    assert not list(Path("/tmp").glob(f"{tag}-*")), "the benchmark left its lab dirs behind"
    for key in ("programming", "join_latency", "throughput", "agent_scale", "baselines",
                "hostile"):
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
    anchor = size["ofctl_bundle"]  # the same ops, loaded by ovs-ofctl into the same switch
    assert anchor["install"]["ops"] == size["install"]["ops"]
    _num(anchor, "install", "ops_per_s")
    assert anchor["on_switch_after_install"] == size["on_switch_after_install"]
    assert anchor["on_switch_after_delete"] == prog["base_on_switch"]

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
    assert sc["join_leave_cycles"], "the quick run repeats one join/leave cycle"

    bl = r["baselines"]
    for bed in ("ovs_snooping", "linux_bridge"):
        assert "error" not in bl[bed], bl[bed].get("error")
        assert bl[bed]["join_latency"]["ok"] >= 1
        for k in ("join_to_first_ms", "report_to_first_ms"):
            _stats(bl[bed]["join_latency"], k)
    snoop = bl["ovs_snooping"]["throughput"]["series"]
    assert set(snoop) == set(single)
    for points in snoop.values():
        assert [p["target_pps"] for p in points] == r["throughput"]["single_node"]["rates_pps"]
        for p in points:
            assert _num(p, "delivered_total_pps") > 0

    _hostile(r["hostile"])

    assert set(r["ratios"]) == set(ratios.KEYS)
    for key, e in r["ratios"].items():
        assert "missing" not in e, (key, e["missing"])
        for k in ("value", "ratio", "ours", "anchor"):
            _num(e, k)
        assert isinstance(e["met"], bool) and e["target"] and e["unit"]
    assert set(r["plots"]) == set(plots.NAMES)
    for name in r["plots"].values():
        assert (out.parent / name).stat().st_size > 1000, name


def _hostile(h: dict[str, Any]) -> None:
    """Every issue-11 figure is there (a number, or null where "never" is the measurement)."""
    for part in hostile.PARTS:
        assert "error" not in h[part], (part, h[part].get("error"))
    fl = h["flood"]
    for k in ("sent", "sent_pps", "procs", "switch_rx_pps", "early_member_lost",
              "early_member_sent", "agent_cpu_before_cores", "agent_cpu_during_cores",
              "flooder_groups", "flooder_dropped_igmp_rate"):
        _num(fl, k)
    assert fl["sent"] > 0 and fl["early_member_sent"] > 0
    for k in ("join_during_flood_ms", "idle_after_s"):  # null: not within the watched time
        assert k in fl and (fl[k] is None or _num(fl, k) >= 0), k
    assert isinstance(fl["agent_cpu_after_per_s"], list)
    v3 = h["v3burst"]
    for k in ("reports_sent", "records_per_report", "sources_per_record",
              "agent_cpu_during_cores", "rss_mb_before", "rss_mb_after_burst",
              "rss_mb_after_expiry", "attacker_groups"):
        _num(v3, k)
    assert v3["reports_sent"] > 0
    for k in ("idle_after_s", "expired_after_s"):
        assert k in v3 and (v3[k] is None or _num(v3, k) >= 0), k
    sp = h["spoof"]
    for k in ("forged_sent", "forged_delivered_total", "dropped_spoofed"):
        _num(sp, k)
    assert sp["forged_sent"] > 0
    assert set(sp["forged_delivered"]) == set(sp["victim_honest_delivered"])
    assert all(n > 0 for n in sp["victim_honest_delivered"].values()), (
        "the control: the victim's own datagrams reach every receiver", sp)


def test_drop_counters_are_found_for_the_pod_in_mcctl_rows_and_metrics() -> None:
    rows = [{"namespace": "default", "name": "a", "dropped": {"spoofed": 1}},
            {"namespace": "default", "name": "b", "dropped": {"spoofed": 7, "igmpRate": 3}}]
    assert hostile.mcctl_dropped(rows, "default", "b") == {"spoofed": 7.0, "igmpRate": 3.0}
    assert hostile.mcctl_dropped(rows, "other", "b") == {}
    text = ('# TYPE m counter\n'
            'm{namespace="default",pod="b",reason="spoofed"} 7\n'
            'm{namespace="default",pod="a",reason="spoofed"} 1\n'
            'm{namespace="default",pod="b",reason="igmp_rate"} 3.0\n')
    assert hostile.metric_dropped(text, "m", "default", "b") == {"spoofed": 7.0,
                                                                  "igmp_rate": 3.0}


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


def test_snooping_tables_are_counted_per_group() -> None:
    mdb = (" port  VLAN  GROUP                Age\n"
           "    1     0  ff02::1:ffb9:cda0           0\n"
           "    3     0  239.208.0.1           0\n"
           "    2     0  239.208.0.1           0\n"
           "LOCAL     0  239.208.0.10          1\n")
    assert baselines.ovs_mdb_ports(mdb, "239.208.0.1") == 2
    assert baselines.ovs_mdb_ports(mdb, "239.208.0.2") == 0
    bridge = json.dumps([{"mdb": [
        {"index": 2, "dev": "br0", "port": "lp2", "grp": "239.208.0.1", "state": "temp"},
        {"index": 2, "dev": "br0", "port": "lp3", "grp": "239.208.0.1", "state": "temp"},
        {"index": 2, "dev": "br0", "port": "br0", "grp": "ff02::6a", "state": "temp"}],
        "router": {}}])
    assert baselines.bridge_mdb_ports(bridge, "239.208.0.1") == 2
    assert baselines.bridge_mdb_ports("", "239.208.0.1") == 0


# ------------------------------------------------------------------------------ ratios, plots


def _tp(rate: int, delivered: float, loss: float) -> dict[str, Any]:
    return {"target_pps": rate, "delivered_total_pps": delivered, "loss_pct_max": loss}


def _join(p50: float, report_p50: float, report_p99: float) -> dict[str, Any]:
    samples = [{"join_to_first_ms": p50 + d, "report_to_first_ms": report_p50 + d / 10}
               for d in (-1.0, 0.0, 1.0)]
    return {"ok": 3, "reps": 3, "samples": samples, "join_to_first_ms": {"p50": p50},
            "report_to_first_ms": {"p50": report_p50, "p99": report_p99}}


def _results() -> dict[str, Any]:
    def size(n: int, ours: float, ofctl: float) -> dict[str, Any]:
        return {"groups": n, "install": {"ops_per_s": ours},
                "ofctl_bundle": {"install": {"ops_per_s": ofctl}}}

    split = {k: {"p50": 0.5} for k in joinlat.SPLIT_KEYS}
    return {
        "programming": {"buckets_per_group": 8,
                        "sizes": [size(250, 6000.0, 12000.0), size(1000, 5000.0, 40000.0)]},
        "join_latency": {**_join(15.0, 3.0, 6.0), "switch_split_ms": split},
        "throughput": {"single_node": {"series": {
            "8_receivers": [_tp(10_000, 80_000, 0.0), _tp(20_000, 150_000, 6.0),
                            _tp(40_000, 140_000, 55.0)]}}},
        "agent_scale": {"idle": {"agent_rss_kib": 80 * 1024},
                        "groups_1": {"target": 500, "agent_rss_kib": 84 * 1024},
                        "after_leave": {"agent_rss_kib": 90 * 1024},
                        "join_leave_cycles": [{"groups": 500, "agent_rss_kib_joined": 95 * 1024,
                                               "agent_rss_kib_left": 93 * 1024}]},
        "baselines": {
            "ovs_snooping": {"join_latency": _join(11.0, 0.5, 4.0), "throughput": {"series": {
                "8_receivers": [_tp(10_000, 80_000, 0.0), _tp(20_000, 158_000, 0.4),
                                _tp(40_000, 180_000, 40.0)]}}},
            "linux_bridge": {"join_latency": _join(12.5, 0.15, 0.2)}},
    }


def test_ratios_take_each_figure_against_its_anchor() -> None:
    got = ratios.compute(_results())
    assert set(got) == set(ratios.KEYS)
    prog = got["programming_vs_ofctl"]  # the largest size
    assert (prog["ours"], prog["anchor"], prog["ratio"], prog["groups"]) == (5000, 40000,
                                                                              0.125, 1000)
    assert prog["met"] is False and prog["target"] == ">= 0.5"
    assert got["report_to_first_p50_vs_ovs_snooping"]["value"] == 6.0
    assert got["report_to_first_p99_vs_ovs_snooping"]["value"] == 1.5
    assert got["report_to_first_p99_vs_ovs_snooping"]["met"] is True
    assert got["join_to_first_p50_vs_linux_bridge"]["value"] == 1.2
    assert got["join_to_first_p50_vs_linux_bridge"]["met"] is True  # <= 1.2
    tp = got["throughput_1to8_vs_ovs_snooping"]  # snooping loses 0.4 % at 20k: compared there
    assert (tp["at_offered_pps"], tp["ours"], tp["anchor"]) == (20_000, 150_000, 158_000)
    rss = got["rss_growth_mb"]  # absolute: after the last cycle's leave - after the first's
    assert (rss["value"], rss["ours"], rss["anchor"], rss["met"]) == (3.0, 93.0, 90.0, True)
    lines = ratios.table_lines(got)
    assert [line.split()[0] for line in lines[2:-1]] == list(ratios.KEYS)
    assert lines[-1].strip() == "3 of 6 targets met"


def test_onset_rate_is_the_highest_rate_when_snooping_never_loses() -> None:
    assert ratios.onset_rate([_tp(20_000, 1, 0.0), _tp(10_000, 1, 0.05)]) == 20_000
    assert ratios.onset_rate([_tp(40_000, 1, 9.0), _tp(20_000, 1, 0.2)]) == 20_000


def test_a_missing_section_leaves_its_ratio_empty_and_says_why() -> None:
    r = _results()
    r["baselines"]["linux_bridge"] = {"error": "BenchError: boom"}
    del r["agent_scale"]["join_leave_cycles"]
    got = ratios.compute(r)
    assert got["join_to_first_p50_vs_linux_bridge"]["value"] is None
    assert "boom" in got["join_to_first_p50_vs_linux_bridge"]["missing"]
    assert got["rss_growth_mb"]["met"] is None and "join_leave_cycles" in \
        got["rss_growth_mb"]["missing"]
    assert got["programming_vs_ofctl"]["value"] == 0.125
    assert "n/a" in "\n".join(ratios.table_lines(got))


@pytest.mark.parametrize("complete", [True, False])
def test_plots_are_written_with_or_without_data(tmp_path: Path, complete: bool) -> None:
    r = _results() if complete else {"meta": {}}
    r["ratios"] = ratios.compute(r)
    written = plots.write_all(r, tmp_path / "latest.json")
    assert set(written) == set(plots.NAMES)
    for name in written.values():
        assert name.startswith("latest-") and (tmp_path / name).stat().st_size > 1000


def test_the_policy_scenario_reports_its_figures_at_the_quick_size() -> None:
    """The ``policy`` section (pure, no lab) at its quick size: every figure is there, for each
    size of the growth; nothing about speed."""
    sec = policy.run(policy.QUICK_SIZE)
    assert [g["pods"] for g in sec["growth"]] == [100, 200, 400]
    for g in sec["growth"]:
        for k in ("full_s", "pod_label_change_ms", "policy_change_ms", "validate_ms"):
            _num(g, k)
        assert g["views"] >= 1 and g["rules_sent_total"] > 0 and g["groups"] > 0
    assert sec["full"] == sec["growth"][-1]
    lines = report.summary_lines({"meta": {}, "policy": sec})
    assert any(line.startswith("[7] policy computation (400 pods") for line in lines)
