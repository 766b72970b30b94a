"""Multicast too big for where it goes: the size check, a counter per source, punts (pure).

A pod's interface takes full-size frames from outside while its 224.0.0.0/4 route keeps what
it sends within the tunnel (``agent.podnetwork``). A frame that still exceeds those limits
would be lost silently: a pod's on the tunnel's underlay, the tunnel's or the uplink's at the
receiving pod's veth. Instead it is counted, shown to the agent and dropped:

* the classifier's fork checks each frame once (``check``): a pod's against what pods may
  send, the tunnel's and the uplink's against what pods can receive. It is one comparison per
  packet in the datapath, made before replication, whatever the number of copies;
* an oversized frame leaves the path where its source is counted, through a counting meter of
  its own: a pod's in its egress metric table (after its egress policy, instead of its outbound
  metric), the tunnel's and the uplink's in routing (instead of a route);
* the output table punts it to the agent through one meter for the whole node (``PUNT_PPS``),
  with where it came from and its limit in the userdata, and delivers nothing.

Why meters count, not the flows: OVS translates everything after ``check_pkt_larger`` once per
outcome and credits the flows and groups of both outcomes with every packet (measured on OVS
3.1: a drop flow behind the check counts every packet of its source). A meter's statistics are
kept by the datapath, on the outcome actually taken. OVS takes a meter only as a flow's first
action, hence two flows on the way: the source's counting meter, then the node's punt meter.

IGMP never meets the check: its punt flows sit above the forks.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline import layout, priorities
from pipeline.model import (
    ETH_TYPE_IP,
    ApplyMeter,
    CheckPktLarger,
    Controller,
    Flow,
    GotoTable,
    Match,
    Meter,
)
from pipeline.registers import IN_CLASS, OVERSIZE, PortClass

COUNT_METER_BASE = 100_000
"""A source's counting meter has this id plus its port, so ``meter:100007`` counts port 7 (OVS
numbers ports below 65280; the IGMP punt meters take the bare port number)."""
COUNT_METER_PPS = 1_000_000
"""The counting meters' rate, never reached in practice: they are there for their count.
(Rate and burst stay small enough for the kernel datapath's 32-bit token buckets.)"""
PUNT_METER_ID = 200_000
PUNT_PPS = 10
"""Oversized frames the agent is shown per second, the whole node together."""

_USERDATA_LEN = 3
_PIPELINE = layout.multicast_pipeline()


def check(limit: int) -> CheckPktLarger:
    """The fork's check: sets ``OVERSIZE`` when the frame is longer than ``limit`` bytes."""
    return CheckPktLarger(limit, OVERSIZE)


def count_meter_id(port: int) -> int:
    if not 0 < port < PUNT_METER_ID - COUNT_METER_BASE:
        raise ValueError(f"port {port} has no oversize counting meter")
    return COUNT_METER_BASE + port


def count_meter(port: int) -> Meter:
    """The meter whose packet count is ``port``'s oversized multicast."""
    return Meter(count_meter_id(port), COUNT_METER_PPS, burst=COUNT_METER_PPS)


def punt_meter() -> Meter:
    return Meter(PUNT_METER_ID, PUNT_PPS, burst=PUNT_PPS)


@dataclass(frozen=True)
class Punted:
    """What an oversize punt's userdata says: where the frame came in, and the limit it broke."""

    source: PortClass
    limit: int

    def userdata(self) -> bytes:
        return bytes([int(self.source)]) + self.limit.to_bytes(2, "big")

    @classmethod
    def parse(cls, data: bytes) -> Punted | None:
        """The userdata of an oversize punt flow (None: not one)."""
        if len(data) != _USERDATA_LEN:
            return None
        try:
            return cls(PortClass(data[0]), int.from_bytes(data[1:], "big"))
        except ValueError:
            return None


def _flow(table: str, match: Match, actions: tuple[ApplyMeter, GotoTable | Controller],
          cookie: int) -> Flow:
    return _PIPELINE.check_flow(Flow(table, priorities.OVERSIZE, match, actions, cookie))


def pod_count_flow(ofport: int, cookie: int) -> Flow:
    """A pod's oversized multicast that passed its egress policy: counted by the pod's meter
    (its outbound metric does not count it), then punted by the output table."""
    return _flow(layout.EGRESS_METRIC,
                 Match.of((OVERSIZE, 1), in_port=ofport, eth_type=ETH_TYPE_IP),
                 (ApplyMeter(count_meter_id(ofport)), GotoTable(layout.OUTPUT)), cookie)


def received_count_flow(source: PortClass, port: int, cookie: int) -> Flow:
    """Oversized multicast from the tunnel or the uplink is routed nowhere: counted by the
    port's meter, then punted by the output table."""
    return _flow(layout.ROUTING,
                 Match.of((IN_CLASS, source), (OVERSIZE, 1), eth_type=ETH_TYPE_IP),
                 (ApplyMeter(count_meter_id(port)), GotoTable(layout.OUTPUT)), cookie)


def punt_flow(source: PortClass, limit: int, cookie: int) -> Flow:
    """Oversized multicast from ``source`` goes to the agent through the node's punt meter,
    and nowhere else."""
    return _flow(layout.OUTPUT,
                 Match.of((IN_CLASS, source), (OVERSIZE, 1), eth_type=ETH_TYPE_IP),
                 (ApplyMeter(PUNT_METER_ID), Controller(Punted(source, limit).userdata())),
                 cookie)
