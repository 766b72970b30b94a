"""Builders of the multicast pipeline's flows and groups (pure: they return descriptions).

Every builder takes a ``BridgeConfig`` (mode, round, fixed ports, node address) and returns
flows/groups checked against the declared pipeline. The packet walks they produce are listed in
DESIGN.md section 2 and tested on the fake table and on real OVS.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum, StrEnum

from pipeline import layout, oversize, priorities
from pipeline.cookies import Cookie, Feature
from pipeline.model import (
    ETH_TYPE_IP,
    IP_PROTO_IGMP,
    OFPP_CONTROLLER,
    Action,
    ApplyMeter,
    Bucket,
    Controller,
    Ct,
    Drop,
    Flow,
    GotoTable,
    Group,
    GroupAction,
    LoadReg,
    Match,
    Meter,
    Output,
    OutputReg,
    Resubmit,
    SetField,
    SetTunnelDst,
)
from pipeline.registers import IN_CLASS, OUT_KIND, OUT_PORT, OutKind, PortClass
from pipeline.tables import Pipeline

MULTICAST_NET = "224.0.0.0/4"
LINK_LOCAL_NET = "224.0.0.0/24"
"""Link-local groups (mDNS, LLMNR ...): a snooping switch floods them to every port."""
QUERY_GROUP_ID = 0x7FFFFFFF
"""Reserved group that floods agent-built IGMP queries to every local pod."""
DEFAULT_SNAT_ZONE = 65520


class Mode(StrEnum):
    ENCAP = "encap"
    NOENCAP = "noEncap"


class PuntReason(IntEnum):
    """First byte of the packet-in userdata of punt flows: where the IGMP came from."""

    IGMP_POD = 1
    IGMP_TUNNEL = 2
    IGMP_UPLINK = 3


@dataclass(frozen=True)
class BridgeConfig:
    """What the builders need to know about one node's br-int."""

    mode: Mode
    round: int
    node_ip: str
    node_mac: str
    tunnel_port: int | None = None
    uplink_port: int | None = None
    snat_zone: int = DEFAULT_SNAT_ZONE
    # IGMP each source may punt per second (None: unmetered). One meter per pod port, one for
    # the tunnel, one for the uplink, so a flooding pod exhausts only its own budget and peer
    # agents' reports are never starved by pods.
    pod_punt_pps: int | None = None
    tunnel_punt_pps: int | None = None
    uplink_punt_pps: int | None = None
    # The largest Ethernet frame a pod may send (it must fit the tunnel) and the largest that
    # pods can receive (their interface MTU); multicast over them is counted, punted and
    # dropped (``pipeline.oversize``). None: not checked.
    max_pod_frame: int | None = None
    max_received_frame: int | None = None

    def __post_init__(self) -> None:
        if self.mode is Mode.ENCAP and self.tunnel_port is None:
            raise ValueError("encap mode needs a tunnel port")
        if self.mode is Mode.NOENCAP and self.tunnel_port is not None:
            raise ValueError("noEncap mode has no tunnel port")
        for name in ("max_pod_frame", "max_received_frame"):
            limit = getattr(self, name)
            if limit is not None:
                oversize.check(limit)  # refuses what check_pkt_larger cannot hold

    def cookie(self, feature: Feature, object_id: int = 0) -> int:
        return Cookie(self.round, feature, object_id).pack()


_PIPELINE = layout.multicast_pipeline()


def pipeline() -> Pipeline:
    """The declared multicast pipeline (an immutable value shared by all builders)."""
    return _PIPELINE


def _flow(table: str, priority: int, match: Match, actions: tuple[Action, ...],
          cookie: int) -> Flow:
    return _PIPELINE.check_flow(Flow(table, priority, match, actions, cookie))


def _ip_int(ip: str) -> int:
    return int(ipaddress.IPv4Address(ip))


def punt_userdata(reason: PuntReason) -> bytes:
    return bytes([int(reason)])


def _punt_rate(cfg: BridgeConfig, reason: PuntReason) -> int | None:
    return {PuntReason.IGMP_POD: cfg.pod_punt_pps, PuntReason.IGMP_TUNNEL: cfg.tunnel_punt_pps,
            PuntReason.IGMP_UPLINK: cfg.uplink_punt_pps}[reason]


