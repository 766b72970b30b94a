"""One private Open vSwitch "node": ovsdb-server + ovs-vswitchd running inside a network namespace.

This module owns the daemons' lifecycle (start/stop), their run directory (conf.db, db.sock,
pidfiles, logs, unixctl sockets, bridge ``*.mgmt`` sockets) and thin wrappers around
ovs-vsctl / ovs-ofctl / ovs-appctl for that node. It follows the verified testbed recipe
(shared/testbed/NOTES.md, section A): userspace datapath, no kernel module needed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from tools.mclab import netns

log = logging.getLogger(__name__)

SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
DAEMONS = ("ovs-vswitchd", "ovsdb-server")
REQUIRED_BINS = (
    "ovs-vswitchd", "ovsdb-server", "ovs-vsctl", "ovs-ofctl", "ovs-appctl", "ovsdb-tool",
)  # fmt: skip
_SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
STOP_TIMEOUT = 5.0


class OvsError(RuntimeError):
    """An OVS command failed; the message carries the command line and its stderr."""


def _which(name: str) -> str | None:
    return shutil.which(name, path=_SBIN_PATH)


def require_ovs() -> None:
    """Raise RuntimeError unless we are root and the OVS binaries and schema are installed."""
    if os.geteuid() != 0:
        raise RuntimeError(
            "OVS tests need root (network namespaces, private ovs-vswitchd): run as root or "
            "with sudo, and install openvswitch-switch (tools/install.sh)"
        )
    missing = [b for b in REQUIRED_BINS if _which(b) is None]
    if not SCHEMA.exists():
        missing.append(str(SCHEMA))
    if missing:
        raise RuntimeError(
            f"missing {', '.join(missing)}: install openvswitch-switch (tools/install.sh)"
        )


def _bin(name: str) -> str:
    path = _which(name)
    if path is None:
        require_ovs()  # raises with the install hint
        raise RuntimeError(f"{name} not found")  # pragma: no cover - require_ovs raised
    return path


def cmdline(pid: int) -> str:
    """Command line of ``pid`` with NULs as spaces; '' if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def is_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def pids_naming(marker: str, exclude: Iterable[int] = ()) -> list[int]:
    """Pids of live processes whose command line contains ``marker`` (minus ``exclude``)."""
    skip = set(exclude) | {os.getpid()}
    pids = (int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit())
    return [p for p in pids if p not in skip and marker in cmdline(p)]


