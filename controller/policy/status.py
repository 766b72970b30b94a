"""The policy status writer (leader only): every ``MulticastPolicy`` and
``ClusterMulticastPolicy`` gets ``status.conditions`` (``Valid``, with ``observedGeneration``)
and ``status.ruleStats`` (``[{name, packets, bytes}]``, the agents' counters summed over nodes),
written through the status subresource when they differ from what the object has.

Owns the convergence of those statuses: a pass runs when a policy or the agents' counters
change, debounced (``debounce`` of quiet, ``max_delay`` at most: counters that keep moving are
written every ``max_delay``, well within the 10 s the issue allows), and on becoming leader.
``lastTransitionTime`` moves only when the condition's status does. A failed write is retried
with backoff at the next pass. What was written is remembered (by object uid), so a status is
written once however slowly the watch echoes it back.

One thread; listeners only wake it. Imports the official ``kubernetes`` client,
``controller.watch`` (``call_json``, ``Backoff``), ``controller.policy``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from controller.policy.sync import PolicySync
from controller.policy.validate import GROUP, PLURALS, VERSION, PolicyRef
from controller.policy.views import PolicyViews
from controller.watch import Backoff, call_json, meta, settle

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 10.0


@dataclass
class StatusStats:
    passes: int = 0
    writes: int = 0
    errors: int = 0


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def with_transition_time(desired: dict[str, Any], current: dict[str, Any] | None
                         ) -> dict[str, Any]:
    """``desired`` with each condition's ``lastTransitionTime``: the current one if its status
    did not change, else now."""
    before = {c.get("type"): c for c in (current or {}).get("conditions") or []
              if isinstance(c, dict)}
    conditions = []
    for c in desired["conditions"]:
        old = before.get(c["type"])
        same = old is not None and old.get("status") == c["status"] and old.get(
            "lastTransitionTime")
        conditions.append({**c, "lastTransitionTime": old["lastTransitionTime"] if same and old
                           else _now()})
    return {**desired, "conditions": conditions}


class StatusWriter:
    def __init__(self, sync: PolicySync, views: PolicyViews, api: client.ApiClient, *,
                 debounce: float = 0.3, max_delay: float = 2.0,
                 backoff: Backoff | None = None) -> None:
        self._sync, self._views = sync, views
        self._custom = client.CustomObjectsApi(api)
        self.debounce, self.max_delay = debounce, max_delay
        self._backoff = backoff or Backoff(0.5, 5.0)
        self.stats = StatusStats()
        self._leading = threading.Event()
        self._wakeup = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._unsubscribe: list[Any] = []
        self._written: dict[tuple[PolicyRef, str], dict[str, Any]] = {}  # (ref, uid) -> status

    def start(self) -> None:
        self._stop.clear()
        self._unsubscribe = [self._sync.on_policies(self._wakeup.set),
                             self._views.on_stats(self._wakeup.set)]
        self._thread = threading.Thread(target=self._run, name="policystatus", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        for cancel in self._unsubscribe:
            cancel()
        self._stop.set()
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def set_leading(self, leading: bool) -> None:
        if leading:
            self._written.clear()  # another leader may have written meanwhile
            self._leading.set()
        else:
            self._leading.clear()
        self._wakeup.set()

    def _run(self) -> None:
        retry: float | None = None
        while not self._stop.is_set():
            self._wakeup.wait(None if retry is None else max(0.0, retry - time.monotonic()))
            if self._stop.is_set():
                return
            if not self._leading.is_set():
                self._wakeup.clear()
                continue
            settle(self._wakeup, self._stop, self.debounce, self.max_delay)
            try:
                self._pass()
                retry = None
                self._backoff.reset()
            except Exception as exc:  # noqa: BLE001 - the API failed: retry the pass
                self.stats.errors += 1
                delay = self._backoff.next()
                log.warning("policy status: a pass failed (%s); retrying in %.1fs", exc, delay)
                retry = time.monotonic() + delay

    def _pass(self) -> None:
        self.stats.passes += 1
        statuses = self._sync.statuses()
        live = set()
        for ref, (obj, desired) in sorted(statuses.items()):
            if not self._leading.is_set():
                return
            uid = str(meta(obj).get("uid") or "")
            live.add((ref, uid))
            current = self._written.get((ref, uid), obj.get("status"))
            status = with_transition_time(desired, current)
            if _same(status, current):
                self._written[(ref, uid)] = status
                continue
            self._patch(ref, status)
            self._written[(ref, uid)] = status
        for gone in set(self._written) - live:
            del self._written[gone]

    def _patch(self, ref: PolicyRef, status: dict[str, Any]) -> None:
        body = {"status": status}
        try:
            if ref.namespace:
                call_json(self._custom.patch_namespaced_custom_object_status, GROUP, VERSION,
                          ref.namespace, PLURALS[ref.scope], ref.name, body,
                          timeout=REQUEST_TIMEOUT_S)
            else:
                call_json(self._custom.patch_cluster_custom_object_status, GROUP, VERSION,
                          PLURALS[ref.scope], ref.name, body, timeout=REQUEST_TIMEOUT_S)
        except ApiException as exc:
            if exc.status != 404:  # deleted meanwhile: its DELETED event follows
                raise
        self.stats.writes += 1


def _same(status: dict[str, Any], current: dict[str, Any] | None) -> bool:
    if not isinstance(current, dict):
        return False
    return all(current.get(k) == v for k, v in status.items())
