"""What one node's br-int must hold, computed from the agent's state (pure).

Each function returns the ``DesiredState`` of one reconciler key. The agent calls them for the
keys an event touched; tests call them to feed the fake table and check delivery.
"""

from __future__ import annotations

from collections.abc import Iterable

from pipeline import multicast as mc
from pipeline.model import DesiredState

# Reconciler features (the first half of a reconciler key).
PIPELINE = "pipeline"
POD = "pod"
GROUP = "group"
NODE = "node"
QUERY = "query"


def pipeline_state(cfg: mc.BridgeConfig) -> DesiredState:
    return DesiredState(flows=tuple(mc.initial_flows(cfg)))


def pod_state(cfg: mc.BridgeConfig, ofport: int) -> DesiredState:
    return DesiredState(flows=tuple(mc.pod_flows(cfg, ofport)))


def query_state(pod_ports: Iterable[int]) -> DesiredState:
    return DesiredState(groups=(mc.query_group(pod_ports),))


def node_state(cfg: mc.BridgeConfig, node_ip: str) -> DesiredState:
    return DesiredState(flows=tuple(mc.node_flows(cfg, node_ip)))


def group_state(cfg: mc.BridgeConfig, group_ip: str, group_id: int, local_ports: Iterable[int],
                remote_nodes: Iterable[str]) -> DesiredState:
    """Route flow and replication group of one multicast group with members somewhere."""
    return DesiredState(
        flows=(mc.route_flow(cfg, group_ip, group_id),),
        groups=(mc.multicast_group(cfg, group_id, local_ports, remote_nodes),),
    )
