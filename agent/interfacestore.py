"""The pods attached to this node's br-int: what a pod is to the agent, indexed two ways.

Owns ``PodAttach`` (what the CNI plugin asks for), ``PodInfo`` (an attached pod: the request
plus its OpenFlow port), the ``InterfaceStore`` that finds a pod by container id or by port,
and ``AttachConflict``, the domain error of a second attach that does not match the first.
Every feature (multicast, policy, egress) reads pods from here, so none owns them.
Standard library only: the CNI plugin imports this and must stay cheap to start.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field


class AttachConflict(Exception):
    """The container is already attached, through another interface."""


@dataclass(frozen=True)
class PodAttach:
    """Ask the agent to attach a pod's host-side interface to br-int.

    ``ip`` is the multicast interface's address: the source its datagrams carry, which the
    switch enforces. In chained and Multus mode it is the pod's primary address (a /32 on the
    multicast interface), so ``ip`` and ``primary_ip`` are equal; with IPAM of its own they
    differ. The two last fields are keyword-only and optional (older plugins do not send them).
    """

    namespace: str
    name: str
    container_id: str
    host_ifname: str
    ip: str  # may be "" (IPAM-less pods)
    mac: str  # the pod-side MAC
    ifname: str = field(default="", kw_only=True)  # the pod-side name ("" = not told)
    primary_ip: str = field(default="", kw_only=True)  # on the pod's primary network, or ""

    def answers_to(self, ifname: str) -> bool:
        """Whether a detach naming the pod-side interface ``ifname`` means this attachment.

        A detach without a name, or an attachment made without one, matches: CNI DEL of
        another interface of the same container must not take ours away, but an old plugin
        (or an old agent's re-adopted port) cannot say which interface it means.
        """
        return not ifname or not self.ifname or ifname == self.ifname


@dataclass(frozen=True)
class PodInfo(PodAttach):
    """An attached pod as the agent knows it."""

    ofport: int

    @property
    def ref(self) -> str:
        """``namespace/name``, as operators name pods."""
        return f"{self.namespace}/{self.name}"


class InterfaceStore:
    """Attached pods by container id and by OpenFlow port. Not thread-safe: callers lock."""

    def __init__(self) -> None:
        self._by_container: dict[str, PodInfo] = {}
        self._by_port: dict[int, PodInfo] = {}

    def add(self, pod: PodInfo) -> None:
        self._by_container[pod.container_id] = pod
        self._by_port[pod.ofport] = pod

    def remove(self, container_id: str) -> PodInfo | None:
        pod = self._by_container.pop(container_id, None)
        if pod is not None:
            self._by_port.pop(pod.ofport, None)
        return pod

    def get(self, container_id: str) -> PodInfo | None:
        return self._by_container.get(container_id)

    def by_port(self, ofport: int) -> PodInfo | None:
        return self._by_port.get(ofport)

    def ports(self) -> list[int]:
        return sorted(self._by_port)

    def sorted(self) -> list[PodInfo]:
        """Pods ordered as operators list them: by namespace, then name."""
        return sorted(self._by_container.values(), key=lambda p: (p.namespace, p.name))

    def __len__(self) -> int:
        return len(self._by_container)

    def __iter__(self) -> Iterator[PodInfo]:
        return iter(list(self._by_container.values()))
