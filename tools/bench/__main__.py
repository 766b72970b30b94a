"""``python -m tools.bench [--quick] [--out FILE]``: measure the real parts, write JSON, summarise.

Sections, in the order they run:
1. ``programming``: builders -> diff -> OpenFlowSwitch.apply into a private ovs-vswitchd, then
   the same ops with ``ovs-ofctl bundle`` into the same switch (the anchor);
2. ``join_latency``: join() -> first datagram through the whole product (1-node lab);
3. ``throughput``: 1 sender -> 4/8 receivers on one node, then 1 local + 2 remote receivers
   in a 3-node lab (encap);
4. ``agent_scale``: agent RSS, idle CPU and API listing time as one pod joins many groups;
5. ``baselines``: the same join latency and single-node delivery measured on OVS's own IGMP
   snooping and on a Linux bridge with snooping (``baselines.py``);
6. ``hostile``: issue 11's figures: a pod's IGMP flood, IGMPv3 burst and spoofed datagrams
   against the agent and the other pods, on 1-node labs of its own (``hostile.py``);
7. ``policy``: the controller's policy computation at 5,000 pods / 500 policies / 100 nodes
   (quick: 400 / 40 / 10), one pod label change, one policy change, growth (``policy.py``).

Sections 2, 3 (single node) and 4 share one ``mclab up --nodes 1`` lab; the anchors' beds come
up after it is gone, then the cross-node part brings up a 3-node lab, and ``hostile`` its own
1-node labs last (one after the other: an attack's leftovers never meet another section).
Every lab, bed and netns uses a prefix of this run's own (``kbx<hex>``), and is torn down
whatever happens (also on Ctrl-C / SIGTERM). A section that fails is recorded as
``{"error": ...}`` and the run goes on; the exit status is then 1. At the end ``ratios``
(ours / anchor per figure of issue 12, ``ratios.py``) is added to the results and the plots
(``plots.py``) are written beside them. ``--quick`` uses smaller sizes and shorter points
(< 4 minutes in all); the figures are the same kind, only noisier.

Progress goes to stderr as the run goes (``bench: [  12.3s] join_latency: started``, then
``done in 8.1s`` or ``FAILED after ...``, and each lab as it comes up); stdout keeps the
summary.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tools.bench import (
    baselines,
    hostile,
    joinlat,
    plots,
    policy,
    programming,
    ratios,
    report,
    scale,
    throughput,
)
from tools.bench.lab import BenchLab

log = logging.getLogger("tools.bench")

DEFAULT_OUT = Path(__file__).with_name("results") / "latest.json"
SCALE_AGENT_CONFIG = {"multicast": {
    "limits": {"groupsPerPod": 50_000, "groupsPerNode": 100_000},
    "igmpRateLimit": {"podPps": 20_000},
}}
"""The shared one-node lab measures speed and scale, not protection: one pod joins 10k groups
(20k reports) there, past the default caps and punt rate (the hostile section keeps those)."""
SECTIONS = ("programming", "join_latency", "throughput", "agent_scale", "baselines", "hostile",
            "policy")


@dataclass(frozen=True)
class Plan:
    """Sizes of one run."""

    prog_sizes: tuple[int, ...]
    prog_changes: int
    join_reps: int
    tp_duration_s: float
    tp_reps: int
    scale_groups: int
    scale_entries: int
    scale_idle_s: float
    scale_timeout_s: float
    scale_cycles: int
    tp_control: bool
    tp_counts: tuple[int, ...] = (4, 8)
    tp_rates: tuple[int, ...] = (10_000, 20_000, 40_000)
    cross_rates: tuple[int, ...] = (10_000, 20_000)
    flood_pps: int = 65_000
    flood_s: float = 10.0
    flood_join_after_s: float = 3.0
    burst_reports: int = 3000
    burst_query_interval: str = "5s"
    spoof_per_kind: int = 100
    policy_size: tuple[int, int, int] = policy.FULL_SIZE  # pods, policies, nodes


QUICK = Plan(prog_sizes=(250, 1000), prog_changes=20, join_reps=10, tp_duration_s=1.0,
             tp_reps=1, scale_groups=500, scale_entries=2000, scale_idle_s=1.5,
             scale_timeout_s=60, scale_cycles=1, tp_control=False, flood_s=3.0,
             flood_join_after_s=1.0, burst_reports=1000, burst_query_interval="3s",
             spoof_per_kind=50, policy_size=policy.QUICK_SIZE)
FULL = Plan(prog_sizes=(1000, 10_000), prog_changes=100, join_reps=30, tp_duration_s=3.0,
            tp_reps=3, scale_groups=1000, scale_entries=10_000, scale_idle_s=5.0,
            scale_timeout_s=300, scale_cycles=2, tp_control=True)


@dataclass(frozen=True)
class Run:
    """What every section of one run shares."""

    plan: Plan
    tag: str
    settle_s: float
    started: float = field(default_factory=time.monotonic)

    @property
    def marker(self) -> str:
        return f"kbx{self.tag}"

    def progress(self, message: str) -> None:
        """One line on stderr, the seconds since the run started in front."""
        print(f"bench: [{time.monotonic() - self.started:7.1f}s] {message}", file=sys.stderr,
              flush=True)


def _guarded(run: Run, results: dict[str, Any], key: str,
             fn: Callable[[], dict[str, Any]]) -> None:
    """Run one section into ``results[key]``; an exception becomes ``{"error": ...}``."""
    before = report.load_now(run.marker, run.settle_s)
    log.info("section %s (host %s%% busy) ...", key, before["busy_pct_1s"])
    run.progress(f"{key}: started (host {before['busy_pct_1s']}% busy)")
    t0 = time.monotonic()
    try:
        out = fn()
    except Exception as exc:  # noqa: BLE001 - recorded, the other sections still run
        log.error("section %s failed: %s", key, exc)
        out = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    out["section_s"] = round(time.monotonic() - t0, 1)
    run.progress(f"{key}: done in {out['section_s']}s" if "error" not in out
                 else f"{key}: FAILED after {out['section_s']}s: {out['error']}")
    out["host_before"] = before
    results[key] = out


def _lab_sections(run: Run, results: dict[str, Any], wanted: set[str]) -> None:
    plan = run.plan
    if wanted & {"join_latency", "throughput", "agent_scale"}:
        run.progress("1-node lab: coming up")
        with BenchLab(run.tag, 1, agent_config=SCALE_AGENT_CONFIG) as lab:
            run.progress(f"1-node lab: up in {lab.up_s}s")
            results.setdefault("labs", {})["one_node_up_s"] = lab.up_s
            if "join_latency" in wanted:
                _guarded(run, results, "join_latency", lambda: joinlat.run(lab, plan.join_reps))
            if "throughput" in wanted:
                _guarded(run, results, "throughput", lambda: {
                    "single_node": throughput.run_local(lab, plan.tp_counts, plan.tp_rates,
                                                        plan.tp_duration_s, plan.tp_reps,
                                                        plan.tp_control)})
            if "agent_scale" in wanted:
                _guarded(run, results, "agent_scale", lambda: scale.run(
                    lab, plan.scale_groups, plan.scale_entries, plan.scale_idle_s,
                    plan.scale_timeout_s, plan.scale_cycles))
    if "baselines" in wanted:
        _guarded(run, results, "baselines", lambda: baselines.run(
            run.tag, plan.join_reps, plan.tp_counts, plan.tp_rates, plan.tp_duration_s,
            plan.tp_reps))
    if "throughput" in wanted:
        def cross() -> dict[str, Any]:
            run.progress("3-node lab: coming up")
            with BenchLab(run.tag, 3) as lab3:
                run.progress(f"3-node lab: up in {lab3.up_s}s")
                results.setdefault("labs", {})["three_node_up_s"] = lab3.up_s
                return throughput.run_cross(lab3, plan.cross_rates, plan.tp_duration_s,
                                            plan.tp_reps)

        holder: dict[str, Any] = {}
        _guarded(run, holder, "cross_node", cross)
        results.setdefault("throughput", {})["cross_node"] = holder["cross_node"]
    if "hostile" in wanted:
        _guarded(run, results, "hostile", lambda: hostile.run(
            run.tag, plan.flood_pps, plan.flood_s, plan.flood_join_after_s, plan.burst_reports,
            plan.spoof_per_kind, plan.burst_query_interval))


def run_all(plan: Plan, mode: str, wanted: set[str], settle_s: float = 0.0) -> dict[str, Any]:
    run = Run(plan, uuid.uuid4().hex[:6], settle_s)
    started = time.time()
    results: dict[str, Any] = {"meta": {
        "tool": "python -m tools.bench", "mode": mode, "run_tag": run.marker,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "plan": asdict(plan), "environment": report.environment(run.marker)}}
    if "programming" in wanted:
        workdir = Path(f"/tmp/{run.marker}-prog")
        try:
            _guarded(run, results, "programming", lambda: programming.run(
                plan.prog_sizes, plan.prog_changes, f"{run.marker}-ovs", workdir))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    _lab_sections(run, results, wanted)
    if "policy" in wanted:
        _guarded(run, results, "policy", lambda: policy.run(plan.policy_size))
    run.progress("all sections done: ratios, plots and the summary")
    results["ratios"] = ratios.compute(results)
    results["meta"]["duration_s"] = round(time.time() - started, 1)
    results["meta"]["host_after"] = report.load_now(run.marker)
    return results


def _errors(results: dict[str, Any]) -> list[str]:
    found = [k for k in SECTIONS if isinstance(results.get(k), dict) and "error" in results[k]]
    cross = results.get("throughput", {}).get("cross_node", {})
    if isinstance(cross, dict) and "error" in cross:
        found.append("throughput.cross_node")
    for bed, block in (results.get("baselines") or {}).items():
        if isinstance(block, dict) and "error" in block:
            found.append(f"baselines.{bed}")
    found += hostile.errors(results.get("hostile") or {})
    if "error" in results.get("plots", {}):
        found.append("plots")
    return found


def _plots(results: dict[str, Any], out: Path) -> None:
    """The PNGs beside ``out``; a failure is recorded (and makes the exit status 1)."""
    try:
        results["plots"] = plots.write_all(results, out)
    except Exception as exc:  # noqa: BLE001 - the figures are in the JSON all the same
        log.error("plots failed: %s", exc)
        results["plots"] = {"error": f"{type(exc).__name__}: {exc}",
                            "traceback": traceback.format_exc()}


_MAIN_PID = os.getpid()


def _on_sigterm(signum: int, _frame: object) -> None:
    if os.getpid() != _MAIN_PID:  # a forked helper (pyroute2 forks for netns sockets)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds every lab's ``with`` block


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes, < 4 minutes")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT}")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--settle", type=float, default=0.0, metavar="S",
                   help="before each section wait up to S seconds for the host to be < 30%% "
                        "busy (other labs share the CPUs)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    wanted = {s.strip() for s in args.sections.split(",") if s.strip()}
    unknown = wanted - set(SECTIONS)
    if unknown:
        p.error(f"unknown sections {sorted(unknown)}")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("agent").setLevel(logging.ERROR)  # the in-process switch's chatter
    signal.signal(signal.SIGTERM, _on_sigterm)
    results = run_all(QUICK if args.quick else FULL, "quick" if args.quick else "full", wanted,
                      args.settle)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    _plots(results, args.out)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    tmp.replace(args.out)
    print("\n".join(report.summary_lines(results)))
    made = results["plots"]
    print(f"results: {args.out}; "
          + ("plots FAILED" if "error" in made else f"plots: {', '.join(made.values())}"))
    errors = _errors(results)
    if errors:
        print(f"sections with errors: {', '.join(errors)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
