"""The agent stream end to end: a real StreamServer (TLS, a certificate made here) checking
tokens with TokenReview against the lab API server (tools.kubeapi, per-node tokens), and the
real agent link (agent.controllerlink) driven by a stand-in core: the core is not under test,
the stream is. Raw aiohttp clients speak the protocol where the link never would (malformed
messages, another node's stream).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from prometheus_client import REGISTRY

from agent.config import ControllerLinkConfig
from agent.controllerlink import ControllerLink
from agent.multicast.core import GroupMembers, SourceFilterView
from controller.config import ControllerConfig
from controller.hub import Hub
from controller.stream import Reviewed, StreamServer, node_of, service_account_user
from tools.kubeapi.server import ApiServerProcess, kubeconfig, spawn
from wire.members import GroupReport, MemberPod
from wire.nodes import NodeInfo

pytestmark = pytest.mark.timeout(60)

TOKENS = {"system:node:node1": "node1-token", "system:node:node2": "node2-token",
          "kube-mcast-controller": "controller-token"}
AGENT_SA = "system:serviceaccount:kube-mcast:kube-mcast-agent"  # the config's default
# service-account tokens as TokenReview answers for them (tools.kubeapi: NAME=TOKEN;node=NODE):
# the agents' account bound to an agent pod on node1, on node2, not bound to a pod (no node),
# and another account's token bound to a pod on node1
BOUND_TOKENS = [f"{AGENT_SA}=agent-node1-token;node=node1",
                f"{AGENT_SA}=agent-node2-token;node=node2",
                f"{AGENT_SA}=agent-unbound-token",
                "system:serviceaccount:default:web=web-node1-token;node=node1"]
N1, N2, N3 = (NodeInfo("node1", ("192.168.77.1",)), NodeInfo("node2", ("192.168.77.2",)),
              NodeInfo("node3", ("192.168.77.3",)))




def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@dataclass
class StandInCore:
    """members() / set_nodes() as MulticastCore offers them; records what the link applied."""

    groups: list[GroupMembers] = field(default_factory=list)
    applied: list[list[NodeInfo]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def members(self) -> list[GroupMembers]:
        with self.lock:
            return list(self.groups)

    def set_nodes(self, nodes: list[NodeInfo]) -> None:
        with self.lock:
            self.applied.append(list(nodes))

    def last(self) -> list[NodeInfo] | None:
        with self.lock:
            return self.applied[-1] if self.applied else None


@dataclass
class Env:
    api: ApiServerProcess
    work: Path
    cert: Path
    key: Path
    k8s: k8s.ApiClient
    servers: list[StreamServer] = field(default_factory=list)
    links: list[ControllerLink] = field(default_factory=list)

    def server(self, hub: Hub, port: int = 0, **settings: Any) -> StreamServer:
        cfg = ControllerConfig(identity="test", stream_address="127.0.0.1", stream_port=port,
                               cert_file=str(self.cert), key_file=str(self.key), **settings)
        server = StreamServer(cfg, hub, self.k8s, heartbeat_s=2.0)
        server.start()
        self.servers.append(server)
        return server

    def token_file(self, token: str, name: str = "token") -> Path:
        path = self.work / name
        path.write_text(token + "\n")
        return path

    def link(self, server: StreamServer, node: str, core: StandInCore,
             token: str | None = None) -> ControllerLink:
        token_file = self.token_file(token or TOKENS[f"system:node:{node}"], f"{node}.token")
        cfg = ControllerLinkConfig(f"https://127.0.0.1:{server.port}", str(token_file),
                                   str(self.cert))
        link = ControllerLink(cfg, node, core, heartbeat_s=2.0)
        link.start()
        self.links.append(link)
        return link

    def ssl(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))

    def status(self, server: StreamServer, token: str | None, node: str | None) -> int:
        """The HTTP status of a plain GET of the stream (refusals come before the upgrade)."""
        url = f"https://127.0.0.1:{server.port}/v1/stream" + (f"?node={node}" if node else "")
        request = urllib.request.Request(
            url, headers={"Authorization": f"Bearer {token}"} if token else {})
        try:
            with urllib.request.urlopen(request, timeout=10, context=self.ssl()) as response:
                return int(response.status)
        except urllib.error.HTTPError as e:
            return e.code


@pytest.fixture(scope="module")
def env_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    work = tmp_path_factory.mktemp("stream")
    cert, key = work / "tls.crt", work / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout",
                    str(key), "-out", str(cert)], check=True, capture_output=True)
    api = spawn(work / "kubeapi", tokens=TOKENS, token_lines=BOUND_TOKENS, anonymous=False)
    try:
        path = kubeconfig(api.url, "controller-token", work / "controller.kubeconfig")
        yield Env(api, work, cert, key, k8s_config.new_client_from_config(config_file=str(path)))
    finally:
        api.stop()


@pytest.fixture
def env(env_base: Env) -> Iterator[Env]:
    try:
        yield env_base
    finally:
        for link in env_base.links:
            link.stop()
        for server in env_base.servers:
            server.stop()
        env_base.links.clear()
        env_base.servers.clear()


def run_raw(env: Env, server: StreamServer, token: str, node: str,
            talk: Callable[[aiohttp.ClientWebSocketResponse], Any]) -> Any:
    """Open the stream with aiohttp's client and run ``talk`` on it."""
    async def main() -> Any:
        async with aiohttp.ClientSession() as session, session.ws_connect(
                f"https://127.0.0.1:{server.port}/v1/stream", params={"node": node},
                headers={"Authorization": f"Bearer {token}"}, ssl=env.ssl()) as ws:
            return await talk(ws)
    return asyncio.run(main())


