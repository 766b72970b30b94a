"""Why a pod did or did not get a multicast group: one packet walked through a dump of br-int.

Owns the analysis behind ``mcctl trace``. From what the switch holds (a ``SwitchState`` dump,
loaded into the fake table ``pipeline.fake_table``, which follows OVS), the node's pods, its
membership and its policy rules, it builds the datagram a sender would send -- from a local
pod, from another node through the tunnel, or from outside through the uplink -- walks it, and
explains the walk: each table crossed with the flow that ran and who owns that flow (its
cookie: ``pipeline.cookies``), the groups and their buckets, the verdict for the pod and what
decided it (its membership and IGMPv3 source filter, a policy rule, the spoof guard, a size
limit). The text form is ``mcctl``'s; this module answers in data (``TraceResult.to_json``).

Without an origin the datagram comes from outside the node: through the uplink if there is
one, else through the tunnel from the first peer node. That is what every remote sender's
packet meets here; a local sender (``from_pod``) also crosses its own egress policy and spoof
guard.

Pure: no switch, no lock, no clock (the local API gathers the inputs under the core's
methods). May import ``pipeline``, ``agent.interfacestore`` and the core's read types; raises
``TraceError`` (the API maps its ``missing`` flag to 404, else 400).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from agent.interfacestore import PodInfo
from agent.multicast.core import MulticastCore
from agent.multicast.tracehops import (
    BUCKET,
    GROUP,
    TABLE,
    Hop,
    NodeView,
    PolicyRuleRef,
    ending,
)
from agent.multicast.tracehops import hops as walk_hops
from pipeline import layout
from pipeline.fake_table import FakeSwitch, Packet, Trace, multicast_mac
from pipeline.model import IP_PROTO_UDP, ApplyMeter, Group, Meter, SwitchState
from pipeline.multicast import BridgeConfig, Mode, pipeline

DEFAULT_UDP_PORT = 5000
DEFAULT_PAYLOAD = 64
"""UDP payload bytes unless told (as ``mcprobe send``)."""
HEADERS = 14 + 20 + 8
"""Ethernet, IPv4 and UDP headers: a datagram's frame is this much longer than its payload."""
OUTSIDE_SOURCE = "192.0.2.1"
"""The source of a datagram from outside unless told (TEST-NET-1: nobody's address)."""
OUTSIDE_MAC = "02:00:00:00:00:01"
DELIVERED, NOT_DELIVERED, UNKNOWN = "DELIVERED", "NOT DELIVERED", "UNKNOWN"


class TraceError(ValueError):
    """A trace that cannot be made: ``missing`` when a pod it names is not on this node."""

    def __init__(self, message: str, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


@dataclass(frozen=True)
class TraceRequest:
    pod: str  # namespace/name
    group: str
    source: str | None = None  # None: the origin's own address (see ``origin``)
    udp_port: int = DEFAULT_UDP_PORT
    payload: int = DEFAULT_PAYLOAD
    from_pod: str | None = None
    from_node: str | None = None  # a peer's tunnel IP
    from_uplink: bool = False


@dataclass(frozen=True)
class Origin:
    kind: str  # "pod" | "node" | "uplink"
    label: str
    in_port: int
    eth_src: str
    source: str
    tun_src: str | None = None


@dataclass(frozen=True)
class TraceResult:
    node: str
    pod: PodInfo
    group: str
    origin: Origin
    udp_port: int
    frame_bytes: int
    verdict: str
    reason: str
    rule: PolicyRuleRef | None
    hops: tuple[Hop, ...]
    deliveries: tuple[tuple[int, str, str | None], ...]  # port, what it is, tun_dst
    membership: dict[str, Any]
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "pod": {"ref": self.pod.ref, "port": self.pod.ofport, "ip": self.pod.ip},
            "packet": {"group": self.group, "source": self.origin.source,
                       "udpPort": self.udp_port, "frameBytes": self.frame_bytes,
                       "from": self.origin.kind, "origin": self.origin.label,
                       "inPort": self.origin.in_port},
            "verdict": self.verdict, "reason": self.reason,
            "policyRule": None if self.rule is None else self.rule.to_json(),
            "steps": [h.to_json() for h in self.hops],
            "deliveries": [{"port": p, "to": to, "tunDst": tun} for p, to, tun in self.deliveries],
            "membership": self.membership,
            "notes": list(self.notes),
        }


def _pod(node: NodeView, ref: str, what: str = "pod") -> PodInfo:
    found = node.pod(ref)
    if found is None:
        raise TraceError(f"{what} {ref} is not attached to node {node.name}", missing=True)
    return found


