"""Desired switch state per (feature, key), reconciled against what is installed, one bundle a time.

This module owns the agent's record of what is on br-int (the "installed" cache) and the only
path by which flows and groups reach the switch: features ``set``/``remove`` their
``SwitchState`` under a key, ``flush`` diffs the union of all keys against the cache
(``pipeline.diff``) and applies the ops in one bundle. The cache changes only after the switch
committed the bundle, so a failed flush is retried whole by the next one.

Flushes are incremental: only keys changed since the last flush are diffed (their new states
against what they installed), so one IGMP join costs the same with 10 groups or 10,000. An
item two keys both want is owned by both: it is deleted only when neither wants it.

``startup`` runs on every (re)connection: it reads the switch back and reconciles against that
instead of the cache. Flows already carry the new round's cookies, so flows with an unchanged
(table, priority, match) are replaced in place (new cookie, counters kept), stale ones deleted,
groups with a known id modified and unknown ones deleted, all in one bundle: no traffic gap.
A final delete by cookie removes any older-round flow the dump could not describe.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Protocol

from agent import metrics
from agent.flowsync.switch import CookieDelete, SwitchOp
from pipeline.cookies import Feature, round_cookie_mask, round_of
from pipeline.diff import canonical, diff
from pipeline.groupsplit import DEFAULT_BUCKET_CAP
from pipeline.model import Flow, Group, Meter, SwitchState
from pipeline.switchmodel import index_by_id, index_flows
from pipeline.tables import Pipeline

log = logging.getLogger(__name__)

Key = tuple[Feature, str]
"""(owner, key): the feature that wants the state, and which of its objects (a pod, a group)."""


class Switch(Protocol):
    def apply(self, ops: Sequence[SwitchOp]) -> None: ...

    def dump(self) -> SwitchState: ...


class ConflictError(ValueError):
    """Two keys want different content under one flow key, group id or meter id."""


class Reconciler:
    """Thread-safe; every method may be called from any agent thread."""

    def __init__(self, switch: Switch, pipeline: Pipeline,
                 bucket_cap: int = DEFAULT_BUCKET_CAP) -> None:
        self._switch = switch
        self._pipeline = pipeline
        self._bucket_cap = bucket_cap
        self._lock = threading.RLock()
        self._wanted: dict[Key, SwitchState] = {}
        self._synced = False  # False: what is installed is unknown; the next flush reads it
        self._by_key: dict[Key, _Index] = {}  # what each key has installed
        self._owners: dict[tuple[str, object], set[Key]] = {}  # (kind, ident) -> keys
        self._dirty: set[Key] = set()
        self._round: int | None = None

    # -- desired state --------------------------------------------------------------------------

    def set(self, feature: Feature, key: str, state: SwitchState) -> None:
        """Replace what (feature, key) wants; takes effect at the next flush."""
        with self._lock:
            self._wanted[(feature, key)] = state
            self._dirty.add((feature, key))

    def remove(self, feature: Feature, key: str) -> None:
        with self._lock:
            if self._wanted.pop((feature, key), None) is not None:
                self._dirty.add((feature, key))

    def keys(self, feature: Feature | None = None) -> list[Key]:
        with self._lock:
            return sorted(k for k in self._wanted if feature is None or k[0] == feature)

    def desired(self) -> SwitchState:
        """Union of every key's state; raises ConflictError naming the two owners of a clash."""
        with self._lock:
            flows: dict[tuple, tuple[Key, Flow]] = {}
            groups: dict[int, tuple[Key, Group]] = {}
            meters: dict[int, tuple[Key, Meter]] = {}
            for owner, state in self._wanted.items():
                for f in state.flows:
                    _merge(flows, f.key, owner, f, "flow")
                for g in state.groups:
                    _merge(groups, g.group_id, owner, g, "group")
                for m in state.meters:
                    _merge(meters, m.meter_id, owner, m, "meter")
            return SwitchState(tuple(v for _, v in flows.values()),
                                tuple(v for _, v in groups.values()),
                                tuple(v for _, v in meters.values()))

    @property
    def installed(self) -> SwitchState | None:
        """What is on the switch as of the last successful flush (None: unknown)."""
        with self._lock:
            if not self._synced:
                return None
            return canonical(SwitchState(
                tuple(f for i in self._by_key.values() for f in i.flows.values()),
                tuple(g for i in self._by_key.values() for g in i.groups.values()),
                tuple(m for i in self._by_key.values() for m in i.meters.values())),
                self._pipeline)

    # -- reconciling ----------------------------------------------------------------------------

    def _diff(self, desired: SwitchState, actual: SwitchState) -> list[SwitchOp]:
        return list(diff(desired, actual, bucket_cap=self._bucket_cap, pipeline=self._pipeline))

    def flush(self) -> list[SwitchOp]:
        """Apply the difference between desired and installed in one bundle; returns the ops.

        On failure the switch rejected the whole bundle: the cache stays as it was and the
        error (an ``OpenFlowError`` naming the failed ops) propagates. If the cache is unknown
        (a startup failed), the switch is read back first, as in ``startup``.
        """
        with self._lock, _gc_paused():
            if not self._synced:
                return self._sync(self._switch.dump())
            if not self._dirty:
                return []
            dirty = sorted(self._dirty)
            new = {k: _Index(self._wanted.get(k, _EMPTY)) for k in dirty}
            want, have = self._dirty_union(new)
            ops = self._diff(want, have)
            if ops:
                with metrics.reconcile_round("incremental", len(ops)):
                    self._switch.apply(ops)
                count_ops(ops)
                log.debug("reconciled %d keys: %d ops", len(dirty), len(ops))
            for k, idx in new.items():
                self._index(k, idx if k in self._wanted else None)
            self._dirty.clear()
            return ops

    def _index(self, key: Key, idx: _Index | None) -> None:
        """Record what ``key`` has installed now (None: nothing) in the owner index."""
        old = self._by_key.pop(key, None)
        if old is not None:
            for kind in _KINDS:
                for ident in getattr(old, kind):
                    owners = self._owners[(kind, ident)]
                    owners.discard(key)
                    if not owners:
                        del self._owners[(kind, ident)]
        if idx is not None:
            self._by_key[key] = idx
            for kind in _KINDS:
                for ident in getattr(idx, kind):
                    self._owners.setdefault((kind, ident), set()).add(key)

    def _dirty_union(self, new: dict[Key, _Index]) -> tuple[SwitchState, SwitchState]:
        """(want, have) over the items the dirty keys touch, with other keys' claims on them.

        Raises ConflictError when two keys want one item differently.
        """
        want: dict[str, dict] = {"flows": {}, "groups": {}, "meters": {}}
        have: dict[str, dict] = {"flows": {}, "groups": {}, "meters": {}}
        owners: dict[str, dict] = {"flows": {}, "groups": {}, "meters": {}}
        touched: dict[str, set] = {"flows": set(), "groups": set(), "meters": set()}
        for k, idx in new.items():
            old = self._by_key.get(k, _Index(_EMPTY))
            for kind in want:
                for ident, item in getattr(idx, kind).items():
                    _merge(owners[kind], ident, k, item, kind[:-1])
                    want[kind][ident] = item
                for ident, item in getattr(old, kind).items():
                    have[kind][ident] = item
                touched[kind] |= getattr(idx, kind).keys() | getattr(old, kind).keys()
        for kind in want:  # clean keys that share an item keep it alive
            for ident in touched[kind]:
                for k in self._owners.get((kind, ident), ()):
                    if k in new:
                        continue
                    item = getattr(self._by_key[k], kind)[ident]
                    _merge(owners[kind], ident, k, item, kind[:-1])
                    want[kind][ident] = item
                    have[kind].setdefault(ident, item)
        return (SwitchState(tuple(want["flows"].values()), tuple(want["groups"].values()),
                             tuple(want["meters"].values())),
                SwitchState(tuple(have["flows"].values()), tuple(have["groups"].values()),
                             tuple(have["meters"].values())))

    def startup(self, round_: int) -> list[SwitchOp]:
        """After a (re)connect: adopt the switch's content for the new round, without a gap."""
        with self._lock, _gc_paused():
            self._round = round_
            self._synced = False  # unknown until the bundle below commits
            return self._sync(self._switch.dump())

    def _sync(self, actual: SwitchState) -> list[SwitchOp]:
        desired = canonical(self.desired(), self._pipeline)
        # Never delete by a cookie that a desired flow still carries.
        keep = {round_of(f.cookie) for f in desired.flows} | {self._round}
        old_rounds = sorted({round_of(f.cookie) for f in actual.flows} - keep)
        ops = self._diff(desired, actual)
        if self._round is not None:
            ops += [CookieDelete(*round_cookie_mask(r)) for r in old_rounds]
        adopted = {g.group_id for g in actual.groups} & {g.group_id for g in desired.groups}
        with metrics.reconcile_round("full", len(ops)):
            self._switch.apply(ops)
        count_ops(ops)
        self._synced = True
        self._by_key, self._owners = {}, {}
        for k, st in self._wanted.items():
            self._index(k, _Index(st))
        self._dirty.clear()
        log.info("synced with the switch for round %s: %d ops (found %d flows, %d groups; "
                 "%d groups adopted; old rounds %s)", self._round, len(ops), len(actual.flows),
                 len(actual.groups), len(adopted), old_rounds or "none")
        return ops


