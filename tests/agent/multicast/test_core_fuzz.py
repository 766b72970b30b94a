"""MulticastCore.handle_packet_in under hypothesis: whatever a punt carries, the core does not
raise, counts it once under the right label, sends nothing towards pods, and its switch state
still matches its membership.

Each example is a fresh core (four pods, one peer node, flows on the fake table) fed a short
sequence of packet-ins with arbitrary in_port, userdata, tun_src and data (noise, IGMP noise,
mutated and valid frames: ``igmpfuzz``), interleaved with timer ticks. Two pods stay honest:
p2 joined G before the sequence and p3 joins G2 after it; the fuzzed punts never come from their
ports. Every property runs in a fast tier and a ``slow`` one (CI runs both).
"""

from __future__ import annotations

from dataclasses import dataclass

from fakeport import Ports, TableSwitch
from hypothesis import strategies as st
from igmpfuzz import (
    ANY_IPS,
    Tally,
    any_frames,
    mutated_frames,
    programmed,
    queries,
    tiers,
    valid_messages,
)
from prometheus_client import REGISTRY

from agent import metrics
from agent.config import parse_config
from agent.flowsync.reconciler import Reconciler
from agent.flowsync.switch import PacketIn
from agent.interfacestore import PodAttach, PodInfo
from agent.multicast.core import MulticastCore
from agent.multicast.igmp.packets import (
    REASONS,
    GroupRecord,
    MalformedIgmp,
    Query,
    RecordType,
    build_v3_reports,
    parse_frame,
)
from pipeline.fake_table import Packet
from pipeline.layout import multicast_pipeline
from pipeline.model import OFPP_CONTROLLER, Output, SetTunnelDst
from pipeline.multicast import BridgeConfig, Mode, PuntReason
from wire.nodes import NodeInfo

# These tests are about membership, replication, policy and counters: every copy also goes
# out the uplink, as before the uplink chose (its own choice: test_core_uplink.py).
ALWAYS = "always"

NODE_IP, NODE_MAC = "192.168.77.1", "02:77:00:00:00:01"
NODE2, NODE3 = "192.168.77.2", "192.168.77.3"
TUNNEL, UPLINK = 65000, 65001
G, G2, NOBODY = "239.1.1.1", "239.2.2.2", "239.9.9.9"
POD_PORTS = (1, 2, 3, 4)
METRIC = "kube_mcast_igmp_messages_total"
VERDICTS = frozenset({"accepted", "ignored", "unknown_port", "answered", "unknown_node",
                      "over_cap"})
TALLY = Tally()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Env:
    core: MulticastCore
    switch: TableSwitch
    clock: Clock
    pods: dict[int, PodInfo]  # by ofport


def make_env() -> Env:
    """A core as tests/agent/multicast/test_core.py builds it, peer NODE2 known, p2 in G."""
    cfg = parse_config({"node": {"name": "node1", "ip": NODE_IP},
                        "multicast": {"igmpQueryInterval": "10s",
                                      "multicastInterfaces": ["eth0"],
                                      "externalForwarding": ALWAYS}})
    bridge = BridgeConfig(Mode.ENCAP, 1, NODE_IP, NODE_MAC, tunnel_port=TUNNEL,
                          uplink_port=UPLINK)
    switch, clock = TableSwitch(tunnel_ports=(TUNNEL,)), Clock()
    core = MulticastCore(cfg, bridge, switch, Reconciler(switch, multicast_pipeline()), Ports(),
                         clock=clock)
    core.start()
    pods = [core.attach_pod(PodAttach("default", f"p{i}", f"cid{i}", f"veth{i}",
                                      f"10.77.1.{i + 1}", f"0a:00:00:00:00:0{i}"))
            for i in range(1, 5)]
    core.set_nodes([NodeInfo("node2", (NODE2,))])
    env = Env(core, switch, clock, {p.ofport: p for p in pods})
    join(env, 2, G)
    switch.packet_outs.clear()
    return env


def join(env: Env, port: int, group: str) -> None:
    pod = env.pods[port]
    (frame,) = build_v3_reports([GroupRecord(RecordType.TO_EX, group, ())], pod.ip, pod.mac)
    env.core.handle_packet_in(PacketIn(port, bytes([PuntReason.IGMP_POD]), frame, None, 0, 0, 0))


def igmp_counts() -> dict[tuple[str, str], float]:
    """Every (type, verdict) of the IGMP message counter and its value."""
    return {(s.labels["type"], s.labels["verdict"]): s.value
            for m in metrics.IGMP_MESSAGES.collect() for s in m.samples
            if s.name == METRIC}


