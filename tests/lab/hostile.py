"""The lab side of issue 11's hostile-pod tests: a lab with external hosts, the agent's process
and metrics, and sniffers in pods, node and underlay namespaces.

``tests/lab/test_hostile.py`` holds the tests; this module owns the lab they measure in. The
agent's CPU share, idle time and RSS are read with ``tools.bench.common`` and the per-pod drop
counters parsed with ``tools.bench.hostile``: the bench's ``hostile`` section measures the same
figures with the same code. Each test builds its own lab (``make_lab``; ``mclab up`` takes
about 2 s), so one attack's leftovers (memberships, a busy agent, a fat heap) never become the
next test's baseline. The attacks themselves are ``tools/mcattack.py``, run inside pods like
``tools/mcprobe.py``.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    _PROCS,
    CLI_TIMEOUT,
    PYTHON,
    REPO,
    UP_TIMEOUT,
    Lab,
    Pod,
    Receiver,
    _teardown,
    foreign_lab,
    fresh_lab,
    reap_processes,
    wait_for,
)

from tools.bench.hostile import mcctl_dropped, metric_dropped
from tools.mclab import netns

MCATTACK = str(REPO / "tools" / "mcattack.py")
METRICS_URL = "http://127.0.0.1:9464/metrics"



# ---------------------------------------------------------------------------- the lab


class HostileLab(Lab):
    """``Lab`` with attacks, the agent's process, its metrics and namespace sniffers."""

    def attack(self, pod: Pod, *args: str, timeout: float = CLI_TIMEOUT) -> dict[str, Any]:
        """``mcattack ARGS`` in ``pod``, to its end; its JSON result."""
        out = self.exec(pod, PYTHON, MCATTACK, *args, timeout=timeout).stdout
        return dict(json.loads(out.strip().splitlines()[-1]))

    def mac(self, pod: Pod) -> str:
        """The MAC of the pod's multicast interface (from netlink: /sys here is the machine's,
        not the pod's)."""
        out = self.exec(pod, "ip", "-o", "link", "show", pod.iface).stdout
        m = re.search(r"link/ether ([0-9a-f:]{17})", out)
        assert m, f"no MAC in {out!r}"
        return m.group(1)

    # -- nodes -----------------------------------------------------------------------------

    def node_state(self, node: str) -> dict[str, Any]:
        return dict(next(n for n in self.state()["nodes"] if n["name"] == node))

    def agent_pid(self, node: str = "node1") -> int:
        pid = int(self.node_state(node)["agent_pid"])
        assert pid and Path(f"/proc/{pid}").exists(), f"agent of {node} is not running: {pid}"
        return pid

    def metrics(self, node: str = "node1") -> str:
        """The agent's Prometheus text, fetched from inside the node's namespace."""
        def get() -> str:
            with urllib.request.urlopen(METRICS_URL, timeout=10) as resp:
                return str(resp.read().decode())
        return netns.call_in(self.node_state(node)["netns"], get)

    def port_rx(self, node: str, ofport: int) -> int:
        """Packets br-int received on ``ofport`` (``ovs-ofctl dump-ports``)."""
        m = re.search(r"rx pkts=(\d+)", self.ofctl(node, "dump-ports", "br-int", str(ofport)))
        assert m, f"no rx counter for port {ofport} on {node}"
        return int(m.group(1))

    # -- sniffers --------------------------------------------------------------------------

    def _files(self, tag: str) -> tuple[Path, Path]:
        self.probe_dir.mkdir(parents=True, exist_ok=True)
        base = self.probe_dir / f"{tag}-{uuid.uuid4().hex[:6]}"
        return base.with_suffix(".ready"), base.with_suffix(".status")

    def sniff(self, where: Pod | str, ifaces: list[str], matches: list[bytes],
              duration: float = 120.0) -> Receiver:
        """``mcattack sniff`` in a pod or external host (a Pod) or a lab namespace (its name),
        counting frames on ``ifaces`` (both directions) that contain one of ``matches``."""
        label = where.name if isinstance(where, Pod) else where
        ready, status = self._files(f"sniff-{label}")
        args = ["sniff", "--hex", "--outgoing", "--duration", str(duration), "--ready",
                str(ready), "--status", str(status)]
        args += [a for i in ifaces for a in ("--iface", i)]
        args += [a for m in matches for a in ("--match", m.hex())]
        if isinstance(where, Pod):
            proc = self.popen(where, PYTHON, MCATTACK, *args)
            pod = where
        else:
            proc = netns.popen(where, [PYTHON, MCATTACK, *args], stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            _PROCS.append(proc)
            pod = Pod(where, "-", "", "-")
        return Receiver("sniff", pod, "-", 0, proc, ready, status)


class Tcpdump:
    """``tcpdump -Q in -n -l EXPR`` on a host's multicast interface: the packets it received,
    as lines."""

    def __init__(self, lab: HostileLab, host: Pod, expr: str, seconds: int = 60) -> None:
        self.host = host
        self.proc = lab.popen(host, "timeout", str(seconds), "tcpdump", "-i", host.iface,
                              "-Q", "in", "-n", "-l", expr)
        self.lines: list[str] = []
        self.err: list[str] = []
        for stream, into in ((self.proc.stdout, self.lines), (self.proc.stderr, self.err)):
            threading.Thread(target=self._read, args=(stream, into), daemon=True).start()

    @staticmethod
    def _read(stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))

    def wait_listening(self, timeout: float = 10.0) -> Tcpdump:
        def listening() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"tcpdump in {self.host.name} exited {self.proc.returncode}: "
                            f"{self.err}", pytrace=False)
            return any("listening on" in e for e in self.err)

        wait_for(listening, timeout, f"tcpdump in {self.host.name} to listen")
        return self

    def stop(self) -> list[str]:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        time.sleep(0.2)  # the reader threads drain the pipes
        return list(self.lines)


DROPPED_METRIC = "kube_mcast_pod_dropped_packets_total"


def pod_drops(lab: HostileLab, node: str, pod: Pod) -> dict[str, dict[str, float]]:
    """The per-pod drop counters the agent shows for ``pod``, by where they are shown:
    ``{"mcctl": the "dropped" object of its ``mcctl get podmulticaststats -o json`` row,
    "metrics": {reason: the DROPPED_METRIC sample labelled with it}}``."""
    return {"mcctl": mcctl_dropped(lab.mcctl_json(node, "podmulticaststats"), pod.namespace,
                                   pod.name),
            "metrics": metric_dropped(lab.metrics(node), DROPPED_METRIC, pod.namespace,
                                      pod.name)}


class LabMaker:
    """``maker(nodes=1, query_interval="10s")``: a fresh encap lab for one test; ``close()``
    takes every lab it made down (and checks that nothing is left), pass or fail."""

    def __init__(self) -> None:
        self.made: list[HostileLab] = []

    def __call__(self, nodes: int = 1, query_interval: str = "10s") -> HostileLab:
        lab_dir, prefix = fresh_lab()
        why = foreign_lab(prefix)
        if why:
            pytest.fail(why, pytrace=False)
        lab = HostileLab(lab_dir, prefix, nodes, "encap", query_interval)
        self.made.append(lab)  # from here on, close() runs mclab down
        lab.mclab("up", "--nodes", str(nodes), "--mode", "encap", "--query-interval",
                  query_interval, timeout=UP_TIMEOUT)
        return lab

    def close(self) -> None:
        reap_processes()  # the test's probes go first, as conftest's _reap_probes would do
        while self.made:
            _teardown(self.made.pop())
