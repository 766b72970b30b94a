"""Per-pod and per-group multicast counters, read from the switch's flows and meters.

The datapath does the counting (per pod port: an egress and an ingress metric flow, the spoof
guard's two drop flows, the IGMP punt meter, the oversize counting meter; see
``pipeline.multicast.pod_flows`` and ``pipeline.oversize``; per multicast group: its route
flows, ``pipeline.multicast.route_flow`` and ``source_route_flow``); the agent keeps no second
copy and reads them on demand. Flows count packets and bytes; meters count packets only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from agent.flowsync.switch import FlowStats, MeterStats
from agent.interfacestore import PodInfo
from pipeline.oversize import count_meter_id
from pipeline.readback import PodCounter, pod_counter_of


@dataclass(frozen=True)
class PodStats:
    namespace: str
    name: str
    inbound: int  # copies delivered to the pod, after ingress policy
    outbound: int  # packets the pod sent to 224.0.0.0/4 that passed egress policy
    spoofed: int = 0  # multicast it sent without its own MAC and IP: dropped
    not_multicast: int = 0  # anything else it sent (ARP, IPv6, unicast): dropped
    igmp_dropped: int = 0  # IGMP over its punt rate: dropped by its meter
    oversized: int = 0  # multicast larger than pods may send (it would not fit the tunnel)
    inbound_bytes: int = 0  # the bytes of ``inbound`` (Ethernet frames, as OVS counts them)
    outbound_bytes: int = 0  # the bytes of ``outbound``


@dataclass(frozen=True)
class GroupTraffic:
    """What this node's route flows of one multicast group forwarded: every packet to the
    group that reached routing here (sent by local pods, after their egress policy, or
    received from the tunnel or the uplink), counted once whatever the number of copies.
    The flows exist while the group has members somewhere, so the counts start again from 0
    when it has had none for a while."""

    group: str
    packets: int
    bytes: int


def pod_stats(pods: Iterable[PodInfo], stats: Iterable[FlowStats],
              meters: Mapping[int, MeterStats]) -> list[PodStats]:
    """One row per pod (zero when its flows are not there yet), by namespace and name.

    ``meters``: each meter's counters, by meter id (a pod's punt meter has the id of its port,
    its oversize counting meter ``pipeline.oversize.count_meter_id`` of it).
    """
    pods = sorted(pods, key=lambda p: (p.namespace, p.name))
    counts = {c: {p.ofport: 0 for p in pods} for c in PodCounter}
    octets = {c: {p.ofport: 0 for p in pods} for c in (PodCounter.INBOUND, PodCounter.OUTBOUND)}
    for s in stats:
        found = pod_counter_of(s.flow)
        if found is not None and found[1] in counts[found[0]]:
            counts[found[0]][found[1]] = s.packets
            if found[0] in octets:
                octets[found[0]][found[1]] = s.bytes

    def row(p: PodInfo) -> PodStats:
        n = {c: counts[c][p.ofport] for c in PodCounter}
        punt = meters.get(p.ofport)
        counted = meters.get(count_meter_id(p.ofport)) if p.ofport > 0 else None
        return PodStats(p.namespace, p.name, n[PodCounter.INBOUND], n[PodCounter.OUTBOUND],
                        n[PodCounter.SPOOFED], n[PodCounter.NOT_MULTICAST],
                        punt.dropped if punt else 0, counted.packets if counted else 0,
                        octets[PodCounter.INBOUND][p.ofport],
                        octets[PodCounter.OUTBOUND][p.ofport])

    return [row(p) for p in pods]


def group_traffic(route_flows: Iterable[FlowStats]) -> list[GroupTraffic]:
    """Per multicast group, the sum of its route flows' counters ((*, G) and every (S, G)),
    by group address. ``route_flows``: the switch's flows of ``Feature.GROUP`` (route flows
    only; each matches its group's address exactly)."""
    totals: dict[str, tuple[int, int]] = {}
    for s in route_flows:
        dst = s.flow.match.get("ipv4_dst")
        if dst is None or dst.mask is not None or not isinstance(dst.value, str):
            continue
        packets, octets = totals.get(dst.value, (0, 0))
        totals[dst.value] = (packets + s.packets, octets + s.bytes)
    return [GroupTraffic(g, p, b) for g, (p, b) in
            sorted(totals.items(), key=lambda item: tuple(map(int, item[0].split("."))))]
