"""Ours against the anchors measured in the same run: the ``ratios`` block and its table.

This module owns issue 12's targets (figure, ratio key, direction, limit) and how each ratio
is taken from a results file: which of our figures, which anchor figure, at which size or
rate. Every entry carries both raw figures beside the ratio, so a reader can tell a slow run
of ours from a fast run of the anchor:

    {"value": v, "ratio": ours / anchor, "ours": x, "anchor": y, "unit": "...",
     "target": ">= 0.5", "met": bool, "figure": "...", "ours_is": "...", "anchor_is": "..."}

``value`` is what the target is about: the ratio, except for ``rss_growth_mb``, an absolute
growth (ours = agent RSS after the last join/leave cycle, anchor = after the first). An entry
whose figures are missing (a section failed or was not run) has ``value`` None and says why in
``missing``. Targets are reported, never asserted by tests.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

LOSS_ONSET_PCT = 0.1
"""OVS snooping "starts to lose" at the lowest offered rate where its worst receiver misses at
least this share (0.1 %: 20 datagrams of a 20k pps x 1 s point, above the odd lost packet)."""

Figures = tuple[float, float, dict[str, Any]]  # ours, anchor, what they were taken at


class Missing(LookupError):
    """A figure a ratio needs is not in the results."""


def _get(d: Any, *path: str | int) -> Any:
    """``d[path[0]][path[1]]...``; Missing if a key is absent or a block on the way failed."""
    for depth, key in enumerate(path):
        try:
            d = d[key]
        except (KeyError, IndexError, TypeError) as exc:
            raise Missing(".".join(map(str, path))) from exc
        if isinstance(d, dict) and "error" in d:
            raise Missing(f"{'.'.join(map(str, path[:depth + 1]))}: {d['error']}")
    return d


def _num(d: Any, *path: str | int) -> float:
    value = _get(d, *path)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise Missing(f"{'.'.join(map(str, path))} = {value!r}")
    return float(value)


def _programming(r: dict[str, Any]) -> Figures:
    size = _get(r, "programming", "sizes", -1)
    ours = _num(size, "install", "ops_per_s")
    anchor = _num(size, "ofctl_bundle", "install", "ops_per_s")
    return ours, anchor, {"groups": size["groups"],
                          "buckets_per_group": r["programming"].get("buckets_per_group")}


def _report_to_first(stat: str) -> Callable[[dict[str, Any]], Figures]:
    def take(r: dict[str, Any]) -> Figures:
        anchor = _get(r, "baselines", "ovs_snooping", "join_latency")
        return (_num(r, "join_latency", "report_to_first_ms", stat),
                _num(anchor, "report_to_first_ms", stat),
                {"n_ours": _get(r, "join_latency", "ok"), "n_anchor": anchor["ok"]})
    return take


def _join_to_first(r: dict[str, Any]) -> Figures:
    anchor = _get(r, "baselines", "linux_bridge", "join_latency")
    return (_num(r, "join_latency", "join_to_first_ms", "p50"),
            _num(anchor, "join_to_first_ms", "p50"),
            {"n_ours": _get(r, "join_latency", "ok"), "n_anchor": anchor["ok"]})


def onset_rate(points: list[dict[str, Any]]) -> int:
    """The lowest offered rate where the anchor loses ``LOSS_ONSET_PCT``, else the highest."""
    measured = sorted((p for p in points if p.get("loss_pct_max") is not None),
                      key=lambda p: p["target_pps"])
    if not measured:
        raise Missing("no OVS snooping throughput point")
    lossy = [p for p in measured if p["loss_pct_max"] >= LOSS_ONSET_PCT]
    return int((lossy or measured[-1:])[0]["target_pps"])


def _throughput(r: dict[str, Any]) -> Figures:
    theirs = _get(r, "baselines", "ovs_snooping", "throughput", "series", "8_receivers")
    ours = _get(r, "throughput", "single_node", "series", "8_receivers")
    rate = onset_rate(theirs)

    def at(points: list[dict[str, Any]], who: str) -> dict[str, Any]:
        for p in points:
            if p.get("target_pps") == rate and p.get("delivered_total_pps") is not None:
                return p
        raise Missing(f"{who} has no 1 -> 8 point at {rate} pps")

    o, a = at(ours, "ours"), at(theirs, "OVS snooping")
    return (float(o["delivered_total_pps"]), float(a["delivered_total_pps"]),
            {"at_offered_pps": rate, "loss_pct_ours": o["loss_pct_max"],
             "loss_pct_anchor": a["loss_pct_max"]})


def _rss(r: dict[str, Any]) -> Figures:
    cycles = _get(r, "agent_scale", "join_leave_cycles")
    if not cycles:
        raise Missing("agent_scale.join_leave_cycles is empty (no repeated cycle was run)")
    first = _num(r, "agent_scale", "after_leave", "agent_rss_kib") / 1024
    last = _num(cycles[-1], "agent_rss_kib_left") / 1024
    return last, first, {"cycles": 1 + len(cycles), "groups": cycles[-1].get("groups")}


@dataclass(frozen=True)
class Target:
    key: str
    figure: str
    ours_is: str
    anchor_is: str
    unit: str
    op: str  # "<=" or ">=": how ``value`` must compare with ``limit``
    limit: float
    take: Callable[[dict[str, Any]], Figures]
    absolute: bool = False  # value = ours - anchor instead of ours / anchor


TARGETS = (
    Target("programming_vs_ofctl", "flows+groups programmed per second, largest size",
           "agent path: Reconciler.flush -> OpenFlowSwitch.apply (one bundle)",
           "the same ops rendered, ovs-ofctl bundle (one bundle)", "ops/s", ">=", 0.5,
           _programming),
    Target("report_to_first_p50_vs_ovs_snooping", "IGMP report -> first datagram, p50",
           "our node (agent + OVS)", "OVS mcast_snooping + NORMAL", "ms", "<=", 2.0,
           _report_to_first("p50")),
    Target("report_to_first_p99_vs_ovs_snooping", "IGMP report -> first datagram, p99",
           "our node (agent + OVS)", "OVS mcast_snooping + NORMAL", "ms", "<=", 2.0,
           _report_to_first("p99")),
    Target("join_to_first_p50_vs_linux_bridge", "app join() -> first datagram, p50",
           "our node (agent + OVS)", "Linux bridge, multicast_snooping=1 + querier", "ms",
           "<=", 1.2, _join_to_first),
    Target("throughput_1to8_vs_ovs_snooping",
           "delivered pps 1 -> 8 receivers where OVS snooping starts to lose (or the highest "
           "rate)", "our node (agent-programmed group)", "OVS mcast_snooping + NORMAL", "pps",
           ">=", 1.0, _throughput),
    Target("rss_growth_mb", "agent RSS growth over the join/leave cycles (absolute)",
           "agent RSS after the last cycle's leave", "agent RSS after the first cycle's leave",
           "MB", "<=", 5.0, _rss, absolute=True),
)
KEYS = tuple(t.key for t in TARGETS)
_OPS = {"<=": operator.le, ">=": operator.ge}


def entry(target: Target, results: dict[str, Any]) -> dict[str, Any]:
    base = {"figure": target.figure, "ours_is": target.ours_is,
            "anchor_is": target.anchor_is, "unit": target.unit,
            "target": f"{target.op} {target.limit:g}"}
    try:
        ours, anchor, where = target.take(results)
    except Missing as exc:
        return {**base, "value": None, "ratio": None, "ours": None, "anchor": None,
                "met": None, "missing": str(exc)}
    ratio = round(ours / anchor, 3) if anchor else None
    value = round(ours - anchor, 2) if target.absolute else ratio
    met = None if value is None else bool(_OPS[target.op](value, target.limit))
    return {**base, "value": value, "ratio": ratio, "ours": round(ours, 3),
            "anchor": round(anchor, 3), "met": met, **where}


def compute(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The ``ratios`` block: one entry per key of ``TARGETS``, always all of them."""
    return {t.key: entry(t, results) for t in TARGETS}


def table_lines(ratios: dict[str, dict[str, Any]]) -> list[str]:
    """The summary table: ours, anchor, value against target, met."""
    def fmt(x: Any) -> str:
        if x is None:
            return "-"
        return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3g}"

    head = f"    {'ratio key':37} {'ours':>10} {'anchor':>10} {'unit':6} {'value':>7} target  met"
    lines = ["[ratios] ours vs the anchors measured in this run (value = ours / anchor; "
             "rss_growth_mb = MB)", head]
    met = 0
    for key, e in ratios.items():
        verdict = {True: "yes", False: "NO", None: "n/a"}[e.get("met")]
        met += e.get("met") is True
        lines.append(f"    {key:37} {fmt(e.get('ours')):>10} {fmt(e.get('anchor')):>10} "
                     f"{e.get('unit', ''):6} {fmt(e.get('value')):>7} {e.get('target', ''):7} "
                     f"{verdict}" + (f"  ({e['missing']})" if e.get("missing") else ""))
    lines.append(f"    {met} of {len(ratios)} targets met")
    return lines
