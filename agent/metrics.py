"""Prometheus metrics of the agent (prometheus-client), declared once here.

Counters of events are declared here; state (groups, members, per-pod packets) is read from the
agent when Prometheus scrapes (AgentCollector).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

IGMP_MESSAGES = Counter(
    "kube_mcast_igmp_messages_total", "IGMP messages received, by type and verdict",
    ["type", "verdict"],
)
FLOW_OPS = Counter("kube_mcast_flow_operations_total", "OpenFlow operations sent", ["kind"])
FLOW_OP_SECONDS = Histogram(
    "kube_mcast_flow_operation_seconds", "Time to apply one reconcile bundle",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
)


class AgentCollector(Collector):
    """Groups, members and per-pod packets, read from the agent at scrape time.

    Membership counts come from the membership tables and pod packets from the switch's metric
    flows, so the datapath does the counting and the agent keeps no second copy.
    """

    def __init__(self, members: Callable[[], Iterable[dict]],
                 pod_stats: Callable[[], Iterable[dict]]) -> None:
        self._members = members
        self._pod_stats = pod_stats

    def collect(self):  # type: ignore[override]
        rows = list(self._members())
        groups = GaugeMetricFamily("kube_mcast_groups",
                                   "Multicast groups with members, local or remote")
        groups.add_metric([], len(rows))
        members = GaugeMetricFamily("kube_mcast_members", "Group memberships by kind",
                                    labels=["kind"])
        members.add_metric(["local"], sum(len(r["localPods"]) for r in rows))
        members.add_metric(["remote"], sum(len(r["remoteNodes"]) for r in rows))
        inbound = CounterMetricFamily(
            "kube_mcast_pod_inbound_packets", "Multicast packets delivered to the pod",
            labels=["namespace", "pod"],
        )
        outbound = CounterMetricFamily(
            "kube_mcast_pod_outbound_packets", "Multicast packets the pod sent (after policy)",
            labels=["namespace", "pod"],
        )
        for s in self._pod_stats():
            inbound.add_metric([s["namespace"], s["name"]], s["inbound"])
            outbound.add_metric([s["namespace"], s["name"]], s["outbound"])
        yield from (groups, members, inbound, outbound)


def register_agent_collector(members: Callable[[], Iterable[dict]],
                             pod_stats: Callable[[], Iterable[dict]]) -> AgentCollector:
    collector = AgentCollector(members, pod_stats)
    REGISTRY.register(collector)
    return collector
