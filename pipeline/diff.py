"""Reconciliation: the ops that turn the switch's actual state into the desired one.

``diff`` compares flows by identity (table, priority, match), groups and meters by id, and
returns ops in the only order that never leaves a dangling reference or a traffic gap inside
one bundle: meter adds, group adds/modifies (groups before the flows that use them), flow
adds/modifies, flow deletes, group deletes (OpenFlow deletes the flows that still use a deleted
group, so groups go after their flows), meter deletes. Within each class the order is
deterministic: flows by table id, priority and match; groups and meters by id.

A changed cookie is sent as ADD, not MODIFY: OVS ignores the cookie of a modify, while an ADD
of an existing (table, priority, match) replaces the flow, takes the new cookie and keeps its
packet counters (see ``switchmodel``). Actions-only changes are MODIFY (counters and duration
kept).

``apply_ops`` replays ops on a state with ``switchmodel.SwitchModel`` (OVS's semantics and
errors), so tests can check ``apply_ops(actual, diff(d, actual)) == d``.
"""

from __future__ import annotations

from collections.abc import Iterable

from pipeline import layout
from pipeline.groupsplit import DEFAULT_BUCKET_CAP, MAX_BUNDLED_MESSAGE, split_group_op
from pipeline.model import Flow, Match, SwitchState
from pipeline.ops import Command, FlowOp, GroupOp, MeterOp, Op
from pipeline.switchmodel import FlowKey, SwitchError, SwitchModel, index_by_id, index_flows
from pipeline.tables import Pipeline

DiffError = SwitchError
"""The differ's name for a state it cannot work with or an op the switch would refuse."""

MatchSortKey = tuple[tuple[str, tuple[int, int], tuple[int, int]], ...]


def _value_key(v: int | str | None) -> tuple[int, int]:
    """Orders values of one field numerically: ints, dotted IPv4, MAC; None (exact) first."""
    if v is None:
        return (0, 0)
    if isinstance(v, int):
        return (1, v)
    if ":" in v:
        return (1, int(v.replace(":", ""), 16))
    # A dotted quad (matches hold them normalised); parsed by hand since canonical() sorts
    # every flow of a reconcile and ipaddress would be most of its cost.
    a, b, c, d = (int(octet) for octet in v.split("."))
    return (1, a << 24 | b << 16 | c << 8 | d)


def match_sort_key(match: Match) -> MatchSortKey:
    """A total order on matches (FieldMatch itself cannot compare a mask with None)."""
    return tuple((f.name, _value_key(f.value), _value_key(f.mask)) for f in match.fields)


def flow_sort_key(flow: Flow, pipeline: Pipeline) -> tuple[int, int, MatchSortKey]:
    return (pipeline.table_id(flow.table), flow.priority, match_sort_key(flow.match))


def _order_in_table(flow: Flow) -> tuple[int, MatchSortKey]:
    return (flow.priority, match_sort_key(flow.match))


def diff(desired: SwitchState, actual: SwitchState, bucket_cap: int = DEFAULT_BUCKET_CAP,
         pipeline: Pipeline | None = None, max_bytes: int = MAX_BUNDLED_MESSAGE) -> list[Op]:
    """Ops that make ``actual`` equal ``desired`` (see the module doc for the order).

    ``pipeline`` gives table ids for the sort (default: the multicast pipeline). Group
    ADD/MODIFY ops too large for one message are split by ``split_group_op``.
    """
    pipe = pipeline if pipeline is not None else layout.multicast_pipeline()
    want_f, have_f = index_flows(desired.flows), index_flows(actual.flows)
    want_g = index_by_id(desired.groups, lambda g: g.group_id, "group")
    have_g = index_by_id(actual.groups, lambda g: g.group_id, "group")
    want_m = index_by_id(desired.meters, lambda m: m.meter_id, "meter")
    have_m = index_by_id(actual.meters, lambda m: m.meter_id, "meter")

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


def apply_ops(state: SwitchState, ops: Iterable[Op],
              pipeline: Pipeline | None = None) -> SwitchState:
    """``state`` after ``ops``, as OVS would leave it (sorted like ``diff`` sorts)."""
    pipe = pipeline if pipeline is not None else layout.multicast_pipeline()
    switch = SwitchModel(state)
    switch.apply(ops)
    groups, meters = switch.groups(), switch.meters()
    # flow_sort_key's order, table by table: the table id is looked up once per table.
    flows = (f for name in sorted(switch.table_names(), key=pipe.table_id)
             for f in sorted(switch.table(name).values(), key=_order_in_table))
    return SwitchState(
        flows=tuple(flows),
        groups=tuple(groups[i] for i in sorted(groups)),
        meters=tuple(meters[i] for i in sorted(meters)),
    )


def canonical(state: SwitchState, pipeline: Pipeline | None = None) -> SwitchState:
    """``state`` with duplicates merged and everything sorted, for equality checks."""
    return apply_ops(state, (), pipeline)
