"""igmp.membership: joins, leaves (fast and slow), v3 source filters, ageing, queries.

Time is a plain float: the tests are their own clock."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from agent.multicast.igmp.membership import (
    ANY_SOURCE,
    NO_SOURCE,
    FilterMode,
    Membership,
    SourceFilter,
    Timers,
    transition,
)
from agent.multicast.igmp.packets import (
    GroupRecord,
    LeaveV2,
    Query,
    RecordType,
    ReportV1,
    ReportV2,
    ReportV3,
    parse_frame,
)

IS_IN, IS_EX, TO_IN, TO_EX, ALLOW, BLOCK = RecordType
G, G2 = "239.1.1.1", "239.2.2.2"
POD, POD2, NODE = ("pod", "ns/a"), ("pod", "ns/b"), ("node", "192.168.77.2")
TIMEOUT = 260.0  # 2 x 125 + 10


def v3(*records: tuple) -> ReportV3:
    return ReportV3(tuple(GroupRecord(kind, group, tuple(srcs)) for kind, group, srcs in records))


def inc(*s: str) -> SourceFilter:
    return SourceFilter(FilterMode.INCLUDE, frozenset(s))


def exc(*s: str) -> SourceFilter:
    return SourceFilter(FilterMode.EXCLUDE, frozenset(s))


# ------------------------------------------------------------------ filters and timers

def test_source_filter_admits() -> None:
    assert ANY_SOURCE.admits("10.0.0.1") and not NO_SOURCE.admits("10.0.0.1")
    assert inc("a").admits("a") and not inc("a").admits("b")
    assert not exc("a").admits("a") and exc("a").admits("b")
    assert NO_SOURCE.is_empty and not exc().is_empty and not inc("a").is_empty


@pytest.mark.parametrize("before,kind,sources,after", [
    (NO_SOURCE, IS_EX, ["a"], exc("a")),
    (inc("x"), TO_EX, [], exc()),
    (exc("x"), IS_IN, ["a", "b"], inc("a", "b")),
    (exc(), TO_IN, [], inc()),           # leave
    (inc("a"), ALLOW, ["b"], inc("a", "b")),
    (exc("a", "b"), ALLOW, ["a"], exc("b")),
    (inc("a", "b"), BLOCK, ["a", "z"], inc("b")),
    (inc("a"), BLOCK, ["a"], inc()),     # leave
    (exc("a"), BLOCK, ["b"], exc("a", "b")),
    (NO_SOURCE, ALLOW, ["a"], inc("a")),  # a source-specific join (what Linux sends)
    (NO_SOURCE, BLOCK, ["a"], inc()),
])
def test_transition(before: SourceFilter, kind: RecordType, sources: list[str],
                    after: SourceFilter) -> None:
    assert transition(before, kind, sources) == after


def test_timers() -> None:
    t = Timers()
    assert t.membership_timeout_s == TIMEOUT and t.last_member_query_time_s == 2.0
    assert Timers(query_interval_s=10, max_response_s=1, robustness=3).membership_timeout_s == 31
    for bad in ({"robustness": 0}, {"last_member_query_count": 0}, {"query_interval_s": 0},
                {"max_response_s": 125}):
        with pytest.raises(ValueError):
            Timers(**bad)


# ------------------------------------------------------------------ v1/v2

@pytest.mark.parametrize("report", [ReportV1(G), ReportV2(G)])
def test_v1_v2_report_joins_any_source(report: ReportV1 | ReportV2) -> None:
    m = Membership()
    assert m.apply(0, POD, report) == {G}
    assert m.members(G) == {POD: ANY_SOURCE}
    assert m.groups() == {G} and m.members(G2) == {}
    assert m.apply(5, POD, report) == set()  # a refresh changes no forwarding
    assert m.next_deadline() == 5 + TIMEOUT


def test_second_member_changes_the_group_and_sees_its_own_state() -> None:
    m = Membership()
    m.apply(0, POD, ReportV2(G))
    assert m.apply(0, NODE, ReportV2(G)) == {G}
    assert m.members(G) == {POD: ANY_SOURCE, NODE: ANY_SOURCE} and m.groups() == {G}


def test_fast_leave_removes_at_once() -> None:
    m = Membership(fast_leave=True)
    m.apply(0, POD, ReportV2(G))
    assert m.apply(1, POD, LeaveV2(G)) == {G}
    assert m.groups() == set() and m.members(G) == {}
    assert m.due_queries(1) == [] and m.next_deadline() is None


def test_fast_leave_per_call_overrides_constructor() -> None:
    m = Membership()  # slow by default
    m.apply(0, POD, ReportV2(G))
    assert m.apply(1, POD, LeaveV2(G), fast_leave=True) == {G}
    assert m.due_queries(1) == []
    slow = Membership(fast_leave=True)
    slow.apply(0, POD, ReportV2(G))
    assert slow.apply(1, POD, LeaveV2(G), fast_leave=False) == set()
    assert slow.due_queries(1) == [G]


def test_leave_of_a_non_member_is_ignored() -> None:
    for fast in (True, False):
        m = Membership(fast_leave=fast)
        assert m.apply(0, POD, LeaveV2(G)) == set()
        assert m.due_queries(0) == [] and m.next_deadline() is None


# ------------------------------------------------------------------ slow leave

def test_slow_leave_queries_then_removes() -> None:
    m = Membership()
    m.apply(0, POD, ReportV2(G))
    assert m.apply(10, POD, LeaveV2(G)) == set()  # still forwarded during the queries
    assert m.members(G) == {POD: ANY_SOURCE}
    assert m.next_deadline() == 10
    assert m.due_queries(10) == [G]
    assert m.due_queries(10.5) == []
    assert m.next_deadline() == 11
    assert m.due_queries(11) == [G]  # last_member_query_count = 2, 1 s apart
    assert m.due_queries(11.5) == [] and m.next_deadline() == 12  # LMQT = 2 x 1 s
    assert m.expire(11.999) == set()
    assert m.expire(12) == {G}
    assert m.groups() == set() and m.next_deadline() is None


def test_report_during_slow_leave_cancels_it() -> None:
    m = Membership()
    m.apply(0, POD, ReportV2(G))
    m.apply(10, POD, LeaveV2(G))
    assert m.due_queries(10) == [G]
    assert m.apply(10.5, POD, ReportV2(G)) == set()  # same filter: nothing to reprogram
    assert m.due_queries(11) == []  # the second query is not sent
    assert m.expire(12) == set()
    assert m.next_deadline() == 10.5 + TIMEOUT


def test_repeated_leave_does_not_restart_the_queries() -> None:
    m = Membership()
    m.apply(0, POD, v3((TO_EX, G, ())))
    m.apply(10, POD, v3((TO_IN, G, ())))
    assert m.due_queries(10) == [G]
    m.apply(10.3, POD, v3((TO_IN, G, ())))  # Linux sends every state change twice
    assert m.due_queries(10.3) == [] and m.due_queries(11) == [G]
    assert m.expire(12) == {G}


def test_slow_leave_of_one_member_keeps_the_others() -> None:
    m = Membership()
    m.apply(0, POD, ReportV2(G))
    m.apply(0, POD2, ReportV2(G))
    m.apply(1, POD, LeaveV2(G))
    m.apply(1.2, POD2, ReportV2(G))  # another member's report does not cancel POD's leave
    assert m.due_queries(2) == [G]
    assert m.expire(3) == {G}
    assert m.members(G) == {POD2: ANY_SOURCE}


def test_overdue_queries_are_coalesced() -> None:
    m = Membership()
    m.apply(0, POD, ReportV2(G))
    m.apply(1, POD, LeaveV2(G))
    assert m.due_queries(5) == [G]  # both were due: one query, not two
    assert m.due_queries(6) == []


def test_slow_leave_by_block_keeps_old_sources_until_it_expires() -> None:
    m = Membership()
    m.apply(0, POD, v3((ALLOW, G, ["s1"])))
    assert m.apply(1, POD, v3((BLOCK, G, ["s1"]))) == set()
    assert m.members(G) == {POD: inc("s1")} and m.due_queries(1) == [G]
    # The host said it wants nothing: a new ALLOW starts from empty, not from {s1}.
    assert m.apply(1.5, POD, v3((ALLOW, G, ["s2"]))) == {G}
    assert m.members(G) == {POD: inc("s2")}
    assert m.due_queries(2) == []


def test_remove_member_during_slow_leave_stops_the_queries() -> None:
    m = Membership()
    m.apply(0, POD, ReportV2(G))
    m.apply(1, POD, LeaveV2(G))
    assert m.remove_member(POD) == {G}
    assert m.due_queries(1) == [] and m.next_deadline() is None


# ------------------------------------------------------------------ v3

def test_v3_record_types_in_sequence() -> None:
    m = Membership(fast_leave=True)
    steps = [
        ((TO_EX, G, ()), {G}, exc()),
        ((IS_EX, G, ("s1",)), {G}, exc("s1")),
        ((BLOCK, G, ("s2",)), {G}, exc("s1", "s2")),
        ((ALLOW, G, ("s1",)), {G}, exc("s2")),
        ((IS_EX, G, ("s2",)), set(), exc("s2")),   # current state, unchanged: refresh only
        ((TO_IN, G, ("s3", "s4")), {G}, inc("s3", "s4")),
        ((ALLOW, G, ("s5",)), {G}, inc("s3", "s4", "s5")),
        ((BLOCK, G, ("s3", "s9")), {G}, inc("s4", "s5")),
        ((IS_IN, G, ("s4",)), {G}, inc("s4")),     # per member, IS_IN replaces
        ((BLOCK, G, ("s4",)), {G}, None),          # INCLUDE {} = gone
    ]
    for t, (rec, changed, state) in enumerate(steps):
        assert m.apply(t, POD, v3(rec)) == changed, rec
        assert m.members(G) == ({} if state is None else {POD: state}), rec


@pytest.mark.parametrize("leave", [(TO_IN, G, ()), (IS_IN, G, ())])
def test_v3_empty_include_is_a_leave(leave: tuple) -> None:
    m = Membership(fast_leave=True)
    m.apply(0, POD, v3((IS_EX, G, ())))
    assert m.apply(1, POD, v3(leave)) == {G} and m.groups() == set()


def test_v3_report_with_several_groups() -> None:
    m = Membership(fast_leave=True)
    assert m.apply(0, NODE, v3((TO_EX, G, ()), (ALLOW, G2, ["s"]))) == {G, G2}
    assert m.members(G) == {NODE: exc()} and m.members(G2) == {NODE: inc("s")}
    assert m.apply(1, NODE, v3((TO_IN, G, ()), (ALLOW, G2, ["s"]))) == {G}
    assert m.groups() == {G2}


def test_v3_records_without_effect() -> None:
    m = Membership()
    assert m.apply(0, POD, v3((BLOCK, G, ["s"]), (ALLOW, G2, []), (TO_IN, G, ()))) == set()
    assert m.groups() == set() and m.due_queries(0) == []


def test_query_is_not_a_membership_event() -> None:
    with pytest.raises(TypeError):
        Membership().apply(0, POD, Query(3))  # type: ignore[arg-type]


# ------------------------------------------------------------------ ageing

def test_expiry_at_exactly_the_timeout() -> None:
    m = Membership()
    m.apply(0, POD, ReportV2(G))
    assert m.expire(TIMEOUT - 0.001) == set()
    assert m.expire(TIMEOUT) == {G}
    assert m.groups() == set()


def test_refresh_extends() -> None:
    m = Membership(Timers(query_interval_s=10, max_response_s=1, robustness=2))  # 21 s
    m.apply(0, POD, ReportV2(G))
    m.apply(15, POD, v3((IS_EX, G, ())))  # any report for the group refreshes
    assert m.expire(21) == set()
    assert m.next_deadline() == 36
    assert m.expire(35.9) == set() and m.expire(36) == {G}


def test_each_group_ages_on_its_own() -> None:
    m = Membership()
    m.apply(0, POD, ReportV2(G))
    m.apply(100, POD, ReportV2(G2))
    assert m.expire(TIMEOUT) == {G} and m.groups() == {G2}
    assert m.next_deadline() == 100 + TIMEOUT


def test_apply_ages_out_first() -> None:
    m = Membership()
    m.apply(0, POD, ReportV2(G))
    assert m.apply(TIMEOUT, POD2, ReportV2(G2)) == {G, G2}
    assert m.members(G) == {}
    # A member whose timer ran out comes back as a new member, not as a refresh.
    assert m.apply(TIMEOUT + 1, POD, ReportV2(G)) == {G}


def test_next_deadline_is_earliest_of_expiry_and_query() -> None:
    m = Membership()
    assert m.next_deadline() is None
    m.apply(0, POD, ReportV2(G))
    m.apply(50, POD2, ReportV2(G2))
    assert m.next_deadline() == TIMEOUT
    m.apply(60, POD, ReportV2(G))  # refreshed: G2's timer is now first
    assert m.next_deadline() == 50 + TIMEOUT
    m.apply(70, POD2, LeaveV2(G2))
    assert m.next_deadline() == 70


def step_to_deadline(m: Membership) -> tuple[float, set[str], list[str]] | None:
    """Check that nothing happens just before `next_deadline()`, then act at it, as an event
    loop would: (deadline, groups expired, queries due), or None if there is no deadline."""
    d = m.next_deadline()
    if d is None:
        return None
    assert m.expire(d - 0.001) == set() and m.due_queries(d - 0.001) == []
    expired, queries = m.expire(d), m.due_queries(d)
    assert expired or queries, f"nothing happened at next_deadline() = {d}"
    return d, expired, queries


def test_next_deadline_after_a_join_is_the_expiry() -> None:
    m = Membership()
    m.apply(0, POD, ReportV2(G))
    assert m.next_deadline() == TIMEOUT
    assert step_to_deadline(m) == (TIMEOUT, {G}, [])
    assert m.next_deadline() is None


def test_next_deadline_walks_a_slow_leave() -> None:
    m = Membership()  # slow leave: 2 group-specific queries 1 s apart, removal after 2 s
    m.apply(0, POD, ReportV2(G))
    m.apply(10, POD, LeaveV2(G))
    assert m.next_deadline() == 10  # the first group-specific query, at once
    steps = []
    while (step := step_to_deadline(m)) is not None:
        steps.append(step)
    assert steps == [(10, set(), [G]), (11, set(), [G]), (12, {G}, [])]


def test_next_deadline_is_exact_under_random_events() -> None:
    """An event loop that sleeps until `next_deadline()` misses nothing and never wakes early."""
    rng = random.Random(3376)
    m = Membership(Timers(query_interval_s=10, max_response_s=1))  # 21 s timeout, LMQT 2 s
    members, groups = [POD, POD2, NODE], [G, G2]
    now = 0.0
    for _ in range(3000):
        event_at = now + rng.choice([0, 0.25, 0.5, 1, 1.5, 3, 10, 25])
        d = m.next_deadline()
        if d is not None and d <= event_at:
            assert d >= now
            step = step_to_deadline(m)
            assert step is not None
            now = step[0]
            continue
        now = event_at
        member, group = rng.choice(members), rng.choice(groups)
        kind = rng.choice([*RecordType, None, "v2", "leave"])
        if kind is None:
            m.remove_member(member)
        elif kind == "v2":
            m.apply(now, member, ReportV2(group), fast_leave=rng.random() < 0.3)
        elif kind == "leave":
            m.apply(now, member, LeaveV2(group), fast_leave=rng.random() < 0.3)
        else:
            srcs = rng.sample(["s1", "s2"], rng.randint(0, 2))
            m.apply(now, member, v3((kind, group, srcs)), fast_leave=rng.random() < 0.3)
        for who in members:  # the view and the kept count agree with the table
            held = m.filters_of(who)
            assert dict(held) == {g: f for g in m.groups()
                                  for w, f in m.members(g).items() if w == who}
            assert m.source_count(who) == sum(len(f.sources) for f in held.values())
    while step_to_deadline(m) is not None:
        pass
    assert m.groups() == set()
    assert [m.source_count(w) for w in members] == [0, 0, 0] and not m._sources


def test_many_refreshes_do_not_grow_state() -> None:
    m = Membership()
    for t in range(10_000):
        m.apply(float(t), POD, ReportV2(G))
    assert len(m._heap) < 200  # stale timer entries are compacted away
    assert m.expire(9_999 + TIMEOUT - 1) == set() and m.expire(9_999 + TIMEOUT) == {G}


def test_members_need_not_be_orderable() -> None:
    a, b = object(), object()  # opaque keys; equal deadlines must not compare them
    m = Membership()
    m.apply(0, a, ReportV2(G))
    m.apply(0, b, ReportV2(G))
    assert m.expire(TIMEOUT) == {G} and m.groups() == set()


# ------------------------------------------------------------------ removal

def test_remove_member_ends_all_its_memberships() -> None:
    m = Membership()
    m.apply(0, POD, v3((TO_EX, G, ()), (TO_EX, G2, ()), (ALLOW, "232.1.1.1", ["s"])))
    m.apply(0, POD2, ReportV2(G))
    assert m.remove_member(POD) == {G, G2, "232.1.1.1"}
    assert m.groups() == {G} and m.members(G) == {POD2: ANY_SOURCE}
    assert m.remove_member(POD) == set()
    assert m.expire(TIMEOUT) == {G}  # the removed member's timers are gone with it


# ------------------------------------------------------------------ real kernel sequences

DATA = Path(__file__).parent / "data"


def frames(name: str) -> list:
    lines = (DATA / f"{name}.hex").read_text().splitlines()
    return [parse_frame(bytes.fromhex(x)) for x in lines if x and not x.startswith("#")]


def test_captured_any_source_sequence() -> None:
    m = Membership()
    msgs = frames("v3_asm")  # TO_EX{} x2, BLOCK{.9} x2, TO_IN{} x2
    for t, msg in enumerate(msgs[:4]):
        m.apply(t, POD, msg)
    assert m.members("239.1.0.3") == {POD: exc("10.88.0.9")}
    m.apply(4, POD, msgs[4])
    m.apply(5, POD, msgs[5])
    assert m.due_queries(5) == ["239.1.0.3"] and m.expire(6) == {"239.1.0.3"}


def test_captured_source_specific_sequence() -> None:
    m = Membership(fast_leave=True)
    states = []
    for t, msg in enumerate(frames("v3_ssm")):
        m.apply(t, POD, msg)
        states.append(m.members("232.1.1.1").get(POD))
    assert states == [inc("10.88.0.1")] * 2 + [inc("10.88.0.1", "10.88.0.5")] * 2 + [
        inc("10.88.0.5")] * 2 + [None] * 2


def test_captured_query_answer_sets_state() -> None:
    m = Membership()
    _, answer = frames("v3_query_response")
    assert m.apply(0, POD, answer) == {"232.1.1.2", "239.1.0.4"}
    assert m.members("232.1.1.2") == {POD: inc("10.88.0.1")}
    assert m.members("239.1.0.4") == {POD: ANY_SOURCE}