class _Index:
    """One key's state, by identity: flow key, group id, meter id (identical duplicates
    merged, different ones with one identity an error, as ``canonical`` has it; unsorted:
    the differ sorts what it sends)."""

    __slots__ = ("flows", "groups", "meters")

    def __init__(self, state: SwitchState) -> None:
        self.flows = index_flows(state.flows)
        self.groups = index_by_id(state.groups, lambda g: g.group_id, "group")
        self.meters = index_by_id(state.meters, lambda m: m.meter_id, "meter")


_KINDS = ("flows", "groups", "meters")
_EMPTY = SwitchState()


def count_ops(ops: Sequence[SwitchOp]) -> None:
    kinds = Counter(f"{type(op).__name__.removesuffix('Op').lower()}_"
                    f"{getattr(op, 'command', 'delete')}" for op in ops)
    for kind, n in kinds.items():  # one labelled child per kind, not per op
        metrics.FLOW_OPS.labels(kind=kind).inc(n)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Python's cyclic collector off while a reconcile runs. A reconcile of 10k groups makes
    hundreds of thousands of small objects (flows, buckets, ops, index entries) and frees
    none of them in cycles, yet each of them counts toward a collection, and each full
    collection walks everything the reconciler keeps installed: a third of an install's time
    (bench programming section). Reference counting frees garbage as usual meanwhile; the
    collector resumes (and catches up) after."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _name(key: Key) -> str:
    """A reconciler key as logs and errors name it: ``group/239.1.1.1``."""
    return f"{key[0].name.lower()}/{key[1]}"


def _merge(index: dict, ident: object, owner: Key, item: object, what: str) -> None:
    prev = index.get(ident)
    if prev is not None and prev[1] != item:
        raise ConflictError(f"{what} {ident} wanted differently by {_name(prev[0])} and "
                            f"{_name(owner)}: {prev[1]} / {item}")
    if prev is None:
        index[ident] = (owner, item)
