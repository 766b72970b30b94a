"""The agents' stream: one long-lived WebSocket per agent, served by aiohttp in its own thread.

Owns the server side of the protocol ``wire.stream`` describes: authentication (a bearer token
checked with a ``TokenReview`` against the API server, successful reviews cached for a minute,
keyed by the token's SHA-256), authorization (``node_of``: who may open which node's stream),
the node set sent first and after every change of ``Hub.nodes()``, then (once the policy
watches have synced: ``PolicyViews.synced``) the node's policy view in full and as patches after
every change of it (debounced by ``policy_debounce_s``), agents' membership reports handed to
``Hub.report`` and their rule counters to ``PolicyViews.report_stats`` (incoming frames are
dispatched by ``message_type``; an unknown type closes the stream with ``CLOSE_MALFORMED``),
and the stream metrics.

Authorization: a token may open node NAME's stream, and no other, when its review says either
- user ``system:node:NAME`` (the lab's per-node tokens; a kubelet's credentials), or
- user ``system:serviceaccount:NS:SA``, the agents' service account
  (``stream.agentServiceAccount: NS/SA``), with
  ``user.extra["authentication.kubernetes.io/node-name"] == [NAME]``: a projected token bound
  to an agent pod on NAME (Kubernetes >= 1.30 writes the pod's node into the tokens it binds to
  a pod, and TokenReview returns it).
Anything else (another user; the agents' account without exactly one node name, e.g. a token
not bound to a pod, or an older cluster) is 403.

Threads: the server runs on an event loop of its own (``start`` returns once it listens); the
Hub's node listener only hands the news to that loop (``call_soon_threadsafe``); TokenReviews,
which block, run in a small pool. Nothing is sent before the Hub has a node set (version 0: the
Node watcher has not listed yet), so a restarted controller never tells agents "no nodes".
A report stays in the Hub when its stream ends (the agent keeps forwarding; it re-reports on
reconnect); a newer stream of the same node replaces an older one.

May import ``controller.hub``, ``controller.policy.views``, ``wire``, aiohttp, the official
``kubernetes`` client and prometheus-client.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import WSMsgType, web
from kubernetes import client as k8s
from prometheus_client import Counter, Gauge

from controller.hub import Hub
from controller.policy.views import PolicyViews
from wire.nodes import WireError
from wire.policy import PolicyView, diff, full_update
from wire.stream import (
    CLOSE_BINARY,
    CLOSE_MALFORMED,
    CLOSE_REPLACED,
    CLOSE_RESTART,
    HEARTBEAT_S,
    MAX_MESSAGE_BYTES,
    MEMBERS,
    NODE_PARAM,
    RULE_STATS,
    STREAM_PATH,
    close_reason,
    message_type,
    node_of_user,
    nodes_message,
    parse_members_message,
    parse_rule_stats_message,
    policy_message,
)

log = logging.getLogger(__name__)

NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"  # a pod-bound SA token's node
REVIEW_CACHE_S = 60.0
REVIEW_TIMEOUT_S = 10.0
REVIEW_WORKERS = 4
START_TIMEOUT_S = 30.0
POLICY_DEBOUNCE_S = 0.05  # a burst of view changes (one pod event, many) is one patch

STREAM_CLIENTS = Gauge("kube_mcast_controller_stream_clients", "Agents with an open stream")
STREAM_RESYNCS = Counter(
    "kube_mcast_controller_stream_resyncs_total",
    "Full node sets sent to an agent that had just connected (each connect is a resync)",
)
STREAM_AUTH_FAILURES = Counter(
    "kube_mcast_controller_stream_auth_failures_total",
    "Stream requests refused: unauthenticated (no or a bad token) or forbidden (not that "
    "node's token)", ["reason"],
)
POLICY_MESSAGES = Counter(
    "kube_mcast_controller_policy_messages_total",
    "Policy messages sent to agents: full views (one per stream) and patches", ["kind"],
)
STREAM_MESSAGES = Counter(
    "kube_mcast_controller_stream_messages_received_total",
    "Messages received from agents, by type (members, ruleStats; invalid: malformed or of an "
    "unknown type, which closes the stream)", ["type"],
)
POLICY_RULES_SENT = Gauge(
    "kube_mcast_controller_policy_rules_sent",
    "Rules in the policy view last sent to a node's agent", ["node"],
)


class StreamSettings(Protocol):
    """What the stream reads of the controller's configuration (``ControllerConfig``)."""

    @property
    def stream_address(self) -> str: ...

    @property
    def stream_port(self) -> int: ...

    @property
    def cert_file(self) -> str | None: ...

    @property
    def key_file(self) -> str | None: ...

    @property
    def agent_service_account(self) -> str: ...


