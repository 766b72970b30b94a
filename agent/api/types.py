"""The local API's contract: routes, the ``AgentApi`` protocol, JSON forms, ``ApiError``.

Routes (all bodies JSON; errors are ``{"error": message}`` with a 4xx/5xx status):

    GET    /healthz                  -> 200 health dict
    GET    /v1/pods                  -> 200 {"pods": [PodInfo...]}
    POST   /v1/pods       PodAttach  -> 201 PodInfo
    DELETE /v1/pods/{container_id}[?ifname=NAME]
                                     -> 204 (also when unknown: DEL must be idempotent); with
                                        ifname, only an attachment through that pod-side
                                        interface (or one made without a name) is detached
    GET    /v1/podnetwork            -> 200 {"interfaceMTU": int, "routeMTU": int}
    GET    /v1/members               -> 200 {"members": [...]}
    GET    /v1/stats/pods            -> 200 {"pods": [...]}
    GET    /v1/flows                 -> 200 {"flows": [str...]}
    GET    /v1/policystats           -> 200 {"rules": [{"scope", "namespace", "policy",
                                        "direction", "index", "rule", "action", "kind",
                                        "packets", "bytes"}...]}: every policy rule this node
                                        enforces, by scope, namespace, policy, direction, index
    PUT    /v1/nodes  {"nodes": [{"name": str, "ips": [str...]}]} -> 204
    POST   /v1/trace  TraceQuery     -> 200 {"node", "pod", "packet", "verdict", "reason",
                                        "policyRule", "steps", "deliveries", "membership",
                                        "notes"}: a datagram to a group walked through the
                                        node's switch, and what became of it for one pod
                                        (``agent.multicast.trace``); 404 for a pod not on the
                                        node, 400 for a group that is not multicast

PodAttach/PodInfo JSON: every field by its name; ``ifname`` and ``primary_ip`` may be left out
(default ""). Standard library only (and the stdlib-only ``agent.interfacestore``,
``agent.podnetwork`` and ``wire``), so the CNI plugin that imports the client stays cheap to
start.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, Protocol, TypeVar, runtime_checkable

from agent.interfacestore import PodAttach, PodInfo
from agent.podnetwork import PodMtu
from wire.nodes import NodeInfo


class ApiError(Exception):
    """An error with an HTTP status; raised by handlers and by the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


@runtime_checkable
class AgentApi(Protocol):
    """What the server serves: JSON-ready answers (implemented by ``agent.api.service``)."""

    def attach_pod(self, req: PodAttach) -> PodInfo: ...
    def detach_pod(self, container_id: str, ifname: str = "") -> None: ...
    def list_pods(self) -> list[PodInfo]: ...
    def pod_network(self) -> PodMtu: ...
    def members(self) -> list[dict[str, Any]]: ...
    def pod_stats(self) -> list[dict[str, Any]]: ...
    def flows(self) -> list[str]: ...
    def policy_stats(self) -> list[dict[str, Any]]: ...
    def set_nodes(self, nodes: list[NodeInfo]) -> None: ...
    def health(self) -> dict[str, Any]: ...
    def trace(self, query: TraceQuery) -> dict[str, Any]: ...


@dataclass(frozen=True)
class TraceQuery:
    """``POST /v1/trace``: which pod, which group; the datagram's source, UDP port and payload
    size, and where it comes from (at most one of ``fromPod``, ``fromNode``, ``fromUplink``;
    none: from outside the node). Unset fields are left out of the JSON."""

    pod: str  # namespace/name
    group: str
    source: str | None = None
    port: int | None = None
    size: int | None = None  # UDP payload bytes
    from_pod: str | None = None
    from_node: str | None = None  # a node's IP
    from_uplink: bool = False

    _JSON = (("pod", "pod", str), ("group", "group", str), ("source", "source", str),
             ("port", "port", int), ("size", "size", int), ("from_pod", "fromPod", str),
             ("from_node", "fromNode", str), ("from_uplink", "fromUplink", bool))

    def to_json(self) -> dict[str, Any]:
        return {key: getattr(self, name) for name, key, _ in self._JSON
                if getattr(self, name) not in (None, False)}

    @classmethod
    def from_json(cls, obj: Any) -> TraceQuery:
        """From the request body; 400 for a missing pod or group, or a field of a wrong type."""
        if not isinstance(obj, dict):
            raise ApiError(400, "trace: expected a JSON object")
        unknown = sorted(set(obj) - {key for _, key, _ in cls._JSON})
        if unknown:
            raise ApiError(400, f"trace: unknown fields {unknown}")
        out: dict[str, Any] = {}
        for name, key, kind in cls._JSON:
            value = obj.get(key)
            if value is None:
                if key in ("pod", "group"):
                    raise ApiError(400, f"trace: {key} is required")
                continue
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ApiError(400, f"trace.{key}: expected {kind.__name__}")
            out[name] = value
        return cls(**out)


_Pod = TypeVar("_Pod", PodAttach, PodInfo)


def pod_from_json(cls: type[_Pod], obj: Any) -> _Pod:
    """``cls`` from a JSON object with every field of the declared type; 400 if not.

    A field with a default may be left out (``ifname``, ``primary_ip``: older clients).
    """
    if not isinstance(obj, dict):
        raise ApiError(400, f"{cls.__name__}: expected a JSON object")
    out: dict[str, Any] = {}
    for f in fields(cls):
        want = int if f.type in ("int", int) else str  # annotations are strings (future import)
        if f.name not in obj and f.default is not MISSING:
            continue
        value = obj.get(f.name)
        # bool is an int subclass; an ofport of `true` is still a client bug
        if not isinstance(value, want) or isinstance(value, bool):
            raise ApiError(400, f"{cls.__name__}.{f.name}: expected {want.__name__}")
        out[f.name] = value
    return cls(**out)


def pod_to_json(pod: PodAttach) -> dict[str, Any]:
    return asdict(pod)


def pod_mtu_from_json(obj: Any) -> PodMtu:
    """The ``GET /v1/podnetwork`` answer; 502 if it is not one (the agent is at fault)."""
    values: list[int] = []
    for key in ("interfaceMTU", "routeMTU"):
        value = obj.get(key) if isinstance(obj, dict) else None
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ApiError(502, f"pod network: expected a positive integer {key}, got {obj!r}")
        values.append(value)
    return PodMtu(interface=values[0], route=values[1])
