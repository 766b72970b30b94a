"""The node's multicast core: events in, membership changes, switch state and IGMP out.

Owns the order of things when something happens: a pod attaches or goes, the node set changes,
IGMP arrives from a pod, a peer node or upstream, or a timer falls due. Each event updates the
membership tables (``agent.multicast.igmp``, pure), then the groups it changed
(``GroupReplication``), then flushes the reconciler and lets the ``Announcer`` tell peers and
upstream. Multicast policy (``agent.multicast.policy``) is consulted where reports from pods
are applied and queries to pods are sent, and its data rules follow pods and the controller's
view in the same bundles. One lock serialises every event, so handlers may run on the switch's
event thread, API threads and the timer thread alike. The core never sleeps: ``next_deadline``
says when ``tick`` has work, and ``wake`` is called when an event may have moved that time
earlier.

Errors it raises are the domain's (``AttachConflict``); the local API maps them to statuses.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from agent import metrics
from agent.config import AgentConfig
from agent.flowsync.reconciler import Reconciler
from agent.flowsync.switch import PacketIn, Switch, SwitchDisconnected
from agent.interfacestore import AttachConflict, InterfaceStore, PodAttach, PodInfo
from agent.multicast import forwarding as fw
from agent.multicast import uplink
from agent.multicast.announcer import Announcer
from agent.multicast.groups import GroupReplication
from agent.multicast.igmp.limits import Cap, check_report
from agent.multicast.igmp.membership import ANY_SOURCE, Membership, Timers
from agent.multicast.igmp.packets import (
    LeaveV2,
    MalformedIgmp,
    Query,
    ReportV1,
    ReportV2,
    ReportV3,
    parse_frame,
)
from agent.multicast.igmp.querier import Querier
from agent.multicast.oversize import OversizeLog
from agent.multicast.policy.enforcer import PolicyEnforcer, RuleCount
from agent.multicast.restore import restore_members
from agent.multicast.stats import PodStats, pod_stats
from agent.multicast.uplink import UplinkListeners
from pipeline.cookies import Feature, feature_cookie_mask
from pipeline.model import SwitchState
from pipeline.multicast import BridgeConfig, Mode, PuntReason
from pipeline.oversize import count_meter_id
from wire.nodes import NodeInfo
from wire.policy import PolicyUpdate, RuleStats

log = logging.getLogger(__name__)

QUERY_KEY = "query"  # the reconciler key of the query group, under Feature.IGMP
SETTLE_GROUPS = 512
"""Groups rebuilt per settle: bounds one bundle whatever a burst of reports changed."""
REFUSAL_LOG_INTERVAL_S = 10.0


class PodPorts(Protocol):
    """The OVSDB side of pod attachment (implemented in ``agent.ovs.podports``)."""

    def add_pod_port(self, pod: PodAttach) -> int: ...

    def del_port(self, ifname: str) -> None: ...


@dataclass(frozen=True)
class SourceFilterView:
    mode: str  # "include" or "exclude"
    sources: tuple[str, ...]


@dataclass(frozen=True)
class GroupMembers:
    """Who receives one multicast group: local pods (ns/name) and remote nodes (IP)."""

    group: str
    local_pods: tuple[str, ...]
    remote_nodes: tuple[str, ...]
    source_filters: dict[str, SourceFilterView] = field(default_factory=dict)
    outside_hosts: tuple[str, ...] = ()  # hosts that reported the group on the uplink


class MulticastCore:
    def __init__(self, cfg: AgentConfig, bridge: BridgeConfig, switch: Switch,
                 reconciler: Reconciler, ports: PodPorts,
                 clock: Callable[[], float] = time.monotonic,
                 neighbour_seeder: Callable[[str], object] | None = None,
                 wake: Callable[[], None] = lambda: None,
                 policy_file: Path | None = None, uplink_file: Path | None = None) -> None:
        self.cfg = cfg
        self.bridge = bridge
        self._switch = switch
        self._rec = reconciler
        self._ports = ports
        self._clock = clock
        self._seed_neighbour = neighbour_seeder
        self._wake = wake
        self._lock = threading.RLock()
        timers = Timers(query_interval_s=cfg.query_interval_s, max_response_s=cfg.max_response_s,
                        robustness=cfg.robustness)
        self.local = Membership(timers, fast_leave=False)  # members: container ids
        self.remote = Membership(timers, fast_leave=True)  # members: node IPs
        self.pods = InterfaceStore()
        self._nodes: dict[str, str] = {}  # other nodes: name -> tunnel IP
        self.uplink = UplinkListeners(cfg.external_forwarding, timers, self._node_ip_set,
                                      bridge.node_ip, bridge.mode is Mode.ENCAP,
                                      max_groups=cfg.limits.groups_per_node)
        self._uplink_file = uplink_file
        self.groups = GroupReplication(bridge, reconciler, self.pods, self.local, self.remote,
                                       self.uplink)
        self.policy = PolicyEnforcer(bridge, reconciler, switch, policy_file)
        self.announcer = Announcer(bridge, switch, self.local, self.node_ips,
                                   cfg.query_versions, cfg.robustness, cfg.query_interval_s,
                                   query_ports=self._query_ports)
        self._querier = Querier.from_timers(timers, cfg.query_versions, start_s=clock())
        self.limits = cfg.limits
        self._pending: set[str] = set()  # groups whose members changed, not yet rebuilt
        self._membership_version = 0  # moves with every settled change (see membership_version)
        self._refusal_log: dict[Cap, tuple[float, int]] = {}  # cap -> (last logged, since)
        self._next_refresh = clock()
        self.oversize_log = OversizeLog(self._pod_ref_at, clock)  # Feature.OVERSIZE packet-ins

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
            if self._uplink_file is not None:
                uplink.load(self._uplink_file, self.uplink, self._clock())
            self._set_pipeline()
            for pod in existing_pods:
                self._add_pod(pod)
            self.policy.restore(self._pod_ports())  # the last view saved, if any
            if found is not None:
                restored = restore_members(self._clock(), found, self.pods, self.local,
                                           self.remote, self.groups)
                self.groups.sync(restored)
                self.announcer.mark_announced()
                if restored:
                    log.info("restored members of %d groups found on the switch", len(restored))
            self.groups.sync(self.uplink.outside.groups())  # outside hosts of the last run
            self._set_query_group()
            if install is not None:
                install()
            else:
                self._rec.flush()

    # ------------------------------------------------------------------ pods

    def attach_pod(self, req: PodAttach) -> PodInfo:
        with self._lock:
            old = self.pods.get(req.container_id)
            if old is not None:
                if old.host_ifname != req.host_ifname:
                    raise AttachConflict(f"container {req.container_id} is attached as "
                                         f"{old.host_ifname}, not {req.host_ifname}")
                return old
            ofport = self._ports.add_pod_port(req)
            pod = PodInfo(**{**req.__dict__, "ofport": ofport})
            try:
                self._add_pod(pod)
                self.policy.sync(self._pod_ports())  # the pod's rules, in the same bundle
                self._set_query_group()
                self._rec.flush()
            except Exception:
                self._remove_pod(req.container_id)
                self.policy.sync(self._pod_ports())
                self._ports.del_port(req.host_ifname)
                raise
            log.info("pod %s attached on port %d", pod.ref, ofport)
            return pod

    def detach_pod(self, container_id: str) -> None:
        with self._lock:
            pod = self.pods.get(container_id)
            if pod is None:
                return
            changed = self._remove_pod(container_id)
            self.policy.sync(self._pod_ports())
            if pod.ref not in self._pod_ports():
                self.policy.forget_pod(pod.ref)
            self._membership_version += 1
            self._set_query_group()
            self.groups.sync(changed)
            self._rec.flush()
            self._ports.del_port(pod.host_ifname)
            self.announcer.announce_changes(changed)  # they may have lost their local side
            log.info("pod %s detached", pod.ref)
        self._wake()

    def list_pods(self) -> list[PodInfo]:
        with self._lock:
            return self.pods.sorted()

    def _pod_ref_at(self, ofport: int) -> str | None:
        with self._lock:
            pod = self.pods.by_port(ofport)
            return pod.ref if pod is not None else None

    def _add_pod(self, pod: PodInfo) -> None:
        self.pods.add(pod)
        self._rec.set(Feature.POD, pod.container_id,
                      fw.pod_state(self.bridge, pod.ofport, pod.mac, pod.ip))

    def _remove_pod(self, container_id: str) -> set[str]:
        if self.pods.remove(container_id) is None:
            return set()
        self._rec.remove(Feature.POD, container_id)
        return self.local.remove_member(container_id)

    def _pod_ports(self) -> dict[str, list[int]]:
        """``namespace/name`` -> its ports (a pod being replaced may briefly have two)."""
        out: dict[str, list[int]] = {}
        for pod in self.pods:
            out.setdefault(pod.ref, []).append(pod.ofport)
        return out

    def _set_query_group(self) -> None:
        self._rec.set(Feature.IGMP, QUERY_KEY, fw.query_state(self.pods.ports()))

    # ------------------------------------------------------------------ nodes

    def set_nodes(self, nodes: list[NodeInfo]) -> None:
        """The cluster's node set; our own entry is ignored.

        New nodes' tunnel neighbours are resolved before anything is sent to them, so no first
        packet is lost while OVS would resolve it.
        """
        new = {n.name: n.tunnel_ip for n in nodes
               if n.tunnel_ip and n.name != self.cfg.node_name and n.tunnel_ip != self.cfg.node_ip}
        new_ips = {ip for ip in new.values() if ip}
        if self._seed_neighbour is not None:
            with self._lock:
                known = set(self._nodes.values())
            for ip in sorted(new_ips - known):
                self._seed_neighbour(ip)
        with self._lock:
            old_ips = set(self._nodes.values())
            changed: set[str] = set()
            for ip in old_ips - new_ips:
                changed |= self.remote.remove_member(ip)
                self._rec.remove(Feature.NODE, ip)
            for ip in new_ips - old_ips:
                self._rec.set(Feature.NODE, ip, fw.node_state(self.bridge, ip))
            self._nodes = {name: ip for name, ip in new.items() if ip}
            self.groups.sync(changed)
            self._rec.flush()
            # A changed node set gets our full membership at once (new nodes know nothing), and
            # new nodes are asked for theirs: their reports to us may have arrived before we
            # knew them, and were refused then.
            self.announcer.full_report()
            for ip in sorted(new_ips - old_ips):
                self.announcer.query_node(ip)
        self._wake()

    def node_ips(self) -> list[str]:
        with self._lock:
            return sorted(self._nodes.values())

    def node_names(self) -> list[str]:
        with self._lock:
            return sorted(self._nodes)

    # ------------------------------------------------------------------ policy

    def set_policy(self, update: PolicyUpdate) -> None:
        """The controller's policy update, applied to the view and enforced at once.

        Memberships the new view would no longer let a pod report end now (not when they age
        out): a dropped report means no membership."""
        with self._lock:
            self.policy.set_view(self.policy.view.apply(update), self._pod_ports())
            now = self._clock()
            for cid, group in self.policy.denied(
                    (m, p.ref, g) for g in self.local.groups() for m in self.local.members(g)
                    if (p := self.pods.get(str(m))) is not None):
                self._pending |= self.local.apply(now, cid, LeaveV2(group), fast_leave=True)
            self.settle()
        self._wake()

    def rule_stats(self) -> list[RuleStats]:
        """Cumulative counters of every rule this node enforces (for the controller)."""
        with self._lock:
            return self.policy.rule_stats()

    def policy_counts(self) -> list[RuleCount]:
        with self._lock:
            return self.policy.counts()

    def _query_ports(self, address: str, size: int) -> list[int] | None:
        """Which pods a query to ``address`` may reach (None: all, by the query group)."""
        return self.policy.query_ports(((p.ref, p.ofport) for p in self.pods), address, size)

    # ------------------------------------------------------------------ IGMP packet-ins

    def handle_packet_in(self, ev: PacketIn) -> None:
        """One IGMP packet-in, settled at once (see ``handle_packet_ins``)."""
        self.handle_packet_ins([ev])

    def handle_packet_ins(self, batch: Sequence[PacketIn]) -> None:
        """IGMP punted by pod, tunnel or uplink flows (packet-ins of ``Feature.IGMP``).

        Each is applied to the membership tables at once (cheap); the groups they changed are
        rebuilt, flushed and announced once per batch, and at most ``SETTLE_GROUPS`` at a
        time: a burst costs one bundle per batch, not one per report.
        """
        for ev in batch:
            self._receive(ev)
        self.settle()
        self._wake()  # reports may have moved the next deadline (a leave's query, an expiry)

    def _receive(self, ev: PacketIn) -> None:
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
        with self._lock:
            now = self._clock()
            if reason is PuntReason.IGMP_POD:
                verdict = self._pod_igmp(now, ev.in_port, msg)
            elif reason is PuntReason.IGMP_TUNNEL:
                verdict = self._tunnel_igmp(now, ev.tun_src, msg)
            else:
                verdict = self._uplink_igmp(now, msg)
        metrics.IGMP_MESSAGES.labels(type=type(msg).__name__, verdict=verdict).inc()

    def settle(self) -> None:
        """Rebuild, flush and announce what received reports changed (bounded per call).

        It wakes nobody: the timer loop calls it from ``tick`` and reads ``next_deadline``
        right after, and event handlers wake the loop themselves."""
        with self._lock:
            if self._pending:
                batch = sorted(self._pending)[:SETTLE_GROUPS]
                self._pending.difference_update(batch)
                self._membership_version += 1
                self.groups.sync(batch)
                # the switch first: a local member's traffic must not wait for the frames
                # that tell peers and upstream (each a packet-out of its own); they are
                # told even if the switch refused the bundle, as before
                try:
                    self._flush_unless_disconnected()
                finally:
                    self.announcer.announce_changes(batch)
            self._flush_unless_disconnected()

    def _pod_igmp(self, now: float, in_port: int, msg: object) -> str:
        pod = self.pods.by_port(in_port)
        if pod is None:
            return "unknown_port"
        if not isinstance(msg, ReportV1 | ReportV2 | LeaveV2 | ReportV3):
            return "ignored"  # pods are hosts: their queries are not ours to act on
        judged = self.policy.judge_report(pod.ref, msg)
        if judged is None:
            return "dropped_by_policy"  # no membership: no delivery, not reported
        msg = judged
        cap = check_report(self.limits, msg, self.local.filters_of(pod.container_id),
                           self._node_has_group, self._node_group_count,
                           self.local.source_count(pod.container_id))
        if cap is not None:
            self._refused(cap, pod)
            return "over_cap"
        self._pending |= self.local.apply(now, pod.container_id, msg)
        return "accepted"

    def _node_has_group(self, group: str) -> bool:
        return self.local.has_group(group) or self.remote.has_group(group)

    def _node_group_count(self) -> int:
        """Groups with a member anywhere (the node's cap counts each once)."""
        return self.local.group_count() + sum(
            1 for g in self.remote.groups() if not self.local.has_group(g))

    def _refused(self, cap: Cap, pod: PodInfo) -> None:
        """Count a refusal; log it at most once per interval per cap, with how many were not."""
        metrics.IGMP_REFUSED.labels(cap=cap.value).inc()
        now = self._clock()
        last, suppressed = self._refusal_log.get(cap, (float("-inf"), 0))
        if now - last >= REFUSAL_LOG_INTERVAL_S:
            log.warning("IGMP report from pod %s refused: over %s (%d refusals not logged "
                        "since the last line)", pod.ref, cap.value, suppressed)
            self._refusal_log[cap] = (now, 0)
        else:
            self._refusal_log[cap] = (last, suppressed + 1)

    def _tunnel_igmp(self, now: float, tun_src: str | None, msg: object) -> str:
        if isinstance(msg, Query):
            # Another node asks for our membership: answer it alone, even before we know it.
            self.announcer.to_peers(self.announcer.current_records(), only=tun_src or msg.src)
            return "answered"
        if not isinstance(msg, ReportV3):
            return "ignored"
        node_ip = tun_src or msg.src
        if node_ip not in self._nodes.values():
            return "unknown_node"
        self._pending |= self.remote.apply(now, node_ip, msg)
        return "accepted"

    def _uplink_igmp(self, now: float, msg: object) -> str:
        if isinstance(msg, Query):
            # IGMP proxy (RFC 4605): answer the upstream querier with our current membership.
            self.announcer.upstream(self.announcer.current_records())
            self._uplink_changed(set(), self.uplink.query(now, msg))
            return "answered"
        if not isinstance(msg, ReportV1 | ReportV2 | LeaveV2 | ReportV3):
            return "ignored"
        verdict, changed = self.uplink.report(now, msg)  # an outside host (or a peer) speaks
        self._uplink_changed(changed, False)
        return verdict

    def _uplink_changed(self, groups: set[str], all_groups: bool) -> None:
        """Groups whose external copy changed are rebuilt with the next settle; when a router
        came or went, every group and the default external flow."""
        if all_groups:
            self._set_pipeline()
            groups = self.local.groups() | self.remote.groups() | self.uplink.outside.groups()
        self._pending |= groups
        if self._uplink_file is not None and (groups or self.uplink.router):
            uplink.save(self._uplink_file, self.uplink, self._clock())

    def _set_pipeline(self) -> None:
        self._rec.set(Feature.PIPELINE, "",
                      fw.pipeline_state(self.bridge, external_all=self.uplink.forwards_all))

    def _node_ip_set(self) -> set[str]:
        return set(self._nodes.values())

    # ------------------------------------------------------------------ timers

    def next_deadline(self) -> float:
        """When ``tick`` has work next: an expiry, a due query, the periodic refresh, or now
        while changed groups wait to be settled."""
        with self._lock:
            if self._pending:
                return self._clock()
            times = [self._querier.next_due(), self._next_refresh]
            times += [t for t in (self.local.next_deadline(), self.remote.next_deadline(),
                                  self.uplink.next_deadline()) if t is not None]
            return min(times)

    def tick(self) -> None:
        """Age members, send due queries and refreshes, settle; cheap when nothing is due."""
        with self._lock:
            now = self._clock()
            self._pending |= self.local.expire(now) | self.remote.expire(now)
            outside, all_groups = self.uplink.expire(now)
            if outside or all_groups:
                self._uplink_changed(outside, all_groups)
            for g in self.local.due_queries(now):
                self.announcer.query_pods(
                    group=g, max_resp_s=self.local.timers.last_member_query_interval_s)
            if self._querier.due(now):
                args = self._querier.query_args()
                self.announcer.query_pods(version=args.version, max_resp_s=args.max_resp_s)
                self._querier.sent(now)
                for member in self.policy.kept_from_queries((p.ref, p.container_id)
                                                            for p in self.pods):
                    self.local.hold(now, member)  # cannot refresh: not aged out for it
            if now >= self._next_refresh:
                self._next_refresh = now + self.cfg.query_interval_s
                self.announcer.full_report()
        self.settle()

    def _flush_unless_disconnected(self) -> None:
        """Flush; while the bridge is away the desired state waits for the reconnect's sync."""
        try:
            self._rec.flush()
        except SwitchDisconnected:
            log.debug("switch disconnected: flush deferred to the reconnect")

    # ------------------------------------------------------------------ reads

    def membership_version(self) -> int:
        """Moves whenever ``members()`` may have changed: readers poll this, not the members."""
        with self._lock:
            return self._membership_version

    def members(self) -> list[GroupMembers]:
        with self._lock:
            out = []
            for g in sorted(self.local.groups() | self.remote.groups()
                            | self.uplink.outside.groups()):
                local = {p.ref: f for m, f in self.local.members(g).items()
                         if (p := self.pods.get(str(m))) is not None}
                filters = {ref: SourceFilterView(f.mode.value, tuple(sorted(f.sources)))
                           for ref, f in sorted(local.items()) if f != ANY_SOURCE}
                out.append(GroupMembers(g, tuple(sorted(local)),
                                        tuple(sorted(str(m) for m in self.remote.members(g))),
                                        filters, tuple(self.uplink.listeners(g))))
            return out

    def _node_ports(self) -> dict[str, int]:
        ports = {"tunnel": self.bridge.tunnel_port, "uplink": self.bridge.uplink_port}
        return {name: port for name, port in ports.items() if port is not None}

    def punt_drops(self) -> dict[str, int]:
        """IGMP the tunnel's and the uplink's punt meters dropped (their ids are their ports)."""
        meters = self._switch.meter_stats()
        return {name: m.dropped if (m := meters.get(port)) else 0
                for name, port in self._node_ports().items()}

    def oversized(self) -> dict[str, int]:
        """Multicast from the tunnel and the uplink dropped as larger than pods can receive
        (their oversize counting meters; absent without a receive limit)."""
        if self.bridge.max_received_frame is None:
            return {}
        meters = self._switch.meter_stats()
        return {name: m.packets if (m := meters.get(count_meter_id(port))) else 0
                for name, port in self._node_ports().items()}

    def pod_stats(self) -> list[PodStats]:
        stats = self._switch.flow_stats(*feature_cookie_mask(Feature.POD))
        meters = self._switch.meter_stats()
        with self._lock:
            pods = list(self.pods)
        return pod_stats(pods, stats, meters)
