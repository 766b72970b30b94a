"""controller.leader against the lab API server: two electors on one Lease (one leads; the
leader's stop releases the Lease and the other takes over at once; a leader that vanishes
without releasing is replaced once the lease expires), a leader that cannot renew (its API
server is gone) gives up leadership within its renew deadline, a leader that finds another
holder in the Lease stops at once, and a Lease whose namespace appears late is still won.
Timings are scaled down (lease 2 s, renew deadline 1.5 s, retry 0.2 s) to keep this quick.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client

from controller.leader import LeaderElector, micro_time

pytestmark = pytest.mark.timeout(60)

LEASE, RENEW, RETRY = 2.0, 1.5, 0.2
Wait = Callable[..., Any]


class Elector:
    """A LeaderElector and the callbacks it made."""

    def __init__(self, kube: Any, identity: str, lease: str, namespace: str) -> None:
        self.calls: list[str] = []
        self.lock = threading.Lock()
        self.elector = LeaderElector(
            kube.client(), name=lease, namespace=namespace, identity=identity,
            lease_duration=LEASE, renew_deadline=RENEW, retry_period=RETRY,
            on_started_leading=lambda: self._call("started"),
            on_stopped_leading=lambda: self._call("stopped"))

    def _call(self, what: str) -> None:
        with self.lock:
            self.calls.append(what)

    @property
    def leading(self) -> bool:
        return self.elector.leading


@pytest.fixture
def electors(kube: Any) -> Iterator[Callable[..., Elector]]:
    made: list[Elector] = []

    def make(identity: str, lease: str, namespace: str = "kube-mcast",
             on: Any = None) -> Elector:
        e = Elector(on or kube, identity, lease, namespace)
        made.append(e)
        e.elector.start()
        return e

    yield make
    for e in made:
        e.elector.stop(release=False)


@pytest.fixture(scope="module")
def lease_ns(kube: Any) -> str:
    return kube.namespace("kube-mcast")


def holder(kube: Any, lease: str, namespace: str = "kube-mcast") -> Any:
    return client.CoordinationV1Api(kube.client()).read_namespaced_lease(lease, namespace).spec


def test_one_leads_and_the_other_takes_over_when_it_stops(
        kube: Any, lease_ns: str, electors: Callable[..., Elector], wait: Wait) -> None:
    a = electors("replica-a", "two")
    wait(lambda: a.leading)
    b = electors("replica-b", "two")
    time.sleep(LEASE)  # a renews all along: b never leads
    assert a.leading and not b.leading and b.calls == []
    spec = holder(kube, "two")
    assert spec.holder_identity == "replica-a" and spec.lease_duration_seconds == 2
    assert spec.lease_transitions == 0
    started = time.monotonic()
    a.elector.stop()  # releases the Lease
    assert a.calls == ["started", "stopped"] and not a.leading
    assert holder(kube, "two").holder_identity is None
    wait(lambda: b.leading, timeout=LEASE)
    assert time.monotonic() - started < LEASE / 2  # at b's next retry, not after expiry
    spec = holder(kube, "two")
    assert spec.holder_identity == "replica-b" and spec.lease_transitions == 0
    assert b.calls == ["started"]


def test_a_vanished_leader_is_replaced_once_its_lease_expires(
        kube: Any, lease_ns: str, electors: Callable[..., Elector], wait: Wait) -> None:
    a = electors("crash-a", "crash")
    wait(lambda: a.leading)
    b = electors("crash-b", "crash")
    time.sleep(RETRY * 2)
    a.elector.stop(release=False)  # as if killed: the Lease still names a
    gone = time.monotonic()
    wait(lambda: b.leading, timeout=LEASE + 1)
    took = time.monotonic() - gone
    assert LEASE - 2 * RETRY <= took <= LEASE + 3 * RETRY, took
    spec = holder(kube, "crash")
    assert spec.holder_identity == "crash-b" and spec.lease_transitions == 1


def test_a_leader_that_cannot_renew_gives_up(kube_factory: Callable[[], Any],
                                             electors: Callable[..., Elector],
                                             wait: Wait) -> None:
    own = kube_factory()
    own.namespace("kube-mcast")
    a = electors("lonely", "renew", on=own)
    wait(lambda: a.leading)
    own.server.stop()  # every renewal fails from now on
    stopped = time.monotonic()
    wait(lambda: not a.leading, timeout=RENEW + 1)
    assert time.monotonic() - stopped <= RENEW + 2 * RETRY
    assert a.calls == ["started", "stopped"]


def test_another_holder_in_the_lease_stops_the_leader(
        kube: Any, lease_ns: str, electors: Callable[..., Elector], wait: Wait) -> None:
    a = electors("usurped", "usurp")
    wait(lambda: a.leading)
    leases = client.CoordinationV1Api(kube.client())
    lease = leases.read_namespaced_lease("usurp", "kube-mcast")
    lease.spec.holder_identity = "intruder"
    lease.spec.lease_duration_seconds = 30
    lease.spec.renew_time = micro_time()
    leases.replace_namespaced_lease("usurp", "kube-mcast", lease)
    wait(lambda: not a.leading, timeout=RETRY * 3)
    time.sleep(RETRY * 3)
    assert not a.leading and a.calls == ["started", "stopped"]
    assert holder(kube, "usurp").holder_identity == "intruder"


def test_the_lease_namespace_may_come_later(kube: Any, electors: Callable[..., Elector],
                                            wait: Wait) -> None:
    a = electors("early", "late", namespace="late-ns")
    time.sleep(RETRY * 2)
    assert not a.leading  # the create fails: no namespace
    kube.namespace("late-ns")
    wait(lambda: a.leading, timeout=RETRY * 4)
    assert holder(kube, "late", "late-ns").holder_identity == "early"
