"""Section 3: multicast throughput through our pipeline (agent-programmed groups in OVS).

Single node: 1 sender pod -> 4 and 8 receiver pods, paced at 10k / 20k / 40k pps (200-byte
datagrams, like NOTES §C4). Cross-node (3-node lab, VXLAN encap): 1 sender -> 1 local + 2
remote receivers at 10k / 20k pps.

Per point: a fresh group; the receivers join (``podtool recv``) and the agent(s) must list
them as members before the sender starts, so every datagram counts. Figures per point:
datagrams sent and the rate achieved, delivered pps per receiver and in total, loss
(1 - distinct datagrams received / sent) per receiver (worst and mean), one-way delay p50/p99,
and the CPU share of ovs-vswitchd and of the agent on the sender's node during the point.

The steps of a point (``start_receivers``, ``send``, ``tally``, ``ovs_figures``) and the
repetition of points (``series``) are shared with the OVS-snooping anchor (``baselines``), so
both are measured by the same code; only the "switch knows the receivers" wait differs.
"""

from __future__ import annotations

import logging
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

from tools.bench.common import BenchError, CpuMeter, wait_for
from tools.bench.lab import BenchLab, Pod, PodProcs, result

log = logging.getLogger(__name__)

PORT = 5002
SIZE = 200
SUMMARY_KEYS = ("sent_pps", "delivered_total_pps", "delivered_pps_per_receiver_mean",
                "loss_pct_max", "loss_pct_mean", "loss_pct_by_node", "lost_before_ovs_pct",
                "owd_ms_p50", "owd_ms_p99_max", "vswitchd_cpu_pct", "vswitchd_cpu_us_per_packet",
                "agent_cpu_pct")
BASELINE = {"group_table_8rx_40k_loss_pct": [0.1, 0.1, 0.4],
            "max_lossless_total_pps": 320_000,
            "note": "NOTES §C4: ~320k pps delivered in total without loss (40k x 8, 80k x 4)"}


def _bypass_flow(lab: BenchLab, sender: Pod, receivers: Sequence[Pod], group: str) -> str:
    """A flow above the whole pipeline (table 0) sending ``group`` from the sender's port
    straight to the receivers' ports: plain OVS replication, for the control runs."""
    ports = {p.name: p.ofport for p in lab.client(sender.node).list_pods()}
    outs = ",".join(f"output:{ports[r.name]}" for r in receivers)
    match = f"table=0,priority=65000,udp,in_port={ports[sender.name]},nw_dst={group}"
    lab.ofctl(sender.node, "add-flow", "br-int", f"{match},actions={outs}")
    return match


def start_receivers(host: PodProcs, receivers: Sequence[Pod], group: str,
                    duration: float) -> list[subprocess.Popen[str]]:
    """``podtool recv`` in each receiver pod, returned once every one has joined ``group``."""
    ready_dir = host.dir / "bench-ready"
    ready_dir.mkdir(parents=True, exist_ok=True)
    readies = [ready_dir / f"{group}-{r.name}" for r in receivers]
    procs = [host.podtool(r, "recv", group, str(PORT), "--duration", str(duration + 20),
                          "--idle", "1.0", "--ready", str(f))
             for r, f in zip(receivers, readies, strict=True)]
    wait_for(lambda: all(f.exists() for f in readies), 15, f"receivers of {group} to join")
    return procs


def send(host: PodProcs, sender: Pod, group: str, pps: int, duration: float) -> dict[str, Any]:
    """The paced sender, run to its end: what it sent."""
    return host.podtool_run(sender, "send", group, str(PORT), "--pps", str(pps), "--duration",
                            str(duration), "--size", str(SIZE), timeout=duration + 30)


