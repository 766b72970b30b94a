"""A traced packet's walk as hops: tables crossed, groups run, buckets taken, and each copy's end.

Owns how the steps of a fake-table walk (``pipeline.fake_table.Step``) are shown to an operator
(``agent.multicast.trace`` builds the packet, runs the walk and gives the verdict): a table hop
carries the flow that ran, as ovs-ofctl prints its priority, match and actions, and that flow's
owner, read from its cookie (``pipeline.cookies``: the feature, then which pod, group, node or
policy rule); a group hop says how many buckets it has; a bucket hop whom its copy is for and
what became of it (``ending``: delivered, sent, or dropped by what and why). Also the node as
the analysis reads it (``NodeView``), since labels come from it.
Pure; may import ``pipeline``, ``agent.interfacestore`` and the core's read types.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.interfacestore import PodInfo
from agent.multicast.core import GroupMembers
from pipeline import layout, priorities
from pipeline.cookies import Cookie, Feature, feature_of
from pipeline.fake_table import FakeSwitch, Step, Trace
from pipeline.model import (
    Action,
    Bucket,
    Controller,
    Drop,
    Flow,
    LoadReg,
    Output,
    OutputReg,
)
from pipeline.multicast import BridgeConfig, pipeline
from pipeline.oversize import Punted
from pipeline.policy import DIMENSION_OBJECT
from pipeline.readback import local_port_of, remote_node_of
from pipeline.registers import OUT_KIND, OUT_PORT, OutKind, PortClass
from pipeline.render import render_actions, render_match

TABLE, GROUP, BUCKET = "table", "group", "bucket"


@dataclass(frozen=True)
class Owner:
    """Who installed a flow: its cookie's feature (lower case) and the object it names."""

    feature: str
    object: str = ""

    def text(self) -> str:
        return f"{self.feature} {self.object}" if self.object else self.feature

    def to_json(self) -> dict[str, str]:
        return {"feature": self.feature, "object": self.object}


def _route(flow: Flow) -> str:
    dst, src = flow.match.get("ipv4_dst"), flow.match.get("ipv4_src")
    return f"({src.value if src else '*'}, {dst.value if dst else '*'})"


def owner_of(flow: Flow, ports: Mapping[int, str], rules: Mapping[int, str]) -> Owner:
    """``flow``'s owner; ``ports`` names pod ports (``ns/name``) and the tunnel and uplink,
    ``rules`` names policy rules by conjunction id."""
    feature = feature_of(flow.cookie)
    if feature is None:
        return Owner("unknown", f"cookie {flow.cookie:#x}")
    obj = Cookie.unpack(flow.cookie).object_id
    name = feature.name.lower()
    if feature is Feature.GROUP:
        return Owner(name, _route(flow))
    if feature is Feature.NODE:
        return Owner(name, str(ipaddress.IPv4Address(obj)))
    if feature is Feature.POLICY:
        conj = obj & ~DIMENSION_OBJECT
        return Owner(name, rules.get(conj, f"conjunction {conj}"))
    if feature in (Feature.POD, Feature.IGMP, Feature.OVERSIZE):
        return Owner(name, ports.get(obj, f"port {obj}") if obj else "")
    return Owner(name)


@dataclass(frozen=True)
class Hop:
    """One line of a trace, at its nesting ``level`` (a bucket's hops are one deeper).

    table: ``flow`` ran in ``table`` (None: no flow matched); group: ``group_id`` ran with
    ``buckets`` buckets; bucket: ``index`` of ``group_id`` made a copy ``to`` someone, with
    ``result``; ``target`` marks the bucket of the traced pod."""

    kind: str
    level: int
    table: str
    flow: Flow | None = None
    owner: Owner | None = None
    group_id: int | None = None
    buckets: int = 0
    index: int | None = None
    to: str = ""
    target: bool = False
    result: str = ""

    def with_result(self, result: str) -> Hop:
        return dataclasses.replace(self, result=result)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "level": self.level}
        if self.kind == TABLE:
            flow = self.flow
            out.update({"table": self.table,
                        "priority": None if flow is None else flow.priority,
                        "match": None if flow is None else render_match(flow.match),
                        "actions": None if flow is None else render_actions(flow.actions,
                                                                            pipeline()),
                        "owner": None if self.owner is None else self.owner.to_json()})
        elif self.kind == GROUP:
            out.update({"groupId": self.group_id, "buckets": self.buckets})
        else:
            out.update({"groupId": self.group_id, "index": self.index, "to": self.to,
                        "target": self.target, "result": self.result})
        return out


