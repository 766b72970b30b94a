"""Sample bridge configs and desired states shared by the pipeline tests (golden, real OVS)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pipeline import multicast as mc
from pipeline.model import SwitchState
from pipeline.render import PortNames, render_flow, render_group
from pipeline.tables import Pipeline

POD_PORTS = (1, 2)
TUNNEL_PORT = 100
UPLINK_PORT = 200
PORT_NAMES = {1: "p1", 2: "p2", TUNNEL_PORT: "vx0", UPLINK_PORT: "up0"}
"""Ports the real-OVS test creates (ofport_request), by the names it gives them."""
NODE_IP = "192.168.77.1"
PEER_IPS = ("192.168.77.2", "192.168.77.3")
GROUP_IP = "239.1.1.1"
GROUP_ID = 5
MAX_RECEIVED_FRAME = 1514
"""The pods' interface MTU (the uplink's, 1500) plus the Ethernet header."""


def max_pod_frame(mode: mc.Mode) -> int:
    """What pods may send: the route MTU (1450 under VXLAN in encap) plus the Ethernet header."""
    return 1464 if mode is mc.Mode.ENCAP else MAX_RECEIVED_FRAME


def pod_mac(port: int) -> str:
    return f"0a:00:00:00:00:{port:02x}"


def pod_ip(port: int) -> str:
    return f"10.77.1.{port + 1}"


def config(mode: mc.Mode, round_: int = 3) -> mc.BridgeConfig:
    return mc.BridgeConfig(
        mode=mode,
        round=round_,
        node_ip=NODE_IP,
        node_mac="02:77:00:00:00:01",
        tunnel_port=TUNNEL_PORT if mode is mc.Mode.ENCAP else None,
        uplink_port=UPLINK_PORT,
        pod_punt_pps=200,
        tunnel_punt_pps=5000,
        uplink_punt_pps=1000,
        max_pod_frame=max_pod_frame(mode),
        max_received_frame=MAX_RECEIVED_FRAME,
    )


def build_state(mode: mc.Mode, round_: int, pods: Sequence[int],
                groups: Mapping[str, tuple[int, Sequence[int], Sequence[str]]],
                nodes: Sequence[str]) -> SwitchState:
    """Initial flows and meters, pod flows (spoof guard included) and punt meters, per group IP
    (group id, local ports, remote nodes) its group and route flow, and node flows."""
    cfg = config(mode, round_)
    flows = list(mc.initial_flows(cfg))
    meters = list(mc.initial_meters(cfg))
    for port in pods:
        flows += mc.pod_flows(cfg, port, pod_mac(port), pod_ip(port))
        meters += mc.pod_meters(cfg, port)
    out_groups = []
    for ip, (gid, local, remote) in groups.items():
        flows.append(mc.route_flow(cfg, ip, gid))
        out_groups.append(mc.multicast_group(
            cfg, gid, local, remote if mode is mc.Mode.ENCAP else ()))
    for node in nodes:
        flows += mc.node_flows(cfg, node)
    out_groups.append(mc.query_group(pods))
    return SwitchState(flows=tuple(flows), groups=tuple(out_groups), meters=tuple(meters))


def sample_state(mode: mc.Mode, round_: int = 3) -> SwitchState:
    """Initial flows, two pods, one group with its route flow, one remote node."""
    return build_state(mode, round_, POD_PORTS, {GROUP_IP: (GROUP_ID, POD_PORTS, PEER_IPS)},
                       PEER_IPS[:1])


def render_state(state: SwitchState, pipeline: Pipeline,
                 port_names: PortNames = None) -> tuple[list[str], list[str]]:
    """(flow lines, group lines) in the state's order."""
    return (
        [render_flow(f, pipeline, port_names) for f in state.flows],
        [render_group(g, pipeline, port_names) for g in state.groups],
    )
