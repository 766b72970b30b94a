"""The agent's controller link without a controller: what it reports and how it gives up.

The stream itself (TLS, TokenReview, reconnects) is tested against a real controller stream in
tests/controller/test_stream.py.
"""

from __future__ import annotations

import time
from pathlib import Path

from agent.config import ControllerLinkConfig
from agent.controllerlink import ControllerLink, membership_report
from agent.multicast.core import GroupMembers, SourceFilterView
from wire.members import GroupReport, MemberPod
from wire.nodes import NodeInfo
from wire.stream import members_message, parse_members_message


class Core:
    def __init__(self) -> None:
        self.applied: list[list[NodeInfo]] = []

    def members(self) -> list[GroupMembers]:
        return []

    def set_nodes(self, nodes: list[NodeInfo]) -> None:
        self.applied.append(nodes)


def test_membership_report_has_local_pods_with_their_filters_and_no_remote_nodes() -> None:
    members = [
        GroupMembers("239.2.2.2", ("prod/b", "default/a"), ("10.0.0.2",),
                     {"prod/b": SourceFilterView("include", ("10.1.0.9", "10.1.0.8"))}),
        GroupMembers("239.1.1.1", (), ("10.0.0.3",)),  # remote only: not ours to report
        GroupMembers("224.5.6.4", ("default/a",), (),
                     {"default/a": SourceFilterView("exclude", ("10.1.0.7",))}),
    ]
    report = membership_report(members)
    assert report == [
        GroupReport("224.5.6.4", (MemberPod("default", "a", "exclude", ("10.1.0.7",)),)),
        GroupReport("239.2.2.2", (MemberPod("default", "a"),
                                  MemberPod("prod", "b", "include", ("10.1.0.8", "10.1.0.9")))),
    ]
    assert parse_members_message(members_message(report)) == report  # survives the wire
    assert membership_report([]) == []


