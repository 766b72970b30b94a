"""Shared helpers of the benchmark: statistics, process figures from /proc, netns threads, waits.

This module owns how figures are summarised (the same percentile rule everywhere), how a
process's resident memory and CPU time are read, and the one trick that lets the benchmark
process listen inside a node's network namespace without leaving its own: a short-lived thread
enters the netns (``setns`` affects only the calling thread), creates the socket and exits; the
socket stays in the namespace it was created in.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A benchmark step could not run (not a slow result: those are figures, not errors)."""


# ------------------------------------------------------------------------------ statistics


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of non-empty ``values``."""
    if not values:
        raise ValueError("percentile of nothing")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(values: Sequence[float], digits: int = 3) -> dict[str, float | int]:
    """n, min, p50, p99, max and mean of ``values`` (rounded); ``{"n": 0}`` when empty."""
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "min": round(min(values), digits),
        "p50": round(statistics.median(values), digits),
        "p99": round(percentile(values, 99), digits),
        "max": round(max(values), digits),
        "mean": round(statistics.fmean(values), digits),
    }


def rate(count: float, seconds: float) -> float:
    """count/seconds rounded to a whole number per second (0 for a zero duration)."""
    return round(count / seconds, 1) if seconds > 0 else 0.0


class Stopwatch:
    """``with Stopwatch() as sw: ...`` then ``sw.s`` / ``sw.ms`` (perf_counter based)."""

    def __init__(self) -> None:
        self.start = 0.0
        self.s = 0.0

    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.s = time.perf_counter() - self.start

    @property
    def ms(self) -> float:
        return self.s * 1e3


# ------------------------------------------------------------------------------ processes


def _status_field(pid: int, name: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{name}:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_kib(pid: int) -> int | None:
    """VmRSS of ``pid`` in KiB (None if it is gone)."""
    return _status_field(pid, "VmRSS")


def threads(pid: int) -> int | None:
    return _status_field(pid, "Threads")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of ``pid`` (all its threads) in seconds; None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


class CpuMeter:
    """CPU share of a process over an interval: ``m = CpuMeter(pid)``; later ``m.percent()``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.cpu0 = cpu_seconds(pid) or 0.0
        self.t0 = time.monotonic()

    def seconds(self) -> float:
        return round((cpu_seconds(self.pid) or 0.0) - self.cpu0, 3)

    def percent(self) -> float:
        wall = time.monotonic() - self.t0
        return round(100 * self.seconds() / wall, 1) if wall > 0 else 0.0


def sample_cpu(pid: int, seconds: float) -> float:
    """CPU % of ``pid`` while it is left alone for ``seconds``."""
    meter = CpuMeter(pid)
    time.sleep(seconds)
    return meter.percent()


# ------------------------------------------------------------------------------ netns, waits






def wait_for(check: Callable[[], T | None], timeout: float, what: str,
             interval: float = 0.02) -> T:
    """Poll ``check`` until it returns something other than None/False; BenchError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got is not None and got is not False:
            return got
        if time.monotonic() >= deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def ms(seconds: float | None, digits: int = 3) -> float | None:
    return None if seconds is None else round(seconds * 1e3, digits)
