"""Packet-ins to the feature that punted them.

A punt flow's cookie names its owner (``pipeline.cookies.Feature``), and OVS returns that cookie
with every packet-in, so the router needs no knowledge of any feature's userdata: each feature
registers one handler for its own punts (multicast: IGMP; policy and egress later). Packet-ins
come in batches (those that waited back to back); each handler gets its share as one batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from agent import metrics
from agent.flowsync.switch import PacketIn
from pipeline.cookies import Feature, feature_of

log = logging.getLogger(__name__)

Handler = Callable[[Sequence[PacketIn]], None]


class PacketInRouter:
    def __init__(self) -> None:
        self._handlers: dict[Feature, Handler] = {}

    def register(self, feature: Feature, handler: Handler) -> None:
        if feature in self._handlers:
            raise ValueError(f"packet-ins of {feature.name} already have a handler")
        self._handlers[feature] = handler

    def __call__(self, batch: Sequence[PacketIn]) -> None:
        shares: dict[Feature, list[PacketIn]] = {}
        for pin in batch:
            feature = feature_of(pin.cookie)
            if feature is None or feature not in self._handlers:
                metrics.PACKET_INS_UNROUTED.inc()
                log.debug("packet-in with cookie %#x (table %d): no handler", pin.cookie,
                          pin.table_id)
                continue
            shares.setdefault(feature, []).append(pin)
        for feature, share in shares.items():
            self._handlers[feature](share)
