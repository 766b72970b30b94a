"""The benchmark's own mclab lab: brought up and torn down through the real ``mclab`` CLI.

This module owns one lab's lifecycle under a namespace prefix and lab directory of its own
(``MCLAB_PREFIX``/``MCLAB_DIR``, never the default ``mclab-``), the processes the benchmark
starts inside pods (``PodProcs``: ``podtool.py`` and tcpdump; each is tracked by its Popen and
only those are ever stopped; the anchors' beds in ``baselines.py`` share it), and reads of the
agent: its pid from the lab state, its local API.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agent.api.client import AgentClient
from tools.bench.common import BenchError, Stopwatch, wait_for
from tools.mclab import netns
from tools.mclab.cni import MULTICAST_IFNAME

log = logging.getLogger(__name__)

PYTHON = sys.executable  # the venv's python: what pods run scripts with
MCLAB = str(Path(sys.executable).parent / "mclab")
MCCTL = str(Path(sys.executable).parent / "mcctl")
PODTOOL = str(Path(__file__).with_name("podtool.py"))
CLI_TIMEOUT = 120.0


@dataclass(frozen=True)
class Pod:
    name: str
    node: str
    ip: str
    netns: str
    iface: str = "eth0"  # the interface its multicast uses


class PodProcs:
    """The processes the benchmark starts inside pods: tracked, and only those are stopped.

    Whatever hosts pods (our lab, an anchor's bed) derives from this; ``dir`` is where the
    host keeps its scratch files (ready markers, captures)."""

    dir: Path

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[str]] = []

    def popen(self, pod: Pod, argv: list[str], **kwargs: Any) -> subprocess.Popen[str]:
        """Start ``argv`` inside ``pod``'s netns; tracked, and stopped by ``stop_all``."""
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        proc = netns.popen(pod.netns, argv, stdin=subprocess.DEVNULL, **kwargs)
        self._procs.append(proc)
        return proc

    def podtool(self, pod: Pod, *args: str) -> subprocess.Popen[str]:
        return self.popen(pod, [PYTHON, PODTOOL, *args])

    def podtool_run(self, pod: Pod, *args: str, timeout: float = 60.0) -> dict[str, Any]:
        return result(self.podtool(pod, *args), timeout)

    def tcpdump(self, pod: Pod, bpf: str, count: int,
                verbose: bool = False) -> subprocess.Popen[str]:
        """tcpdump on the pod's multicast interface (wall-clock ``-tt`` stamps), returned once
        it listens."""
        proc = self.popen(pod, ["tcpdump", "-i", pod.iface, "-n", "-tt", "--immediate-mode", "-l",
                                *(["-v"] if verbose else []), "-c", str(count), bpf])
        assert proc.stderr is not None
        deadline = time.monotonic() + 10
        for line in proc.stderr:
            if "listening on" in line:
                return proc
            if time.monotonic() > deadline:
                break
        stop(proc)
        raise BenchError(f"tcpdump in {pod.name} did not start: {proc.stderr.read()}")

    def stop_all(self) -> None:
        for proc in self._procs:
            stop(proc)
        self._procs.clear()


class BenchLab(PodProcs):
    """``with BenchLab(tag, nodes) as lab:`` brings a lab up and always takes it down.

    ``label`` tells apart labs of one run that may exist one after the other (the hostile
    section's); ``query_interval`` is the agents' (mclab's default when empty)."""

    def __init__(self, tag: str, nodes: int, label: str = "", query_interval: str = "",
                 agent_config: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.nodes = nodes
        self.query_interval = query_interval
        self.agent_config = agent_config
        self.prefix = f"kbx{tag}{label}n{nodes}-"
        self.dir = Path(f"/tmp/kbx{tag}-{label}lab{nodes}")
        self.env = {**os.environ, "MCLAB_PREFIX": self.prefix, "MCLAB_DIR": str(self.dir)}
        self.pods: dict[str, Pod] = {}
        self.up_s = 0.0

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> BenchLab:
        if netns.list_netns(self.prefix) or self.dir.exists():
            raise BenchError(f"a lab with prefix {self.prefix} or dir {self.dir} exists already")
        try:
            extra: list[str] = []
            if self.agent_config:
                self.dir.mkdir(parents=True, exist_ok=True)
                path = self.dir / "agent-config.yaml"  # removed with the lab
                path.write_text(yaml.safe_dump(self.agent_config))
                extra = ["--agent-config", str(path)]
            with Stopwatch() as t:
                self.mclab("up", "--nodes", str(self.nodes),
                           *(["--query-interval", self.query_interval]
                             if self.query_interval else []), *extra)
            self.up_s = round(t.s, 2)
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def down(self) -> None:
        """Stop our processes, ``mclab down``, then make sure nothing of ours is left."""
        self.stop_all()
        res = subprocess.run([MCLAB, "down"], env=self.env, capture_output=True, text=True,
                             timeout=CLI_TIMEOUT, stdin=subprocess.DEVNULL)
        if res.returncode != 0:
            log.warning("mclab down exited %d: %s", res.returncode, res.stderr.strip())
        for name in netns.list_netns(self.prefix):
            log.warning("removing leftover netns %s", name)
            netns.delete(name)
        shutil.rmtree(self.dir, ignore_errors=True)

    def mclab(self, *args: str) -> str:
        res = subprocess.run([MCLAB, *args], env=self.env, capture_output=True, text=True,
                             timeout=CLI_TIMEOUT, stdin=subprocess.DEVNULL)
        if res.returncode != 0:
            raise BenchError(f"mclab {' '.join(args)} exited {res.returncode}: "
                             f"{res.stderr.strip()}")
        return res.stdout

    # -- state ------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return json.loads((self.dir / "state.json").read_text())

    def node_state(self, node: str) -> dict[str, Any]:
        for n in self.state()["nodes"]:
            if n["name"] == node:
                return n
        raise BenchError(f"no node {node} in the lab")

    def agent_pid(self, node: str = "node1") -> int:
        return int(self.node_state(node)["agent_pid"])

    def node_netns(self, node: str = "node1") -> str:
        return str(self.node_state(node)["netns"])

    def vswitchd_pid(self, node: str = "node1") -> int:
        rundir = Path(self.node_state(node)["rundir"]) / "ovs"
        return int((rundir / "ovs-vswitchd.pid").read_text().strip())

    def appctl(self, node: str, *args: str) -> str:
        """``ovs-appctl`` to ``node``'s ovs-vswitchd (its unixctl socket in the lab dir)."""
        ctl = Path(self.node_state(node)["rundir"]) / "ovs" / "ovs-vswitchd.ctl"
        res = subprocess.run(["ovs-appctl", "-t", str(ctl), *args], capture_output=True,
                             text=True, timeout=30)
        if res.returncode != 0:
            raise BenchError(f"ovs-appctl {' '.join(args)} on {node}: {res.stderr.strip()}")
        return res.stdout

    def ofctl(self, node: str, *args: str) -> str:
        """``ovs-ofctl -O OpenFlow15`` on ``node``'s bridges (inside its netns)."""
        rundir = Path(self.node_state(node)["rundir"]) / "ovs"
        res = netns.run(self.node_netns(node), ["ovs-ofctl", "-O", "OpenFlow15", *args],
                        env={**os.environ, "OVS_RUNDIR": str(rundir)}, timeout=60)
        if res.returncode != 0:
            raise BenchError(f"ovs-ofctl {' '.join(args)} on {node}: {res.stderr.strip()}")
        return res.stdout

    def client(self, node: str = "node1", timeout: float = 60.0) -> AgentClient:
        return AgentClient(f"{self.node_state(node)['rundir']}/agent.sock", timeout=timeout)

    def node_ip(self, node: str) -> str:
        return str(self.node_state(node)["ip"])

    def mcctl_json(self, node: str, *args: str) -> Any:
        """``mcctl --node NODE get ARGS -o json`` against this lab, parsed."""
        res = subprocess.run([MCCTL, "--node", node, "get", *args, "-o", "json"], env=self.env,
                             capture_output=True, text=True, timeout=CLI_TIMEOUT,
                             stdin=subprocess.DEVNULL)
        if res.returncode != 0:
            raise BenchError(f"mcctl get {' '.join(args)} exited {res.returncode}: "
                             f"{res.stderr.strip()}")
        return json.loads(res.stdout)

    # -- pods -------------------------------------------------------------------------------

    def pod(self, name: str, node: str = "node1") -> Pod:
        """Create pod ``name`` on ``node`` (through the CNI plugin), once."""
        if name not in self.pods:
            ip = self.mclab("pod", "create", name, "--node", node).strip().splitlines()[-1]
            self.pods[name] = Pod(name, node, ip, f"{self.prefix}pod-default-{name}",
                                  MULTICAST_IFNAME["chained"])
        return self.pods[name]

    # -- agent reads ------------------------------------------------------------------------

    def wait_members(self, node: str, group: str, local: int, remote: int = 0,
                     timeout: float = 20.0) -> None:
        """Until ``node``'s agent has ``local`` pods and ``remote`` nodes in ``group``."""
        client = self.client(node)

        def ok() -> bool:
            for row in client.members():
                if row["group"] == group:
                    return len(row["localPods"]) >= local and len(row["remoteNodes"]) >= remote
            return False

        wait_for(ok, timeout, f"{local} local / {remote} remote members of {group} on {node}",
                 interval=0.05)


def stop(proc: subprocess.Popen[str], timeout: float = 5.0) -> None:
    """SIGTERM one process we started (then SIGKILL); reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def result(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    """The JSON line a podtool process prints, once it exits (SIGTERM after ``timeout``)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    lines = [ln for ln in (out or "").splitlines() if ln.startswith("{")]
    if not lines:
        raise BenchError(f"podtool {proc.args!r} printed no result (exit {proc.returncode}): "
                         f"{(err or '').strip()[-500:]}")
    return json.loads(lines[-1])
