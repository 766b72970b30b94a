"""The bench's plots: PNG files beside the results JSON, drawn from that JSON alone.

This module owns the four figures issue 12 asks for, each ours against the anchors measured
in the same run (matplotlib, Agg backend: no display needed):

- ``<stem>-latency.png``: distributions (ECDF, log time axis) of IGMP report -> first datagram
  and of join() -> first datagram, for our node, OVS snooping and the Linux bridge; and where
  our report -> first time goes (p50 of each step);
- ``<stem>-throughput.png``: delivered pps and worst-receiver loss against the offered rate,
  one line per receiver count, ours solid and OVS snooping dashed, the ideal as a grey line;
- ``<stem>-programming.png``: flows+groups per second against the number of groups, ours and
  ``ovs-ofctl bundle`` with the same ops;
- ``<stem>-rss.png``: the agent's RSS at each stage of the scale section and its cycles.

A figure whose data is missing (a section failed or was not run) is still written, with a
note saying so, so the set of files is the same for every run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after the backend is chosen
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

NAMES = ("latency", "throughput", "programming", "rss")
OURS, SNOOP, BRIDGE, OFCTL = "tab:blue", "tab:orange", "tab:green", "tab:red"
BY_RECEIVERS = ("tab:purple", "tab:cyan", "tab:olive", "tab:brown")


def _plain(v: float, _pos: object = None) -> str:
    """Tick labels without powers of ten: 0.2, 5, 30k."""
    return f"{v / 1000:g}k" if v >= 1000 else f"{v:g}"


def _log_axis(ax: Axes, axis: str = "x") -> None:
    """A log axis labelled at 1, 2, 5 x 10^n in plain numbers."""
    target = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    target.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    target.set_major_formatter(FuncFormatter(_plain))
    target.set_minor_formatter(NullFormatter())


def _get(d: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return None if isinstance(d, dict) and "error" in d else d


def _missing(ax: Axes, what: str) -> None:
    ax.text(0.5, 0.5, f"no data: {what}", ha="center", va="center", transform=ax.transAxes,
            color="grey")


def _ecdf(ax: Axes, samples: list[dict[str, Any]] | None, key: str, label: str,
          color: str) -> bool:
    values = sorted(s[key] for s in samples or [] if s.get(key) is not None)
    if not values:
        return False
    n = len(values)
    p50, p99 = values[(n - 1) // 2], values[max(0, -(-99 * n // 100) - 1)]
    ys = [(i + 1) / n for i in range(n)]
    ax.step(values, ys, where="post", color=color,
            label=f"{label}: p50 {p50:.2f} / p99 {p99:.2f} ms (n={n})")
    ax.axvline(p50, color=color, linestyle=":", linewidth=0.8)
    return True


def latency(results: dict[str, Any], fig: Figure) -> None:
    jl = _get(results, "join_latency")
    sources = ((jl, "ours", OURS),
               (_get(results, "baselines", "ovs_snooping", "join_latency"), "OVS snooping",
                SNOOP),
               (_get(results, "baselines", "linux_bridge", "join_latency"), "Linux bridge",
                BRIDGE))
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [3, 3, 2]})
    # report -> first spans 0.05..10 ms between the anchors (log axis); join -> first is the
    # pod kernel's 8-12 ms report delay plus that (linear axis).
    for ax, key, title, log_x in (
            (axes[0], "report_to_first_ms", "IGMP report -> first datagram", True),
            (axes[1], "join_to_first_ms", "app join() -> first datagram", False)):
        drawn = [_ecdf(ax, _get(src, "samples"), key, label, color)
                 for src, label, color in sources]
        if not any(drawn):
            _missing(ax, "join_latency / baselines")
        else:
            if log_x:
                _log_axis(ax)
            ax.legend(fontsize=7, loc="upper left")
        ax.set(title=title, xlabel="ms (log)" if log_x else "ms", ylabel="share of samples")
        ax.grid(True, which="both", alpha=0.3)
    ax = axes[2]
    split = _get(jl, "switch_split_ms") or {}
    steps = [("punt", "report_to_packet_in_ms"), ("agent", "packet_in_to_bundle_ms"),
             ("bundle", "bundle_open_to_commit_ms"), ("datapath", "commit_to_first_ms")]
    values = [(name, _get(split, key, "p50")) for name, key in steps]
    if all(v is not None for _, v in values):
        left = 0.0
        for (name, v), color in zip(values, plt.get_cmap("Blues")([0.35, 0.55, 0.75, 0.95]),
                                    strict=True):
            ax.barh(["ours"], [v], left=left, color=color, label=f"{name} {v:.2f}")
            left += v
        for label, src, color in (("OVS snooping", sources[1][0], SNOOP),
                                  ("Linux bridge", sources[2][0], BRIDGE)):
            p50 = _get(src, "report_to_first_ms", "p50")
            if p50 is not None:
                ax.barh([label], [p50], color=color)
        ax.legend(fontsize=7, title="ours, p50 of each step (ms)", title_fontsize=7)
    else:
        _missing(ax, "join_latency.switch_split_ms")
    ax.set(title="report -> first, p50 (ms)", xlabel="ms")
    fig.suptitle("Join latency: ours vs the anchors (same run)")


def _tp_lines(ax_pps: Axes, ax_loss: Axes, series: dict[str, Any] | None, who: str,
              style: str, marker: str) -> bool:
    drawn = False
    named = sorted((series or {}).items(), key=lambda kv: int(kv[0].split("_")[0]))
    for i, (name, points) in enumerate(named):
        good = [p for p in points if p.get("delivered_total_pps") is not None]
        if not good:
            continue
        k = int(name.split("_")[0])
        color = BY_RECEIVERS[i % len(BY_RECEIVERS)]
        rates = [p["target_pps"] / 1000 for p in good]
        ax_pps.plot(rates, [p["delivered_total_pps"] / 1000 for p in good], style,
                    color=color, marker=marker, label=f"{who}, 1 -> {k}")
        ax_loss.plot(rates, [p["loss_pct_max"] for p in good], style, color=color,
                     marker=marker, label=f"{who}, 1 -> {k}")
        ax_pps.plot(rates, [r * k for r in rates], ":", color="grey", linewidth=0.8)
        drawn = True
    return drawn


def throughput(results: dict[str, Any], fig: Figure) -> None:
    ax_pps, ax_loss = fig.subplots(1, 2)
    ours = _tp_lines(ax_pps, ax_loss, _get(results, "throughput", "single_node", "series"),
                     "ours", "-", "o")
    snoop = _tp_lines(ax_pps, ax_loss,
                      _get(results, "baselines", "ovs_snooping", "throughput", "series"),
                      "OVS snooping", "--", "s")
    if not (ours or snoop):
        _missing(ax_pps, "throughput / baselines")
    ax_pps.set(title="delivered (grey dotted: offered x receivers)", xlabel="offered kpps",
               ylabel="delivered kpps, all receivers")
    ax_loss.set(title="loss, worst receiver", xlabel="offered kpps", ylabel="%")
    for ax in (ax_pps, ax_loss):
        ax.grid(True, alpha=0.3)
        if ours or snoop:
            ax.legend(fontsize=7)
    fig.suptitle("One sender -> N receivers on one node: ours (solid) vs OVS snooping (dashed)")


def programming(results: dict[str, Any], fig: Figure) -> None:
    ax = fig.subplots()
    sizes = _get(results, "programming", "sizes") or []
    ours = [(s["groups"], _get(s, "install", "ops_per_s")) for s in sizes]
    ofctl = [(s["groups"], _get(s, "ofctl_bundle", "install", "ops_per_s")) for s in sizes]
    drawn = False
    for points, label, color in ((ours, "ours (reconcile + OpenFlowSwitch.apply)", OURS),
                                 (ofctl, "ovs-ofctl bundle, same ops", OFCTL)):
        good = [(n, v) for n, v in points if v is not None]
        if good:
            ax.plot([n for n, _ in good], [v for _, v in good], marker="o", color=color,
                    label=label)
            drawn = True
    for (n, o), (_, a) in zip(ours, ofctl, strict=True):
        if o and a:
            ax.annotate(f"x{o / a:.2f}", (n, o), textcoords="offset points", xytext=(4, 6),
                        fontsize=8, color=OURS)
    if drawn:
        _log_axis(ax, "x")
        _log_axis(ax, "y")
        ax.margins(x=0.15, y=0.2)
        ax.legend(fontsize=8)
    else:
        _missing(ax, "programming")
    bpg = _get(results, "programming", "buckets_per_group")
    ax.set(title=f"Install N groups (1 flow + 1 group of {bpg} buckets each), one bundle",
           xlabel="groups (log)", ylabel="flow + group mods per second (log)")
    ax.grid(True, which="both", alpha=0.3)


def rss(results: dict[str, Any], fig: Figure) -> None:
    ax = fig.subplots()
    sc = _get(results, "agent_scale") or {}
    points: list[tuple[str, float]] = []

    def add(label: str, kib: Any) -> None:
        if isinstance(kib, int | float):
            points.append((label, kib / 1024))

    add("idle", _get(sc, "idle", "agent_rss_kib"))
    for stage in ("groups_1", "entries_2"):
        add(f"cycle 1\n{_get(sc, stage, 'target')} joined", _get(sc, stage, "agent_rss_kib"))
    add("cycle 1\nleft", _get(sc, "after_leave", "agent_rss_kib"))
    first_left = points[-1][1] if points and points[-1][0] == "cycle 1\nleft" else None
    for i, c in enumerate(sc.get("join_leave_cycles") or [], 2):
        add(f"cycle {i}\n{c.get('groups')} joined", c.get("agent_rss_kib_joined"))
        add(f"cycle {i}\nleft", c.get("agent_rss_kib_left"))
    if points:
        ax.plot(range(len(points)), [v for _, v in points], marker="o", color=OURS,
                label="agent VmRSS")
        ax.set_xticks(range(len(points)), [lbl for lbl, _ in points], fontsize=7)
        if first_left is not None:
            ax.axhspan(first_left, first_left + 5, color=BRIDGE, alpha=0.12,
                       label="target: <= 5 MB above the first leave")
        ax.legend(fontsize=8, loc="upper left")
        growth = _get(results, "ratios", "rss_growth_mb", "value")
        if growth is not None:
            ax.set_title(f"Agent RSS over the scale cycles (growth after the first leave: "
                         f"{growth} MB)")
    else:
        _missing(ax, "agent_scale")
    if not ax.get_title():
        ax.set_title("Agent RSS over the scale cycles")
    ax.set(ylabel="RSS, MB")
    ax.grid(True, alpha=0.3)


_DRAW = {"latency": (latency, (14, 4.5)), "throughput": (throughput, (12, 4.5)),
         "programming": (programming, (7, 4.5)), "rss": (rss, (9, 4.5))}


def write_all(results: dict[str, Any], out: Path) -> dict[str, str]:
    """Every figure as ``<out stem>-<name>.png`` in ``out``'s directory; {name: file name}."""
    written = {}
    for name in NAMES:
        draw, size = _DRAW[name]
        fig = plt.figure(figsize=size, layout="constrained")
        try:
            draw(results, fig)
            path = out.with_name(f"{out.stem}-{name}.png")
            fig.savefig(path, dpi=100)
        finally:
            plt.close(fig)
        written[name] = path.name
    return written
