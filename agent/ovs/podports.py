"""Pod ports on br-int through OVSDB: attach, detach, and find the pods a previous run left.

A pod's identity (namespace, name, container id, IP, MAC, pod-side interface name, primary IP)
is kept in its port's external_ids, so a restarted agent re-adopts its pods from OVSDB alone.
"""

from __future__ import annotations

from agent.interfacestore import PodAttach, PodInfo
from agent.ovs.ovsdb import Ovsdb, PortInfo, pod_external_ids


class OvsdbPodPorts:
    """The OVSDB side of pod attachment, bound to one bridge."""

    def __init__(self, db: Ovsdb, bridge: str) -> None:
        self._db = db
        self._bridge = bridge

    def add_pod_port(self, pod: PodAttach) -> int:
        ext = {**pod_external_ids(pod.namespace, pod.name, pod.container_id),
               "pod-ip": pod.ip, "pod-mac": pod.mac, "pod-ifname": pod.ifname,
               "pod-primary-ip": pod.primary_ip}
        return self._db.add_pod_port(pod.host_ifname, ext, bridge=self._bridge)

    def del_port(self, ifname: str) -> None:
        self._db.del_port(ifname)

    def existing_pods(self) -> list[PodInfo]:
        """Pods attached to the bridge now (by an earlier run of the agent)."""
        return [p for p in map(pod_from_port, self._db.list_ports(self._bridge)) if p]


def pod_from_port(port: PortInfo) -> PodInfo | None:
    ext = port.external_ids
    if "container-id" not in ext or port.ofport <= 0:
        return None
    return PodInfo(namespace=ext.get("pod-namespace", ""), name=ext.get("pod-name", ""),
                   container_id=ext["container-id"], host_ifname=port.name,
                   ip=ext.get("pod-ip", ""), mac=ext.get("pod-mac", ""), ofport=port.ofport,
                   ifname=ext.get("pod-ifname", ""), primary_ip=ext.get("pod-primary-ip", ""))
