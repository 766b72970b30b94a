"""Prometheus view of the multicast state, read from the core and the switch at scrape time.

Membership comes from the membership tables, pod packets from the switch's per-pod metric
flows and meters, group traffic from the groups' route flows, so the datapath does the
counting and the agent keeps no second copy. A scrape while the bridge is away leaves out
what only the switch knows (``kube_mcast_switch_readable`` says so) instead of failing.

Label sets stay bounded by what the node holds, never by a source address:

* per pod (as Kubernetes' own per-pod metrics): the pods attached to this node;
* per node-level source (tunnel, uplink) and per remote node (tunnel IP): the cluster's nodes;
* per group and per (pod, group): the groups with members or route flows on this node, and
  their local memberships, at most ``SERIES_CAP`` of each (lowest group addresses first);
  ``kube_mcast_metric_series_omitted`` counts what the cap left out.

Not exported, and why: per (pod, group) packet counts. Outbound would need a counting flow per
(sender, group) that the sender never announces (senders do not join), created by the datapath
on first packet; inbound, OVS credits every bucket of a type-ALL group with each packet the
group replicates (measured, tests/agent/ovs/test_group_stats_real.py), so bucket counters say
what the group forwarded, not what each member got after its ingress policy. A group's
traffic (``kube_mcast_group_packets_total``) and its local members
(``kube_mcast_group_local_member``) answer who receives how much; per-pod counters are exact.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry

from agent.flowsync.switch import Switch, SwitchDisconnected
from agent.multicast.core import GroupMembers, MulticastCore
from agent.multicast.stats import GroupTraffic, PodStats, group_traffic
from pipeline.cookies import Feature, feature_cookie_mask

SERIES_CAP = 1000
"""Groups with per-group series, and (pod, group) memberships with series of their own."""

POD_DROP_REASONS = ("spoofed", "not_multicast", "igmp_rate", "oversized")


@dataclass(frozen=True)
class AgentInfo:
    """Who this agent is, for ``kube_mcast_agent_info`` (dashboards join on it)."""

    node_name: str
    node_ip: str
    mode: str
    round: int  # the cookie round of this run's flows (moves at every agent start)


def _addr(group: str) -> int:
    return int(ipaddress.IPv4Address(group))


def _split(ref: str) -> tuple[str, str]:
    namespace, _, name = ref.partition("/")
    return namespace, name


class MulticastCollector(Collector):
    """Groups, members, per-pod and per-group packets, the agent's identity."""

    def __init__(self, members: Callable[[], Iterable[GroupMembers]],
                 pod_stats: Callable[[], Iterable[PodStats]],
                 punt_drops: Callable[[], Mapping[str, int]] = dict,
                 oversized: Callable[[], Mapping[str, int]] = dict, *,
                 group_traffic: Callable[[], Iterable[GroupTraffic]] = list,
                 info: AgentInfo | None = None, series_cap: int = SERIES_CAP) -> None:
        self._members = members
        self._pod_stats = pod_stats
        self._punt_drops = punt_drops
        self._oversized = oversized
        self._group_traffic = group_traffic
        self._info = info
        self._cap = series_cap

    def collect(self) -> Iterator[Metric]:
        if self._info is not None:
            yield from self._identity(self._info)
        rows = list(self._members())
        readable = True
        try:
            stats = list(self._pod_stats())
            traffic = {t.group: t for t in self._group_traffic()}
            punts, oversized = dict(self._punt_drops()), dict(self._oversized())
        except (SwitchDisconnected, TimeoutError):
            readable, stats, traffic, punts, oversized = False, [], {}, {}, {}
        up = GaugeMetricFamily("kube_mcast_switch_readable",
                               "1 if this scrape read br-int's counters (0: the bridge is "
                               "away, and the switch's counters are left out)")
        up.add_metric([], 1.0 if readable else 0.0)
        yield up
        yield from self._membership(rows)
        yield from self._groups(rows, traffic)
        yield from self._pods(stats)
        yield from self._node_sources(punts, oversized)

    @staticmethod
    def _identity(info: AgentInfo) -> Iterator[Metric]:
        agent = GaugeMetricFamily("kube_mcast_agent_info", "The agent's node and mode (1)",
                                  labels=["node_name", "node_ip", "mode"])
        agent.add_metric([info.node_name, info.node_ip, info.mode], 1.0)
        round_ = GaugeMetricFamily("kube_mcast_flow_cookie_round",
                                   "The cookie round of this agent run's flows (moves at "
                                   "every agent start)")
        round_.add_metric([], float(info.round))
        yield from (agent, round_)

    @staticmethod
    def _membership(rows: list[GroupMembers]) -> Iterator[Metric]:
        groups = GaugeMetricFamily("kube_mcast_groups",
                                   "Multicast groups with members, local, remote or outside "
                                   "(hosts that reported them on the uplink)")
        groups.add_metric([], len(rows))
        members = GaugeMetricFamily("kube_mcast_members", "Group memberships by kind",
                                    labels=["kind"])
        members.add_metric(["local"], sum(len(r.local_pods) for r in rows))
        members.add_metric(["remote"], sum(len(r.remote_nodes) for r in rows))
        members.add_metric(["outside"], sum(len(r.outside_hosts) for r in rows))
        by_node: dict[str, int] = {}
        for r in rows:
            for node in r.remote_nodes:
                by_node[node] = by_node.get(node, 0) + 1
        remote = GaugeMetricFamily(
            "kube_mcast_remote_node_groups",
            "Groups each other node has members in, as its agent reported them to this node "
            "(remote_node: its tunnel IP)", labels=["remote_node"])
        for node in sorted(by_node, key=_addr):
            remote.add_metric([node], by_node[node])
        yield from (groups, members, remote)

    def _groups(self, rows: list[GroupMembers],
                traffic: Mapping[str, GroupTraffic]) -> Iterator[Metric]:
        by_group = {r.group: r for r in rows}
        every = sorted(by_group.keys() | traffic.keys(), key=_addr)
        chosen = every[:self._cap]
        group_members = GaugeMetricFamily(
            "kube_mcast_group_members", "Members of each group on this node's view, by kind "
            "(local: pods here; remote: other nodes; outside: hosts on the uplink)",
            labels=["group", "kind"])
        local = GaugeMetricFamily(
            "kube_mcast_group_local_member",
            "1 for each local pod that is a member of the group (who receives it here)",
            labels=["group", "namespace", "pod"])
        packets = CounterMetricFamily(
            "kube_mcast_group_packets",
            "Packets to the group that this node routed (from local pods after their egress "
            "policy, from the tunnel or the uplink), once each whatever the copies",
            labels=["group"])
        octets = CounterMetricFamily("kube_mcast_group_bytes",
                                     "Bytes of kube_mcast_group_packets", labels=["group"])
        memberships = 0
        for g in chosen:
            row = by_group.get(g)
            if row is not None:
                group_members.add_metric([g, "local"], len(row.local_pods))
                group_members.add_metric([g, "remote"], len(row.remote_nodes))
                group_members.add_metric([g, "outside"], len(row.outside_hosts))
                for ref in row.local_pods:
                    if memberships < self._cap:
                        local.add_metric([g, *_split(ref)], 1.0)
                    memberships += 1
            t = traffic.get(g)
            if t is not None:
                packets.add_metric([g], t.packets)
                octets.add_metric([g], t.bytes)
        memberships += sum(len(by_group[g].local_pods) for g in every[self._cap:]
                           if g in by_group)
        omitted = GaugeMetricFamily(
            "kube_mcast_metric_series_omitted",
            f"Groups and (pod, group) memberships left without series of their own (at most "
            f"{self._cap} of each are exported)", labels=["family"])
        omitted.add_metric(["group"], len(every) - len(chosen))
        omitted.add_metric(["pod_group"], max(0, memberships - self._cap))
        yield from (group_members, local, packets, octets, omitted)

    @staticmethod
    def _pods(stats: list[PodStats]) -> Iterator[Metric]:
        labels = ["namespace", "pod"]
        inbound = CounterMetricFamily(
            "kube_mcast_pod_inbound_packets",
            "Multicast packets delivered to the pod (after its ingress policy)", labels=labels)
        inbound_bytes = CounterMetricFamily(
            "kube_mcast_pod_inbound_bytes", "Bytes of kube_mcast_pod_inbound_packets",
            labels=labels)
        outbound = CounterMetricFamily(
            "kube_mcast_pod_outbound_packets",
            "Multicast packets the pod sent (after its egress policy)", labels=labels)
        outbound_bytes = CounterMetricFamily(
            "kube_mcast_pod_outbound_bytes", "Bytes of kube_mcast_pod_outbound_packets",
            labels=labels)
        dropped = CounterMetricFamily(
            "kube_mcast_pod_dropped_packets",
            "Packets from the pod dropped on br-int: spoofed (multicast without its own MAC and "
            "IP), not_multicast (anything else), igmp_rate (IGMP over its punt rate), "
            "oversized (multicast larger than pods may send: it would not fit the tunnel)",
            labels=[*labels, "reason"],
        )
        for s in stats:
            pod = [s.namespace, s.name]
            inbound.add_metric(pod, s.inbound)
            inbound_bytes.add_metric(pod, s.inbound_bytes)
            outbound.add_metric(pod, s.outbound)
            outbound_bytes.add_metric(pod, s.outbound_bytes)
            for reason, n in zip(POD_DROP_REASONS, (s.spoofed, s.not_multicast,
                                                    s.igmp_dropped, s.oversized), strict=True):
                dropped.add_metric([*pod, reason], n)
        yield from (inbound, inbound_bytes, outbound, outbound_bytes, dropped)

    @staticmethod
    def _node_sources(punt_drops: Mapping[str, int],
                      oversized_by_source: Mapping[str, int]) -> Iterator[Metric]:
        punts = CounterMetricFamily(
            "kube_mcast_igmp_punts_dropped",
            "IGMP from the tunnel (peer agents) or the uplink dropped over its punt rate "
            "(pods' own: kube_mcast_pod_dropped_packets{reason=\"igmp_rate\"})",
            labels=["source"],
        )
        for source, n in sorted(punt_drops.items()):
            punts.add_metric([source], n)
        oversized = CounterMetricFamily(
            "kube_mcast_oversized_packets",
            "Multicast from the tunnel or the uplink dropped as larger than pods can receive "
            "(pods' own: kube_mcast_pod_dropped_packets{reason=\"oversized\"})",
            labels=["source"],
        )
        for source, n in sorted(oversized_by_source.items()):
            oversized.add_metric([source], n)
        yield from (punts, oversized)


def collector_of(core: MulticastCore, switch: Switch, node_name: str = "") -> MulticastCollector:
    """The collector of a running agent: its core's state and br-int's counters."""
    bridge = core.bridge

    def traffic() -> list[GroupTraffic]:
        return group_traffic(switch.flow_stats(*feature_cookie_mask(Feature.GROUP)))

    info = AgentInfo(node_name or core.cfg.node_name, bridge.node_ip, bridge.mode.value,
                     bridge.round)
    return MulticastCollector(core.members, core.pod_stats, core.punt_drops, core.oversized,
                              group_traffic=traffic, info=info)


def register_collector(core: MulticastCore, switch: Switch,
                       registry: CollectorRegistry = REGISTRY) -> MulticastCollector:
    collector = collector_of(core, switch)
    registry.register(collector)
    return collector
