"""The OpenFlow byte channel: one TCP connection from the bridge, framing, xids, the ofchannel log.

This module owns the transport under ``agent.ovs.switch``: reading whole OpenFlow messages off
the socket, numbering and sending encoded messages from several threads (one lock, in order),
remembering what each recent xid was (so a late error can say which message it refers to),
and the "ofchannel" log of every message sent and received (logger
``agent.ovs.channel.messages`` at DEBUG). It knows nothing of message contents: os-ken
messages are serialized by their own code (the codec modules are handed in, so os_ken is
imported only by the adaptor), messages encoded elsewhere (``agent.ovs.fastwire``) take xids
from here and are noted as sent, their descriptions computed only if ever needed.

Also here: the waiter a request blocks on. The exceptions the adaptor raises belong to the
switch port it implements (``agent.flowsync.switch``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)
ofchannel = logging.getLogger("agent.ovs.channel.messages")

EXIT_FATAL = 70
RECENT_XIDS = 1024
_HDR = struct.Struct("!BBHI")  # ofp_header: version, type, length, xid

What = str | Callable[[], str]
"""What a sent message was: text, or how to make it (called only when someone asks)."""


def exit_process(exc: BaseException) -> None:
    """Default fatal handler: a dead handler thread must not leave a half-working agent."""
    log.critical("fatal error in OpenFlow handling, exiting: %r", exc, exc_info=exc)
    logging.shutdown()
    os._exit(EXIT_FATAL)


@dataclass
class Waiter:
    """What one request (or bundle) waits on: replies and errors arriving by xid."""

    channel: Channel | None = None  # the connection the request went out on
    final_xid: int = 0
    raw: bool = False  # deliver multipart replies as bytes (the caller parses them)
    done: threading.Event = field(default_factory=threading.Event)
    replies: list[Any] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    labels: dict[int, Any] = field(default_factory=dict)  # xid -> a step's name, or an op
    failed: list[Any] = field(default_factory=list)  # the ops (not steps) errors came for


class Channel:
    """One connection from the bridge. os-ken message classes use it as their 'datapath'."""

    def __init__(self, sock: socket.socket, peer: Any, ofproto: ModuleType,
                 parser: ModuleType) -> None:
        self.ofproto, self.ofproto_parser = ofproto, parser
        self.sock, self.peer = sock, peer
        self.id: int | None = None  # datapath id, once the features reply came
        self.state = "hello"
        self._xid = random.randint(1, 0xFFFF)
        self._lock = threading.Lock()  # xids and the recent-xid memory
        self._send_lock = threading.Lock()
        self._recent: OrderedDict[int, What] = OrderedDict()

    def set_xid(self, msg: Any) -> int:
        with self._lock:
            self._xid = self._xid % 0xFFFFFFFF + 1
            msg.set_xid(self._xid)
            return self._xid

    def take_xids(self, n: int) -> list[int]:
        """``n`` consecutive xids for messages encoded elsewhere."""
        with self._lock:
            first = self._xid
            out = [(first + i) % 0xFFFFFFFF + 1 for i in range(n)]
            if out:
                self._xid = out[-1]
            return out

    def encode(self, msg: Any, what: str = "") -> bytes:
        """Serialize ``msg`` (assigning an xid) and remember what it was."""
        if msg.xid is None:
            self.set_xid(msg)
        msg.serialize()
        if ofchannel.isEnabledFor(logging.DEBUG):
            ofchannel.debug("send xid=%#x %s %s", msg.xid, what, msg)
        self._remember([(msg.xid, what or type(msg).__name__)])
        return bytes(msg.buf)

    def note_sent(self, sent: Sequence[tuple[int, What]]) -> None:
        """Log and remember messages encoded elsewhere, by xid (only the last RECENT_XIDS
        are kept, so only theirs are ever described)."""
        if ofchannel.isEnabledFor(logging.DEBUG):
            for xid, what in sent:
                ofchannel.debug("send xid=%#x %s", xid, what if isinstance(what, str) else what())
        self._remember(sent[-RECENT_XIDS:])

    def _remember(self, sent: Sequence[tuple[int, What]]) -> None:
        with self._lock:
            for xid, what in sent:
                self._recent[xid] = what
            while len(self._recent) > RECENT_XIDS:
                self._recent.popitem(last=False)

    def what(self, xid: int) -> str:
        with self._lock:
            found = self._recent.get(xid, "an earlier message")
        return found if isinstance(found, str) else found()

    def send_raw(self, data: bytes) -> None:
        with self._send_lock:
            self.sock.sendall(data)

    def send_batched(self, chunks: Sequence[bytes], batch_bytes: int = 1 << 20) -> None:
        """Send encoded messages in order, joined into writes of about ``batch_bytes``."""
        batch: list[bytes] = []
        size = 0
        for c in chunks:
            batch.append(c)
            size += len(c)
            if size >= batch_bytes:
                self.send_raw(b"".join(batch))
                batch, size = [], 0
        if batch:
            self.send_raw(b"".join(batch))

    def send_msg(self, msg: Any, what: str = "") -> int:
        self.send_raw(self.encode(msg, what))
        return int(msg.xid)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()

    def read_messages(self) -> Iterator[tuple[int, int, int, bytes]]:
        """(version, type, xid, raw message) until the peer closes the connection."""
        buf = bytearray()
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while len(buf) >= _HDR.size:
                version, msg_type, length, xid = _HDR.unpack_from(buf)
                if length < _HDR.size:
                    raise ConnectionError(f"bridge sent a message with length {length}")
                if len(buf) < length:
                    break
                raw = bytes(buf[:length])
                del buf[:length]
                if ofchannel.isEnabledFor(logging.DEBUG):
                    ofchannel.debug("recv xid=%#x type=%d len=%d", xid, msg_type, length)
                yield version, msg_type, xid, raw
