"""Multicast policy in the agent's core: real IGMP frames in, flows run on the fake table.

The policy arrives as the controller sends it (``wire.policy`` updates through
``MulticastCore.set_policy``); assertions are about memberships, where packets go, what
queries the agent sends to which pod, and the rule counters.
"""

from __future__ import annotations

import pytest
from fakeport import PI, Clock, Ports, TableSwitch
from prometheus_client import REGISTRY

from agent.api.service import AgentService
from agent.config import parse_config
from agent.flowsync.reconciler import Reconciler
from agent.interfacestore import PodAttach
from agent.multicast.core import MulticastCore
from agent.multicast.igmp.packets import (
    GroupRecord,
    RecordType,
    build_v2_report,
    build_v3_reports,
    parse_frame,
)
from agent.multicast.igmp.packets import Query as IgmpQuery
from pipeline.cookies import Feature
from pipeline.fake_table import Packet
from pipeline.layout import multicast_pipeline
from pipeline.model import OFPP_CONTROLLER, OFPP_TABLE, Output
from pipeline.multicast import BridgeConfig, Mode, PuntReason
from wire.policy import (
    ALL_HOSTS,
    NAMESPACED,
    IgmpMatch,
    PolicyView,
    Rule,
    RuleKey,
    diff,
    full_update,
)

# These tests are about membership, replication, policy and counters: every copy also goes
# out the uplink, as before the uplink chose (its own choice: test_core_uplink.py).
ALWAYS = "always"

NODE_IP, NODE_MAC, UPLINK = "192.168.77.1", "02:77:00:00:00:01", 65001
G, G2, G3 = "239.1.1.1", "239.2.2.2", "239.3.3.3"
POD = bytes([PuntReason.IGMP_POD])


def make_core(switch: TableSwitch, policy_file=None) -> MulticastCore:
    cfg = parse_config({"node": {"name": "node1", "ip": NODE_IP},
                        "multicast": {"igmpQueryInterval": "10s",
                                      "multicastInterfaces": ["eth0"],
                                      "externalForwarding": ALWAYS}})
    bridge = BridgeConfig(Mode.NOENCAP, 1, NODE_IP, NODE_MAC, uplink_port=UPLINK)
    return MulticastCore(cfg, bridge, switch, Reconciler(switch, multicast_pipeline()),
                         Ports(), clock=Clock(), policy_file=policy_file)


@pytest.fixture
def env():
    cfg = parse_config({"node": {"name": "node1", "ip": NODE_IP},
                        "multicast": {"igmpQueryInterval": "10s",
                                      "multicastInterfaces": ["eth0"],
                                      "externalForwarding": ALWAYS}})
    bridge = BridgeConfig(Mode.NOENCAP, 1, NODE_IP, NODE_MAC, uplink_port=UPLINK)
    switch = TableSwitch()
    agent = MulticastCore(cfg, bridge, switch, Reconciler(switch, multicast_pipeline()),
                          Ports(), clock=Clock())
    agent.start()
    pods = [agent.attach_pod(PodAttach("default", f"p{i}", f"cid{i}", f"veth{i}",
                                       f"10.77.1.{i + 1}", f"0a:00:00:00:00:0{i}"))
            for i in range(1, 4)]
    switch.sent()
    return agent, switch, pods


def rule(policy: str, direction: str, index: int = 0, *, action: str = "Drop",
         priority: float = 10, applied: str = "readers", **kw: object) -> Rule:
    return Rule(RuleKey(NAMESPACED, "default", policy, direction, index), f"r{index}", action,
                priority, applied, **kw)  # type: ignore[arg-type]


def view(*rules: Rule, applied: dict | None = None, addresses: dict | None = None) -> PolicyView:
    groups = applied or {"readers": ["default/p2"]}
    return PolicyView({r.key.text: r for r in rules},
                      {k: frozenset(v) for k, v in groups.items()},
                      {k: frozenset(v) for k, v in (addresses or {}).items()})


def join(agent, pod, *groups: str) -> None:
    (frame,) = build_v3_reports([GroupRecord(RecordType.TO_EX, g, ()) for g in groups],
                                pod.ip, pod.mac)
    agent.handle_packet_in(PI(pod.ofport, POD, frame))


def send(switch, pod, group: str, n: int = 1, source: str | None = None) -> list[int]:
    ports: list[int] = []
    for _ in range(n):
        t = switch.table.process(Packet(pod.ofport, pod.mac, "01:00:5e:01:01:01",
                                        source or pod.ip, group, 17, udp_dst=5000))
        ports = sorted(d.port for d in t.deliveries)
    return ports


