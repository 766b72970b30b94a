"""Per-pod multicast counters, read from the switch's metric flows.

The datapath does the counting (one egress and one ingress metric flow per pod port, see
``pipeline.multicast.pod_flows``); the agent keeps no second copy and reads them on demand.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from agent.flowsync.switch import FlowStats
from agent.interfacestore import PodInfo
from pipeline.readback import Direction, pod_counter_of


@dataclass(frozen=True)
class PodStats:
    namespace: str
    name: str
    inbound: int  # copies delivered to the pod, after ingress policy
    outbound: int  # packets the pod sent to 224.0.0.0/4 that passed egress policy


def pod_stats(pods: Iterable[PodInfo], stats: Iterable[FlowStats]) -> list[PodStats]:
    """One row per pod (zero when its flows are not there yet), by namespace and name."""
    pods = sorted(pods, key=lambda p: (p.namespace, p.name))
    counts = {d: {p.ofport: 0 for p in pods} for d in Direction}
    for s in stats:
        found = pod_counter_of(s.flow)
        if found is not None and found[1] in counts[found[0]]:
            counts[found[0]][found[1]] = s.packets
    return [PodStats(p.namespace, p.name, counts[Direction.INBOUND][p.ofport],
                     counts[Direction.OUTBOUND][p.ofport]) for p in pods]
