"""The local API's HTTP layer over a real unix socket and real HTTP, against an in-test AgentApi.

The real AgentApi (the service over the multicast core) is served in test_service.py."""

from __future__ import annotations

import http.client
import json
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest

from agent.api.client import AgentClient
from agent.api.server import LocalApiServer
from agent.api.types import AgentApi, ApiError, TraceQuery, pod_mtu_from_json
from agent.interfacestore import PodAttach, PodInfo
from agent.podnetwork import PodMtu
from wire.nodes import NodeInfo


class DictAgent:
    """AgentApi backed by dicts; records calls so tests can check what reached the core."""

    def __init__(self) -> None:
        self.pods: dict[str, PodInfo] = {}
        self.nodes: list[NodeInfo] = []
        self.detaches: list[tuple[str, str]] = []  # (container id, ifname) as received
        self.next_ofport = 1
        self.fail_with: Exception | None = None
        self.lock = threading.Lock()

    def _maybe_fail(self) -> None:
        if self.fail_with is not None:
            raise self.fail_with

    def attach_pod(self, req: PodAttach) -> PodInfo:
        self._maybe_fail()
        if req.container_id in self.pods:
            raise ApiError(409, f"pod {req.container_id} already attached")
        with self.lock:
            info = PodInfo(**asdict(req), ofport=self.next_ofport)
            self.next_ofport += 1
        self.pods[req.container_id] = info
        return info

    def detach_pod(self, container_id: str, ifname: str = "") -> None:
        self._maybe_fail()
        self.detaches.append((container_id, ifname))
        self.pods.pop(container_id, None)

    def pod_network(self) -> PodMtu:
        return PodMtu(interface=1500, route=1450)

    def list_pods(self) -> list[PodInfo]:
        self._maybe_fail()
        return list(self.pods.values())

    def members(self) -> list[dict]:
        return [{"group": "239.1.1.1", "local": ["ns1/a"], "remote": ["192.168.77.2"]}]

    def pod_stats(self) -> list[dict]:
        return [
            {"namespace": p.namespace, "name": p.name, "inbound": 3, "outbound": 4}
            for p in self.pods.values()
        ]

    def flows(self) -> list[str]:
        return ["table=0, priority=0 actions=drop"]

    def policy_stats(self) -> list[dict]:
        return [{"namespace": "", "policy": "cp", "rule": "r", "packets": 1, "bytes": 8}]

    def trace(self, query: TraceQuery) -> dict:
        return {"query": query.to_json()}

    def set_nodes(self, nodes: list[NodeInfo]) -> None:
        self.nodes = nodes

    def health(self) -> dict:
        self._maybe_fail()
        return {"ok": True, "pods": len(self.pods)}


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "run" / "agent.sock"  # parent missing on purpose: start() creates it


@pytest.fixture
def agent() -> DictAgent:
    return DictAgent()


@pytest.fixture
def server(sock_path: Path, agent: DictAgent) -> Iterator[LocalApiServer]:
    srv = LocalApiServer(sock_path, agent)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def client(server: LocalApiServer) -> AgentClient:
    return AgentClient(server.path, timeout=5)