def stats(agent) -> dict[str, tuple[int, int]]:
    return {f"{c.rule.key.policy}/{c.rule.key.direction}/{c.rule.key.index}":
            (c.packets, c.bytes) for c in agent.policy_counts()}


def test_a_dropped_report_means_no_membership_and_no_delivery(env) -> None:
    agent, switch, (p1, p2, p3) = env
    agent.set_policy(full_update(view(rule("guard", "egress", igmp=(IgmpMatch(None, G2),)))))
    before = REGISTRY.get_sample_value("kube_mcast_igmp_messages_total",
                                       {"type": "ReportV2", "verdict": "dropped_by_policy"}) or 0
    agent.handle_packet_in(PI(p2.ofport, POD, build_v2_report(G2, p2.ip, p2.mac)))
    agent.handle_packet_in(PI(p3.ofport, POD, build_v2_report(G2, p3.ip, p3.mac)))  # no rule
    assert [(m.group, m.local_pods) for m in agent.members()] == [(G2, ("default/p3",))]
    assert send(switch, p1, G2) == [p3.ofport, UPLINK]
    assert REGISTRY.get_sample_value("kube_mcast_igmp_messages_total", {
        "type": "ReportV2", "verdict": "dropped_by_policy"}) == before + 1
    assert stats(agent) == {"guard/egress/0": (1, 8)}


def test_igmpv3_records_are_judged_one_by_one(env) -> None:
    agent, switch, (p1, p2, _) = env
    agent.set_policy(full_update(view(
        rule("guard", "egress", 0, action="Allow", igmp=(IgmpMatch(0x22, G),)),
        rule("guard", "egress", 1, igmp=(IgmpMatch(),)))))
    join(agent, p2, G, G2, G3)
    assert [m.group for m in agent.members()] == [G]
    assert send(switch, p1, G) == [p2.ofport, UPLINK] and send(switch, p1, G2) == [UPLINK]
    assert stats(agent) == {"guard/egress/0": (1, 8), "guard/egress/1": (2, 16)}


def test_a_new_view_ends_memberships_it_would_not_let_the_pod_report(env) -> None:
    agent, switch, (p1, p2, p3) = env
    join(agent, p2, G, G2)
    join(agent, p3, G2)
    old = view()
    new = view(rule("guard", "egress", igmp=(IgmpMatch(None, G2),)))
    agent.set_policy(full_update(old))
    agent.set_policy(diff(old, new))
    assert {m.group: m.local_pods for m in agent.members()} == {
        G: ("default/p2",), G2: ("default/p3",)}
    assert send(switch, p1, G2) == [p3.ofport, UPLINK]


def test_dropped_queries_reach_only_the_allowed_pods(env) -> None:
    agent, switch, (p1, p2, p3) = env
    agent.announcer.query_pods()  # no ingress IGMP rule: flooded by the query group
    ((_, actions, in_port),) = switch.packet_outs
    assert (actions, in_port) == ((Output(OFPP_TABLE),), OFPP_CONTROLLER)
    switch.packet_outs.clear()
    agent.set_policy(full_update(view(
        rule("q", "ingress", igmp=(IgmpMatch(0x11, ALL_HOSTS),)),
        applied={"readers": ["default/p2", "default/p3"]})))
    agent.announcer.query_pods()
    ((frame, actions, _),) = switch.packet_outs
    assert isinstance(parse_frame(frame), IgmpQuery)
    assert actions == (Output(p1.ofport),)
    assert stats(agent) == {"q/ingress/0": (2, 24)}  # one v3 query (12 bytes) per pod denied
    switch.packet_outs.clear()
    agent.announcer.query_pods(group=G)  # group-specific: the rule is about 224.0.0.1 only
    ((_, actions, _),) = switch.packet_outs
    assert actions == tuple(Output(p.ofport) for p in (p1, p2, p3))


def test_a_pod_kept_from_queries_keeps_its_memberships(env) -> None:
    """It cannot answer the queries it never sees: its memberships do not age out for that;
    a pod that sees queries and stays silent does age out."""
    agent, _switch, (_p1, p2, p3) = env
    agent.set_policy(full_update(view(rule("q", "ingress", igmp=(IgmpMatch(0x11, None),)))))
    join(agent, p2, G)
    join(agent, p3, G)
    for _ in range(6):  # 60 s of 10-s queries, beyond the 2 x 10 + 10 s membership timeout
        agent._clock.now += 10.0  # type: ignore[attr-defined]
        agent.tick()
    assert {m.group: m.local_pods for m in agent.members()} == {G: ("default/p2",)}