def test_nothing_listening_the_link_retries_and_applies_nothing(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t\n")
    core = Core()
    link = ControllerLink(ControllerLinkConfig("http://127.0.0.1:9", str(token)), "node1", core,
                          backoff_min_s=0.05, backoff_max_s=0.1)
    link.start()
    try:
        deadline = time.monotonic() + 5
        while "cannot connect" not in link.last_error and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "cannot connect" in link.last_error and not link.connected
    finally:
        link.stop()
    assert core.applied == [] and link.connects == 0


def test_a_missing_token_file_is_reported_and_retried(tmp_path: Path) -> None:
    core = Core()
    link = ControllerLink(ControllerLinkConfig("http://127.0.0.1:9", str(tmp_path / "none")),
                          "node1", core, backoff_min_s=0.05, backoff_max_s=0.1)
    link.start()
    try:
        deadline = time.monotonic() + 5
        while "token file" not in link.last_error and time.monotonic() < deadline:
            time.sleep(0.02)
        assert link.last_error == f"token file {tmp_path / 'none'}: No such file or directory"
    finally:
        link.stop()


class StreamStandIn:
    """A controller's stream end in a thread (real aiohttp WebSocket server): sends ``script``
    to each connection and records what the agent sends back, and how the stream ended."""

    def __init__(self, script: list[str]) -> None:
        import asyncio
        import threading

        self.script = script
        self.received: list[str] = []
        self.closes: list[int | None] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(5)

    def _run(self) -> None:
        from aiohttp import web

        async def stream(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            for text in self.script:
                await ws.send_str(text)
            async for msg in ws:
                self.received.append(msg.data)
            self.closes.append(ws.close_code)
            return ws

        async def start() -> None:
            app = web.Application()
            app.router.add_get("/v1/stream", stream)
            self._runner = web.AppRunner(app)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    def stop(self) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def wait_for(check, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_policy_reaches_the_core_and_rule_stats_go_back(tmp_path: Path) -> None:
    """The real core on the fake table: the controller's policy drops p1's report for G2; the
    agent's rule counters come back as ruleStats once they move."""
    from fakeport import Ports, TableSwitch

    from agent.config import parse_config
    from agent.flowsync.reconciler import Reconciler
    from agent.flowsync.switch import PacketIn
    from agent.interfacestore import PodAttach
    from agent.multicast.core import MulticastCore
    from agent.multicast.igmp.packets import build_v2_report
    from pipeline.layout import multicast_pipeline
    from pipeline.multicast import BridgeConfig, Mode, PuntReason
    from wire.policy import (
        NAMESPACED,
        IgmpMatch,
        PolicyUpdate,
        PolicyView,
        Rule,
        RuleKey,
        full_update,
    )
    from wire.stream import (
        nodes_message,
        parse_rule_stats_message,
        policy_message,
    )

    key = RuleKey(NAMESPACED, "default", "guard", "egress", 0)
    view = PolicyView({key.text: Rule(key, "no-g2", "Drop", 1, "at",
                                      igmp=(IgmpMatch(None, "239.2.2.2"),))},
                      {"at": frozenset({"default/p1"})})
    script = [nodes_message(1, [NodeInfo("node1", ("192.168.77.1",))]),
              policy_message(1, full_update(view)),
              policy_message(2, PolicyUpdate())]  # an empty patch: nothing changes
    server = StreamStandIn(script)
    cfg = parse_config({"node": {"name": "node1", "ip": "192.168.77.1"},
                        "multicast": {"multicastInterfaces": ["eth0"]}})
    switch = TableSwitch()
    core = MulticastCore(cfg, BridgeConfig(Mode.NOENCAP, 1, "192.168.77.1",
                                           "02:77:00:00:00:01", uplink_port=65001),
                         switch, Reconciler(switch, multicast_pipeline()), Ports())
    core.start()
    p1 = core.attach_pod(PodAttach("default", "p1", "c1", "veth1", "10.77.1.2",
                                   "0a:00:00:00:00:01"))
    token = tmp_path / "token"
    token.write_text("t\n")
    link = ControllerLink(ControllerLinkConfig(f"http://127.0.0.1:{server.port}", str(token)),
                          "node1", core, stats_s=0.05)
    link.start()
    try:
        wait_for(lambda: link.policy_version == 2)
        assert list(core.policy.view.rules) == [key.text]
        core.handle_packet_in(PacketIn(p1.ofport, bytes([PuntReason.IGMP_POD]),
                                       build_v2_report("239.2.2.2", p1.ip, p1.mac),
                                       None, 0, 0, 0))
        assert core.members() == []

        def reported() -> list:
            return [parse_rule_stats_message(m) for m in server.received
                    if '"ruleStats"' in m]
        wait_for(lambda: any(s and s[0].packets == 1 for s in reported()))
        assert reported()[-1][0].key == key and reported()[-1][0].bytes == 8
        counts = [s[0].packets for s in reported()]
        assert counts == sorted(set(counts))  # sent when they moved, never backwards
    finally:
        link.stop()
        server.stop()


def test_unknown_types_and_a_patch_first_close_the_stream_as_malformed(tmp_path: Path) -> None:
    from wire.policy import PolicyUpdate
    from wire.stream import CLOSE_MALFORMED, policy_message

    token = tmp_path / "token"
    token.write_text("t\n")
    for script, reason in ((['{"type": "gossip"}'], "'gossip' is not a message to agents"),
                           ([policy_message(1, PolicyUpdate())], "must be full")):
        server = StreamStandIn(script)
        core = Core()
        link = ControllerLink(ControllerLinkConfig(f"http://127.0.0.1:{server.port}",
                                                   str(token)), "node1", core,
                              backoff_min_s=5, backoff_max_s=5)
        link.start()
        try:
            wait_for(lambda s=server: bool(s.closes))  # type: ignore[misc]
            assert server.closes[0] == CLOSE_MALFORMED
            wait_for(lambda r=reason, k=link: r in k.last_error)  # type: ignore[misc]
        finally:
            link.stop()
            server.stop()
