#!/usr/bin/env python3
"""mcprobe: a small multicast test tool, run inside pods and external hosts of the lab.

Standard library only and runnable as a plain script (``python /path/to/mcprobe.py ...``), so
it works in any network namespace whatever the working directory is.

    mcprobe.py recv GROUP PORT [--duration S] [--idle S] [--count-exit N] [--ready FILE]
                               [--status FILE] [--source S] [--iface-addr A]
        Joins GROUP (IP_ADD_MEMBERSHIP; with --source, an IGMPv3 source-specific join through
        IP_ADD_SOURCE_MEMBERSHIP), counts the datagrams that arrive on PORT and prints one JSON
        line: {"n": .., "sources": {ip: count}, "first_ms": .., ...}.
    mcprobe.py sniff GROUP PORT [--iface IF] [--igmp-queries] [--duration S] [--ready FILE]
                                [--status FILE]
        Does NOT join: counts the UDP frames to GROUP:PORT that the switch delivers to the
        interface (an AF_PACKET socket), which is what "a non-member receives 0" means. With
        --igmp-queries it counts IGMP queries sent to GROUP instead (PORT is ignored): a
        general query goes to 224.0.0.1, a group-specific one to its group.
    mcprobe.py send GROUP PORT --count N [--pps R] [--ttl T] [--size B]
        Sends N datagrams, each "<seq> mcprobe ...\\n" (one line: line-counting receivers such
        as socat work), and prints {"sent": N}.

``recv`` and ``sniff`` stop at the first of: --duration, --idle seconds without a datagram
(counted from the first datagram), --count-exit datagrams, SIGTERM or SIGINT. They always print
their JSON result before exiting with status 0. ``--ready FILE`` is written once the socket is
set up (joined); ``--status FILE`` is rewritten (atomically) with the running result while
datagrams arrive, so a test can poll progress without stopping the receiver.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

IP_ADD_SOURCE_MEMBERSHIP = getattr(socket, "IP_ADD_SOURCE_MEMBERSHIP", 39)  # Linux value
ETH_P_IP = 0x0800
IGMP_QUERY = 0x11
PACKET_OUTGOING = 4
STATUS_EVERY_S = 0.05


class _Stop(Exception):
    """Raised by the signal handler to leave the receive loop."""


def _on_signal(signum: int, _frame: object) -> None:
    raise _Stop(signum)


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    Path(tmp).write_text(text)
    os.replace(tmp, path)


class Counter:
    """Counts datagrams by source and by sequence number; renders the JSON result."""

    def __init__(self, group: str, port: int, status: str | None) -> None:
        self.group = group
        self.port = port
        self.n = 0
        self.sources: dict[str, int] = {}
        self.seqs: set[int] = set()
        self.bytes = 0
        self.start = time.monotonic()
        self.first: float | None = None
        self.last: float | None = None
        self.status = status
        self._status_at = 0.0
        self._status_dirty = False

    def add(self, src: str, payload: bytes) -> None:
        now = time.monotonic()
        self.n += 1
        self.bytes += len(payload)
        self.sources[src] = self.sources.get(src, 0) + 1
        if self.first is None:
            self.first = now
        self.last = now
        head = payload.split(b" ", 1)[0]
        if head.isdigit():
            self.seqs.add(int(head))
        self._status_dirty = True
        self.flush_status()

    def flush_status(self, force: bool = False) -> None:
        if not self.status or not (self._status_dirty or force):
            return
        now = time.monotonic()
        if force or now - self._status_at >= STATUS_EVERY_S:
            _write_atomic(self.status, json.dumps(self.result()) + "\n")
            self._status_at = now
            self._status_dirty = False

    def result(self) -> dict[str, Any]:
        def ms(t: float | None) -> float | None:
            return None if t is None else round((t - self.start) * 1000, 3)

        return {
            "group": self.group,
            "port": self.port,
            "n": self.n,
            "sources": dict(sorted(self.sources.items())),
            "distinct": len(self.seqs),
            "bytes": self.bytes,
            "first_ms": ms(self.first),
            "last_ms": ms(self.last),
        }


def _loop(sock: socket.socket, counter: Counter, args: argparse.Namespace,
          parse: Any) -> None:
    """Receive until duration / idle / count-exit / signal; ``parse`` yields (src, payload)."""
    deadline = counter.start + args.duration
    while True:
        now = time.monotonic()
        if now >= deadline:
            return
        if args.count_exit and counter.n >= args.count_exit:
            return
        wait = deadline - now
        if args.idle and counter.last is not None:
            idle_left = counter.last + args.idle - now
            if idle_left <= 0:
                return
            wait = min(wait, idle_left)
        if counter.status:
            wait = min(wait, STATUS_EVERY_S)
        ready, _, _ = select.select([sock], [], [], max(wait, 0.0))
        if ready:
            data, addr = sock.recvfrom(65535)
            got = parse(data, addr)
            if got is not None:
                counter.add(*got)
        else:
            counter.flush_status()


def _run_receiver(sock: socket.socket, args: argparse.Namespace, parse: Any) -> int:
    counter = Counter(args.group, args.port, args.status)
    if args.status:
        counter.flush_status(force=True)
    if args.ready:
        _write_atomic(args.ready, json.dumps({"pid": os.getpid()}) + "\n")
    try:
        _loop(sock, counter, args, parse)
    except _Stop:
        pass
    finally:
        # Ignore further signals while we report; closing the socket drops the membership.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        sock.close()
    counter.flush_status(force=True)
    print(json.dumps(counter.result()), flush=True)
    return 0


def cmd_recv(args: argparse.Namespace) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    # Bound to the group address: only datagrams sent to GROUP:PORT reach this socket.
    sock.bind((args.group, args.port))
    group = socket.inet_aton(args.group)
    iface = socket.inet_aton(args.iface_addr)
    if args.source:
        # struct ip_mreq_source on Linux: multiaddr, interface, sourceaddr
        mreq = group + iface + socket.inet_aton(args.source)
        sock.setsockopt(socket.IPPROTO_IP, IP_ADD_SOURCE_MEMBERSHIP, mreq)
    else:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, group + iface)

    def parse(data: bytes, addr: tuple[str, int]) -> tuple[str, bytes]:
        return addr[0], data

    return _run_receiver(sock, args, parse)


def multicast_iface() -> str:
    """The interface this namespace sends multicast on: the one routing 224.0.0.0/4 (a pod's
    multicast interface, whatever it is called, or an outside host's eth0)."""
    from pyroute2 import IPRoute  # noqa: PLC0415 - only the tools that sniff or forge need it

    with IPRoute() as ipr:
        oif = ipr.route("get", dst="224.0.0.1")[0].get_attr("RTA_OIF")
        return str(ipr.get_links(oif)[0].get_attr("IFLA_IFNAME"))


def cmd_sniff(args: argparse.Namespace) -> int:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind((args.iface or multicast_iface(), ETH_P_IP))
    group = socket.inet_aton(args.group)

    def parse(data: bytes, addr: tuple[Any, ...]) -> tuple[str, bytes] | None:
        # SOCK_DGRAM packet socket: data starts at the IPv4 header; addr[2] is the pkttype.
        if addr[2] == PACKET_OUTGOING or len(data) < 20 or data[0] >> 4 != 4:
            return None
        ihl = (data[0] & 0x0F) * 4
        if args.igmp_queries:
            if data[9] != socket.IPPROTO_IGMP or data[16:20] != group or len(data) <= ihl:
                return None
            return (socket.inet_ntoa(data[12:16]), data[ihl:]) if data[ihl] == IGMP_QUERY \
                else None
        if data[9] != socket.IPPROTO_UDP or data[16:20] != group or len(data) < ihl + 8:
            return None
        if struct.unpack_from("!H", data, ihl + 2)[0] != args.port:
            return None
        return socket.inet_ntoa(data[12:16]), data[ihl + 8:]

    return _run_receiver(sock, args, parse)


def _payload(seq: int, size: int) -> bytes:
    head = f"{seq} mcprobe".encode()
    body = head + b" " + b"x" * max(0, size - len(head) - 2) if size > len(head) + 1 else head
    return body + b"\n"


def cmd_send(args: argparse.Namespace) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, args.ttl)
    if args.iface_addr != "0.0.0.0":
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                        socket.inet_aton(args.iface_addr))
    start = time.monotonic()
    sent = 0
    try:
        for seq in range(args.count):
            if args.pps > 0:
                due = start + seq / args.pps
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            sock.sendto(_payload(seq, args.size), (args.group, args.port))
            sent += 1
    finally:
        sock.close()
    print(json.dumps({"sent": sent, "elapsed_ms": round((time.monotonic() - start) * 1000, 3)}),
          flush=True)
    return 0


