"""igmp.querier: general-query schedule and the version/fields of the query."""

from __future__ import annotations

import pytest

from agent.multicast.igmp.membership import Timers
from agent.multicast.igmp.packets import Query, build_query, parse_frame
from agent.multicast.igmp.querier import Querier, QueryArgs


def test_due_at_start_then_startup_burst_then_interval() -> None:
    q = Querier(125.0, (1, 2, 3))
    assert q.due(0) and q.next_due() == 0 and q.in_startup()
    q.sent(0)
    assert not q.due(31.24) and q.due(31.25)  # startup interval = interval / 4
    q.sent(31.25)
    assert not q.in_startup()
    assert q.next_due() == 31.25 + 125
    q.sent(156.25)
    assert q.next_due() == 281.25


def test_start_time_and_custom_startup() -> None:
    q = Querier(60, (3,), startup_query_count=3, startup_interval_s=5, start_s=100)
    assert not q.due(99.9) and q.due(100)
    times = []
    now = 100.0
    for _ in range(5):
        times.append(now)
        q.sent(now)
        now = q.next_due()
    assert times == [100, 105, 110, 170, 230]


def test_single_startup_query() -> None:
    q = Querier(10, (2,), startup_query_count=1, max_response_s=1)
    q.sent(0)
    assert q.next_due() == 10


def test_late_send_does_not_burst() -> None:
    q = Querier(10, (3,), startup_query_count=1, max_response_s=1)
    q.sent(0)
    q.sent(35)  # the agent was stalled: one query, then the regular rhythm from there
    assert q.next_due() == 45 and not q.due(44)


def test_restart_begins_a_new_burst() -> None:
    q = Querier(100, (3,))
    q.sent(0)
    q.sent(25)
    q.restart(500)
    assert q.due(500) and q.in_startup()
    q.sent(500)
    assert q.next_due() == 525


@pytest.mark.parametrize("versions,expected", [((1, 2, 3), 3), ((1, 2), 2), ((1,), 1),
                                               ((3,), 3), ((2, 1), 2)])
def test_query_version_is_the_highest(versions: tuple[int, ...], expected: int) -> None:
    assert Querier(125, versions).query_version() == expected


def test_query_args_build_a_valid_query() -> None:
    q = Querier(125, (1, 2, 3), max_response_s=10)
    args = q.query_args()
    assert args == QueryArgs(version=3, max_resp_s=10, qrv=2, qqic_s=125)
    frame = build_query(args.version, "10.77.0.254", "02:00:00:00:00:fe",
                        max_resp_s=args.max_resp_s, qrv=args.qrv, qqic_s=args.qqic_s)
    assert parse_frame(frame) == Query(3, "0.0.0.0", 10.0, (), 2, 125, False,
                                       src="10.77.0.254", dst="224.0.0.1")


def test_from_timers_matches_membership() -> None:
    t = Timers(query_interval_s=60, max_response_s=5, robustness=3)
    q = Querier.from_timers(t, versions=(2, 3), start_s=7)
    assert q.next_due() == 7 and q.startup_query_count == 3 and q.startup_interval_s == 15
    assert q.query_args() == QueryArgs(version=3, max_resp_s=5, qrv=3, qqic_s=60)


@pytest.mark.parametrize("kwargs", [
    {"versions": ()}, {"versions": (4,)}, {"versions": (0, 3)}, {"interval_s": 0},
    {"startup_query_count": 0}, {"startup_interval_s": 0}, {"max_response_s": 125},
    {"max_response_s": 0}, {"versions": (1, 2), "max_response_s": 30},
])
def test_rejects_bad_config(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Querier(**{"interval_s": 125, "versions": (3,), **kwargs})