def raw_request(
    path: Path,
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request with a hand-made connection, to test what the typed client cannot send."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    conn = http.client.HTTPConnection("localhost", timeout=5)
    conn.sock = sock
    try:
        conn.request(method, url, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


POD = PodAttach(
    namespace="ns1",
    name="a",
    container_id="c0ffee",
    host_ifname="mc0123456789",
    ip="10.244.1.5",
    mac="02:00:00:00:00:05",
)


def test_agent_double_satisfies_protocol(agent: DictAgent) -> None:
    assert isinstance(agent, AgentApi)


def test_pod_lifecycle_round_trip(client: AgentClient, agent: DictAgent) -> None:
    info = client.attach_pod(POD)
    assert info == PodInfo(**asdict(POD), ofport=1)
    assert agent.pods["c0ffee"] == info
    assert client.list_pods() == [info]
    client.detach_pod("c0ffee")
    assert client.list_pods() == []
    client.detach_pod("c0ffee")  # unknown → still success (CNI DEL is idempotent)


def test_attach_with_empty_ip(client: AgentClient) -> None:
    info = client.attach_pod(PodAttach("ns", "b", "cid2", "mcaaaa", "", "02:00:00:00:00:06"))
    assert info.ip == "" and info.ofport == 1


def test_read_endpoints(client: AgentClient) -> None:
    client.attach_pod(POD)
    assert client.members() == [
        {"group": "239.1.1.1", "local": ["ns1/a"], "remote": ["192.168.77.2"]}
    ]
    assert client.pod_stats() == [{"namespace": "ns1", "name": "a", "inbound": 3, "outbound": 4}]
    assert client.flows() == ["table=0, priority=0 actions=drop"]
    assert client.policy_stats() == [
        {"namespace": "", "policy": "cp", "rule": "r", "packets": 1, "bytes": 8}]
    assert client.health() == {"ok": True, "pods": 1}


def test_trace_takes_its_query_as_json(client: AgentClient) -> None:
    query = TraceQuery("ns1/a", "239.1.1.1", port=6000, from_uplink=True)
    assert client.trace(query) == {"query": {"pod": "ns1/a", "group": "239.1.1.1",
                                             "port": 6000, "fromUplink": True}}
    assert TraceQuery.from_json(query.to_json()) == query
    with pytest.raises(ApiError) as exc:
        client._call("GET", "/v1/trace")
    assert exc.value.status == 405


def test_set_nodes(client: AgentClient, agent: DictAgent) -> None:
    nodes = [NodeInfo("n1", ("192.168.77.1",)), NodeInfo("n2", ("192.168.77.2",))]
    client.set_nodes(nodes)
    assert agent.nodes == nodes


def test_container_id_is_url_quoted(client: AgentClient, agent: DictAgent) -> None:
    odd = "id with/slash?&%"
    client.attach_pod(PodAttach("ns", "odd", odd, "mcbbbb", "", "02:00:00:00:00:07"))
    client.detach_pod(odd)
    assert odd not in agent.pods


def test_detach_names_the_pod_interface(client: AgentClient, agent: DictAgent) -> None:
    client.attach_pod(POD)
    client.detach_pod("c0ffee", "net1")
    client.detach_pod("c0ffee", "odd name&x=1")
    client.detach_pod("c0ffee")
    assert agent.detaches == [("c0ffee", "net1"), ("c0ffee", "odd name&x=1"), ("c0ffee", "")]


def test_ifname_given_twice_is_400(server: LocalApiServer, agent: DictAgent) -> None:
    status, _, body = raw_request(server.path, "DELETE", "/v1/pods/c0ffee?ifname=a&ifname=b")
    assert status == 400 and "ifname" in json.loads(body)["error"] and agent.detaches == []


def test_pod_network(client: AgentClient, server: LocalApiServer) -> None:
    assert client.pod_network() == PodMtu(interface=1500, route=1450)
    status, _, body = raw_request(server.path, "GET", "/v1/podnetwork")
    assert (status, json.loads(body)) == (200, {"interfaceMTU": 1500, "routeMTU": 1450})
    status, headers, _ = raw_request(server.path, "POST", "/v1/podnetwork", b"{}")
    assert status == 405 and headers["Allow"] == "GET"


@pytest.mark.parametrize(
    "answer",
    [None, [], {"interfaceMTU": 1500}, {"interfaceMTU": 1500, "routeMTU": "1450"},
     {"interfaceMTU": True, "routeMTU": 1450}, {"interfaceMTU": 0, "routeMTU": 1450}],
)
def test_a_bad_pod_network_answer_is_502(answer: object) -> None:
    with pytest.raises(ApiError) as exc:
        pod_mtu_from_json(answer)
    assert exc.value.status == 502


def test_pod_interface_fields_are_optional_in_json(
    server: LocalApiServer, client: AgentClient
) -> None:
    old = {k: v for k, v in asdict(POD).items() if k not in ("ifname", "primary_ip")}
    status, _, body = raw_request(server.path, "POST", "/v1/pods", json.dumps(old).encode())
    assert status == 201 and json.loads(body) | {"ofport": 0} == asdict(POD) | {"ofport": 0}
    [pod] = client.list_pods()
    assert (pod.ifname, pod.primary_ip) == ("", "")
    new = asdict(POD) | {"container_id": "c2", "ifname": "mc0", "primary_ip": "10.0.0.9"}
    assert client.attach_pod(PodAttach(**new)).primary_ip == "10.0.0.9"
    status, _, body = raw_request(
        server.path, "POST", "/v1/pods", json.dumps(new | {"ifname": 0}).encode()
    )
    assert status == 400 and "PodAttach.ifname" in json.loads(body)["error"]


def test_handler_api_error_keeps_status_and_message(client: AgentClient) -> None:
    client.attach_pod(POD)
    with pytest.raises(ApiError) as exc:
        client.attach_pod(POD)
    assert exc.value.status == 409
    assert exc.value.message == "pod c0ffee already attached"


def test_unexpected_exception_is_500(
    client: AgentClient, agent: DictAgent, caplog: pytest.LogCaptureFixture
) -> None:
    agent.fail_with = KeyError("boom")
    with pytest.raises(ApiError) as exc:
        client.list_pods()
    assert exc.value.status == 500
    assert "boom" in exc.value.message
    assert any("GET /v1/pods failed" in r.getMessage() for r in caplog.records)
    agent.fail_with = None
    assert client.list_pods() == []  # the server survived


def test_bad_requests(server: LocalApiServer) -> None:
    status, _, body = raw_request(
        server.path, "POST", "/v1/pods", b"{not json", {"Content-Length": "9"}
    )
    assert status == 400 and "invalid JSON" in json.loads(body)["error"]
    status, _, body = raw_request(
        server.path, "POST", "/v1/pods", json.dumps({"namespace": "ns"}).encode()
    )
    assert status == 400 and "PodAttach.name" in json.loads(body)["error"]
    status, _, body = raw_request(server.path, "PUT", "/v1/nodes", b'{"nodes": [{"name": 1}]}')
    assert status == 400 and "nodes[0]" in json.loads(body)["error"]
    status, _, body = raw_request(server.path, "GET", "/v1/nope")
    assert status == 404 and "/v1/nope" in json.loads(body)["error"]
    status, headers, _ = raw_request(server.path, "DELETE", "/v1/pods")
    assert status == 405 and headers["Allow"] == "GET, POST"
    status, headers, _ = raw_request(server.path, "GET", "/v1/pods/c0ffee")
    assert status == 405 and headers["Allow"] == "DELETE"


def test_client_error_without_json_body_uses_raw_text(tmp_path: Path) -> None:
    """A non-JSON error page (e.g. a proxy or an old agent) still yields a readable ApiError."""
    path = tmp_path / "fake.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def answer() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 418 I'm a teapot\r\nContent-Length: 6\r\n\r\nteapot")
        conn.close()

    t = threading.Thread(target=answer)
    t.start()
    try:
        with pytest.raises(ApiError) as exc:
            AgentClient(path, timeout=5).health()
        assert (exc.value.status, exc.value.message) == (418, "teapot")
    finally:
        t.join(5)
        listener.close()


def test_keep_alive_serves_several_requests_per_connection(server: LocalApiServer) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(server.path))
    conn = http.client.HTTPConnection("localhost", timeout=5)
    conn.sock = sock
    try:
        for _ in range(3):
            # a body on a GET must be drained, or the next request would be misparsed
            conn.request("GET", "/healthz", body=b'{"ignored": 1}')
            resp = conn.getresponse()
            assert resp.status == 200 and json.loads(resp.read())["ok"] is True
    finally:
        conn.close()


