"""What the controller holds between the Kubernetes API and the agents, and the views it derives.

Owns the ``Hub``: the node set (written by the Node watcher, streamed to every agent) and each
node's membership report (written by the agent stream, read by the ``MulticastGroup`` writer),
each with a version that moves on every change, and change callbacks so either side wakes the
other. Also the pure view ``group_statuses``: memberships → the status of every
``MulticastGroup`` object (one per group with members anywhere).

Thread-safe: the watcher and the writer run in threads, the agent stream in an event loop;
callbacks run on the writer's thread and must only hand the news over (e.g.
``loop.call_soon_threadsafe``). May import ``wire`` only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from wire.members import GroupReport
from wire.nodes import NodeInfo

SUMMARY_PODS = 3  # PODS column: the first three, then " + N more..."

Listener = Callable[[], None]


class Hub:
    """Node set and per-node memberships, versioned, with change listeners."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nodes: tuple[NodeInfo, ...] = ()
        self._nodes_version = 0
        self._members: dict[str, tuple[GroupReport, ...]] = {}
        self._members_version = 0
        self._node_listeners: list[Listener] = []
        self._member_listeners: list[Listener] = []

    # -- the node set (from the API) -------------------------------------------------------

    def set_nodes(self, nodes: Iterable[NodeInfo]) -> bool:
        """Replace the node set; True (and listeners told) if it changed. A node that left
        takes its membership report with it."""
        new = tuple(sorted(nodes, key=lambda n: n.name))
        with self._lock:
            if new == self._nodes:
                return False
            self._nodes = new
            self._nodes_version += 1
            names = {n.name for n in new}
            gone = [n for n in self._members if n not in names]
            for name in gone:
                del self._members[name]
            if gone:
                self._members_version += 1
            listeners = list(self._node_listeners) + (
                list(self._member_listeners) if gone else [])
        for fn in listeners:
            fn()
        return True

    def nodes(self) -> tuple[int, tuple[NodeInfo, ...]]:
        """(version, node set)."""
        with self._lock:
            return self._nodes_version, self._nodes

    def has_node(self, name: str) -> bool:
        with self._lock:
            return any(n.name == name for n in self._nodes)

    # -- memberships (from agents) -----------------------------------------------------------

    def report(self, node: str, groups: Iterable[GroupReport]) -> bool:
        """Replace ``node``'s membership report; True (and listeners told) if it changed."""
        new = tuple(sorted((g for g in groups if g.pods), key=lambda g: g.group))
        with self._lock:
            if self._members.get(node, ()) == new:
                return False
            if new:
                self._members[node] = new
            else:
                self._members.pop(node, None)
            self._members_version += 1
            listeners = list(self._member_listeners)
        for fn in listeners:
            fn()
        return True

    def memberships(self) -> tuple[int, dict[str, tuple[GroupReport, ...]]]:
        """(version, {node: its groups})."""
        with self._lock:
            return self._members_version, dict(self._members)

    # -- listeners -----------------------------------------------------------------------------

    def on_nodes(self, fn: Listener) -> Callable[[], None]:
        """Call ``fn`` after every node-set change; returns the unsubscribe function."""
        return self._listen(self._node_listeners, fn)

    def on_members(self, fn: Listener) -> Callable[[], None]:
        return self._listen(self._member_listeners, fn)

    def _listen(self, listeners: list[Listener], fn: Listener) -> Callable[[], None]:
        with self._lock:
            listeners.append(fn)

        def cancel() -> None:
            with self._lock:
                if fn in listeners:
                    listeners.remove(fn)

        return cancel


def pods_summary(refs: list[str]) -> str:
    """``a, b, c + 2 more...``: the PODS printer column."""
    shown = ", ".join(refs[:SUMMARY_PODS])
    rest = len(refs) - SUMMARY_PODS
    return f"{shown} + {rest} more..." if rest > 0 else shown


def group_statuses(memberships: Mapping[str, Iterable[GroupReport]]) -> dict[str, dict[str, Any]]:
    """{group: MulticastGroup status} for every group with a member pod on some node.

    ``status.pods`` lists (namespace, name, node) sorted by namespace, name, node;
    ``status.podsSummary`` is the PODS column.
    """
    pods: dict[str, set[tuple[str, str, str]]] = {}
    for node, groups in memberships.items():
        for report in groups:
            for pod in report.pods:
                pods.setdefault(report.group, set()).add((pod.namespace, pod.name, node))
    out = {}
    for group, members in pods.items():
        ordered = sorted(members)
        refs = list(dict.fromkeys(f"{ns}/{name}" for ns, name, _ in ordered))
        out[group] = {
            "group": group,
            "pods": [{"namespace": ns, "name": name, "node": node} for ns, name, node in ordered],
            "podsSummary": pods_summary(refs),
        }
    return out
