"""controller.watch: the store's indexes and diffs (pure), and the watcher over HTTP against the
lab API server: the initial list, add/update/delete, 410 Gone → relist (the differences
delivered, nothing replayed), a dropped connection resumed without loss or replay, watches
renewed at their timeoutSeconds, a prompt stop. Each test watches pods in a namespace of its
own; the lab's hooks cut connections (/kubeapi/drop-watches) and compact the log
(/kubeapi/compact) as a real API server's network and etcd would.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client

from controller.watch import Backoff, Handlers, Obj, Store, Watcher, object_key

pytestmark = pytest.mark.timeout(60)

Wait = Callable[..., Any]


def pod(name: str, ns: str, node: str = "node1", **labels: str) -> Obj:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}}


def stored(name: str, ns: str | None = None, *, rv: str = "1", uid: str = "u",
           node: str | None = None, **labels: str) -> Obj:
    meta: dict[str, Any] = {"name": name, "resourceVersion": rv, "uid": uid, "labels": labels}
    if ns:
        meta["namespace"] = ns
    return {"metadata": meta, "spec": {"nodeName": node} if node else {}}


class Recorder:
    """Every event a watcher delivers, as (type, name)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.synced = 0
        self.lock = threading.Lock()

    def handlers(self) -> Handlers:
        return Handlers(on_add=lambda o: self._add("ADDED", o),
                        on_update=lambda _old, new: self._add("MODIFIED", new),
                        on_delete=lambda o: self._add("DELETED", o),
                        on_synced=self._sync)

    def _add(self, kind: str, obj: Obj) -> None:
        with self.lock:
            self.events.append((kind, obj["metadata"]["name"]))

    def _sync(self) -> None:
        with self.lock:
            self.synced += 1

    def seen(self) -> list[tuple[str, str]]:
        with self.lock:
            return list(self.events)


@pytest.fixture
def watchers() -> Iterator[list[Watcher]]:
    started: list[Watcher] = []
    yield started
    for w in started:
        w.stop()


def start_watcher(kube: Any, ns: str, watchers: list[Watcher],
                  **kwargs: Any) -> tuple[Watcher, Recorder]:
    core = client.CoreV1Api(kube.client())
    w = Watcher(f"pods-{ns}", functools.partial(core.list_namespaced_pod, ns), **kwargs)
    rec = Recorder()
    w.add_handlers(rec.handlers())
    w.start()
    watchers.append(w)
    assert w.wait_synced(10)
    return w, rec


# -- the store (pure) -------------------------------------------------------------------------


def test_store_indexes_by_namespace_node_and_labels() -> None:
    s = Store()
    s.put(stored("a", "prod", node="n1", app="mc", role="reader"))
    s.put(stored("b", "prod", node="n2", app="mc"))
    s.put(stored("a", "dev", node="n1", app="web"))
    s.put(stored("node1"))
    assert object_key(stored("a", "prod")) == "prod/a" and object_key(stored("n")) == "n"
    assert s.keys() == ["dev/a", "node1", "prod/a", "prod/b"] and len(s) == 4
    assert [object_key(o) for o in s.by_namespace("prod")] == ["prod/a", "prod/b"]
    assert [object_key(o) for o in s.by_node("n1")] == ["dev/a", "prod/a"]
    assert [object_key(o) for o in s.by_labels({"app": "mc"})] == ["prod/a", "prod/b"]
    assert [object_key(o) for o in s.by_labels({"app": "mc", "role": "reader"})] == ["prod/a"]
    assert [object_key(o) for o in s.by_labels({}, namespace="dev")] == ["dev/a"]
    assert s.by_labels({"app": "mc"}, namespace="dev") == []
    s.put(stored("a", "prod", rv="2", node="n2", app="web"))  # moved and relabelled
    assert [object_key(o) for o in s.by_node("n1")] == ["dev/a"]
    assert [object_key(o) for o in s.by_labels({"app": "web"})] == ["dev/a", "prod/a"]
    assert s.remove("prod/a") is not None and s.remove("prod/a") is None
    assert s.by_labels({"app": "web"}, namespace="prod") == [] and s.get("prod/a") is None
    assert s.by_index("node", "n2") == [s.get("prod/b")]