def table_hop(level: int, table: str, flow: Flow | None, ports: Mapping[int, str],
              rules: Mapping[int, str]) -> Hop:
    owner = None if flow is None else owner_of(flow, ports, rules)
    return Hop(TABLE, level, table, flow=flow, owner=owner)


@dataclass(frozen=True)
class PolicyRuleRef:
    """A policy rule as operators name it: ``namespace/policy/rule`` (``policy/rule`` for a
    cluster-scoped policy)."""

    ref: str
    direction: str
    action: str

    def to_json(self) -> dict[str, str]:
        return {"rule": self.ref, "direction": self.direction, "action": self.action}


@dataclass(frozen=True)
class NodeView:
    """What the analysis reads of the node: its bridge, pods, membership, peers and rules."""

    name: str
    bridge: BridgeConfig
    pods: Sequence[PodInfo]
    members: Sequence[GroupMembers]
    nodes: Sequence[str] = ()  # peer nodes' tunnel IPs
    rules: Mapping[int, PolicyRuleRef] = field(default_factory=dict)  # by conjunction id

    def pod(self, ref: str) -> PodInfo | None:
        return next((p for p in self.pods if p.ref == ref), None)

    def ports(self) -> dict[int, str]:
        """Names of ports: a pod's ``ns/name``, ``tunnel``, ``uplink``."""
        out = {p.ofport: p.ref for p in self.pods}
        for port, name in ((self.bridge.tunnel_port, "tunnel"), (self.bridge.uplink_port,
                                                                  "uplink")):
            if port is not None:
                out[port] = name
        return out

    def port_label(self, port: int) -> str:
        if port in (self.bridge.tunnel_port, self.bridge.uplink_port):
            return f"the {self.ports()[port]}"
        pod = next((p for p in self.pods if p.ofport == port), None)
        return f"pod {pod.ref}" if pod is not None else f"port {port}"

    def rule_refs(self) -> dict[int, str]:
        return {conj: r.ref for conj, r in self.rules.items()}


# -- the walk as hops -----------------------------------------------------------------------


def _bucket_label(node: NodeView, bucket: Bucket) -> str:
    port = local_port_of(bucket)
    if port is not None:
        return f"{node.port_label(port)} (port {port})"
    peer = remote_node_of(bucket)
    if peer is not None:
        return f"node {peer} (the tunnel)"
    if LoadReg(OUT_KIND, OutKind.EXTERNAL) in bucket.actions:
        return "external receivers (the uplink)"
    return "another copy"


def hops(node: NodeView, switch: FakeSwitch, walk: Trace, target: int) -> list[Hop]:
    """The steps as hops, each at its nesting level (a bucket's steps one deeper than it),
    with every bucket's outcome."""
    ports, rules = node.ports(), node.rule_refs()
    out: list[Hop] = []
    open_buckets: list[tuple[int, int]] = []  # (step depth, index of its hop)
    ends: dict[int, tuple[Step | None, Bucket]] = {}  # bucket hop -> its last table step
    for step in walk.steps:
        while open_buckets and step.depth <= open_buckets[-1][0]:
            open_buckets.pop()
        level = len(open_buckets)
        if step.group_id is None:
            out.append(table_hop(level, step.table, step.flow, ports, rules))
            if open_buckets:
                at = open_buckets[-1][1]
                ends[at] = (step, ends[at][1])
            continue
        group = switch.group(step.group_id)
        assert group is not None
        if step.bucket is None:
            out.append(Hop(GROUP, level, step.table, group_id=step.group_id,
                            buckets=len(group.buckets)))
            continue
        bucket = group.buckets[step.bucket]
        out.append(Hop(BUCKET, level, step.table, group_id=step.group_id, index=step.bucket,
                        to=_bucket_label(node, bucket), target=local_port_of(bucket) == target))
        open_buckets.append((step.depth, len(out) - 1))
        ends[len(out) - 1] = (None, bucket)
    for at, (last, bucket) in ends.items():
        out[at] = out[at].with_result(
            ending(node, walk, bucket.actions, out[at].table, bucket) if last is None else
            ending(node, walk, last.flow, last.table, bucket))
    return out


