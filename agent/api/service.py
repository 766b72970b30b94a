"""The agent behind the local API: the multicast core's answers in the API's JSON shapes.

Owns the translation between the core and the wire: domain results become the JSON the
routes return (``mcctl`` and users script against these keys), and domain errors become HTTP
statuses here and nowhere else (``AttachConflict`` -> 409, ``TraceError`` -> 404 or 400).
The flow listing renders the switch's content as ovs-ofctl text; a trace walks it through the
fake table (``agent.multicast.trace``). A detach that names another pod interface than the one
the container is attached through changes nothing (CNI DEL of a network that added no
interface of ours); the pod network's MTUs are the agent's, computed at start-up.
"""

from __future__ import annotations

import logging
from typing import Any

from agent.api.types import ApiError, TraceQuery
from agent.flowsync.switch import Switch, SwitchDisconnected
from agent.interfacestore import AttachConflict, PodAttach, PodInfo
from agent.multicast.core import MulticastCore
from agent.multicast.trace import (
    DEFAULT_PAYLOAD,
    DEFAULT_UDP_PORT,
    TraceError,
    TraceRequest,
    trace,
    view_of,
)
from agent.podnetwork import PodMtu
from pipeline.render import render_flow, render_group
from pipeline.tables import Pipeline
from wire.nodes import NodeInfo

log = logging.getLogger(__name__)


class AgentService:
    """Implements ``agent.api.types.AgentApi`` over the running core."""

    def __init__(self, core: MulticastCore, switch: Switch, pipeline: Pipeline,
                 pod_mtu: PodMtu | None = None) -> None:
        self._core = core
        self._switch = switch
        self._pipeline = pipeline
        self._pod_mtu = pod_mtu

    def attach_pod(self, req: PodAttach) -> PodInfo:
        try:
            return self._core.attach_pod(req)
        except AttachConflict as exc:
            raise ApiError(409, str(exc)) from None

    def detach_pod(self, container_id: str, ifname: str = "") -> None:
        # CNI calls for one container come one at a time (the runtime serialises them), so
        # the attachment cannot change between this look-up and the detach
        pod = next((p for p in self._core.list_pods() if p.container_id == container_id), None)
        if pod is None:
            return
        if not pod.answers_to(ifname):
            log.info("not detaching %s: attached through %s, not %s", pod.ref, pod.ifname, ifname)
            return
        self._core.detach_pod(container_id)

    def list_pods(self) -> list[PodInfo]:
        return self._core.list_pods()

    def pod_network(self) -> PodMtu:
        if self._pod_mtu is None:
            raise ApiError(503, "this agent was started without the pod network's MTUs")
        return self._pod_mtu

    def members(self) -> list[dict[str, Any]]:
        return [{"group": m.group, "localPods": list(m.local_pods),
                 "remoteNodes": list(m.remote_nodes),
                 "outsideHosts": list(m.outside_hosts),
                 "sourceFilters": {ref: {"mode": f.mode, "sources": list(f.sources)}
                                   for ref, f in m.source_filters.items()}}
                for m in self._core.members()]

    def pod_stats(self) -> list[dict[str, Any]]:
        return [{"namespace": s.namespace, "name": s.name, "inbound": s.inbound,
                 "outbound": s.outbound,
                 "dropped": {"spoofed": s.spoofed, "notMulticast": s.not_multicast,
                             "igmpRate": s.igmp_dropped, "oversized": s.oversized}}
                for s in self._core.pod_stats()]

    def policy_stats(self) -> list[dict[str, Any]]:
        """Every rule the node enforces with its counters (IGMP rules: judged messages and
        v3 records; data rules: packets their metric flow saw), in rule key order."""
        return [{"scope": c.rule.key.scope, "namespace": c.rule.key.namespace,
                 "policy": c.rule.key.policy, "direction": c.rule.key.direction,
                 "index": c.rule.key.index, "rule": c.rule.name, "action": c.rule.action,
                 "kind": "igmp" if c.rule.is_igmp else "data",
                 "packets": c.packets, "bytes": c.bytes}
                for c in self._core.policy_counts()]

    def flows(self) -> list[str]:
        """What is on the switch now, as ovs-ofctl text (groups first)."""
        state = self._switch.dump()
        pipe = self._pipeline
        return ([render_group(g, pipe) for g in sorted(state.groups, key=lambda g: g.group_id)]
                + [render_flow(f, pipe) for f in sorted(
                    state.flows, key=lambda f: (pipe.table_id(f.table), -f.priority))])

    def trace(self, query: TraceQuery) -> dict[str, Any]:
        """A datagram to a group walked through what the switch holds now, for one pod."""
        req = TraceRequest(query.pod, query.group, query.source,
                           DEFAULT_UDP_PORT if query.port is None else query.port,
                           DEFAULT_PAYLOAD if query.size is None else query.size,
                           query.from_pod, query.from_node, query.from_uplink)
        try:
            return trace(view_of(self._core), self._switch.dump, req).to_json()
        except TraceError as exc:
            raise ApiError(404 if exc.missing else 400, str(exc)) from None
        except SwitchDisconnected:
            raise ApiError(503, "the switch is not connected: nothing to trace") from None

    def set_nodes(self, nodes: list[NodeInfo]) -> None:
        self._core.set_nodes(nodes)

    def health(self) -> dict[str, Any]:
        core = self._core
        return {"node": core.cfg.node_name, "mode": str(core.bridge.mode),
                "pods": len(core.list_pods()), "groups": len(core.groups),
                "nodes": core.node_names()}
