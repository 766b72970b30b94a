"""The agent's OpenFlow channel to br-int: listen, handshake, bundles, dumps, packet-in/out.

This module owns the controller connection (OpenFlow 1.5, see ``agent.ovs.convert`` for why),
request/reply matching by xid, turning OpenFlow errors into readable exceptions that name the
op that failed (ops are described only then), and delivering packet-ins. The byte channel
under it is ``agent.ovs.channel``.

os-ken supplies the wire codec (message classes and parsers), but the flow and group mods of
a bundle are written by ``agent.ovs.fastwire`` (os-ken's bytes). The connection is served here
with plain threads instead of os-ken's app_manager/Datapath, which keep process-wide
registries (one controller per process) and, with the native hub, leave a send thread
blocked after a disconnect. The API is synchronous and thread-safe; callbacks run on one
event thread so they may call back into the switch (the receive thread never blocks on them).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import socket
import struct
import threading
from collections.abc import Callable, Sequence
from typing import Any

from os_ken.ofproto import ofproto_parser
from os_ken.ofproto import ofproto_v1_5 as ofp
from os_ken.ofproto import ofproto_v1_5_parser as ofpp

from agent.flowsync import switch as switchops
from agent.flowsync.switch import (
    CookieDelete,
    FlowStats,
    MeterStats,
    OpenFlowError,
    PacketIn,
    SwitchDisconnected,
    SwitchOp,
)
from agent.ovs import convert as ofconvert
from agent.ovs import fastwire
from agent.ovs.buckets import DESC_SAFE_BUCKETS
from agent.ovs.channel import RECENT_XIDS, Channel, Waiter, exit_process
from agent.ovs.convert import OF_VERSION, Converter, ConvertError, error_message_text
from agent.ovs.events import EventQueue
from agent.ovs.fastwire import OpEncoder
from pipeline.model import OFPP_CONTROLLER, Action, Group, SwitchState
from pipeline.ops import Command, MeterOp
from pipeline.tables import Pipeline

log = logging.getLogger(__name__)

Label = str | SwitchOp  # what a message stands for: a step ("open") or an op (described late)


class OpenFlowSwitch:
    """Controller side of br-int. ``start()`` listens; the bridge connects (and reconnects)."""

    def __init__(self, pipeline: Pipeline, listen_host: str = "127.0.0.1",
                 listen_port: int = 6653, *, listen_socket: socket.socket | None = None,
                 fatal: Callable[[BaseException], None] = exit_process,
                 timeout: float = 60.0) -> None:
        self.pipeline = pipeline
        self.convert = Converter(pipeline)
        self.listen_addr = (listen_host, listen_port)
        self.timeout = timeout
        self.on_packet_ins: Callable[[list[PacketIn]], None] | None = None
        self.on_connected: Callable[[int], None] | None = None
        self._fatal = fatal
        self._lsock = listen_socket
        self._conn: Channel | None = None
        self._connected = threading.Event()
        self._lock = threading.Lock()  # guards _conn and _pending
        self._apply_lock = threading.Lock()  # one bundle at a time
        self._pending: dict[int, Waiter] = {}  # xid -> who waits (the waiter has its label)
        self._bundle_ids = itertools.count(1)
        self._buckets: dict[int, int] = {}  # group id -> next bucket id (see agent.ovs.buckets)
        self.encoder = OpEncoder(self.convert)  # ops' bytes: fastwire, os-ken where it declines
        self._events = EventQueue(self._deliver_packet_ins)
        self._stopping = False
        self._threads: list[threading.Thread] = []

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        if self._lsock is None:
            self._lsock = socket.create_server(self.listen_addr, reuse_port=False)
        self._lsock.listen(4)
        self._spawn(self._accept_loop, "of-accept")
        self._spawn(self._events.run, "of-events", lambda: self._stopping)
        log.info("OpenFlow controller listening on %s", self.address)

    @property
    def address(self) -> tuple[str, int]:
        """Where the controller listens (the real port when started with port 0)."""
        if self._lsock is None:
            return self.listen_addr
        host, port = self._lsock.getsockname()[:2]
        return host, port

    def stop(self) -> None:
        self._stopping = True
        if self._lsock is not None:
            with contextlib.suppress(OSError):
                self._lsock.shutdown(socket.SHUT_RDWR)
            self._lsock.close()
        with self._lock:
            conn, self._conn = self._conn, None
            self._connected.clear()
        if conn is not None:
            conn.close()
        self._events.close()
        for t in self._threads:
            t.join(timeout=5)

    def wait_connected(self, timeout: float | None = None) -> int:
        """Block until a bridge finished the handshake; returns its datapath id."""
        if not self._connected.wait(timeout):
            raise TimeoutError(f"no bridge connected to {self.listen_addr} within {timeout}s")
        conn = self._conn
        if conn is None or conn.id is None:
            raise SwitchDisconnected(f"bridge at {self.listen_addr} went away again")
        return conn.id

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def _spawn(self, fn: Callable[..., None], name: str, *args: Any) -> None:
        t = threading.Thread(target=self._guarded, args=(fn, *args), name=name, daemon=True)
        self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()

    def _guarded(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except BaseException as exc:  # noqa: BLE001 - every handler failure is fatal
            if not self._stopping:
                self._fatal(exc)

    def _accept_loop(self) -> None:
        assert self._lsock is not None
        while not self._stopping:
            try:
                sock, peer = self._lsock.accept()
            except OSError:
                if self._stopping:
                    return
                raise
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Channel(sock, peer, ofp, ofpp)
            log.info("bridge connected from %s", peer)
            with self._lock:
                old, self._conn = self._conn, conn
            if old is not None:  # the bridge reconnected: the new connection wins
                self._disconnected(old)
                old.close()
            self._spawn(self._serve, f"of-conn-{peer}", conn)

    # -- receiving ------------------------------------------------------------------------------

    def _serve(self, conn: Channel) -> None:
        conn.send_msg(ofpp.OFPHello(conn, [ofpp.OFPHelloElemVersionBitmap([OF_VERSION])]))
        try:
            for version, msg_type, xid, raw in conn.read_messages():
                self._on_raw(conn, version, msg_type, xid, raw)
        finally:
            conn.close()
            self._disconnected(conn)

    def _disconnected(self, conn: Channel) -> None:
        with self._lock:
            if self._conn is conn:
                self._conn = None
                self._connected.clear()
            pending = [x for x, w in self._pending.items() if w.channel is conn]
            waiters = {id(w): w for w in (self._pending.pop(x) for x in pending)}
        for waiter in waiters.values():
            waiter.errors.append(("connection", "bridge disconnected"))
            waiter.done.set()
        if conn.id is not None:
            log.warning("bridge %#x disconnected", conn.id)

    def _on_raw(self, conn: Channel, version: int, msg_type: int, xid: int,
                raw: bytes) -> None:
        with self._lock:
            waiter = self._pending.get(xid)
        if waiter is not None and waiter.raw and msg_type == ofp.OFPT_MULTIPART_REPLY:
            # Parsed by the caller (ofconvert): os-ken's group desc parser is not reliable.
            self._reply(xid, raw, more=bool(struct.unpack_from("!H", raw, 10)[0] & 1))
            return
        if conn.state == "hello" and version != OF_VERSION:
            raise ConnectionError(
                f"bridge speaks OpenFlow version {version}; allow OpenFlow15 in its protocols")
        msg = ofproto_parser.msg(conn, version, msg_type, len(raw), xid, raw)
        if msg is None:  # os-ken logged the parse failure; a waiter must not hang on it
            if waiter is not None:
                waiter.errors.append((self._text(waiter.labels.get(xid, "reply")),
                                      f"unparseable reply (type {msg_type})"))
                waiter.done.set()
            return
        self._dispatch(conn, msg)

    def _dispatch(self, conn: Channel, msg: Any) -> None:
        if isinstance(msg, ofpp.OFPEchoRequest):
            reply = ofpp.OFPEchoReply(conn, msg.data)
            reply.xid = msg.xid
            conn.send_msg(reply)
        elif isinstance(msg, ofpp.OFPHello):
            conn.state = "features"
            conn.send_msg(ofpp.OFPFeaturesRequest(conn))
        elif isinstance(msg, ofpp.OFPSwitchFeatures):
            conn.id = msg.datapath_id
            conn.send_msg(ofpp.NXTSetPacketInFormatMsg(conn, 2), "packet-in format nxt_packet_in2")
            conn.send_msg(ofpp.OFPSetConfig(conn, 0, ofp.OFPCML_NO_BUFFER))
            conn.state = "config"
            conn.send_msg(ofpp.OFPBarrierRequest(conn), "handshake barrier")
        elif isinstance(msg, ofpp.OFPBarrierReply) and conn.state == "config":
            conn.state = "main"
            self._connected.set()
            log.info("bridge %#x ready (OpenFlow 1.5, packet-in2)", conn.id)
            if self.on_connected is not None and conn.id is not None:
                dpid, cb = conn.id, self.on_connected
                self._events.call(lambda: cb(dpid))
        elif isinstance(msg, ofpp.OFPErrorMsg):
            self._on_error(conn, msg)
        elif isinstance(msg, ofpp.NXTPacketIn2):
            self._on_packet_in(msg)
        elif isinstance(msg, ofpp.OFPMultipartReply):
            self._reply(msg.xid, msg, more=bool(msg.flags & ofp.OFPMPF_REPLY_MORE))
        elif isinstance(msg, ofpp.OFPBarrierReply | ofpp.OFPBundleCtrlMsg):
            self._reply(msg.xid, msg, more=False)
        else:
            log.debug("ignored %s from bridge", type(msg).__name__)

    def _reply(self, xid: int, msg: Any, more: bool) -> None:
        with self._lock:
            waiter = self._pending.get(xid)
        if waiter is None:
            log.debug("unexpected reply xid=%#x", xid)
            return
        waiter.replies.append(msg)
        if not more and waiter.final_xid == xid:
            waiter.done.set()

    def _on_error(self, conn: Channel, msg: Any) -> None:
        text = error_message_text(msg)
        with self._lock:
            waiter = self._pending.get(msg.xid)
        if waiter is None:
            what = conn.what(msg.xid)
            log.error("OpenFlow error for %s (xid=%#x): %s", what, msg.xid, text)
            return
        label = waiter.labels.get(msg.xid, "request")
        if not isinstance(label, str):
            waiter.failed.append(label)
        waiter.errors.append((self._text(label), text))
        if waiter.final_xid == msg.xid:
            waiter.done.set()

    def _on_packet_in(self, msg: Any) -> None:
        if self.on_packet_ins is not None:
            self._events.punt(ofconvert.packet_in_from(msg))

    def _deliver_packet_ins(self, batch: list[PacketIn]) -> None:
        cb = self.on_packet_ins
        if cb is not None:
            cb(batch)

    @property
    def dropped_packet_ins(self) -> int:
        """Punts shed because the agent was behind (also kube_mcast_packet_ins_dropped_total)."""
        return self._events.dropped_packet_ins

    # -- requests -------------------------------------------------------------------------------

    def _require(self) -> Channel:
        conn = self._conn
        if conn is None or not self._connected.is_set():
            raise SwitchDisconnected(f"no bridge connected to {self.listen_addr}")
        return conn

    def _register(self, waiter: Waiter, xids: Sequence[int],
                  labels: Sequence[Label] | None = None) -> None:  # replies, errors -> waiter
        if labels is not None:
            waiter.labels.update(zip(xids, labels, strict=True))
        with self._lock:
            self._pending.update(dict.fromkeys(xids, waiter))

    def _forget(self, xids: Sequence[int]) -> None:
        with self._lock:
            for x in xids:
                self._pending.pop(x, None)

    def _wait(self, waiter: Waiter, what: str) -> None:
        if not waiter.done.wait(self.timeout):
            raise TimeoutError(f"{what}: no answer from the bridge within {self.timeout}s")
        if any(text == "bridge disconnected" for _, text in waiter.errors):
            raise SwitchDisconnected(f"{what}: bridge disconnected")

    def request(self, msg: Any, what: str, raw: bool = False) -> list[Any]:
        """Send one request; return its reply messages (all parts of a multipart reply)."""
        conn = self._require()
        waiter = Waiter(channel=conn, raw=raw)
        data = conn.encode(msg, what)
        waiter.final_xid = msg.xid
        self._register(waiter, [msg.xid], [what])
        try:
            conn.send_raw(data)
            self._wait(waiter, what)
        finally:
            self._forget([msg.xid])
        if waiter.errors:
            raise OpenFlowError(what, waiter.errors)
        return waiter.replies

    def barrier(self) -> None:
        self.request(ofpp.OFPBarrierRequest(self._require()), "barrier")

    def apply(self, ops: Sequence[SwitchOp]) -> None:
        """Apply ops atomically in one bundle; raise OpenFlowError naming the ops that failed.

        OVS bundles carry flow and group mods only: meter adds/modifies go just before the
        bundle and meter deletes just after it (the differ orders them that way too). Every op
        is encoded before anything is sent; an op is described only if it fails.
        """
        if not ops:
            return
        with self._apply_lock:
            conn = self._require()
            buckets = dict(self._buckets)
            encoded = [self._encode(op, buckets) for op in ops]  # bytes (meters: os-ken's)

            def pick(keep: Callable[[SwitchOp], bool]) -> tuple[list[SwitchOp], list[Any]]:
                chosen = [i for i, op in enumerate(ops) if keep(op)]
                return [ops[i] for i in chosen], [encoded[i] for i in chosen]

            def meters(delete: bool, what: str) -> None:
                meter_ops, msgs = pick(lambda op: isinstance(op, MeterOp)
                                       and (op.command is Command.DELETE) == delete)
                if meter_ops:
                    self._transact(conn, *self._serialized(conn, meter_ops, msgs, what), what,
                                   ops)

            meters(False, "meters")
            bundled, messages = pick(lambda op: not isinstance(op, MeterOp))
            if bundled:
                self._bundle(conn, bundled, messages, ops)
            self._buckets = buckets
            meters(True, "meter deletes")

    def _serialized(self, conn: Channel, labels: Sequence[Label], msgs: Sequence[Any],
                    what: str) -> tuple[list[Label], list[int], list[bytes]]:
        """(labels, xids, bytes) of os-ken messages (steps, meters), xids assigned here."""
        xids, chunks = [], []
        for label, msg in zip(labels, msgs, strict=True):
            try:
                chunks.append(conn.encode(msg, f"{what}: {self._text(label)}"))
            except struct.error as exc:  # a length field overflowed: the op is too big
                raise ConvertError(f"{self._text(label)}: message too large") from exc
            xids.append(msg.xid)
        return list(labels), xids, chunks

    def _transact(self, conn: Channel, labels: list[Label], xids: list[int],
                  chunks: list[bytes], what: str, ops: Sequence[SwitchOp],
                  waiter: Waiter | None = None) -> Waiter:
        """Send encoded messages and a barrier; raise if any of them was refused."""
        waiter = waiter if waiter is not None else Waiter(channel=conn)
        waiter.done.clear()
        barrier = self._serialized(conn, ["barrier"], [ofpp.OFPBarrierRequest(conn)], what)
        xids = [*xids, *barrier[1]]
        waiter.final_xid = xids[-1]
        self._register(waiter, xids, [*labels, *barrier[0]])
        try:
            conn.send_batched([*chunks, *barrier[2]])
            self._wait(waiter, what)
        finally:
            self._forget(xids)
        if waiter.errors:
            raise OpenFlowError(what, waiter.errors, ops, waiter.failed)
        return waiter

    def _bundle(self, conn: Channel, bundled: list[SwitchOp], messages: list[bytes],
                ops: Sequence[SwitchOp]) -> None:
        """Open, adds and a barrier first: OVS refuses a malformed add on its own and would
        still commit the rest, so an error there discards the bundle. Then the commit, whose
        failure OVS reports against the add that failed (its xid) and then the commit."""
        bid = next(self._bundle_ids)
        flags = ofp.OFPBF_ATOMIC | ofp.OFPBF_ORDERED
        what = f"bundle {bid} of {len(bundled)} ops"

        def ctrl(step: str, kind: int) -> tuple[list[Label], list[int], list[bytes]]:
            msg = ofpp.OFPBundleCtrlMsg(conn, bid, kind, flags, [])
            return self._serialized(conn, [step], [msg], what)

        labels, xids, chunks = ctrl("open", ofp.OFPBCT_OPEN_REQUEST)
        add_xids, adds = self._bundle_adds(conn, bid, flags, bundled, messages)
        waiter = Waiter(channel=conn)
        try:
            self._transact(conn, [*labels, *bundled], [*xids, *add_xids], [*chunks, *adds],
                           what, ops, waiter)
        except OpenFlowError:
            with contextlib.suppress(OSError):
                conn.send_batched(ctrl("discard", ofp.OFPBCT_DISCARD_REQUEST)[2])
            raise
        self._register(waiter, add_xids)  # the commit's failure names them
        try:
            self._transact(conn, *ctrl("commit", ofp.OFPBCT_COMMIT_REQUEST), what, ops, waiter)
        finally:
            self._forget(add_xids)
        log.debug("bundle %d committed: %d ops", bid, len(bundled))

    def _bundle_adds(self, conn: Channel, bid: int, flags: int, bundled: list[SwitchOp],
                     messages: list[bytes]) -> tuple[list[int], list[bytes]]:
        """(xids, BUNDLE_ADD_MESSAGEs of bundle ``bid``) of the encoded messages."""
        xids = conn.take_xids(len(messages))
        adds = list(map(functools.partial(fastwire.bundle_add, bid, flags), xids, messages))
        last = zip(xids[-RECENT_XIDS:], bundled[-RECENT_XIDS:], strict=True)
        conn.note_sent([(xid, functools.partial(self._text, op)) for xid, op in last])
        return xids, adds

    def _encode(self, op: SwitchOp, buckets: dict[int, int]) -> Any:
        """A meter op's os-ken message, or a bundled op's bytes (``OpEncoder``)."""
        try:
            return self.encoder.encode(op, buckets)
        except (ConvertError, ValueError, KeyError) as exc:
            raise ConvertError(f"{self._text(op)}: {exc}") from exc

    def _text(self, label: Label) -> str:
        return label if isinstance(label, str) else switchops.describe(label, self.pipeline)

    # -- reading back ---------------------------------------------------------------------------

    def dump(self) -> SwitchState:
        """Flows (by the pipeline's table names), groups and meters now on the switch."""
        flows = [s.flow for s in self.flow_stats()]
        groups = self._groups()
        meters = [self.convert.meter_from_ofp(m) for r in self.request(
            ofpp.OFPMeterDescStatsRequest(self._require(), 0, ofp.OFPM_ALL), "dump meters")
            for m in r.body]
        return SwitchState(tuple(flows), tuple(groups), tuple(meters))

    def flow_stats(self, cookie: int = 0, mask: int = 0) -> list[FlowStats]:
        """Flows whose cookie matches (cookie, mask), with their packet and byte counts."""
        conn = self._require()
        req = ofpp.OFPFlowDescStatsRequest(conn, 0, ofp.OFPTT_ALL, ofp.OFPP_ANY, ofp.OFPG_ANY,
                                           cookie, mask, ofpp.OFPMatch())
        out = []
        for reply in self.request(req, "dump flows"):
            for desc in reply.body:
                try:
                    flow = self.convert.flow_from_ofp(desc)
                except (ConvertError, ValueError) as exc:
                    log.warning("flow in table %d cookie %#x not described: %s",
                                desc.table_id, desc.cookie, exc)
                    continue
                out.append(FlowStats(flow, desc.stats.get("packet_count", 0),
                                     desc.stats.get("byte_count", 0)))
        return out

    def meter_stats(self) -> dict[int, MeterStats]:
        """Packets that reached each meter and those its drop band dropped, by meter id."""
        req = ofpp.OFPMeterStatsRequest(self._require(), 0, ofp.OFPM_ALL)
        return {m.meter_id: MeterStats(m.packet_in_count,
                                       sum(b.packet_band_count for b in m.band_stats))
                for r in self.request(req, "meter stats") for m in r.body}

    def _groups(self) -> list[Group]:
        conn = self._require()
        sizes = {s.group_id: len(s.bucket_stats) for r in self.request(
            ofpp.OFPGroupStatsRequest(conn, 0, ofp.OFPG_ALL), "group stats") for s in r.body}
        # A group description longer than 64 KiB overflows its length field and would break the
        # channel's framing (OVS sends it anyway), so big groups are listed without buckets.
        small = [g for g, n in sizes.items() if n <= DESC_SAFE_BUCKETS]
        found: dict[int, Group] = {g: Group(g, ()) for g in sizes}
        targets = [ofp.OFPG_ALL] if len(small) == len(sizes) else small
        for gid in targets:
            for raw in self.request(ofpp.OFPGroupDescStatsRequest(conn, 0, gid),
                                    f"group desc {gid:#x}", raw=True):
                for g in self.convert.group_desc_from_raw(raw):
                    found[g.group_id] = g
        with self._apply_lock:  # the switch's groups, as they are now
            self._buckets = dict(sizes)
        return [found[g] for g in sorted(found)]

    # -- packet-out -----------------------------------------------------------------------------

    def packet_out(self, data: bytes, actions: Sequence[Action],
                   in_port: int | None = None) -> None:
        """Send a frame; in_port defaults to CONTROLLER. Output(OFPP_TABLE) runs the pipeline."""
        conn = self._require()
        msg = self.convert.packet_out(conn, data, actions,
                                      OFPP_CONTROLLER if in_port is None else in_port)
        conn.send_msg(msg, f"packet-out {len(data)} bytes")


__all__ = ["CookieDelete", "FlowStats", "OpenFlowError", "OpenFlowSwitch", "PacketIn",
           "SwitchDisconnected", "exit_process"]
