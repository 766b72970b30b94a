"""Real-kernel IGMP lab: two network namespaces joined by a veth pair, a tcpdump, a member.

Owns the small root-only toolkit the IGMP tests use to talk to a real Linux kernel, and the
script that (re)captures the frames stored as hex next to this file:

    sudo .venv/bin/python tests/agent/igmp/data/capture.py      # rewrites *.hex in this folder

Topology (`Lab`): netns `kmi-<tag>-h` ("pod" side, eth0 10.88.0.2/24) <-veth-> `kmi-<tag>-q`
("querier"/agent side, eth0 10.88.0.1/24). Both are deleted on exit, also on error.
The helpers shell out to `ip`, `sysctl` and `tcpdump`: this is test tooling, not product code.
"""

from __future__ import annotations

import os
import platform
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
HOST_IP, QUERIER_IP = "10.88.0.2", "10.88.0.1"
HOST_MAC, QUERIER_MAC = "02:88:00:00:00:02", "02:88:00:00:00:01"

# Linux values from <linux/in.h>; Python's socket module does not export them.
IP_UNBLOCK_SOURCE, IP_BLOCK_SOURCE = 37, 38
IP_ADD_SOURCE_MEMBERSHIP, IP_DROP_SOURCE_MEMBERSHIP = 39, 40


