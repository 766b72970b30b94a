"""Watches: the replay log behind them (every change with its cluster-global resourceVersion,
kept in order so that a watch can start from any version still in the log, and get 410 Gone
for one the log has compacted away) and the HTTP stream of a watch.

Owns: the event record, the log (bounded; compaction on demand), waking followers on change,
ending every live watch at shutdown, dropping their connections on request (a test's way to
simulate a broken network), what a selective watch sees, the stream (`application/json`, one
event a line; an expired version is an ERROR event with code 410, as from a real server's
watch cache). Knows nothing of what an object means: the caller renders events.
May import: the standard library, aiohttp, kmock (its resource type) and
`tools.kubeapi.objects` (a Status).
"""

from __future__ import annotations

import asyncio
import bisect
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from kmock import resource

from tools.kubeapi.objects import status_body


@dataclass(frozen=True)
class Event:
    """One change. `obj` is the new state (the last one for DELETED); `old` the state before
    (None for ADDED), so that a selective watch can tell objects entering or leaving its view."""

    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    resource: resource
    namespace: str | None
    name: str
    obj: dict[str, Any]
    old: dict[str, Any] | None = field(default=None)


class Expired(Exception):
    """The version asked for is older than the oldest the log still holds (HTTP 410)."""

    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(f"too old resource version: {requested} ({oldest})")
        self.requested = requested
        self.oldest = oldest


class Dropped(Exception):
    """The connection of this watch is to be cut (a test asked for it)."""


class WatchLog:
    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = max(1, capacity)
        self._events: list[Event] = []
        self._compacted = 0  # every event with rv <= this is gone from the log
        self._changed = asyncio.Event()
        self._drops = 0
        self._closing = False

    @property
    def compacted(self) -> int:
        return self._compacted

    def append(self, event: Event) -> None:
        self._events.append(event)
        if len(self._events) > self.capacity + self.capacity // 4 + 1:  # compact in batches
            self._forget(len(self._events) - self.capacity)
        self._wake()

    def compact(self, through: int | None = None) -> int:
        """Forget every event up to `through` (default: all); returns the compacted version."""
        last = self._events[-1].rv if self._events else self._compacted
        through = last if through is None else min(through, last)
        keep = bisect.bisect_right(self._events, through, key=lambda e: e.rv)
        self._forget(keep)
        self._compacted = max(self._compacted, through)
        self._wake()  # a follower behind the new horizon must learn that it expired
        return self._compacted

    def since(self, rv: int) -> list[Event]:
        """The events after `rv`, in order; `Expired` if some of them were forgotten."""
        if rv < self._compacted:
            raise Expired(rv, self._compacted + 1)
        start = bisect.bisect_right(self._events, rv, key=lambda e: e.rv)
        return self._events[start:]

    async def follow(self, rv: int, timeout: float) -> AsyncIterator[Event]:
        """The events after `rv` as they happen, for `timeout` seconds or until close()."""
        deadline = time.monotonic() + timeout
        drops = self._drops
        while not self._closing:
            waiter = self._changed  # taken before reading: no change can slip in between
            batch = self.since(rv)
            for event in batch:
                yield event
                rv = event.rv
            if self._drops != drops:
                raise Dropped()
            if batch:
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(waiter.wait(), remaining)
            except TimeoutError:
                return

    def drop_all(self) -> None:
        """Make every live watch cut its connection (without a clean end of stream)."""
        self._drops += 1
        self._wake()

    def close(self) -> None:
        """End every live watch cleanly (server shutdown)."""
        self._closing = True
        self._wake()

    def _forget(self, count: int) -> None:
        if count > 0:
            self._compacted = max(self._compacted, self._events[count - 1].rv)
            del self._events[:count]

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


def seen_as(event: Event, visible: Callable[[dict[str, Any]], bool]) -> str | None:
    """What a selective watch sees: an object entering its view is ADDED, leaving DELETED."""
    now_in = visible(event.obj)
    if event.type != "MODIFIED":
        return event.type if now_in else None
    was_in = event.old is not None and visible(event.old)
    if now_in:
        return "MODIFIED" if was_in else "ADDED"
    return "DELETED" if was_in else None


async def stream(raw: web.BaseRequest, log: WatchLog, begin: Callable[[], tuple[int, bytes]],
                 timeout: float, render: Callable[[Event], bytes | None]) -> web.StreamResponse:
    """Serve one watch: `begin()` gives the version to follow from and what to send first
    (called once the headers are out, with no await between it and following the log), then
    every later event that `render` turns into a line, for `timeout` seconds."""
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(raw)
    try:
        start, first = begin()
        if first:
            await response.write(first)
        async for event in log.follow(start, timeout):
            if (line := render(event)) is not None:
                await response.write(line)
    except Expired as exc:
        error = {"type": "ERROR", "object": status_body(410, "Expired", str(exc))}
        await response.write(json.dumps(error).encode() + b"\n")
    except Dropped:
        if raw.transport is not None:
            raw.transport.abort()  # no end of stream: the client sees a broken connection
        return response
    except ConnectionError:
        return response
    await response.write_eof()
    return response
