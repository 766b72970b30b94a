"""Per-pod multicast counters, read from the switch's flows and meters.

The datapath does the counting (per pod port: an egress and an ingress metric flow, the spoof
guard's two drop flows, the IGMP punt meter, the oversize counting meter; see
``pipeline.multicast.pod_flows`` and ``pipeline.oversize``); the agent keeps no second copy and
reads them on demand.
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


def pod_stats(pods: Iterable[PodInfo], stats: Iterable[FlowStats],
              meters: Mapping[int, MeterStats]) -> list[PodStats]:
    """One row per pod (zero when its flows are not there yet), by namespace and name.

    ``meters``: each meter's counters, by meter id (a pod's punt meter has the id of its port,
    its oversize counting meter ``pipeline.oversize.count_meter_id`` of it).
    """
    pods = sorted(pods, key=lambda p: (p.namespace, p.name))
    counts = {c: {p.ofport: 0 for p in pods} for c in PodCounter}
    for s in stats:
        found = pod_counter_of(s.flow)
        if found is not None and found[1] in counts[found[0]]:
            counts[found[0]][found[1]] = s.packets

    def row(p: PodInfo) -> PodStats:
        n = {c: counts[c][p.ofport] for c in PodCounter}
        punt = meters.get(p.ofport)
        counted = meters.get(count_meter_id(p.ofport)) if p.ofport > 0 else None
        return PodStats(p.namespace, p.name, n[PodCounter.INBOUND], n[PodCounter.OUTBOUND],
                        n[PodCounter.SPOOFED], n[PodCounter.NOT_MULTICAST],
                        punt.dropped if punt else 0, counted.packets if counted else 0)

    return [row(p) for p in pods]
