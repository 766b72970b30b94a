"""What this node says in IGMP: reports to peer nodes and upstream, queries to pods and nodes.

Owns every frame the agent originates. Peers learn our local membership from IGMPv3 reports
sent through the tunnel (encap mode), the upstream router from the same reports out the uplink
(we are an IGMP proxy, RFC 4605); a group is announced when it gains its first local member and
withdrawn when it loses its last. Queries go to every local pod through the query group, or,
while ingress policy filters queries, to the pods it allows (one output each; ``query_ports``),
or through the tunnel to one node. A frame the switch cannot take now (disconnected) is lost like
any packet on a down link: queries and refreshes repeat on their own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

from agent.flowsync.switch import Switch, SwitchDisconnected
from agent.multicast.igmp.membership import Membership
from agent.multicast.igmp.packets import (
    ALL_HOSTS,
    GroupRecord,
    RecordType,
    build_query,
    build_v3_reports,
)
from agent.multicast.uplink import is_link_local
from pipeline.model import OFPP_CONTROLLER, OFPP_TABLE, Action, Output, SetTunnelDst
from pipeline.multicast import BridgeConfig, Mode

log = logging.getLogger(__name__)

UNDERLAY_MTU = 1500
TUNNEL_OVERHEAD = 100
"""Room for the outer headers of a report sent through the tunnel (VXLAN 50, Geneve 50+opts)."""
GENERAL_QUERY = "0.0.0.0"
QUERY_SIZE = {1: 8, 2: 8, 3: 12}  # bytes of the IGMP query we build (no sources), by version

QueryPorts = Callable[[str, int], "list[int] | None"]
"""(the query's group address: 224.0.0.1 for a general one, its IGMP size) -> the pod ports it
may reach, or None for every pod."""


class Announcer:
    """Builds and sends the agent's IGMP. Callers hold the core's lock."""

    def __init__(self, bridge: BridgeConfig, switch: Switch, local: Membership,
                 peers: Callable[[], list[str]], versions: Sequence[int], robustness: int,
                 query_interval_s: float, query_ports: QueryPorts | None = None) -> None:
        self._bridge = bridge
        self._switch = switch
        self._local = local
        self._peers = peers
        self._version = max(versions)
        self._robustness = robustness
        self._query_interval_s = query_interval_s
        self._announced: set[str] = set()
        self._query_ports = query_ports

    # -- reports --------------------------------------------------------------------------------

    def current_records(self) -> list[GroupRecord]:
        return [GroupRecord(RecordType.IS_EX, g, ()) for g in sorted(self._local.groups())]

    def mark_announced(self) -> None:
        """Take the current local groups as known to peers (restored after a restart)."""
        self._announced = set(self._local.groups())

    def announce_changes(self, changed: Iterable[str]) -> None:
        """Tell peers and upstream which of ``changed`` gained or lost their local side.

        Only the groups an event changed are looked at: the cost follows the change, not the
        number of groups the node has.
        """
        joined = {g for g in changed if self._local.has_group(g) and g not in self._announced}
        left = {g for g in changed if g in self._announced and not self._local.has_group(g)}
        if not joined and not left:
            return
        self._announced |= joined
        self._announced -= left
        records = [GroupRecord(RecordType.TO_EX, g, ()) for g in sorted(joined)]
        records += [GroupRecord(RecordType.TO_IN, g, ()) for g in sorted(left)]
        self.to_peers(records)
        self.upstream(records)

    def full_report(self) -> None:
        """Our whole membership to every peer and upstream (refresh, or a changed node set)."""
        records = self.current_records()
        self._announced = set(self._local.groups())
        if records:
            self.to_peers(records)
            self.upstream(records)

    def to_peers(self, records: list[GroupRecord], only: str | None = None) -> None:
        """Reports through the tunnel to every peer node, or to ``only``."""
        tunnel = self._bridge.tunnel_port
        if self._bridge.mode is not Mode.ENCAP or tunnel is None:
            return
        targets = [only] if only else self._peers()
        for frame in self._frames(records, UNDERLAY_MTU - TUNNEL_OVERHEAD):
            for ip in targets:
                self._send(frame, (SetTunnelDst(ip), Output(tunnel)))

    def upstream(self, records: list[GroupRecord]) -> None:
        """Reports out the uplink, to the upstream multicast router.

        Link-local groups (224.0.0.0/24: mDNS, LLMNR ...) stay among the cluster's nodes: a
        proxy never reports them upstream (RFC 4605 §4, RFC 2236 §6)."""
        uplink = self._bridge.uplink_port
        if uplink is None:
            return
        records = [r for r in records if not is_link_local(r.group)]
        for frame in self._frames(records, UNDERLAY_MTU):
            self._send(frame, (Output(uplink),))

    def _frames(self, records: list[GroupRecord], mtu: int) -> list[bytes]:
        if not records:
            return []
        return build_v3_reports(records, self._bridge.node_ip, self._bridge.node_mac, mtu=mtu)

    # -- queries --------------------------------------------------------------------------------

    def query_pods(self, group: str = GENERAL_QUERY, version: int | None = None,
                   max_resp_s: float = 1.0) -> None:
        """A query to every local pod: through the tables, where the query group floods it;
        while policy filters queries, straight to each pod it allows (none: nothing sent)."""
        version = version or self._version
        frame = self._query(group, version, max_resp_s)
        ports = None if self._query_ports is None else self._query_ports(
            ALL_HOSTS if group == GENERAL_QUERY else group, QUERY_SIZE[version])
        if ports is None:
            self._send(frame, (Output(OFPP_TABLE),), in_port=OFPP_CONTROLLER)
        elif ports:
            self._send(frame, tuple(Output(p) for p in ports), in_port=OFPP_CONTROLLER)

    def query_node(self, node_ip: str) -> None:
        """A general query through the tunnel to one node, which answers with its membership."""
        if self._bridge.tunnel_port is not None:
            frame = self._query(GENERAL_QUERY, None, 1.0)
            self._send(frame, (SetTunnelDst(node_ip), Output(self._bridge.tunnel_port)))

    def _query(self, group: str, version: int | None, max_resp_s: float) -> bytes:
        return build_query(version or self._version, self._bridge.node_ip, self._bridge.node_mac,
                           group=group, max_resp_s=max_resp_s, qrv=self._robustness,
                           qqic_s=int(self._query_interval_s))

    def _send(self, frame: bytes, actions: tuple[Action, ...], in_port: int | None = None) -> None:
        try:
            self._switch.packet_out(frame, actions, in_port=in_port)
        except SwitchDisconnected:
            log.debug("switch disconnected: packet-out dropped")
