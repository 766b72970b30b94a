"""Start-up after a restart: members of the groups a previous run left on the switch.

The flows and groups of a previous run stay installed while the agent restarts, so traffic
flows on. The new run reads them back (``pipeline.readback``) and takes each (*, G) group's pod
and node buckets as members that have just reported, keeping the group ids: the swap to the new
round then modifies groups in place instead of cutting them. Real members refresh at the
start-up queries; stale ones age out like any silent member. (S, G) state and groups too large
to read back return with the members' next reports.
"""

from __future__ import annotations

from agent.interfacestore import InterfaceStore
from agent.multicast.groups import GroupReplication
from agent.multicast.igmp.membership import Membership
from agent.multicast.igmp.packets import GroupRecord, RecordType, ReportV2, ReportV3
from pipeline.model import SwitchState
from pipeline.readback import any_source_routes


def restore_members(now: float, found: SwitchState, pods: InterfaceStore, local: Membership,
                    remote: Membership, groups: GroupReplication) -> set[str]:
    """Apply the members found in ``found``; returns the groups restored."""
    restored: set[str] = set()
    for route in any_source_routes(list(found.flows), list(found.groups)):
        g = route.group_ip
        for port in route.local_ports:
            pod = pods.by_port(port)
            if pod is not None:
                local.apply(now, pod.container_id, ReportV2(g))
        for node_ip in route.remote_nodes:
            remote.apply(now, node_ip, ReportV3((GroupRecord(RecordType.IS_EX, g),)))
        groups.adopt(g, route.group_id)
        restored.add(g)
    return restored
