"""What the results file says about the run itself, and the human summary printed on stdout.

This module owns the ``meta`` block of the results (code version, host, software versions and
how busy the shared machine was: other developers' labs run on the same 2 vCPUs, and the
traffic figures move with that load) and the one-screen summary of every section, ending with
the table of ratios to the anchors (``ratios.table_lines``).
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from tools.bench import ratios

REPO = Path(__file__).resolve().parents[2]


def _cmd(argv: list[str]) -> str:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=20, cwd=REPO)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return res.stdout.strip()


def _cpu_times() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def host_busy_pct(seconds: float = 1.0) -> float:
    """How busy all CPUs of the host were over ``seconds`` (every process, not only ours)."""
    busy0, total0 = _cpu_times()
    time.sleep(seconds)
    busy1, total1 = _cpu_times()
    return round(100 * (busy1 - busy0) / max(1, total1 - total0), 1)


def foreign_vswitchds(own_marker: str) -> int:
    """ovs-vswitchd processes on the host that are not ours (other developers' labs)."""
    count = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if cmd.startswith("/usr/sbin/ovs-vswitchd") and own_marker not in cmd:
            count += 1
    return count


def environment(own_marker: str) -> dict[str, Any]:
    def version(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    dirty = _cmd(["git", "status", "--porcelain", "--", "agent", "pipeline", "tools/mclab"])
    return {
        "git_head": _cmd(["git", "rev-parse", "HEAD"]),
        "git_subject": _cmd(["git", "log", "-1", "--format=%s"]),
        "product_files_modified": [ln[3:] for ln in dirty.splitlines()],
        "host": {"cpus": os.cpu_count(), "kernel": platform.release(),
                 "loadavg": [round(x, 2) for x in os.getloadavg()],
                 "busy_pct_1s": host_busy_pct(1.0),
                 "other_ovs_vswitchd": foreign_vswitchds(own_marker)},
        "versions": {"python": platform.python_version(), "os-ken": version("os-ken"),
                     "ovs": (_cmd(["ovs-vswitchd", "--version"]).splitlines() or [""])[0]},
    }


def load_now(own_marker: str, settle_s: float = 0.0,
             quiet_pct: float = 30.0) -> dict[str, Any]:
    """A look at the host before a section: with ``settle_s``, first wait up to that long for
    the host to be less than ``quiet_pct`` busy (1 s samples), so noisy neighbours move the
    figures less; records how long it waited and how busy the host still was."""
    t0 = time.monotonic()
    busy = host_busy_pct(1.0)
    while busy > quiet_pct and time.monotonic() - t0 < settle_s:
        busy = host_busy_pct(1.0)
    return {"loadavg_1m": round(os.getloadavg()[0], 2), "busy_pct_1s": busy,
            "waited_s": round(time.monotonic() - t0 - 1.0, 1),
            "other_ovs_vswitchd": foreign_vswitchds(own_marker)}


# ------------------------------------------------------------------------------ summary


def _g(d: Any, *path: str, default: Any = None) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return d


def _pct(d: dict) -> str:
    return f"p50 {d.get('p50')} / p99 {d.get('p99')} (min {d.get('min')}, max {d.get('max')})"


def _programming(sec: dict[str, Any]) -> list[str]:
    lines = ["[1] programming rate: builders -> reconciler/diff -> OpenFlowSwitch.apply "
             f"(one bundle), {sec.get('buckets_per_group')} buckets per group"]
    for p in sec.get("pure", []):
        lines.append(f"    pure @{p['groups']}: builders {p['build_us_per_group']} us/group, "
                     f"diff {p['diff_us_per_group']} us/group")
    for s in sec.get("sizes", []):
        i, m, d = s["install"], s["modify_all"], s["delete_all"]
        lines.append(
            f"    {s['groups']} groups in one reconcile: {i['total_s']} s = {i['groups_per_s']} "
            f"groups/s, {i['flows_per_s']} flows/s (apply {i['apply_s']} s: encode "
            f"{i['encode_s']} s, switch+socket {i['switch_s']} s, vswitchd CPU "
            f"{i['vswitchd_cpu_s']} s); modify all {m['total_s']} s, delete all {d['total_s']} s")
        pc = s["per_change"]
        lines.append(f"      one change @{s['groups']}: apply {_pct(pc['apply_all_ms'])} ms; "
                     f"via Reconciler.flush {_pct(pc['reconcile_all_ms'])} ms")
        of = s.get("ofctl_bundle", {})
        if "install" in of:
            lines.append(
                f"      anchor ovs-ofctl bundle, same ops: install {of['install']['total_s']} s "
                f"= {of['install']['ops_per_s']} ops/s (ours {i['ops_per_s']} ops/s), delete "
                f"{of['delete']['total_s']} s")
    return lines


def _join(sec: dict[str, Any]) -> list[str]:
    sp = sec.get("switch_split_ms", {})
    return [
        f"[2] join -> first packet ({sec.get('ok')}/{sec.get('reps')} reps, sender "
        f"{sec.get('sender_pps')} pps): {_pct(sec['join_to_first_ms'])} ms",
        f"    join -> report leaves pod (kernel) p50 {sec['join_to_report_ms'].get('p50')} ms; "
        f"report -> first datagram p50 {sec['report_to_first_ms'].get('p50')} ms "
        "(NOTES C1: OVS snooping 0.55, naive os-ken 2.1)",
        "    report -> first = punt p50 {} + agent p50 {} + bundle p50 {} + datapath p50 {} ms"
        .format(*(_g(sp, k, "p50") for k in ("report_to_packet_in_ms", "packet_in_to_bundle_ms",
                                              "bundle_open_to_commit_ms",
                                              "commit_to_first_ms"))),
    ]


def _tp_point(p: dict[str, Any]) -> str:
    if "loss_pct_max" not in p:
        return f"{p['target_pps'] // 1000}k: error"
    by_node = p.get("loss_pct_by_node") or {}
    nodes = f" {by_node}" if len(by_node) > 1 else ""
    ctl = p.get("control_bypass") or {}
    control = (f"; bypass flow: loss {ctl['loss_pct_max']}%"
               if ctl.get("loss_pct_max") is not None else "")
    return (f"{p['target_pps'] // 1000}k: loss {p['loss_pct_max']}%{nodes} "
            f"({p['delivered_total_pps'] / 1000:.1f}k pps delivered, "
            f"{p.get('lost_before_ovs_pct')}% lost before OVS, vswitchd "
            f"{p['vswitchd_cpu_pct']}% CPU{control})")


def _throughput(sec: dict[str, Any]) -> list[str]:
    lines = ["[3] throughput (paced sender, 200 B; loss = worst receiver, median of reps)"]
    for name, points in _g(sec, "single_node", "series", default={}).items():
        lines.append(f"    1 node, {name.replace('_', ' ')}: "
                     + " | ".join(_tp_point(p) for p in points))
    cross = _g(sec, "cross_node", "points", default=[])
    if cross:
        lines.append("    3 nodes (1 local + 2 remote): " + " | ".join(map(_tp_point, cross)))
    return lines


def _scale(sec: dict[str, Any]) -> list[str]:
    idle = sec.get("idle", {})
    lines = [f"[4] agent scale: RSS idle {idle.get('agent_rss_kib')} KiB, idle CPU "
             f"{idle.get('agent_idle_cpu_pct')}%"]
    for name in ("groups_1", "entries_2"):
        s = sec.get(name)
        if s:
            lines.append(
                f"    {s['target']} groups: RSS {s['agent_rss_kib']} KiB, converged "
                f"{s['converge_s']} s ({s['groups_per_s']} groups/s, agent CPU "
                f"{s['agent_cpu_s']} s), idle CPU {s['agent_idle_cpu_pct']}%, list via API "
                f"{s['api_members_ms']} ms, mcctl get groups {s['mcctl_get_groups_ms']} ms")
    leave = sec.get("leave_all")
    if leave:
        lines.append(f"    leave all {leave['groups']}: {leave['seconds']} s; RSS after "
                     f"{_g(sec, 'after_leave', 'agent_rss_kib')} KiB")
    for c in sec.get("join_leave_cycles", []):
        lines.append(f"    cycle {c['groups']}: RSS joined {c['agent_rss_kib_joined']} KiB, "
                     f"left {c['agent_rss_kib_left']} KiB")
    return lines


def _anchor_join(name: str, jl: dict[str, Any]) -> str:
    return (f"    {name}: join -> first p50 {_g(jl, 'join_to_first_ms', 'p50')} / p99 "
            f"{_g(jl, 'join_to_first_ms', 'p99')} ms; report -> first p50 "
            f"{_g(jl, 'report_to_first_ms', 'p50')} / p99 {_g(jl, 'report_to_first_ms', 'p99')}"
            f" ms ({jl.get('ok')}/{jl.get('reps')} reps)")


def _baselines(sec: dict[str, Any]) -> list[str]:
    lines = ["[5] anchors in this run (same pods, sender rate and tcpdump split as ours)"]
    for key, name in (("ovs_snooping", "OVS snooping"), ("linux_bridge", "Linux bridge")):
        bed = sec.get(key, {})
        if "error" in bed:
            lines.append(f"    {name}: ERROR {bed['error']}")
            continue
        lines.append(_anchor_join(name, bed.get("join_latency", {})))
        for count, points in _g(bed, "throughput", "series", default={}).items():
            lines.append(f"    {name}, {count.replace('_', ' ')}: "
                         + " | ".join(_tp_point(p) for p in points))
    return lines


def _hostile(sec: dict[str, Any]) -> list[str]:
    lines = ["[6] hostile pod (issue 11), 1-node labs of its own"]
    sp, fl, v3 = (sec.get(k, {}) for k in ("spoof", "flood", "v3burst"))
    for name, part in (("spoof", sp), ("flood", fl), ("v3 burst", v3)):
        if "error" in part:
            lines.append(f"    {name}: ERROR {part['error']}")
    if "error" not in fl and fl:
        lines += [
            f"    IGMP flood {fl['sent_pps']} reports/s ({fl['procs']} processes, "
            f"{fl['duration_s']} s; br-int got {fl['switch_rx_pps']}/s): join during it -> first "
            f"datagram {fl['join_during_flood_ms']} ms; early member lost "
            f"{fl['early_member_lost']} of {fl['early_member_sent']}",
            f"      agent CPU {fl['agent_cpu_before_cores']} cores before, "
            f"{fl['agent_cpu_during_cores']} during, idle {fl['idle_after_s']} s after; flooder "
            f"holds {fl['flooder_groups']} groups, meter dropped "
            f"{fl['flooder_dropped_igmp_rate']} (igmpRate)"]
    if "error" not in v3 and v3:
        lines += [
            f"    IGMPv3 burst {v3['reports_sent']} reports ({v3['records_per_report']} records x "
            f"{v3['sources_per_record']} sources): agent CPU {v3['agent_cpu_during_cores']} "
            f"cores during, idle {v3['idle_after_s']} s after",
            f"      RSS {v3['rss_mb_before']} MB before, {v3['rss_mb_after_burst']} after the "
            f"burst, {v3['rss_mb_after_expiry']} after its {v3['attacker_groups']} groups expired"
            f" ({v3['expired_after_s']} s later, query interval {v3['query_interval']})"]
    if "error" not in sp and sp:
        lines.append(
            f"    spoofing: {sp['forged_sent']} forged datagrams, delivered "
            f"{sp['forged_delivered_total']} {sp['forged_delivered']}; dropped.spoofed "
            f"{sp['dropped_spoofed']}; attacker's honest ones delivered "
            f"{sp['attacker_honest_delivered']} of {sp['honest_sent']}")
    return lines


def _policy(sec: dict[str, Any]) -> list[str]:
    from tools.bench.policy import summary_lines as policy_lines  # (it imports the controller)
    return policy_lines(sec)


def summary_lines(results: dict[str, Any]) -> list[str]:
    meta = results.get("meta", {})
    host = _g(meta, "environment", "host", default={})
    lines = [f"kube-mcast bench ({meta.get('mode')}, {meta.get('duration_s')} s) at "
             f"{str(_g(meta, 'environment', 'git_head', default=''))[:10]}; host "
             f"{host.get('cpus')} CPUs, load {host.get('loadavg')}, busy "
             f"{host.get('busy_pct_1s')}% before start, {host.get('other_ovs_vswitchd')} "
             "other ovs-vswitchd running"]
    for key, fmt in (("programming", _programming), ("join_latency", _join),
                     ("throughput", _throughput), ("agent_scale", _scale),
                     ("baselines", _baselines), ("hostile", _hostile),
                     ("policy", _policy)):
        sec = results.get(key)
        if sec is None:
            continue
        if "error" in sec:
            lines.append(f"[{key}] ERROR: {sec['error']}")
            continue
        try:
            lines.extend(fmt(sec))
        except (KeyError, TypeError, ValueError) as exc:
            lines.append(f"[{key}] (summary incomplete: {exc!r}; see the JSON)")
    if "ratios" in results:
        lines.extend(ratios.table_lines(results["ratios"]))
    return lines
