"""Shared pytest fixtures: private OVS nodes in throw-away network namespaces.

This module owns the test-side lifecycle of lab resources: the per-session work dir under
/tmp/kmt/, the ``kmt-*`` namespaces the tests create, and the clean-up safety net at session
end. Tests marked ``ovs``/``lab`` FAIL (never skip) when root or OVS is missing.

Several pytest sessions may run at once on one machine (developers share it), so the safety
net spares what belongs to another *live* session: each session works in
``/tmp/kmt/s<pid>-<hex>/`` and records every netns name there before creating it.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tools.mclab import netns
from tools.mclab.ovsnode import (
    OvsNode,
    cmdline,
    is_alive,
    pids_naming,
    require_ovs,
    terminate,
)

log = logging.getLogger(__name__)

KMT_BASE = Path("/tmp/kmt")
NETNS_PREFIX = "kmt-"
ROOT_MARKERS = ("ovs", "lab")

NodeFactory = Callable[[], OvsNode]


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses an OVS node fixture is an ``ovs`` test, marked or not."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        if ("ovs_node" in names or "make_ovs_node" in names) and not item.get_closest_marker("ovs"):
            item.add_marker(pytest.mark.ovs)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if any(item.get_closest_marker(m) for m in ROOT_MARKERS):
        try:
            require_ovs()
        except RuntimeError as exc:
            pytest.fail(str(exc), pytrace=False)


# -- session bookkeeping ----------------------------------------------------------------------


def _session_pid(d: Path) -> int | None:
    """pid encoded in a session dir name ``s<pid>-<hex>``, else None."""
    head = d.name[1:].split("-", 1)[0]
    return int(head) if d.name.startswith("s") and head.isdigit() else None


def _live_sessions(exclude: Path | None = None) -> list[Path]:
    if not KMT_BASE.is_dir():
        return []
    return [
        d
        for d in KMT_BASE.iterdir()
        if d != exclude and (pid := _session_pid(d)) is not None and is_alive(pid)
    ]


def _claimed_netns(session_dir: Path) -> set[str]:
    ns_dir = session_dir / "netns"
    return {p.name for p in ns_dir.iterdir()} if ns_dir.is_dir() else set()


def sweep(own: Path | None) -> list[str]:
    """Kill daemons and delete ``kmt-*`` namespaces left by this or by dead sessions.

    Candidates are listed *before* the live sessions are: a session dir and its netns claim
    always exist before its netns and daemons do, so a session that starts meanwhile is spared.
    Returns a description of what it removed.
    """
    pids = pids_naming(f"{KMT_BASE}/", exclude=_ancestors())
    names = netns.list_netns(NETNS_PREFIX)
    others = _live_sessions(exclude=own)
    spared = set().union(*(_claimed_netns(d) for d in others))
    stray = [p for p in pids if not any(f"{d}/" in cmdline(p) for d in others)]
    leftover = [n for n in names if n not in spared]
    done = []
    if stray:
        terminate(stray, f"{KMT_BASE}/")
        done.append(f"killed pids {stray}")
    for name in leftover:
        netns.delete(name)
    if leftover:
        done.append(f"deleted netns {leftover}")
    if KMT_BASE.is_dir():
        for d in KMT_BASE.iterdir():
            if d != own and d not in others and _session_pid(d) is not None:
                shutil.rmtree(d, ignore_errors=True)
    return done


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return pids


_SESSION_DIR = pytest.StashKey[Path]()


@pytest.fixture(scope="session")
def kmt_session_dir(request: pytest.FixtureRequest) -> Path:
    """This session's work dir ``/tmp/kmt/s<pid>-<hex>`` (removed at the end if all passed)."""
    d = KMT_BASE / f"s{os.getpid()}-{uuid.uuid4().hex[:6]}"
    (d / "netns").mkdir(parents=True)
    request.config.stash[_SESSION_DIR] = d
    return d


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Safety net for what fixture teardown missed here, or in a session that crashed."""
    own = session.config.stash.get(_SESSION_DIR, None)
    if os.geteuid() != 0:
        return
    try:
        done = sweep(own)
        if own is not None and exitstatus == 0:
            shutil.rmtree(own, ignore_errors=True)
    except Exception as exc:  # never turn a green run red because of clean-up
        done = [f"clean-up failed: {exc!r}"]
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if done and reporter is not None:
        reporter.write("\n")
    for line in done:
        log.warning("kmt safety net: %s", line)
        if reporter is not None:
            reporter.write_line(f"kmt safety net: {line}", yellow=True)


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def netns_name(kmt_session_dir: Path) -> Iterator[str]:
    """A fresh, registered ``kmt-<hex8>`` name (netns not created); deleted at teardown."""
    name = f"{NETNS_PREFIX}{uuid.uuid4().hex[:8]}"
    (kmt_session_dir / "netns" / name).touch()  # claim it before anyone creates it
    try:
        yield name
    finally:
        netns.delete(name)


@pytest.fixture
def make_ovs_node(kmt_session_dir: Path) -> Iterator[NodeFactory]:
    """Factory: each call creates a netns ``kmt-<hex8>`` and starts an OvsNode in it.

    Every node is stopped and its netns deleted at teardown, whatever the test did.
    """
    require_ovs()
    made: list[OvsNode] = []

    def make() -> OvsNode:
        name = f"{NETNS_PREFIX}{uuid.uuid4().hex[:8]}"
        (kmt_session_dir / "netns" / name).touch()
        netns.create(name)
        node = OvsNode(name, kmt_session_dir / name, name)
        made.append(node)
        node.start()
        return node

    try:
        yield make
    finally:
        for node in reversed(made):
            try:
                node.stop()
            finally:
                netns.delete(node.netns)


@pytest.fixture
def ovs_node(make_ovs_node: NodeFactory) -> OvsNode:
    """A started OvsNode (ovsdb-server + ovs-vswitchd) in its own fresh netns, no bridges."""
    return make_ovs_node()