def punt_meter(cfg: BridgeConfig, in_port: int, reason: PuntReason) -> Meter | None:
    """The meter of ``in_port``'s IGMP punts (its id is the port number), if metered.

    The burst is one second's worth: an application that joins a hundred groups at start-up
    (each report sent twice) is not cut, a flood is held to the rate.
    """
    rate = _punt_rate(cfg, reason)
    return None if rate is None else Meter(in_port, rate, burst=rate)


def igmp_punt_flow(cfg: BridgeConfig, in_port: int, reason: PuntReason, object_id: int) -> Flow:
    """IGMP from ``in_port`` goes to the agent, through the port's meter, and nowhere else.

    Match on the protocol, not the destination: an IGMPv1/v2 report is addressed to the group.
    Any source MAC or IP: a pod's IGMP is attributed to the port it came in on.
    """
    meter = punt_meter(cfg, in_port, reason)
    metered: tuple[Action, ...] = () if meter is None else (ApplyMeter(meter.meter_id),)
    return _flow(
        layout.CLASSIFIER,
        priorities.PUNT,
        Match.of(in_port=in_port, eth_type=ETH_TYPE_IP, ip_proto=IP_PROTO_IGMP),
        (*metered, Controller(punt_userdata(reason))),
        cfg.cookie(Feature.IGMP, object_id),
    )


def _fork_flow(cfg: BridgeConfig, in_port: int, cls: PortClass, nxt: str, cat: Feature,
               object_id: int, **sender: str) -> Flow:
    """Multicast from ``in_port`` enters the multicast tables, its size checked once here."""
    limit = cfg.max_pod_frame if cls is PortClass.POD else cfg.max_received_frame
    checked = () if limit is None else (oversize.check(limit),)
    return _flow(
        layout.CLASSIFIER,
        priorities.NORMAL,
        Match.of(in_port=in_port, eth_type=ETH_TYPE_IP, ipv4_dst=MULTICAST_NET, **sender),
        (LoadReg(IN_CLASS, cls), *checked, GotoTable(nxt)),
        cfg.cookie(cat, object_id),
    )


def pod_sender_match(mac: str, ip: str) -> dict[str, str]:
    """What a pod's own multicast carries: its MAC, and its IP when it has one."""
    return {"eth_src": mac, **({"ipv4_src": ip} if ip else {})}


def spoof_guard_flows(cfg: BridgeConfig, ofport: int) -> list[Flow]:
    """Whatever else a pod port sends is dropped, by two flows that count it per pod.

    Multicast not from the pod's own MAC and IP is spoofed (``SPOOF_DROP``); anything that is
    not IPv4 multicast at all (ARP, IPv6, unicast) has no business on br-int (``PORT_DROP``).
    Neither can reach a pod, the tunnel or the uplink.
    """
    cookie = cfg.cookie(Feature.POD, ofport)
    return [
        _flow(layout.CLASSIFIER, priorities.SPOOF_DROP,
              Match.of(in_port=ofport, eth_type=ETH_TYPE_IP, ipv4_dst=MULTICAST_NET),
              (Drop(),), cookie),
        _flow(layout.CLASSIFIER, priorities.PORT_DROP, Match.of(in_port=ofport), (Drop(),),
              cookie),
    ]


def pod_meters(cfg: BridgeConfig, ofport: int) -> list[Meter]:
    """The pod's IGMP punt meter and its oversize counting meter (those configured)."""
    meter = punt_meter(cfg, ofport, PuntReason.IGMP_POD)
    counted = [] if cfg.max_pod_frame is None else [oversize.count_meter(ofport)]
    return ([] if meter is None else [meter]) + counted


