"""``mcast-cni-install``: puts the CNI plugin on the node and chains it into the node's network.

This module owns the installer run by the agent DaemonSet (init container, and a watcher
sidecar): its command line, writing the plugin executable into the CNI bin dir, patching the
runtime's active CNI config in the conf dir (chained mode) and undoing both (``uninstall``).
The config logic is pure and lives in ``agent.cni.conflist``; the executable's contents in
``agent.cni.bundle``.

    mcast-cni-install install --mode chained|multus [--cni-conf-dir DIR] [--cni-bin-dir DIR]
        [--agent-socket PATH] [--interface-name mc0] [--[no-]tx-checksum-offload]
        [--conflist FILE] [--interpreter PATH] [--wait SECONDS] [--watch SECONDS]
    mcast-cni-install uninstall [--cni-conf-dir DIR] [--cni-bin-dir DIR] [--watch SECONDS]

Order of work: install writes the executable before it names it in a config; uninstall
removes the config entries before the executable, so a runtime never chains a missing binary.
``--mode multus`` installs the executable only (the NetworkAttachmentDefinition names the
plugin) and removes a chained entry left from an earlier chained install.

Exit codes: 0 done (also: nothing to change); 1 error (the message names the file and the
problem: not JSON, no plugins, unsupported cniVersion, I/O); 2 usage; 75 (EX_TEMPFAIL) not yet:
the conf dir or the config to patch does not exist, i.e. the primary CNI has not written its
config yet: retry later (a failing init container is restarted by the kubelet; ``--wait``
polls first).

Every write is atomic (a temporary file in the same directory, then rename) and happens only
when the bytes change: a second install changes nothing. ``--watch`` repeats the work every
SECONDS until SIGTERM, so a primary CNI that rewrites its config (Calico's install-cni does on
every restart) gets our entry back; a failure there is logged, not fatal.

The executable (``agent.cni.bundle``) is a zipapp run by the node's own python3: known
limitation, every node needs python3 >= 3.10 (a static forwarder binary is future work).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from agent.cni import conflist as cl
from agent.cni.bundle import DEFAULT_INTERPRETER, BundleError, build_plugin

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_YET = 0, 1, 2, 75
DEFAULT_CONF_DIR = "/etc/cni/net.d"
DEFAULT_BIN_DIR = "/opt/cni/bin"
DEFAULT_AGENT_SOCKET = "/var/run/kube-mcast/agent.sock"
DEFAULT_INTERFACE = "mc0"


class NotYet(Exception):
    """Nothing to patch yet (no conf dir, no config): exit 75, retry later."""


# -- files --------------------------------------------------------------------------------------


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` by ``data``: temp file in the same dir, fsync, rename, fsync dir."""
    fd, tmp = tempfile.mkstemp(prefix=cl.TEMP_PREFIX, suffix=cl.TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def install_executable(bin_dir: Path, data: bytes) -> bool:
    """Write ``bin_dir/mcast-cni`` (mode 755) unless it holds ``data``; True if written."""
    path = bin_dir / cl.PLUGIN_TYPE
    try:
        if path.read_bytes() == data and os.access(path, os.X_OK):
            return False
    except FileNotFoundError:
        pass
    bin_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data, 0o755)
    return True


def remove_executable(bin_dir: Path) -> bool:
    try:
        (bin_dir / cl.PLUGIN_TYPE).unlink()
    except FileNotFoundError:
        return False
    return True


def _mode_of(path: Path) -> int:
    return path.stat().st_mode & 0o7777


def _regular_files(conf_dir: Path) -> list[str]:
    return [e.name for e in os.scandir(conf_dir) if e.is_file()]


def say(msg: str) -> None:
    print(f"mcast-cni-install: {msg}", file=sys.stderr, flush=True)


