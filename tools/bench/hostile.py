"""Section 6: a hostile pod against its node (issue 11's figures), on labs of the bench's own.

Three attacks from a pod, run with ``tools/mcattack.py`` as in ``tests/lab/test_hostile.py``
(which asserts the issue's bounds; here the same quantities are only measured):

- ``spoof`` (1-node lab A, query interval 10 s): the attacker sends datagrams with another
  pod's IP and/or MAC, a made-up MAC, the node's IP, to a group that a source-specific
  receiver (S = the victim) and an any-source receiver joined. Figures: forged datagrams sent,
  delivered to each receiver (0 expected), the attacker's ``dropped.spoofed`` in
  ``mcctl get podmulticaststats -o json``; the victim's and the attacker's honest datagrams
  delivered (proof the receivers work and honest traffic still flows).
- ``flood`` (lab A, after the spoof): IGMPv2 reports to random groups at ``flood_pps`` from
  ``flood_procs`` processes; a member that joined before receives a 200 pps stream throughout,
  a second pod joins another streamed group ``join_after_s`` into the flood. Figures: the rate
  sent and received by br-int, join -> first datagram during the flood, the early member's
  loss, agent CPU before/during/after, seconds until idle, groups the flooder holds and its
  ``dropped`` counters (``igmpRate``: the per-pod punt meter).
- ``v3burst`` (1-node lab B, short query interval so the forged memberships expire): IGMPv3
  reports stuffed with records of 40 sources. Figures: agent CPU during/after, idle after,
  RSS before / after the burst / after the memberships expired.

The agent's CPU and RSS come from /proc through ``common`` (the lab tests use the same code).
Each lab is a ``BenchLab`` (prefix ``kbx<hex>h…``), taken down whatever happens; an attack that
fails is recorded as ``{"error": ...}`` beside the others' figures.
"""

from __future__ import annotations

import json
import logging
import re
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tools.bench.common import (
    BenchError,
    CpuMeter,
    idle_after,
    memory_mb,
    seconds_until,
    wait_for,
)
from tools.bench.lab import PYTHON, BenchLab, Pod, result
from tools.mclab import netns

log = logging.getLogger(__name__)

TOOLS = Path(__file__).resolve().parents[1]
MCATTACK = str(TOOLS / "mcattack.py")
MCPROBE = str(TOOLS / "mcprobe.py")
NODE = "node1"
STREAM_PPS = 200
IDLE_LIMIT_S = 8.0  # watched after an attack for the agent to be idle
EXPIRY_LIMIT_S = 30.0
RSS_BOUND_MB = 20.0  # issue 11: RSS back within 20 MB once the memberships expired
TTL = 3
PROCS = 2  # the flood's sending processes (2 vCPUs)


# ------------------------------------------------------------------------ shared with the tests


def mcctl_dropped(rows: list[dict[str, Any]], namespace: str, name: str) -> dict[str, float]:
    """The ``dropped`` object of the pod's row in ``mcctl get podmulticaststats -o json``."""
    for row in rows:
        if (row.get("namespace"), row.get("name")) == (namespace, name):
            return {k: float(v) for k, v in row.get("dropped", {}).items()}
    return {}


