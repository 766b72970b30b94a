"""Shared helpers of the benchmark: statistics, process figures from /proc, waits.

This module owns how figures are summarised (the same percentile rule everywhere) and how a
process's resident memory and CPU time are read: a CPU share over an interval (% or cores),
when a busy process is back to idle (``idle_after``: under ``IDLE_CORE`` over a one-second
window) and its RSS/peak RSS. The hostile-pod lab tests (``tests/lab/hostile.py``) measure the
agent with these very functions, so their figures and the ``hostile`` section's agree.
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
IDLE_CORE = 0.05  # "idle": under 5 % of one core over a one-second window


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
    """CPU share of a process over an interval: ``m = CpuMeter(pid)``; later ``m.percent()``
    (% of one core, rounded) or ``m.cores()`` (cores, unrounded); ``restart()`` starts anew."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.restart()

    def restart(self) -> None:
        self.cpu0 = cpu_seconds(self.pid) or 0.0
        self.t0 = time.monotonic()

    def seconds(self) -> float:
        return round((cpu_seconds(self.pid) or 0.0) - self.cpu0, 3)

    def percent(self) -> float:
        wall = time.monotonic() - self.t0
        return round(100 * self.seconds() / wall, 1) if wall > 0 else 0.0

    def cores(self) -> float:
        wall = max(time.monotonic() - self.t0, 1e-6)
        return ((cpu_seconds(self.pid) or 0.0) - self.cpu0) / wall


def sample_cpu(pid: int, seconds: float) -> float:
    """CPU % of ``pid`` while it is left alone for ``seconds``."""
    meter = CpuMeter(pid)
    time.sleep(seconds)
    return meter.percent()


def memory_mb(pid: int) -> dict[str, float]:
    """``VmRSS`` and ``VmHWM`` (peak RSS) of ``pid`` in MB (missing keys if it is gone)."""
    out = {}
    for key in ("VmRSS", "VmHWM"):
        kib = _status_field(pid, key)
        if kib is not None:
            out[key] = kib / 1024
    return out


def _cpu_or_fail(pid: int) -> float:
    got = cpu_seconds(pid)
    if got is None:
        raise BenchError(f"process {pid} is gone")
    return got


def idle_after(pid: int, limit_s: float, window_s: float = 1.0,
               step_s: float = 0.25) -> tuple[float | None, list[float]]:
    """Watch ``pid`` from now: (seconds until the end of the first ``window_s`` window in
    which it used under IDLE_CORE of a core, or None within ``limit_s``; the CPU share of each
    whole second watched, in cores, for the figure)."""
    start = time.monotonic()
    samples = [(start, _cpu_or_fail(pid))]
    while (now := time.monotonic()) - start < limit_s:
        time.sleep(step_s)
        now = time.monotonic()
        samples.append((now, _cpu_or_fail(pid)))
        old = [s for s in samples if s[0] <= now - window_s + 1e-3]
        if old and (samples[-1][1] - old[-1][1]) / (now - old[-1][0]) < IDLE_CORE:
            return now - start, _per_second(samples)
    return None, _per_second(samples)


def _per_second(samples: list[tuple[float, float]]) -> list[float]:
    out, mark = [], samples[0]
    for s in samples:
        if s[0] - mark[0] >= 1.0 - 1e-3:
            out.append(round((s[1] - mark[1]) / (s[0] - mark[0]), 3))
            mark = s
    return out


# ------------------------------------------------------------------------------ waits


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


def seconds_until(cond: Callable[[], bool], timeout: float,
                  interval: float = 0.5) -> float | None:
    """Seconds until ``cond()`` held (polled every ``interval``), or None if not within
    ``timeout``."""
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start >= timeout:
            return None
        time.sleep(interval)
    return round(time.monotonic() - start, 1)


def ms(seconds: float | None, digits: int = 3) -> float | None:
    return None if seconds is None else round(seconds * 1e3, digits)
