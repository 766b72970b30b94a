"""Reading ``ovs-appctl ofproto/trace`` output into the fake table's normalized Outcome (pure).

This module owns small parsers: ``dpif/show`` (datapath port -> OpenFlow port, per
bridge), the final ``Datapath actions:`` line (what actually leaves the datapath), the
OpenFlow-level part of the trace (controller userdata, outputs skipped because they went to the
input port) and flow/group/meter statistics. It also spells a fake-table Packet as an ofproto/trace
flow and as frame bytes for ``ovs-ofctl packet-out`` (which, unlike a trace, credits counters).

We compare at the datapath level on purpose: it is what the switch really does after OVS's own
rewrites (action-set buckets, implicit in_port drops, NAT that is not rolled back between
buckets, tunnel encapsulation). A trace carries both outcomes of a ``check_pkt_len``; the
packet's length picks the one it takes. A tunnel copy appears only as ``tnl_push(...)`` once
the tunnel neighbour is known and the outer packet has somewhere to go, so the test bed seeds
``tnl/arp/set`` and gives br-phy a port; the tunnel destination is read from the pushed header.
"""

from __future__ import annotations

import re
import socket
import struct
from dataclasses import dataclass, field

from pipeline.fake_table import Outcome, Packet
from pipeline.model import IP_PROTO_UDP, OFPP_CONTROLLER

_DPIF_BRIDGE = re.compile(r"^  (\S+):$")
_DPIF_PORT = re.compile(r"^    (\S+) (\d+)/(\d+):")


class TraceParseError(ValueError):
    """The trace holds a datapath action this parser does not understand."""


def parse_dpif_show(text: str, bridge: str) -> dict[int, int]:
    """``ovs-appctl dpif/show`` -> {datapath port: OpenFlow port} for the ports of ``bridge``."""
    ports: dict[int, int] = {}
    current = None
    for line in text.splitlines():
        if m := _DPIF_BRIDGE.match(line):
            current = m.group(1)
        elif (m := _DPIF_PORT.match(line)) and current == bridge:
            ports[int(m.group(3))] = int(m.group(2))
    return ports


def split_top(text: str) -> list[str]:
    """Split ``a,b(c,d),e`` at the commas outside parentheses."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if text[start:]:
        parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _inner(token: str) -> str:
    """``name(inner)`` -> ``inner``."""
    return token[token.index("(") + 1 : token.rindex(")")]


def _kv(text: str) -> dict[str, str]:
    """``src=a,dst=b/mask`` -> {"src": "a", "dst": "b"} (masks dropped: we only set fully)."""
    out = {}
    for part in split_top(text):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k] = v.split("/", 1)[0]
    return out


@dataclass
class DatapathResult:
    deliveries: list[tuple[int, str | None, str, str]] = field(default_factory=list)
    packet_ins: int = 0
    meters: int = 0
    controllers: list[bool] = field(default_factory=list)  # each packet-in action: taken?


@dataclass
class _Headers:
    ipv4_src: str
    eth_src: str
    encapsulated: bool = False


def parse_datapath_actions(actions: str, dp_to_ofport: dict[int, int],
                           packet: Packet) -> DatapathResult:
    """Replay a datapath action list on ``packet``'s headers: what leaves, and how."""
    result = DatapathResult()
    _replay(split_top(actions), _Headers(packet.ipv4_src, packet.eth_src), dp_to_ofport, result,
            packet.length)
    return result


def _replay(tokens: list[str], h: _Headers, ports: dict[int, int], result: DatapathResult,
            length: int, taken: bool = True) -> None:
    """Replay ``tokens``; a branch the packet does not take (``taken`` False) is walked for its
    packet-in actions' places only: nothing it does is recorded."""
    for tok in tokens:
        name = tok.split("(", 1)[0]
        if tok.isdigit():
            if taken and not h.encapsulated:  # after tnl_push, outputs carry the outer packet
                result.deliveries.append((ports[int(tok)], None, h.ipv4_src, h.eth_src))
        elif tok == "drop":
            pass
        elif name == "set":
            field_ = _inner(tok)
            kv = _kv(_inner(field_))
            if field_.startswith("eth(") and "src" in kv:
                h.eth_src = kv["src"]
            elif field_.startswith("ipv4(") and "src" in kv:
                h.ipv4_src = kv["src"]
        elif name == "ct":
            if m := re.search(r"nat\(src=([0-9.]+)", tok):
                h.ipv4_src = m.group(1)
        elif name == "clone":
            _replay(split_top(_inner(tok)), _Headers(h.ipv4_src, h.eth_src, h.encapsulated),
                    ports, result, length, taken)
        elif name == "check_pkt_len":  # check_pkt_len(size=N,gt(...),le(...)): len > N: gt
            size, gt, le = split_top(_inner(tok))
            larger = length > int(size.removeprefix("size="))
            for branch, picked in ((gt, larger), (le, not larger)):
                _replay(split_top(_inner(branch)),
                        _Headers(h.ipv4_src, h.eth_src, h.encapsulated),
                        ports, result, length, taken and picked)
        elif name == "tnl_push":
            port = int(re.search(r"tnl_port\((\d+)\)", tok).group(1))  # type: ignore[union-attr]
            outer = re.search(r"ipv4\(src=[0-9.]+,dst=([0-9.]+)", tok)
            if outer is None:
                raise TraceParseError(f"no outer IPv4 header in {tok}")
            if taken:
                result.deliveries.append((ports[port], outer.group(1), h.ipv4_src, h.eth_src))
            h.encapsulated = True
        elif name == "userspace":
            if "controller(" not in tok:
                raise TraceParseError(f"userspace action that is not a packet-in: {tok}")
            result.controllers.append(taken)
            result.packet_ins += taken
        elif name == "meter":  # the datapath's own meter id, not the OpenFlow one
            result.meters += taken
        else:
            raise TraceParseError(f"unexpected datapath action {tok!r}")


