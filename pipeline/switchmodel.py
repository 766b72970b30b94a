"""What Open vSwitch does with flow, group and meter mods: the one model of a switch's rules.

This module owns the switch-side semantics of the ops in ``pipeline.ops``, as OVS 3.1 applies
them over OpenFlow 1.5, the version the agent speaks:

* Flow ADD of an existing (table, priority, match) replaces the flow, cookie included, and keeps
  its counters. MODIFY is modify-strict: new actions, the old cookie (checked on OVS 3.1:
  ``mod-flows --strict cookie=0x2,...`` leaves cookie=0x1), and nothing at all when the flow is
  missing (only OpenFlow 1.0 added it). DELETE is delete-strict; a missing flow is no error.
* Group ADD of an existing id fails with OFPGMFC_GROUP_EXISTS. MODIFY replaces every bucket and
  INSERT_BUCKETS appends buckets; both fail with OFPGMFC_UNKNOWN_GROUP on an unknown id. DELETE
  also deletes every flow that outputs to the group; an unknown id is no error.
* A flow or a bucket that names a missing group fails with OFPBAC_BAD_OUT_GROUP.
* Meter ADD of an existing id fails with OFPMMFC_METER_EXISTS, MODIFY of an unknown one with
  OFPMMFC_UNKNOWN_METER; DELETE of an unknown id is no error. A flow that names a missing meter
  fails with OFPMMFC_INVALID_METER, and deleting a meter deletes the flows that use it (both
  checked on OVS 3.1).

Which flow of a table a packet hits is OVS's classifier, conjunctive matches included
(``classify``; the fake table supplies whether a flow matches the packet).

A refused op changes nothing and raises ``SwitchError`` (in a bundle OVS then rejects the whole
bundle). ``diff.apply_ops`` replays ops on a state with this model; ``fake_table.FakeSwitch`` is
one, adding its install-time checks and packet counters through the ``_vet_*`` and
``_forget_*`` hooks. Flows are kept per table, because the fake table looks packets up by table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Iterable, Mapping
from types import MappingProxyType
from typing import TypeVar

from pipeline.model import (
    Action,
    ApplyMeter,
    Bucket,
    Conjunction,
    Flow,
    Group,
    GroupAction,
    Match,
    Meter,
    SwitchState,
)
from pipeline.ops import Command, FlowOp, GroupOp, Op

FlowKey = tuple[str, int, Match]
"""A flow's identity on the switch: (table, priority, match)."""
TableKey = tuple[int, Match]
"""A flow's identity within its table: (priority, match)."""

_T = TypeVar("_T", Group, Meter)
_NO_FLOWS: Mapping[TableKey, Flow] = MappingProxyType({})


class SwitchError(ValueError):
    """The switch would refuse an op (``ofp_error`` names OVS's answer), or a description is
    inconsistent (two different flows with one key): a bug in what we built, either way."""

    def __init__(self, what: str, ofp_error: str | None = None) -> None:
        super().__init__(what if ofp_error is None else f"{what} ({ofp_error})")
        self.ofp_error = ofp_error


class AmbiguousMatch(SwitchError):
    """Two flows of the same priority both match a packet: OVS would pick one arbitrarily."""


def _is_conjunctive(flow: Flow) -> bool:
    return isinstance(flow.actions[0], Conjunction)  # then all are (model.Flow checks)


def _best(table: str, hits: list[Flow], packet: str) -> Flow | None:
    best = [f for f in hits if f.priority == max(h.priority for h in hits)]
    if len(best) > 1:
        raise AmbiguousMatch(f"{table}: {len(best)} flows of priority {best[0].priority} "
                             f"match {packet}: {[f.match for f in best]}")
    return best[0] if best else None