class ReviewUnavailable(RuntimeError):
    """The API server could not review a token (unreachable, or refused the controller)."""


@dataclass(frozen=True)
class Reviewed:
    """Who a token is, as its ``TokenReview`` said."""

    username: str
    node_names: tuple[str, ...] = ()  # user.extra[NODE_NAME_EXTRA]: where a pod-bound token is


def service_account_user(account: str) -> str | None:
    """``NS/NAME`` → ``system:serviceaccount:NS:NAME`` (the username of its tokens); "" → None."""
    namespace, _, name = account.partition("/")
    return f"system:serviceaccount:{namespace}:{name}" if namespace and name else None


def node_of(who: Reviewed, agent_user: str | None) -> str | None:
    """The node whose stream ``who`` may open (see the module docstring), or None.
    ``agent_user``: the agents' service account's username (None: no such account)."""
    node = node_of_user(who.username)
    if node is not None:
        return node
    if agent_user is not None and who.username == agent_user and len(who.node_names) == 1:
        return who.node_names[0] or None
    return None


def _node_names(extra: Mapping[str, Sequence[str]] | None) -> tuple[str, ...]:
    values = (extra or {}).get(NODE_NAME_EXTRA) or ()
    return tuple(str(v) for v in values) if isinstance(values, list | tuple) else ()


class TokenReviewer:
    """Bearer token → ``Reviewed`` through ``TokenReview``; successful reviews are cached."""

    def __init__(self, api: k8s.ApiClient, ttl_s: float = REVIEW_CACHE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._auth = k8s.AuthenticationV1Api(api)
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[Reviewed, float]] = {}  # sha256(token) -> (who, expiry)
        self.reviews = 0  # TokenReviews sent (the cache's misses)

    def review(self, token: str) -> Reviewed | None:
        """Who the token authenticates, or None; blocks while the API server answers."""
        key = hashlib.sha256(token.encode()).hexdigest()
        now = self._clock()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[1] > now:
                return hit[0]
            self.reviews += 1
        try:
            review = self._auth.create_token_review(
                k8s.V1TokenReview(spec=k8s.V1TokenReviewSpec(token=token)),
                _request_timeout=REVIEW_TIMEOUT_S)
        except Exception as e:  # ApiException, urllib3's errors, OSError: all "cannot tell"
            raise ReviewUnavailable(f"TokenReview failed: {e}") from e
        status = review.status
        if status is None or not status.authenticated or status.user is None:
            return None
        username = status.user.username
        if not username:
            return None
        who = Reviewed(str(username), _node_names(status.user.extra))
        with self._lock:
            self._cache = {k: v for k, v in self._cache.items() if v[1] > now}
            self._cache[key] = (who, now + self._ttl_s)
        return who


@dataclass(eq=False)
class _Client:
    node: str
    ws: web.WebSocketResponse
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    policy_changed: bool = False
    replaced: bool = False


def _refuse(status: int, message: str) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="kube-mcast"'} if status == 401 else None
    return web.json_response({"error": message}, status=status, headers=headers)


