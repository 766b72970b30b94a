"""``POST /v1/trace``: a datagram walked through the switch's dump, explained for one pod.

The core runs on the fake OpenFlow table with the lab's bridge (encap: a tunnel and an uplink);
pods join with real IGMPv3 reports, a peer node reports through the tunnel, policy arrives as
the controller sends it. The trace is asked through the real client over a unix socket, and
what is checked is the answer's contract: the verdict and its reason, the tables crossed with
their flows' owners, the buckets, the membership and the rule responsible.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fakeport import PI, Clock, Ports, TableSwitch

from agent.api.client import AgentClient
from agent.api.server import LocalApiServer
from agent.api.service import AgentService
from agent.api.types import ApiError, TraceQuery
from agent.config import parse_config
from agent.flowsync.reconciler import Reconciler
from agent.interfacestore import PodAttach, PodInfo
from agent.multicast.core import MulticastCore
from agent.multicast.igmp.packets import GroupRecord, RecordType, build_v3_reports
from pipeline.layout import multicast_pipeline
from pipeline.multicast import BridgeConfig, Mode, PuntReason
from wire.nodes import NodeInfo
from wire.policy import NAMESPACED, PolicyView, Rule, RuleKey, full_update

NODE_IP, NODE2, TUNNEL, UPLINK = "192.168.77.1", "192.168.77.2", 65000, 65001
G = "239.1.1.1"
POD = bytes([PuntReason.IGMP_POD])
TUN = bytes([PuntReason.IGMP_TUNNEL])


class Node:
    def __init__(self, core: MulticastCore, client: AgentClient) -> None:
        self.core = core
        self.client = client
        self.pods: dict[str, PodInfo] = {}

    def attach(self, name: str, i: int) -> PodInfo:
        self.pods[name] = self.core.attach_pod(PodAttach(
            "ns1", name, f"cid-{name}", f"mc{i}", f"10.77.1.{i}", f"0a:00:00:00:00:{i:02x}"))
        return self.pods[name]

    def join(self, name: str, record: RecordType = RecordType.TO_EX,
             sources: tuple[str, ...] = ()) -> None:
        pod = self.pods[name]
        (frame,) = build_v3_reports([GroupRecord(record, G, sources)], pod.ip, pod.mac)
        self.core.handle_packet_in(PI(pod.ofport, POD, frame))

    def trace(self, pod: str, **kw: Any) -> dict[str, Any]:
        return self.client.trace(TraceQuery(f"ns1/{pod}", kw.pop("group", G), **kw))


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    servers: list[LocalApiServer] = []

    def build(mode: Mode = Mode.ENCAP, **bridge_kw: Any) -> Node:
        # every group also out the uplink, whoever listens there (the trace of the uplink's
        # own choice is the lab's, tests/lab/test_mcctl_trace.py)
        cfg = parse_config({"node": {"name": "node1", "ip": NODE_IP},
                            "multicast": {"externalForwarding": "always"}})
        tunnel = TUNNEL if mode is Mode.ENCAP else None
        bridge = BridgeConfig(mode, 1, NODE_IP, "02:77:00:00:00:01", tunnel_port=tunnel,
                              uplink_port=UPLINK, **bridge_kw)
        switch = TableSwitch(tunnel_ports=(TUNNEL,) if tunnel else ())
        core = MulticastCore(cfg, bridge, switch, Reconciler(switch, multicast_pipeline()),
                             Ports(), clock=Clock())
        core.start()
        core.set_nodes([NodeInfo("node1", (NODE_IP,)), NodeInfo("node2", (NODE2,))])
        server = LocalApiServer(tmp_path / f"agent{len(servers)}.sock",
                                AgentService(core, switch, multicast_pipeline()))
        server.start()
        servers.append(server)
        node = Node(core, AgentClient(server.path))
        for i, name in enumerate(("a", "b", "snd"), start=1):
            node.attach(name, i)
        return node

    yield build
    for server in servers:
        server.stop()


@pytest.fixture
def node(make: Callable[..., Node]) -> Node:
    return make()


def tables(result: dict[str, Any], level: int = 0) -> list[tuple[str, str]]:
    """(table, owner) of the table steps at ``level``."""
    return [(s["table"], " ".join(x for x in s["owner"].values() if x) if s["owner"] else "-")
            for s in result["steps"] if s["kind"] == "table" and s["level"] == level]


def buckets(result: dict[str, Any]) -> list[tuple[str, str, bool]]:
    return [(s["to"], s["result"], s["target"]) for s in result["steps"] if s["kind"] == "bucket"]


def test_a_member_gets_it_through_the_route_its_group_and_its_bucket(node: Node) -> None:
    node.join("a")
    node.core.handle_packet_in(PI(TUNNEL, TUN, build_v3_reports(
        [GroupRecord(RecordType.IS_EX, G, ())], NODE2, "02:77:00:00:00:02")[0], NODE2))
    res = node.trace("a")
    assert (res["verdict"], res["reason"], res["policyRule"]) == (
        "DELIVERED", f"a member of {G} (any source)", None)
    assert res["packet"] == {"group": G, "source": "192.0.2.1", "udpPort": 5000,
                             "frameBytes": 106, "from": "uplink",
                             "origin": f"the uplink (port {UPLINK})", "inPort": UPLINK}
    assert tables(res) == [("Classifier", "pipeline"), ("MulticastRouting", f"group (*, {G})")]
    route = res["steps"][1]
    assert (route["priority"], route["match"], route["actions"]) == (
        200, f"ip,nw_dst={G}", "group:1")
    assert [s for s in res["steps"] if s["kind"] == "group"] == [
        {"kind": "group", "level": 0, "groupId": 1, "buckets": 3}]
    assert buckets(res) == [
        ("pod ns1/a (port 1)", "delivered to pod ns1/a (port 1)", True),
        (f"node {NODE2} (the tunnel)", "dropped here: a node never relays what came in "
                                       "through the tunnel or the uplink", False),
        ("external receivers (the uplink)", "dropped here: a node never relays what came in "
                                            "through the tunnel or the uplink", False)]
    assert tables(res, 1)[:3] == [("MulticastIngressRule", "pipeline"),
                                  ("MulticastIngressMetric", "pod ns1/a"),
                                  ("MulticastOutput", "pipeline")]
    assert res["deliveries"] == [{"port": 1, "to": "pod ns1/a", "tunDst": None}]
    assert res["membership"] == {"group": G, "localPods": ["ns1/a"], "remoteNodes": [NODE2],
                                 "outsideHosts": [], "sourceFilters": {},
                                 "pod": "member (any source)"}


def test_a_non_member_is_not_delivered_as_not_a_member(node: Node) -> None:
    node.join("a")
    res = node.trace("b")
    assert (res["verdict"], res["reason"]) == ("NOT DELIVERED", f"not a member of {G}")
    assert [t for t, _, target in buckets(res) if target] == []
    assert res["membership"]["localPods"] == ["ns1/a"]
    assert res["membership"]["pod"] == "not a member"
    # A group with no member on the node: no route at all, still "not a member".
    res = node.trace("b", group="239.9.9.9")
    assert (res["verdict"], res["reason"]) == ("NOT DELIVERED", "not a member of 239.9.9.9")
    assert tables(res)[:2] == [("Classifier", "pipeline"), ("MulticastRouting", "pipeline")]


def test_an_igmpv3_source_filter_that_excludes_the_source(node: Node) -> None:
    node.join("a", RecordType.TO_IN, ("10.9.9.9",))
    res = node.trace("a", source="10.1.1.1")
    assert (res["verdict"], res["reason"]) == (
        "NOT DELIVERED", f"not a member of (10.1.1.1, {G}): its IGMPv3 source filter "
                         f"(include 10.9.9.9) does not admit 10.1.1.1")
    assert res["membership"]["pod"] == "member (include 10.9.9.9: does not admit 10.1.1.1)"
    res = node.trace("a", source="10.9.9.9")
    assert res["verdict"] == "DELIVERED"
    assert res["reason"] == f"a member of {G} (include 10.9.9.9: admits 10.9.9.9)"
    assert tables(res)[1] == ("MulticastRouting", f"group (10.9.9.9, {G})")


def _policy(node: Node, direction: str, applied: str) -> None:
    rule = Rule(RuleKey(NAMESPACED, "ns1", "deny-g", direction, 0), "no-g", "Drop", 10,
                "sel", groups=(G,))
    node.core.set_policy(full_update(PolicyView({rule.key.text: rule},
                                                {"sel": frozenset({applied})})))


def test_an_ingress_policy_drop_names_the_rule(node: Node) -> None:
    node.join("a")
    _policy(node, "ingress", "ns1/a")
    res = node.trace("a")
    assert (res["verdict"], res["reason"]) == (
        "NOT DELIVERED", "dropped by policy rule ns1/deny-g/no-g (Drop)")
    assert res["policyRule"] == {"rule": "ns1/deny-g/no-g", "direction": "ingress",
                                 "action": "Drop"}
    [rule_step] = [s for s in res["steps"] if s.get("table") == "MulticastIngressRule"]
    assert rule_step["owner"] == {"feature": "policy", "object": "ns1/deny-g/no-g"}
    assert rule_step["actions"] == "drop" and rule_step["match"].startswith("conj_id=")
    assert res["membership"]["pod"] == "member (any source)"


def test_an_egress_policy_drop_of_the_sender_names_the_rule(node: Node) -> None:
    node.join("a")
    _policy(node, "egress", "ns1/snd")
    res = node.trace("a", from_pod="ns1/snd")
    assert (res["verdict"], res["reason"]) == (
        "NOT DELIVERED", "dropped by policy rule ns1/deny-g/no-g (Drop)")
    assert res["policyRule"]["direction"] == "egress"
    assert [t for t, _ in tables(res)] == ["Classifier", "MulticastEgressRule"]


def test_from_a_node_through_the_tunnel(node: Node) -> None:
    node.join("a")
    res = node.trace("a", from_node=NODE2)
    assert res["verdict"] == "DELIVERED"
    assert res["packet"]["source"] == NODE2 and res["packet"]["inPort"] == TUNNEL
    assert res["packet"]["origin"] == f"node {NODE2} (the tunnel, port {TUNNEL})"
    assert tables(res) == [("Classifier", "pipeline"), ("MulticastRouting", f"group (*, {G})")]
    res = node.trace("b", from_node="192.168.77.9", source="10.77.9.2")
    assert (res["verdict"], res["reason"]) == ("NOT DELIVERED", f"not a member of {G}")
    assert res["packet"]["origin"].endswith(", not a node this agent knows)")


def test_from_the_uplink_and_from_a_local_pod(node: Node) -> None:
    node.join("a")
    res = node.trace("a", from_uplink=True, source="10.50.0.7", port=6000, size=1000)
    assert res["packet"] | {"origin": ""} == {
        "group": G, "source": "10.50.0.7", "udpPort": 6000, "frameBytes": 1042,
        "from": "uplink", "origin": "", "inPort": UPLINK}
    assert res["verdict"] == "DELIVERED"
    res = node.trace("a", from_pod="ns1/snd")
    assert res["verdict"] == "DELIVERED"
    assert [t for t, _ in tables(res)] == ["Classifier", "MulticastEgressRule",
                                           "MulticastEgressMetric", "MulticastRouting"]
    assert tables(res)[0] == ("Classifier", "pod ns1/snd")
    assert buckets(res)[-1] == ("external receivers (the uplink)",
                                f"sent out the uplink from {NODE_IP}", False)
    res = node.trace("a", from_pod="ns1/a")  # its own datagram
    assert (res["verdict"], res["reason"]) == (
        "NOT DELIVERED", "dropped as the pod's own datagram: a sender gets no copy of what it "
                         "sends")


def test_the_spoof_guard(node: Node) -> None:
    node.join("a")
    res = node.trace("a", from_pod="ns1/snd", source="10.77.1.99")
    assert (res["verdict"], res["reason"]) == (
        "NOT DELIVERED", "dropped by the spoof guard of ns1/snd: not the pod's own MAC and IP")
    assert tables(res) == [("Classifier", "pod ns1/snd")]


def test_oversize_from_outside_and_from_a_pod(make: Callable[..., Node]) -> None:
    node = make(max_received_frame=1000, max_pod_frame=900)
    node.join("a")
    assert node.trace("a", size=900)["verdict"] == "DELIVERED"
    res = node.trace("a", size=800, from_pod="ns1/snd")  # under check_pkt_larger: one branch
    assert res["verdict"] == "DELIVERED"
    assert [t for t, _ in tables(res)] == ["Classifier", "MulticastEgressRule",
                                           "MulticastEgressMetric", "MulticastRouting"]
    res = node.trace("a", size=900, from_pod="ns1/snd")
    assert (res["verdict"], res["reason"]) == (
        "NOT DELIVERED", "dropped as oversize: a 942-byte frame, over the 900 bytes pods may "
                         "send (punted to the agent)")
    assert tables(res)[2:] == [("MulticastEgressMetric", "oversize ns1/snd"),
                               ("MulticastOutput", "oversize")]
    res = node.trace("a", size=1000)
    assert (res["verdict"], res["reason"]) == (
        "NOT DELIVERED", "dropped as oversize: a 1042-byte frame, over the 1000 bytes pods can "
                         "receive (punted to the agent)")
    assert tables(res)[1] == ("MulticastRouting", "oversize uplink")


def test_no_encap_a_node_sends_on_the_underlay(make: Callable[..., Node]) -> None:
    node = make(Mode.NOENCAP)
    node.join("a")
    res = node.trace("a", from_node=NODE2)
    assert res["verdict"] == "DELIVERED"
    assert (res["packet"]["inPort"], res["packet"]["origin"]) == (
        UPLINK, f"node {NODE2} (the uplink, port {UPLINK})")
    assert node.trace("a")["packet"]["from"] == "uplink"


def test_a_group_read_back_without_its_buckets_is_unknown(node: Node) -> None:
    """Groups too large to read back come without buckets (agent.ovs.switch): no guessing."""
    node.join("a")
    dump = node.core._switch.dump  # type: ignore[attr-defined]

    def bucketless() -> Any:
        state = dump()
        return dataclasses.replace(state, groups=tuple(
            dataclasses.replace(g, buckets=()) for g in state.groups))

    node.core._switch.dump = bucketless  # type: ignore[attr-defined]
    res = node.trace("b")
    assert (res["verdict"], res["reason"]) == (
        "UNKNOWN", "group 1 was read back without its buckets (too large); not a member")


@pytest.mark.parametrize(("query", "status", "message"), [
    (TraceQuery("ns1/zz", G), 404, "pod ns1/zz is not attached to node node1"),
    (TraceQuery("ns1/a", G, from_pod="ns1/zz"), 404,
     "sending pod ns1/zz is not attached to node node1"),
    (TraceQuery("ns1/a", "10.1.1.1"), 400, "group 10.1.1.1 is not a multicast address"),
    (TraceQuery("ns1/a", "not-an-ip"), 400, "group 'not-an-ip' is not an IPv4 address"),
    (TraceQuery("ns1/a", G, from_node="node2"), 400, "node 'node2' is not an IPv4 address"),
    (TraceQuery("ns1/a", G, from_pod="ns1/b", from_uplink=True), 400, "give one origin"),
    (TraceQuery("ns1/a", G, port=70000), 400, "UDP port 70000 is not 16 bits"),
])
def test_what_cannot_be_traced(node: Node, query: TraceQuery, status: int,
                               message: str) -> None:
    with pytest.raises(ApiError) as exc:
        node.client.trace(query)
    assert exc.value.status == status and exc.value.message.startswith(message), exc.value


def test_a_bad_body_is_refused(node: Node) -> None:
    for body, message in (({"group": G}, "trace: pod is required"),
                          ({"pod": "ns1/a", "group": G, "port": "80"},
                           "trace.port: expected int"),
                          ({"pod": "ns1/a", "group": G, "when": 1},
                           "trace: unknown fields ['when']")):
        with pytest.raises(ApiError) as exc:
            node.client._call("POST", "/v1/trace", body)
        assert (exc.value.status, exc.value.message) == (400, message)


def test_mcctl_prints_the_trace(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    """``mcctl trace`` over the same socket: the text form is a contract (tools.mcctl.trace)."""
    from tools.mcctl.cli import main

    node.join("a")
    sock = ["--socket", node.client.path, "trace", "--group", G]
    assert main([*sock, "--pod", "ns1/a"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"Packet:        {G}:5000 from 192.0.2.1 (106-byte frame), in from the uplink "
        f"(port {UPLINK})",
        "Pod:           ns1/a (port 1) on node1",
        "Verdict:       DELIVERED",
        f"Reason:        a member of {G} (any source)",
        "Policy rule:   <none>",
        "Tables:",
        f"  Classifier              priority=200,ip,in_port={UPLINK},nw_dst=224.0.0.0/4 "
        "actions=load:0x3->NXM_NX_REG0[0..3],goto_table:MulticastRouting [pipeline]",
        f"  MulticastRouting        priority=200,ip,nw_dst={G} actions=group:1 "
        f"[group (*, {G})]",
        "  group 1: 2 buckets",
        "    bucket 0 to pod ns1/a (port 1): delivered to pod ns1/a (port 1)",
        "      MulticastIngressRule    priority=0 actions=goto_table:MulticastIngressMetric "
        "[pipeline]",
        "      MulticastIngressMetric  priority=200,ip,reg1=0x1 "
        "actions=goto_table:MulticastOutput [pod ns1/a]",
        "      MulticastOutput         priority=200,ip,reg0=0x10/0xf0 "
        "actions=output:NXM_NX_REG1[] [pipeline]",
        "    bucket 1 to external receivers (the uplink): dropped here: a node never relays "
        "what came in through the tunnel or the uplink",
        f"Membership of {G}:",
        "  Local pods:    ns1/a",
        "  Remote nodes:  <none>",
        "  ns1/a:         member (any source)"]
    assert main([*sock, "--pod", "ns1/b", "--from-pod", "ns1/snd", "-o", "json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert (res["verdict"], res["reason"]) == ("NOT DELIVERED", f"not a member of {G}")
    assert main([*sock, "--pod", "b"]) == 1  # NAME alone: namespace default
    assert capsys.readouterr() == ("", "mcctl: pod default/b is not attached to node node1\n")


def test_mcctl_trace_errors_are_one_line(node: Node, capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path) -> None:
    from tools.mcctl.cli import main

    for argv, err in (
            (["--socket", node.client.path, "trace", "--pod", "ns1/zz", "--group", G],
             "mcctl: pod ns1/zz is not attached to node node1\n"),
            (["--socket", node.client.path, "trace", "--pod", "ns1/a", "--group", "10.0.0.1"],
             "mcctl: group 10.0.0.1 is not a multicast address (224.0.0.0/4)\n"),
            (["--socket", str(tmp_path / "none.sock"), "trace", "--pod", "ns1/a", "--group", G],
             f"mcctl: agent not reachable: no socket at {tmp_path / 'none.sock'} (is the agent "
             "running on this node? an agent with multicast disabled serves no API)\n")):
        assert main(argv) == 1
        assert capsys.readouterr() == ("", err)
