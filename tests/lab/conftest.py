"""Fixtures for the end-to-end lab tests: a real ``mclab`` lab, pods, receivers and senders.

Everything goes through the real command lines, as a user would type them: ``mclab up/down/
pod/exec`` and ``mcctl``, each as a subprocess with ``MCLAB_DIR`` pointing at a fresh directory
under /tmp. Inside pods the traffic tools are ``tools/mcprobe.py`` (standard library only),
``socat`` and ``tcpdump``.

Developers share the machine, so every lab of these tests has its own namespace prefix
(``MCLAB_PREFIX=mclt<hex>-``; ``mclab down`` of the default ``mclab-`` lab never touches it, nor
ours theirs). A lab fixture refuses to start while a namespace with its prefix exists. A lab it
started is ALWAYS taken down at teardown with ``mclab down``; then no namespace with its prefix,
no process naming its lab directory and no probe process may remain, or the teardown fails
loudly (after removing the leftovers). The agent's and OVS's logs are kept in
/tmp/mclab-test-logs/<lab dir name>/ for post-mortems.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tools.mclab import netns
from tools.mclab.ovsnode import OvsError, OvsNode, is_alive, pids_naming, terminate

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
PYTHON = str(VENV_BIN / "python")
MCLAB = str(VENV_BIN / "mclab")
MCCTL = str(VENV_BIN / "mcctl")
MCPROBE = str(REPO / "tools" / "mcprobe.py")
LOG_ARCHIVE = Path("/tmp/mclab-test-logs")

CLI_TIMEOUT = 60.0  # one mclab/mcctl command
UP_TIMEOUT = 120.0  # mclab up (agents included)
POLL_S = 0.1
PROBE_MAX_S = 180.0  # receivers end themselves after this long, whatever happens to us

T = TypeVar("T")

# Every process a test started inside the lab; reaped after each test and at lab teardown.
_PROCS: list[subprocess.Popen[str]] = []


# ---------------------------------------------------------------------------- polling


def wait_for(cond: Callable[[], T], timeout: float, what: str, interval: float = POLL_S) -> T:
    """Poll ``cond`` until it returns something truthy; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = cond()
        if last:
            return last
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:.1f}s waiting for {what} (last: {last!r})",
                        pytrace=False)
        time.sleep(interval)


def quiet(seconds: float) -> None:
    """An observation window: absence of traffic cannot be polled, only watched for a while."""
    time.sleep(seconds)