# -- the node set, the membership ------------------------------------------------------------


def test_the_link_gets_the_node_set_first_then_each_change(wait: Callable[..., Any],
                                                           env: Env) -> None:
    hub = Hub()
    hub.set_nodes([N1, N2])
    server = env.server(hub)
    core = StandInCore()
    resyncs = metric("kube_mcast_controller_stream_resyncs_total")
    link = env.link(server, "node1", core)
    wait(lambda: link.nodes_version == 1)
    assert core.applied == [[N1, N2]] and link.connected
    assert metric("kube_mcast_controller_stream_clients") == 1
    assert metric("kube_mcast_controller_stream_resyncs_total") == resyncs + 1
    hub.set_nodes([N1, N2, N3])
    wait(lambda: link.nodes_version == 2)
    hub.set_nodes([N1, N3])  # node2 deleted
    wait(lambda: link.nodes_version == 3)
    assert core.applied[1:] == [[N1, N2, N3], [N1, N3]]
    link.stop()
    wait(lambda: metric("kube_mcast_controller_stream_clients") == 0)


def test_membership_lands_in_the_hub_on_connect_and_on_every_change(wait: Callable[..., Any],
                                                                    env: Env) -> None:
    hub = Hub()
    hub.set_nodes([N1, N2])
    server = env.server(hub)
    core = StandInCore([
        GroupMembers("239.1.1.1", ("default/a", "prod/b"), ("192.168.77.2",),
                     {"prod/b": SourceFilterView("include", ("10.244.2.5",))}),
        GroupMembers("239.9.9.9", (), ("192.168.77.2",)),  # remote members only
    ])
    link = env.link(server, "node1", core)
    first = (GroupReport("239.1.1.1", (MemberPod("default", "a"),
                                       MemberPod("prod", "b", "include", ("10.244.2.5",)))),)
    wait(lambda: hub.memberships()[1] == {"node1": first})
    with core.lock:  # prod/b leaves, default/a joins another group
        core.groups = [GroupMembers("239.1.1.1", ("default/a",), ()),
                       GroupMembers("224.5.6.4", ("default/a",), ())]
    wait(lambda: hub.memberships()[1].get("node1", first) != first)
    assert hub.memberships()[1] == {"node1": (
        GroupReport("224.5.6.4", (MemberPod("default", "a"),)),
        GroupReport("239.1.1.1", (MemberPod("default", "a"),)))}
    sent = link.reports_sent
    time.sleep(0.6)  # three polls, no change: nothing sent
    assert link.reports_sent == sent == 2
    with core.lock:
        core.groups = []
    wait(lambda: "node1" not in hub.memberships()[1])


