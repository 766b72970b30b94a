"""The pod's multicast interface as this node sizes it: its MTU and its multicast route's MTU.

Owns the one rule that sizes what pods receive and send (``pod_mtu``), and the frame limits
the pipeline checks against it. Standard library only: the CNI plugin reads the answer over
the local API, the agent computes it from the uplink and the tunnel.

Why two MTUs: frames from outside arrive at the uplink's full size (1500 on most networks)
and must reach pods whole, so the interface takes the uplink MTU. What a pod sends may cross
a tunnel, which adds its own headers, so the 224.0.0.0/4 route carries a smaller MTU and the
pod's kernel fragments larger datagrams to fit. The overheads are those Antrea uses for an
IPv4 underlay.
"""

from __future__ import annotations

from dataclasses import dataclass

# Outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8 = 50; Geneve's base header is also 8 bytes.
TUNNEL_OVERHEAD: dict[str, int] = {"vxlan": 50, "geneve": 50}
ETHERNET_HEADER = 14
MIN_MTU = 576  # the smallest datagram every IPv4 host must accept (RFC 791)


@dataclass(frozen=True)
class PodMtu:
    """MTUs of the pod's multicast interface (``interface``) and of its 224.0.0.0/4 route."""

    interface: int
    route: int

    @property
    def max_send_frame(self) -> int:
        """The largest Ethernet frame a pod may send: bigger ones cannot cross the tunnel."""
        return self.route + ETHERNET_HEADER

    @property
    def max_receive_frame(self) -> int:
        """The largest Ethernet frame a pod's interface accepts."""
        return self.interface + ETHERNET_HEADER

    def to_json(self) -> dict[str, int]:
        return {"interfaceMTU": self.interface, "routeMTU": self.route}


def pod_mtu(uplink_mtu: int, encap: bool, tunnel_type: str,
            interface_mtu: int | None = None) -> PodMtu:
    """The MTUs for pods of a node whose uplink has ``uplink_mtu``.

    The interface MTU is the uplink's unless configured (``multicast.interfaceMTU``); the route
    MTU is the interface MTU capped by what fits the underlay: the uplink MTU, less the tunnel
    overhead in encap mode.
    """
    if uplink_mtu < MIN_MTU:
        raise ValueError(f"uplink MTU {uplink_mtu} is below {MIN_MTU}")
    if encap and tunnel_type not in TUNNEL_OVERHEAD:
        raise ValueError(f"unknown tunnel type {tunnel_type!r}")
    interface = uplink_mtu if interface_mtu is None else interface_mtu
    if not MIN_MTU <= interface <= 65535:
        raise ValueError(f"interface MTU {interface} out of range {MIN_MTU}..65535")
    fits = uplink_mtu - (TUNNEL_OVERHEAD[tunnel_type] if encap else 0)
    return PodMtu(interface, min(interface, fits))
