"""Per-pod multicast counters, read from the switch's flows and meters.

The datapath does the counting (per pod port: an egress and an ingress metric flow, the spoof
guard's two drop flows, the IGMP punt meter; see ``pipeline.multicast.pod_flows``); the agent
keeps no second copy and reads them on demand.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from agent.flowsync.switch import FlowStats
from agent.interfacestore import PodInfo
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


def pod_stats(pods: Iterable[PodInfo], stats: Iterable[FlowStats],
              meter_drops: Mapping[int, int]) -> list[PodStats]:
    """One row per pod (zero when its flows are not there yet), by namespace and name.

    ``meter_drops``: packets each meter dropped, by meter id (a pod's punt meter has the id of
    its port).
    """
    pods = sorted(pods, key=lambda p: (p.namespace, p.name))
    counts = {c: {p.ofport: 0 for p in pods} for c in PodCounter}
    for s in stats:
        found = pod_counter_of(s.flow)
        if found is not None and found[1] in counts[found[0]]:
            counts[found[0]][found[1]] = s.packets

    def row(p: PodInfo) -> PodStats:
        n = {c: counts[c][p.ofport] for c in PodCounter}
        return PodStats(p.namespace, p.name, n[PodCounter.INBOUND], n[PodCounter.OUTBOUND],
                        n[PodCounter.SPOOFED], n[PodCounter.NOT_MULTICAST],
                        meter_drops.get(p.ofport, 0))

    return [row(p) for p in pods]