def pod_flows(cfg: BridgeConfig, ofport: int, mac: str = "", ip: str = "") -> list[Flow]:
    """Per pod port: IGMP punt, multicast fork into the egress stages, both metric flows.

    With the pod's ``mac`` (and ``ip``), only multicast carrying them is forked; the rest is
    dropped and counted by the spoof guard (``spoof_guard_flows``). The self-loop drop removes
    the copy a member-sender's own bucket makes for it before the ingress metric counts it (OVS
    would drop it at output anyway, as output to in_port). With ``max_pod_frame``, what is
    larger is counted by the pod's own meter and punted instead of routed.
    """
    sender = pod_sender_match(mac, ip) if mac else {}
    guard = spoof_guard_flows(cfg, ofport) if mac else []
    too_big = [] if cfg.max_pod_frame is None else [
        oversize.pod_count_flow(ofport, cfg.cookie(Feature.OVERSIZE, ofport))]
    return [
        igmp_punt_flow(cfg, ofport, PuntReason.IGMP_POD, ofport),
        _fork_flow(cfg, ofport, PortClass.POD, layout.EGRESS_RULE, Feature.POD, ofport,
                   **sender),
        *guard,
        _flow(
            layout.INGRESS_RULE,
            priorities.SELF_LOOP,
            Match.of((OUT_PORT, ofport), in_port=ofport, eth_type=ETH_TYPE_IP),
            (Drop(),),
            cfg.cookie(Feature.POD, ofport),
        ),
        _flow(
            layout.EGRESS_METRIC,
            priorities.NORMAL,
            Match.of(in_port=ofport, eth_type=ETH_TYPE_IP),
            (GotoTable(layout.ROUTING),),
            cfg.cookie(Feature.POD, ofport),
        ),
        *too_big,
        _flow(
            layout.INGRESS_METRIC,
            priorities.NORMAL,
            Match.of((OUT_PORT, ofport), eth_type=ETH_TYPE_IP),
            (GotoTable(layout.OUTPUT),),
            cfg.cookie(Feature.POD, ofport),
        ),
    ]


def _output_flow(cfg: BridgeConfig, kind: OutKind, actions: tuple[Action, ...],
                 cat: Feature) -> Flow:
    return _flow(
        layout.OUTPUT,
        priorities.NORMAL,
        Match.of((IN_CLASS, PortClass.POD), (OUT_KIND, kind), eth_type=ETH_TYPE_IP),
        actions,
        cfg.cookie(cat),
    )


def external_output_actions(cfg: BridgeConfig) -> tuple[Action, ...]:
    """How a pod's copy for external receivers leaves: SNATed to the node in encap mode."""
    assert cfg.uplink_port is not None
    if cfg.mode is Mode.ENCAP:
        return (
            Ct(zone=cfg.snat_zone, commit=True, nat_src=cfg.node_ip),
            SetField("eth_src", cfg.node_mac),
            Output(cfg.uplink_port),
        )
    return (Output(cfg.uplink_port),)


def _suppress_flows(cfg: BridgeConfig) -> list[Flow]:
    """Copies that would cross tunnel<->uplink or go tunnel->tunnel are dropped explicitly.

    Each node talks to the outside itself, and a node never relays another node's traffic.
    """
    out = []
    for cls in (PortClass.TUNNEL, PortClass.UPLINK):
        for kind in (OutKind.REMOTE, OutKind.EXTERNAL):
            out.append(
                _flow(
                    layout.OUTPUT,
                    priorities.SUPPRESS,
                    Match.of((IN_CLASS, cls), (OUT_KIND, kind), eth_type=ETH_TYPE_IP),
                    (Drop(),),
                    cfg.cookie(Feature.PIPELINE),
                )
            )
    return out


def _received_ports(cfg: BridgeConfig) -> list[tuple[PortClass, int]]:
    return [(cls, port) for cls, port in ((PortClass.TUNNEL, cfg.tunnel_port),
                                          (PortClass.UPLINK, cfg.uplink_port))
            if port is not None]


def initial_meters(cfg: BridgeConfig) -> list[Meter]:
    """The tunnel's and the uplink's punt meters (those with a rate); with a frame limit, the
    node's oversize punt meter and the tunnel's and the uplink's oversize counting meters."""
    found = [punt_meter(cfg, port, reason) for port, reason in (
        (cfg.tunnel_port, PuntReason.IGMP_TUNNEL), (cfg.uplink_port, PuntReason.IGMP_UPLINK))
        if port is not None]
    meters = [m for m in found if m is not None]
    if cfg.max_pod_frame is not None or cfg.max_received_frame is not None:
        meters.append(oversize.punt_meter())
    if cfg.max_received_frame is not None:
        meters += [oversize.count_meter(port) for _, port in _received_ports(cfg)]
    return meters