def test_store_replace_returns_the_differences() -> None:
    s = Store({"team": lambda o: [o["metadata"].get("labels", {}).get("team", "none")]})
    for obj in (stored("keep", "ns"), stored("gone", "ns"), stored("edit", "ns"),
                stored("again", "ns", uid="old")):
        s.put(obj)
    changes = s.replace([stored("keep", "ns"), stored("edit", "ns", rv="2", team="x"),
                         stored("again", "ns", uid="new", rv="3"), stored("new", "ns")])
    assert [(kind, new["metadata"]["name"], new["metadata"].get("uid"))
            for kind, _, new in changes] == [
        ("DELETED", "again", "old"), ("DELETED", "gone", "u"), ("ADDED", "again", "new"),
        ("MODIFIED", "edit", "u"), ("ADDED", "new", "u")]
    assert s.keys() == ["ns/again", "ns/edit", "ns/keep", "ns/new"]
    assert [object_key(o) for o in s.by_index("team", "x")] == ["ns/edit"]
    assert s.replace([]) and len(s) == 0


def test_backoff_is_capped_exponential() -> None:
    b = Backoff(0.1, 1.0)
    delays = [b.next() for _ in range(6)]
    assert 0.08 <= delays[0] <= 0.1 and 0.16 <= delays[1] <= 0.2 and delays[-1] <= 1.0
    assert delays[-1] >= 0.8
    b.reset()
    assert b.next() <= 0.1


# -- against the lab API server -------------------------------------------------------------


def test_initial_list_then_add_update_delete(kube: Any, watchers: list[Watcher],
                                             wait: Wait) -> None:
    ns = kube.namespace("w-basic")
    core = kube.core()
    core.create_namespaced_pod(ns, pod("a", ns, "node1", app="mc"))
    core.create_namespaced_pod(ns, pod("b", ns, "node2", app="mc"))
    w, rec = start_watcher(kube, ns, watchers)
    assert rec.seen() == [("ADDED", "a"), ("ADDED", "b")] and rec.synced == 1
    assert [o["metadata"]["name"] for o in w.store.by_node("node2")] == ["b"]
    core.create_namespaced_pod(ns, pod("c", ns, "node1"))
    core.patch_namespaced_pod("a", ns, {"metadata": {"labels": {"app": "web"}}})
    core.delete_namespaced_pod("b", ns)
    wait(lambda: len(rec.seen()) == 5)
    assert rec.seen()[2:] == [("ADDED", "c"), ("MODIFIED", "a"), ("DELETED", "b")]
    assert w.store.keys() == [f"{ns}/a", f"{ns}/c"]
    assert [o["metadata"]["name"] for o in w.store.by_labels({"app": "web"})] == ["a"]
    assert w.store.by_labels({"app": "mc"}) == []
    assert [o["metadata"]["name"] for o in w.store.by_namespace(ns)] == ["a", "c"]
    assert int(w.resource_version) > int(w.store.get(f"{ns}/c")["metadata"]["resourceVersion"])
    assert (w.stats.lists, w.stats.relists, w.stats.resumes) == (1, 0, 0)
    time.sleep(0.3)  # nothing more arrives
    assert len(rec.seen()) == 5


def test_410_gone_relists_and_delivers_the_differences(kube: Any, watchers: list[Watcher],
                                                       wait: Wait) -> None:
    ns = kube.namespace("w-gone")
    core = kube.core()
    for name in ("a", "b", "c", "same"):
        core.create_namespaced_pod(ns, pod(name, ns))
    # a slow first retry: the changes below happen while the watcher is disconnected
    w, rec = start_watcher(kube, ns, watchers, backoff=Backoff(0.6, 2.0))
    assert len(rec.seen()) == 4
    old_c_uid = w.store.get(f"{ns}/c")["metadata"]["uid"]
    kube.hook("/kubeapi/drop-watches")
    core.delete_namespaced_pod("a", ns)
    core.patch_namespaced_pod("b", ns, {"metadata": {"labels": {"x": "1"}}})
    core.delete_namespaced_pod("c", ns)
    core.create_namespaced_pod(ns, pod("c", ns, "node2"))  # the same name, a new object
    core.create_namespaced_pod(ns, pod("d", ns))
    kube.hook("/kubeapi/compact")  # the watcher's resourceVersion is gone: 410 on resume
    wait(lambda: w.stats.relists == 1, timeout=10)
    wait(lambda: len(rec.seen()) == 9)
    assert sorted(rec.seen()[4:]) == sorted([("DELETED", "a"), ("MODIFIED", "b"),
                                             ("DELETED", "c"), ("ADDED", "c"), ("ADDED", "d")])
    assert rec.seen()[4:].index(("DELETED", "c")) < rec.seen()[4:].index(("ADDED", "c"))
    assert w.store.get(f"{ns}/c")["metadata"]["uid"] != old_c_uid
    assert w.store.keys() == [f"{ns}/{n}" for n in ("b", "c", "d", "same")]
    assert rec.synced == 2 and w.stats.lists == 2
    core.create_namespaced_pod(ns, pod("e", ns))  # and the watch goes on from the relist
    wait(lambda: len(rec.seen()) == 10)
    assert rec.seen()[-1] == ("ADDED", "e")
    time.sleep(0.3)
    assert len(rec.seen()) == 10  # nothing replayed