def _multicast_ip(raw: str) -> str:
    try:
        packed = socket.inet_aton(raw)
    except OSError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not an IPv4 address") from None
    if not 224 <= packed[0] <= 239:
        raise argparse.ArgumentTypeError(f"{raw} is not a multicast address")
    return raw


def _ipv4(raw: str) -> str:
    try:
        socket.inet_aton(raw)
    except OSError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not an IPv4 address") from None
    return raw


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mcprobe", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def common_rx(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("group", type=_multicast_ip)
        sp.add_argument("port", type=int)
        sp.add_argument("--duration", type=float, default=60.0, help="stop after S seconds")
        sp.add_argument("--idle", type=float, default=0.0,
                        help="stop S seconds after the last datagram (once one arrived)")
        sp.add_argument("--count-exit", type=int, default=0, help="stop after N datagrams")
        sp.add_argument("--ready", help="file written once the socket is set up")
        sp.add_argument("--status", help="file rewritten with the running result")

    recv = sub.add_parser("recv", help="join a group and count datagrams")
    common_rx(recv)
    recv.add_argument("--source", type=_ipv4, help="source-specific join (IGMPv3 INCLUDE)")
    recv.add_argument("--iface-addr", type=_ipv4, default="0.0.0.0",
                      help="local address of the interface to join on (default: by route)")
    recv.set_defaults(func=cmd_recv)

    sniff = sub.add_parser("sniff", help="count frames to GROUP:PORT on an interface, no join")
    common_rx(sniff)
    sniff.add_argument("--iface", help="default: the interface routing 224.0.0.0/4")
    sniff.add_argument("--igmp-queries", action="store_true",
                       help="count IGMP queries to GROUP instead of UDP to GROUP:PORT")
    sniff.set_defaults(func=cmd_sniff)

    send = sub.add_parser("send", help="send datagrams to a group")
    send.add_argument("group", type=_multicast_ip)
    send.add_argument("port", type=int)
    send.add_argument("--count", type=int, required=True)
    send.add_argument("--pps", type=float, default=0.0, help="pace at R packets/s (0: unpaced)")
    send.add_argument("--ttl", type=int, default=1)
    send.add_argument("--size", type=int, default=64, help="payload bytes (newline included)")
    send.add_argument("--iface-addr", type=_ipv4, default="0.0.0.0",
                      help="local address of the interface to send from (default: by route)")
    send.set_defaults(func=cmd_send)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        return int(args.func(args))
    except _Stop:
        return 0  # a signal before the receive loop (e.g. during setup): nothing to report
    except OSError as e:
        print(f"mcprobe {args.cmd}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