def _oversize_flows(cfg: BridgeConfig) -> list[Flow]:
    """Count (tunnel, uplink) and punt (every source) flows of the frame limits that are set."""
    cookie = cfg.cookie(Feature.OVERSIZE)
    flows = []
    if cfg.max_pod_frame is not None:
        flows.append(oversize.punt_flow(PortClass.POD, cfg.max_pod_frame, cookie))
    if cfg.max_received_frame is not None:
        for cls, port in _received_ports(cfg):
            flows.append(oversize.received_count_flow(
                cls, port, cfg.cookie(Feature.OVERSIZE, port)))
            flows.append(oversize.punt_flow(cls, cfg.max_received_frame, cookie))
    return flows


def initial_flows(cfg: BridgeConfig, external_all: bool = True) -> list[Flow]:
    """Flows present from the start, whatever pods and groups exist; without
    ``external_all``, the default to external takes link-local groups only."""
    p = cfg.cookie(Feature.PIPELINE)
    flows = list(_PIPELINE.miss_flows(p))
    flows.append(
        _flow(
            layout.OUTPUT,
            priorities.NORMAL,
            Match.of((OUT_KIND, OutKind.LOCAL), eth_type=ETH_TYPE_IP),
            (OutputReg(OUT_PORT),),
            p,
        )
    )
    # Agent-built queries are packet-out to the table with in_port=CONTROLLER; flood to pods.
    flows.append(
        _flow(
            layout.CLASSIFIER,
            priorities.PUNT,
            Match.of(in_port=OFPP_CONTROLLER, eth_type=ETH_TYPE_IP, ip_proto=IP_PROTO_IGMP),
            (GroupAction(QUERY_GROUP_ID),),
            cfg.cookie(Feature.IGMP),
        )
    )
    if cfg.tunnel_port is not None:
        flows.append(igmp_punt_flow(cfg, cfg.tunnel_port, PuntReason.IGMP_TUNNEL, 0))
        flows.append(
            _fork_flow(cfg, cfg.tunnel_port, PortClass.TUNNEL, layout.ROUTING, Feature.PIPELINE, 0)
        )
        flows.append(
            _output_flow(cfg, OutKind.REMOTE, (Output(cfg.tunnel_port),), Feature.PIPELINE)
        )
    if cfg.uplink_port is not None:
        flows.append(igmp_punt_flow(cfg, cfg.uplink_port, PuntReason.IGMP_UPLINK, 0))
        flows.append(
            _fork_flow(cfg, cfg.uplink_port, PortClass.UPLINK, layout.ROUTING, Feature.PIPELINE, 0)
        )
        flows.append(_output_flow(cfg, OutKind.EXTERNAL, external_output_actions(cfg),
                                  Feature.EXTERNAL))
        flows.append(default_external_flow(cfg, link_local_only=not external_all))
    flows.extend(_suppress_flows(cfg))
    flows.extend(_oversize_flows(cfg))
    return flows


def default_external_flow(cfg: BridgeConfig, link_local_only: bool = False) -> Flow:
    """Pod traffic to a group with no member anywhere still reaches external receivers: of
    every group, or (``link_local_only``: no router on the uplink) of 224.0.0.0/24 only, which
    a snooping switch floods; other groups go out only once an outside host asks for them."""
    match = Match.of((IN_CLASS, PortClass.POD), eth_type=ETH_TYPE_IP)
    if link_local_only:
        match = Match.of((IN_CLASS, PortClass.POD), eth_type=ETH_TYPE_IP, ipv4_dst=LINK_LOCAL_NET)
    return _flow(
        layout.ROUTING,
        priorities.DEFAULT_EXTERNAL,
        match,
        (LoadReg(OUT_KIND, OutKind.EXTERNAL), GotoTable(layout.OUTPUT)),
        cfg.cookie(Feature.EXTERNAL),
    )


