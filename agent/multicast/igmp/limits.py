"""Caps on what one IGMP report may ask of the agent, checked before it changes anything.

A pod can send any report it likes; what it can make the agent hold is bounded here: records
per report, sources per record, groups and sources per pod, groups per node. A report that
would take a pod (or the node) past a cap is refused whole — never half-applied — while one
that only shrinks what is held is always taken, so lowering a cap never traps a member.
Pure: the caller passes the member's current filters and the node's group count.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from agent.multicast.igmp.membership import NO_SOURCE, SourceFilter, transition
from agent.multicast.igmp.packets import LeaveV2, RecordType, ReportV1, ReportV2, ReportV3


class Cap(enum.StrEnum):
    """Which cap refused a report (the ``cap`` label of the refusal counter)."""

    RECORDS_PER_REPORT = "recordsPerReport"
    SOURCES_PER_RECORD = "sourcesPerRecord"
    GROUPS_PER_POD = "groupsPerPod"
    SOURCES_PER_POD = "sourcesPerPod"
    GROUPS_PER_NODE = "groupsPerNode"


@dataclass(frozen=True)
class Limits:
    """The caps (config ``multicast.limits``). Defaults leave room for real applications
    (market-data pods join hundreds of groups; SSM receivers list a few sources per group)
    while bounding a hostile pod's footprint: every source a pod lists can cost an (S, G)
    flow and group on the switch."""

    records_per_report: int = 256
    sources_per_record: int = 64
    groups_per_pod: int = 4096
    sources_per_pod: int = 1024
    groups_per_node: int = 65536

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value < 1:
                raise ValueError(f"limit {name} must be at least 1, got {value}")

    @classmethod
    def from_caps(cls, caps: Mapping[Cap, int]) -> Limits:
        return cls(**{_FIELDS[c]: v for c, v in caps.items()})

    def __getitem__(self, cap: Cap) -> int:
        value: int = getattr(self, _FIELDS[cap])
        return value


_FIELDS = {Cap.RECORDS_PER_REPORT: "records_per_report",
           Cap.SOURCES_PER_RECORD: "sources_per_record", Cap.GROUPS_PER_POD: "groups_per_pod",
           Cap.SOURCES_PER_POD: "sources_per_pod", Cap.GROUPS_PER_NODE: "groups_per_node"}


Report = ReportV1 | ReportV2 | LeaveV2 | ReportV3


def _records(msg: Report) -> list[tuple[str, RecordType, tuple[str, ...]]]:
    if isinstance(msg, ReportV1 | ReportV2):
        return [(msg.group, RecordType.IS_EX, ())]
    if isinstance(msg, LeaveV2):
        return [(msg.group, RecordType.TO_IN, ())]
    return [(r.group, r.kind, r.sources) for r in msg.records]


def check_report(limits: Limits, msg: Report, held: Mapping[str, SourceFilter],
                 node_has: Callable[[str], bool], node_groups: Callable[[], int],
                 held_sources: int | None = None) -> Cap | None:
    """The cap ``msg`` from a member holding ``held`` would break (None: take it).

    ``node_has`` answers whether the node already has a group (any member, local or remote),
    ``node_groups`` counts them; it is called only for a report that brings new groups, so
    refreshes, the bulk of reports, cost nothing proportional to the node's groups.
    ``held_sources`` is the sources over all of ``held`` when the caller keeps that count (the
    membership table does): then a report costs nothing proportional to the member's groups.
    """
    records = _records(msg)
    if len(records) > limits.records_per_report:
        return Cap.RECORDS_PER_REPORT
    if any(len(sources) > limits.sources_per_record for _, _, sources in records):
        return Cap.SOURCES_PER_RECORD
    after: dict[str, SourceFilter | None] = {}  # only the groups this report touches
    for group, kind, sources in records:
        base = after[group] if group in after else held.get(group)
        new = transition(base or NO_SOURCE, kind, sources)
        after[group] = None if new.is_empty else new
    groups_now = len(held)
    groups_after = groups_now + sum((f is not None) - (g in held) for g, f in after.items())
    if groups_after > max(limits.groups_per_pod, groups_now):
        return Cap.GROUPS_PER_POD
    sources_now = held_sources if held_sources is not None else sum(
        len(f.sources) for f in held.values())
    sources_after = sources_now + sum(
        (len(f.sources) if f is not None else 0) - (len(held[g].sources) if g in held else 0)
        for g, f in after.items())
    if sources_after > max(limits.sources_per_pod, sources_now):
        return Cap.SOURCES_PER_POD
    new_groups = sum(1 for g, f in after.items() if f is not None and not node_has(g))
    if new_groups and node_groups() + new_groups > limits.groups_per_node:
        return Cap.GROUPS_PER_NODE
    return None