def classify(table: str, flows: Collection[Flow], matches: Callable[[Flow, int], bool],
             packet: str = "the packet") -> Flow | None:
    """The flow of ``table`` OVS runs for a packet (None: none matches); ``matches(flow,
    conj_id)`` says whether the packet, its conj_id field set to that, matches ``flow``.

    As lib/classifier.c (checked with ``ofproto/trace`` on OVS 3.1): a plain flow wins over
    the conjunctive flows at or below its priority. Above it, priority by priority from the
    highest, a conjunction whose clauses all match there makes OVS look the table up again
    with conj_id set, leaving conjunctive flows out; what that finds runs, which is the
    ``conj_id`` flow, or the plain flow if it is higher (or the conj_id flow is missing).
    Only when it finds nothing at all does the search go on at lower priorities.
    """
    hits = [f for f in flows if matches(f, 0)]
    plain = _best(table, [f for f in hits if not _is_conjunctive(f)], packet)
    floor = -1 if plain is None else plain.priority
    soft = [f for f in hits if _is_conjunctive(f) and f.priority > floor]
    for priority in sorted({f.priority for f in soft}, reverse=True):
        clauses: dict[tuple[int, int], set[int]] = {}
        for c in (c for f in soft if f.priority == priority for c in f.actions):
            assert isinstance(c, Conjunction)
            clauses.setdefault((c.conj_id, c.n_clauses), set()).add(c.clause)
        done = sorted(cid for (cid, n), ks in clauses.items() if len(ks) == n)
        if len(done) > 1:
            raise AmbiguousMatch(f"{table}: conjunctions {done} of priority {priority} all "
                                 f"match {packet}: OVS would pick one arbitrarily")
        if done:
            found = _best(table, [f for f in flows if not _is_conjunctive(f)
                                  and matches(f, done[0])], packet)
            if found is not None:
                return found
    return plain


def describe(key: FlowKey) -> str:
    """A flow key as readable text for error messages."""
    table, priority, match = key
    fields = ",".join(f"{f.name}={f.value}" + (f"/{f.mask}" if f.mask else "")
                      for f in match.fields)
    return f"table={table},priority={priority},{fields}"


def _two_flows(old: Flow, new: Flow) -> SwitchError:
    return SwitchError(f"two different flows share key {describe(new.key)}: {old} / {new}")


def index_flows(flows: Iterable[Flow]) -> dict[FlowKey, Flow]:
    """Flows by key; identical duplicates merge, different flows with one key are an error."""
    out: dict[FlowKey, Flow] = {}
    for f in flows:
        old = out.get(f.key)
        if old is not None and old != f:
            raise _two_flows(old, f)
        out[f.key] = f
    return out


def index_by_id(items: Iterable[_T], ident: Callable[[_T], int], what: str) -> dict[int, _T]:
    """Groups or meters by id; identical duplicates merge, different ones are an error."""
    out: dict[int, _T] = {}
    for item in items:
        i = ident(item)
        old = out.get(i)
        if old is not None and old != item:
            raise SwitchError(f"two different {what}s with id {i}")
        out[i] = item
    return out


