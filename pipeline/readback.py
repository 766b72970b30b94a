"""Reading back what the multicast builders built: the inverse of ``pipeline.multicast``.

The agent reads the switch (after a restart, and for counters) and must recognise its own flows
and buckets there. Those decoders live beside the builders' package, so that a change in how a
flow is built and how it is read back is made in one place; the agent never looks at register
fields, tables or cookie bits itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from pipeline import layout, priorities
from pipeline.model import Bucket, Flow, Group, GroupAction, LoadReg, SetTunnelDst
from pipeline.registers import OUT_PORT


@dataclass(frozen=True)
class GroupRoute:
    """A (*, G) route flow found on the switch and the members its group replicates to."""

    group_ip: str
    group_id: int
    local_ports: tuple[int, ...]
    remote_nodes: tuple[str, ...]


def local_port_of(bucket: Bucket) -> int | None:
    """The pod port a ``local_bucket`` delivers to (None: another kind of bucket)."""
    for a in bucket.actions:
        if isinstance(a, LoadReg) and a.field == OUT_PORT:
            return a.value
    return None


def remote_node_of(bucket: Bucket) -> str | None:
    """The node a ``remote_bucket`` tunnels to (None: another kind of bucket)."""
    for a in bucket.actions:
        if isinstance(a, SetTunnelDst):
            return a.ip
    return None


def any_source_routes(flows: list[Flow], groups: list[Group]) -> list[GroupRoute]:
    """Every (*, G) route with a readable group; (S, G) routes and bucket-less groups (too
    large to read back) are left out: their members re-report at the next query."""
    by_id = {g.group_id: g for g in groups}
    out = []
    for flow in flows:
        dst = flow.match.get("ipv4_dst")
        if (flow.table != layout.ROUTING or dst is None or dst.mask is not None
                or flow.match.get("ipv4_src") is not None):
            continue
        gid = next((a.group_id for a in flow.actions if isinstance(a, GroupAction)), None)
        group = by_id.get(gid) if gid is not None else None
        if group is None or not group.buckets:
            continue
        ports = tuple(p for b in group.buckets if (p := local_port_of(b)) is not None)
        nodes = tuple(n for b in group.buckets if (n := remote_node_of(b)) is not None)
        out.append(GroupRoute(str(dst.value), group.group_id, ports, nodes))
    return out


class PodCounter(StrEnum):
    """What a per-pod flow counts."""

    INBOUND = "inbound"  # copies delivered to the pod (ingress metric)
    OUTBOUND = "outbound"  # multicast the pod sent that passed egress policy (egress metric)
    SPOOFED = "spoofed"  # multicast without the pod's own MAC and IP (spoof guard)
    NOT_MULTICAST = "notMulticast"  # anything else the pod sent (port drop)


_CLASSIFIER_DROPS = MappingProxyType({priorities.SPOOF_DROP: PodCounter.SPOOFED,
                                      priorities.PORT_DROP: PodCounter.NOT_MULTICAST})


def pod_counter_of(flow: Flow) -> tuple[PodCounter, int] | None:
    """Which pod port a per-pod counting flow counts, and what it counts."""
    port = flow.match.get("in_port")
    if flow.table in (layout.EGRESS_METRIC, layout.INGRESS_METRIC) and (
            flow.priority != priorities.NORMAL):
        return None  # not a metric flow (an oversize count, whose flow counter is no count)
    if flow.table == layout.EGRESS_METRIC:
        if port is not None and isinstance(port.value, int):
            return PodCounter.OUTBOUND, port.value
    elif flow.table == layout.INGRESS_METRIC:
        reg = flow.match.get(OUT_PORT.oxm)
        if reg is not None and isinstance(reg.value, int):
            return PodCounter.INBOUND, OUT_PORT.decode(reg.value)
    elif (flow.table == layout.CLASSIFIER and flow.priority in _CLASSIFIER_DROPS
          and port is not None and isinstance(port.value, int)):
        return _CLASSIFIER_DROPS[flow.priority], port.value
    return None