def test_concurrent_clients(client: AgentClient) -> None:
    errors: list[BaseException] = []

    def attach(i: int) -> None:
        try:
            client.attach_pod(
                PodAttach("ns", f"p{i}", f"cid{i}", f"mc{i:010d}", "", "02:00:00:00:00:01")
            )
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=attach, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors
    assert sorted(p.ofport for p in client.list_pods()) == list(range(1, 51))


def test_client_retries_while_listen_backlog_is_full(tmp_path: Path) -> None:
    """A full backlog makes AF_UNIX connect fail with EAGAIN at once; the client waits."""
    path = tmp_path / "busy.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(0)
    fillers = []
    while True:  # queue connections nobody accepts until connect() says EAGAIN
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(str(path))
        except BlockingIOError:
            s.close()
            break
        fillers.append(s)
    assert fillers

    def serve_later() -> None:
        time.sleep(0.3)
        listener.settimeout(5)
        while True:
            conn, _ = listener.accept()
            conn.settimeout(0.5)
            try:
                if conn.recv(65536):  # the fillers never send: only the client's request
                    body = b'{"ok": true}'
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                    )
                    return
            except TimeoutError:
                pass
            finally:
                conn.close()

    t = threading.Thread(target=serve_later)
    t.start()
    try:
        assert AgentClient(path, timeout=5).health() == {"ok": True}
    finally:
        t.join(10)
        for s in fillers:
            s.close()
        listener.close()


