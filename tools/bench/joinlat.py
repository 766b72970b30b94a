"""Section 2: join -> first packet through the whole product, split with tcpdump.

One node (``mclab up --nodes 1``), a sender pod streaming to a fresh group at ~5000 pps (one
datagram every 0.2 ms: the resolution of the figure), and a receiver pod that joins with
``IP_ADD_MEMBERSHIP``. Each repetition uses a fresh group, so the agent has to learn it from
the pod's IGMP report and install its route flow and group before anything arrives.

tcpdump in the receiver pod sees the report leave and the first datagram arrive, which splits
join()->first datagram into:
- kernel: join() -> the IGMP report leaves the pod (the pod kernel's report delay, 2-3
  jiffies; nothing of ours),
- switch: report -> first datagram on the pod's interface (packet-in to the agent, its IGMP
  handling and reconcile, the bundle, OVS revalidation, the next datagram through the
  new group: the part NOTES §C1 measured as 0.55 ms for OVS snooping, 2.1 ms for a naive
  os-ken app),
- socket: first datagram on the interface -> the application has it.

The switch part is split further with tcpdump on the node's loopback: the agent listens on
127.0.0.1:6653 inside the node netns and the bridge connects to it, so every OpenFlow message
is seen with a wall-clock timestamp (the same clock as the pod's tcpdump): report on the pod's
wire -> NXT_PACKET_IN2 to the agent (the switch's punt), packet-in -> the agent's bundle opens
(the agent's own work), bundle open -> commit reply (the bundle transaction), commit reply ->
first datagram on the receiver's wire (the datapath catching up). A minimal pcap + OpenFlow
header parser (standard library) reads the capture; messages split across TCP segments are
skipped, which loses none of the ones timed.
"""

from __future__ import annotations

import logging
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.bench.common import BenchError, CpuMeter, summary
from tools.bench.lab import BenchLab, Pod, PodProcs, result, stop
from tools.mclab import netns

log = logging.getLogger(__name__)

PORT = 5001
PPS = 5000
GROUP_PREFIX = "239.201"
SPLIT_KEYS = ("report_to_packet_in_ms", "packet_in_to_bundle_ms", "bundle_open_to_commit_ms",
              "commit_to_first_ms")
BASELINE = {"ovs_snooping_report_to_first_ms_p50": 0.55,
            "naive_osken_report_to_first_ms_p50": 2.12,
            "ovs_snooping_join_to_first_ms_p50": 10.6}

# ------------------------------------------------------------------------------ OpenFlow capture

OF_PORT = 6653
OFPT_PACKET_OUT = 13
OFPT_EXPERIMENTER = 4
OFPT_BUNDLE_CONTROL = 33
NX_VENDOR = 0x00002320
NXT_PACKET_IN2 = 30
BUNDLE_OPEN_REQUEST, BUNDLE_COMMIT_REPLY = 0, 5
_PCAP_HDR = struct.Struct("<IHHiIII")
_REC_HDR = struct.Struct("<IIII")
_OF_HDR = struct.Struct("!BBHI")


@dataclass(frozen=True)
class OfEvent:
    """One OpenFlow message seen on the wire: when, which way, what."""

    t: float
    to_agent: bool
    kind: str  # "packet_in", "packet_out", "bundle_open", "commit_reply", "other"


def _kind(msg_type: int, body: bytes) -> str:
    if msg_type == OFPT_EXPERIMENTER and len(body) >= 8:
        vendor, subtype = struct.unpack_from("!II", body)
        if vendor == NX_VENDOR and subtype == NXT_PACKET_IN2:
            return "packet_in"
    if msg_type == OFPT_PACKET_OUT:
        return "packet_out"
    if msg_type == OFPT_BUNDLE_CONTROL and len(body) >= 6:
        ctrl = struct.unpack_from("!H", body, 4)[0]
        if ctrl == BUNDLE_OPEN_REQUEST:
            return "bundle_open"
        if ctrl == BUNDLE_COMMIT_REPLY:
            return "commit_reply"
    return "other"