def patch_active_config(
    conf_dir: Path, entry: cl.Json, conflist: str | None = None
) -> str | None:
    """Chain ``entry`` into the runtime's active config: what it did, None if nothing.

    Raises NotYet (no config to patch yet) or ConfigError (naming the file and the problem).
    """
    if not conf_dir.is_dir():
        raise NotYet(f"CNI conf dir {conf_dir} does not exist yet")
    if conflist:
        path = conf_dir / conflist  # an absolute --conflist stays absolute
        if not path.is_file():
            raise NotYet(f"{path} does not exist yet (named by --conflist)")
    else:
        name = cl.active_config(_regular_files(conf_dir))
        if name is None:
            raise NotYet(f"no CNI config in {conf_dir} yet (*.conflist, *.conf, *.json): "
                          "the primary CNI plugin has not written one")
        path = conf_dir / name
    obj = cl.parse(str(path), path.read_bytes())
    if obj.get("type") == "multus" and not cl.is_conflist_name(path.name):
        raise cl.ConfigError(str(path), "is Multus's config: install with --mode multus, or "
                                        "name the primary network's file with --conflist")
    current = cl.as_conflist(str(path), obj)
    cl.check_version(str(path), current)
    wanted = cl.with_entry(current, entry)
    if wanted["plugins"][0].get("type") == cl.PLUGIN_TYPE:
        raise cl.ConfigError(str(path), f"{cl.PLUGIN_TYPE} is its first plugin: it must be "
                                        "chained after the primary plugin")
    if cl.is_conflist_name(path.name):
        if wanted == obj:
            return None
        verb = "updated" if cl.has_entry(current) else "appended"
        write_atomic(path, cl.render(wanted), _mode_of(path))
        return f"{path}: {verb} the {cl.PLUGIN_TYPE} entry"
    target = path.with_name(cl.conflist_name(path.name))
    write_atomic(target, cl.render(wanted), _mode_of(path))
    path.unlink()  # the new name sorts right after the old one: nothing comes between
    return f"{path}: converted to {target.name} with the {cl.PLUGIN_TYPE} entry appended"


def unpatch_configs(conf_dir: Path) -> list[str]:
    """Remove our entry from every conflist of ``conf_dir`` that has it; what it did.

    A file that is not JSON is someone else's problem: a warning, not an error.
    """
    if not conf_dir.is_dir():
        return []
    done = []
    for name in cl.config_candidates(_regular_files(conf_dir)):
        path = conf_dir / name
        if not cl.is_conflist_name(name):
            continue
        try:
            obj = cl.parse(str(path), path.read_bytes())
        except cl.ConfigError as exc:
            done.append(f"warning: skipped {exc}")
            continue
        if not cl.has_entry(obj):
            continue
        stripped = cl.without_entry(obj)
        if not stripped["plugins"]:
            done.append(f"warning: {path} holds only {cl.PLUGIN_TYPE} entries: left as it is")
            continue
        write_atomic(path, cl.render(stripped), _mode_of(path))
        done.append(f"{path}: removed the {cl.PLUGIN_TYPE} entry")
    return done


# -- command line -----------------------------------------------------------------------------

_IFNAME = re.compile(r"^[^\s/:]{1,15}$")


def _ifname(value: str) -> str:
    if not _IFNAME.match(value) or value in (".", ".."):
        raise argparse.ArgumentTypeError(f"{value!r} is not a valid interface name")
    return value


def _seconds(value: str) -> float:
    try:
        n = float(value)
    except ValueError:
        n = -1.0
    if not n >= 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds >= 0")
    return n


def _interpreter(value: str) -> str:
    if not value.startswith("/") or "\n" in value:
        raise argparse.ArgumentTypeError(f"{value!r}: a shebang needs an absolute path")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mcast-cni-install",
        description="Install the mcast-cni plugin on this node (the agent DaemonSet runs it).",
        epilog=f"exit codes: {EXIT_OK} done, {EXIT_ERROR} error, {EXIT_USAGE} usage, "
               f"{EXIT_NOT_YET} no CNI config to patch yet (retry later)",
    )
    sub = p.add_subparsers(dest="command", required=True)
    ins = sub.add_parser("install", help="write the plugin; chained: patch the active config")
    uni = sub.add_parser("uninstall", help="remove our config entries, then the plugin")
    for sp in (ins, uni):
        sp.add_argument("--cni-conf-dir", type=Path, default=Path(DEFAULT_CONF_DIR))
        sp.add_argument("--cni-bin-dir", type=Path, default=Path(DEFAULT_BIN_DIR))
        sp.add_argument("--watch", type=_seconds, metavar="SECONDS",
                        help="redo the work every SECONDS until SIGTERM (errors are logged)")
    ins.add_argument("--mode", choices=("chained", "multus"), default="chained",
                     help="chained: append to the node's conflist (default); multus: the "
                          "plugin only, a NetworkAttachmentDefinition names it")
    ins.add_argument("--agent-socket", default=DEFAULT_AGENT_SOCKET)
    ins.add_argument("--interface-name", type=_ifname, default=DEFAULT_INTERFACE,
                     help="the pod's multicast interface (chained mode)")
    ins.add_argument("--tx-checksum-offload", action=argparse.BooleanOptionalAction,
                     default=True, help="off only for OVS's userspace datapath")
    ins.add_argument("--conflist", metavar="FILE",
                     help="the config to patch (name in the conf dir, or absolute path) "
                          "instead of the runtime's active one")
    ins.add_argument("--interpreter", type=_interpreter, default=DEFAULT_INTERPRETER,
                     help="the plugin's shebang (default: %(default)s)")
    ins.add_argument("--wait", type=_seconds, default=0.0, metavar="SECONDS",
                     help="poll this long for the primary CNI's config before exit "
                          f"{EXIT_NOT_YET}")
    return p


