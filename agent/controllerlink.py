"""The agent's link to the cluster controller: one WebSocket stream, kept open.

Owns the agent side of the protocol ``wire.stream`` describes: it connects to
``controller.address`` with the bearer token of ``controller.tokenFile`` (re-read on every
connect), applies every node set it receives through the core's ``set_nodes`` (in order; a
version not newer than the last applied on this connection is skipped; a new connection starts
over, and its first message is the full set again), and reports the node's full local
membership (``core.members()`` → ``wire.members``) on connect and whenever it changes (polled
every ``POLL_S``; sent only on change).

Policy messages go to the core's ``set_policy`` the same way: versions count within one
connection, the first of a connection must be ``full`` (it replaces the agent's view), and each
later one must be the next version (it patches the view): a patch that does not follow the one
applied would patch a view the controller does not have, so the link closes the stream instead
(``CLOSE_MALFORMED``) and the next connection starts over with a full view. The counters of
the rules the core enforces (``core.rule_stats()``) go back every ``STATS_S`` when they moved.
A message of any other type closes the stream as malformed.

When the controller is away nothing is torn down: the last node set and the last policy view
stay applied, forwarding and IGMP between agents go on, and the link retries with capped
exponential backoff (``BACKOFF_MIN_S`` → ``BACKOFF_MAX_S``, jittered), reset once a connection
has delivered a node set. Refusals (401, 403) are retried the same way: a rotated token may
fix them.

Threads: the link runs aiohttp's client on an event loop in a thread of its own; the core's
calls, which take its lock and may program the switch, run in the loop's executor so they never
stall the heartbeat. May import ``agent.config``, ``agent.metrics``, ``wire`` and aiohttp; it
reaches the core only through the ``LinkCore`` and ``PolicyCore`` protocols (``MulticastCore``
satisfies both).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import aiohttp

from agent import metrics
from agent.config import ControllerLinkConfig
from wire.members import GroupReport, MemberPod
from wire.nodes import NodeInfo, WireError
from wire.policy import PolicyUpdate, RuleStats
from wire.stream import (
    CLOSE_BINARY,
    CLOSE_INTERNAL,
    CLOSE_MALFORMED,
    HEARTBEAT_S,
    MAX_MESSAGE_BYTES,
    NODE_PARAM,
    NODES,
    POLICY,
    STREAM_PATH,
    close_reason,
    members_message,
    message_type,
    parse_nodes_message,
    parse_policy_message,
    rule_stats_message,
)

log = logging.getLogger(__name__)

POLL_S = 0.2
STATS_S = 2.0  # rule counters to the controller at most this often (it sums them within 10 s)
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 10.0
CONNECT_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
REFUSALS = {400: "(bad request: no node name?)", 401: "(the token was not accepted)",
            403: "(the token is not this node's)", 503: "(the controller cannot check tokens now)"}


class FilterView(Protocol):
    @property
    def mode(self) -> str: ...

    @property
    def sources(self) -> tuple[str, ...]: ...


class MemberView(Protocol):
    """One group as the core lists it (``agent.multicast.core.GroupMembers``)."""

    @property
    def group(self) -> str: ...

    @property
    def local_pods(self) -> tuple[str, ...]: ...

    @property
    def source_filters(self) -> Mapping[str, FilterView]: ...


class LinkCore(Protocol):
    """What the link needs of the multicast core."""

    def members(self) -> Sequence[MemberView]: ...

    def set_nodes(self, nodes: list[NodeInfo]) -> None: ...


class PolicyCore(Protocol):
    """What the link needs of a core that enforces policy (``MulticastCore`` does; a core
    without ``set_policy`` ignores policy messages and reports no rule counters)."""

    def set_policy(self, update: PolicyUpdate) -> None: ...

    def rule_stats(self) -> list[RuleStats]: ...


def membership_report(members: Iterable[MemberView]) -> list[GroupReport]:
    """The core's groups → the report: groups with local pods, each pod with its filter
    (any-source joins as ``exclude`` of nothing); remote nodes are not ours to report."""
    out = []
    for m in members:
        pods = []
        for ref in m.local_pods:
            namespace, _, name = ref.partition("/")
            f = m.source_filters.get(ref)
            pods.append(MemberPod(namespace, name, f.mode, tuple(sorted(f.sources)))
                        if f is not None else MemberPod(namespace, name))
        if pods:
            out.append(GroupReport(m.group, tuple(sorted(pods))))
    return sorted(out, key=lambda g: g.group)


class LinkRefused(Exception):
    """The controller ended or refused the stream for a reason worth the log."""


class _ApplyFailed(Exception):
    """The core failed to apply what the controller sent (a bug of ours, logged)."""


class ControllerLink:
    """Keeps the stream to the controller open while started; see the module docstring."""

    def __init__(self, cfg: ControllerLinkConfig, node_name: str, core: LinkCore, *,
                 poll_s: float = POLL_S, stats_s: float = STATS_S,
                 backoff_min_s: float = BACKOFF_MIN_S, backoff_max_s: float = BACKOFF_MAX_S,
                 heartbeat_s: float = HEARTBEAT_S) -> None:
        self._cfg = cfg
        self._node = node_name
        self._core = core
        self._poll_s = poll_s
        self._stats_s = stats_s
        self._backoff = (backoff_min_s, backoff_max_s)
        self._heartbeat_s = heartbeat_s
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = threading.Event()
        # what the link has done, for logs, tests and health
        self.connected = False
        self.connects = 0  # connections that delivered a node set
        self.nodes_version = 0  # the last applied on the current connection
        self.reports_sent = 0
        self.policy_version = 0  # the last applied on the current connection
        self.stats_sent = 0
        self.last_error = ""

    @property
    def url(self) -> str:
        return self._cfg.address.rstrip("/") + STREAM_PATH

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),),
                                        name="controller-link", daemon=True)
        self._thread.start()
        self._ready.wait(STOP_TIMEOUT_S)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Close the stream (nothing the link applied is undone) and end the thread."""
        loop, task = self._loop, self._task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(task.cancel)
        if self._thread is not None:
            self._thread.join(timeout)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._ready.set()
        delay = self._backoff[0]
        try:
            # no total timeout: the stream lives for as long as it is healthy (the heartbeat
            # says when not); the handshake has its own (CONNECT_TIMEOUT_S)
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                while True:
                    before = self.connects
                    try:
                        await self._connection(session)
                    except (aiohttp.ClientError, OSError, LinkRefused) as e:  # OSError: timeouts
                        self._failed(e)
                    except Exception as e:  # a bug must not end the link for good
                        log.exception("controller link: unexpected failure")
                        self.last_error = f"unexpected: {e!r}"
                    finally:
                        self._set_connected(False)
                    if self.connects > before:
                        delay = self._backoff[0]
                    await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                    delay = min(delay * 2, self._backoff[1])
        except asyncio.CancelledError:
            log.info("controller link stopped")

    def _failed(self, e: BaseException) -> None:
        if isinstance(e, aiohttp.WSServerHandshakeError):
            text = f"refused: HTTP {e.status} {REFUSALS.get(e.status, e.message)}"
        elif isinstance(e, aiohttp.ClientConnectorError):  # its str() names the SSL context
            text = f"cannot connect: {e.os_error.strerror or e.os_error}"
        else:
            text = str(e) or type(e).__name__
        if text != self.last_error:
            log.warning("controller link to %s: %s (retrying)", self.url, text)
        self.last_error = text

    def _set_connected(self, up: bool) -> None:
        self.connected = up
        metrics.CONTROLLER_CONNECTED.set(1 if up else 0)

    def _ssl(self) -> ssl.SSLContext | bool:
        if not self._cfg.address.startswith("https:"):
            return False
        return ssl.create_default_context(cafile=self._cfg.ca_file or None)

    # -- one connection --------------------------------------------------------------------------

    async def _connection(self, session: aiohttp.ClientSession) -> None:
        try:
            token = Path(self._cfg.token_file).read_text().strip()
        except OSError as e:
            raise LinkRefused(f"token file {self._cfg.token_file}: {e.strerror}") from None
        ws = await asyncio.wait_for(session.ws_connect(
            self.url, params={NODE_PARAM: self._node},
            headers={"Authorization": f"Bearer {token}"}, ssl=self._ssl(),
            heartbeat=self._heartbeat_s, max_msg_size=MAX_MESSAGE_BYTES), CONNECT_TIMEOUT_S)
        async with ws:
            self._set_connected(True)
            log.info("controller link to %s open", self.url)
            senders = [asyncio.create_task(self._report(ws))]
            if hasattr(self._core, "rule_stats"):
                senders.append(asyncio.create_task(self._report_stats(ws)))
            try:
                ended = await self._receive(ws)
            finally:
                for task in senders:
                    task.cancel()
                for task in senders:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        raise LinkRefused(ended)

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse) -> str:
        """Apply node sets and policy until the stream ends; returns how it ended."""
        self._applied = {NODES: 0, POLICY: 0}
        self.nodes_version = self.policy_version = 0
        while True:
            msg = await ws.receive()
            if msg.type == aiohttp.WSMsgType.TEXT:
                try:
                    kind = message_type(msg.data)
                    handler = {NODES: self._on_nodes, POLICY: self._on_policy}.get(kind)
                    if handler is None:
                        raise WireError(f"type: {kind!r} is not a message to agents")
                    await handler(msg.data)
                except WireError as e:
                    log.error("controller link: malformed message: %s", e)
                    await ws.close(code=CLOSE_MALFORMED,
                                   message=close_reason(f"malformed message: {e}"))
                    return f"closed by us: malformed message: {e}"
                except _ApplyFailed as e:  # start over: a new connection brings it all again
                    await ws.close(code=CLOSE_INTERNAL, message=close_reason(f"agent error {e}"))
                    return f"closed by us: {e} failed"
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await ws.close(code=CLOSE_BINARY,
                               message=close_reason("binary frames are not part of the protocol"))
                return "closed by us: a binary frame"
            elif msg.type == aiohttp.WSMsgType.CLOSE:
                return f"closed by the controller: {msg.data} {msg.extra or ''}".rstrip()
            elif msg.type == aiohttp.WSMsgType.ERROR:
                return f"stream failed: {msg.data}"
            else:  # CLOSING, CLOSED: we closed it (a failed report, the heartbeat)
                return f"stream closed: {ws.close_code}"

    async def _apply(self, what: str, call: Callable[[], object]) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(None, call)
        except Exception:
            log.exception("controller link: applying %s failed", what)
            raise _ApplyFailed(f"applying {what}") from None

    async def _on_nodes(self, text: str) -> None:
        version, nodes = parse_nodes_message(text)
        if version <= self._applied[NODES]:
            return
        await self._apply(f"node set v{version}", lambda: self._core.set_nodes(nodes))
        first, self._applied[NODES] = self._applied[NODES] == 0, version
        self.nodes_version = version
        if first:
            self.connects += 1
            metrics.CONTROLLER_RESYNCS.inc()
        log.info("node set v%d from the controller: %s", version,
                 ", ".join(n.name for n in nodes))

    async def _on_policy(self, text: str) -> None:
        version, update = parse_policy_message(text)
        applied = self._applied[POLICY]
        if version <= applied:
            return  # seen on this connection already
        if applied == 0 and not update.full:
            raise WireError("policy: the first message of a connection must be full")
        if applied and not update.full and version != applied + 1:
            raise WireError(f"policy v{version} does not follow v{applied}")
        set_policy = getattr(self._core, "set_policy", None)
        if set_policy is not None:
            await self._apply(f"policy v{version}", lambda: set_policy(update))
        self._applied[POLICY] = self.policy_version = version
        log.info("policy v%d from the controller: %s%d rules set, %d deleted", version,
                 "full, " if update.full else "", len(update.set_rules),
                 len(update.delete_rules))

    async def _report(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """The full membership now, then again whenever it differs from what was sent."""
        loop = asyncio.get_running_loop()
        last: list[GroupReport] | None = None
        # a core that versions its membership is read only when the version moves: a node
        # with thousands of groups would otherwise rebuild them all five times a second
        version_of = getattr(self._core, "membership_version", None)
        seen: int | None = None
        try:
            while not ws.closed:
                version = None if version_of is None else await loop.run_in_executor(
                    None, version_of)
                if version is None or version != seen:
                    members = await loop.run_in_executor(None, self._core.members)
                    seen = version
                    groups = membership_report(members)
                    if groups != last:
                        await ws.send_str(members_message(groups))
                        last = groups
                        self.reports_sent += 1
                await asyncio.sleep(self._poll_s)
        except ConnectionError as e:  # the stream broke under us: the receiver sees it too
            log.debug("controller link: report not sent: %s", e)
        except Exception:
            log.exception("controller link: membership report failed; reconnecting")
            await ws.close(code=CLOSE_INTERNAL, message=b"agent error while reporting")

    async def _report_stats(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """The rule counters on connect, then every ``stats_s`` when they moved."""
        loop = asyncio.get_running_loop()
        rule_stats = self._core.rule_stats  # type: ignore[attr-defined]
        last: list[RuleStats] | None = None
        try:
            while not ws.closed:
                stats = sorted(await loop.run_in_executor(None, rule_stats))
                if stats != last and (stats or last is not None):
                    await ws.send_str(rule_stats_message(stats))
                    last = stats
                    self.stats_sent += 1
                await asyncio.sleep(self._stats_s)
        except ConnectionError as e:
            log.debug("controller link: rule stats not sent: %s", e)
        except Exception:  # counters are not worth the stream: log and try again next time
            log.exception("controller link: rule stats failed")
