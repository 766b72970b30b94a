"""The node agent's multicast core: pods, memberships, queries, announcements, flows.

It turns events (pod attach/detach, IGMP packet-ins, node set changes, timer ticks) into
reconciler updates and packet-outs. Membership and querier logic are the pure modules in
``agent.igmp``; flows and groups come from ``agent.forwarding``; the switch, OVSDB and reconciler
are adaptors handed in by ``agent.main``. One lock serialises every event, so handlers may run on
the os-ken thread, API threads and the timer thread alike.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from agent import metrics
from agent.api.server import ApiError, PodAttach, PodInfo
from agent.config import AgentConfig
from agent.flowsync.groupids import GroupIdAllocator
from agent.multicast import forwarding as fw
from agent.multicast.igmp.membership import ANY_SOURCE, Membership, Timers
from agent.multicast.igmp.packets import (
    GroupRecord,
    LeaveV2,
    MalformedIgmp,
    Query,
    RecordType,
    ReportV1,
    ReportV2,
    ReportV3,
    build_query,
    build_v3_reports,
    parse_frame,
)
from agent.multicast.igmp.querier import Querier
from agent.ovs.channel import SwitchDisconnected
from pipeline import layout
from pipeline.cookies import FEATURE_MASK, FEATURE_SHIFT, Feature
from pipeline.model import (
    OFPP_CONTROLLER,
    OFPP_TABLE,
    Action,
    GroupAction,
    LoadReg,
    Output,
    SetTunnelDst,
    SwitchState,
)
from pipeline.multicast import BridgeConfig, Mode, PuntReason
from pipeline.multicast import pipeline as mc_pipeline
from pipeline.registers import OUT_PORT
from pipeline.render import render_flow, render_group

log = logging.getLogger(__name__)

POD_MEMBER = "pod"
UNDERLAY_MTU = 1500
TUNNEL_OVERHEAD = 100
"""Room for the outer headers of a report sent through the tunnel (VXLAN 50, Geneve 50+opts)."""


class Switch(Protocol):
    def packet_out(self, data: bytes, actions: tuple[Action, ...],
                   in_port: int | None = None) -> None: ...

    def flow_stats(self, cookie: int, cookie_mask: int) -> list[tuple[Any, int, int]]: ...

    def dump(self) -> SwitchState: ...


class Reconciler(Protocol):
    def set(self, feature: str, key: str, state: SwitchState) -> None: ...

    def remove(self, feature: str, key: str) -> None: ...

    def flush(self) -> None: ...


class PodPorts(Protocol):
    """The OVSDB side of pod attachment."""

    def add_pod_port(self, pod: PodAttach) -> int: ...

    def del_port(self, ifname: str) -> None: ...


class PacketIn(Protocol):
    in_port: int
    userdata: bytes
    data: bytes
    tun_src: str | None


class MulticastAgent:
    def __init__(self, cfg: AgentConfig, bridge: BridgeConfig, switch: Switch,
                 reconciler: Reconciler, ports: PodPorts,
                 clock: Callable[[], float] = time.monotonic,
                 neighbour_seeder: Callable[[str], object] | None = None) -> None:
        self.cfg = cfg
        self.bridge = bridge
        self._switch = switch
        self._rec = reconciler
        self._ports = ports
        self._clock = clock
        self._seed_neighbour = neighbour_seeder
        self._lock = threading.RLock()
        timers = Timers(query_interval_s=cfg.query_interval_s, max_response_s=cfg.max_response_s,
                        robustness=cfg.robustness)
        self.local = Membership(timers, fast_leave=False)
        self.remote = Membership(timers, fast_leave=True)
        self._querier = Querier.from_timers(timers, cfg.query_versions, start_s=clock())
        self._next_refresh = clock()
        self._gids = GroupIdAllocator()
        self._group_keys: dict[str, set[str]] = {}  # group -> its allocator keys ((*,G), (S,G))
        self._pods: dict[str, PodInfo] = {}
        self._by_port: dict[int, PodInfo] = {}
        self._nodes: dict[str, str] = {}  # other nodes: name -> IP
        self._announced: set[str] = set()

    # ------------------------------------------------------------------ start-up

    def start(self, existing_pods: Iterable[PodInfo] = (),
              install: Callable[[], object] | None = None,
              found: SwitchState | None = None) -> None:
        """Install the pipeline and re-adopt pods found on the bridge (agent restart).

        ``install`` replaces the plain flush at start-up (the reconciler's round swap).
        ``found`` is what the switch held: its groups' members are restored so that a restart
        does not cut traffic while pods answer the start-up queries.
        """
        with self._lock:
            self._rec.set(Feature.PIPELINE, "", fw.pipeline_state(self.bridge))
            for pod in existing_pods:
                self._add_pod(pod)
            if found is not None:
                self._restore(found)
            self._rec.set(Feature.IGMP, "query", fw.query_state(self._by_port))
            if install is not None:
                install()
            else:
                self._rec.flush()

    def _restore(self, found: SwitchState) -> None:
        """Members of the groups a previous run installed, as if they had just reported.

        Real members refresh them at the start-up queries; stale ones age out like any silent
        member. Group ids are kept, so the swap to the new round modifies groups in place.
        """
        now = self._clock()
        groups = {g.group_id: g for g in found.groups}
        restored: set[str] = set()
        for flow in found.flows:
            dst = flow.match.get("ipv4_dst")
            if (flow.table != layout.ROUTING or dst is None or dst.mask is not None
                    or flow.match.get("ipv4_src") is not None):
                continue  # (S, G) flows come back from the members' next reports
            gid = next((a.group_id for a in flow.actions if isinstance(a, GroupAction)), None)
            group = groups.get(gid) if gid is not None else None
            if group is None or not group.buckets:
                continue  # too large to read back: its members re-report at the query
            g = str(dst.value)
            for bucket in group.buckets:
                port = next((a.value for a in bucket.actions
                             if isinstance(a, LoadReg) and a.field == OUT_PORT), None)
                tun = next((a.ip for a in bucket.actions if isinstance(a, SetTunnelDst)), None)
                if port in self._by_port:
                    self.local.apply(now, (POD_MEMBER, self._by_port[port].container_id),
                                     ReportV2(g))
                elif tun is not None:
                    self.remote.apply(now, tun, ReportV3((GroupRecord(RecordType.IS_EX, g),)))
            self._gids.adopt(g, group.group_id)
            self._group_keys[g] = {g}
            restored.add(g)
        self._sync_groups(restored)
        self._announced = set(self.local.groups())
        if restored:
            log.info("restored members of %d groups found on the switch", len(restored))

    # ------------------------------------------------------------------ pods (AgentApi)

    def attach_pod(self, req: PodAttach) -> PodInfo:
        with self._lock:
            old = self._pods.get(req.container_id)
            if old is not None:
                if old.host_ifname != req.host_ifname:
                    raise ApiError(409, f"container {req.container_id} is attached as "
                                        f"{old.host_ifname}, not {req.host_ifname}")
                return old
            ofport = self._ports.add_pod_port(req)
            pod = PodInfo(**{**req.__dict__, "ofport": ofport})
            try:
                self._add_pod(pod)
                self._rec.set(Feature.IGMP, "query", fw.query_state(self._by_port))
                self._rec.flush()
            except Exception:
                self._remove_pod(req.container_id)
                self._ports.del_port(req.host_ifname)
                raise
            log.info("pod %s/%s attached on port %d", pod.namespace, pod.name, ofport)
            return pod

    def detach_pod(self, container_id: str) -> None:
        with self._lock:
            pod = self._pods.get(container_id)
            if pod is None:
                return
            changed = self._remove_pod(container_id)
            self._rec.set(Feature.IGMP, "query", fw.query_state(self._by_port))
            self._sync_groups(changed)
            self._rec.flush()
            self._ports.del_port(pod.host_ifname)
            log.info("pod %s/%s detached", pod.namespace, pod.name)

    def list_pods(self) -> list[PodInfo]:
        with self._lock:
            return sorted(self._pods.values(), key=lambda p: (p.namespace, p.name))

    def _add_pod(self, pod: PodInfo) -> None:
        self._pods[pod.container_id] = pod
        self._by_port[pod.ofport] = pod
        self._rec.set(Feature.POD, pod.container_id, fw.pod_state(self.bridge, pod.ofport))

    def _remove_pod(self, container_id: str) -> set[str]:
        pod = self._pods.pop(container_id, None)
        if pod is None:
            return set()
        self._by_port.pop(pod.ofport, None)
        self._rec.remove(Feature.POD, container_id)
        return self.local.remove_member((POD_MEMBER, container_id))

    # ------------------------------------------------------------------ nodes

    def set_nodes(self, nodes: list[dict]) -> None:
        """The cluster's node set (name, ips: the first IP is its tunnel endpoint).

        Our own entry is ignored. New nodes' tunnel neighbours are resolved before anything is
        sent to them, so no first packet is lost while OVS would resolve it.
        """
        new = {n["name"]: n["ips"][0] for n in nodes
               if n["ips"] and n["name"] != self.cfg.node_name
               and n["ips"][0] != self.cfg.node_ip}
        if self._seed_neighbour is not None:
            with self._lock:
                known = set(self._nodes.values())
            for ip in sorted(set(new.values()) - known):
                self._seed_neighbour(ip)
        with self._lock:
            gone = set(self._nodes.values()) - set(new.values())
            added = set(new.values()) - set(self._nodes.values())
            changed: set[str] = set()
            for ip in gone:
                changed |= self.remote.remove_member(ip)
                self._rec.remove(Feature.NODE, ip)
            for ip in set(new.values()) - set(self._nodes.values()):
                self._rec.set(Feature.NODE, ip, fw.node_state(self.bridge, ip))
            self._nodes = new
            self._sync_groups(changed)
            self._rec.flush()
            # A changed node set gets our full membership at once (new nodes know nothing), and
            # new nodes are asked for theirs: their reports to us may have arrived before we
            # knew them, and were refused then.
            self._send_full_report()
            for ip in sorted(added):
                self._send_query(node_ip=ip)

    def node_ips(self) -> list[str]:
        with self._lock:
            return sorted(self._nodes.values())

    # ------------------------------------------------------------------ packet-ins

    def handle_packet_in(self, ev: PacketIn) -> None:
        try:
            reason = PuntReason(ev.userdata[0]) if ev.userdata else None
        except ValueError:
            reason = None
        if reason is None:
            metrics.IGMP_MESSAGES.labels(type="unknown", verdict="bad_userdata").inc()
            return
        try:
            msg = parse_frame(ev.data)
        except MalformedIgmp as e:
            metrics.IGMP_MESSAGES.labels(type="malformed", verdict=e.reason).inc()
            log.debug("malformed IGMP on port %d: %s", ev.in_port, e)
            return
        kind = type(msg).__name__
        with self._lock:
            now = self._clock()
            if reason is PuntReason.IGMP_POD:
                verdict = self._pod_igmp(now, ev.in_port, msg)
            elif reason is PuntReason.IGMP_TUNNEL:
                verdict = self._tunnel_igmp(now, ev, msg)
            else:
                verdict = self._uplink_igmp(msg)
            self._flush_unless_disconnected()
        metrics.IGMP_MESSAGES.labels(type=kind, verdict=verdict).inc()

    def _pod_igmp(self, now: float, in_port: int, msg: object) -> str:
        pod = self._by_port.get(in_port)
        if pod is None:
            return "unknown_port"
        if not isinstance(msg, ReportV1 | ReportV2 | LeaveV2 | ReportV3):
            return "ignored"  # pods are hosts: their queries are not ours to act on
        changed = self.local.apply(now, (POD_MEMBER, pod.container_id), msg)
        self._sync_groups(changed)
        self._announce_changes()
        return "accepted"

    def _tunnel_igmp(self, now: float, ev: PacketIn, msg: object) -> str:
        if isinstance(msg, Query):
            # Another node asks for our membership: answer it alone, even before we know it.
            node_ip = ev.tun_src or msg.src
            self._send_to_nodes(self._current_records(), only=node_ip)
            return "answered"
        if not isinstance(msg, ReportV3):
            return "ignored"
        node_ip = ev.tun_src or msg.src
        if node_ip not in self._nodes.values():
            return "unknown_node"
        self._sync_groups(self.remote.apply(now, node_ip, msg))
        return "accepted"

    def _uplink_igmp(self, msg: object) -> str:
        if isinstance(msg, Query):
            # IGMP proxy (RFC 4605): answer the upstream querier with our current membership.
            self._send_upstream(self._current_records())
            return "answered"
        return "ignored"

    # ------------------------------------------------------------------ groups

    def _sync_groups(self, groups: Iterable[str]) -> None:
        for g in groups:
            local = {self._pods[m[1]].ofport: f for m, f in self.local.members(g).items()
                     if m[1] in self._pods}
            remotes = sorted(self.remote.members(g)) if self.bridge.mode is Mode.ENCAP else []
            used: set[str] = set()

            def gid_of(source: str | None, g: str = g, used: set[str] = used) -> int:
                key = g if source is None else f"{g}/{source}"
                used.add(key)
                return self._gids.allocate(key)

            state = (fw.group_state(self.bridge, g, gid_of, local, remotes)
                     if local or remotes else None)
            if state is None or not state.flows:
                self._rec.remove(Feature.GROUP, g)
            else:
                self._rec.set(Feature.GROUP, g, state)
            for key in self._group_keys.get(g, set()) - used:
                self._gids.release(key)
            if used:
                self._group_keys[g] = used
            else:
                self._group_keys.pop(g, None)

    # ------------------------------------------------------------------ announcements

    def _current_records(self) -> list[GroupRecord]:
        return [GroupRecord(RecordType.IS_EX, g, ()) for g in sorted(self.local.groups())]

    def _announce_changes(self) -> None:
        """Tell other nodes and the upstream router when a group gains/loses its local side."""
        now_groups = self.local.groups()
        joined = now_groups - self._announced
        left = self._announced - now_groups
        if not joined and not left:
            return
        self._announced = set(now_groups)
        records = [GroupRecord(RecordType.TO_EX, g, ()) for g in sorted(joined)]
        records += [GroupRecord(RecordType.TO_IN, g, ()) for g in sorted(left)]
        self._send_to_nodes(records)
        self._send_upstream(records)

    def _send_full_report(self) -> None:
        records = self._current_records()
        self._announced = set(self.local.groups())
        if records:
            self._send_to_nodes(records)
            self._send_upstream(records)

    def _frames(self, records: list[GroupRecord], mtu: int = UNDERLAY_MTU) -> list[bytes]:
        if not records:
            return []
        return build_v3_reports(records, self.bridge.node_ip, self.bridge.node_mac, mtu=mtu)

    def _send_to_nodes(self, records: list[GroupRecord], only: str | None = None) -> None:
        if self.bridge.mode is not Mode.ENCAP or self.bridge.tunnel_port is None:
            return
        targets = [only] if only else sorted(self._nodes.values())
        for frame in self._frames(records, mtu=UNDERLAY_MTU - TUNNEL_OVERHEAD):
            for ip in targets:
                self._packet_out(frame, (SetTunnelDst(ip), Output(self.bridge.tunnel_port)))

    def _send_upstream(self, records: list[GroupRecord]) -> None:
        if self.bridge.uplink_port is None:
            return
        for frame in self._frames(records):
            self._packet_out(frame, (Output(self.bridge.uplink_port),))

    # ------------------------------------------------------------------ timers

    def tick(self) -> None:
        """Age members, send due queries and refreshes. Called often by the timer thread."""
        with self._lock:
            now = self._clock()
            changed = self.local.expire(now)
            remote_changed = self.remote.expire(now)
            if changed or remote_changed:
                self._sync_groups(changed | remote_changed)
                self._announce_changes()
            for g in self.local.due_queries(now):
                self._send_query(group=g, max_resp_s=self.local.timers.last_member_query_interval_s)
            if self._querier.due(now):
                args = self._querier.query_args()
                self._send_query(version=args.version, max_resp_s=args.max_resp_s)
                self._querier.sent(now)
            if now >= self._next_refresh:
                self._next_refresh = now + self.cfg.query_interval_s
                self._send_full_report()
            self._flush_unless_disconnected()

    def _send_query(self, group: str = "0.0.0.0", version: int | None = None,
                    max_resp_s: float = 1.0, node_ip: str | None = None) -> None:
        """A query to every local pod, or (``node_ip``) through the tunnel to one node."""
        v = version or max(self.cfg.query_versions)
        frame = build_query(v, self.bridge.node_ip, self.bridge.node_mac, group=group,
                            max_resp_s=max_resp_s, qrv=self.cfg.robustness,
                            qqic_s=int(self.cfg.query_interval_s))
        if node_ip is not None:
            if self.bridge.tunnel_port is not None:
                self._packet_out(frame, (SetTunnelDst(node_ip),
                                                Output(self.bridge.tunnel_port)))
            return
        # Through the table: the query flow floods it to every pod via the query group.
        self._packet_out(frame, (Output(OFPP_TABLE),), in_port=OFPP_CONTROLLER)

    def _packet_out(self, data: bytes, actions: tuple[Action, ...],
                    in_port: int | None = None) -> None:
        try:
            self._switch.packet_out(data, actions, in_port=in_port)
        except SwitchDisconnected:
            # Lost like any packet on a down link: queries and refreshes repeat on their own.
            log.debug("switch disconnected: packet-out dropped")

    def _flush_unless_disconnected(self) -> None:
        """Flush; while the bridge is away the desired state waits for the reconnect's sync."""
        try:
            self._rec.flush()
        except SwitchDisconnected:
            log.debug("switch disconnected: flush deferred to the reconnect")

    # ------------------------------------------------------------------ reads (AgentApi)

    def members(self) -> list[dict]:
        with self._lock:
            out = []
            for g in sorted(self.local.groups() | self.remote.groups()):
                local = {f"{p.namespace}/{p.name}": f for m, f in self.local.members(g).items()
                         if (p := self._pods.get(m[1])) is not None}
                filters = {ref: {"mode": f.mode.value, "sources": sorted(f.sources)}
                           for ref, f in sorted(local.items()) if f != ANY_SOURCE}
                out.append({"group": g, "localPods": sorted(local),
                            "remoteNodes": sorted(self.remote.members(g)),
                            "sourceFilters": filters})
            return out

    def pod_stats(self) -> list[dict]:
        cookie = int(Feature.POD) << FEATURE_SHIFT
        stats = self._switch.flow_stats(cookie, FEATURE_MASK)
        with self._lock:
            inbound = {p: 0 for p in self._by_port}
            outbound = {p: 0 for p in self._by_port}
            for flow, packets, _bytes in stats:
                if flow.table == layout.EGRESS_METRIC:
                    port = flow.match.get("in_port")
                    if port is not None and port.value in outbound:
                        outbound[port.value] = packets
                elif flow.table == layout.INGRESS_METRIC:
                    reg = flow.match.get(OUT_PORT.oxm)
                    if reg is not None and OUT_PORT.decode(reg.value) in inbound:
                        inbound[OUT_PORT.decode(reg.value)] = packets
            return [{"namespace": p.namespace, "name": p.name, "inbound": inbound[port],
                     "outbound": outbound[port]}
                    for port, p in sorted(self._by_port.items(),
                                          key=lambda kv: (kv[1].namespace, kv[1].name))]

    def flows(self) -> list[str]:
        """What is on the switch now, as ovs-ofctl text (groups first)."""
        state = self._switch.dump()
        pipe = mc_pipeline()
        return ([render_group(g, pipe) for g in sorted(state.groups, key=lambda g: g.group_id)]
                + [render_flow(f, pipe) for f in sorted(
                    state.flows, key=lambda f: (pipe.table_id(f.table), -f.priority))])

    def health(self) -> dict:
        with self._lock:
            return {"node": self.cfg.node_name, "mode": str(self.bridge.mode),
                    "pods": len(self._pods), "groups": len(self._group_keys),
                    "nodes": sorted(self._nodes)}
