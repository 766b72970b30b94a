#!/usr/bin/env python3
"""podtool: the benchmark's traffic helpers, run INSIDE lab pods (standard library only).

Runs as a plain script in any network namespace (``/work/main/.venv/bin/python podtool.py``);
it imports nothing from the project, so the working directory does not matter. Every command
prints exactly one JSON line on stdout. Wall-clock times are ``time.time()`` (CLOCK_REALTIME,
shared by all namespaces), so they compare with tcpdump's ``-tt`` timestamps.

    podtool.py send GROUP PORT --pps R --duration S [--size B] [--ttl T]
        Paced sender: datagram = 8-byte sequence number, 8-byte send time, padding.
        Stops at --duration or SIGTERM; prints {"sent", "secs", "pps", "enobufs"}.
    podtool.py recv GROUP PORT --duration S [--idle S] [--ready FILE]
        Joins GROUP, counts datagrams and distinct sequence numbers, one-way delay
        percentiles; stops at --duration, --idle seconds after the last datagram, or SIGTERM.
    podtool.py first GROUP PORT [--timeout S]
        One join-latency sample: t_join is taken just before IP_ADD_MEMBERSHIP, t_first when
        the first datagram arrives; prints both and their difference.
    podtool.py joinmany BASE COUNT [--per-socket K] [--ready FILE] [--hold S]
        Joins COUNT consecutive groups from BASE, K per socket (a socket's memberships come
        out of its option memory, net.core.optmem_max: ~2700 fit in one), raising this
        netns's net.ipv4.igmp_max_memberships first; holds them until SIGTERM or --hold.
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

HEADER = struct.Struct("!Qd")
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
RCVBUF = 8 << 20
MAX_MEMBERSHIPS = Path("/proc/sys/net/ipv4/igmp_max_memberships")


class Stop(Exception):
    """Raised by the SIGTERM/SIGINT handler to leave a loop."""


def _on_signal(signum: int, _frame: object) -> None:
    raise Stop(signum)


def _emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def _ready(path: str | None, **extra: object) -> None:
    if path:
        tmp = f"{path}.tmp"
        Path(tmp).write_text(json.dumps({"pid": os.getpid(), **extra}))
        os.replace(tmp, path)


def _rx_socket(group: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
    except OSError:  # not root: the capped buffer will do
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    sock.bind((group, port))
    return sock


def _join(sock: socket.socket, group: str) -> None:
    mreq = socket.inet_aton(group) + socket.inet_aton("0.0.0.0")
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)


def cmd_send(a: argparse.Namespace) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, a.ttl)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    pad = b"x" * max(0, a.size - HEADER.size)
    dst, pack = (a.group, a.port), HEADER.pack
    interval = 1.0 / a.pps if a.pps > 0 else 0.0
    sent = enobufs = 0
    t0 = time.time()
    end, due = t0 + a.duration, t0
    try:
        while True:
            now = time.time()
            if (sent & 63) == 0 and now >= end:
                break
            if interval:
                if now < due:
                    time.sleep(due - now)
                due += interval
            try:
                sock.sendto(pack(sent, time.time()) + pad, dst)
            except OSError:  # ENOBUFS: the qdisc is full; the datagram is lost, not sent
                enobufs += 1
                continue
            sent += 1
    except Stop:
        pass
    secs = time.time() - t0
    _emit({"sent": sent, "secs": round(secs, 4), "pps": round(sent / secs, 1) if secs else 0,
           "enobufs": enobufs})


def _percentile(sorted_vals: list[float], q: float) -> float:
    return sorted_vals[min(len(sorted_vals) - 1, int(q * len(sorted_vals)))]


def cmd_recv(a: argparse.Namespace) -> None:
    sock = _rx_socket(a.group, a.port)
    _join(sock, a.group)
    _ready(a.ready)
    buf = bytearray(65536)
    seqs: set[int] = set()
    owds: list[float] = []
    n, first, last = 0, None, None
    start = time.time()
    end = start + a.duration
    unpack = HEADER.unpack_from
    try:
        while True:
            now = time.time()
            wait = end - now
            if last is not None and a.idle:
                wait = min(wait, last + a.idle - now)
            if wait <= 0:
                break
            ready, _, _ = select.select([sock], [], [], wait)
            if not ready:
                continue
            while True:  # drain without a select per datagram
                try:
                    size = sock.recv_into(buf, 65536, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                t = time.time()
                n += 1
                if first is None:
                    first = t
                last = t
                if size >= HEADER.size:
                    seq, sent_at = unpack(buf)
                    seqs.add(seq)
                    if len(owds) < 200_000:
                        owds.append(t - sent_at)
    except Stop:
        pass
    sock.close()
    out: dict = {"n": n, "distinct": len(seqs), "first": first, "last": last,
                 "max_seq": max(seqs) if seqs else None,
                 "pps": (round((n - 1) / (last - first), 1)
                         if n > 1 and first is not None and last is not None and last > first
                         else None)}
    if owds:
        owds.sort()
        out.update({f"owd_ms_{k}": round(_percentile(owds, q) * 1e3, 3)
                    for k, q in (("p50", 0.5), ("p99", 0.99))})
        out["owd_ms_max"] = round(owds[-1] * 1e3, 3)
    _emit(out)


def cmd_first(a: argparse.Namespace) -> None:
    sock = _rx_socket(a.group, a.port)
    t_join = time.time()
    _join(sock, a.group)
    ready, _, _ = select.select([sock], [], [], a.timeout)
    t_first = time.time() if ready else None
    if ready:
        sock.recv(65536)
    sock.close()
    _emit({"group": a.group, "t_join": t_join, "t_first": t_first,
           "join_to_first_ms": None if t_first is None else round((t_first - t_join) * 1e3, 3)})


def cmd_joinmany(a: argparse.Namespace) -> None:
    try:  # per network namespace: this pod's limit only
        if int(MAX_MEMBERSHIPS.read_text()) < a.count:
            MAX_MEMBERSHIPS.write_text(str(a.count + 16))
    except OSError as exc:
        _emit({"error": f"cannot raise {MAX_MEMBERSHIPS}: {exc}"})
        sys.exit(1)
    base = int(ipaddress.IPv4Address(a.base))
    socks: list[socket.socket] = []
    t0 = time.time()
    joined = 0
    try:
        for i in range(a.count):
            if i % a.per_socket == 0:
                socks.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP))
            _join(socks[-1], str(ipaddress.IPv4Address(base + i)))
            joined += 1
        t1 = time.time()
        _ready(a.ready, joined=joined, sockets=len(socks), t_start=t0, t_end=t1)
        deadline = t1 + a.hold
        while time.time() < deadline:
            time.sleep(0.2)
    except Stop:
        pass
    except OSError as exc:
        _emit({"error": f"join {joined + 1} failed: {exc}", "joined": joined})
        sys.exit(1)
    for sock in socks:
        sock.close()
    _emit({"joined": joined, "t_start": t0})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="podtool", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def group_port(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("group")
        sp.add_argument("port", type=int)

    s = sub.add_parser("send")
    group_port(s)
    s.add_argument("--pps", type=float, default=0.0)
    s.add_argument("--duration", type=float, default=3.0)
    s.add_argument("--size", type=int, default=200)
    s.add_argument("--ttl", type=int, default=8)
    s.set_defaults(func=cmd_send)
    r = sub.add_parser("recv")
    group_port(r)
    r.add_argument("--duration", type=float, default=10.0)
    r.add_argument("--idle", type=float, default=0.0)
    r.add_argument("--ready")
    r.set_defaults(func=cmd_recv)
    f = sub.add_parser("first")
    group_port(f)
    f.add_argument("--timeout", type=float, default=2.0)
    f.set_defaults(func=cmd_first)
    j = sub.add_parser("joinmany")
    j.add_argument("base")
    j.add_argument("count", type=int)
    j.add_argument("--per-socket", type=int, default=1000)
    j.add_argument("--ready")
    j.add_argument("--hold", type=float, default=600.0)
    j.set_defaults(func=cmd_joinmany)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
