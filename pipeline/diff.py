"""Reconciliation: the ops that turn the switch's actual state into the desired one.

``diff`` compares flows by identity (table, priority, match), groups and meters by id, and
returns ops in the only order that never leaves a dangling reference or a traffic gap inside
one bundle: meter adds, group adds/modifies (groups before the flows that use them), flow
adds/modifies, flow deletes, group deletes (OpenFlow deletes the flows that still use a deleted
group, so groups go after their flows), meter deletes. Within each class the order is
deterministic: flows by table id, priority and match; groups and meters by id.

A changed cookie is sent as ADD, not MODIFY: over OpenFlow 1.3 OVS ignores the cookie of a
modify (checked on OVS 3.1: ``modify_strict cookie=0x66,...`` leaves the old cookie), while an
ADD of an existing (table, priority, match) replaces the flow, takes the new cookie and keeps
its packet counters. Actions-only changes are MODIFY (counters and duration kept).

``apply_ops`` replays ops on a state with the switch's semantics (including the two above and
the errors OVS would raise), so tests can check ``apply_ops(actual, diff(d, actual)) == d``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import replace

from pipeline import layout
from pipeline.groupsplit import DEFAULT_BUCKET_CAP, MAX_BUNDLED_MESSAGE, split_group_op
from pipeline.model import (
    Flow,
    Group,
    GroupAction,
    Match,
    Meter,
    SwitchState,
)
from pipeline.ops import Command, FlowOp, GroupOp, MeterOp, Op
from pipeline.tables import Pipeline

FlowKey = tuple[str, int, Match]


class DiffError(ValueError):
    """A state is inconsistent (two different flows with one key), or an op cannot apply."""


def _value_key(v: int | str | None) -> tuple[int, int]:
    """Orders values of one field numerically: ints, dotted IPv4, MAC; None (exact) first."""
    if v is None:
        return (0, 0)
    if isinstance(v, int):
        return (1, v)
    if ":" in v:
        return (1, int(v.replace(":", ""), 16))
    return (1, int(ipaddress.IPv4Address(v)))


def match_sort_key(match: Match) -> tuple:
    """A total order on matches (FieldMatch itself cannot compare a mask with None)."""
    return tuple((f.name, _value_key(f.value), _value_key(f.mask)) for f in match.fields)


def flow_sort_key(flow: Flow, pipeline: Pipeline) -> tuple:
    return (pipeline.table_id(flow.table), flow.priority, match_sort_key(flow.match))


def index_flows(flows: Iterable[Flow]) -> dict[FlowKey, Flow]:
    """Flows by key; identical duplicates merge, different flows with one key are an error."""
    out: dict[FlowKey, Flow] = {}
    for f in flows:
        old = out.get(f.key)
        if old is not None and old != f:
            raise DiffError(f"two different flows share key {_describe(f.key)}: {old} / {f}")
        out[f.key] = f
    return out


def _index_by_id(items: Iterable, attr: str, what: str) -> dict:
    out: dict = {}
    for item in items:
        i = getattr(item, attr)
        if i in out and out[i] != item:
            raise DiffError(f"two different {what}s with id {i}")
        out[i] = item
    return out


def _describe(key: FlowKey) -> str:
    table, priority, match = key
    fields = ",".join(f"{f.name}={f.value}" + (f"/{f.mask}" if f.mask else "")
                      for f in match.fields)
    return f"table={table},priority={priority},{fields}"


def diff(desired: SwitchState, actual: SwitchState, bucket_cap: int = DEFAULT_BUCKET_CAP,
         pipeline: Pipeline | None = None, max_bytes: int = MAX_BUNDLED_MESSAGE) -> list[Op]:
    """Ops that make ``actual`` equal ``desired`` (see the module doc for the order).

    ``pipeline`` gives table ids for the sort (default: the multicast pipeline). Group
    ADD/MODIFY ops too large for one message are split by ``split_group_op``.
    """
    pipe = pipeline if pipeline is not None else layout.multicast_pipeline()
    want_f, have_f = index_flows(desired.flows), index_flows(actual.flows)
    want_g = _index_by_id(desired.groups, "group_id", "group")
    have_g = _index_by_id(actual.groups, "group_id", "group")
    want_m = _index_by_id(desired.meters, "meter_id", "meter")
    have_m = _index_by_id(actual.meters, "meter_id", "meter")

    ops: list[Op] = []
    for mid in sorted(want_m):
        if mid not in have_m:
            ops.append(MeterOp(Command.ADD, want_m[mid]))
        elif have_m[mid] != want_m[mid]:
            ops.append(MeterOp(Command.MODIFY, want_m[mid]))
    for gid in sorted(want_g):
        if gid not in have_g:
            ops += split_group_op(GroupOp(Command.ADD, want_g[gid]), max_bytes, bucket_cap)
        elif have_g[gid] != want_g[gid]:
            ops += split_group_op(GroupOp(Command.MODIFY, want_g[gid]), max_bytes, bucket_cap)

    def by_key(keys: Iterable[FlowKey], index: dict[FlowKey, Flow]) -> list[Flow]:
        return sorted((index[k] for k in keys), key=lambda f: flow_sort_key(f, pipe))

    for f in by_key(want_f, want_f):
        old = have_f.get(f.key)
        if old is None or old.cookie != f.cookie:
            ops.append(FlowOp(Command.ADD, f))  # new, or replace to change the cookie
        elif old.actions != f.actions:
            ops.append(FlowOp(Command.MODIFY, f))
    for f in by_key(have_f.keys() - want_f.keys(), have_f):
        ops.append(FlowOp(Command.DELETE, f))
    for gid in sorted(have_g.keys() - want_g.keys()):
        ops.append(GroupOp(Command.DELETE, have_g[gid]))
    for mid in sorted(have_m.keys() - want_m.keys()):
        ops.append(MeterOp(Command.DELETE, have_m[mid]))
    return ops


# --- replaying ops with the switch's semantics ------------------------------------------------


def _groups_used(actions: Iterable) -> set[int]:
    return {a.group_id for a in actions if isinstance(a, GroupAction)}


def _check_refs(flow_or_group: Flow | Group, groups: dict[int, Group]) -> None:
    if isinstance(flow_or_group, Flow):
        used = _groups_used(flow_or_group.actions)
    else:
        used = set().union(*(_groups_used(b.actions) for b in flow_or_group.buckets))
    missing = used - groups.keys()
    if missing:
        # OVS answers OFPBAC_BAD_OUT_GROUP and the whole bundle fails.
        raise DiffError(f"{flow_or_group} refers to missing groups {sorted(missing)}")


def _apply_flow(op: FlowOp, flows: dict[FlowKey, Flow], groups: dict[int, Group]) -> None:
    f, old = op.flow, flows.get(op.flow.key)
    if op.command is Command.ADD:
        _check_refs(f, groups)
        flows[f.key] = f
    elif op.command is Command.MODIFY:
        if old is not None:  # OpenFlow 1.3 modify of a missing flow does nothing
            _check_refs(f, groups)
            flows[f.key] = replace(old, actions=f.actions)  # the cookie stays
    elif op.command is Command.DELETE:
        flows.pop(f.key, None)
    else:
        raise DiffError(f"no flow command {op.command}")


def _apply_group(op: GroupOp, flows: dict[FlowKey, Flow], groups: dict[int, Group]) -> None:
    g, gid = op.group, op.group.group_id
    if op.command is Command.ADD:
        if gid in groups:
            raise DiffError(f"group {gid} exists (OFPGMFC_GROUP_EXISTS)")
        _check_refs(g, groups)
        groups[gid] = g
    elif op.command in (Command.MODIFY, Command.INSERT_BUCKETS):
        if gid not in groups:
            raise DiffError(f"group {gid} does not exist (OFPGMFC_UNKNOWN_GROUP)")
        _check_refs(g, groups)
        if op.command is Command.MODIFY:
            groups[gid] = g
        else:
            groups[gid] = replace(groups[gid], buckets=groups[gid].buckets + g.buckets)
    elif op.command is Command.DELETE:
        groups.pop(gid, None)
        for key in [k for k, f in flows.items() if gid in _groups_used(f.actions)]:
            del flows[key]  # OpenFlow removes the flows that output to a deleted group
    else:
        raise DiffError(f"no group command {op.command}")


def _apply_meter(op: MeterOp, meters: dict[int, Meter]) -> None:
    mid = op.meter.meter_id
    if op.command is Command.ADD:
        if mid in meters:
            raise DiffError(f"meter {mid} exists (OFPMMFC_METER_EXISTS)")
        meters[mid] = op.meter
    elif op.command is Command.MODIFY:
        if mid not in meters:
            raise DiffError(f"meter {mid} does not exist (OFPMMFC_UNKNOWN_METER)")
        meters[mid] = op.meter
    elif op.command is Command.DELETE:
        meters.pop(mid, None)
    else:
        raise DiffError(f"no meter command {op.command}")


def apply_ops(state: SwitchState, ops: Iterable[Op],
              pipeline: Pipeline | None = None) -> SwitchState:
    """``state`` after ``ops``, as OVS would leave it (sorted like ``diff`` sorts)."""
    pipe = pipeline if pipeline is not None else layout.multicast_pipeline()
    flows = index_flows(state.flows)
    groups: dict[int, Group] = _index_by_id(state.groups, "group_id", "group")
    meters: dict[int, Meter] = _index_by_id(state.meters, "meter_id", "meter")
    for op in ops:
        if isinstance(op, FlowOp):
            _apply_flow(op, flows, groups)
        elif isinstance(op, GroupOp):
            _apply_group(op, flows, groups)
        else:
            _apply_meter(op, meters)
    return SwitchState(
        flows=tuple(sorted(flows.values(), key=lambda f: flow_sort_key(f, pipe))),
        groups=tuple(groups[i] for i in sorted(groups)),
        meters=tuple(meters[i] for i in sorted(meters)),
    )


def canonical(state: SwitchState, pipeline: Pipeline | None = None) -> SwitchState:
    """``state`` with duplicates merged and everything sorted, for equality checks."""
    return apply_ops(state, (), pipeline)

