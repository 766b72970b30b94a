"""Long-running commands say how far they are, on stderr, while stdout stays scriptable:
``mclab up`` a line per step with the seconds since it started, the bench a line per section
as it starts and ends (and per lab it brings up). Without root or OVS: ``mclab up``'s steps come
from a stand-in for ``tools.mclab.lab.up`` (the real one is run by every lab test).
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tools.bench import __main__ as bench
from tools.mclab import cli as mclab_cli
from tools.mclab import lab as mclab_lab
from tools.mclab import state as st


def test_mclab_up_prints_each_step_on_stderr(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    def fake_up(nodes: int, mode: str, query_interval: str, agent_config: Any, attach: str,
                control_plane: bool, progress: mclab_lab.Progress) -> st.LabState:
        progress("underlay bridge and CNI plugins")
        progress("node1: namespace and OVS")
        progress("node1: agent answering on /run/x.sock")
        return st.LabState(mode=mode, query_interval=query_interval, attach=attach)

    monkeypatch.setattr(mclab_lab, "up", fake_up)
    assert mclab_cli.main(["up", "--nodes", "1"]) == 0
    out, err = capsys.readouterr()
    assert out == "lab up: 0 node(s), mode encap, attach chained\n"  # unchanged: scripts read it
    lines = err.splitlines()
    assert [re.sub(r"\[\s*\d+\.\ds\]", "[T]", ln) for ln in lines] == [
        "mclab up: [T] underlay bridge and CNI plugins",
        "mclab up: [T] node1: namespace and OVS",
        "mclab up: [T] node1: agent answering on /run/x.sock",
        "mclab up: [T] ready"]
    seconds = [float(re.findall(r"\[\s*(\d+\.\d)s\]", ln)[0]) for ln in lines]
    assert seconds == sorted(seconds)


def test_bench_sections_say_when_they_start_and_end(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(bench.report, "load_now", lambda *_a, **_k: {"busy_pct_1s": 7})
    run = bench.Run(bench.QUICK, "abc123", 0.0)
    results: dict[str, Any] = {}

    def boom() -> dict[str, Any]:
        raise RuntimeError("no OVS")

    bench._guarded(run, results, "policy", lambda: {"ok": 1})
    bench._guarded(run, results, "hostile", boom)
    lines = [re.sub(r"\[\s*\d+\.\ds\]", "[T]", ln) for ln in capsys.readouterr().err.splitlines()]
    assert lines[0] == "bench: [T] policy: started (host 7% busy)"
    assert re.fullmatch(r"bench: \[T\] policy: done in \d+\.\ds", lines[1]), lines
    assert lines[2] == "bench: [T] hostile: started (host 7% busy)"
    assert re.fullmatch(r"bench: \[T\] hostile: FAILED after \d+\.\ds: RuntimeError: no OVS",
                        lines[3]), lines
    assert results["hostile"]["error"] == "RuntimeError: no OVS"