def _tcp_payload(frame: bytes) -> tuple[int, int, bytes] | None:
    """(src port, dst port, payload) of an Ethernet/IPv4/TCP frame, else None."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return None
    ip = frame[14:]
    ihl = (ip[0] & 0x0F) * 4
    if ip[9] != 6 or len(ip) < ihl + 20:
        return None
    total = struct.unpack_from("!H", ip, 2)[0]
    tcp = ip[ihl:total]
    sport, dport = struct.unpack_from("!HH", tcp)
    return sport, dport, tcp[(tcp[12] >> 4) * 4:]


def parse_pcap(data: bytes) -> list[OfEvent]:
    """OpenFlow messages in a pcap (Ethernet link type, µs or ns timestamps)."""
    if len(data) < _PCAP_HDR.size:
        return []
    magic = struct.unpack_from("<I", data)[0]
    if magic not in (0xA1B2C3D4, 0xA1B23C4D):
        raise BenchError(f"not a little-endian pcap (magic {magic:#x})")
    scale = 1e-6 if magic == 0xA1B2C3D4 else 1e-9
    events: list[OfEvent] = []
    off = _PCAP_HDR.size
    while off + _REC_HDR.size <= len(data):
        sec, frac, incl, _orig = _REC_HDR.unpack_from(data, off)
        frame = data[off + _REC_HDR.size: off + _REC_HDR.size + incl]
        off += _REC_HDR.size + incl
        got = _tcp_payload(frame)
        if got is None:
            continue
        sport, dport, payload = got
        t = sec + frac * scale
        pos = 0
        while pos + _OF_HDR.size <= len(payload):
            _version, msg_type, length, _xid = _OF_HDR.unpack_from(payload, pos)
            if length < _OF_HDR.size or pos + length > len(payload):
                break  # continued in the next segment: not a message we time
            body = payload[pos + _OF_HDR.size: pos + length]
            events.append(OfEvent(t, dport == OF_PORT, _kind(msg_type, body)))
            pos += length
    return events


class OfCapture:
    """``with OfCapture(node_netns, path) as cap: ...`` then ``cap.events()``."""

    def __init__(self, node_netns: str, path: Path) -> None:
        self.netns = node_netns
        self.path = path
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> OfCapture:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.proc = netns.popen(self.netns, ["tcpdump", "-i", "lo", "-n", "-s", "512",
                                             "--immediate-mode", "-U", "-w", str(self.path),
                                             "tcp", "port", str(OF_PORT)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()  # "listening on lo ..." once it captures
        if "listening" not in line:
            self.stop()
            raise BenchError(f"tcpdump on the node's lo did not start: {line.strip()}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            time.sleep(0.05)  # let the last packets reach the file (-U flushes per packet)
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def events(self) -> list[OfEvent]:
        try:
            return parse_pcap(self.path.read_bytes())
        except OSError:
            return []


def split_after(events: list[OfEvent], t_report: float,
                t_first: float) -> dict[str, float] | None:
    """The agent's path for one join: first packet-in after the report, the bundle that
    followed it, its commit reply; None if any is missing before the first datagram."""
    def first(kind: str, after: float, to_agent: bool) -> OfEvent | None:
        return next((e for e in events if e.kind == kind and e.to_agent is to_agent
                     and e.t >= after), None)

    pin = first("packet_in", t_report, True)
    if pin is None or pin.t > t_first:
        return None
    opened = first("bundle_open", pin.t, False)
    done = first("commit_reply", opened.t, True) if opened else None
    if opened is None or done is None:
        return None
    return {"report_to_packet_in_ms": round((pin.t - t_report) * 1e3, 3),
            "packet_in_to_bundle_ms": round((opened.t - pin.t) * 1e3, 3),
            "bundle_open_to_commit_ms": round((done.t - opened.t) * 1e3, 3),
            "commit_to_first_ms": round((t_first - done.t) * 1e3, 3)}


# ------------------------------------------------------------------------------ join samples


def _packets(text: str) -> list[tuple[float, str]]:
    """(timestamp, text) per packet of ``tcpdump -tt -v`` output (continuation lines joined)."""
    out: list[tuple[float, str]] = []
    for line in text.splitlines():
        head = line.split(" ", 1)[0]
        try:
            out.append((float(head), line))
        except ValueError:
            if out and line.startswith((" ", "\t")):
                out[-1] = (out[-1][0], out[-1][1] + " " + line.strip())
    return out


def parse_tcpdump(text: str, group: str) -> tuple[float | None, float | None, str | None]:
    """(time the pod's report joining ``group`` left, time the first datagram to it arrived,
    report version) from the receiver pod's tcpdump. A v3 report may carry other records
    (e.g. the previous group's leave) before ours, so all records are looked at."""
    report = data = None
    kind = None
    for stamp, text_ in _packets(text):
        low = text_.lower()
        if report is None and ("igmp v3 report" in low and (f"gaddr {group} to_ex" in low
                                                           or f"gaddr {group} is_ex" in low)):
            report, kind = stamp, "v3"
        elif report is None and f"igmp v2 report {group}" in low:
            report, kind = stamp, "v2"
        elif data is None and "udp" in low and f"> {group}." in low:
            data = stamp
    return report, data, kind


def one_rep(lab: PodProcs, sender: Pod, receiver: Pod, group: str,
            lead_s: float = 0.25) -> dict[str, Any]:
    """One sample: stream to ``group``, let ``receiver`` join, time the first datagram."""
    dump = lab.tcpdump(receiver, f"igmp or (udp and dst host {group})", count=40, verbose=True)
    tx = lab.podtool(sender, "send", group, str(PORT), "--pps", str(PPS), "--duration", "5")
    try:
        time.sleep(lead_s)  # the stream runs (to the outside only) before anyone joins
        rx = result(lab.podtool(receiver, "first", group, str(PORT), "--timeout", "2"), 10)
    finally:
        stop(tx)
    time.sleep(0.02)
    stop(dump)
    out = dump.stdout.read() if dump.stdout else ""
    report, data, kind = parse_tcpdump(out, group)
    t_join, t_first = rx["t_join"], rx["t_first"]
    if t_first is None:
        raise BenchError(f"no datagram for {group} within 2 s of the join")
    rep: dict[str, Any] = {"group": group, "join_to_first_ms": rx["join_to_first_ms"],
                           "report": kind, "t_report": report, "t_wire": data}
    if report is not None and data is not None:
        rep["join_to_report_ms"] = round((report - t_join) * 1e3, 3)
        rep["report_to_first_ms"] = round((data - report) * 1e3, 3)
        rep["wire_to_app_ms"] = round((t_first - data) * 1e3, 3)
    return rep


def collect(host: PodProcs, sender: Pod, receiver: Pod, reps: int,
            prefix: str) -> tuple[list[dict[str, Any]], list[str]]:
    """``reps`` samples, group ``<prefix>.x.y`` each: (samples, failures). Shared by our node
    and the anchors' beds: the same sender rate, lead time, pods' kernels and tcpdump."""
    samples: list[dict[str, Any]] = []
    failures: list[str] = []
    for i in range(reps):
        group = f"{prefix}.{i // 250}.{i % 250 + 1}"
        try:
            samples.append(one_rep(host, sender, receiver, group))
        except BenchError as exc:
            failures.append(str(exc))
            log.warning("join latency rep %d (%s): %s", i, group, exc)
        time.sleep(0.05)
    return samples, failures


def pick(samples: list[dict[str, Any]], key: str) -> list[float]:
    return [s[key] for s in samples if s.get(key) is not None]


def figures(samples: list[dict[str, Any]], reps: int, failures: list[str]) -> dict[str, Any]:
    """The section's summaries of ``samples`` (the samples themselves go along: the plots
    draw their distributions)."""
    return {
        "reps": reps, "ok": len(samples), "failures": failures, "sender_pps": PPS,
        "join_to_first_ms": summary(pick(samples, "join_to_first_ms")),
        "join_to_report_ms": summary(pick(samples, "join_to_report_ms")),
        "report_to_first_ms": summary(pick(samples, "report_to_first_ms")),
        "wire_to_app_ms": summary(pick(samples, "wire_to_app_ms")),
        "report_kinds": sorted({str(s["report"]) for s in samples}),
        "samples": samples,
    }


def run(lab: BenchLab, reps: int) -> dict[str, Any]:
    sender, receiver = lab.pod("jl-tx"), lab.pod("jl-rx")
    agent = CpuMeter(lab.agent_pid())
    with OfCapture(lab.node_netns(), lab.dir / "bench-of.pcap") as cap:
        samples, failures = collect(lab, sender, receiver, reps, GROUP_PREFIX)
    events = cap.events()
    for s in samples:
        if s["t_report"] is not None and s["t_wire"] is not None:
            s.update(split_after(events, s["t_report"], s["t_wire"]) or {})
    out = figures(samples, reps, failures)
    out["switch_split_ms"] = {k: summary(pick(samples, k)) for k in SPLIT_KEYS}
    out["agent_cpu_s"] = agent.seconds()
    out["baseline_notes_c1"] = BASELINE
    return out
