"""Prometheus counters of agent events (prometheus-client), declared once here.

State that can be read when Prometheus scrapes (groups, members, per-pod and per-group
packets, the cookie round) is not counted here but collected from its owner
(``agent.multicast.collector``, ``agent.multicast.policy.metrics``). This module imports
nothing of ours, so every layer may count.

Every label takes its values from a closed set: IGMP message types and verdicts, malformed
reasons (``agent.multicast.igmp.packets``), caps, features, op kinds, reconcile kinds. Label
children whose absence would read as "no data" on a dashboard are created at import, at 0.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from prometheus_client import Counter, Gauge, Histogram

IGMP_MESSAGES = Counter(
    "kube_mcast_igmp_messages_total",
    "IGMP messages received, by type (ReportV1, ReportV2, LeaveV2, ReportV3, Query; "
    "\"malformed\" with the reason as its verdict) and verdict (accepted, dropped_by_policy, "
    "over_cap, answered, ignored, unknown_port, unknown_node)",
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

RECONCILE_KINDS = ("incremental", "full")
"""incremental: the reconciler keys changed since the last bundle; full: the switch read back
and reconciled whole (agent start, bridge reconnect, after a failed bundle)."""

FLOW_OPS = Counter(
    "kube_mcast_flow_operations_total",
    "OpenFlow operations sent, by kind (flow_add, flow_modify, flow_delete, group_add, "
    "group_modify, group_insert_buckets, group_delete, meter_*, cookiedelete_delete)",
    ["kind"],
)
FLOW_OP_SECONDS = Histogram(
    "kube_mcast_flow_operation_seconds",
    "Time to apply one reconcile bundle (meters, the bundle, its commit), by reconcile kind",
    ["kind"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0),
)
BUNDLE_OPS = Histogram(
    "kube_mcast_bundle_operations",
    "OpenFlow operations in one reconcile bundle, by reconcile kind", ["kind"],
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 50000),
)
RECONCILE_ROUNDS = Counter(
    "kube_mcast_reconcile_rounds_total",
    "Reconcile rounds, by kind and result (ok; failed: the switch refused the bundle or went "
    "away, and a later round retries it). Incremental rounds count only when they have ops",
    ["kind", "result"],
)

CONTROLLER_CONNECTED = Gauge(
    "kube_mcast_controller_link_connected", "1 while the stream to the controller is open",
)
CONTROLLER_RESYNCS = Counter(
    "kube_mcast_controller_link_resyncs_total",
    "Connections to the controller that delivered a full node set",
)

for _kind in RECONCILE_KINDS:
    FLOW_OP_SECONDS.labels(kind=_kind)
    BUNDLE_OPS.labels(kind=_kind)
    for _result in ("ok", "failed"):
        RECONCILE_ROUNDS.labels(kind=_kind, result=_result)


@contextlib.contextmanager
def reconcile_round(kind: str, ops: int) -> Iterator[None]:
    """Time one bundle of ``ops`` operations and count its round, failed if the body raises.

    ``kind`` is one of ``RECONCILE_KINDS``."""
    if kind not in RECONCILE_KINDS:
        raise ValueError(f"unknown reconcile kind {kind!r}")
    started = time.perf_counter()
    try:
        yield
    except BaseException:
        RECONCILE_ROUNDS.labels(kind=kind, result="failed").inc()
        raise
    finally:
        FLOW_OP_SECONDS.labels(kind=kind).observe(time.perf_counter() - started)
    RECONCILE_ROUNDS.labels(kind=kind, result="ok").inc()
    BUNDLE_OPS.labels(kind=kind).observe(ops)
