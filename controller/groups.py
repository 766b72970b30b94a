"""The ``MulticastGroup`` writer: keeps one cluster-scoped object per multicast group that has a
member pod anywhere in the cluster, named after the group, its status what ``Hub`` says
(``group_statuses``: the group, its pods with their nodes, the PODS summary column).

Owns the convergence of the API to the hub's memberships, on the leader only: it lists the
existing objects first (so that stale ones, left by an earlier leader, are deleted), creates
the missing ones, patches the status subresource of those whose status differs, deletes the
objects of groups with no member left. It runs when the hub's memberships change (debounced:
a burst of reports is one pass, yet at most ``max_delay`` after the first change, well within
the 2 s the issue allows), on becoming leader, and every ``resync_period`` (a relist: objects
edited or deleted by hand are put back). A failed pass is retried with backoff, from a relist.
``delete_grace`` after becoming leader, objects are created and updated but none is deleted:
agents need a moment to reconnect to a new leader and report, and deleting their groups'
objects meanwhile would only make them flap.

One thread; ``Hub`` listeners only wake it. May import: the official ``kubernetes`` client,
``controller.hub``, ``controller.watch`` (``call_json``, ``Backoff``) and the standard library.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from controller.hub import Hub, group_statuses
from controller.watch import Backoff, call_json, settle

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL, KIND = "multicast.kube-mcast.io", "v1alpha1", "multicastgroups", \
    "MulticastGroup"
API_VERSION = f"{GROUP}/{VERSION}"
MANAGED_BY = {"app.kubernetes.io/managed-by": "kube-mcast-controller"}
REQUEST_TIMEOUT_S = 10.0


class NotLeading(Exception):
    """Leadership was lost in the middle of a pass: stop writing."""


@dataclass
class WriterStats:
    passes: int = 0
    lists: int = 0
    creates: int = 0
    updates: int = 0
    deletes: int = 0
    errors: int = 0


class GroupWriter:
    def __init__(self, hub: Hub, api: client.ApiClient, *, debounce: float = 0.2,
                 max_delay: float = 1.0, resync_period: float = 60.0, delete_grace: float = 0.0,
                 backoff: Backoff | None = None) -> None:
        self._hub = hub
        self._custom = client.CustomObjectsApi(api)
        self.debounce, self.max_delay = debounce, max_delay
        self.resync_period, self.delete_grace = resync_period, delete_grace
        self._backoff = backoff or Backoff(0.5, 5.0)
        self.stats = WriterStats()
        self._leading = threading.Event()
        self._wakeup = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._unsubscribe: Callable[[], None] = _nothing
        # the writer thread's own state
        self._known: dict[str, dict[str, Any]] | None = None  # name -> status; None: relist
        self._relist = True
        self._grace_until = 0.0
        self._resync_at = 0.0
        self._retry_at: float | None = None

    @property
    def leading(self) -> bool:
        return self._leading.is_set()

    def start(self) -> None:
        self._stop.clear()
        self._unsubscribe = self._hub.on_members(self._wakeup.set)
        self._thread = threading.Thread(target=self._run, name="multicastgroups", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._unsubscribe()
        self._stop.set()
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def set_leading(self, leading: bool) -> None:
        """Start (from a relist) or stop writing. Called by the leader elector."""
        if leading:
            self._grace_until = time.monotonic() + self.delete_grace
            self._relist = True
            self._leading.set()
        else:
            self._leading.clear()
        self._wakeup.set()

    def resync(self) -> None:
        """Relist and converge now."""
        self._relist = True
        self._wakeup.set()

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wakeup.wait(self._sleep())
            if self._stop.is_set():
                break
            if not self.leading:
                self._wakeup.clear()
                self._known = None
                continue
            if self._wakeup.is_set():
                settle(self._wakeup, self._stop, self.debounce, self.max_delay)
            now = time.monotonic()
            if self._retry_at is not None and now < self._retry_at:
                continue  # woken early by a change: the retry comes at its time
            if now >= self._resync_at:
                self._relist = True
            try:
                self._converge()
                self._retry_at = None
                self._backoff.reset()
            except NotLeading:
                self._known = None
            except Exception as exc:  # noqa: BLE001 - the API failed: relist and retry
                self.stats.errors += 1
                delay = self._backoff.next()
                log.warning("multicastgroups: a pass failed (%s); retrying in %.1fs",
                            _describe(exc), delay)
                self._relist = True
                self._retry_at = time.monotonic() + delay

    def _sleep(self) -> float | None:
        """How long to wait for a change before the next due pass (None: until one)."""
        if not self.leading:
            return None
        due = [self._resync_at, self._retry_at]
        if self._known is not None and self._grace_until > time.monotonic():
            due.append(self._grace_until)
        return max(0.0, min(d for d in due if d is not None) - time.monotonic())

    def _converge(self) -> None:
        if self._relist or self._known is None:
            self._relist = False
            self._known = self._list()
            self._resync_at = time.monotonic() + self.resync_period
        known = self._known
        self.stats.passes += 1
        _, memberships = self._hub.memberships()
        desired = group_statuses(memberships)
        for name in sorted(desired):
            if name not in known:
                self._create(name)
                known[name] = {}
            if known[name] != desired[name]:
                # a merge patch: keys the status should not have (a hand edit) go as nulls
                patch = dict.fromkeys(set(known[name]) - set(desired[name])) | desired[name]
                self._patch_status(name, patch)
                known[name] = desired[name]
        if time.monotonic() < self._grace_until:
            return  # deletions wait for the agents to have reported to a new leader
        for name in sorted(set(known) - set(desired)):
            self._delete(name)
            del known[name]

    # -- the API -------------------------------------------------------------------------------

    def _check_leading(self) -> None:
        if not self.leading or self._stop.is_set():
            raise NotLeading()

    def _list(self) -> dict[str, dict[str, Any]]:
        self._check_leading()
        body = call_json(self._custom.list_cluster_custom_object, GROUP, VERSION, PLURAL,
                         timeout=REQUEST_TIMEOUT_S)
        self.stats.lists += 1
        return {item["metadata"]["name"]: item.get("status") or {}
                for item in body.get("items") or []}

    def _create(self, name: str) -> None:
        self._check_leading()
        body = {"apiVersion": API_VERSION, "kind": KIND,
                "metadata": {"name": name, "labels": dict(MANAGED_BY)}}
        try:
            call_json(self._custom.create_cluster_custom_object, GROUP, VERSION, PLURAL, body,
                      timeout=REQUEST_TIMEOUT_S)
        except ApiException as exc:
            if exc.status != 409:  # AlreadyExists: made since the list; its status is patched
                raise
        self.stats.creates += 1
        log.info("multicastgroups: created %s", name)

    def _patch_status(self, name: str, status: dict[str, Any]) -> None:
        self._check_leading()
        call_json(self._custom.patch_cluster_custom_object_status, GROUP, VERSION, PLURAL, name,
                  {"status": status}, timeout=REQUEST_TIMEOUT_S)
        self.stats.updates += 1

    def _delete(self, name: str) -> None:
        self._check_leading()
        try:
            call_json(self._custom.delete_cluster_custom_object, GROUP, VERSION, PLURAL, name,
                      timeout=REQUEST_TIMEOUT_S)
        except ApiException as exc:
            if exc.status != 404:
                raise
        self.stats.deletes += 1
        log.info("multicastgroups: deleted %s (no member left)", name)


def _nothing() -> None:
    pass


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {exc}"
