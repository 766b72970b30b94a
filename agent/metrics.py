"""Prometheus metrics of the agent (prometheus-client), declared once here.

Per-pod packet counters are read from the switch's metric flows on scrape (a collector), so the
datapath does the counting and the agent keeps no second copy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import REGISTRY, Collector

GROUPS = Gauge("kube_mcast_groups", "Multicast groups with members, local or remote")
MEMBERS = Gauge("kube_mcast_members", "Group memberships by kind", ["kind"])
IGMP_MESSAGES = Counter(
    "kube_mcast_igmp_messages_total", "IGMP messages received, by type and verdict",
    ["type", "verdict"],
)
FLOW_OPS = Counter("kube_mcast_flow_operations_total", "OpenFlow operations sent", ["kind"])
FLOW_OP_SECONDS = Histogram(
    "kube_mcast_flow_operation_seconds", "Time to apply one reconcile bundle",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
)


class PodPacketCollector(Collector):
    """Exports per-pod inbound/outbound multicast packets from the agent's pod_stats()."""

    def __init__(self, stats: Callable[[], Iterable[dict]]) -> None:
        self._stats = stats

    def collect(self):  # type: ignore[override]
        inbound = CounterMetricFamily(
            "kube_mcast_pod_inbound_packets", "Multicast packets delivered to the pod",
            labels=["namespace", "pod"],
        )
        outbound = CounterMetricFamily(
            "kube_mcast_pod_outbound_packets", "Multicast packets the pod sent (after policy)",
            labels=["namespace", "pod"],
        )
        for s in self._stats():
            inbound.add_metric([s["namespace"], s["name"]], s["inbound"])
            outbound.add_metric([s["namespace"], s["name"]], s["outbound"])
        yield inbound
        yield outbound


def register_pod_collector(stats: Callable[[], Iterable[dict]]) -> PodPacketCollector:
    collector = PodPacketCollector(stats)
    REGISTRY.register(collector)
    return collector
