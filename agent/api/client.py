"""The local API's client (``mcctl``, the CNI plugin, the lab): one short connection per call.

Every failure is an ``ApiError``: the agent's own 4xx/5xx answers as they came, and an
unreachable or silent agent as 503/504 with a message naming the socket.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
import urllib.parse
from collections.abc import Iterable
from typing import Any

from agent.api.types import (
    ApiError,
    TraceQuery,
    pod_from_json,
    pod_mtu_from_json,
    pod_to_json,
)
from agent.interfacestore import PodAttach, PodInfo
from agent.podnetwork import PodMtu
from wire.nodes import NodeInfo, nodes_to_json


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._unix_path = path
        self._timeout_s = timeout  # self.timeout is typed Optional by http.client

    def connect(self) -> None:
        # A full listen backlog makes a non-blocking AF_UNIX connect fail at once with EAGAIN
        # (TCP would wait); many pods starting together do that, so retry until the timeout.
        deadline = time.monotonic() + self._timeout_s
        delay = 0.005
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self._timeout_s)
            try:
                sock.connect(self._unix_path)
            except BlockingIOError:
                sock.close()
                if time.monotonic() + delay > deadline:
                    raise TimeoutError(f"listen backlog of {self._unix_path} stayed full") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.2)
                continue
            except BaseException:
                sock.close()
                raise
            self.sock = sock
            return


class AgentClient:
    """Client of the local API; one short connection per call, so it is thread-safe."""

    def __init__(self, path: str | os.PathLike[str], timeout: float = 10.0) -> None:
        self.path = str(path)
        self.timeout = timeout

    def attach_pod(self, req: PodAttach) -> PodInfo:
        return pod_from_json(PodInfo, self._call("POST", "/v1/pods", pod_to_json(req)))

    def detach_pod(self, container_id: str, ifname: str = "") -> None:
        """Detach the container; with ``ifname``, only if attached through that pod interface."""
        url = "/v1/pods/" + urllib.parse.quote(container_id, safe="")
        if ifname:
            url += "?" + urllib.parse.urlencode({"ifname": ifname})
        self._call("DELETE", url)

    def pod_network(self) -> PodMtu:
        """The MTUs this node gives a pod's multicast interface and its 224.0.0.0/4 route."""
        return pod_mtu_from_json(self._call("GET", "/v1/podnetwork"))

    def list_pods(self) -> list[PodInfo]:
        return [pod_from_json(PodInfo, p) for p in self._call("GET", "/v1/pods")["pods"]]

    def members(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/members")["members"])

    def pod_stats(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/stats/pods")["pods"])

    def flows(self) -> list[str]:
        return list(self._call("GET", "/v1/flows")["flows"])

    def policy_stats(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/policystats")["rules"])

    def trace(self, query: TraceQuery) -> dict[str, Any]:
        """What became of a datagram to a group for one pod (``mcctl trace``)."""
        return dict(self._call("POST", "/v1/trace", query.to_json()))

    def set_nodes(self, nodes: Iterable[NodeInfo]) -> None:
        self._call("PUT", "/v1/nodes", nodes_to_json(nodes))

    def health(self) -> dict[str, Any]:
        return dict(self._call("GET", "/healthz"))

    def _call(self, method: str, url: str, body: Any = None) -> Any:
        conn = _UnixHTTPConnection(self.path, self.timeout)
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            try:
                conn.request(method, url, body=data, headers=headers)
            except (FileNotFoundError, ConnectionRefusedError, PermissionError) as exc:
                raise ApiError(503, f"agent not reachable at {self.path}: {exc}") from exc
            resp = conn.getresponse()
            raw = resp.read()
        except TimeoutError as exc:
            raise ApiError(
                504, f"agent at {self.path} did not answer {method} {url} within {self.timeout}s"
            ) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise ApiError(503, f"agent at {self.path}: {method} {url} failed: {exc}") from exc
        finally:
            conn.close()
        payload = _decode(raw)
        if resp.status >= 400:
            msg = payload.get("error") if isinstance(payload, dict) else None
            raise ApiError(resp.status, str(msg) if msg else raw.decode(errors="replace"))
        if resp.status != 204 and payload is None:
            raise ApiError(502, f"agent sent an unreadable answer to {method} {url}")
        return payload


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None
