"""The local API's HTTP server: JSON over HTTP/1.1 on a unix socket (mode 0600).

Owns serving an ``AgentApi`` (see ``agent.api.types`` for the routes) to the node's local
clients — the CNI plugin, ``mcctl``, the lab: routing, bodies, status codes, keep-alive
connections, and the socket file's life. Standard library HTTP: the API is tiny and local.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import socketserver
import stat
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from agent.api.types import AgentApi, ApiError, TraceQuery, pod_from_json, pod_to_json
from agent.interfacestore import PodAttach
from wire.nodes import WireError, nodes_from_json

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20  # a node list of a large cluster fits easily; anything bigger is a bug

_POD_PATH = re.compile(r"^/v1/pods/(?P<cid>[^/]+)$")


class _Handler(BaseHTTPRequestHandler):
    """One HTTP connection; dispatches requests to the server's AgentApi."""

    protocol_version = "HTTP/1.1"  # keep-alive; every response carries Content-Length
    server: _UnixHttpServer
    timeout = 30  # an idle keep-alive client must not pin a thread forever

    # route table: path -> {method: handler method name}
    _ROUTES: dict[str, dict[str, str]] = {
        "/healthz": {"GET": "_health"},
        "/v1/pods": {"GET": "_list_pods", "POST": "_attach_pod"},
        "/v1/members": {"GET": "_members"},
        "/v1/stats/pods": {"GET": "_pod_stats"},
        "/v1/flows": {"GET": "_flows"},
        "/v1/policystats": {"GET": "_policy_stats"},
        "/v1/nodes": {"PUT": "_set_nodes"},
        "/v1/podnetwork": {"GET": "_pod_network"},
        "/v1/trace": {"POST": "_trace"},
    }

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        url = urllib.parse.urlsplit(self.path)
        path = url.path
        self._query = urllib.parse.parse_qs(url.query)
        self._allow = ""
        try:
            # read the body whatever the route: an unread body would corrupt the next
            # request on this keep-alive connection
            self._raw = self._read_body()
            status, payload = self._route(method, path)
        except ApiError as exc:
            status, payload = exc.status, {"error": exc.message}
        except Exception as exc:  # a bug in the agent core: answer, log, keep serving
            log.exception("local API %s %s failed", method, path)
            status, payload = 500, {"error": f"internal error: {type(exc).__name__}: {exc}"}
        self._send(status, payload)

    def _route(self, method: str, path: str) -> tuple[int, Any]:
        api = self.server.api
        if m := _POD_PATH.match(path):
            if method != "DELETE":
                raise self._not_allowed(["DELETE"])
            ifnames = self._query.get("ifname", [""])
            if len(ifnames) != 1:
                raise ApiError(400, "ifname: give it once")
            api.detach_pod(urllib.parse.unquote(m["cid"]), ifnames[0])
            return 204, None
        methods = self._ROUTES.get(path)
        if methods is None:
            raise ApiError(404, f"no such endpoint: {path}")
        if method not in methods:
            raise self._not_allowed(list(methods))
        return getattr(self, methods[method])(api)

    def _not_allowed(self, allowed: list[str]) -> ApiError:
        self._allow = ", ".join(allowed)
        return ApiError(405, f"method not allowed; allowed: {self._allow}")

    # -- endpoints --

    def _health(self, api: AgentApi) -> tuple[int, Any]:
        return 200, api.health()

    def _list_pods(self, api: AgentApi) -> tuple[int, Any]:
        return 200, {"pods": [pod_to_json(p) for p in api.list_pods()]}

    def _attach_pod(self, api: AgentApi) -> tuple[int, Any]:
        return 201, pod_to_json(api.attach_pod(pod_from_json(PodAttach, self._body())))

    def _members(self, api: AgentApi) -> tuple[int, Any]:
        return 200, {"members": api.members()}

    def _pod_stats(self, api: AgentApi) -> tuple[int, Any]:
        return 200, {"pods": api.pod_stats()}

    def _flows(self, api: AgentApi) -> tuple[int, Any]:
        return 200, {"flows": api.flows()}

    def _policy_stats(self, api: AgentApi) -> tuple[int, Any]:
        return 200, {"rules": api.policy_stats()}

    def _pod_network(self, api: AgentApi) -> tuple[int, Any]:
        return 200, api.pod_network().to_json()

    def _trace(self, api: AgentApi) -> tuple[int, Any]:
        return 200, api.trace(TraceQuery.from_json(self._body()))

    def _set_nodes(self, api: AgentApi) -> tuple[int, Any]:
        try:
            nodes = nodes_from_json(self._body())
        except WireError as exc:
            raise ApiError(400, str(exc)) from None
        api.set_nodes(nodes)
        return 204, None

    # -- plumbing --

    def _read_body(self) -> bytes:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            self.close_connection = True
            raise ApiError(400, "bad Content-Length") from None
        if length > MAX_BODY:
            self.close_connection = True  # we will not read it, so the stream is lost
            raise ApiError(413, f"body larger than {MAX_BODY} bytes")
        return self.rfile.read(length) if length > 0 else b""

    def _body(self) -> Any:
        try:
            return json.loads(self._raw or b"null")
        except ValueError as exc:
            raise ApiError(400, f"invalid JSON: {exc}") from None

    def _send(self, status: int, payload: Any) -> None:
        body = b"" if status == 204 else json.dumps(payload).encode()
        self.send_response(status)
        if status == 405:
            self.send_header("Allow", self._allow)
        if body:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:  # writing b"" after a 204 can still raise EPIPE if the client hung up
            self.wfile.write(body)

    def address_string(self) -> str:
        return "unix"  # client_address is "" for AF_UNIX; the default indexes into it

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("local API: " + format, *args)