def _ip(value: str, what: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise TraceError(f"{what} {value!r} is not an IPv4 address") from None


def check_group(group: str) -> str:
    ip = _ip(group, "group")
    if not ipaddress.IPv4Address(ip).is_multicast:
        raise TraceError(f"group {ip} is not a multicast address (224.0.0.0/4)")
    return ip


def origin(node: NodeView, req: TraceRequest) -> Origin:
    """Where the datagram enters br-int, and the source it carries unless ``req.source``."""
    given = [x for x in (req.from_pod, req.from_node, req.from_uplink or None) if x]
    if len(given) > 1:
        raise TraceError("give one origin: from a pod, from a node or from the uplink")
    src = None if req.source is None else _ip(req.source, "source")
    bridge = node.bridge
    if req.from_pod:
        pod = _pod(node, req.from_pod, "sending pod")
        if not (src or pod.ip):
            raise TraceError(f"sending pod {pod.ref} has no address: give a source")
        return Origin("pod", f"pod {pod.ref} (port {pod.ofport})", pod.ofport, pod.mac,
                      src or pod.ip)
    peer = _ip(req.from_node, "node") if req.from_node else None
    if peer is None and not req.from_uplink and bridge.uplink_port is None and node.nodes:
        peer = node.nodes[0]  # the default: from outside, and the tunnel is the only way in
    if peer is not None and bridge.mode is Mode.ENCAP:
        assert bridge.tunnel_port is not None
        known = "" if peer in node.nodes else ", not a node this agent knows"
        return Origin("node", f"node {peer} (the tunnel, port {bridge.tunnel_port}{known})",
                      bridge.tunnel_port, OUTSIDE_MAC, src or peer, tun_src=peer)
    if bridge.uplink_port is None:
        raise TraceError(f"node {node.name} has no uplink" + (
            "" if req.from_uplink or peer else " and knows no other node: trace from a pod"))
    if peer is not None:  # noEncap: nodes meet on the underlay, so a node's copy comes that way
        return Origin("node", f"node {peer} (the uplink, port {bridge.uplink_port})",
                      bridge.uplink_port, OUTSIDE_MAC, src or peer)
    return Origin("uplink", f"the uplink (port {bridge.uplink_port})", bridge.uplink_port,
                  OUTSIDE_MAC, src or OUTSIDE_SOURCE)


def load(bridge: BridgeConfig, state: SwitchState) -> tuple[FakeSwitch, list[str]]:
    """The dump in the fake table; what it could not take is left out, with a note.

    Meters only count there, so one a flow names but the dump lacks is stood in for."""
    tunnel = () if bridge.tunnel_port is None else (bridge.tunnel_port,)
    switch = FakeSwitch(pipeline(), tunnel_ports=tunnel, strict_buckets=False)
    notes: list[str] = []
    for meter in state.meters:
        switch.add_meter(meter)
    named = {a.meter_id for f in state.flows for a in f.actions if isinstance(a, ApplyMeter)}
    for meter_id in sorted(named - set(switch.meters())):
        switch.add_meter(Meter(meter_id, 1))
    for group in state.groups:
        try:
            switch.add_group(group)
        except ValueError as e:
            notes.append(f"group {group.group_id} left out of the trace: {e}")
    for flow in state.flows:
        try:
            switch.add_flow(flow)
        except ValueError as e:
            notes.append(f"flow left out of the trace: {e}")
    return switch, notes


def view_of(core: MulticastCore) -> NodeView:
    """The core's node as the analysis reads it, through the core's reads (pods, members and
    peers each under its lock; policy rule names as the enforcer last synced them)."""
    rules = core.policy.view.rules
    refs = {}
    for key, data in core.policy.data_rules().items():
        rule = rules.get(key)
        if rule is not None:
            refs[data.conj_id] = PolicyRuleRef(
                f"{rule.key.policy_ref}/{rule.name or rule.key.index}", rule.key.direction,
                rule.action)
    return NodeView(core.cfg.node_name, core.bridge, core.list_pods(), core.members(),
                    core.node_ips(), refs)


def trace(node: NodeView, dump: Callable[[], SwitchState], req: TraceRequest) -> TraceResult:
    """Walk ``req``'s datagram through the switch's ``dump()`` and say what became of it for
    ``req.pod`` (the request is checked before the switch is asked)."""
    pod = _pod(node, req.pod)
    group = check_group(req.group)
    if not 0 <= req.udp_port <= 0xFFFF:
        raise TraceError(f"UDP port {req.udp_port} is not 16 bits")
    if not 0 <= req.payload <= 0xFFFF - HEADERS:
        raise TraceError(f"payload of {req.payload} bytes does not fit a datagram")
    where = origin(node, req)
    packet = Packet(where.in_port, where.eth_src, multicast_mac(group), where.source, group,
                    IP_PROTO_UDP, udp_dst=req.udp_port, tun_src=where.tun_src,
                    tun_dst=node.bridge.node_ip if where.tun_src else None,
                    length=HEADERS + req.payload)
    switch, notes = load(node.bridge, dump())
    walk = switch.process(packet)
    notes += [f"walk: {d}" for d in walk.drops if d.startswith("translation")]
    hops = walk_hops(node, switch, walk, pod.ofport)
    membership = _membership(node, group, pod, where.source)
    verdict, reason, rule = _verdict(node, switch, walk, hops, pod, group, where.source)
    deliveries = tuple((d.port, node.port_label(d.port), d.tun_dst) for d in walk.deliveries)
    return TraceResult(node.name, pod, group, where, req.udp_port, packet.length, verdict,
                       reason, rule, tuple(hops), deliveries, membership, tuple(notes))


# -- the verdict ------------------------------------------------------------------------------


def _admits(view: dict[str, Any] | None, source: str) -> bool:
    return view is None or (source in view["sources"]) == (view["mode"] == "include")


def _membership(node: NodeView, group: str, pod: PodInfo, source: str) -> dict[str, Any]:
    m = next((m for m in node.members if m.group == group), None)
    filters = {} if m is None else {ref: {"mode": f.mode, "sources": list(f.sources)}
                                    for ref, f in m.source_filters.items()}
    mine = filters.get(pod.ref)
    if m is None or pod.ref not in m.local_pods:
        state = "not a member"
    elif mine is None:
        state = "member (any source)"
    else:
        state = (f"member ({mine['mode']} {','.join(mine['sources']) or 'no source'}: "
                 f"{'admits' if _admits(mine, source) else 'does not admit'} {source})")
    return {"group": group, "localPods": [] if m is None else list(m.local_pods),
            "remoteNodes": [] if m is None else list(m.remote_nodes),
            "outsideHosts": [] if m is None else list(m.outside_hosts),
            "sourceFilters": filters, "pod": state}


def _not_member(node: NodeView, group: str, pod: PodInfo, source: str) -> str:
    m = _membership(node, group, pod, source)
    if pod.ref not in m["localPods"]:
        return f"not a member of {group}"
    mine = m["sourceFilters"].get(pod.ref)
    if not _admits(mine, source):
        sources = ",".join(mine["sources"]) if mine else ""
        return (f"not a member of ({source}, {group}): its IGMPv3 source filter "
                f"({mine['mode'] if mine else ''} {sources or 'no source'}) does not admit "
                f"{source}")
    return f"a member of {group}, but not in the switch's group yet (the agent is settling)"


def _rule_in(node: NodeView, hops: Sequence[Hop]) -> PolicyRuleRef | None:
    for h in hops:
        if h.flow is not None and h.owner is not None and h.owner.feature == "policy":
            found = [r for c, r in node.rules.items() if r.ref == h.owner.object]
            if found:
                return found[0]
    return None


def _verdict(node: NodeView, switch: FakeSwitch, walk: Trace, hops: list[Hop],
             pod: PodInfo, group: str, source: str
             ) -> tuple[str, str, PolicyRuleRef | None]:
    """DELIVERED or not, why, and the policy rule that decided the pod's copy (if one did)."""
    main = [h for h in hops if h.level == 0]
    mine = next((i for i, h in enumerate(hops) if h.kind == BUCKET and h.target), None)
    if mine is not None:
        scope = list(main)
        for h in hops[mine + 1:]:
            if h.level <= hops[mine].level:
                break
            scope.append(h)
    else:
        scope = main
    rule = _rule_in(node, [h for h in scope if h.kind == TABLE])
    if walk.to(pod.ofport):
        return DELIVERED, _member_text(node, group, pod, source), rule
    if mine is not None:
        return NOT_DELIVERED, hops[mine].result, rule
    tables = [h for h in main if h.kind == TABLE]
    routed = next((h for h in tables if h.table == layout.ROUTING), None)
    if routed is None or (routed.owner is not None and routed.owner.feature == "oversize"):
        last = tables[-1] if tables else None
        return NOT_DELIVERED, ending(node, walk, last.flow if last else None,
                                     last.table if last else layout.CLASSIFIER, None), rule
    unread = [h.group_id for h in main if h.kind == GROUP and not h.buckets
              and h.group_id is not None and _bucketless(switch.group(h.group_id))]
    if unread:
        return (UNKNOWN, f"group {unread[0]} was read back without its buckets (too large); "
                f"{_membership(node, group, pod, source)['pod']}", rule)
    return NOT_DELIVERED, _not_member(node, group, pod, source), rule


def _bucketless(group: Group | None) -> bool:
    return group is not None and not group.buckets


def _member_text(node: NodeView, group: str, pod: PodInfo, source: str) -> str:
    state = _membership(node, group, pod, source)["pod"]
    if state == "not a member":  # delivered anyway: a member it was when the dump was made
        return f"delivered, though not listed as a member of {group}"
    return f"a {state.replace('member', f'member of {group}', 1)}"
