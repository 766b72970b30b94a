"""agent.multicast.igmp.limits: which report breaks which cap; shrinking is always taken."""

from __future__ import annotations

from agent.multicast.igmp.limits import Cap, Limits, check_report
from agent.multicast.igmp.membership import ANY_SOURCE, FilterMode, SourceFilter
from agent.multicast.igmp.packets import GroupRecord, LeaveV2, RecordType, ReportV2, ReportV3

L = Limits(records_per_report=4, sources_per_record=3, groups_per_pod=3, sources_per_pod=4,
           groups_per_node=5)


def _v3(*records: tuple[RecordType, str, tuple[str, ...]]) -> ReportV3:
    return ReportV3(tuple(GroupRecord(k, g, s) for k, g, s in records))


def _check(msg, held=None, node: set[str] | None = None) -> Cap | None:
    node = node if node is not None else set(held or {})
    return check_report(L, msg, held or {}, node.__contains__, lambda: len(node))


def test_report_shape_caps() -> None:
    many = _v3(*[(RecordType.IS_EX, f"239.0.0.{i}", ()) for i in range(5)])
    assert _check(many) is Cap.RECORDS_PER_REPORT
    wide = _v3((RecordType.IS_IN, "239.0.0.1", ("1.1.1.1", "1.1.1.2", "1.1.1.3", "1.1.1.4")))
    assert _check(wide) is Cap.SOURCES_PER_RECORD


def test_pod_caps_count_what_the_report_would_leave() -> None:
    held = {"239.0.0.1": ANY_SOURCE, "239.0.0.2": ANY_SOURCE}
    assert _check(ReportV2("239.0.0.3"), held) is None  # 3rd group: at the cap
    held["239.0.0.3"] = ANY_SOURCE
    assert _check(ReportV2("239.0.0.4"), held) is Cap.GROUPS_PER_POD
    assert _check(ReportV2("239.0.0.1"), held) is None  # a refresh adds nothing
    # leaving one and joining another in one report keeps the count: taken whole
    swap = _v3((RecordType.TO_IN, "239.0.0.1", ()), (RecordType.TO_EX, "239.0.0.9", ()))
    assert _check(swap, held) is None
    srcs = {"239.0.0.1": SourceFilter(FilterMode.INCLUDE, frozenset({"1.1.1.1", "1.1.1.2"}))}
    more = _v3((RecordType.ALLOW, "239.0.0.1", ("1.1.1.3", "1.1.1.4", "1.1.1.5")))
    assert _check(more, srcs) is Cap.SOURCES_PER_POD


def test_over_a_lowered_cap_shrinking_is_still_taken() -> None:
    held = {f"239.0.0.{i}": ANY_SOURCE for i in range(6)}  # joined before the cap was lowered
    assert _check(LeaveV2("239.0.0.1"), held) is None
    assert _check(ReportV2("239.0.0.2"), held) is None  # refresh
    assert _check(ReportV2("239.0.0.9"), held) is Cap.GROUPS_PER_POD


def test_node_cap_counts_groups_new_to_the_node() -> None:
    node = {f"239.1.0.{i}" for i in range(5)}  # other pods' and nodes' groups
    assert _check(ReportV2("239.1.0.1"), node=node) is None  # already there
    assert _check(ReportV2("239.9.9.9"), node=node) is Cap.GROUPS_PER_NODE