def test_data_rule_flows_follow_the_pods_they_apply_to(env) -> None:
    agent, switch, (p1, p2, p3) = env
    join(agent, p3, G)
    agent.set_policy(full_update(view(rule("guard", "egress", groups=(G,)),
                                      applied={"readers": ["default/p4"]})))
    assert agent._rec.keys(Feature.POLICY) == []  # p4 is not here yet
    p4 = agent.attach_pod(PodAttach("default", "p4", "cid4", "veth4", "10.77.1.5",
                                    "0a:00:00:00:00:04"))
    assert send(switch, p4, G) == []  # dropped before anything else, as soon as attached
    assert send(switch, p4, G2) == [UPLINK]
    assert send(switch, p1, G) == [p3.ofport, UPLINK]  # other pods unaffected
    (row,) = AgentService(agent, switch, multicast_pipeline()).policy_stats()
    assert (row["policy"], row["action"], row["kind"], row["packets"]) == (
        "guard", "Drop", "data", 1)
    agent.detach_pod("cid4")
    assert not [f for f in switch.table.flows() if f.cookie >> 40 & 0xFF == Feature.POLICY]


def test_a_restarted_agent_enforces_the_saved_view_from_its_first_bundle(tmp_path) -> None:
    """The controller away, the agent restarts: the last view it had is enforced at once."""
    saved = tmp_path / "policy.json"
    switch = TableSwitch()
    first = make_core(switch, saved)
    first.start()
    pod = first.attach_pod(PodAttach("default", "p2", "cid2", "veth2", "10.77.1.3",
                                     "0a:00:00:00:00:02"))
    first.set_policy(full_update(view(rule("guard", "egress", groups=(G,)))))
    assert send(switch, pod, G) == []
    again = make_core(switch, saved)  # a new agent over the same switch and pod
    again.start([pod])
    assert set(again.policy.view.rules) == set(first.policy.view.rules)
    assert send(switch, pod, G) == [] and send(switch, pod, G2) == [UPLINK]
    saved.write_text("{not json")  # a damaged file is ignored: nothing saved, nothing enforced
    third = make_core(switch, saved)
    third.start([pod])
    assert send(switch, pod, G) == [UPLINK]


def test_ingress_rule_drops_one_source_for_one_receiver(env) -> None:
    agent, switch, (p1, p2, p3) = env
    join(agent, p2, G)
    join(agent, p3, G)
    agent.set_policy(full_update(view(
        rule("guard", "ingress", groups=(G,), source_groups=("untrusted",)),
        addresses={"untrusted": [p1.ip]})))
    assert send(switch, p1, G) == [p3.ofport, UPLINK]
    assert send(switch, p3, G) == [p2.ofport, UPLINK]


def test_reference_counts_and_counters_survive_a_reprioritisation(env) -> None:
    """DESIGN §4: a sender allowed to G3 and dropped to G2 sends 10 to each: outbound 10,
    allow=10, drop=10. A policy inserted above moves both rules' flows; counts go on."""
    agent, switch, (p1, p2, _) = env
    join(agent, p2, G2, G3)
    rules = [rule("guard", "egress", 0, action="Allow", groups=(G3,)),
             rule("guard", "egress", 1, groups=(G2,))]
    v1 = view(*rules, applied={"readers": ["default/p1"]})
    agent.set_policy(full_update(v1))
    send(switch, p1, G3, 10)
    send(switch, p1, G2, 10)
    assert {s.name: s.outbound for s in agent.pod_stats()}["p1"] == 10
    assert {s.name: s.inbound for s in agent.pod_stats()}["p2"] == 10
    assert stats(agent) == {"guard/egress/0": (10, 0), "guard/egress/1": (10, 0)}
    before = {k: r.priority for k, r in agent.policy.data_rules().items()}
    first = rule("first", "egress", priority=1, action="Allow", groups=("239.9.0.0/16",))
    v2 = view(first, *rules, applied={"readers": ["default/p1"]})
    agent.set_policy(diff(v1, v2))
    after = {k: r.priority for k, r in agent.policy.data_rules().items()}
    assert all(after[k] == before[k] - 1 for k in before)  # re-installed one lower
    assert stats(agent)["guard/egress/0"] == (10, 0)
    send(switch, p1, G3, 2)
    assert stats(agent) == {"first/egress/0": (0, 0), "guard/egress/0": (12, 0),
                            "guard/egress/1": (10, 0)}