def _install_step(args: argparse.Namespace, plugin: bytes) -> list[str]:
    done = []
    if install_executable(args.cni_bin_dir, plugin):
        done.append(f"{args.cni_bin_dir / cl.PLUGIN_TYPE}: written")
    if args.mode == "chained":
        entry = cl.plugin_entry(args.agent_socket, args.interface_name, args.tx_checksum_offload)
        what = patch_active_config(args.cni_conf_dir, entry, args.conflist)
        done += [what] if what else []
    else:  # a chained entry left from before would give pods a second interface
        done += unpatch_configs(args.cni_conf_dir)
    return done


def _uninstall_step(args: argparse.Namespace) -> list[str]:
    done = unpatch_configs(args.cni_conf_dir)  # first: never chain a missing binary
    if remove_executable(args.cni_bin_dir):
        done.append(f"{args.cni_bin_dir / cl.PLUGIN_TYPE}: removed")
    return done


@dataclass
class _Loop:
    """Runs a step once, or (``watch``) every so often until ``stop``; prints what it did.

    When watching, a warning or error that the previous round printed is not printed again.
    """

    step: Callable[[], list[str]]
    wait: float  # one-shot only: how long NotYet is retried
    watch: float | None
    stop: threading.Event

    def run(self) -> int:
        deadline = time.monotonic() + self.wait
        first, waiting = True, False
        quiet: set[str] = set()  # warnings and errors printed last round
        while True:
            lines: list[str] = []
            try:
                lines = self.step() or (["nothing to change"] if first else [])
                rc = EXIT_OK
            except NotYet as exc:
                rc = EXIT_NOT_YET
                if self.watch is None and time.monotonic() < deadline:
                    if not waiting:
                        say(f"{exc}: waiting up to {self.wait:g}s")
                        waiting = True
                    if self.stop.wait(min(1.0, max(0.0, deadline - time.monotonic()))):
                        return rc
                    continue
                lines = [f"not yet: {exc} (exit {EXIT_NOT_YET}: retry later)"]
            except (cl.ConfigError, OSError) as exc:
                rc = EXIT_ERROR
                lines = [f"error: {exc}"]
            repeated = {ln for ln in lines if ln.startswith(("warning:", "error:", "not yet:"))}
            for line in lines:
                if line not in quiet:
                    say(line)
            if self.watch is None:
                return rc
            first, quiet = False, repeated
            if self.stop.wait(self.watch):
                return EXIT_OK


def main(argv: list[str] | None = None, stop: threading.Event | None = None) -> int:
    args = build_parser().parse_args(argv)
    stop = stop or threading.Event()
    if args.watch is not None and threading.current_thread() is threading.main_thread():

        def on_signal(_signum: int, _frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    if args.command == "install":
        try:
            plugin = build_plugin(args.interpreter)
        except (BundleError, OSError) as exc:
            say(f"error: cannot build the plugin: {exc}")
            return EXIT_ERROR
        return _Loop(lambda: _install_step(args, plugin), args.wait, args.watch, stop).run()
    return _Loop(lambda: _uninstall_step(args), 0.0, args.watch, stop).run()


if __name__ == "__main__":
    sys.exit(main())