class StreamServer:
    """``GET /v1/stream`` for agents, on ``cfg.stream_address:cfg.stream_port`` (TLS when
    ``cfg.cert_file`` is set; plain HTTP only for labs and tests)."""

    def __init__(self, cfg: StreamSettings, hub: Hub, api: k8s.ApiClient, *,
                 review_ttl_s: float = REVIEW_CACHE_S, heartbeat_s: float = HEARTBEAT_S,
                 policies: PolicyViews | None = None,
                 policy_debounce_s: float = POLICY_DEBOUNCE_S) -> None:
        self._cfg = cfg
        self._hub = hub
        self._policies = policies
        self._policy_debounce_s = policy_debounce_s
        self.reviewer = TokenReviewer(api, review_ttl_s)
        self._agent_user = service_account_user(cfg.agent_service_account)
        self._heartbeat_s = heartbeat_s
        self._clients: dict[str, _Client] = {}  # node -> its current stream (loop thread only)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._unsubscribe_policy: Callable[[], None] | None = None
        self.port = 0  # the bound port once started (cfg.stream_port may be 0: any free one)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Listen; returns once the socket is bound (raises if it cannot be)."""
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._pool = ThreadPoolExecutor(REVIEW_WORKERS, thread_name_prefix="tokenreview")
        self._thread = threading.Thread(target=loop.run_forever, name="agent-stream",
                                        daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._open(), loop).result(START_TIMEOUT_S)
        except BaseException:
            self._halt()
            raise
        log.info("agent stream listening on %s:%d (%s)", self._cfg.stream_address, self.port,
                 "TLS" if self._cfg.cert_file else "plain HTTP")

    def stop(self, timeout: float = 10.0) -> None:
        """Close every stream (agents reconnect elsewhere or later) and stop listening."""
        loop = self._loop
        if loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._close(), loop).result(timeout)
        except Exception:
            log.exception("agent stream: unclean stop")
        self._halt(timeout)

    def _halt(self, timeout: float = 10.0) -> None:
        loop, self._loop = self._loop, None
        for cancel in (self._unsubscribe, self._unsubscribe_policy):
            if cancel is not None:
                cancel()
        self._unsubscribe = self._unsubscribe_policy = None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None:
                self._thread.join(timeout)
            if not loop.is_running():
                loop.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _ssl_context(self) -> ssl.SSLContext | None:
        cert, key = self._cfg.cert_file, self._cfg.key_file
        if not cert:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert, key or None)
        return context

    async def _open(self) -> None:
        app = web.Application()
        app.router.add_get(STREAM_PATH, self._stream)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, self._cfg.stream_address, self._cfg.stream_port,
                           ssl_context=self._ssl_context())
        await site.start()
        self.port = int(runner.addresses[0][1])
        loop = asyncio.get_running_loop()

        def changed() -> None:  # on the writer's thread: hand over only
            loop.call_soon_threadsafe(self._nodes_changed)

        self._unsubscribe = self._hub.on_nodes(changed)
        if self._policies is not None:
            def views_changed(nodes: frozenset[str] | None) -> None:
                loop.call_soon_threadsafe(self._views_changed, nodes)

            self._unsubscribe_policy = self._policies.on_views(views_changed)

    async def _close(self) -> None:
        for cancel in (self._unsubscribe, self._unsubscribe_policy):
            if cancel is not None:
                cancel()
        self._unsubscribe = self._unsubscribe_policy = None
        for client in list(self._clients.values()):
            await client.ws.close(code=CLOSE_RESTART, message=b"controller stopping")
        if self._runner is not None:
            await self._runner.cleanup()

    def _nodes_changed(self) -> None:
        for client in self._clients.values():
            client.changed.set()

    def _views_changed(self, nodes: frozenset[str] | None) -> None:
        for node, client in self._clients.items():
            if nodes is None or node in nodes:
                client.policy_changed = True
                client.changed.set()

    # -- one agent's stream ----------------------------------------------------------------------

    async def _authorize(self, request: web.Request) -> str | web.Response:
        """The node whose stream this request may open, or the refusal to answer with."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            STREAM_AUTH_FAILURES.labels("unauthenticated").inc()
            return _refuse(401, "a bearer token is required")
        loop = asyncio.get_running_loop()
        try:
            who = await loop.run_in_executor(self._pool, self.reviewer.review, token.strip())
        except ReviewUnavailable as e:
            log.warning("agent stream: %s", e)
            return _refuse(503, "the token cannot be reviewed now; retry")
        if who is None:
            STREAM_AUTH_FAILURES.labels("unauthenticated").inc()
            return _refuse(401, "the token is not valid")
        node = request.query.get(NODE_PARAM, "")
        if not node:
            return _refuse(400, f"query parameter {NODE_PARAM!r} is required")
        if node_of(who, self._agent_user) != node:
            STREAM_AUTH_FAILURES.labels("forbidden").inc()
            user = who.username
            if user == self._agent_user and len(who.node_names) != 1:
                log.warning("agent stream: a token of %s for node %s names %s: a projected "
                            "token bound to the agent's pod is needed (Kubernetes >= 1.30)",
                            user, node, f"nodes {list(who.node_names)}" if who.node_names
                            else "no node")
            else:
                log.warning("agent stream: user %s may not open the stream of node %s", user,
                            node)
            return _refuse(403, f"user {user!r} may not open the stream of node {node!r}")
        return node

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        node = await self._authorize(request)
        if isinstance(node, web.Response):
            return node
        ws = web.WebSocketResponse(heartbeat=self._heartbeat_s, max_msg_size=MAX_MESSAGE_BYTES)
        await ws.prepare(request)
        client = _Client(node, ws)
        old = self._clients.get(node)
        self._clients[node] = client
        if old is not None:
            old.replaced = True
            await old.ws.close(code=CLOSE_REPLACED,
                               message=close_reason(f"replaced by a newer stream of {node}"))
        STREAM_CLIENTS.inc()
        log.info("agent stream of %s opened from %s", node, request.remote)
        sender = asyncio.create_task(self._send(client))
        try:
            await self._receive(client)
        finally:
            sender.cancel()
            if self._clients.get(node) is client:
                del self._clients[node]
            STREAM_CLIENTS.dec()
            log.info("agent stream of %s closed (%s)", node, ws.close_code)
        return ws

    async def _receive(self, client: _Client) -> None:
        ws = client.ws
        async for msg in ws:
            if client.replaced:
                return
            if msg.type == WSMsgType.TEXT:
                problem = self._dispatch(client.node, msg.data)
                if problem is not None:
                    log.warning("agent stream of %s: %s", client.node, problem)
                    await ws.close(code=CLOSE_MALFORMED, message=close_reason(problem))
                    return
            elif msg.type == WSMsgType.BINARY:
                await ws.close(code=CLOSE_BINARY,
                               message=close_reason("binary frames are not part of the protocol"))
                return
            elif msg.type == WSMsgType.ERROR:
                log.info("agent stream of %s: %s", client.node, ws.exception())
                return

    def _dispatch(self, node: str, text: str) -> str | None:
        """Hand an agent's message over; what is wrong with it, or None."""
        try:
            kind = message_type(text)
        except WireError as e:
            STREAM_MESSAGES.labels("invalid").inc()
            return f"malformed message: {e}"
        try:
            if kind == MEMBERS:
                self._hub.report(node, parse_members_message(text))
            elif kind == RULE_STATS:
                stats = parse_rule_stats_message(text)
                if self._policies is not None:
                    self._policies.report_stats(node, stats)
            else:
                STREAM_MESSAGES.labels("invalid").inc()
                return f"unknown message type {kind!r}"
        except WireError as e:
            STREAM_MESSAGES.labels("invalid").inc()
            return f"malformed {kind} message: {e}"
        STREAM_MESSAGES.labels(kind).inc()
        return None

    async def _send(self, client: _Client) -> None:
        """The node set once the Hub has one, then whenever its version moves; after it, the
        node's policy view in full once the policy watches have synced, then its patches."""
        sent = 0
        policy_version, sent_view = 0, PolicyView()
        try:
            while not client.ws.closed:
                version, nodes = self._hub.nodes()
                if version > sent:
                    if sent == 0:
                        STREAM_RESYNCS.inc()
                    await client.ws.send_str(nodes_message(version, nodes))
                    sent = version
                policies = self._policies
                if sent and policies is not None and policies.synced:
                    client.policy_changed = False
                    _, view = policies.view(client.node)
                    update = full_update(view) if policy_version == 0 else diff(sent_view, view)
                    if policy_version == 0 or not update.empty():
                        policy_version += 1
                        await client.ws.send_str(policy_message(policy_version, update))
                        POLICY_MESSAGES.labels("full" if update.full else "patch").inc()
                        POLICY_RULES_SENT.labels(client.node).set(len(view.rules))
                        sent_view = view
                await client.changed.wait()
                client.changed.clear()
                if client.policy_changed and policy_version:
                    await asyncio.sleep(self._policy_debounce_s)  # let a burst settle
        except (ConnectionError, RuntimeError) as e:  # the peer went away mid-send
            log.debug("agent stream of %s: send failed: %s", client.node, e)
