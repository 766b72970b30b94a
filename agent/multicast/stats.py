"""Per-pod, per-group and per (pod, group) multicast counters, read from the switch.

The datapath does the counting (per pod port: an egress and an ingress metric flow, the spoof
guard's two drop flows, the IGMP punt meter, the oversize counting meter; see
``pipeline.multicast.pod_flows`` and ``pipeline.oversize``; per multicast group: its route
flows, ``pipeline.multicast.route_flow`` and ``source_route_flow``, and one ingress metric
flow per local member, ``membership_metric_flow``); the agent reads them on demand. Flows
count packets and bytes; meters count packets only.

A pod's inbound is its own metric flow plus its (pod, group) flows. Those go with their
memberships, so ``PodCounters`` keeps, per pod, what the flows of its ended memberships had
counted when last read (the one copy the agent keeps): the pod's inbound never goes back.
Copies counted between that read and the leave are lost from it (a scrape interval's worth at
most, for a group the pod was leaving).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from agent.flowsync.switch import FlowStats, MeterStats, Switch
from agent.interfacestore import PodInfo
from pipeline.cookies import Feature, feature_cookie_mask
from pipeline.oversize import count_meter_id
from pipeline.readback import PodCounter, pod_counter_of, pod_group_of, routed_group_of


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


@dataclass(frozen=True)
class PodGroupTraffic:
    """Copies of one group delivered to one local member pod after its ingress policy, since
    it joined (its (pod, group) flow comes and goes with the membership)."""

    namespace: str
    name: str
    group: str
    packets: int
    bytes: int


def pod_stats(pods: Iterable[PodInfo], stats: Iterable[FlowStats],
              meters: Mapping[int, MeterStats],
              retired: Mapping[int, tuple[int, int]] | None = None) -> list[PodStats]:
    """One row per pod (zero when its flows are not there yet), by namespace and name.

    ``meters``: each meter's counters, by meter id (a pod's punt meter has the id of its port,
    its oversize counting meter ``pipeline.oversize.count_meter_id`` of it). A pod's inbound
    sums its ingress metric flow and its (pod, group) flows, plus ``retired``: per port, the
    (packets, bytes) of its ended memberships' flows.
    """
    pods = sorted(pods, key=lambda p: (p.namespace, p.name))
    counts = {c: {p.ofport: 0 for p in pods} for c in PodCounter}
    octets = {c: {p.ofport: 0 for p in pods} for c in (PodCounter.INBOUND, PodCounter.OUTBOUND)}
    for port, (packets, nbytes) in (retired or {}).items():
        if port in counts[PodCounter.INBOUND]:
            counts[PodCounter.INBOUND][port] += packets
            octets[PodCounter.INBOUND][port] += nbytes
    for s in stats:
        found = pod_counter_of(s.flow)
        if found is not None and found[1] in counts[found[0]]:
            counts[found[0]][found[1]] += s.packets
            if found[0] in octets:
                octets[found[0]][found[1]] += s.bytes

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
        group = routed_group_of(s.flow)
        if group is None:
            continue  # a (pod, group) counting flow, also the group's
        packets, octets = totals.get(group, (0, 0))
        totals[group] = (packets + s.packets, octets + s.bytes)
    return [GroupTraffic(g, *totals[g]) for g in sorted(totals, key=_addr)]


def pod_group_traffic(pods: Iterable[PodInfo],
                      group_flows: Iterable[FlowStats]) -> list[PodGroupTraffic]:
    """Per (pod, group) membership with a counting flow, by group then namespace and name.
    ``group_flows``: the switch's flows of ``Feature.GROUP``; ports of no pod are left out."""
    by_port = {p.ofport: p for p in pods}
    out = []
    for s in group_flows:
        found = pod_group_of(s.flow)
        pod = by_port.get(found[0]) if found is not None else None
        if found is not None and pod is not None:
            out.append(PodGroupTraffic(pod.namespace, pod.name, found[1], s.packets, s.bytes))
    return sorted(out, key=lambda t: (_addr(t.group), t.namespace, t.name))


def _addr(group: str) -> tuple[int, ...]:
    return tuple(map(int, group.split(".")))


class PodCounters:
    """Reads the pods' counters from the switch, keeping each pod's inbound from going back
    when one of its memberships (and its counting flow) ends. Thread-safe."""

    def __init__(self, switch: Switch) -> None:
        self._switch = switch
        self._lock = threading.Lock()
        # by pod (its port and container): (pod, group) flows as last read, and what the
        # flows of its ended memberships had counted
        self._seen: dict[tuple[tuple[int, str], str], tuple[int, int]] = {}
        self._retired: dict[tuple[int, str], tuple[int, int]] = {}

    def pod_stats(self, pods: Iterable[PodInfo]) -> list[PodStats]:
        pods = list(pods)
        with self._lock:  # reads in order: an older read never follows a newer one
            flows = self._switch.flow_stats(*feature_cookie_mask(Feature.POD))
            groups = self._switch.flow_stats(*feature_cookie_mask(Feature.GROUP))
            meters = self._switch.meter_stats()
            retired = self._retire(pods, groups)
        return pod_stats(pods, [*flows, *groups], meters, retired)

    def pod_group_traffic(self, pods: Iterable[PodInfo]) -> list[PodGroupTraffic]:
        return pod_group_traffic(pods, self._switch.flow_stats(*feature_cookie_mask(
            Feature.GROUP)))

    def _retire(self, pods: list[PodInfo], groups: list[FlowStats]) -> dict[int, tuple[int, int]]:
        """Per port, the counts of its pod's ended memberships (this read's ends added)."""
        who = {p.ofport: (p.ofport, p.container_id) for p in pods}
        now = {(who[port], group): (s.packets, s.bytes) for s in groups
               if (found := pod_group_of(s.flow)) is not None
               for port, group in (found,) if port in who}
        present = set(who.values())
        for (pod, group), (packets, nbytes) in self._seen.items():
            if (pod, group) not in now and pod in present:
                old = self._retired.get(pod, (0, 0))
                self._retired[pod] = (old[0] + packets, old[1] + nbytes)
        self._retired = {pod: n for pod, n in self._retired.items() if pod in present}
        self._seen = now
        return {pod[0]: n for pod, n in self._retired.items()}