def _dropped(node: NodeView, flow: Flow) -> str:
    """Why a flow that drops dropped the copy, as the end of a sentence starting "dropped"."""
    table, prio = flow.table, flow.priority
    owner = owner_of(flow, node.ports(), node.rule_refs())
    if owner.feature == "policy":
        rule = next((r for r in node.rules.values() if r.ref == owner.object), None)
        return f"by policy rule {owner.object} ({rule.action if rule else 'Drop'})"
    if table == layout.CLASSIFIER and prio == priorities.SPOOF_DROP:
        return f"by the spoof guard of {owner.object}: not the pod's own MAC and IP"
    if table == layout.CLASSIFIER and prio == priorities.PORT_DROP:
        return f"by the port guard of {owner.object}: not IPv4 multicast"
    if table == layout.CLASSIFIER and prio == priorities.NODE_SNAT_DROP:
        return f"as node {owner.object}'s SNATed multicast: it came through the tunnel already"
    if table == layout.INGRESS_RULE and prio == priorities.SELF_LOOP:
        return "as the pod's own datagram: a sender gets no copy of what it sends"
    if table == layout.OUTPUT and prio == priorities.SUPPRESS:
        return "here: a node never relays what came in through the tunnel or the uplink"
    return f"by a flow of {owner.text()} in {table}"


def ending(node: NodeView, walk: Trace, flow: Flow | tuple[Action, ...] | None, table: str,
           bucket: Bucket | None) -> str:
    """What became of a copy whose last table step was ``flow`` in ``table`` (or a bucket's
    copy that met no table: its actions)."""
    if flow is None:
        return f"dropped: no flow in {table} takes it"
    for a in flow.actions if isinstance(flow, Flow) else flow:
        if isinstance(a, Drop) and isinstance(flow, Flow):
            return f"dropped {_dropped(node, flow)}"
        if isinstance(a, Controller):
            punted = Punted.parse(a.userdata)
            if punted is None:
                return "sent to the agent"
            limit = "pods may send" if punted.source is PortClass.POD else "pods can receive"
            return (f"dropped as oversize: a {walk.packet.length}-byte frame, over the "
                    f"{punted.limit} bytes {limit} (punted to the agent)")
        port = None
        if isinstance(a, Output):
            port = a.port
        elif isinstance(a, OutputReg) and a.field == OUT_PORT and bucket is not None:
            port = local_port_of(bucket)
        if port is None:
            continue
        label = node.port_label(port)
        peer = None if bucket is None else remote_node_of(bucket)
        for d in walk.deliveries:
            if d.port != port or (peer is not None and d.tun_dst != peer):
                continue
            if d.tun_dst:
                return f"sent to {d.tun_dst} through the tunnel"
            if port == node.bridge.uplink_port:
                snat = d.packet.ipv4_src != walk.packet.ipv4_src
                return f"sent out the uplink{f' from {d.packet.ipv4_src}' if snat else ''}"
            return f"delivered to {label} (port {port})"
        if port == walk.packet.in_port:
            return f"not sent: {label} is where it came in"
        return f"not sent to {label} (port {port})"
    return f"ended in {table}"
