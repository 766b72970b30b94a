"""Oversized multicast the switch punted (packet-ins of ``Feature.OVERSIZE``): logged, bounded.

The datapath counts every frame over its limit, per source (``pipeline.oversize``: a counting
meter per pod port, one for the tunnel, one for the uplink; read by ``stats`` and the
collector), and shows the agent a few samples a second through one meter for the whole node.
Each sample becomes a WARNING naming the group, the source address, who sent it (the pod, the
tunnel and its peer node, or the uplink), the frame's size and the limit it broke: at most one
line per (group, source) per ``LOG_INTERVAL_S``, the next one saying how many were held back.
The table of last lines is bounded (``MAX_TRACKED``, the oldest forgotten first), so a stream
of ever-new sources costs memory for ``MAX_TRACKED`` of them only; the punt meter bounds the
lines themselves.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from agent.flowsync.switch import PacketIn
from pipeline.oversize import Punted
from pipeline.registers import PortClass

log = logging.getLogger(__name__)

LOG_INTERVAL_S = 10.0
MAX_TRACKED = 4096
_ETH_HEADER = 14
_ETH_TYPE_IP = b"\x08\x00"


@dataclass(frozen=True)
class Oversized:
    """One punted frame: where it went and came from, its size and the limit it broke."""

    group: str
    source: str
    sender: str  # "pod ns/name", "the tunnel from node 192.168.77.2", "the uplink"
    size: int
    limit: int
    punted_from: PortClass

    def text(self, held_back: int) -> str:
        why = ("pods may send (more would not fit the tunnel)" if self.punted_from is PortClass.POD
               else "pods can receive (their interface MTU)")
        more = f"; {held_back} more from this source to this group since the last line" \
            if held_back else ""
        return (f"multicast to {self.group} from {self.source} ({self.sender}) dropped: a "
                f"{self.size}-byte frame, over the {self.limit} bytes {why}{more}")


def _ipv4_ends(frame: bytes) -> tuple[str, str] | None:
    """(source, destination) of an Ethernet/IPv4 frame (None: not one)."""
    ip = _ETH_HEADER
    if len(frame) < ip + 20 or frame[12:14] != _ETH_TYPE_IP:
        return None
    src = ipaddress.IPv4Address(frame[ip + 12:ip + 16])
    dst = ipaddress.IPv4Address(frame[ip + 16:ip + 20])
    return str(src), str(dst)


class OversizeLog:
    """The packet-in handler of ``Feature.OVERSIZE`` (runs on the switch's event thread)."""

    def __init__(self, pod_at: Callable[[int], str | None],
                 clock: Callable[[], float] = time.monotonic,
                 interval_s: float = LOG_INTERVAL_S, max_tracked: int = MAX_TRACKED) -> None:
        """``pod_at(ofport)``: the ``namespace/name`` of the pod on that port, if any."""
        self._pod_at = pod_at
        self._clock = clock
        self._interval = interval_s
        self._max = max_tracked
        # (group, source) -> (when last logged, samples held back since): oldest line first
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def handle_packet_ins(self, batch: Sequence[PacketIn]) -> None:
        for ev in batch:
            found = self.describe(ev)
            if found is None:
                log.debug("oversize punt on port %d not understood (userdata %s)", ev.in_port,
                          ev.userdata.hex())
                continue
            self._log(found)

    def describe(self, ev: PacketIn) -> Oversized | None:
        punted = Punted.parse(ev.userdata)
        ends = _ipv4_ends(ev.data)
        if punted is None or ends is None:
            return None
        if punted.source is PortClass.POD:
            ref = self._pod_at(ev.in_port)
            sender = f"pod {ref}" if ref else f"unknown pod port {ev.in_port}"
        elif punted.source is PortClass.TUNNEL:
            sender = f"the tunnel from node {ev.tun_src}" if ev.tun_src else "the tunnel"
        else:
            sender = "the uplink"
        return Oversized(ends[1], ends[0], sender, len(ev.data), punted.limit, punted.source)

    def _log(self, o: Oversized) -> None:
        key = (o.group, o.source)
        now = self._clock()
        last, held = self._last.get(key, (float("-inf"), 0))
        if now - last < self._interval:
            self._last[key] = (last, held + 1)
            return
        log.warning("%s", o.text(held))
        self._last.pop(key, None)
        self._last[key] = (now, 0)  # to the end: the oldest lines are forgotten first
        while len(self._last) > self._max:
            del self._last[next(iter(self._last))]

    def tracked(self) -> int:
        """(group, source) pairs whose last line is remembered."""
        return len(self._last)
