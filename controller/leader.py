"""Leader election on a ``coordination.k8s.io/v1`` Lease, as client-go's leaderelection does it,
so that two controller replicas can run and only one writes.

Owns ``LeaderElector``: a thread that tries every ``retry_period`` to acquire the Lease (free:
no holder, or its holder let it expire: the record did not change for its
``leaseDurationSeconds``, timed on this replica's own monotonic clock so that clock skew
between replicas does not matter) and, once leading, to renew it. A leader that cannot renew
for ``renew_deadline`` (below the lease duration, so it gives up before anyone may take over)
or that finds another holder in the Lease stops leading and becomes a candidate again.
``stop()`` releases the Lease (clears ``holderIdentity``) so that another replica takes over at
its next retry rather than after the lease expires. Every write is a PUT with the
resourceVersion read (or a create), so two candidates never both win (409 Conflict).

Callbacks (``on_started_leading``, ``on_stopped_leading``) run on the elector's thread and must
return quickly. May import: the official ``kubernetes`` client, ``controller.watch``
(``call_json``) and the standard library.
"""

from __future__ import annotations

import enum
import logging
import math
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from controller.watch import call_json

log = logging.getLogger(__name__)

Callback = Callable[[], None]


def micro_time(at: datetime | None = None) -> str:
    """A Kubernetes MicroTime: ``2026-12-01T15:04:05.123456Z``."""
    return (at or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Attempt(enum.Enum):
    HELD = "held"  # we hold the lease (acquired or renewed)
    TAKEN = "taken"  # another holder's lease, not expired
    FAILED = "failed"  # the API failed or another candidate won a race (409)


class LeaderElector:
    def __init__(self, api: client.ApiClient, *, name: str, namespace: str, identity: str,
                 lease_duration: float = 15.0, renew_deadline: float = 10.0,
                 retry_period: float = 2.0, on_started_leading: Callback | None = None,
                 on_stopped_leading: Callback | None = None) -> None:
        if not retry_period < renew_deadline < lease_duration:
            raise ValueError("need retry_period < renew_deadline < lease_duration")
        self._leases = client.CoordinationV1Api(api)
        self.name, self.namespace, self.identity = name, namespace, identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        self._leading = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # what we last saw in the Lease, and when (our monotonic clock): expiry is judged on it
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._renewed_at = 0.0
        self.transitions = 0  # how many times this elector started leading

    @property
    def leading(self) -> bool:
        return self._leading.is_set()

    def wait_leading(self, timeout: float | None = None) -> bool:
        return self._leading.wait(timeout)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)
        self._thread.start()

    def stop(self, release: bool = True, timeout: float = 10.0) -> None:
        """Stop campaigning; if leading, stop leading and (``release``) free the Lease.
        ``release=False`` leaves the Lease as a crashed leader would."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.leading:
            if release:
                self._release()
            self._set_leading(False)

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            attempt = self._try_acquire_or_renew()
            now = time.monotonic()
            if attempt is Attempt.HELD:
                self._renewed_at = now
                if not self.leading:
                    log.info("leader election: %s leads (lease %s/%s)", self.identity,
                             self.namespace, self.name)
                    self._set_leading(True)
            elif self.leading and (attempt is Attempt.TAKEN
                                   or now - self._renewed_at >= self.renew_deadline):
                log.warning("leader election: %s lost the lease %s/%s (%s)", self.identity,
                            self.namespace, self.name,
                            "another holder" if attempt is Attempt.TAKEN else
                            f"not renewed for {self.renew_deadline:.1f}s")
                self._set_leading(False)
            self._stop.wait(self.retry_period)

    def _set_leading(self, leading: bool) -> None:
        if leading == self.leading:
            return
        callback = self._on_started if leading else self._on_stopped
        if leading:
            self._leading.set()
            self.transitions += 1
        else:
            self._leading.clear()
        if callback is not None:
            try:
                callback()
            except Exception:
                log.exception("leader election: the %s callback failed",
                              "started" if leading else "stopped")

    def _request_timeout(self) -> float:
        """Per request: a leader's attempt (two requests) must end by its renew deadline."""
        if not self.leading:
            return max(0.5, self.renew_deadline / 2)
        left = self._renewed_at + self.renew_deadline - time.monotonic()
        return max(0.1, left / 2)

    def _try_acquire_or_renew(self) -> Attempt:
        timeout = self._request_timeout()
        try:
            lease = call_json(self._leases.read_namespaced_lease, self.name, self.namespace,
                              timeout=timeout)
        except ApiException as exc:
            if exc.status != 404:
                log.warning("leader election: reading the lease failed: %s %s", exc.status,
                            exc.reason)
                return Attempt.FAILED
            return self._create(timeout)
        except Exception as exc:  # noqa: BLE001 - connection errors of every kind
            log.warning("leader election: reading the lease failed: %s", exc)
            return Attempt.FAILED
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"), spec.get("acquireTime"),
                  spec.get("leaseDurationSeconds"), spec.get("leaseTransitions"))
        now = time.monotonic()
        if record != self._observed:
            self._observed, self._observed_at = record, now
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
        if holder and holder != self.identity and now < self._observed_at + duration:
            return Attempt.TAKEN
        wall = micro_time()
        transitions = int(spec.get("leaseTransitions") or 0)
        lease["spec"] = dict(spec, holderIdentity=self.identity, renewTime=wall,
                             leaseDurationSeconds=self._duration_seconds(),
                             acquireTime=spec.get("acquireTime") if holder == self.identity
                             else wall,
                             leaseTransitions=transitions if holder == self.identity
                             else transitions + (1 if holder else 0))
        return self._write(self._leases.replace_namespaced_lease, timeout, self.name,
                           self.namespace, lease)

    def _create(self, timeout: float) -> Attempt:
        wall = micro_time()
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": {"holderIdentity": self.identity, "acquireTime": wall,
                         "renewTime": wall, "leaseDurationSeconds": self._duration_seconds(),
                         "leaseTransitions": 0}}
        return self._write(self._leases.create_namespaced_lease, timeout, self.namespace, body)

    def _write(self, fn: Callable[..., Any], timeout: float, *args: Any) -> Attempt:
        try:
            written = call_json(fn, *args, timeout=timeout)
        except ApiException as exc:
            if exc.status not in (409, 404):
                log.warning("leader election: writing the lease failed: %s %s", exc.status,
                            exc.reason)
            return Attempt.FAILED
        except Exception as exc:  # noqa: BLE001
            log.warning("leader election: writing the lease failed: %s", exc)
            return Attempt.FAILED
        spec = written.get("spec") or {}
        self._observed = (spec.get("holderIdentity") or "", spec.get("renewTime"),
                          spec.get("acquireTime"), spec.get("leaseDurationSeconds"),
                          spec.get("leaseTransitions"))
        self._observed_at = time.monotonic()
        return Attempt.HELD

    def _release(self) -> None:
        """Clear holderIdentity if we still hold the Lease (client-go's ReleaseOnCancel)."""
        try:
            lease = call_json(self._leases.read_namespaced_lease, self.name, self.namespace,
                              timeout=self.renew_deadline / 2)
            spec = lease.get("spec") or {}
            if spec.get("holderIdentity") != self.identity:
                return
            wall = micro_time()
            lease["spec"] = dict(spec, holderIdentity=None, leaseDurationSeconds=1,
                                 renewTime=wall, acquireTime=wall)
            call_json(self._leases.replace_namespaced_lease, self.name, self.namespace, lease,
                      timeout=self.renew_deadline / 2)
            log.info("leader election: %s released the lease %s/%s", self.identity,
                     self.namespace, self.name)
        except Exception as exc:  # noqa: BLE001 - it expires by itself
            log.warning("leader election: releasing the lease failed (it will expire): %s", exc)

    def _duration_seconds(self) -> int:
        return max(1, math.ceil(self.lease_duration))
