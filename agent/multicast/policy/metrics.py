"""Prometheus view of policy rule counters, read from the core when Prometheus scrapes.

Owns the per-rule metric families: packets and bytes each rule of the node's view decided
(data rules from their metric flows, IGMP rules from the agent's verdicts), labelled by the
policy's namespace ("" for cluster-scoped policies), policy, rule name, direction and action.
The label sets are bounded by the number of rules the node enforces, never by groups or pods.
May import ``agent.multicast.policy.enforcer`` and prometheus-client.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.multicast.policy.enforcer import RuleCount

LABELS = ["namespace", "policy", "rule", "direction", "action"]


class PolicyCollector(Collector):
    def __init__(self, counts: Callable[[], Iterable[RuleCount]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        packets = CounterMetricFamily(
            "kube_mcast_policy_rule_packets",
            "Packets (data rules) or IGMP messages and v3 records (IGMP rules) a multicast "
            "policy rule decided on this node", labels=LABELS)
        bytes_ = CounterMetricFamily(
            "kube_mcast_policy_rule_bytes", "Bytes of what the rule decided on this node",
            labels=LABELS)
        for c in self._counts():
            k = c.rule.key
            labels = [k.namespace, k.policy, c.rule.name, k.direction, c.rule.action]
            packets.add_metric(labels, c.packets)
            bytes_.add_metric(labels, c.bytes)
        yield from (packets, bytes_)