def test_dropped_connection_resumes_without_loss_or_replay(kube: Any, watchers: list[Watcher],
                                                           wait: Wait) -> None:
    ns = kube.namespace("w-drop")
    core = kube.core()
    core.create_namespaced_pod(ns, pod("a", ns))
    w, rec = start_watcher(kube, ns, watchers, backoff=Backoff(0.5, 2.0))
    core.create_namespaced_pod(ns, pod("b", ns))
    wait(lambda: len(rec.seen()) == 2)
    kube.hook("/kubeapi/drop-watches")
    core.create_namespaced_pod(ns, pod("c", ns))  # while nobody watches
    core.delete_namespaced_pod("a", ns)
    wait(lambda: len(rec.seen()) == 4, timeout=10)
    kube.hook("/kubeapi/drop-watches")  # again, with nothing missed this time
    wait(lambda: w.stats.resumes == 2, timeout=10)
    core.patch_namespaced_pod("b", ns, {"metadata": {"labels": {"y": "2"}}})
    wait(lambda: len(rec.seen()) == 5, timeout=10)
    time.sleep(0.3)
    assert rec.seen() == [("ADDED", "a"), ("ADDED", "b"), ("ADDED", "c"), ("DELETED", "a"),
                          ("MODIFIED", "b")]
    assert (w.stats.lists, w.stats.relists, w.stats.resumes) == (1, 0, 2)


def test_watch_is_renewed_at_its_timeout(kube: Any, watchers: list[Watcher],
                                         wait: Wait) -> None:
    ns = kube.namespace("w-renew")
    w, rec = start_watcher(kube, ns, watchers, timeout_seconds=1)
    wait(lambda: w.stats.renewals >= 1, timeout=5)
    kube.core().create_namespaced_pod(ns, pod("late", ns))
    wait(lambda: rec.seen() == [("ADDED", "late")])
    assert (w.stats.lists, w.stats.relists, w.stats.resumes) == (1, 0, 0)


def test_stop_ends_an_idle_watch_promptly(kube: Any, wait: Wait) -> None:
    ns = kube.namespace("w-stop")
    w = Watcher("stop", functools.partial(client.CoreV1Api(kube.client()).list_namespaced_pod,
                                          ns), timeout_seconds=300)
    w.start()
    assert w.wait_synced(10)
    time.sleep(0.2)  # the watch is open and idle
    started = time.monotonic()
    w.stop()
    assert time.monotonic() - started < 1.0


def test_a_failing_handler_does_not_stop_the_watch(kube: Any, watchers: list[Watcher],
                                                   wait: Wait) -> None:
    ns = kube.namespace("w-handler")
    core = client.CoreV1Api(kube.client())
    w = Watcher("handler", functools.partial(core.list_namespaced_pod, ns))

    def boom(obj: Obj) -> None:
        raise RuntimeError("handler bug")

    w.add_handlers(Handlers(on_add=boom))
    rec = Recorder()
    w.add_handlers(rec.handlers())
    w.start()
    watchers.append(w)
    assert w.wait_synced(10)
    core.create_namespaced_pod(ns, pod("a", ns))
    core.create_namespaced_pod(ns, pod("b", ns))
    wait(lambda: rec.seen() == [("ADDED", "a"), ("ADDED", "b")])


def test_a_list_that_fails_is_retried_until_it_works(kube: Any, watchers: list[Watcher],
                                                    wait: Wait) -> None:
    """A resource not served yet (its CRD comes later): real 404s, retried with backoff."""
    api = kube.client()
    custom = client.CustomObjectsApi(api)
    w = Watcher("widgets", functools.partial(custom.list_cluster_custom_object, "example.com",
                                             "v1", "widgets"), backoff=Backoff(0.1, 0.3))
    rec = Recorder()
    w.add_handlers(rec.handlers())
    w.start()
    watchers.append(w)
    assert not w.wait_synced(0.5) and w.stats.lists == 0
    client.ApiextensionsV1Api(api).create_custom_resource_definition({
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Cluster",
                 "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
                 "versions": [{"name": "v1", "served": True, "storage": True, "schema": {
                     "openAPIV3Schema": {"type": "object",
                                         "x-kubernetes-preserve-unknown-fields": True}}}]}})
    custom.create_cluster_custom_object("example.com", "v1", "widgets", {
        "apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w1"}})
    assert w.wait_synced(5)
    wait(lambda: rec.seen() == [("ADDED", "w1")])