@dataclass
class VersionedCore(StandInCore):
    """A core that versions its membership, as MulticastCore does: members() is read only
    when the version moves."""

    version: int = 0
    reads: int = 0

    def membership_version(self) -> int:
        with self.lock:
            return self.version

    def members(self) -> list[GroupMembers]:
        with self.lock:
            self.reads += 1
            return list(self.groups)


def test_a_versioned_core_is_read_only_when_its_version_moves(wait: Callable[..., Any],
                                                              env: Env) -> None:
    hub = Hub()
    hub.set_nodes([N1, N2])
    server = env.server(hub)
    core = VersionedCore([GroupMembers("239.1.1.1", ("default/a",), ())])
    env.link(server, "node1", core)
    wait(lambda: hub.memberships()[1])
    time.sleep(0.6)  # three polls, the version unchanged
    assert core.reads == 1
    with core.lock:
        core.groups = [GroupMembers("239.2.2.2", ("default/a",), ())]
        core.version += 1
    wait(lambda: [g.group for g in hub.memberships()[1]["node1"]] == ["239.2.2.2"])
    assert core.reads == 2


def test_nothing_is_sent_before_the_hub_has_a_node_set(wait: Callable[..., Any], env: Env) -> None:
    hub = Hub()  # the Node watcher has not listed yet
    server = env.server(hub)
    core = StandInCore([GroupMembers("239.1.1.1", ("default/a",), ())])
    link = env.link(server, "node1", core)
    wait(lambda: hub.memberships()[1])  # reports flow at once
    time.sleep(0.3)
    assert core.applied == [] and link.connected  # never "no nodes at all"
    hub.set_nodes([N1, N2])
    wait(lambda: core.applied == [[N1, N2]])


# -- who may open which stream ----------------------------------------------------------------


def test_a_wrong_token_is_refused_with_401_and_the_link_retries(wait: Callable[..., Any],
                                                                env: Env) -> None:
    hub = Hub()
    hub.set_nodes([N1])
    server = env.server(hub)
    failures = metric("kube_mcast_controller_stream_auth_failures_total",
                      reason="unauthenticated")
    assert env.status(server, "forged-token", "node1") == 401
    assert env.status(server, None, "node1") == 401
    core = StandInCore()
    link = env.link(server, "node1", core, token="forged-token")
    wait(lambda: "HTTP 401" in link.last_error)
    assert core.applied == [] and not link.connected
    assert metric("kube_mcast_controller_stream_auth_failures_total",
                  reason="unauthenticated") >= failures + 3
    env.token_file(TOKENS["system:node:node1"], "node1.token")  # rotated: re-read on retry
    wait(lambda: core.applied == [[N1]])


def test_a_node_cannot_open_another_nodes_stream(wait: Callable[..., Any], env: Env) -> None:
    hub = Hub()
    hub.set_nodes([N1, N2])
    server = env.server(hub)
    forbidden = metric("kube_mcast_controller_stream_auth_failures_total", reason="forbidden")
    assert env.status(server, "node1-token", "node2") == 403
    assert env.status(server, "controller-token", "node1") == 403  # not a node at all
    assert env.status(server, "node1-token", None) == 400
    core = StandInCore()
    link = env.link(server, "node2", core, token="node1-token")
    wait(lambda: "HTTP 403" in link.last_error)
    assert core.applied == [] and not hub.memberships()[1]
    assert metric("kube_mcast_controller_stream_auth_failures_total",
                  reason="forbidden") >= forbidden + 3