def tally(receivers: Sequence[Pod], procs: Sequence[subprocess.Popen[str]], tx: dict[str, Any],
          group: str, pps: int, duration: float) -> dict[str, Any]:
    """Collect the receivers' results and reduce them to one point's delivery figures."""
    rx = [result(p, duration + 30) for p in procs]
    sent, secs = tx["sent"], tx["secs"]
    per = []
    for r, got in zip(receivers, rx, strict=True):
        per.append({"pod": r.name, "node": r.node, "received": got["n"],
                    "distinct": got["distinct"],
                    "loss_pct": round(100 * (1 - got["distinct"] / sent), 3) if sent else None,
                    "delivered_pps": round(got["distinct"] / secs, 1) if secs else 0,
                    "owd_ms_p50": got.get("owd_ms_p50"), "owd_ms_p99": got.get("owd_ms_p99")})
    losses = [p["loss_pct"] for p in per if p["loss_pct"] is not None]
    p50s = [p["owd_ms_p50"] for p in per if p["owd_ms_p50"] is not None]
    p99s = [p["owd_ms_p99"] for p in per if p["owd_ms_p99"] is not None]
    nodes = sorted({r.node for r in receivers})
    return {
        "receivers": len(receivers), "target_pps": pps, "group": group,
        "sent": sent, "sent_pps": tx["pps"], "enobufs": tx.get("enobufs", 0),
        "delivered_total_pps": round(sum(p["delivered_pps"] for p in per), 1),
        "delivered_pps_per_receiver_mean": round(
            statistics.fmean(p["delivered_pps"] for p in per), 1),
        "loss_pct_max": max(losses) if losses else None,
        "loss_pct_by_node": {n: max(p["loss_pct"] for p in per if p["node"] == n)
                             for n in nodes} if sent else None,
        "loss_pct_mean": round(statistics.fmean(losses), 3) if losses else None,
        "owd_ms_p50": round(statistics.median(p50s), 3) if p50s else None,
        "owd_ms_p99_max": max(p99s) if p99s else None,
        "per_receiver": per,
    }


def ovs_figures(dp: dict[str, float], sent: int, cpu_pct: float,
                cpu_s: float) -> dict[str, Any]:
    """What the sender's ovs-vswitchd did during a point: its CPU, the packets it read (every
    port, so a few IGMP/ND frames too: what is missing from ``sent`` was lost before OVS, in
    the socket it polls) and its CPU per packet read."""
    received = dp.get("packets received")
    return {"vswitchd_cpu_pct": cpu_pct, "ovs_received": received,
            "lost_before_ovs_pct": max(0.0, round(100 * (1 - received / sent), 3))
            if sent and received is not None else None,
            "vswitchd_cpu_us_per_packet": round(1e6 * cpu_s / received, 1)
            if received else None}


def _point(lab: BenchLab, sender: Pod, receivers: Sequence[Pod], group: str, pps: int,
           duration: float, bypass: bool = False) -> dict[str, Any]:
    procs = start_receivers(lab, receivers, group, duration)
    by_node: dict[str, int] = {}
    for r in receivers:
        by_node[r.node] = by_node.get(r.node, 0) + 1
    remote = sum(1 for n in by_node if n != sender.node)
    for node, count in by_node.items():
        lab.wait_members(node, group, local=count)
    lab.wait_members(sender.node, group, local=by_node.get(sender.node, 0), remote=remote)
    bypass_match = _bypass_flow(lab, sender, receivers, group) if bypass else None
    nodes = sorted({sender.node, *by_node})
    for node in nodes:
        lab.appctl(node, "dpif-netdev/pmd-stats-clear")
    ovs = CpuMeter(lab.vswitchd_pid(sender.node))
    agent = CpuMeter(lab.agent_pid(sender.node))
    tx = send(lab, sender, group, pps, duration)
    ovs_pct, ovs_cpu_s, agent_pct = ovs.percent(), ovs.seconds(), agent.percent()
    dps = {n: datapath_stats(lab.appctl(n, "dpif-netdev/pmd-stats-show")) for n in nodes}
    actions = megaflow_actions(lab.appctl(sender.node, "dpctl/dump-flows"), group)
    if bypass_match is not None:
        lab.ofctl(sender.node, "del-flows", "--strict", "br-int", bypass_match)
    out = tally(receivers, procs, tx, group, pps, duration)
    out["path"] = "bypass" if bypass else "pipeline"
    out.update(ovs_figures(dps[sender.node], tx["sent"], ovs_pct, ovs_cpu_s))
    out.update({"agent_cpu_pct": agent_pct, "megaflow_actions": actions,
                "datapath_by_node": dps})
    return out


