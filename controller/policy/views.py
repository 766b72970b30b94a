"""Where the policy computation meets the agent stream and the status writer.

Owns ``PolicyViews``: each node's ``PolicyView`` with a per-node version that moves on every
change, the ``synced`` flag (set once the policy, pod and namespace watches have listed: until
then no agent is sent any policy, so a restarted controller never wipes what agents enforce),
and each node's latest rule counters (``RuleStats``, cumulative per agent) with their sum per
rule over nodes. Listeners: ``on_views`` (called with the nodes whose view changed, or all
when the flag flips) and ``on_stats``; they must only hand the news over.

Thread-safe. Imports ``wire`` only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from wire.policy import PolicyView, RuleKey, RuleStats

ViewListener = Callable[[frozenset[str] | None], None]  # None: every node
Listener = Callable[[], None]

EMPTY = PolicyView()


class PolicyViews:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._synced = False
        self._views: dict[str, PolicyView] = {}
        self._versions: dict[str, int] = {}
        self._stats: dict[str, dict[RuleKey, RuleStats]] = {}
        self._view_listeners: list[ViewListener] = []
        self._stats_listeners: list[Listener] = []

    # -- views (from the computation) ------------------------------------------------------------

    @property
    def synced(self) -> bool:
        with self._lock:
            return self._synced

    def set_synced(self) -> None:
        with self._lock:
            if self._synced:
                return
            self._synced = True
            listeners = list(self._view_listeners)
        for fn in listeners:
            fn(None)

    def update(self, changed: Mapping[str, PolicyView]) -> None:
        """Replace the views of the nodes in ``changed`` (an empty view: nothing there)."""
        with self._lock:
            moved = set()
            for node, view in changed.items():
                if self._views.get(node, EMPTY) == view:
                    continue
                if view == EMPTY:
                    self._views.pop(node, None)
                else:
                    self._views[node] = view
                self._versions[node] = self._versions.get(node, 0) + 1
                moved.add(node)
            listeners = list(self._view_listeners) if moved else []
        for fn in listeners:
            fn(frozenset(moved))

    def view(self, node: str) -> tuple[int, PolicyView]:
        """(version, view) of ``node``; version 0: never had one."""
        with self._lock:
            return self._versions.get(node, 0), self._views.get(node, EMPTY)

    def rule_counts(self) -> dict[str, int]:
        """Rules per node, for the metrics."""
        with self._lock:
            return {node: len(v.rules) for node, v in self._views.items()}

    # -- rule stats (from agents) ----------------------------------------------------------------

    def report_stats(self, node: str, stats: Iterable[RuleStats]) -> bool:
        """``node``'s agent's counters, replacing its earlier ones (rules it no longer lists
        count nothing from it); True (and listeners told) if they changed."""
        new = {s.key: s for s in stats}
        with self._lock:
            if self._stats.get(node) == new:
                return False
            self._stats[node] = new
            listeners = list(self._stats_listeners)
        for fn in listeners:
            fn()
        return True

    def totals(self) -> dict[RuleKey, tuple[int, int]]:
        """(packets, bytes) per rule, summed over nodes."""
        out: dict[RuleKey, tuple[int, int]] = {}
        with self._lock:
            for per_node in self._stats.values():
                for key, s in per_node.items():
                    p, b = out.get(key, (0, 0))
                    out[key] = (p + s.packets, b + s.bytes)
        return out

    def node_stats(self) -> dict[str, Any]:
        with self._lock:
            return {n: dict(s) for n, s in self._stats.items()}

    # -- listeners -------------------------------------------------------------------------------

    def on_views(self, fn: ViewListener) -> Callable[[], None]:
        with self._lock:
            self._view_listeners.append(fn)
        return lambda: self._cancel(self._view_listeners, fn)

    def on_stats(self, fn: Listener) -> Callable[[], None]:
        with self._lock:
            self._stats_listeners.append(fn)
        return lambda: self._cancel(self._stats_listeners, fn)

    def _cancel(self, listeners: list[Any], fn: Any) -> None:
        with self._lock:
            if fn in listeners:
                listeners.remove(fn)
