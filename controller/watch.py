"""Watching the Kubernetes API: list, then watch from the list's resourceVersion, into an
indexed local store, with handlers told of every add, update and delete.

Owns ``Store`` (objects as the API's JSON dicts, by key ``namespace/name`` or ``name``, and
indexed: by namespace, by node for pods' ``spec.nodeName``, by label ``key=value``, plus any
indexer given) and ``Watcher`` (one resource, one thread). The watcher's guarantees:

- the first list is delivered as ADDED events, then ``on_synced``;
- a watch starts from the last resourceVersion seen and is renewed (``timeoutSeconds``) from it;
- a dropped connection or a failed request is retried with capped exponential backoff and
  resumes from the last resourceVersion seen: nothing lost, nothing replayed;
- 410 Gone (the version was compacted away) → relist, and the differences between the store
  and the new list are delivered as events (an object that was deleted and recreated meanwhile
  as a DELETED then an ADDED), so handlers see every net change once;
- ``stop()`` ends it promptly: the open watch's socket is shut down from the caller's thread.

Handlers run on the watcher's thread, after the store changed; an exception in one is logged
and does not stop the watch. Objects are stored without ``metadata.managedFields`` (large, and
of no use here) and never copied: handlers must not modify them.
Also ``call_json``: an API call of the official client whose response is parsed as JSON
(plain dicts, as the store keeps them), used by the leader elector and the group writer.
May import: the official ``kubernetes`` client, urllib3 and the standard library.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Indexer = Callable[[Obj], Iterable[str]]
ListFn = Callable[..., Any]  # e.g. CoreV1Api(api).list_node, or a functools.partial of one

CONNECT_TIMEOUT_S = 10.0
LIST_TIMEOUT_S = 60.0
GONE = 410


def call_json(fn: ListFn, *args: Any, timeout: float | tuple[float, float] = LIST_TIMEOUT_S,
              **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` with the response parsed as JSON (no model classes)."""
    response = fn(*args, _preload_content=False, _request_timeout=timeout, **kwargs)
    try:
        return json.loads(response.data or b"null")
    finally:
        response.release_conn()


def meta(obj: Obj) -> dict[str, Any]:
    m = obj.get("metadata")
    return m if isinstance(m, dict) else {}


def object_key(obj: Obj) -> str:
    """``namespace/name``, or ``name`` for a cluster-scoped object."""
    m = meta(obj)
    return f"{m['namespace']}/{m['name']}" if m.get("namespace") else str(m.get("name", ""))


def resource_version(obj: Obj) -> str:
    return str(meta(obj).get("resourceVersion") or "")


def _by_namespace(obj: Obj) -> Iterable[str]:
    ns = meta(obj).get("namespace")
    return (ns,) if ns else ()


def _by_node(obj: Obj) -> Iterable[str]:
    spec = obj.get("spec")
    node = spec.get("nodeName") if isinstance(spec, dict) else None
    return (node,) if node else ()


def _by_label(obj: Obj) -> Iterable[str]:
    labels = meta(obj).get("labels") or {}
    return (f"{k}={v}" for k, v in labels.items())


DEFAULT_INDEXERS: dict[str, Indexer] = {
    "namespace": _by_namespace, "node": _by_node, "label": _by_label}