def run(*args: str) -> str:
    res = subprocess.run(args, capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"{' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout


def read_pcap(path: Path) -> list[bytes]:
    """Frames of a classic pcap file; a record still being written is left out."""
    data = path.read_bytes() if path.exists() else b""
    if len(data) < 24:
        return []
    endian = "<" if data[:4] == b"\xd4\xc3\xb2\xa1" else ">"
    frames, off = [], 24
    while off + 16 <= len(data):
        _, _, caplen, _ = struct.unpack_from(endian + "IIII", data, off)
        if off + 16 + caplen > len(data):
            break
        frames.append(data[off + 16:off + 16 + caplen])
        off += 16 + caplen
    return frames


class Tcpdump:
    """tcpdump -w in a netns, IGMP only, each packet flushed as it comes."""

    def __init__(self, netns: str, path: Path, iface: str = "eth0") -> None:
        self.path = path
        # -Z root: Debian's tcpdump would otherwise drop to user tcpdump before opening -w.
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, "tcpdump", "-i", iface, "-w", str(path), "-U",
             "--immediate-mode", "-Z", "root", "igmp"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()  # "listening on eth0 ..." once the socket is open
        if "listening" not in line:
            self.proc.kill()
            raise RuntimeError(f"tcpdump did not start: {line.strip()}")

    def frames(self) -> list[bytes]:
        return read_pcap(self.path)

    def wait_for(self, pred: Callable[[list[bytes]], bool], timeout: float) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while True:
            frames = self.frames()
            if pred(frames) or time.monotonic() > deadline:
                return frames
            time.sleep(0.05)

    def stop(self) -> list[bytes]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.frames()


class Member:
    """A process in the host netns holding one UDP socket; joins/leaves on command."""

    def __init__(self, netns: str) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, __file__, "member"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def do(self, *words: str) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(" ".join(words) + "\n")
        reply = self.proc.stdout.readline().strip()
        if reply != "ok":
            raise RuntimeError(f"member {' '.join(words)}: {reply or 'died'}")

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(5)


class Lab:
    """The two namespaces; use as a context manager so they are always deleted."""

    def __init__(self, tag: str) -> None:
        self.host, self.querier = f"kmi-{tag}-h", f"kmi-{tag}-q"
        self.tmp = Path(tempfile.mkdtemp(prefix="kmi-"))
        self._procs: list[Tcpdump | Member] = []

    def __enter__(self) -> Lab:
        try:
            for ns in (self.host, self.querier):
                run("ip", "netns", "add", ns)
                run("ip", "-n", ns, "link", "set", "lo", "up")
            run("ip", "link", "add", "eth0", "netns", self.host, "address", HOST_MAC,
                "type", "veth", "peer", "name", "eth0", "netns", self.querier,
                "address", QUERIER_MAC)
            for ns, ip in ((self.host, HOST_IP), (self.querier, QUERIER_IP)):
                run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
                run("ip", "-n", ns, "link", "set", "eth0", "up")
            run("ip", "-n", self.host, "route", "add", "224.0.0.0/4", "dev", "eth0")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self._procs:
            proc.stop() if isinstance(proc, Tcpdump) else proc.close()
        for ns in (self.host, self.querier):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for f in self.tmp.iterdir():
            f.unlink()
        self.tmp.rmdir()

    def sysctl(self, ns: str, key: str, value: int) -> None:
        run("ip", "netns", "exec", ns, "sysctl", "-q", "-w", f"{key}={value}")

    def tcpdump(self, ns: str, name: str) -> Tcpdump:
        dump = Tcpdump(ns, self.tmp / f"{name}.pcap")
        self._procs.append(dump)
        return dump

    def member(self) -> Member:
        m = Member(self.host)
        self._procs.append(m)
        return m

    def inject(self, ns: str, frame: bytes) -> None:
        """Send a raw Ethernet frame out of eth0 of `ns` (AF_PACKET, as a packet-out would)."""
        run("ip", "netns", "exec", ns, sys.executable, __file__, "inject", frame.hex())

    def igmp_proc(self) -> str:
        return run("ip", "netns", "exec", self.host, "cat", "/proc/net/igmp")


# ------------------------------------------------------------ in-netns helper commands

def _member_loop() -> None:
    """Read `join G`, `leave G`, `sjoin G S`, `sdrop G S`, `block G S`, `unblock G S` lines."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ifindex = socket.if_nametoindex("eth0")
    local = socket.inet_aton(HOST_IP)
    for line in sys.stdin:
        op, group, *rest = line.split()
        g = socket.inet_aton(group)
        try:
            if op in ("join", "leave"):
                mreqn = struct.pack("4s4si", g, b"\x00" * 4, ifindex)
                opt = socket.IP_ADD_MEMBERSHIP if op == "join" else socket.IP_DROP_MEMBERSHIP
                sock.setsockopt(socket.IPPROTO_IP, opt, mreqn)
            else:
                opt = {"sjoin": IP_ADD_SOURCE_MEMBERSHIP, "sdrop": IP_DROP_SOURCE_MEMBERSHIP,
                       "block": IP_BLOCK_SOURCE, "unblock": IP_UNBLOCK_SOURCE}[op]
                mreq_source = g + local + socket.inet_aton(rest[0])
                sock.setsockopt(socket.IPPROTO_IP, opt, mreq_source)
            print("ok", flush=True)
        except (OSError, KeyError, IndexError) as e:
            print(f"error {e!r}", flush=True)


def _inject(hexframe: str) -> None:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind(("eth0", 0))
        s.send(bytes.fromhex(hexframe))


# ------------------------------------------------------------ capture of the stored frames

def _save(name: str, frames: list[bytes], pcap: Path, note: str) -> None:
    text = run("tcpdump", "-nn", "-v", "-r", str(pcap)).splitlines() if frames else []
    lines = [f"# {note}"]
    # tcpdump -v prints 2 lines per packet here: header, then the IGMP decode.
    summaries = [" ".join(text[i:i + 2]) for i in range(0, len(text), 2)]
    for i, frame in enumerate(frames):
        lines.append("# " + " ".join((summaries[i] if i < len(summaries) else "").split()))
        lines.append(frame.hex())
    (HERE / f"{name}.hex").write_text("\n".join(lines) + "\n")
    print(f"{name}.hex: {len(frames)} frames")


def _scenario_v1_v2(version: int) -> None:
    group = f"239.1.0.{version}"
    with Lab(f"cap{version}") as lab:
        lab.sysctl(lab.host, "net.ipv4.conf.eth0.force_igmp_version", version)
        dump = lab.tcpdump(lab.querier, "cap")
        m = lab.member()
        m.do("join", group)
        time.sleep(1.5)
        m.do("leave", group)
        time.sleep(1.0)
        _save(f"v{version}_join_leave", dump.stop(), dump.path,
              f"force_igmp_version={version}: IP_ADD_MEMBERSHIP {group}, 1.5 s, "
              "IP_DROP_MEMBERSHIP; captured on the peer")


def _scenario_v3() -> None:
    from agent.multicast.igmp.packets import build_query  # our own builder, for the query scenario

    with Lab("cap3") as lab:
        lab.sysctl(lab.host, "net.ipv4.conf.eth0.force_igmp_version", 3)
        dump = lab.tcpdump(lab.querier, "asm")
        m = lab.member()
        m.do("join", "239.1.0.3")
        time.sleep(1.5)
        m.do("block", "239.1.0.3", "10.88.0.9")
        time.sleep(1.5)
        m.do("leave", "239.1.0.3")
        time.sleep(1.5)
        _save("v3_asm", dump.stop(), dump.path,
              "force_igmp_version=3: join 239.1.0.3; 1.5 s; IP_BLOCK_SOURCE 10.88.0.9; 1.5 s; "
              "IP_DROP_MEMBERSHIP")
        dump = lab.tcpdump(lab.querier, "ssm")
        m.do("sjoin", "232.1.1.1", "10.88.0.1")
        time.sleep(1.5)
        m.do("sjoin", "232.1.1.1", "10.88.0.5")
        time.sleep(1.5)
        m.do("sdrop", "232.1.1.1", "10.88.0.1")
        time.sleep(1.5)
        m.do("sdrop", "232.1.1.1", "10.88.0.5")
        time.sleep(1.5)
        _save("v3_ssm", dump.stop(), dump.path,
              "force_igmp_version=3: IP_ADD_SOURCE_MEMBERSHIP 232.1.1.1 src 10.88.0.1, then "
              "src 10.88.0.5; IP_DROP_SOURCE_MEMBERSHIP .1, then .5 (1.5 s apart)")

    with Lab("capq") as lab:  # default force_igmp_version=0, as in a fresh pod
        m = lab.member()
        m.do("join", "239.1.0.4")
        m.do("sjoin", "232.1.1.2", "10.88.0.1")
        time.sleep(2.0)  # let the unsolicited reports pass
        dump, seen = lab.tcpdump(lab.querier, "q3"), lab.tcpdump(lab.host, "q3h")
        lab.inject(lab.querier, build_query(3, QUERIER_IP, QUERIER_MAC, max_resp_s=0.5))
        time.sleep(1.5)
        seen_frames = seen.stop()
        _save("query_v3_seen_by_host", seen_frames[:1], seen.path,
              "build_query(3, general, max_resp_s=0.5) injected by AF_PACKET, captured on the "
              "receiving host")
        _save("v3_query_response", dump.stop(), dump.path,
              "host joined 239.1.0.4 and (232.1.1.2, 10.88.0.1); our v3 general query, answer")
        dump = lab.tcpdump(lab.querier, "q2")
        lab.inject(lab.querier, build_query(2, QUERIER_IP, QUERIER_MAC, max_resp_s=0.5))
        time.sleep(1.5)
        m.do("leave", "239.1.0.4")
        time.sleep(1.0)
        print(lab.igmp_proc())
        _save("v2_query_response", dump.stop(), dump.path,
              "same host (force_igmp_version=0) after our v2 general query: answers v2 and "
              "then leaves with a v2 leave")


def main() -> None:
    if os.geteuid() != 0:
        sys.exit("run as root: it creates network namespaces")
    sys.path.insert(0, str(HERE.parents[3]))
    for version in (1, 2):
        _scenario_v1_v2(version)
    _scenario_v3()
    readme = HERE / "README.md"
    print(f"captured with kernel {platform.release()} on {time.strftime('%Y-%m-%d')}; "
          f"update {readme.name}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["member"]:
        _member_loop()
    elif sys.argv[1:2] == ["inject"]:
        _inject(sys.argv[2])
    else:
        main()
