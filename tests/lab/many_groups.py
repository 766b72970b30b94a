#!/usr/bin/env python3
"""many_groups: join, feed and watch many multicast groups at once (lab helper, stdlib only).

Run as a plain script inside a pod or external host of the lab (``mclab exec NAME -- python
many_groups.py ...``). The groups are COUNT consecutive addresses starting at BASE.

    many_groups.py recv BASE COUNT PORT [--ready F] [--status F] [--duration S]
        One UDP socket bound to PORT with COUNT memberships (IP_ADD_MEMBERSHIP; raise
        net.ipv4.igmp_max_memberships in the netns first, the kernel default is 20). Counts the
        datagrams per destination group (IP_PKTINFO), so a datagram for a group we did not join
        is seen as such.
    many_groups.py send BASE COUNT PORT [--per-group K] [--pps R] [--ttl T]
        K rounds over the COUNT groups, one datagram per group per round, paced at R/s.
    many_groups.py sniff PORT [--iface eth0] [--ready F] [--status F] [--duration S]
        No join: counts, per destination, the incoming UDP frames to a multicast address and PORT
        that reach the interface (AF_PACKET): what a non-member must never see.

``recv`` and ``sniff`` stop at --duration or SIGTERM/SIGINT and then print one JSON line:
``{"n": total, "joined": .., "per_group": {group: count}, ...}``. ``--ready`` is written once
the socket is set up (joins done); ``--status`` is rewritten with ``{"n": total, "groups": ..,
"per_group": ..}`` while datagrams arrive (the lab fixtures' Receiver reads "n").
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import select
import signal
import socket
import struct
import sys
import time
from pathlib import Path

from tools.mcprobe import multicast_iface

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
ETH_P_IP = 0x0800
PACKET_OUTGOING = 4
STATUS_EVERY_S = 0.1


class _Stop(Exception):
    pass


def _on_signal(signum: int, _frame: object) -> None:
    raise _Stop(signum)


def groups(base: str, count: int) -> list[str]:
    first = int(ipaddress.IPv4Address(base))
    out = [str(ipaddress.IPv4Address(first + i)) for i in range(count)]
    if not all(ipaddress.IPv4Address(g).is_multicast for g in (out[0], out[-1])):
        raise SystemExit(f"{base} + {count} leaves 224.0.0.0/4")
    return out


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    Path(tmp).write_text(text)
    os.replace(tmp, path)


class Tally:
    def __init__(self, status: str | None) -> None:
        self.per: dict[str, int] = {}
        self.n = 0
        self.status = status
        self._at = 0.0
        self._dirty = True

    def add(self, dst: str) -> None:
        self.n += 1
        self.per[dst] = self.per.get(dst, 0) + 1
        self._dirty = True

    def flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.status and self._dirty and (force or now - self._at >= STATUS_EVERY_S):
            _write_atomic(self.status, json.dumps({"n": self.n, "groups": len(self.per),
                                                   "per_group": self.per}) + "\n")
            self._at = now
            self._dirty = False


def _serve(sock: socket.socket, args: argparse.Namespace, read, extra: dict) -> int:
    tally = Tally(args.status)
    tally.flush(force=True)
    if args.ready:
        _write_atomic(args.ready, json.dumps({"pid": os.getpid()}) + "\n")
    deadline = time.monotonic() + args.duration
    try:
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([sock], [], [], min(left, STATUS_EVERY_S))
            if ready:
                dst = read(sock)
                if dst is not None:
                    tally.add(dst)
            tally.flush()
    except _Stop:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        sock.close()  # drops every membership at once
    tally.flush(force=True)
    print(json.dumps({"n": tally.n, **extra, "per_group": dict(sorted(tally.per.items()))}),
          flush=True)
    return 0


def cmd_recv(args: argparse.Namespace) -> int:
    wanted = groups(args.base, args.count)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    sock.bind(("0.0.0.0", args.port))
    for g in wanted:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                        socket.inet_aton(g) + socket.inet_aton("0.0.0.0"))

    def read(s: socket.socket) -> str | None:
        _data, anc, _flags, _addr = s.recvmsg(65535, socket.CMSG_SPACE(12))
        for level, kind, raw in anc:
            if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(raw) >= 12:
                return socket.inet_ntoa(raw[8:12])  # in_pktinfo.ipi_addr: the destination
        return "?"

    return _serve(sock, args, read, {"joined": len(wanted)})


def cmd_sniff(args: argparse.Namespace) -> int:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((args.iface or multicast_iface(), ETH_P_IP))

    def read(s: socket.socket) -> str | None:
        data, addr = s.recvfrom(65535)
        if addr[2] == PACKET_OUTGOING or len(data) < 28 or data[0] >> 4 != 4:
            return None
        ihl = (data[0] & 0x0F) * 4
        if data[9] != socket.IPPROTO_UDP or not 224 <= data[16] <= 239:
            return None
        if struct.unpack_from("!H", data, ihl + 2)[0] != args.port:
            return None
        return socket.inet_ntoa(data[16:20])

    return _serve(sock, args, read, {"joined": 0})


def cmd_send(args: argparse.Namespace) -> int:
    targets = groups(args.base, args.count)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, args.ttl)
    start = time.monotonic()
    sent = 0
    for rnd in range(args.per_group):
        for g in targets:
            if args.pps > 0:
                delay = start + sent / args.pps - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            sock.sendto(f"{g} {rnd} many_groups\n".encode(), (g, args.port))
            sent += 1
    sock.close()
    print(json.dumps({"sent": sent, "elapsed_ms": round((time.monotonic() - start) * 1000, 3)}),
          flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="many_groups", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def rx_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--ready")
        sp.add_argument("--status")
        sp.add_argument("--duration", type=float, default=120.0)

    recv = sub.add_parser("recv")
    recv.add_argument("base")
    recv.add_argument("count", type=int)
    recv.add_argument("port", type=int)
    rx_opts(recv)
    recv.set_defaults(func=cmd_recv)

    send = sub.add_parser("send")
    send.add_argument("base")
    send.add_argument("count", type=int)
    send.add_argument("port", type=int)
    send.add_argument("--per-group", type=int, default=1)
    send.add_argument("--pps", type=float, default=500.0)
    send.add_argument("--ttl", type=int, default=1)
    send.set_defaults(func=cmd_send)

    sniff = sub.add_parser("sniff")
    sniff.add_argument("port", type=int)
    sniff.add_argument("--iface", help="default: the interface routing 224.0.0.0/4")
    rx_opts(sniff)
    sniff.set_defaults(func=cmd_sniff)

    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        return int(args.func(args))
    except _Stop:
        return 0
    except OSError as e:
        print(f"many_groups {args.cmd}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