def node_flows(cfg: BridgeConfig, node_ip: str) -> list[Flow]:
    """Encap: another node's SNATed pod multicast seen on our uplink already came by tunnel."""
    if cfg.mode is not Mode.ENCAP or cfg.uplink_port is None:
        return []
    return [
        _flow(
            layout.CLASSIFIER,
            priorities.NODE_SNAT_DROP,
            Match.of(in_port=cfg.uplink_port, eth_type=ETH_TYPE_IP, ipv4_src=node_ip,
                     ipv4_dst=MULTICAST_NET),
            (Drop(),),
            cfg.cookie(Feature.NODE, _ip_int(node_ip)),
        )
    ]


@functools.lru_cache(maxsize=65536)
def local_bucket(ofport: int) -> Bucket:
    """A copy for a local pod: through the receiving pod's ingress rule and metric."""
    return Bucket((LoadReg(OUT_KIND, OutKind.LOCAL), LoadReg(OUT_PORT, ofport),
                   Resubmit(layout.INGRESS_RULE)))


@functools.lru_cache(maxsize=65536)
def remote_bucket(node_ip: str) -> Bucket:
    """A copy for a remote node: straight to the tunnel; the receiving node enforces policy."""
    return Bucket((LoadReg(OUT_KIND, OutKind.REMOTE), SetTunnelDst(node_ip),
                   Resubmit(layout.OUTPUT)))


@functools.lru_cache(maxsize=1)
def external_bucket() -> Bucket:
    return Bucket((LoadReg(OUT_KIND, OutKind.EXTERNAL), Resubmit(layout.OUTPUT)))


def multicast_group(cfg: BridgeConfig, group_id: int, local_ports: Iterable[int],
                    remote_nodes: Iterable[str], external: bool = True) -> Group:
    """Type-ALL group: one bucket per local member port, per remote node, and (``external``,
    with an uplink) to external receivers."""
    buckets = [local_bucket(p) for p in sorted(set(local_ports))]
    if cfg.mode is Mode.ENCAP:
        buckets += [remote_bucket(ip) for ip in sorted(set(remote_nodes), key=_ip_int)]
    elif remote_nodes:
        raise ValueError("noEncap mode has no remote buckets: nodes meet on the underlay")
    if cfg.uplink_port is not None and external:
        # Last, and it must stay last: OVS does not undo a bucket's NAT for later buckets, so
        # any copy made after the SNATed external one would leave with the node's address.
        buckets.append(external_bucket())
    return _PIPELINE.check_group(Group(group_id, tuple(buckets)), layout.ROUTING)


def route_flow(cfg: BridgeConfig, group_ip: str, group_id: int) -> Flow:
    """Traffic to G, from anywhere, goes to G's group."""
    if not ipaddress.IPv4Address(group_ip).is_multicast:
        raise ValueError(f"{group_ip} is not a multicast address")
    return _flow(
        layout.ROUTING,
        priorities.NORMAL,
        Match.of(eth_type=ETH_TYPE_IP, ipv4_dst=group_ip),
        (GroupAction(group_id),),
        cfg.cookie(Feature.GROUP, _ip_int(group_ip)),
    )


def source_route_flow(cfg: BridgeConfig, source_ip: str, group_ip: str, group_id: int) -> Flow:
    """Traffic from S to G goes to the (S, G) group: IGMPv3 receivers that filter by source.

    It beats the (*, G) route flow; its group holds the members that admit S.
    """
    if not ipaddress.IPv4Address(group_ip).is_multicast:
        raise ValueError(f"{group_ip} is not a multicast address")
    return _flow(
        layout.ROUTING,
        priorities.SOURCE_SPECIFIC,
        Match.of(eth_type=ETH_TYPE_IP, ipv4_src=source_ip, ipv4_dst=group_ip),
        (GroupAction(group_id),),
        cfg.cookie(Feature.GROUP, group_id),
    )


def query_group(pod_ports: Iterable[int]) -> Group:
    """Floods an agent-built query to every local pod (the group the query flow uses)."""
    buckets = tuple(Bucket((Output(p),)) for p in sorted(set(pod_ports)))
    return _PIPELINE.check_group(Group(QUERY_GROUP_ID, buckets), layout.CLASSIFIER)
