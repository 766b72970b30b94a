"""agent.ovs.events: callbacks in order, back-to-back punts as one batch, shedding when full."""

from __future__ import annotations

import threading

from prometheus_client import REGISTRY

from agent.flowsync.switch import PacketIn
from agent.ovs.events import PACKET_IN_BATCH, EventQueue
from pipeline.cookies import Cookie, Feature


def _pin(n: int) -> PacketIn:
    return PacketIn(n, b"\x01", b"", None, Cookie(1, Feature.IGMP, n).pack(), 0, 1)


def test_punts_waiting_together_are_one_batch_and_callbacks_keep_their_place() -> None:
    seen: list[object] = []
    q = EventQueue(lambda batch: seen.append([p.in_port for p in batch]),
                   size=PACKET_IN_BATCH + 10)
    for i in range(3):
        q.punt(_pin(i))
    q.call(lambda: seen.append("callback"))
    for i in range(3, PACKET_IN_BATCH + 5):
        q.punt(_pin(i))
    q.close()
    q.run(lambda: False)  # serves what is queued, then the close
    assert seen[0] == [0, 1, 2] and seen[1] == "callback"
    assert seen[2] == list(range(3, 3 + PACKET_IN_BATCH))  # at most one batch's worth
    assert seen[3] == list(range(3 + PACKET_IN_BATCH, PACKET_IN_BATCH + 5))


def test_a_full_queue_sheds_punts_and_counts_them() -> None:
    q = EventQueue(lambda batch: None, size=2)
    before = REGISTRY.get_sample_value("kube_mcast_packet_ins_dropped_total",
                                       {"feature": "igmp"}) or 0
    for i in range(5):
        q.punt(_pin(i))
    assert q.dropped_packet_ins == 3
    assert REGISTRY.get_sample_value("kube_mcast_packet_ins_dropped_total",
                                     {"feature": "igmp"}) == before + 3


def test_stops_when_told() -> None:
    q = EventQueue(lambda batch: None)
    stop = threading.Event()
    t = threading.Thread(target=q.run, args=(stop.is_set,))
    t.start()
    stop.set()
    t.join(2)
    assert not t.is_alive()