class SwitchModel:
    """One switch's flows (per table), groups and meters, changed by ops as OVS changes them."""

    def __init__(self, state: SwitchState | None = None, tables: Iterable[str] = ()) -> None:
        """Start from ``state`` as given: merged, but not checked, since a dump or a partial
        desired state may hold flows whose groups live elsewhere. ``tables`` are created (empty,
        in that order) first, so ``flows()`` lists them in that order."""
        self._tables: dict[str, dict[TableKey, Flow]] = {t: {} for t in tables}
        self._groups: dict[int, Group] = {}
        self._meters: dict[int, Meter] = {}
        if state is None:
            return
        self._groups = index_by_id(state.groups, lambda g: g.group_id, "group")
        self._meters = index_by_id(state.meters, lambda m: m.meter_id, "meter")
        by_table = self._tables
        for f in state.flows:  # index_flows' rule, without building a flat index first
            table = by_table.get(f.table)
            if table is None:
                table = by_table[f.table] = {}
            key = (f.priority, f.match)
            old = table.get(key)
            if old is not None and old != f:
                raise _two_flows(old, f)
            table[key] = f

    # -- hooks for a switch that checks more or keeps counters (the fake table) ------------------

    def _vet_flow(self, flow: Flow) -> None:
        """Called with a flow as it is about to be installed (added, or modified into this
        form), before its group references are checked; raise SwitchError to refuse it."""

    def _vet_buckets(self, group_id: int, buckets: tuple[Bucket, ...]) -> None:
        """Called with buckets about to be installed in group ``group_id`` (all of an ADD or
        MODIFY, the new ones of INSERT_BUCKETS); raise SwitchError to refuse them."""

    def _forget_flow(self, key: FlowKey) -> None:
        """A flow left the switch (deleted, or with its group)."""

    def _forget_group(self, group_id: int) -> None:
        """A group left the switch."""

    def _forget_meter(self, meter_id: int) -> None:
        """A meter left the switch (one added again starts its counts from 0, as on OVS)."""

    # -- ops ----------------------------------------------------------------------------------

    def apply(self, ops: Iterable[Op]) -> None:
        """Apply ops in order, as one bundle would (the first refused op raises)."""
        for op in ops:
            if isinstance(op, FlowOp):
                self.flow_mod(op.command, op.flow)
            elif isinstance(op, GroupOp):
                self.group_mod(op.command, op.group)
            else:
                self.meter_mod(op.command, op.meter)

    def flow_mod(self, command: Command, flow: Flow) -> None:
        if command is Command.ADD:
            self.add_flow(flow)
        elif command is Command.MODIFY:
            self.modify_flow(flow)
        elif command is Command.DELETE:
            self.delete_flow(flow)
        else:
            raise SwitchError(f"{command} is not a flow command")

    def group_mod(self, command: Command, group: Group) -> None:
        if command is Command.ADD:
            self.add_group(group)
        elif command is Command.MODIFY:
            self.modify_group(group)
        elif command is Command.INSERT_BUCKETS:
            self.insert_buckets(group)
        elif command is Command.DELETE:
            self.delete_group(group.group_id)
        else:
            raise SwitchError(f"{command} is not a group command")

    def meter_mod(self, command: Command, meter: Meter) -> None:
        if command is Command.ADD:
            self.add_meter(meter)
        elif command is Command.MODIFY:
            self.modify_meter(meter)
        elif command is Command.DELETE:
            self.delete_meter(meter.meter_id)
        else:
            raise SwitchError(f"{command} is not a meter command")

    def _check_group_refs(self, actions: Iterable[Action], owner: Flow | int) -> None:
        """``owner``: the flow, or the id of the group whose bucket holds ``actions``."""
        missing = sorted({a.group_id for a in actions if isinstance(a, GroupAction)
                          and a.group_id not in self._groups})
        if missing:  # the text only now: flows are added by the thousand
            where = f"flow {describe(owner.key)}" if isinstance(owner, Flow) else f"group {owner}"
            raise SwitchError(f"{where} refers to missing groups {missing}",
                              "OFPBAC_BAD_OUT_GROUP")

    def _check_meter_refs(self, flow: Flow) -> None:
        missing = sorted({a.meter_id for a in flow.actions if isinstance(a, ApplyMeter)
                          and a.meter_id not in self._meters})
        if missing:
            raise SwitchError(f"flow {describe(flow.key)} refers to missing meters {missing}",
                              "OFPMMFC_INVALID_METER")

    def add_flow(self, flow: Flow) -> None:
        """Add, or replace the flow with the same (table, priority, match), cookie included."""
        self._vet_flow(flow)
        self._check_group_refs(flow.actions, flow)
        self._check_meter_refs(flow)
        self._tables.setdefault(flow.table, {})[(flow.priority, flow.match)] = flow

    def modify_flow(self, flow: Flow) -> None:
        """Modify-strict: the flow with this key gets ``flow``'s actions and keeps its cookie."""
        old = self._tables.get(flow.table, _NO_FLOWS).get((flow.priority, flow.match))
        if old is not None:
            self.add_flow(dataclasses.replace(old, actions=flow.actions))

    def delete_flow(self, flow: Flow) -> None:
        """Delete-strict by (table, priority, match); deleting a missing flow is a no-op."""
        table = self._tables.get(flow.table)
        if table is not None and table.pop((flow.priority, flow.match), None) is not None:
            self._forget_flow(flow.key)

    def _admit_buckets(self, group_id: int, buckets: tuple[Bucket, ...]) -> None:
        self._vet_buckets(group_id, buckets)
        for b in buckets:
            self._check_group_refs(b.actions, group_id)

    def add_group(self, group: Group) -> None:
        if group.group_id in self._groups:
            raise SwitchError(f"group {group.group_id} exists", "OFPGMFC_GROUP_EXISTS")
        self._admit_buckets(group.group_id, group.buckets)
        self._groups[group.group_id] = group

    def modify_group(self, group: Group) -> None:
        """Replaces every bucket (and the type)."""
        if group.group_id not in self._groups:
            raise SwitchError(f"group {group.group_id} does not exist", "OFPGMFC_UNKNOWN_GROUP")
        self._admit_buckets(group.group_id, group.buckets)
        self._groups[group.group_id] = group

    def insert_buckets(self, group: Group) -> None:
        """Appends ``group.buckets`` after the existing ones."""
        old = self._groups.get(group.group_id)
        if old is None:
            raise SwitchError(f"group {group.group_id} does not exist", "OFPGMFC_UNKNOWN_GROUP")
        self._admit_buckets(group.group_id, group.buckets)
        self._groups[group.group_id] = dataclasses.replace(
            old, buckets=old.buckets + group.buckets)

    def delete_group(self, group_id: int) -> None:
        """Delete a group and, as OpenFlow requires, every flow that outputs to it."""
        if self._groups.pop(group_id, None) is None:
            return
        self._forget_group(group_id)
        self._delete_flows_using(GroupAction(group_id))

    def add_meter(self, meter: Meter) -> None:
        if meter.meter_id in self._meters:
            raise SwitchError(f"meter {meter.meter_id} exists", "OFPMMFC_METER_EXISTS")
        self._meters[meter.meter_id] = meter

    def modify_meter(self, meter: Meter) -> None:
        if meter.meter_id not in self._meters:
            raise SwitchError(f"meter {meter.meter_id} does not exist", "OFPMMFC_UNKNOWN_METER")
        self._meters[meter.meter_id] = meter

    def delete_meter(self, meter_id: int) -> None:
        """Delete a meter and, as OVS does, every flow that passes packets through it."""
        if self._meters.pop(meter_id, None) is None:
            return
        self._forget_meter(meter_id)
        self._delete_flows_using(ApplyMeter(meter_id))

    def _delete_flows_using(self, used: Action) -> None:
        for table in self._tables.values():
            for key in [k for k, f in table.items() if used in f.actions]:
                self._forget_flow(table.pop(key).key)

    # -- inspection ---------------------------------------------------------------------------

    def table(self, name: str) -> Mapping[TableKey, Flow]:
        """The flows of one table by (priority, match); empty for a table never used."""
        return self._tables.get(name, _NO_FLOWS)

    def table_names(self) -> list[str]:
        """Tables that hold or held flows, in creation order."""
        return list(self._tables)

    def flows(self) -> list[Flow]:
        """All flows, table by table (tables in creation order)."""
        return [f for table in self._tables.values() for f in table.values()]

    def group(self, group_id: int) -> Group | None:
        return self._groups.get(group_id)

    def groups(self) -> dict[int, Group]:
        return dict(self._groups)

    def meters(self) -> dict[int, Meter]:
        return dict(self._meters)
