"""When the agent sends general IGMP queries to its local pods, and with which parameters.

Owns the querier schedule of RFC 3376 §8.6-8.7 (startup burst, then the query interval) and the
choice of query version. Pure: the caller asks `due(now)`, builds the query from
`query_args()` with `igmp.packets.build_query` and its own addresses, sends it, then calls
`sent(now)`. There is no querier election: the agent is the only querier on its pod ports, which
no other router can reach (queries from pods are punted, never forwarded).

Version: we query with the HIGHEST configured version. A v3 general query is understood by v2
and v1 hosts as their own general query (RFC 3376 §7.2.1; a v2 host reads the first 8 bytes,
a v1 host ignores the max response code), while a v2 query would force v3 hosts into v2
compatibility mode for minutes (observed on Linux 6.18: it then even reports source-specific
joins as plain v2 joins). Lower configured versions only say which reports we accept, which
the parser does anyway.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.multicast.igmp.membership import Timers

SUPPORTED_VERSIONS = (1, 2, 3)
_V2_MAX_RESP_S = 25.5  # 8-bit field in tenths of a second


@dataclass(frozen=True)
class QueryArgs:
    """The protocol fields of the next general query (addresses are the caller's)."""

    version: int
    max_resp_s: float
    qrv: int
    qqic_s: int


@dataclass
class Querier:
    """General-query schedule, starting due at `start_s`.

    After the first query, `startup_query_count - 1` more follow `startup_interval_s` apart (so a
    pod that missed the first still reports promptly after an agent restart), then one per
    `interval_s`. The next query is timed from the actual send, not from the planned time: an
    agent that was stalled sends one query late rather than a burst of catch-up queries.
    """

    interval_s: float = 125.0
    versions: tuple[int, ...] = SUPPORTED_VERSIONS
    startup_query_count: int = 2
    startup_interval_s: float | None = None  # default interval_s / 4 (RFC 3376 §8.7)
    max_response_s: float = 10.0
    robustness: int = 2
    start_s: float = 0.0
    _sent: int = field(default=0, init=False)
    _next: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        if self.interval_s <= 0:
            raise ValueError("interval_s must be positive")
        if not self.versions or not set(self.versions) <= set(SUPPORTED_VERSIONS):
            raise ValueError(f"versions must be a non-empty subset of {SUPPORTED_VERSIONS}")
        if self.startup_query_count < 1:
            raise ValueError("startup_query_count must be >= 1")
        if self.startup_interval_s is None:
            self.startup_interval_s = self.interval_s / 4
        if self.startup_interval_s <= 0:
            raise ValueError("startup_interval_s must be positive")
        if not 0 < self.max_response_s < self.interval_s:
            raise ValueError("max_response_s must be positive and below interval_s")
        if self.query_version() == 2 and self.max_response_s > _V2_MAX_RESP_S:
            raise ValueError(f"a v2 query cannot carry max response above {_V2_MAX_RESP_S} s")
        self._next = self.start_s

    @classmethod
    def from_timers(cls, timers: Timers, versions: tuple[int, ...] = SUPPORTED_VERSIONS,
                    start_s: float = 0.0) -> Querier:
        """The querier matching a membership table's timers, so both agree on the intervals."""
        return cls(interval_s=timers.query_interval_s, versions=versions,
                   startup_query_count=timers.robustness,
                   max_response_s=timers.max_response_s, robustness=timers.robustness,
                   start_s=start_s)

    def due(self, now: float) -> bool:
        return now >= self._next

    def next_due(self) -> float:
        return self._next

    def sent(self, now: float) -> None:
        """Record that a general query went out at `now`."""
        self._sent += 1
        startup = self._sent < self.startup_query_count
        assert self.startup_interval_s is not None  # set in __post_init__
        self._next = now + (self.startup_interval_s if startup else self.interval_s)

    def restart(self, now: float) -> None:
        """Begin a new startup burst at `now` (agent reconnected to its switch, ports reset)."""
        self._sent = 0
        self._next = now

    def in_startup(self) -> bool:
        return self._sent < self.startup_query_count

    def query_version(self) -> int:
        return max(self.versions)

    def query_args(self) -> QueryArgs:
        """Fields for `build_query`. QQIC announces our interval so v3 hosts can adopt it."""
        return QueryArgs(version=self.query_version(), max_resp_s=self.max_response_s,
                         qrv=self.robustness, qqic_s=round(self.interval_s))