def test_an_agent_pods_service_account_token_opens_its_nodes_stream_only(wait: Callable[..., Any],
                                                                         env: Env) -> None:
    """A real cluster's agent: a projected token of the agents' service account, whose review
    names the node of the pod it is bound to (Kubernetes >= 1.30)."""
    hub = Hub()
    hub.set_nodes([N1, N2])
    server = env.server(hub)
    assert env.status(server, "agent-node1-token", "node1") == 400  # past auth: not a WebSocket
    assert env.status(server, "agent-node2-token", "node2") == 400
    assert env.status(server, "agent-node1-token", "node2") == 403  # another node's
    assert env.status(server, "agent-unbound-token", "node1") == 403  # names no node
    assert env.status(server, "web-node1-token", "node1") == 403  # not the agents' account
    core = StandInCore([GroupMembers("239.1.1.1", ("default/a",), ())])
    link = env.link(server, "node1", core, token="agent-node1-token")
    wait(lambda: core.applied == [[N1, N2]])
    wait(lambda: list(hub.memberships()[1]) == ["node1"])
    refused = env.link(server, "node2", StandInCore(), token="agent-node1-token")
    wait(lambda: "HTTP 403" in refused.last_error)
    assert link.connected and list(hub.memberships()[1]) == ["node1"]


def test_the_agents_service_account_is_configurable_and_can_be_turned_off(env: Env) -> None:
    hub = Hub()
    hub.set_nodes([N1])
    off = env.server(hub, agent_service_account="")
    assert env.status(off, "agent-node1-token", "node1") == 403
    assert env.status(off, "node1-token", "node1") == 400  # node users still may
    other = env.server(hub, agent_service_account="default/web")
    assert env.status(other, "web-node1-token", "node1") == 400
    assert env.status(other, "agent-node1-token", "node1") == 403


def test_node_of() -> None:
    agent = service_account_user("kube-mcast/kube-mcast-agent")
    assert agent == AGENT_SA and service_account_user("") is None
    assert node_of(Reviewed("system:node:n1"), agent) == "n1"
    assert node_of(Reviewed("system:node:n1", ("n2",)), agent) == "n1"  # a node is itself
    assert node_of(Reviewed(AGENT_SA, ("n1",)), agent) == "n1"
    assert node_of(Reviewed(AGENT_SA, ("n1",)), None) is None
    assert node_of(Reviewed(AGENT_SA), agent) is None
    assert node_of(Reviewed(AGENT_SA, ("n1", "n2")), agent) is None
    assert node_of(Reviewed(AGENT_SA, ("",)), agent) is None
    assert node_of(Reviewed("system:serviceaccount:kube-mcast:other", ("n1",)), agent) is None
    assert node_of(Reviewed("admin", ("n1",)), agent) is None
    assert node_of(Reviewed("system:node:"), agent) is None


def test_successful_token_reviews_are_cached(env: Env) -> None:
    hub = Hub()
    hub.set_nodes([N1])
    server = env.server(hub)

    async def first(ws: aiohttp.ClientWebSocketResponse) -> Any:
        return json.loads((await ws.receive()).data)

    reviews = server.reviewer.reviews
    for _ in range(3):
        assert run_raw(env, server, "node1-token", "node1", first)["version"] == 1
    assert server.reviewer.reviews == reviews + 1


# -- the protocol itself ----------------------------------------------------------------------