def terminate(pids: Sequence[int], marker: str, timeout: float = STOP_TIMEOUT) -> list[int]:
    """SIGTERM ``pids`` whose cmdline still names ``marker``, wait, then SIGKILL. Returns killed."""
    ours = [p for p in pids if marker in cmdline(p)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in ours:
            if is_alive(pid) and marker in cmdline(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while any(is_alive(p) for p in ours) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = [p for p in ours if is_alive(p)]
        if not left:
            break
        log.warning("pids %s still alive %.0fs after %s", left, timeout, sig.name)
    return ours


class OvsNode:
    """ovsdb-server + ovs-vswitchd of one node, inside netns ``netns``, state in ``rundir``.

    ``start()`` creates the netns if it does not exist yet; ``stop()`` then deletes it again.
    A netns that existed before ``start()`` belongs to the caller and is left alone.
    """

    def __init__(self, name: str, rundir: Path, netns: str) -> None:
        self.name = name
        self.rundir = Path(rundir).absolute()
        self.netns = netns
        self._owns_netns = False

    def __repr__(self) -> str:
        return f"OvsNode({self.name!r}, rundir={str(self.rundir)!r}, netns={self.netns!r})"

    @property
    def db_sock(self) -> str:
        return f"unix:{self.rundir}/db.sock"

    @property
    def vswitchd_ctl(self) -> Path:
        return self.rundir / "ovs-vswitchd.ctl"

    def env(self) -> dict[str, str]:
        """Environment for OVS tools of this node (OVS_RUNDIR finds ``<bridge>.mgmt``)."""
        rd = str(self.rundir)
        return {**os.environ, "OVS_RUNDIR": rd, "OVS_LOGDIR": rd, "OVS_DBDIR": rd}

    # -- running commands ---------------------------------------------------------------------

    def _run(self, argv: Sequence[str], *, in_netns: bool = True, timeout: float = 60) -> str:
        argv = [_bin(argv[0]), *argv[1:]]
        try:
            if in_netns:
                res = netns.run(self.netns, argv, env=self.env(), timeout=timeout)
            else:
                res = subprocess.run(
                    argv, env=self.env(), capture_output=True, text=True, timeout=timeout
                )
        except subprocess.TimeoutExpired as exc:
            raise OvsError(f"[{self.name}] timed out after {timeout}s: {' '.join(argv)}") from exc
        if res.returncode != 0:
            raise OvsError(
                f"[{self.name}] exit {res.returncode}: {' '.join(argv)}\n{res.stderr.strip()}"
            )
        return res.stdout

    def vsctl(self, *args: str) -> str:
        """ovs-vsctl against this node's db (waits for vswitchd unless ``--no-wait`` is given)."""
        return self._run(["ovs-vsctl", f"--db={self.db_sock}", "--timeout=30", *args])

    def ofctl(self, *args: str) -> str:
        """ovs-ofctl -O OpenFlow13, e.g. ``ofctl("dump-flows", "br-int")``."""
        return self._run(["ovs-ofctl", "-O", "OpenFlow13", *args])

    def appctl(self, *args: str) -> str:
        """ovs-appctl to this node's ovs-vswitchd."""
        return self._run(["ovs-appctl", "-t", str(self.vswitchd_ctl), *args], in_netns=False)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Create conf.db and start both daemons (detached) inside the netns."""
        require_ovs()
        if self.pids():
            raise OvsError(f"{self!r} is already running (pids {self.pids()})")
        if not netns.exists(self.netns):
            netns.create(self.netns)
            self._owns_netns = True
        rd = self.rundir
        rd.mkdir(parents=True, exist_ok=True)
        try:
            (rd / "conf.db").unlink(missing_ok=True)
            self._run(["ovsdb-tool", "create", str(rd / "conf.db"), str(SCHEMA)], in_netns=False)
            self._run([
                "ovsdb-server", str(rd / "conf.db"), f"--remote=punix:{rd}/db.sock",
                "--remote=db:Open_vSwitch,Open_vSwitch,manager_options",
                f"--pidfile={rd}/ovsdb-server.pid", "--detach",
                f"--log-file={rd}/ovsdb-server.log", f"--unixctl={rd}/ovsdb-server.ctl",
            ])  # fmt: skip
            self.vsctl("--no-wait", "init")
            self._run([
                "ovs-vswitchd", self.db_sock, f"--pidfile={rd}/ovs-vswitchd.pid", "--detach",
                f"--log-file={rd}/ovs-vswitchd.log", f"--unixctl={self.vswitchd_ctl}",
            ])  # fmt: skip
        except BaseException:
            self.stop()
            raise
        log.info("started %r (pids %s)", self, self.pids())

    def pids(self) -> dict[str, int]:
        """Live daemon pids from the pidfiles, only if their cmdline names our rundir."""
        found: dict[str, int] = {}
        for daemon in DAEMONS:
            try:
                pid = int((self.rundir / f"{daemon}.pid").read_text().strip())
            except (OSError, ValueError):
                continue
            if is_alive(pid) and f"{self.rundir}/" in cmdline(pid):
                found[daemon] = pid
        return found

    def stop(self) -> None:
        """Stop both daemons (TERM, up to 5 s, then KILL); delete the netns if start() made it."""
        pids = list(self.pids().values())  # read first: vswitchd removes its pidfile on exit
        terminate(pids, f"{self.rundir}/")
        if self._owns_netns:
            netns.delete(self.netns)
            self._owns_netns = False
        log.info("stopped %r", self)
