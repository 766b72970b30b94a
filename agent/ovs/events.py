"""The switch adaptor's event thread: callbacks in order, packet-ins in batches, shed when full.

The receive thread must never block on the agent, so everything it hands up goes through a
bounded queue served by one event thread: connection callbacks run as they come, and punted
packets that waited back to back are delivered as one batch (at most ``PACKET_IN_BATCH``), so
a burst costs the agent one settle, not one per punt. When the agent falls behind and the
queue is full, punts are shed and counted instead of stalling the OpenFlow channel.
"""

from __future__ import annotations

import contextlib
import queue
from collections.abc import Callable

from agent import metrics
from agent.flowsync.switch import PacketIn
from pipeline.cookies import feature_of

PACKET_IN_QUEUE = 4096
PACKET_IN_BATCH = 256

Event = Callable[[], None] | PacketIn  # what the event thread runs: a callback or a punt


class EventQueue:
    def __init__(self, deliver: Callable[[list[PacketIn]], None],
                 size: int = PACKET_IN_QUEUE) -> None:
        self._deliver = deliver
        self._queue: queue.Queue[Event | None] = queue.Queue(size)
        self.dropped_packet_ins = 0

    def call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the event thread, after what is queued (waits for room)."""
        self._queue.put(fn)

    def punt(self, pin: PacketIn) -> None:
        """Queue a packet-in; shed it (counted by feature) if the agent is that far behind."""
        try:
            self._queue.put_nowait(pin)
        except queue.Full:
            self.dropped_packet_ins += 1
            feature = feature_of(pin.cookie)
            metrics.PACKET_INS_DROPPED.labels(
                feature=feature.name.lower() if feature is not None else "unknown").inc()

    def close(self) -> None:
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)

    def run(self, stopping: Callable[[], bool]) -> None:
        """Serve the queue until ``close`` or ``stopping()``."""
        pending: list[Event | None] = []  # an item taken while gathering a batch, not yet run
        while not stopping():
            if pending:
                item = pending.pop()
            else:
                try:
                    item = self._queue.get(timeout=0.5)
                except queue.Empty:
                    continue
            if item is None:
                return
            if not isinstance(item, PacketIn):
                item()
                continue
            batch = [item]
            while len(batch) < PACKET_IN_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if not isinstance(nxt, PacketIn):
                    pending.append(nxt)  # a callback (or the close) keeps its place
                    break
                batch.append(nxt)
            self._deliver(batch)