@dataclass(frozen=True)
class OvsTrace:
    """One parsed ``ofproto/trace``."""

    text: str
    datapath: DatapathResult
    userdata: tuple[bytes, ...]
    suppressed: int

    def outcome(self) -> Outcome:
        return Outcome(tuple(sorted(self.datapath.deliveries, key=repr)),
                       tuple(sorted(self.userdata)), self.datapath.meters)


def parse_trace(text: str, dp_to_ofport: dict[int, int], packet: Packet) -> OvsTrace:
    """Parse a full ofproto/trace output for ``packet``.

    The trace lists controller actions in the order OVS translated them, which is the order of
    the datapath's packet-in actions (a ``check_pkt_len``'s greater branch first): the userdata
    of those the packet takes are kept."""
    lines = [ln for ln in text.splitlines() if ln.startswith("Datapath actions:")]
    if len(lines) != 1:
        raise TraceParseError(f"expected one 'Datapath actions:' line in:\n{text}")
    dp = parse_datapath_actions(lines[0].split(":", 1)[1].strip(), dp_to_ofport, packet)
    found = [
        bytes.fromhex(m.group(1).replace(".", ""))
        for m in re.finditer(r"^\s*controller\([^)]*userdata=([0-9a-f.]+)", text, re.M)
    ]
    if len(found) != len(dp.controllers):
        raise TraceParseError(f"{len(found)} controller actions but {len(dp.controllers)} "
                              f"packet-ins in the datapath actions:\n{text}")
    userdata = tuple(u for u, taken in zip(found, dp.controllers, strict=True) if taken)
    suppressed = text.count("skipping output to input port")
    return OvsTrace(text, dp, userdata, suppressed)


def trace_flow(packet: Packet) -> str:
    """``packet`` as an ofproto/trace flow (a packet-out uses in_port=CONTROLLER)."""
    in_port = "CONTROLLER" if packet.in_port == OFPP_CONTROLLER else str(packet.in_port)
    parts = [f"in_port={in_port}"]
    if packet.tun_src is not None or packet.tun_dst is not None:
        parts += [f"tun_src={packet.tun_src or '0.0.0.0'}",
                  f"tun_dst={packet.tun_dst or '0.0.0.0'}", f"tun_id={packet.tunnel_id or 0}"]
    parts += [
        "udp" if packet.ip_proto == IP_PROTO_UDP else "ip",
        f"dl_src={packet.eth_src}", f"dl_dst={packet.eth_dst}",
        f"nw_src={packet.ipv4_src}", f"nw_dst={packet.ipv4_dst}",
    ]  # fmt: skip
    if packet.ip_proto == IP_PROTO_UDP:
        parts.append(f"udp_dst={packet.udp_dst or 0}")  # tp_dst fails prerequisites here
    else:
        parts.append(f"nw_proto={packet.ip_proto}")
    return ",".join(parts)


def packet_bytes(packet: Packet) -> bytes:
    """An Ethernet/IPv4 frame for ``packet``, for packet-out: UDP with a payload that makes it
    ``packet.length`` bytes long (OVS measures up to the IP total length: padding would not
    count), or an 8-byte IGMP body.

    Checksums are left 0: OVS's flow extraction and our flows never look at them.
    """
    is_udp = packet.ip_proto == IP_PROTO_UDP
    payload = bytes(max(0, packet.length - 14 - 20 - 8)) if is_udp else b""
    l4 = (struct.pack("!HHHH", 1234, packet.udp_dst or 0, 8 + len(payload), 0) + payload
          if is_udp else struct.pack("!BBH4s", 0x16, 0, 0, socket.inet_aton(packet.ipv4_dst)))
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0, 1, packet.ip_proto, 0,
                     socket.inet_aton(packet.ipv4_src), socket.inet_aton(packet.ipv4_dst))
    eth = (bytes.fromhex(packet.eth_dst.replace(":", "")) +
           bytes.fromhex(packet.eth_src.replace(":", "")) + b"\x08\x00")
    return eth + ip + l4


_STATS = re.compile(r"(duration|n_packets|n_bytes|idle_age|hard_age)=[^,]+, ")


def parse_flow_stats(dump: str) -> dict[str, int]:
    """``dump-flows --names`` -> {flow line without stats: n_packets}."""
    out = {}
    for line in dump.splitlines():
        m = re.search(r"n_packets=(\d+)", line)
        if m:
            out[_STATS.sub("", line.strip())] = int(m.group(1))
    return out


def parse_group_stats(dump: str) -> dict[int, int]:
    """``dump-group-stats`` -> {group_id: packet_count}."""
    return {int(m.group(1)): int(m.group(2))
            for m in re.finditer(r"group_id=(\d+),.*?packet_count=(\d+)", dump)}


def parse_meter_stats(dump: str) -> dict[int, int]:
    """``meter-stats`` -> {meter_id: packet_in_count} (packets that reached the meter)."""
    return {int(m.group(1)): int(m.group(2))
            for m in re.finditer(r"meter:(\d+) .*?packet_in_count:(\d+)", dump)}
