"""Prometheus view of the multicast state, read from the core when Prometheus scrapes.

Membership counts come from the membership tables and pod packets from the switch's metric
flows and meters, so the datapath does the counting and the agent keeps no second copy. Labels
stay bounded: per pod (as Kubernetes' own per-pod metrics) or per node-level source, never per
group.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector

from agent.multicast.core import GroupMembers
from agent.multicast.stats import PodStats


class MulticastCollector(Collector):
    """Groups, members and per-pod packets."""

    def __init__(self, members: Callable[[], Iterable[GroupMembers]],
                 pod_stats: Callable[[], Iterable[PodStats]],
                 punt_drops: Callable[[], Mapping[str, int]] = dict,
                 oversized: Callable[[], Mapping[str, int]] = dict) -> None:
        self._members = members
        self._pod_stats = pod_stats
        self._punt_drops = punt_drops
        self._oversized = oversized

    def collect(self) -> Iterator[Metric]:
        rows = list(self._members())
        groups = GaugeMetricFamily("kube_mcast_groups",
                                   "Multicast groups with members, local or remote")
        groups.add_metric([], len(rows))
        members = GaugeMetricFamily("kube_mcast_members", "Group memberships by kind",
                                    labels=["kind"])
        members.add_metric(["local"], sum(len(r.local_pods) for r in rows))
        members.add_metric(["remote"], sum(len(r.remote_nodes) for r in rows))
        inbound = CounterMetricFamily(
            "kube_mcast_pod_inbound_packets", "Multicast packets delivered to the pod",
            labels=["namespace", "pod"],
        )
        outbound = CounterMetricFamily(
            "kube_mcast_pod_outbound_packets", "Multicast packets the pod sent (after policy)",
            labels=["namespace", "pod"],
        )
        dropped = CounterMetricFamily(
            "kube_mcast_pod_dropped_packets",
            "Packets from the pod dropped on br-int: spoofed (multicast without its own MAC and "
            "IP), not_multicast (anything else), igmp_rate (IGMP over its punt rate), "
            "oversized (multicast larger than pods may send: it would not fit the tunnel)",
            labels=["namespace", "pod", "reason"],
        )
        for s in self._pod_stats():
            inbound.add_metric([s.namespace, s.name], s.inbound)
            outbound.add_metric([s.namespace, s.name], s.outbound)
            for reason, n in (("spoofed", s.spoofed), ("not_multicast", s.not_multicast),
                              ("igmp_rate", s.igmp_dropped), ("oversized", s.oversized)):
                dropped.add_metric([s.namespace, s.name, reason], n)
        punts = CounterMetricFamily(
            "kube_mcast_igmp_punts_dropped",
            "IGMP from the tunnel (peer agents) or the uplink dropped over its punt rate",
            labels=["source"],
        )
        for source, n in sorted(self._punt_drops().items()):
            punts.add_metric([source], n)
        oversized = CounterMetricFamily(
            "kube_mcast_oversized_packets",
            "Multicast from the tunnel or the uplink dropped as larger than pods can receive "
            "(pods' own: kube_mcast_pod_dropped_packets{reason=\"oversized\"})",
            labels=["source"],
        )
        for source, n in sorted(self._oversized().items()):
            oversized.add_metric([source], n)
        yield from (groups, members, inbound, outbound, dropped, punts, oversized)


def register_collector(members: Callable[[], Iterable[GroupMembers]],
                       pod_stats: Callable[[], Iterable[PodStats]],
                       punt_drops: Callable[[], Mapping[str, int]],
                       oversized: Callable[[], Mapping[str, int]] = dict) -> MulticastCollector:
    collector = MulticastCollector(members, pod_stats, punt_drops, oversized)
    REGISTRY.register(collector)
    return collector