def datapath_stats(text: str) -> dict[str, float]:
    """The counters of ``dpif-netdev/pmd-stats-show`` (all threads summed)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition(":")
        if not sep:
            continue
        try:
            num = float(value.split()[0])
        except (ValueError, IndexError):
            continue
        if key.startswith("avg."):
            out[key] = num
        else:
            out[key] = out.get(key, 0) + num
    return out


def megaflow_actions(text: str, group: str) -> list[str]:
    """The datapath actions of the megaflows for traffic to ``group`` (what OVS executes
    per packet once the pipeline has been translated)."""
    return [line.rsplit("actions:", 1)[1] for line in text.splitlines()
            if f"dst={group}," in line and "actions:" in line]


def _median_rep(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median run by worst-receiver loss (its figures), plus every run's loss."""
    good = sorted((p for p in runs if "error" not in p), key=lambda p: p["loss_pct_max"])
    if not good:
        return {"ok": 0}
    median = good[(len(good) - 1) // 2]
    return {"ok": len(good), **{k: median[k] for k in SUMMARY_KEYS if k in median},
            "loss_pct_max_all": [p["loss_pct_max"] for p in good],
            "delivered_total_pps_all": [p["delivered_total_pps"] for p in good]}


PointFn = Callable[[str, int, bool], dict[str, Any]]
"""One point: (fresh group, offered pps, through the bypass flow?) -> its figures."""


def series(host: PodProcs, point: PointFn, receivers: int, rates: Sequence[int], reps: int,
           tag: int, control: bool = False, octet: int = 202) -> list[dict[str, Any]]:
    """Each rate ``reps`` times (fresh group ``239.<octet>.<tag>.x`` each); the median rep by
    worst loss is the figure, every rep is kept. With ``control``, each rep is followed by
    the same point through a bypass flow (plain OVS replication, none of our pipeline,
    groups ``239.<octet + 1>...``): on a shared host, the gap between the two is what our
    pipeline costs, the rest is the host and the datapath."""
    points = []
    for j, pps in enumerate(rates):
        runs: list[dict[str, Any]] = []
        controls: list[dict[str, Any]] = []
        for r in range(reps):
            for bypass in (False, True) if control else (False,):
                group = f"239.{octet + bypass}.{tag}.{j * 20 + r + 1}"
                try:
                    got = point(group, pps, bypass)
                except BenchError as exc:
                    log.warning("throughput point %s at %d pps: %s", group, pps, exc)
                    got = {"receivers": receivers, "target_pps": pps, "error": str(exc)}
                (controls if bypass else runs).append(got)
                host.stop_all()
                time.sleep(0.3)
        summary = {"receivers": receivers, "target_pps": pps, "reps": len(runs),
                   **_median_rep(runs)}
        if control:
            summary["control_bypass"] = _median_rep(controls)
        summary["runs"] = runs + controls
        points.append(summary)
    return points


def _lab_series(lab: BenchLab, sender: Pod, receivers: Sequence[Pod], rates: Sequence[int],
                duration: float, reps: int, tag: int, control: bool) -> list[dict[str, Any]]:
    def point(group: str, pps: int, bypass: bool) -> dict[str, Any]:
        return _point(lab, sender, receivers, group, pps, duration, bypass)

    return series(lab, point, len(receivers), rates, reps, tag, control)


def run_local(lab: BenchLab, counts: Sequence[int], rates: Sequence[int], duration: float,
              reps: int, control: bool = False) -> dict[str, Any]:
    """One node: 1 sender -> each receiver count in ``counts``, at each rate."""
    sender = lab.pod("tp-tx")
    pool = [lab.pod(f"tp-rx{i}") for i in range(1, max(counts) + 1)]
    runs = {f"{k}_receivers": _lab_series(lab, sender, pool[:k], rates, duration, reps, k,
                                          control) for k in counts}
    return {"duration_s": duration, "reps": reps, "control_bypass": control,
            "payload_bytes": SIZE, "rates_pps": list(rates),
            "series": runs, "baseline_notes_c4": BASELINE}


def run_cross(lab: BenchLab, rates: Sequence[int], duration: float,
              reps: int) -> dict[str, Any]:
    """Three nodes (encap): sender on node1 -> 1 receiver on node1, one each on node2, node3."""
    sender = lab.pod("x-tx", "node1")
    receivers = [lab.pod("x-rx1", "node1"), lab.pod("x-rx2", "node2"), lab.pod("x-rx3", "node3")]
    points = _lab_series(lab, sender, receivers, rates, duration, reps, 100, control=False)
    return {"duration_s": duration, "reps": reps, "payload_bytes": SIZE, "encap": "vxlan",
            "layout": "sender node1 -> rx node1 (local), node2, node3 (remote)",
            "rates_pps": list(rates), "points": points}