def metric_dropped(text: str, metric: str, namespace: str, name: str) -> dict[str, float]:
    """{reason: value} of the agent's per-pod drop counter ``metric`` in Prometheus text."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(rf"{metric}\{{(.*)\}} (\S+)$", line)
        if m and f'pod="{name}"' in m.group(1) and f'namespace="{namespace}"' in m.group(1):
            reason = re.search(r'reason="(\w+)"', m.group(1))
            found[reason.group(1) if reason else "?"] = float(m.group(2))
    return found


# ------------------------------------------------------------------------ pods and probes


def _ref(pod: Pod) -> str:
    return f"default/{pod.name}"


class Recv:
    """``mcprobe recv`` in a pod (source-specific with ``source``), polled via its status."""

    def __init__(self, lab: BenchLab, pod: Pod, group: str, port: int,
                 source: str | None = None, duration: float = 120.0) -> None:
        probe = lab.dir / "probe"
        probe.mkdir(parents=True, exist_ok=True)
        base = probe / f"{pod.name}-{uuid.uuid4().hex[:6]}"
        self.ready, self.status = base.with_suffix(".ready"), base.with_suffix(".status")
        argv = [PYTHON, MCPROBE, "recv", group, str(port), "--duration", str(duration),
                "--ready", str(self.ready), "--status", str(self.status)]
        self.proc = lab.popen(pod, argv + (["--source", source] if source else []))
        self.name = pod.name

    def wait_ready(self, timeout: float = 15.0) -> Recv:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise BenchError(f"receiver in {self.name} exited {self.proc.returncode}")
            return self.ready.exists()

        wait_for(ready, timeout, f"receiver in {self.name} to join", interval=0.05)
        return self

    def state(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.status.read_text()))
        except (OSError, ValueError):
            return {}

    def count(self) -> int:
        return int(self.state().get("n", 0))

    def first_ms(self, timeout: float) -> float | None:
        """Up to ``timeout`` s for a first datagram: ms from the join to it, or None."""
        deadline = time.monotonic() + timeout
        while self.count() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        first = self.state().get("first_ms")
        return None if first is None else float(first)

    def settle(self, want: int, timeout: float = 5.0) -> int:
        """Until ``want`` counted or the count stopped moving for a second; the count."""
        deadline, last, moved = time.monotonic() + timeout, -1, time.monotonic()
        while self.count() < want and time.monotonic() < deadline:
            if self.count() != last:
                last, moved = self.count(), time.monotonic()
            elif time.monotonic() - moved > 1.0:
                break
            time.sleep(0.1)
        return self.count()

    def stop(self) -> dict[str, Any]:
        self.proc.terminate()
        return result(self.proc, 10.0)


def _attack(lab: BenchLab, pod: Pod, *args: str, timeout: float = 60.0) -> dict[str, Any]:
    return result(lab.popen(pod, [PYTHON, MCATTACK, *args]), timeout)


def _send(lab: BenchLab, pod: Pod, group: str, port: int, count: int) -> dict[str, Any]:
    return result(lab.popen(pod, [PYTHON, MCPROBE, "send", group, str(port), "--count",
                                  str(count), "--pps", str(STREAM_PPS), "--ttl", str(TTL)]),
                  30.0 + count / STREAM_PPS)


def _members(lab: BenchLab, pod: Pod) -> int:
    """Groups the agent lists ``pod`` as a local member of."""
    return sum(_ref(pod) in row["localPods"] for row in lab.client().members())


def _wait_members(lab: BenchLab, group: str, pods: list[Pod]) -> None:
    want = {_ref(p) for p in pods}
    wait_for(lambda: any(row["group"] == group and want <= set(row["localPods"])
                         for row in lab.client().members()),
             15.0, f"{sorted(want)} in {group}", interval=0.1)


def _dropped(lab: BenchLab, pod: Pod) -> dict[str, float]:
    return mcctl_dropped(lab.mcctl_json(NODE, "podmulticaststats"), "default", pod.name)


def _port_rx(lab: BenchLab, pod: Pod) -> int:
    ports = {f"{p['namespace']}/{p['name']}": int(p["ofport"])
             for p in lab.mcctl_json(NODE, "pods")}
    m = re.search(r"rx pkts=(\d+)", lab.ofctl(NODE, "dump-ports", "br-int",
                                              str(ports[_ref(pod)])))
    if not m:
        raise BenchError(f"no rx counter for {pod.name}'s port")
    return int(m.group(1))


def _mac(pod: Pod) -> str:
    out = netns.run(pod.netns, ["ip", "-o", "link", "show", pod.iface], timeout=10).stdout
    m = re.search(r"link/ether ([0-9a-f:]{17})", out)
    if not m:
        raise BenchError(f"no MAC for {pod.name}: {out!r}")
    return m.group(1)


# ------------------------------------------------------------------------ the attacks


def spoof(lab: BenchLab, per_kind: int, honest: int = 50) -> dict[str, Any]:
    g, port = "239.12.3.1", 5123
    attacker, victim = lab.pod("sp-attacker"), lab.pod("sp-victim")
    rxs = {"ssm_s_victim": Recv(lab, lab.pod("sp-ssm"), g, port, source=victim.ip),
           "any_source": Recv(lab, lab.pod("sp-any"), g, port)}
    for rx in rxs.values():
        rx.wait_ready()
    _wait_members(lab, g, [lab.pods["sp-ssm"], lab.pods["sp-any"]])
    victim_mac = _mac(victim)
    _send(lab, victim, g, port, honest)
    control = {name: rx.settle(honest) for name, rx in rxs.items()}
    forgeries = {"victim_ip": ["--src-ip", victim.ip], "victim_mac": ["--src-mac", victim_mac],
                 "victim_mac_and_ip": ["--src-mac", victim_mac, "--src-ip", victim.ip],
                 "made_up_mac": ["--src-mac", "02:de:ad:be:ef:01"],
                 "node_ip": ["--src-ip", lab.node_ip(NODE)]}
    sent = {what: int(_attack(lab, attacker, "spoof", g, str(port), "--count", str(per_kind),
                              "--pps", "500", "--ttl", str(TTL), "--tag", what, *opts)["sent"])
            for what, opts in forgeries.items()}
    time.sleep(1.5)
    delivered = {name: rx.count() - control[name] for name, rx in rxs.items()}
    _send(lab, attacker, g, port, honest)  # honest traffic of the attacker: still delivered?
    after = {name: rx.settle(control[name] + delivered[name] + honest, 3.0)
             for name, rx in rxs.items()}
    for rx in rxs.values():
        rx.stop()
    total = sum(sent.values())
    counted: dict[str, float] = {}

    def all_counted() -> bool:
        counted.update(_dropped(lab, attacker))
        return counted.get("spoofed", 0) >= total

    seconds_until(all_counted, 10.0)  # flow stats lag about a second
    return {"forged_sent": total, "forged_sent_by_kind": sent, "forged_delivered": delivered,
            "forged_delivered_total": sum(delivered.values()),
            "dropped_spoofed": counted.get("spoofed"), "attacker_dropped": counted,
            "victim_honest_delivered": control,
            "attacker_honest_delivered": {n: after[n] - control[n] - delivered[n]
                                          for n in rxs},
            "honest_sent": honest}


def flood(lab: BenchLab, pps: int, seconds: float, join_after_s: float) -> dict[str, Any]:
    g_early, g_late, port = "239.12.1.1", "239.12.1.2", 5121
    flooder, early_pod, late_pod, snd = (lab.pod(f"fl-{n}")
                                         for n in ("attacker", "early", "late", "snd"))
    early = Recv(lab, early_pod, g_early, port).wait_ready()
    _wait_members(lab, g_early, [early_pod])
    pid = lab.agent_pid()
    count = int(STREAM_PPS * (seconds + join_after_s + 2))
    senders = [lab.popen(snd, [PYTHON, MCPROBE, "send", g, str(port), "--count", str(count),
                               "--pps", str(STREAM_PPS)]) for g in (g_early, g_late)]
    wait_for(lambda: early.count() >= 20, 10.0, "the early member's stream")
    before = CpuMeter(pid)
    time.sleep(1.0)
    cpu_before = before.cores()

    rx0, cpu = _port_rx(lab, flooder), CpuMeter(pid)
    attack = lab.popen(flooder, [PYTHON, MCATTACK, "flood", "--rate", str(pps), "--duration",
                                 str(seconds), "--procs", str(PROCS)])
    time.sleep(join_after_s)
    late = Recv(lab, late_pod, g_late, port).wait_ready()
    join_ms = late.first_ms(timeout=seconds)
    sent = result(attack, seconds + 30)
    cpu_during = cpu.cores()
    idle_s, per_second = idle_after(pid, IDLE_LIMIT_S)
    switch_pps = (_port_rx(lab, flooder) - rx0) / max(float(sent["elapsed_s"]), 1e-3)
    for s in senders:
        result(s, 30.0)
    early.settle(count)
    got_early, got_late = early.stop(), late.stop()
    dropped = _dropped(lab, flooder)
    return {"target_pps": pps, "procs": PROCS, "duration_s": seconds, "sent": sent["sent"],
            "sent_pps": sent["pps"], "switch_rx_pps": round(switch_pps),
            "join_after_s": join_after_s, "join_during_flood_ms": join_ms,
            "late_member_received": got_late["n"], "stream_pps": STREAM_PPS,
            "early_member_sent": count, "early_member_received": got_early["distinct"],
            "early_member_lost": count - int(got_early["distinct"]),
            "agent_cpu_before_cores": round(cpu_before, 3),
            "agent_cpu_during_cores": round(cpu_during, 3),
            "agent_cpu_after_per_s": per_second,
            "idle_after_s": None if idle_s is None else round(idle_s, 2),
            "idle_limit_s": IDLE_LIMIT_S, "flooder_groups": _members(lab, flooder),
            "flooder_dropped": dropped, "flooder_dropped_igmp_rate": dropped.get("igmpRate")}


def v3burst(lab: BenchLab, reports: int, sources: int = 40, pps: int = 1000) -> dict[str, Any]:
    attacker = lab.pod("v3-attacker")
    pid = lab.agent_pid()
    time.sleep(1.0)
    before = memory_mb(pid)
    cpu = CpuMeter(pid)
    burst = _attack(lab, attacker, "v3burst", "--count", str(reports), "--sources",
                    str(sources), "--pps", str(pps), timeout=60 + reports / pps)
    cpu_burst, peak = cpu.cores(), memory_mb(pid)
    idle_s, per_second = idle_after(pid, IDLE_LIMIT_S)
    held = _members(lab, attacker)
    expired_s = seconds_until(lambda: _members(lab, attacker) == 0, EXPIRY_LIMIT_S)
    t0 = time.monotonic()  # RSS shrinks as the heap is trimmed: give it a few seconds
    while (after := memory_mb(pid))["VmRSS"] - before["VmRSS"] > RSS_BOUND_MB \
            and time.monotonic() - t0 < 5.0:
        time.sleep(0.5)
    return {"reports_sent": burst["sent"], "pps": burst["pps"],
            "records_per_report": burst["records_per_report"],
            "sources_per_record": burst["sources_per_record"],
            "query_interval": lab.query_interval,
            "agent_cpu_during_cores": round(cpu_burst, 3),
            "agent_cpu_after_per_s": per_second,
            "idle_after_s": None if idle_s is None else round(idle_s, 2),
            "idle_limit_s": IDLE_LIMIT_S, "attacker_groups": held,
            "expired_after_s": expired_s, "expiry_limit_s": EXPIRY_LIMIT_S,
            "rss_mb_before": round(before["VmRSS"], 1),
            "rss_mb_after_burst": round(peak["VmRSS"], 1),
            "rss_mb_peak": round(peak["VmHWM"], 1),
            "rss_mb_after_expiry": round(after["VmRSS"], 1),
            "rss_wait_after_expiry_s": round(time.monotonic() - t0, 1)}


# ------------------------------------------------------------------------ the section


def _part(out: dict[str, Any], key: str, fn: Callable[[], dict[str, Any]]) -> None:
    t0 = time.monotonic()
    try:
        out[key] = fn()
    except Exception as exc:  # noqa: BLE001 - recorded, the other attacks still run
        log.error("hostile.%s failed: %s", key, exc)
        out[key] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    out[key]["part_s"] = round(time.monotonic() - t0, 1)


def run(tag: str, flood_pps: int, flood_s: float, join_after_s: float, burst_reports: int,
        spoof_per_kind: int, burst_query_interval: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with BenchLab(tag, 1, label="ha", query_interval="10s") as lab:
        out["lab_a"] = {"query_interval": lab.query_interval, "up_s": lab.up_s}
        _part(out, "spoof", lambda: spoof(lab, spoof_per_kind))
        lab.stop_all()
        _part(out, "flood", lambda: flood(lab, flood_pps, flood_s, join_after_s))
    with BenchLab(tag, 1, label="hb", query_interval=burst_query_interval) as lab_b:
        out["lab_b"] = {"query_interval": lab_b.query_interval, "up_s": lab_b.up_s}
        _part(out, "v3burst", lambda: v3burst(lab_b, burst_reports))
    return out


PARTS = ("spoof", "flood", "v3burst")


def errors(section: dict[str, Any]) -> list[str]:
    """``hostile.<part>`` for each attack that failed."""
    return [f"hostile.{k}" for k in PARTS
            if isinstance(section.get(k), dict) and "error" in section[k]]
