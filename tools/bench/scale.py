"""Section 4: the agent's memory, CPU and responsiveness as one pod's memberships grow.

One node, one pod (``sc-m``) that joins groups with real ``IP_ADD_MEMBERSHIP`` calls
(``podtool joinmany`` raises ``net.ipv4.igmp_max_memberships`` inside the pod netns; the
kernel default is 20). The pod kernel reports the joins as IGMPv3 state-change reports, the
agent learns each group from them and installs its route flow and group.

Stages: idle (no group), then N1 groups (1000 in a full run), then N2 membership entries
(10000: the same pod joins N2 - N1 more groups). At each stage:
- agent VmRSS (/proc/<pid>/status) and threads; CPU share while idle for a few seconds
  (a timer thread runs every 100 ms: this shows whether it spins with many groups);
- convergence: first join() -> the agent's health reports every group, with the agent CPU
  seconds spent on it and how many groups/s that is end to end;
- OpenFlow groups on br-int (ovs-ofctl) as a check;
- time to list every group through the agent's local API (``members``, what ``mcctl get
  members/groups`` calls), as the median of 3 calls, and ``mcctl get groups`` as a whole CLI;
Finally every membership is dropped at once (the joining processes exit) and the time until
the agent has no group left is recorded (slow leave: one group-specific query per group).
Optionally the largest size is joined and left again a few times, with RSS after each, to
tell a leak from a high-water mark.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import statistics
import subprocess
import time
from typing import Any

from tools.bench.common import (
    BenchError,
    CpuMeter,
    Stopwatch,
    rss_kib,
    sample_cpu,
    threads,
    wait_for,
)
from tools.bench.lab import MCCTL, BenchLab, Pod, stop

log = logging.getLogger(__name__)

BASE = int(ipaddress.IPv4Address("239.150.0.0"))


def _agent_groups(lab: BenchLab) -> int:
    return int(lab.client().health().get("groups", 0))


def _ovs_groups(lab: BenchLab) -> int:
    return lab.ofctl("node1", "dump-groups", "br-int").count("group_id=")


def _snapshot(lab: BenchLab, idle_s: float) -> dict[str, Any]:
    pid = lab.agent_pid()
    snap: dict[str, Any] = {"agent_rss_kib": rss_kib(pid), "agent_threads": threads(pid),
                            "agent_idle_cpu_pct": sample_cpu(pid, idle_s),
                            "vswitchd_rss_kib": rss_kib(lab.vswitchd_pid())}
    snap["agent_rss_kib_after_idle"] = rss_kib(pid)
    return snap


def _list_times(lab: BenchLab) -> dict[str, Any]:
    client = lab.client(timeout=120)
    walls, rows = [], 0
    for _ in range(3):
        with Stopwatch() as t:
            rows = len(client.members())
        walls.append(t.ms)
    with Stopwatch() as cli:
        res = subprocess.run([MCCTL, "--node", "node1", "get", "groups"], env=lab.env,
                             capture_output=True, text=True, timeout=120)
    return {"api_members_ms": round(statistics.median(walls), 2),
            "api_members_ms_all": [round(w, 2) for w in walls], "rows": rows,
            "mcctl_get_groups_ms": round(cli.ms, 1),
            "mcctl_rows": max(0, len(res.stdout.splitlines()) - 1)}


def _join(lab: BenchLab, pod: Pod, first: int, count: int, target: int,
          timeout: float) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Join groups first..first+count-1 from ``pod``; wait until the agent has ``target``."""
    ready = lab.dir / f"bench-join-{first}-{count}-{time.monotonic_ns()}.ready"  # never reused
    agent = CpuMeter(lab.agent_pid())
    proc = lab.podtool(pod, "joinmany", str(ipaddress.IPv4Address(BASE + first)), str(count),
                       "--ready", str(ready), "--hold", "3600")
    wait_for(lambda: ready.exists() or proc.poll() is not None, 60, "joinmany to finish")
    if proc.poll() is not None:
        raise BenchError(f"joinmany exited {proc.returncode}: {proc.communicate()[0].strip()}")
    info = json.loads(ready.read_text())
    seen = 0
    converged = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = _agent_groups(lab)
        if seen >= target:
            converged = time.time() - info["t_start"]
            break
        time.sleep(0.1)
    return proc, {
        "joined_by_pod": info["joined"], "pod_join_calls_ms": round(
            (info["t_end"] - info["t_start"]) * 1e3, 1),
        "agent_groups": seen, "converged": converged is not None,
        "converge_s": None if converged is None else round(converged, 2),
        "groups_per_s": None if not converged else round(count / converged, 1),
        "agent_cpu_s": agent.seconds(),
    }


def _wait_empty(lab: BenchLab, timeout: float) -> int | None:
    left = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = _agent_groups(lab)
        if left == 0:
            break
        time.sleep(0.2)
    return left


def _cycles(lab: BenchLab, pod: Pod, n: int, cycles: int, timeout: float) -> list[dict]:
    """Join all ``n`` groups at once and leave them again, ``cycles`` times: does RSS keep
    growing (a leak) or stay at its high-water mark?"""
    out = []
    for _ in range(cycles):
        proc, stage = _join(lab, pod, 0, n, n, timeout)
        rss_joined = rss_kib(lab.agent_pid())
        with Stopwatch() as leave:
            stop(proc)
            left = _wait_empty(lab, timeout)
        out.append({"groups": n, "converge_s": stage["converge_s"],
                    "agent_rss_kib_joined": rss_joined, "leave_s": round(leave.s, 2),
                    "agent_groups_left": left, "agent_rss_kib_left": rss_kib(lab.agent_pid())})
    return out


def run(lab: BenchLab, n1: int, n2: int, idle_s: float, timeout: float,
        cycles: int = 0) -> dict[str, Any]:
    pod = lab.pod("sc-m")
    out: dict[str, Any] = {"idle": _snapshot(lab, idle_s)}
    procs = []
    stages = [("groups_1", 0, n1)] + ([("entries_2", n1, n2 - n1)] if n2 > n1 else [])
    for name, first, count in stages:
        proc, stage = _join(lab, pod, first, count, first + count, timeout)
        procs.append(proc)
        stage["target"] = first + count
        stage["ovs_groups"] = _ovs_groups(lab)
        stage.update(_snapshot(lab, idle_s))
        stage.update(_list_times(lab))
        out[name] = stage
        if not stage["converged"]:
            log.warning("scale stage %s: the agent had %d of %d groups after %.0fs", name,
                        stage["agent_groups"], first + count, timeout)
            break
    total = sum(out[n]["joined_by_pod"] for n, _, _ in stages if n in out)
    agent = CpuMeter(lab.agent_pid())
    with Stopwatch() as leave:
        for proc in procs:
            stop(proc)
        left = _wait_empty(lab, timeout)
    out["leave_all"] = {"groups": total, "seconds": round(leave.s, 2),
                        "agent_groups_left": left, "agent_cpu_s": agent.seconds()}
    out["after_leave"] = {"agent_rss_kib": rss_kib(lab.agent_pid())}
    if cycles and left == 0:
        out["join_leave_cycles"] = _cycles(lab, pod, max(n1, n2), cycles, timeout)
    return out