def _kill(proc: subprocess.Popen[str], timeout: float = 5.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def reap_processes() -> list[str]:
    """Kill every probe process still running; returns the command lines it had to kill."""
    killed = []
    while _PROCS:
        proc = _PROCS.pop()
        if proc.poll() is None:
            killed.append(" ".join(map(str, proc.args)))  # type: ignore[arg-type]
            _kill(proc)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    return killed


# ---------------------------------------------------------------------------- objects


@dataclass(frozen=True)
class Pod:
    name: str
    node: str
    ip: str  # the multicast address (the source its datagrams carry)
    namespace: str = "default"
    iface: str = "eth0"  # the interface its multicast uses: mc0 chained, net1 Multus
    primary_ip: str = ""

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


PodLike = Pod | str


def _ref(pod: PodLike) -> str:
    if isinstance(pod, Pod):
        return pod.ref
    return pod if "/" in pod else f"default/{pod}"


class Receiver:
    """A receiver process in a pod: ``mcprobe recv``/``sniff`` or socat (counted by lines)."""

    def __init__(self, kind: str, pod: Pod, group: str, port: int,
                 proc: subprocess.Popen[str], ready: Path | None, status: Path | None) -> None:
        self.kind = kind
        self.pod = pod
        self.group = group
        self.port = port
        self.proc = proc
        self.ready_file = ready
        self.status_file = status
        self._result: dict[str, Any] | None = None
        self._lines = 0
        self._reader: threading.Thread | None = None
        if kind == "socat":
            self._reader = threading.Thread(target=self._count_lines, daemon=True)
            self._reader.start()

    def __repr__(self) -> str:
        return f"<{self.kind} {self.pod.name} {self.group}:{self.port} pid {self.proc.pid}>"

    def _count_lines(self) -> None:
        assert self.proc.stdout is not None
        for _line in self.proc.stdout:
            self._lines += 1

    def _died(self) -> str:
        err = self.proc.stderr.read() if self.proc.stderr else ""
        return f"{self!r} exited with {self.proc.returncode}: {err.strip()}"

    def wait_ready(self, timeout: float = 15.0) -> Receiver:
        """Wait until the probe has joined (its --ready file exists)."""
        if self.ready_file is None:
            raise ValueError(f"{self!r} has no ready file: poll membership instead")
        ready_file = self.ready_file

        def ready() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(self._died(), pytrace=False)
            return ready_file.exists()

        wait_for(ready, timeout, f"{self!r} to be ready")
        return self

    def count(self) -> int:
        """Datagrams received so far (while it runs)."""
        if self._result is not None:
            return int(self._result["n"])
        if self.kind == "socat":
            return self._lines
        assert self.status_file is not None
        try:
            return int(json.loads(self.status_file.read_text())["n"])
        except (OSError, ValueError, KeyError):
            return 0

    def wait_count(self, n: int, timeout: float = 10.0) -> int:
        """Wait until at least ``n`` datagrams arrived; returns the count then."""
        return wait_for(lambda: self.count() if self.count() >= n else 0, timeout,
                        f"{self!r} to receive {n} (has {self.count()})")

    def stop(self, timeout: float = 10.0) -> dict[str, Any]:
        """SIGTERM (the probe prints its result and closes its socket: a leave), then result."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.result(timeout)

    def result(self, timeout: float = 30.0) -> dict[str, Any]:
        """Wait for the process to end and return its result ({"n": .., ...})."""
        if self._result is not None:
            return self._result
        try:
            out, err = self.proc.communicate(timeout=timeout) if self.kind != "socat" else (
                "", self._wait_socat(timeout))
        except subprocess.TimeoutExpired:
            _kill(self.proc)
            pytest.fail(f"{self!r} did not finish within {timeout:.0f}s", pytrace=False)
        if self.kind == "socat":
            self._result = {"n": self._lines, "rc": self.proc.returncode}
            return self._result
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        if not lines:
            pytest.fail(f"{self!r} printed no result (rc {self.proc.returncode}): "
                        f"stdout {out!r} stderr {err!r}", pytrace=False)
        self._result = json.loads(lines[-1])
        return self._result

    def _wait_socat(self, timeout: float) -> str:
        self.proc.wait(timeout)
        if self._reader is not None:
            self._reader.join(timeout)
        return self.proc.stderr.read() if self.proc.stderr else ""


# ---------------------------------------------------------------------------- the lab


BUCKET_PORT_RES = (
    re.compile(r"output:(\d+)"),
    re.compile(r"set_field:(0x[0-9a-f]+|\d+)->reg1\b"),
    re.compile(r"load:(0x[0-9a-f]+|\d+)->NXM_NX_REG1\[\]"),
)


def bucket_ports(bucket: str) -> set[int]:
    """The pod ports a group bucket delivers to (``output:P`` or ``OutPort`` (reg1) = P)."""
    return {int(m.group(1), 0) for rx in BUCKET_PORT_RES for m in rx.finditer(bucket)}


def parse_groups(dump: str) -> dict[int, list[str]]:
    """``ovs-ofctl dump-groups`` text -> {group_id: [bucket text, ...]}."""
    groups: dict[int, list[str]] = {}
    for line in dump.splitlines():
        m = re.search(r"group_id=(\d+)", line)
        if m:
            groups[int(m.group(1))] = line.split(",bucket=")[1:]
    return groups


def _group_match(group: str) -> re.Pattern[str]:
    return re.compile(r"nw_dst=" + re.escape(group) + r"(?![\d/])")


EXTERNAL = ""  # Pod.namespace of an external host: `mclab exec NAME` takes no -n for it


def figure(text: str) -> None:
    """A measured figure, for the closing note (``pytest -rP`` or ``-s`` prints it)."""
    print(f"FIGURE {text}", flush=True)


class Lab:
    """One running lab (``mclab up`` done), driven through the real CLIs."""

    def __init__(self, lab_dir: Path, prefix: str, nodes: int, mode: str,
                 query_interval: str, attach: str = "chained") -> None:
        self.dir = lab_dir
        self.prefix = prefix
        self.nodes = nodes
        self.mode = mode
        self.attach = attach
        self.query_interval = query_interval
        self.env = {**os.environ, "MCLAB_DIR": str(lab_dir), "MCLAB_PREFIX": prefix,
                    "PYTHONUNBUFFERED": "1"}
        self.probe_dir = lab_dir / "probe"
        self._kubeconfig: str | None = None

    wait_for = staticmethod(wait_for)

    def __repr__(self) -> str:
        return f"Lab({self.dir}, nodes={self.nodes}, mode={self.mode}, attach={self.attach})"

    # -- commands --------------------------------------------------------------------------

    def mclab(self, *args: str, check: bool = True, timeout: float = CLI_TIMEOUT,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``mclab ARGS`` against this lab (``env`` overrides variables); fails the test on
        a non-zero exit if ``check``."""
        return _run([MCLAB, *args], {**self.env, **(env or {})}, check, timeout)

    def mcctl(self, *args: str, check: bool = True,
              timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return _run([MCCTL, *args], self.env, check, timeout)

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True
                ) -> subprocess.CompletedProcess[str]:
        """The real ``kubectl`` against the lab's API server (``mclab kubeconfig``)."""
        if self._kubeconfig is None:
            self._kubeconfig = self.mclab("kubeconfig").stdout.strip().splitlines()[-1]
        res = subprocess.run(["kubectl", "--kubeconfig", self._kubeconfig, *args],
                             capture_output=True, text=True, timeout=30, input=stdin,
                             stdin=None if stdin is not None else subprocess.DEVNULL)
        assert not check or res.returncode == 0, f"kubectl {' '.join(args)}: {res.stderr}"
        return res

    def multicastgroups(self) -> dict[str, tuple[str, str]]:
        """``kubectl get multicastgroups`` as typed: {NAME: (GROUP, PODS)}, AGE dropped."""
        lines = self.kubectl("get", "multicastgroups").stdout.splitlines()
        if not lines:
            return {}
        header = lines[0]
        assert header.split() == ["NAME", "GROUP", "PODS", "AGE"], lines
        # cells are cut at the header's column starts: an object just created has no status
        # yet (the API drops status on create; the controller patches it a moment later), so
        # its GROUP and PODS cells are blank and its row has fewer words than columns
        group_at, pods_at, age_at = (header.index(col) for col in ("GROUP", "PODS", "AGE"))
        return {line[:group_at].strip(): (line[group_at:pods_at].strip(),
                                          line[pods_at:age_at].strip())
                for line in lines[1:]}

    def mcctl_json(self, node: str, *args: str) -> Any:
        return json.loads(self.mcctl("--node", node, "get", *args, "-o", "json").stdout)

    def state(self) -> dict[str, Any]:
        return json.loads((self.dir / "state.json").read_text())

    def ovs(self, node: str) -> OvsNode:
        for n in self.state()["nodes"]:
            if n["name"] == node:
                return OvsNode(n["name"], Path(n["rundir"]) / "ovs", n["netns"])
        raise KeyError(f"no node {node} in {self}")

    def ofctl(self, node: str, *args: str) -> str:
        """``ovs-ofctl -O OpenFlow13 ARGS`` on ``node`` (in its netns, with its rundir)."""
        return self.ovs(node).ofctl(*args)

    # -- pods --------------------------------------------------------------------------------

    def create_pod(self, name: str, node: str = "node1", namespace: str = "default") -> Pod:
        out = self.mclab("pod", "create", name, "--node", node, "-n", namespace).stdout
        ip = out.strip().splitlines()[-1]
        [st] = [p for p in self.state()["pods"]
                if p["name"] == name and p["namespace"] == namespace]
        assert st["ip"] == ip, (st, out)
        return Pod(name, node, ip, namespace, st["iface"], st["primary_ip"])

    def delete_pod(self, pod: Pod) -> None:
        self.mclab("pod", "delete", pod.name, "-n", pod.namespace)

    def create_external(self, name: str) -> Pod:
        """A host on the underlay, outside the cluster; usable wherever a pod is."""
        ip = self.mclab("external", "create", name).stdout.strip().splitlines()[-1]
        return Pod(name, "external", ip, EXTERNAL)

    @staticmethod
    def _target(pod: Pod) -> list[str]:
        return [pod.name] if pod.namespace == EXTERNAL else [pod.name, "-n", pod.namespace]

    def exec(self, pod: Pod, *cmd: str, check: bool = True,
             timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """``mclab exec POD -- CMD``; fails the test on a non-zero exit if ``check``."""
        return self.mclab("exec", *self._target(pod), "--", *cmd, check=check, timeout=timeout)

    def popen(self, pod: Pod, *cmd: str) -> subprocess.Popen[str]:
        """Start ``mclab exec POD -- CMD`` in the background (reaped after the test)."""
        proc = subprocess.Popen([MCLAB, "exec", *self._target(pod), "--", *cmd],
                                env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        _PROCS.append(proc)
        return proc

    # -- traffic ---------------------------------------------------------------------------

    def _probe_files(self, pod: Pod, kind: str) -> tuple[Path, Path]:
        self.probe_dir.mkdir(parents=True, exist_ok=True)
        tag = f"{pod.namespace}-{pod.name}-{kind}-{uuid.uuid4().hex[:6]}"
        return self.probe_dir / f"{tag}.ready", self.probe_dir / f"{tag}.status"

    def start_receiver(self, pod: Pod, group: str, port: int, *, source: str | None = None,
                       duration: float = PROBE_MAX_S, idle: float = 0.0,
                       count_exit: int = 0) -> Receiver:
        """``mcprobe recv`` in ``pod``: joins ``group`` (source-specific with ``source``)."""
        ready, status = self._probe_files(pod, "recv")
        cmd = [PYTHON, MCPROBE, "recv", group, str(port), "--duration", str(duration),
               "--ready", str(ready), "--status", str(status)]
        if idle:
            cmd += ["--idle", str(idle)]
        if count_exit:
            cmd += ["--count-exit", str(count_exit)]
        if source:
            cmd += ["--source", source]
        return Receiver("recv", pod, group, port, self.popen(pod, *cmd), ready, status)

    def start_sniffer(self, pod: Pod, group: str, port: int,
                      duration: float = PROBE_MAX_S, igmp_queries: bool = False) -> Receiver:
        """``mcprobe sniff``: counts frames to group:port reaching the pod's multicast
        interface, no join (with ``igmp_queries``: the IGMP queries sent to ``group``)."""
        ready, status = self._probe_files(pod, "sniff")
        cmd = [PYTHON, MCPROBE, "sniff", group, str(port), "--iface", pod.iface,
               "--duration", str(duration), "--ready", str(ready), "--status", str(status)]
        if igmp_queries:
            cmd.append("--igmp-queries")
        return Receiver("sniff", pod, group, port, self.popen(pod, *cmd), ready, status)

    def start_socat(self, pod: Pod, group: str, port: int) -> Receiver:
        """A real socat receiver joined to ``group``; counts newline-terminated datagrams."""
        cmd = ["socat", "-u",
               f"UDP4-RECV:{port},reuseaddr,ip-add-membership={group}:0.0.0.0", "-"]
        return Receiver("socat", pod, group, port, self.popen(pod, *cmd), None, None)

    def send(self, pod: Pod, group: str, port: int, count: int, pps: float = 200.0,
             size: int = 64, ttl: int = 1) -> dict[str, Any]:
        """``mcprobe send`` from ``pod``; returns its JSON ({"sent": N, ...})."""
        timeout = 30.0 + (count / pps if pps else 0.0)
        out = self.exec(pod, PYTHON, MCPROBE, "send", group, str(port), "--count", str(count),
                        "--pps", str(pps), "--size", str(size), "--ttl", str(ttl),
                        timeout=timeout).stdout
        res = json.loads(out.strip().splitlines()[-1])
        assert res["sent"] == count, res
        return res

    def forge_v2_report(self, pod: Pod, group: str) -> None:
        """Send an IGMPv2 report for ``group`` from ``pod`` without its kernel joining."""
        self.exec(pod, PYTHON, "-c", _FORGE_V2_REPORT, group, pod.ip, pod.iface)

    # -- membership and switch state -------------------------------------------------------

    def members(self, node: str = "node1") -> dict[str, list[str]]:
        """``mcctl get members``: {group: [local pod refs]} (groups with only remote members
        appear with an empty list)."""
        return {r["group"]: list(r["localPods"]) for r in self.mcctl_json(node, "members")}

    def wait_members(self, node: str, group: str, pods: list[PodLike], timeout: float = 10.0,
                     exact: bool = False) -> list[str]:
        """Poll ``mcctl get members`` until every pod in ``pods`` is a local member of ``group``
        (and, with ``exact``, no other pod is)."""
        want = {_ref(p) for p in pods}

        def ok() -> list[str] | None:
            have = set(self.members(node).get(group, []))
            good = have == want if exact else want <= have
            return sorted(have) if good else None

        return wait_for(ok, timeout,
                        f"members of {group} on {node} to be {sorted(want)}"
                        f"{' exactly' if exact else ''} (now {self.members(node).get(group)})")

    def wait_outside(self, node: str, group: str, hosts: list[Pod], timeout: float = 10.0
                     ) -> None:
        """Poll ``mcctl get members`` until ``node`` heard each outside host of ``hosts``
        report ``group`` on its uplink: from then on its pods' datagrams to ``group`` go out."""
        want = {h.ip for h in hosts}
        wait_for(lambda: want <= self.outside_hosts(node, group), timeout,
                 f"{node} to hear {sorted(want)} join {group} on its uplink "
                 f"(now {sorted(self.outside_hosts(node, group))})")

    def outside_hosts(self, node: str, group: str) -> set[str]:
        """The hosts ``node`` heard report ``group`` on its uplink (``mcctl get members``)."""
        return {h for r in self.mcctl_json(node, "members") if r["group"] == group
                for h in r["outsideHosts"]}

    def wait_not_members(self, node: str, group: str, pods: list[PodLike],
                         timeout: float = 10.0) -> None:
        gone = {_ref(p) for p in pods}
        wait_for(lambda: not gone & set(self.members(node).get(group, [])), timeout,
                 f"{sorted(gone)} to leave {group} on {node}")

    def pod_ports(self, node: str = "node1") -> dict[str, int]:
        """{pod ref: ofport} from ``mcctl get pods``."""
        return {f"{p['namespace']}/{p['name']}": int(p["ofport"])
                for p in self.mcctl_json(node, "pods")}

    def route_group(self, node: str, group: str) -> int | None:
        """The OpenFlow group id the ``nw_dst=group`` route flow points at, or None."""
        rx = _group_match(group)
        for line in self.ofctl(node, "dump-flows", "br-int").splitlines():
            if rx.search(line):
                m = re.search(r"group:(\d+)", line)
                if m:
                    return int(m.group(1))
        return None

    def route_flows(self, node: str, group: str) -> list[str]:
        rx = _group_match(group)
        return [ln for ln in self.ofctl(node, "dump-flows", "br-int").splitlines()
                if rx.search(ln)]

    def groups(self, node: str = "node1") -> dict[int, list[str]]:
        return parse_groups(self.ofctl(node, "dump-groups", "br-int"))

    def group_ports(self, node: str, gid: int,
                    groups: dict[int, list[str]] | None = None) -> set[int]:
        """Pod ports the buckets of OpenFlow group ``gid`` deliver to."""
        buckets = (groups if groups is not None else self.groups(node)).get(gid, [])
        return {p for b in buckets for p in bucket_ports(b)}

    def debug(self, node: str = "node1") -> str:
        """Flows, groups and the agent log's tail, for assertion messages."""
        parts = []
        for args in (("dump-flows", "br-int"), ("dump-groups", "br-int")):
            try:
                parts.append(self.ofctl(node, *args))
            except OvsError as e:
                parts.append(str(e))
        log = self.dir / node / "agent.log"
        try:
            parts.append("agent.log tail:\n" + "\n".join(
                log.read_text(errors="replace").splitlines()[-40:]))
        except OSError:
            parts.append("(no agent.log)")
        return "\n".join(parts)


# A helper run with the venv python inside a pod: an IGMPv2 report frame on its multicast
# interface (AF_PACKET), from the pod's own MAC and IP, while its kernel is not joined.
_FORGE_V2_REPORT = """
import socket, sys
from agent.multicast.igmp.packets import build_v2_report
group, ip, iface = sys.argv[1], sys.argv[2], sys.argv[3]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((iface, 0))
mac = s.getsockname()[4].hex(":")
s.send(build_v2_report(group, ip, mac))
s.close()
print(mac)
"""


def _run(argv: list[str], env: dict[str, str], check: bool,
         timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{' '.join(argv)}: no answer within {timeout:.0f}s "
                    f"(stdout {e.stdout!r} stderr {e.stderr!r})", pytrace=False)
    if check and res.returncode != 0:
        pytest.fail(f"{' '.join(argv)} exited {res.returncode}\nstdout: {res.stdout}\n"
                    f"stderr: {res.stderr}", pytrace=False)
    return res


# ---------------------------------------------------------------------------- lifecycle


def foreign_lab(prefix: str) -> str | None:
    """Why a lab with namespace prefix ``prefix`` seems to be up already, or None."""
    names = netns.list_netns(prefix)
    if names:
        return (f"namespaces {', '.join(names)} already exist: a lab with prefix {prefix} is up; "
                f"take it down first (MCLAB_PREFIX={prefix} MCLAB_DIR=<its dir> mclab down)")
    return None


def fresh_lab() -> tuple[Path, str]:
    """A new lab directory under /tmp and a namespace prefix of our own."""
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
    return Path(f"/tmp/mclab-t{tag}"), f"mclt{tag.split('-')[1]}-"


def _archive_logs(lab: Lab, keep: int = 10) -> Path:
    """Copy the lab's logs and switch state to LOG_ARCHIVE (the ``keep`` newest labs stay)."""
    if LOG_ARCHIVE.is_dir():
        old = sorted(LOG_ARCHIVE.iterdir(), key=lambda d: d.stat().st_mtime)[: -(keep - 1)]
        for d in old:
            shutil.rmtree(d, ignore_errors=True)
    dest = LOG_ARCHIVE / lab.dir.name
    dest.mkdir(parents=True, exist_ok=True)
    for node in range(1, lab.nodes + 1):
        name = f"node{node}"
        try:
            for args, fname in ((("dump-flows", "br-int"), "flows.txt"),
                                (("dump-groups", "br-int"), "groups.txt")):
                (dest / f"{name}-{fname}").write_text(lab.ofctl(name, *args))
        except (OvsError, KeyError, OSError):
            pass
    for path in lab.dir.glob("**/*.log"):
        rel = path.relative_to(lab.dir)
        target = dest / str(rel).replace("/", "-")
        shutil.copyfile(path, target)
    if (lab.dir / "state.json").exists():
        shutil.copyfile(lab.dir / "state.json", dest / "state.json")
    return dest


def _teardown(lab: Lab) -> None:
    """mclab down, then insist that nothing is left; clean leftovers and fail if any."""
    problems = [f"probe process still running at lab teardown: {c}" for c in reap_processes()]
    try:
        kept = _archive_logs(lab)
    except Exception as e:  # never let log keeping stop the clean-up
        kept = Path(f"(logs not kept: {e})")
    try:
        res = subprocess.run([MCLAB, "down"], env=lab.env, capture_output=True, text=True,
                             timeout=UP_TIMEOUT, stdin=subprocess.DEVNULL)
        if res.returncode != 0:
            problems.append(f"mclab down exited {res.returncode}: {res.stderr.strip()}")
    except subprocess.TimeoutExpired:
        problems.append(f"mclab down did not finish within {UP_TIMEOUT:.0f}s")
    left_ns = netns.list_netns(lab.prefix)
    marker = str(lab.dir)
    left_pids = [p for p in pids_naming(marker) if is_alive(p)]
    if left_ns:
        problems.append(f"namespaces left after mclab down: {left_ns}")
    if left_pids:
        problems.append(f"processes naming {marker} left after mclab down: {left_pids}")
    if lab.dir.exists():
        problems.append(f"lab directory {lab.dir} left after mclab down")
    # Leave the machine clean whatever happened, then complain.
    terminate(left_pids, marker)
    for name in left_ns:
        netns.delete(name)
    shutil.rmtree(lab.dir, ignore_errors=True)
    if problems:
        pytest.fail("lab teardown is not clean (logs in " + str(kept) + "):\n  "
                    + "\n  ".join(problems), pytrace=False)


LabFactory = Callable[..., Lab]


@pytest.fixture(scope="module")
def lab_factory() -> Iterator[LabFactory]:
    """``make(nodes=1, mode="encap", query_interval="125s", attach="chained") -> Lab`` (one
    lab at a time).

    Runs the real ``mclab up``; whatever happens, the lab is taken down at the end of the
    module (and checked to be gone without a trace).
    """
    made: list[Lab] = []

    def make(nodes: int = 1, mode: str = "encap", query_interval: str = "125s",
             attach: str = "chained") -> Lab:
        if made:
            pytest.fail("lab_factory: one lab at a time (mclab namespaces are machine-wide)",
                        pytrace=False)
        lab_dir, prefix = fresh_lab()
        why = foreign_lab(prefix)
        if why:
            pytest.fail(why, pytrace=False)
        lab = Lab(lab_dir, prefix, nodes, mode, query_interval, attach)
        made.append(lab)  # from here on, teardown runs mclab down
        lab.mclab("up", "--nodes", str(nodes), "--mode", mode, "--attach", attach,
                  "--query-interval", query_interval, timeout=UP_TIMEOUT)
        return lab

    try:
        yield make
    finally:
        for lab in made:
            _teardown(lab)


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest, lab_factory: LabFactory) -> Lab:
    """The module's lab, built with the module's ``LAB_OPTIONS`` dict (default: 1 node)."""
    return lab_factory(**getattr(request.module, "LAB_OPTIONS", {}))


@pytest.fixture(autouse=True)
def _reap_probes() -> Iterator[None]:
    """No probe process outlives the test that started it, pass or fail."""
    try:
        yield
    finally:
        reap_processes()


@pytest.fixture
def no_lab() -> Iterator[Callable[..., subprocess.CompletedProcess[str]]]:
    """Run ``mclab ARGS`` with a fresh, empty MCLAB_DIR and namespace prefix (no lab up)."""
    lab_dir, prefix = fresh_lab()
    why = foreign_lab(prefix)
    if why:
        pytest.fail(why, pytrace=False)
    env = {**os.environ, "MCLAB_DIR": str(lab_dir), "MCLAB_PREFIX": prefix}

    def run(*args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return _run([MCLAB, *args], env, False, timeout)

    run.lab_dir = lab_dir  # type: ignore[attr-defined]
    try:
        yield run
    finally:
        shutil.rmtree(lab_dir, ignore_errors=True)