class _UnixHttpServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True  # keep-alive handler threads must not block stop()
    request_queue_size = socket.SOMAXCONN  # the default 5 is soon full when pods start in bulk
    api: AgentApi

    def handle_error(self, request: Any, client_address: Any) -> None:
        # the default prints to stderr; a client hanging up early is routine, not a fault
        exc = sys.exc_info()[1]
        if isinstance(exc, (BrokenPipeError, ConnectionResetError)):
            log.debug("local API client went away: %s", exc)
        else:
            log.exception("local API connection failed")

    def server_bind(self) -> None:
        # Bind a private name, restrict it, then rename into place: the socket is never
        # reachable with a wider mode, and a stale socket is replaced atomically.
        path = str(self.server_address)
        tmp = f"{path}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        self.socket.bind(tmp)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
        self.server_address = path


class LocalApiServer:
    """Serves an AgentApi on a unix socket (mode 0600) from a background thread."""

    def __init__(self, path: str | os.PathLike[str], handler: AgentApi) -> None:
        self.path = Path(path)
        self.handler = handler
        self._server: _UnixHttpServer | None = None
        self._thread: threading.Thread | None = None
        self._inode: int | None = None

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("local API server already started")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._check_existing()
        server = _UnixHttpServer(str(self.path), _Handler, bind_and_activate=False)
        server.api = self.handler
        try:
            server.server_bind()
            server.server_activate()
        except BaseException:
            server.server_close()
            raise
        self._inode = self.path.stat().st_ino
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="local-api", kwargs={"poll_interval": 0.2}
        )
        self._thread.daemon = True
        self._thread.start()
        log.info("local API listening on %s", self.path)

    def _check_existing(self) -> None:
        """Refuse to steal a live socket or clobber a non-socket; a stale socket is fine."""
        try:
            st = self.path.lstat()
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise RuntimeError(f"{self.path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(1.0)
            probe.connect(str(self.path))
        except OSError:
            log.info("replacing stale socket %s", self.path)
            return
        finally:
            probe.close()
        raise RuntimeError(f"another server is listening on {self.path}")

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        # only remove the file if it is still ours (a successor may have replaced it)
        try:
            if self.path.stat().st_ino == self._inode:
                self.path.unlink()
        except FileNotFoundError:
            pass
        log.info("local API on %s stopped", self.path)

    def __enter__(self) -> LocalApiServer:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
