"""Replication state per multicast group: from who is a member to one reconciler key.

Owns the step from membership to the switch: for a group whose members changed, read its local
members (pod ports with their IGMPv3 source filters), remote members (nodes) and whether the uplink
wants it (``agent.multicast.uplink``: outside hosts, a router, configuration), build its route flows
and replication groups (``agent.multicast.forwarding``), and set or remove the reconciler key
``(Feature.GROUP, G)``. Also owns the group ids of each multicast group: one for (*, G) and one per
(S, G), allocated on first use, released when unused, adopted after a restart.
"""

from __future__ import annotations

from collections.abc import Iterable

from agent.flowsync.groupids import GroupIdAllocator
from agent.flowsync.reconciler import Reconciler
from agent.interfacestore import InterfaceStore
from agent.multicast import forwarding as fw
from agent.multicast.igmp.membership import Membership, SourceFilter
from agent.multicast.uplink import UplinkListeners
from pipeline.cookies import Feature
from pipeline.multicast import BridgeConfig, Mode


def _id_key(group_ip: str, source: str | None) -> str:
    """Allocator key: ``G`` for the (*, G) group, ``G/S`` for an (S, G) group."""
    return group_ip if source is None else f"{group_ip}/{source}"


class GroupReplication:
    """Keeps each group's reconciler key in step with its members. Callers hold the lock."""

    def __init__(self, bridge: BridgeConfig, reconciler: Reconciler, pods: InterfaceStore,
                 local: Membership, remote: Membership, uplink: UplinkListeners) -> None:
        self._bridge = bridge
        self._rec = reconciler
        self._pods = pods
        self._local = local
        self._remote = remote
        self._uplink = uplink
        self._ids = GroupIdAllocator()
        self._keys: dict[str, set[str]] = {}  # group -> its allocator keys in use

    def sync(self, groups: Iterable[str]) -> None:
        """Rebuild the switch state of ``groups`` from their current members."""
        for g in groups:
            local: dict[int, SourceFilter] = {}
            for member, filt in self._local.members(g).items():
                pod = self._pods.get(str(member))
                if pod is not None:
                    local[pod.ofport] = filt
            remotes = (sorted(str(m) for m in self._remote.members(g))
                       if self._bridge.mode is Mode.ENCAP else [])
            used: set[str] = set()

            def group_id(source: str | None, g: str = g, used: set[str] = used) -> int:
                key = _id_key(g, source)
                used.add(key)
                return self._ids.allocate(key)

            outside = self._uplink.has_listeners(g)
            state = fw.group_state(self._bridge, g, group_id, local, remotes,
                                   external=self._uplink.wants(g), outside_listeners=outside) \
                if local or remotes or outside else None
            if state is None or not state.flows:
                self._rec.remove(Feature.GROUP, g)
            else:
                self._rec.set(Feature.GROUP, g, state)
            for key in self._keys.get(g, set()) - used:
                self._ids.release(key)
            if used:
                self._keys[g] = used
            else:
                self._keys.pop(g, None)

    def adopt(self, group_ip: str, group_id: int) -> None:
        """Keep the (*, G) id a previous run gave ``group_ip`` (found on the switch)."""
        self._ids.adopt(group_ip, group_id)
        self._keys[group_ip] = {group_ip}

    def ids(self) -> dict[str, int]:
        """Allocator key (``G`` or ``G/S``) -> group id, for every group id in use."""
        return self._ids.items()

    def __len__(self) -> int:
        """Multicast groups with replication state on the switch."""
        return len(self._keys)
