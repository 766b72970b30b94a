"""Named network namespaces (/run/netns) for the lab, via pyroute2.

This module owns creating, listing and deleting namespaces and running a program inside one
(a ``preexec_fn`` that calls pyroute2 ``netns.setns``). It never shells out to ``ip``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import socket
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2 import netns as _pr_netns

log = logging.getLogger(__name__)
T = TypeVar("T")

NETNS_DIR = Path(_pr_netns.NETNS_RUN_DIR)
_libc: ctypes.CDLL | None = None


def _get_libc() -> ctypes.CDLL:
    """Load libc once in the parent, so a forked child's preexec_fn does not have to."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    return _libc


def exists(name: str) -> bool:
    return name in _pr_netns.listnetns()


def list_netns(prefix: str = "") -> list[str]:
    """Names of the namespaces in /run/netns that start with ``prefix``, sorted."""
    return sorted(n for n in _pr_netns.listnetns() if n.startswith(prefix))


def create(name: str, *, lo_up: bool = True) -> None:
    """Create namespace ``name`` (error if it exists) and bring its loopback up."""
    if exists(name):
        raise FileExistsError(f"netns {name} already exists")
    _pr_netns.create(name)
    log.debug("created netns %s", name)
    if lo_up:
        with IPRoute(netns=name, flags=0) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")


def delete(name: str) -> bool:
    """Delete namespace ``name``; True if it existed. Its devices go once no process uses it."""
    if not exists(name):
        return False
    _pr_netns.remove(name)
    log.debug("deleted netns %s", name)
    return True


def links(name: str) -> list[str]:
    """Interface names inside namespace ``name``."""
    with IPRoute(netns=name, flags=0) as ipr:
        return [str(link.get("ifname")) for link in ipr.get_links()]


def _enter(name: str) -> Callable[[], None]:
    if not exists(name):
        raise FileNotFoundError(f"netns {name} does not exist")
    # flags=0: never create the namespace from inside the forked child
    return functools.partial(_pr_netns.setns, name, flags=0, libc=_get_libc())


def run(
    name: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    check: bool = False,
    timeout: float | None = 60,
    **kwargs: Any,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside namespace ``name``; stdout/stderr are captured as text."""
    kwargs.setdefault("capture_output", True)
    log.debug("[%s] %s", name, " ".join(argv))
    return subprocess.run(
        list(argv),
        preexec_fn=_enter(name),  # the child is single-threaded until exec
        env=dict(env) if env is not None else None,
        check=check,
        timeout=timeout,
        text=True,
        **kwargs,
    )


def popen(
    name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None, **kwargs: Any
) -> subprocess.Popen[str]:
    """Start ``argv`` inside namespace ``name`` and return the Popen (caller owns it)."""
    log.debug("[%s] & %s", name, " ".join(argv))
    return subprocess.Popen(
        list(argv),
        preexec_fn=_enter(name),
        env=dict(env) if env is not None else None,
        text=True,
        **kwargs,
    )


def call_in(name: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a throw-away thread that has entered namespace ``name``; return its result.

    setns() changes only the calling thread, so sockets ``fn`` creates live in ``name`` while
    the rest of the process stays where it is (e.g. a controller socket inside a node).
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            _pr_netns.setns(name, flags=0)
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            box["error"] = exc

    t = threading.Thread(target=run, name=f"setns-{name}")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def listen_in(name: str, port: int, host: str = "127.0.0.1") -> socket.socket:
    """A TCP server socket on host:port inside namespace ``name``."""
    return call_in(name, lambda: socket.create_server((host, port)))