def expected_label(ev: PacketIn) -> tuple[str, str | None]:
    """The counter label a packet-in must move: bad userdata, the parser's reason for a
    malformed frame, or the message type (verdict None: any of `VERDICTS`)."""
    if not ev.userdata or ev.userdata[0] not in set(PuntReason):
        return "unknown", "bad_userdata"
    try:
        return type(parse_frame(ev.data)).__name__, None
    except MalformedIgmp as e:
        assert e.reason in REASONS
        return "malformed", e.reason


def is_towards_pods(actions: tuple[object, ...], in_port: int | None) -> bool:
    """A packet-out that the pipeline (in_port CONTROLLER, output to the table) or a direct
    output would take to a pod; the agent's IGMP may only leave by the tunnel or the uplink."""
    return not all(isinstance(a, SetTunnelDst) or a in (Output(TUNNEL), Output(UPLINK))
                   for a in actions) or in_port is not None


def deliver(env: Env, ev: PacketIn) -> str:
    """Hand one packet-in to the core and check what only this packet-in may have done.
    Returns the verdict it was counted under."""
    kind, reason = expected_label(ev)
    before, sent = igmp_counts(), len(env.switch.packet_outs)
    env.core.handle_packet_in(ev)  # must not raise, whatever ev holds
    after = igmp_counts()
    moved = {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}
    ((label, delta),) = moved.items()  # exactly one label moved ...
    assert delta == 1.0, moved  # ... by exactly one
    assert label[0] == kind and (label[1] == reason if reason else label[1] in VERDICTS), moved
    if reason is not None:
        value = REGISTRY.get_sample_value(METRIC, {"type": kind, "verdict": reason})
        assert value == before.get(label, 0.0) + 1
    outs = env.switch.packet_outs[sent:]
    assert not [o for o in outs if is_towards_pods(o[1], o[2])], outs
    return label[1]


def expected_ports(env: Env, group: str, source: str, in_port: int) -> list[int]:
    """Where the membership table says a packet from `source` to `group` entering at `in_port`
    must go: local members admitting the source (not the sender), and from a pod, one copy per
    remote node and one to the uplink."""
    row = next((m for m in env.core.members() if m.group == group), None)
    ports = []
    if row is not None:
        by_ref = {p.ref: p.ofport for p in env.pods.values()}
        for ref in row.local_pods:
            f = row.source_filters.get(ref)
            if f is None or (source in f.sources) == (f.mode == "include"):
                ports.append(by_ref[ref])
        if in_port != TUNNEL:
            ports += [TUNNEL] * len(row.remote_nodes)
    if in_port != TUNNEL:
        ports.append(UPLINK)
    return sorted(p for p in ports if p != in_port)


def settle(env: Env) -> None:
    """Let the core finish the work that is due now (it may defer and batch what reports
    changed): tick while its next deadline has come."""
    for _ in range(100):
        if env.core.next_deadline() > env.clock.now:
            return
        env.core.tick()
    raise AssertionError("the core keeps saying it has work due now")


def check_switch_matches_membership(env: Env) -> None:
    """After any sequence: a new honest join works, honest members get their group and nothing
    else, and for every group the fake table delivers exactly to the members the core lists
    (from a pod with its own address, and from the tunnel with every listed source)."""
    join(env, 3, G2)
    settle(env)
    p1 = env.pods[1]
    rows = {m.group: m for m in env.core.members()}
    assert "default/p2" in rows[G].local_pods and "default/p3" in rows[G2].local_pods
    for group in sorted({G, G2, NOBODY} | set(rows)):
        t = env.switch.table.process(Packet(1, p1.mac, "01:00:5e:01:01:01", p1.ip, group, 17))
        assert t.ports() == expected_ports(env, group, p1.ip, 1), t.explain()
        assert (2 in t.ports()) == (group == G) and (3 in t.ports()) == (group == G2)
        listed = {s for f in (rows[group].source_filters if group in rows else {}).values()
                  for s in f.sources}
        for source in sorted(listed | {NODE2}):
            t = env.switch.table.process(Packet(TUNNEL, "02:77:00:00:00:02", "01:00:5e:01:01:01",
                                                source, group, 17, tun_src=NODE2))
            assert t.ports() == expected_ports(env, group, source, TUNNEL), t.explain()


# ------------------------------------------------------------------ inputs

POD_SOURCES = st.sampled_from([f"10.77.1.{i + 1}" for i in POD_PORTS] + [NODE2])
DATA = st.one_of(any_frames(), programmed(), valid_messages(POD_SOURCES).map(lambda b: b.frame))


NO_TUN_SRC: st.SearchStrategy[str | None] = st.none()


def punts(in_port: st.SearchStrategy[int], reason: PuntReason,
          tun_src: st.SearchStrategy[str | None] = NO_TUN_SRC) -> st.SearchStrategy[PacketIn]:
    """Packet-ins as the punt flows make them: the port's own reason in the userdata. Cookie,
    table and OpenFlow reason route a packet-in to the core (agent.packetin); it reads none."""
    return st.builds(PacketIn, in_port=in_port, userdata=st.just(bytes([reason])), data=DATA,
                      tun_src=tun_src, cookie=st.just(0), table_id=st.just(0),
                      reason=st.just(0))