@pytest.mark.parametrize(("frame", "code", "reason"), [
    ("not json", 1007, "malformed message: not JSON: Expecting value"),
    ('{"type": "hello"}', 1007, "unknown message type 'hello'"),
    ('{"type": "ruleStats", "rules": [{"key": {}}]}', 1007,
     "malformed ruleStats message: rules[0].key.scope: None is not one of"),
    ('{"type": "members", "groups": [{"group": "10.1.1.1", "pods": []}]}', 1007,
     "malformed members message: groups[0].group: 10.1.1.1 is not a multicast address"),
    (b"\x00binary", 1003, "binary frames are not part of the protocol"),
])
def test_a_malformed_message_closes_the_stream_with_a_reason(env: Env, frame: str | bytes,
                                                             code: int, reason: str) -> None:
    hub = Hub()
    hub.set_nodes([N1, N2])
    server = env.server(hub)

    async def talk(ws: aiohttp.ClientWebSocketResponse) -> tuple[Any, aiohttp.WSMessage]:
        first = json.loads((await ws.receive()).data)
        await (ws.send_bytes(frame) if isinstance(frame, bytes) else ws.send_str(frame))
        return first, await ws.receive()

    first, closed = run_raw(env, server, "node1-token", "node1", talk)
    assert first == {"type": "nodes", "version": 1, "nodes": [
        {"name": "node1", "ips": ["192.168.77.1"]}, {"name": "node2", "ips": ["192.168.77.2"]}]}
    assert closed.type == aiohttp.WSMsgType.CLOSE
    assert closed.data == code and closed.extra.startswith(reason), closed
    assert not hub.memberships()[1]


def test_a_newer_stream_of_a_node_replaces_the_older(wait: Callable[..., Any], env: Env) -> None:
    hub = Hub()
    hub.set_nodes([N1])
    server = env.server(hub)
    core = StandInCore([GroupMembers("239.1.1.1", ("default/a",), ())])
    link = env.link(server, "node1", core)
    wait(lambda: link.connects == 1)

    async def talk(ws: aiohttp.ClientWebSocketResponse) -> None:
        await ws.receive()
        await ws.send_str('{"type": "members", "groups": []}')
        await asyncio.sleep(0.2)

    run_raw(env, server, "node1-token", "node1", talk)
    wait(lambda: "replaced by a newer stream of node1" in link.last_error)
    wait(lambda: link.connects == 2)  # the link comes back and re-reports
    wait(lambda: hub.memberships()[1].get("node1"))


# -- the controller goes away and comes back ----------------------------------------------------


def test_controller_restart_the_link_retries_and_resyncs(wait: Callable[..., Any],
                                                         env: Env) -> None:
    hub = Hub()
    hub.set_nodes([N1, N2])
    hub.set_nodes([N1, N2, N3])  # version 2
    server = env.server(hub)
    core = StandInCore([GroupMembers("239.1.1.1", ("default/a",), ())])
    link = env.link(server, "node1", core)
    wait(lambda: link.nodes_version == 2 and hub.memberships()[1])
    port = server.port
    server.stop()
    wait(lambda: not link.connected)
    assert "closed by the controller: 1012 controller stopping" in link.last_error
    time.sleep(1.0)  # a few refused retries; nothing the link applied is undone
    assert "cannot connect" in link.last_error and core.applied == [[N1, N2, N3]]
    with core.lock:
        core.groups.append(GroupMembers("224.5.6.4", ("default/a",), ()))

    restarted = Hub()  # a new controller process: versions start over
    restarted.set_nodes([N1, N2])
    env.server(restarted, port)
    wait(lambda: link.connects == 2, timeout=8)
    assert core.applied == [[N1, N2, N3], [N1, N2]] and link.nodes_version == 1
    wait(lambda: [g.group for g in restarted.memberships()[1].get("node1", ())]
             == ["224.5.6.4", "239.1.1.1"])


def test_an_unreachable_api_server_is_503_not_401(env: Env) -> None:
    """A token that cannot be reviewed now is not a bad token: the agent retries."""
    unreachable = k8s.Configuration()
    unreachable.host = "http://127.0.0.1:9"
    hub = Hub()
    hub.set_nodes([N1])
    cfg = ControllerConfig(identity="test", stream_address="127.0.0.1", stream_port=0,
                           cert_file=str(env.cert), key_file=str(env.key))
    server = StreamServer(cfg, hub, k8s.ApiClient(unreachable))
    server.start()
    env.servers.append(server)
    failures = metric("kube_mcast_controller_stream_auth_failures_total",
                      reason="unauthenticated")
    assert env.status(server, "node1-token", "node1") == 503
    assert metric("kube_mcast_controller_stream_auth_failures_total",
                  reason="unauthenticated") == failures