class Store:
    """The watched objects by key, indexed; thread-safe (written by one watcher only)."""

    def __init__(self, indexers: Mapping[str, Indexer] | None = None) -> None:
        self._lock = threading.Lock()
        self._objects: dict[str, Obj] = {}
        self._indexers = dict(DEFAULT_INDEXERS, **(indexers or {}))
        self._indexes: dict[str, dict[str, set[str]]] = {n: {} for n in self._indexers}

    def get(self, key: str) -> Obj | None:
        with self._lock:
            return self._objects.get(key)

    def values(self) -> list[Obj]:
        with self._lock:
            return [self._objects[k] for k in sorted(self._objects)]

    def keys(self) -> list[str]:
        with self._lock:
            return sorted(self._objects)

    def __len__(self) -> int:
        with self._lock:
            return len(self._objects)

    def by_index(self, index: str, value: str) -> list[Obj]:
        with self._lock:
            return [self._objects[k] for k in sorted(self._indexes[index].get(value, ()))]

    def by_namespace(self, namespace: str) -> list[Obj]:
        return self.by_index("namespace", namespace)

    def by_node(self, node: str) -> list[Obj]:
        return self.by_index("node", node)

    def by_labels(self, selector: Mapping[str, str], namespace: str | None = None) -> list[Obj]:
        """Objects whose labels include every ``key: value`` of ``selector`` (all of them for
        an empty one), in ``namespace`` if given."""
        with self._lock:
            keys = set(self._objects) if namespace is None else set(
                self._indexes["namespace"].get(namespace, ()))
            for k, v in selector.items():
                keys &= self._indexes["label"].get(f"{k}={v}", set())
            return [self._objects[k] for k in sorted(keys)]

    # -- writes (the watcher's) -----------------------------------------------------------------

    def put(self, obj: Obj) -> Obj | None:
        """Store ``obj``; returns the object it replaced."""
        key = object_key(obj)
        with self._lock:
            old = self._objects.get(key)
            if old is not None:
                self._unindex(key, old)
            self._objects[key] = obj
            self._index(key, obj)
            return old

    def remove(self, key: str) -> Obj | None:
        with self._lock:
            old = self._objects.pop(key, None)
            if old is not None:
                self._unindex(key, old)
            return old

    def replace(self, objs: Iterable[Obj]) -> list[tuple[str, Obj | None, Obj]]:
        """Make the store hold exactly ``objs``; returns what changed as events
        ``(type, old, new)`` (for DELETED, ``new`` is the last state known)."""
        fresh = {object_key(o): o for o in objs}
        changes: list[tuple[str, Obj | None, Obj]] = []
        for key in self.keys():
            old = self.get(key)
            assert old is not None
            new = fresh.get(key)
            if new is None or meta(new).get("uid") != meta(old).get("uid"):
                self.remove(key)
                changes.append(("DELETED", old, old))
        for key, new in sorted(fresh.items()):
            old = self.get(key)
            if old is None:
                self.put(new)
                changes.append(("ADDED", None, new))
            elif resource_version(old) != resource_version(new):
                self.put(new)
                changes.append(("MODIFIED", old, new))
        return changes

    def _index(self, key: str, obj: Obj) -> None:
        for name, indexer in self._indexers.items():
            for value in indexer(obj):
                self._indexes[name].setdefault(value, set()).add(key)

    def _unindex(self, key: str, obj: Obj) -> None:
        for name, indexer in self._indexers.items():
            index = self._indexes[name]
            for value in indexer(obj):
                keys = index.get(value)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del index[value]


@dataclass
class Handlers:
    """What to call on changes; any may be None."""

    on_add: Callable[[Obj], None] | None = None
    on_update: Callable[[Obj, Obj], None] | None = None  # (old, new)
    on_delete: Callable[[Obj], None] | None = None  # the last state known
    on_synced: Callable[[], None] | None = None  # after each (re)list was delivered


class Expired(Exception):
    """The watch's resourceVersion is too old (410 Gone): relist."""


class WatchError(Exception):
    """The server ended a watch with an ERROR event other than 410."""


@dataclass
class Backoff:
    """Capped exponential backoff with jitter (from ``initial`` up to ``cap`` seconds)."""

    initial: float = 0.2
    cap: float = 10.0
    _next: float = field(default=0.0, init=False)

    def reset(self) -> None:
        self._next = 0.0

    def next(self) -> float:
        self._next = self.initial if self._next == 0 else min(self.cap, self._next * 2)
        return self._next * random.uniform(0.8, 1.0)


def settle(wakeup: threading.Event, stop: threading.Event, debounce: float,
           max_delay: float) -> None:
    """Wait for a burst of changes (each one sets ``wakeup``) to end: ``debounce`` seconds of
    quiet, ``max_delay`` after the call at most, or until ``stop`` is set. The writers call
    it before a pass, so a burst of events costs one pass."""
    first = time.monotonic()
    while True:
        wakeup.clear()
        left = first + max_delay - time.monotonic()
        if left <= 0 or not wakeup.wait(min(debounce, left)) or stop.is_set():
            return


@dataclass
class WatchStats:
    lists: int = 0  # the first list included
    relists: int = 0  # after a 410
    renewals: int = 0  # a watch that ended at its timeoutSeconds, renewed
    resumes: int = 0  # after a dropped connection or a failed request
    events: int = 0