ANY_PORT = st.one_of(st.sampled_from([1, 4, TUNNEL, UPLINK, OFPP_CONTROLLER, 0, 5, 77]),
                     st.integers(5, 0xFFFFFFFF))
ANY_USERDATA = st.one_of(
    st.sampled_from([bytes([r]) for r in PuntReason]),
    st.sampled_from(list(PuntReason)).flatmap(
        lambda r: st.binary(min_size=1, max_size=4).map(lambda b: bytes([r]) + b)),
    st.binary(max_size=6),
)
ANY_TUN_SRC = st.one_of(st.none(), st.sampled_from([NODE2, NODE3, NODE_IP]), ANY_IPS)
PACKET_INS = st.one_of(
    punts(st.sampled_from([1, 4]), PuntReason.IGMP_POD),  # the fuzzed pods (not p2, p3)
    punts(st.just(TUNNEL), PuntReason.IGMP_TUNNEL, st.sampled_from([NODE2, NODE3]) | ANY_TUN_SRC),
    punts(st.just(UPLINK), PuntReason.IGMP_UPLINK),
    # anything at all, as a broken flow or adaptor could deliver it
    st.builds(PacketIn, in_port=ANY_PORT, userdata=ANY_USERDATA, data=DATA, tun_src=ANY_TUN_SRC,
              cookie=st.just(0), table_id=st.just(0), reason=st.just(0)),
)
TICKS = st.floats(0, 1)  # seconds: 24 ticks stay below the 30 s membership timeout (p2 in G)
EVENTS = st.lists(st.one_of(PACKET_INS, PACKET_INS, PACKET_INS, TICKS), min_size=6, max_size=24)
POD_QUERIES = st.one_of(queries(POD_SOURCES).map(lambda b: b.frame),
                        mutated_frames(queries(POD_SOURCES).map(lambda b: b.frame)))


# ------------------------------------------------------------------ properties


def packet_ins_never_raise_are_counted_once_and_leave_the_switch_consistent(
        events: list[PacketIn | float]) -> None:
    """Any sequence of packet-ins (and timer ticks): handle_packet_in never raises; each
    packet-in moves the IGMP counter by exactly one, malformed ones under the parser's reason;
    none sends anything towards pods; afterwards the fake table delivers exactly what the
    membership says, honest members included."""
    TALLY.add(sum(isinstance(ev, PacketIn) for ev in events))
    env = make_env()
    for ev in events:
        if isinstance(ev, PacketIn):
            deliver(env, ev)
        else:
            env.clock.now += ev
            env.core.tick()
    check_switch_matches_membership(env)


def queries_from_pods_are_ignored_and_reach_no_pod(sent: list[tuple[int, bytes]]) -> None:
    """IGMP queries sent by pods (valid or mutated, any version, any pod): each is counted
    `ignored` and causes no packet-out at all, membership and flows stay as they were, and on
    the data plane the pod's punt flow takes it to the agent only, never to another pod."""
    TALLY.add(len(sent))
    env = make_env()
    for port, frame in sent:
        # a mutation may have made a report of it: that one is applied, and checked by deliver
        members, state = env.core.members(), env.switch.dump()
        env.switch.packet_outs.clear()
        verdict = deliver(env, PacketIn(port, bytes([PuntReason.IGMP_POD]), frame, None, 0, 0, 0))
        try:
            msg = parse_frame(frame)
        except MalformedIgmp:
            continue
        if isinstance(msg, Query):
            assert verdict == "ignored" and env.switch.packet_outs == []
            assert env.core.members() == members and env.switch.dump() == state
            pod = env.pods[port]
            t = env.switch.table.process(Packet(port, pod.mac, "01:00:5e:00:00:01", pod.ip,
                                                msg.dst, 2))
            assert t.deliveries == [] and [p.userdata for p in t.packet_ins] == [
                bytes([PuntReason.IGMP_POD])], t.explain()


# Budgets, in examples: the fast tier feeds about 2,000 packet-ins (5 s), the slow one about
# 9,700 (30 s CPU); with the parser's slow tier, about 109,000 inputs (70 s CPU in all).
test_packet_in_sequences, test_packet_in_sequences_slow = tiers(
    packet_ins_never_raise_are_counted_once_and_leave_the_switch_consistent,
    fast=150, slow=800, tally=TALLY, events=EVENTS)
test_pod_queries, test_pod_queries_slow = tiers(
    queries_from_pods_are_ignored_and_reach_no_pod, fast=150, slow=700, tally=TALLY,
    sent=st.lists(st.tuples(st.sampled_from(POD_PORTS), POD_QUERIES), min_size=1, max_size=16))
