"""IGMP group membership, router side: which member wants which group from which sources, and
until when.

Owns the per-(group, member) state built from parsed reports (`igmp.packets`), its ageing, and
the group-specific queries that a slow leave asks for. It is pure and deterministic: time is
passed in as `now` (seconds, any monotonic origin); the caller sends the queries and programs OVS
from what the methods return. A member is any hashable key the caller picks, e.g.
`("pod", "ns/name")` or `("node", "192.168.77.2")`.

Source filters follow RFC 3376 per member: IS_EX/TO_EX(S) -> EXCLUDE S; IS_IN/TO_IN(S) -> INCLUDE S;
ALLOW(S) adds S to an INCLUDE set or removes it from an EXCLUDE set; BLOCK(S) does the reverse.
v1/v2 reports mean EXCLUDE {} (every source); a v2 leave, TO_IN{}/IS_IN{}, or a BLOCK that empties
an INCLUDE set ends the membership.

Simplifications of the RFC 3376 §6 router, deliberate:
- State is per member, not merged per interface: a member's report states that member's whole
  wish, so IS_IN replaces (an RFC router, which merges hosts, would add).
- One timer per (group, member) instead of one per source; any report for the group from the
  member that does not end the membership refreshes it to `membership_timeout_s`.
- Source changes take effect at once (no group-and-source-specific queries). Only the end of a
  membership may wait: with slow leave, the member keeps its old filter (traffic keeps flowing)
  for `last_member_query_time_s` while the group is queried, and a report in that window cancels
  the leave. A second leave from a member already leaving changes nothing (no query storm from a
  kernel that repeats its TO_IN{}).
- A timer that runs out at `t` is expired for `expire(t)`: the deadline itself is too late.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections import deque
from collections.abc import Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from agent.multicast.igmp.packets import LeaveV2, RecordType, ReportV1, ReportV2, ReportV3

Member = Hashable


class FilterMode(enum.Enum):
    INCLUDE = "include"
    EXCLUDE = "exclude"


@dataclass(frozen=True)
class SourceFilter:
    """What one member accepts for one group: INCLUDE these sources, or EXCLUDE these."""

    mode: FilterMode
    sources: frozenset[str] = frozenset()

    def admits(self, source: str) -> bool:
        return (source in self.sources) == (self.mode is FilterMode.INCLUDE)

    @property
    def is_empty(self) -> bool:
        """INCLUDE {} accepts nothing: that is no membership at all."""
        return self.mode is FilterMode.INCLUDE and not self.sources


ANY_SOURCE = SourceFilter(FilterMode.EXCLUDE)
NO_SOURCE = SourceFilter(FilterMode.INCLUDE)


def transition(current: SourceFilter, kind: RecordType, sources: Iterable[str]) -> SourceFilter:
    """The filter after one group record, for a single member (see the module docstring)."""
    s = frozenset(sources)
    if kind in (RecordType.IS_EX, RecordType.TO_EX):
        return SourceFilter(FilterMode.EXCLUDE, s)
    if kind in (RecordType.IS_IN, RecordType.TO_IN):
        return SourceFilter(FilterMode.INCLUDE, s)
    include = current.mode is FilterMode.INCLUDE
    if kind is RecordType.ALLOW:
        return SourceFilter(current.mode, current.sources | s if include else current.sources - s)
    if kind is RecordType.BLOCK:
        return SourceFilter(current.mode, current.sources - s if include else current.sources | s)
    raise ValueError(f"record type {kind!r}")


@dataclass(frozen=True)
class Timers:
    """RFC 3376 §8 variables, in seconds. Defaults are the RFC's (and Antrea's)."""

    query_interval_s: float = 125.0
    max_response_s: float = 10.0
    robustness: int = 2
    last_member_query_interval_s: float = 1.0
    last_member_query_count: int = 2

    def __post_init__(self) -> None:
        if self.robustness < 1 or self.last_member_query_count < 1:
            raise ValueError("robustness and last_member_query_count must be >= 1")
        if min(self.query_interval_s, self.max_response_s,
               self.last_member_query_interval_s) <= 0:
            raise ValueError("intervals must be positive")
        if self.max_response_s >= self.query_interval_s:
            raise ValueError("max_response_s must be below query_interval_s (RFC 3376 §8.3)")

    @property
    def membership_timeout_s(self) -> float:
        """Group membership interval: robustness x query interval + max response (§8.4)."""
        return self.robustness * self.query_interval_s + self.max_response_s

    @property
    def last_member_query_time_s(self) -> float:
        """How long a slow leave waits for an answer to the group-specific queries (§8.14)."""
        return self.last_member_query_count * self.last_member_query_interval_s


@dataclass
class _Entry:
    filter: SourceFilter
    expires: float
    leaving: bool = False  # slow leave pending: `filter` still forwards until `expires`


class Membership:
    """Membership table of one agent. Methods returning `set[str]` return the groups whose
    forwarding state changed: a member added or removed, or a member's filter changed."""

    def __init__(self, timers: Timers | None = None, fast_leave: bool = False) -> None:
        self.timers = timers or Timers()
        self.fast_leave = fast_leave
        self._groups: dict[str, dict[Member, _Entry]] = {}
        self._of: dict[Member, set[str]] = {}
        self._sources: dict[Member, int] = {}  # member -> sources listed over its groups
        # Lazy min-heap of (expires, seq, group, member): a refresh pushes a new item and the
        # old one is skipped when popped, so ageing is O(log n) per report, not a full scan.
        self._heap: list[tuple[float, int, str, Member]] = []
        self._seq = itertools.count()
        self._entries = 0
        self._queries: dict[str, deque[float]] = {}  # group -> times of queries still to send

    # -------------------------------------------------------------- events

    def apply(self, now: float, member: Member, event: ReportV1 | ReportV2 | LeaveV2 | ReportV3,
              *, fast_leave: bool | None = None) -> set[str]:
        """Apply one parsed report or leave from `member`.

        `fast_leave` overrides the constructor's choice for this call: True for a member that is
        alone behind its port (a pod's veth, a remote node), so its leave needs no query.
        Memberships that ran out by `now` are aged first and their groups are returned too.
        """
        fast = self.fast_leave if fast_leave is None else fast_leave
        changed = self.expire(now)
        records: list[tuple[str, RecordType, tuple[str, ...]]]
        if isinstance(event, ReportV1 | ReportV2):
            records = [(event.group, RecordType.IS_EX, ())]
        elif isinstance(event, LeaveV2):
            records = [(event.group, RecordType.TO_IN, ())]
        elif isinstance(event, ReportV3):
            records = [(r.group, r.kind, r.sources) for r in event.records]
        else:
            raise TypeError(f"not a membership report: {event!r}")
        for group, kind, sources in records:
            if self._apply_record(now, member, group, kind, sources, fast):
                changed.add(group)
        return changed

    def _apply_record(self, now: float, member: Member, group: str, kind: RecordType,
                      sources: tuple[str, ...], fast: bool) -> bool:
        entry = self._groups.get(group, {}).get(member)
        # A leaving member has told us it wants nothing: ALLOW/BLOCK start from empty.
        base = entry.filter if entry is not None and not entry.leaving else NO_SOURCE
        new = transition(base, kind, sources)
        if new.is_empty:
            if entry is None:
                return False
            if fast:
                self._drop(group, member)
                return True
            if not entry.leaving:
                entry.leaving = True
                self._set_expiry(group, member, entry,
                                 min(entry.expires, now + self.timers.last_member_query_time_s))
                interval = self.timers.last_member_query_interval_s
                self._queries[group] = deque(
                    now + i * interval for i in range(self.timers.last_member_query_count))
            return False
        if entry is None:
            entry = _Entry(new, 0.0)
            self._groups.setdefault(group, {})[member] = entry
            self._of.setdefault(member, set()).add(group)
            self._sources[member] = self._sources.get(member, 0) + len(new.sources)
            self._entries += 1
            changed = True
        else:
            changed = entry.filter != new
            self._sources[member] += len(new.sources) - len(entry.filter.sources)
            entry.filter = new
            if entry.leaving:
                entry.leaving = False
                self._settle_queries(group)
        self._set_expiry(group, member, entry, now + self.timers.membership_timeout_s)
        return changed

    def hold(self, now: float, member: Member) -> None:
        """Keep ``member``'s memberships as if it had just answered a query: it could not,
        because policy keeps queries from it (its leaves and deletion still end them)."""
        for group in self._of.get(member, ()):
            entry = self._groups[group][member]
            if not entry.leaving:
                self._set_expiry(group, member, entry, now + self.timers.membership_timeout_s)

    def remove_member(self, member: Member) -> set[str]:
        """End every membership of `member` at once (pod or node deleted)."""
        groups = set(self._of.get(member, ()))
        for group in groups:
            self._drop(group, member)
        return groups

    def expire(self, now: float) -> set[str]:
        """Drop memberships whose timer ran out at or before `now`."""
        changed: set[str] = set()
        while self._heap and self._heap[0][0] <= now:
            expires, _, group, member = heapq.heappop(self._heap)
            entry = self._groups.get(group, {}).get(member)
            if entry is not None and entry.expires == expires:
                self._drop(group, member)
                changed.add(group)
        return changed

    def due_queries(self, now: float) -> list[str]:
        """Groups to send a group-specific query for now (slow leaves). Each leave asks for
        `last_member_query_count` queries, `last_member_query_interval_s` apart; overdue ones
        are coalesced into one. Send them with max response `last_member_query_interval_s`."""
        due = []
        for group, times in list(self._queries.items()):
            if times[0] <= now:
                due.append(group)
                while times and times[0] <= now:
                    times.popleft()
                if not times:
                    del self._queries[group]
        return sorted(due)

    # -------------------------------------------------------------- queries on the state

    def members(self, group: str) -> dict[Member, SourceFilter]:
        return {m: e.filter for m, e in self._groups.get(group, {}).items()}

    def groups(self) -> set[str]:
        return set(self._groups)

    def has_group(self, group: str) -> bool:
        """Whether ``group`` has any member (cheap: no copy of the group set)."""
        return group in self._groups

    def group_count(self) -> int:
        return len(self._groups)

    def filters_of(self, member: Member) -> Mapping[str, SourceFilter]:
        """Every group ``member`` is in, with its filter (to check a report against caps): a
        view read in place, so a report costs nothing proportional to the member's groups.
        Valid until the membership changes."""
        return _Held(self._groups, self._of.get(member, _NO_GROUPS), member)

    def source_count(self, member: Member) -> int:
        """Sources ``member`` lists over all its groups (kept as reports change them)."""
        return self._sources.get(member, 0)

    def next_deadline(self) -> float | None:
        """When to call `expire`/`due_queries` next, or None if neither has anything to do.

        The earliest of: a membership running out (a join's timeout, or the end of a slow
        leave's last-member query time) and a group-specific query falling due. At this time one
        of the two acts; before it, neither does (both act at `t <= now`). May be in the past
        if the caller is late."""
        while self._heap:
            expires, _, group, member = self._heap[0]
            entry = self._groups.get(group, {}).get(member)
            if entry is not None and entry.expires == expires:
                break
            heapq.heappop(self._heap)  # stale: refreshed or dropped since
        times = [q[0] for q in self._queries.values()]
        if self._heap:
            times.append(self._heap[0][0])
        return min(times, default=None)

    # -------------------------------------------------------------- internals

    def _set_expiry(self, group: str, member: Member, entry: _Entry, expires: float) -> None:
        entry.expires = expires
        heapq.heappush(self._heap, (expires, next(self._seq), group, member))
        if len(self._heap) > 4 * self._entries + 64:
            # Many refreshes left many stale items: rebuild from the live entries.
            self._heap = [(e.expires, next(self._seq), g, m)
                          for g, ms in self._groups.items() for m, e in ms.items()]
            heapq.heapify(self._heap)

    def _drop(self, group: str, member: Member) -> None:
        members = self._groups[group]
        self._sources[member] -= len(members[member].filter.sources)
        del members[member]
        if not members:
            del self._groups[group]
        self._of[member].discard(group)
        if not self._of[member]:
            del self._of[member]
            del self._sources[member]
        self._entries -= 1
        self._settle_queries(group)

    def _settle_queries(self, group: str) -> None:
        """Stop querying `group` once no member of it is leaving any more."""
        if group in self._queries and not any(
                e.leaving for e in self._groups.get(group, {}).values()):
            del self._queries[group]


_NO_GROUPS: frozenset[str] = frozenset()


class _Held(Mapping[str, SourceFilter]):
    """One member's groups and filters, read from the table in place (``filters_of``)."""

    __slots__ = ("_groups", "_mine", "_member")

    def __init__(self, groups: dict[str, dict[Member, _Entry]], mine: set[str] | frozenset[str],
                 member: Member) -> None:
        self._groups, self._mine, self._member = groups, mine, member

    def __getitem__(self, group: str) -> SourceFilter:
        if group not in self._mine:
            raise KeyError(group)
        return self._groups[group][self._member].filter

    def __contains__(self, group: object) -> bool:
        return group in self._mine

    def __iter__(self) -> Iterator[str]:
        return iter(self._mine)

    def __len__(self) -> int:
        return len(self._mine)