class Watcher:
    """List-and-watch of one resource into a ``Store``, in a thread of its own."""

    def __init__(self, name: str, list_fn: ListFn, *, store: Store | None = None,
                 timeout_seconds: int = 300, backoff: Backoff | None = None) -> None:
        self.name = name
        self.store = store or Store()
        self.stats = WatchStats()
        self._list_fn = list_fn
        self._timeout = timeout_seconds
        self._backoff = backoff or Backoff()
        self._handlers: list[Handlers] = []
        self._rv = ""
        self._listing = False
        self._synced = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._response: Any = None  # the open watch, to shut down from stop()
        self._thread: threading.Thread | None = None

    @property
    def resource_version(self) -> str:
        return self._rv

    @property
    def listing(self) -> bool:
        """True while a (re)list's events are being delivered (``on_synced`` comes next)."""
        return self._listing

    def add_handlers(self, handlers: Handlers) -> None:
        """Register handlers (before ``start``: later ones miss what was delivered)."""
        self._handlers.append(handlers)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"watch-{self.name}", daemon=True)
        self._thread.start()

    def wait_synced(self, timeout: float | None = None) -> bool:
        return self._synced.wait(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._lock:
            response = self._response
        if response is not None:
            with contextlib.suppress(Exception):  # already closed
                response.shutdown()  # unblocks the watch thread's read
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("watch %s: did not stop within %.1fs", self.name, timeout)

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        need_list = not self._rv
        while not self._stop.is_set():
            listed = need_list
            try:
                if need_list:
                    self._list()
                    need_list = False
                    self._backoff.reset()
                started, events = time.monotonic(), self.stats.events
                self._watch()
                if self.stats.events == events and time.monotonic() - started < self._timeout / 2:
                    raise WatchError("the watch ended early, with no event")
                self.stats.renewals += 1
            except Expired:
                if self._stop.is_set():
                    break
                log.info("watch %s: resourceVersion %s expired, relisting", self.name, self._rv)
                self.stats.relists += 1
                need_list = True
                if listed:  # expired right after a list: do not spin
                    self._stop.wait(self._backoff.next())
            except Exception as exc:  # noqa: BLE001 - any failure: retry with backoff
                if self._stop.is_set():
                    break
                delay = self._backoff.next()
                what = "list" if need_list else f"watch from {self._rv}"
                log.warning("watch %s: %s failed (%s); retrying in %.1fs", self.name, what,
                            _describe(exc), delay)
                if not need_list:
                    self.stats.resumes += 1
                self._stop.wait(delay)

    def _list(self) -> None:
        body = call_json(self._list_fn, timeout=(CONNECT_TIMEOUT_S, LIST_TIMEOUT_S))
        if not isinstance(body, dict) or not isinstance(body.get("items"), list):
            raise WatchError(f"the list is not a list: {str(body)[:200]}")
        changes = self.store.replace(_trim(item) for item in body["items"])
        self._rv = str(meta(body).get("resourceVersion") or "")
        self.stats.lists += 1
        self._listing = True
        try:
            for kind, old, new in changes:
                self._deliver(kind, old, new)
        finally:
            self._listing = False
        self._synced.set()
        for h in self._handlers:
            if h.on_synced is not None:
                self._call(h.on_synced)

    def _watch(self) -> None:
        """One watch from ``self._rv``, until the server ends it (its timeout) or stop()."""
        try:
            response = self._list_fn(
                watch=True, resource_version=self._rv, timeout_seconds=self._timeout,
                allow_watch_bookmarks=True, _preload_content=False,
                _request_timeout=(CONNECT_TIMEOUT_S, self._timeout + 30))
        except ApiException as exc:
            if exc.status == GONE:
                raise Expired() from exc
            raise
        with self._lock:
            self._response = response
        try:
            if self._stop.is_set():
                return
            for line in _lines(response):
                self._event(json.loads(line))
                self._backoff.reset()  # this connection worked
        finally:
            with self._lock:
                self._response = None
            response.release_conn()

    def _event(self, event: Any) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == GONE:
                raise Expired()
            raise WatchError(f"{obj.get('code')} {obj.get('reason')}: {obj.get('message')}")
        rv = resource_version(_trim(obj))
        if kind == "BOOKMARK":
            self._rv = rv or self._rv
            return
        self.stats.events += 1
        if kind in ("ADDED", "MODIFIED"):
            old = self.store.put(obj)
            self._deliver("ADDED" if old is None else "MODIFIED", old, obj)
        elif kind == "DELETED":
            gone = self.store.remove(object_key(obj))
            if gone is not None:
                self._deliver("DELETED", gone, obj)
        else:
            log.warning("watch %s: unknown event type %r", self.name, kind)
        self._rv = rv or self._rv

    def _deliver(self, kind: str, old: Obj | None, new: Obj) -> None:
        for h in self._handlers:
            if kind == "ADDED" and h.on_add is not None:
                self._call(h.on_add, new)
            elif kind == "MODIFIED" and h.on_update is not None and old is not None:
                self._call(h.on_update, old, new)
            elif kind == "DELETED" and h.on_delete is not None:
                self._call(h.on_delete, new)

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("watch %s: a handler failed", self.name)


def _trim(obj: Obj) -> Obj:
    meta(obj).pop("managedFields", None)
    return obj


def _lines(response: Any) -> Iterator[bytes]:
    """The non-empty lines of a streamed response, as they arrive."""
    buffer = b""
    for chunk in response.stream(amt=None, decode_content=False):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        yield from (line for line in lines if line.strip())
    if buffer.strip():
        raise WatchError("the watch stream ended in the middle of an event")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {exc}"
