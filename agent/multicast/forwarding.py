"""What one node's br-int must hold, computed from the agent's state (pure).

Each function returns the ``SwitchState`` of one reconciler key ``(Feature, key)``. The agent
calls them for the keys an event touched; tests call them to feed the fake table and check
delivery.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping

from agent.multicast.igmp.membership import FilterMode, SourceFilter
from pipeline import multicast as mc
from pipeline.model import SwitchState


def pipeline_state(cfg: mc.BridgeConfig, external_all: bool = True) -> SwitchState:
    """The fixed pipeline; without ``external_all`` (no router on the uplink, agent not told to
    always forward), pod traffic to a group nobody asked for leaves by the uplink only if the
    group is link-local."""
    return SwitchState(flows=tuple(mc.initial_flows(cfg, external_all)),
                       meters=tuple(mc.initial_meters(cfg)))


def pod_state(cfg: mc.BridgeConfig, ofport: int, mac: str = "", ip: str = "") -> SwitchState:
    """A pod port's flows: with its MAC (and IP), only its own multicast gets through."""
    return SwitchState(flows=tuple(mc.pod_flows(cfg, ofport, mac, ip)),
                       meters=tuple(mc.pod_meters(cfg, ofport)))


def query_state(pod_ports: Iterable[int]) -> SwitchState:
    return SwitchState(groups=(mc.query_group(pod_ports),))


def node_state(cfg: mc.BridgeConfig, node_ip: str) -> SwitchState:
    return SwitchState(flows=tuple(mc.node_flows(cfg, node_ip)))


def group_state(cfg: mc.BridgeConfig, group_ip: str, group_ids: Callable[[str | None], int],
                local: Mapping[int, SourceFilter], remote_nodes: Iterable[str],
                external: bool = True, outside_listeners: bool = False) -> SwitchState:
    """Route flows and replication groups of one multicast group with members somewhere.

    ``local`` maps member pod ports to their IGMPv3 source filter. Members that take any
    source not listed by anyone (EXCLUDE mode) and all remote nodes get the (*, G) group; every
    source some member lists gets an (S, G) flow and group with exactly the members that admit
    it, unless that set is the (*, G) one. ``group_ids(None)`` / ``group_ids(S)`` give the ids.
    Every group has an external bucket when ``external`` (the uplink wants G); with
    ``outside_listeners`` (only hosts on the uplink asked for G) the (*, G) group exists even
    without a member inside, for that bucket alone.
    """
    remotes = sorted(set(remote_nodes), key=_ip_int)
    any_ports = sorted(p for p, f in local.items() if f.mode is FilterMode.EXCLUDE)
    flows, groups = [], []
    star = bool(any_ports or remotes or (outside_listeners and external))
    if star:
        gid = group_ids(None)
        flows.append(mc.route_flow(cfg, group_ip, gid))
        groups.append(mc.multicast_group(cfg, gid, any_ports, remotes, external))
    listed = sorted({s for f in local.values() for s in f.sources}, key=_ip_int)
    for source in listed:
        ports = sorted(p for p, f in local.items() if f.admits(source))
        if (star and ports == any_ports) or not (ports or star):
            continue  # the (*, G) flow, or the default flows, already do exactly this
        gid = group_ids(source)
        flows.append(mc.source_route_flow(cfg, source, group_ip, gid))
        groups.append(mc.multicast_group(cfg, gid, ports, remotes, external))
    return SwitchState(flows=tuple(flows), groups=tuple(groups))


def _ip_int(ip: str) -> int:
    return int(ipaddress.IPv4Address(ip))
