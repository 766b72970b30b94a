"""What goes into the fake table and what comes out: the packet, its copies, its packet-ins,
and the record of its walk (``Trace``), for ``pipeline.fake_table`` and its readers (tests,
``mcctl trace``). Pure data; imports only ``pipeline.model`` and ``pipeline.switchmodel``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from typing import Any

from pipeline.model import Flow
from pipeline.switchmodel import FlowKey

DEFAULT_FRAME_LEN = 60
"""A packet's length unless given: Ethernet's minimum frame (without FCS)."""


@dataclass(frozen=True)
class Packet:
    """An IPv4 packet entering the bridge (registers start at 0). Tunnel fields: as received."""

    in_port: int
    eth_src: str
    eth_dst: str
    ipv4_src: str
    ipv4_dst: str
    ip_proto: int
    udp_dst: int | None = None
    tun_src: str | None = None
    tun_dst: str | None = None
    tunnel_id: int | None = None
    length: int = DEFAULT_FRAME_LEN
    """Bytes of the Ethernet frame (header included; no VLAN tag, FCS or padding)."""

    def __post_init__(self) -> None:
        if self.length < 0:
            raise ValueError(f"packet length {self.length}")
        for name in ("eth_src", "eth_dst"):
            object.__setattr__(self, name, str(getattr(self, name)).lower())
        for name in ("ipv4_src", "ipv4_dst", "tun_src", "tun_dst"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, str(ipaddress.IPv4Address(value)))

    def replace(self, **changes: Any) -> Packet:
        """A copy with some fields changed (checked and normalised again on creation)."""
        return dataclasses.replace(self, **changes)


def multicast_mac(group_ip: str) -> str:
    """The Ethernet address an IPv4 multicast group maps to (01:00:5e + low 23 bits)."""
    low = int(ipaddress.IPv4Address(group_ip)) & 0x7FFFFF
    return "01:00:5e:" + ":".join(f"{(low >> s) & 0xFF:02x}" for s in (16, 8, 0))


@dataclass(frozen=True)
class Delivery:
    """One copy leaving the bridge: the port, the headers as sent, the tunnel destination."""

    port: int
    packet: Packet
    tun_dst: str | None = None

    def key(self) -> tuple[int, str | None, str, str]:
        """The normalized view compared with real OVS: (port, tun_dst, ipv4_src, eth_src)."""
        return (self.port, self.tun_dst, self.packet.ipv4_src, self.packet.eth_src)


@dataclass(frozen=True)
class Punt:
    userdata: bytes
    table: str
    packet: Packet


@dataclass(frozen=True)
class Outcome:
    """What a packet did, in a form real OVS traces can be reduced to as well."""

    deliveries: tuple[tuple[int, str | None, str, str], ...]
    packet_ins: tuple[bytes, ...]
    meters: int = 0  # meters passed on the way (rates are not simulated)


@dataclass(frozen=True)
class Step:
    """One step of a walk (``Trace.steps``), in order: a table looked up (``flow``: the flow run,
    None on a miss), a group run (``group_id``), or one of its buckets starting (``bucket``: its
    index). The steps after a bucket's that are deeper than it are what that bucket did."""

    depth: int
    table: str  # the table looked up, or the one whose flow ran the group
    flow: Flow | None = None
    group_id: int | None = None
    bucket: int | None = None


@dataclass
class Trace:
    """Everything one packet did on the switch, in order."""

    packet: Packet
    deliveries: list[Delivery] = field(default_factory=list)
    suppressed: list[Delivery] = field(default_factory=list)  # to in_port: OVS drops them
    packet_ins: list[Punt] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    flows: list[FlowKey] = field(default_factory=list)
    drops: list[str] = field(default_factory=list)
    nat: list[str] = field(default_factory=list)  # sources conntrack NATed to, in order
    meters: list[int] = field(default_factory=list)  # meters passed, in order
    steps: list[Step] = field(default_factory=list)  # the walk (not its shadow branches)

    def ports(self) -> list[int]:
        """Delivered ports, sorted, one entry per copy."""
        return sorted(d.port for d in self.deliveries)

    def to(self, port: int) -> list[Delivery]:
        return [d for d in self.deliveries if d.port == port]

    def outcome(self) -> Outcome:
        return Outcome(
            tuple(sorted((d.key() for d in self.deliveries), key=repr)),
            tuple(sorted(p.userdata for p in self.packet_ins)),
            len(self.meters),
        )

    def explain(self) -> str:
        """A readable summary for assertion messages."""
        lines = [f"packet {self.packet}", f"tables {' -> '.join(self.tables)}"]
        lines += [f"  deliver {d.key()}" for d in self.deliveries]
        lines += [f"  suppressed (in_port) {d.port}" for d in self.suppressed]
        lines += [f"  packet-in {p.userdata.hex()} from {p.table}" for p in self.packet_ins]
        lines += [f"  drop: {r}" for r in self.drops]
        return "\n".join(lines)