def test_socket_mode_and_removal(sock_path: Path, agent: DictAgent) -> None:
    srv = LocalApiServer(sock_path, agent)
    srv.start()
    try:
        st = sock_path.stat()
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert [p.name for p in sock_path.parent.iterdir()] == ["agent.sock"]  # no temp left
    finally:
        srv.stop()
    assert not sock_path.exists()
    srv.stop()  # second stop is a no-op


def test_stale_socket_is_replaced(sock_path: Path, agent: DictAgent) -> None:
    sock_path.parent.mkdir(parents=True)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock_path))
    dead.close()  # the file stays, nobody listens: what a crashed agent leaves behind
    with LocalApiServer(sock_path, agent):
        assert AgentClient(sock_path).health()["ok"] is True


def test_live_socket_and_non_socket_are_not_clobbered(
    server: LocalApiServer, tmp_path: Path
) -> None:
    with pytest.raises(RuntimeError, match="another server is listening"):
        LocalApiServer(server.path, DictAgent()).start()
    assert AgentClient(server.path).health()["ok"] is True
    regular = tmp_path / "file"
    regular.write_text("keep me")
    with pytest.raises(RuntimeError, match="not a socket"):
        LocalApiServer(regular, DictAgent()).start()
    assert regular.read_text() == "keep me"


def test_unreachable_agent(tmp_path: Path) -> None:
    missing = tmp_path / "nope.sock"
    with pytest.raises(ApiError) as exc:
        AgentClient(missing, timeout=1).health()
    assert exc.value.status == 503
    assert exc.value.message.startswith(f"agent not reachable at {missing}: ")

    dead = tmp_path / "dead.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(dead))
    s.close()
    with pytest.raises(ApiError) as exc:
        AgentClient(dead, timeout=1).attach_pod(POD)
    assert exc.value.status == 503 and "Connection refused" in exc.value.message


def test_agent_that_never_answers_times_out(tmp_path: Path) -> None:
    path = tmp_path / "slow.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)  # accepted by the kernel, never answered
    try:
        with pytest.raises(ApiError) as exc:
            AgentClient(path, timeout=0.3).health()
        assert exc.value.status == 504 and "did not answer" in exc.value.message
    finally:
        listener.close()


def test_stop_removes_only_its_own_socket(sock_path: Path, agent: DictAgent) -> None:
    first = LocalApiServer(sock_path, agent)
    first.start()
    sock_path.unlink()  # e.g. an operator removed it; a second agent then takes the path
    second = LocalApiServer(sock_path, agent)
    second.start()
    try:
        first.stop()
        assert sock_path.exists() and AgentClient(sock_path).health()["ok"] is True
    finally:
        second.stop()
    assert not os.path.exists(sock_path)
