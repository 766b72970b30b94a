"""The reference node and packet set of the DESIGN.md section 2 walks, shared by two test tiers.

This module owns one node's worth of desired state (4 pods on ofports 1-4, the tunnel port, the
uplink, groups G1/G2/G4 and the query group) built only through pipeline.multicast builders, and
the named packets pushed through it. test_fake_table.py asserts where each packet goes on the
fake table; test_fake_vs_ovs.py asserts real OVS agrees with the fake table on every one.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline import multicast as mc
from pipeline.fake_table import FakeSwitch, Packet, multicast_mac
from pipeline.model import IP_PROTO_IGMP, IP_PROTO_UDP, OFPP_CONTROLLER, Flow, Group, Meter
from pipeline.multicast import BridgeConfig, Mode

PODS = (1, 2, 3, 4)
TUNNEL = 100
UPLINK = 200
NODE_IP, NODE_MAC = "192.168.77.1", "02:77:00:00:00:01"
NODE_B, NODE_C = "192.168.77.2", "192.168.77.3"
ROUTER_IP, ROUTER_MAC = "192.168.77.254", "02:77:00:00:00:fe"
OUTSIDE_IP, OUTSIDE_MAC = "192.168.77.100", "02:77:00:00:00:64"
REMOTE_POD_IP, REMOTE_POD_MAC = "10.10.2.1", "02:00:00:00:02:01"

G1, G2, G3, G4, G5 = "239.1.1.1", "239.2.2.2", "239.3.3.3", "239.4.4.4", "239.5.5.5"
"""G1: pods 2,3 + nodes B,C. G2: pod 4. G3: no group at all. G4: a group with no member left.
G5: hand-built with the SNAT bucket FIRST, to pin down how OVS leaks NAT into later buckets."""
GROUP_IDS = {G1: 1, G2: 2, G4: 4, G5: 5}
ALL_HOSTS, V2_LEAVE, V3_REPORTS = "224.0.0.1", "224.0.0.2", "224.0.0.22"


def pod_ip(port: int) -> str:
    return f"10.10.1.{port}"


def pod_mac(port: int) -> str:
    return f"02:00:00:00:01:{port:02x}"


PUNT_PPS = {"pod_punt_pps": 200, "tunnel_punt_pps": 5000, "uplink_punt_pps": 1000}
MAX_RECEIVED = 1514
"""The pods' interface MTU (1500, the uplink's) plus the Ethernet header."""
MAX_SENT = 1464
"""What a pod may send in encap: its route MTU (1450 under VXLAN) plus the Ethernet header."""
OVERSIZED = MAX_RECEIVED + 1
"""A frame over every limit in both modes."""


def config(mode: Mode) -> BridgeConfig:
    return BridgeConfig(
        mode=mode, round=1, node_ip=NODE_IP, node_mac=NODE_MAC,
        tunnel_port=TUNNEL if mode is Mode.ENCAP else None, uplink_port=UPLINK, **PUNT_PPS,
        max_pod_frame=MAX_SENT if mode is Mode.ENCAP else MAX_RECEIVED,
        max_received_frame=MAX_RECEIVED,
    )  # fmt: skip


@dataclass(frozen=True)
class NodeState:
    cfg: BridgeConfig
    flows: tuple[Flow, ...]
    groups: tuple[Group, ...]
    meters: tuple[Meter, ...]

    @property
    def ports(self) -> tuple[int, ...]:
        return PODS + ((TUNNEL,) if self.cfg.tunnel_port else ()) + (UPLINK,)

    def switch(self, **kw: object) -> FakeSwitch:
        return FakeSwitch(
            mc.pipeline(), self.flows, self.groups, meters=self.meters,
            tunnel_ports={TUNNEL} if self.cfg.tunnel_port else (), ports=self.ports, **kw,
        )  # type: ignore[arg-type]  # fmt: skip

    def flow(self, table: str, **match: int | str) -> Flow:
        """The one flow of ``table`` whose match has exactly these plain fields (and maybe
        eth_type)."""
        found = [
            f for f in self.flows
            if f.table == table and f.match.names() - {"eth_type"} == set(match) and all(
                (fm := f.match.get(k)) is not None and fm.value == v for k, v in match.items()
            )
        ]  # fmt: skip
        assert len(found) == 1, found
        return found[0]


def node(mode: Mode) -> NodeState:
    cfg = config(mode)
    remotes = [NODE_B, NODE_C] if mode is Mode.ENCAP else []
    flows = list(mc.initial_flows(cfg))
    meters = list(mc.initial_meters(cfg))
    for p in PODS:
        flows += mc.pod_flows(cfg, p, pod_mac(p), pod_ip(p))
        meters += mc.pod_meters(cfg, p)
    for ip in (NODE_B, NODE_C):
        flows += mc.node_flows(cfg, ip)
    groups = [
        mc.query_group(PODS),
        mc.multicast_group(cfg, GROUP_IDS[G1], [2, 3], remotes),
        mc.multicast_group(cfg, GROUP_IDS[G2], [4], []),
        mc.multicast_group(cfg, GROUP_IDS[G4], [], []),
    ]
    # G5 turns the builder's bucket order around: external (SNAT in encap) before pod 2.
    g5 = mc.multicast_group(cfg, GROUP_IDS[G5], [2], [])
    groups.append(Group(g5.group_id, g5.buckets[::-1]))
    flows += [mc.route_flow(cfg, g, gid) for g, gid in GROUP_IDS.items()]
    return NodeState(cfg, tuple(flows), tuple(groups), tuple(meters))


def from_pod(port: int, dst: str, proto: int = IP_PROTO_UDP) -> Packet:
    return Packet(
        in_port=port, eth_src=pod_mac(port), eth_dst=multicast_mac(dst), ipv4_src=pod_ip(port),
        ipv4_dst=dst, ip_proto=proto, udp_dst=5000 if proto == IP_PROTO_UDP else None,
    )  # fmt: skip


def from_tunnel(dst: str, proto: int = IP_PROTO_UDP, tun_src: str = NODE_B) -> Packet:
    return Packet(
        in_port=TUNNEL, eth_src=REMOTE_POD_MAC, eth_dst=multicast_mac(dst),
        ipv4_src=REMOTE_POD_IP, ipv4_dst=dst, ip_proto=proto,
        udp_dst=5000 if proto == IP_PROTO_UDP else None,
        tun_src=tun_src, tun_dst=NODE_IP, tunnel_id=0,
    )  # fmt: skip


def from_uplink(dst: str, src: str = OUTSIDE_IP, mac: str = OUTSIDE_MAC,
                proto: int = IP_PROTO_UDP) -> Packet:
    return Packet(
        in_port=UPLINK, eth_src=mac, eth_dst=multicast_mac(dst), ipv4_src=src, ipv4_dst=dst,
        ip_proto=proto, udp_dst=5000 if proto == IP_PROTO_UDP else None,
    )  # fmt: skip


def query() -> Packet:
    """A general query as the agent packet-outs it (in_port=CONTROLLER, output:TABLE)."""
    return Packet(
        in_port=OFPP_CONTROLLER, eth_src=NODE_MAC, eth_dst=multicast_mac(ALL_HOSTS),
        ipv4_src="10.10.1.254", ipv4_dst=ALL_HOSTS, ip_proto=IP_PROTO_IGMP,
    )  # fmt: skip


def packets() -> dict[str, Packet]:
    """Every walk, by name. Tunnel packets are included in noEncap too (no such port there)."""
    return {
        "pod1->G1": from_pod(1, G1),
        "pod2(member)->G1": from_pod(2, G1),
        "pod1->G2": from_pod(1, G2),
        "pod4(only member)->G2": from_pod(4, G2),
        "pod1->G3(no group)": from_pod(1, G3),
        "pod1->G4(empty group)": from_pod(1, G4),
        "pod1->G5(snat bucket first)": from_pod(1, G5),
        "pod3 igmpv1 report to G1": from_pod(3, G1, IP_PROTO_IGMP),
        "pod3 igmpv2 report to G2": from_pod(3, G2, IP_PROTO_IGMP),
        "pod3 igmpv2 leave": from_pod(3, V2_LEAVE, IP_PROTO_IGMP),
        "pod3 igmpv3 report": from_pod(3, V3_REPORTS, IP_PROTO_IGMP),
        "tunnel->G1": from_tunnel(G1),
        "tunnel->G3": from_tunnel(G3),
        "tunnel igmpv3": from_tunnel(V3_REPORTS, IP_PROTO_IGMP),
        "uplink->G1": from_uplink(G1),
        "uplink->G3": from_uplink(G3),
        "uplink query": from_uplink(ALL_HOSTS, ROUTER_IP, ROUTER_MAC, IP_PROTO_IGMP),
        "uplink->G1 from node B": from_uplink(G1, NODE_B, "02:77:00:00:00:02"),
        "uplink igmp from node B": from_uplink(V3_REPORTS, NODE_B, "02:77:00:00:00:02",
                                               IP_PROTO_IGMP),
        "query packet-out": query(),
        "unknown port": from_pod(1, G1).replace(in_port=99),
        "pod1 forging pod2's IP ->G1": from_pod(1, G1).replace(ipv4_src=pod_ip(2)),
        "pod1 forging pod2's MAC ->G1": from_pod(1, G1).replace(eth_src=pod_mac(2)),
        "pod1 unicast to pod2": from_pod(1, pod_ip(2)).replace(eth_dst=pod_mac(2)),
        "pod1->G1 at the pod limit": from_pod(1, G1).replace(length=MAX_SENT),
        "pod1->G1 oversized": from_pod(1, G1).replace(length=OVERSIZED),
        "pod1->G3(no group) oversized": from_pod(1, G3).replace(length=OVERSIZED),
        "pod1 forging pod2's IP ->G1 oversized": from_pod(1, G1).replace(
            ipv4_src=pod_ip(2), length=OVERSIZED),
        "pod3 igmpv3 report oversized": from_pod(3, V3_REPORTS, IP_PROTO_IGMP).replace(
            length=OVERSIZED),
        "tunnel->G1 at the receive limit": from_tunnel(G1).replace(length=MAX_RECEIVED),
        "tunnel->G1 oversized": from_tunnel(G1).replace(length=OVERSIZED),
        "uplink->G1 at the receive limit": from_uplink(G1).replace(length=MAX_RECEIVED),
        "uplink->G1 oversized": from_uplink(G1).replace(length=OVERSIZED),
        "uplink query oversized": from_uplink(ALL_HOSTS, ROUTER_IP, ROUTER_MAC,
                                              IP_PROTO_IGMP).replace(length=OVERSIZED),
    }
