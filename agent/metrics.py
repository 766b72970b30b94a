"""Prometheus counters of agent events (prometheus-client), declared once here.

State that can be read when Prometheus scrapes (groups, members, per-pod packets) is not
counted here but collected from its owner (``agent.multicast.collector``). This module imports
nothing of ours, so every layer may count.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

IGMP_MESSAGES = Counter(
    "kube_mcast_igmp_messages_total", "IGMP messages received, by type and verdict",
    ["type", "verdict"],
)
IGMP_REFUSED = Counter(
    "kube_mcast_igmp_refused_total",
    "IGMP reports from pods refused whole because they would exceed a cap", ["cap"],
)
PACKET_INS_DROPPED = Counter(
    "kube_mcast_packet_ins_dropped_total",
    "Packet-ins shed because the agent's event queue was full", ["feature"],
)
PACKET_INS_UNROUTED = Counter(
    "kube_mcast_packet_ins_unrouted_total",
    "Packet-ins whose punt flow's cookie names no feature with a handler",
)
FLOW_OPS = Counter("kube_mcast_flow_operations_total", "OpenFlow operations sent", ["kind"])
FLOW_OP_SECONDS = Histogram(
    "kube_mcast_flow_operation_seconds", "Time to apply one reconcile bundle",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
)
CONTROLLER_CONNECTED = Gauge(
    "kube_mcast_controller_link_connected", "1 while the stream to the controller is open",
)
CONTROLLER_RESYNCS = Counter(
    "kube_mcast_controller_link_resyncs_total",
    "Connections to the controller that delivered a full node set",
)
