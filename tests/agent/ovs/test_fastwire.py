"""agent.ovs.fastwire: the fast bytes are os-ken's, to the byte, for everything the agent bundles.

Every action kind in a flow and in a bucket, every match field (plain and masked), every
command of a flow mod and a group mod, every golden sample state (``mcast_samples``), and a
property test over what the real builders (``pipeline.multicast``, ``pipeline.oversize``) make
of random ports, addresses, rounds, limits and groups: message alone and wrapped in a
BUNDLE_ADD_MESSAGE, xid and bundle id included. What the encoder declines, os-ken writes. The
sizes ``pipeline.groupsplit`` splits groups by are the lengths of these bytes.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, seed, settings
from hypothesis import strategies as st
from mcast_samples import PEER_IPS, build_state, config, sample_state
from os_ken.ofproto import ofproto_v1_5 as ofp
from policy_samples import sample_rules
from wirecheck import CONV, P, assert_same, every_command, fast_bytes, os_ken_bytes

from agent.flowsync.switch import CookieDelete
from agent.ovs import fastwire
from agent.ovs.convert import ConvertError
from agent.ovs.fastwire import MAX_BUNDLED_MESSAGE, OXM, FastEncoder, OpEncoder, bundle_add
from pipeline import layout, oversize, policy
from pipeline import multicast as mc
from pipeline.cookies import round_cookie_mask
from pipeline.groupsplit import action_size, op_size
from pipeline.model import (
    FIELD_KINDS,
    OFPP_CONTROLLER,
    OFPP_IN_PORT,
    OFPP_LOCAL,
    OFPP_TABLE,
    Action,
    ApplyMeter,
    Bucket,
    CheckPktLarger,
    Conjunction,
    Controller,
    Ct,
    Drop,
    FieldMatch,
    Flow,
    GotoTable,
    Group,
    GroupAction,
    GroupType,
    LoadReg,
    Match,
    Output,
    OutputReg,
    Resubmit,
    SetField,
    SetTunnelDst,
    SwitchState,
)
from pipeline.ops import Command, FlowOp, GroupOp
from pipeline.registers import IN_CLASS, OUT_KIND, OUT_PORT, OVERSIZE, OutKind, PortClass, RegField

ENC = FastEncoder(P)


def test_oxm_table_is_os_kens() -> None:
    assert set(OXM) == set(FIELD_KINDS)
    for name, oxm in OXM.items():
        n = ofp.oxm_from_user_header(name)
        size = ofp._oxm_field_desc(n).type.size
        assert (oxm.rank, oxm.size) == (n, size), name
        assert int.from_bytes(oxm.plain, "big") == n << 9 | size
        assert int.from_bytes(oxm.masked, "big") == n << 9 | 1 << 8 | 2 * size


BUCKET_ACTIONS: list[Action] = [
    Output(3), Output(0xFFFFFF00), Output(OFPP_CONTROLLER), Output(OFPP_TABLE),
    Output(OFPP_IN_PORT), Output(OFPP_LOCAL), GroupAction(5), GroupAction(0xFFFFFEFF),
    OutputReg(OUT_PORT), OutputReg(RegField("low", 3, 4, 19)), Resubmit(layout.INGRESS_RULE),
    Resubmit(layout.OUTPUT), SetTunnelDst("10.0.0.1"), SetField("eth_src", "02:00:00:00:00:01"),
    SetField("eth_dst", "ff:ff:ff:ff:ff:ff"), SetField("ipv4_src", "10.0.0.1"),
    SetField("ipv4_dst", "239.255.255.250"), SetField("tunnel_id", (1 << 64) - 1),
    SetField("udp_dst", 53), SetField("eth_type", 0x86DD), SetField("ip_proto", 17),
    SetField("in_port", 7), SetField("tun_ipv4_src", "1.2.3.4"), SetField("reg5", 0xFFFFFFFF),
    LoadReg(OUT_PORT, 3), LoadReg(OUT_PORT, 0xFFFFFFFF), LoadReg(OUT_KIND, OutKind.REMOTE),
    LoadReg(IN_CLASS, PortClass.POD), LoadReg(OVERSIZE, 1), LoadReg(RegField("x", 7, 31, 31), 1),
    *[Controller(bytes(range(1, n + 1))) for n in range(1, 18)],
    Controller(b"\x01\x02\x03\x04\x05", max_len=128), Controller(b"\xff", max_len=0),
    Ct(65520, True, "192.168.77.1"), Ct(7, True), Ct(0, False), Ct(0xFFFF, False, "0.0.0.0"),
    oversize.check(1464), CheckPktLarger(0xFFFF, RegField("reg7[31..31]", 7, 31, 31)),
    CheckPktLarger(0, RegField("b", 2, 0, 0)), Drop(),
]  # fmt: skip
FLOW_ONLY: list[tuple[Action, ...]] = [
    (ApplyMeter(1),), (ApplyMeter(0xFFFF0000), Controller(b"\x01")), (GotoTable(layout.OUTPUT),),
    (LoadReg(IN_CLASS, PortClass.POD), oversize.check(1464), GotoTable(layout.EGRESS_RULE)),
    (ApplyMeter(200_000), GotoTable(layout.OUTPUT)),
    (Ct(65520, True, "192.168.77.1"), SetField("eth_src", "02:77:00:00:00:01"), Output(200)),
    (Conjunction(7, 1, 2),), (Conjunction(0xFFFFFFFF, 64, 64), Conjunction(0, 2, 3)),
]


def _name(a: object) -> str:
    return repr(a)[:60]


@pytest.mark.parametrize("action", BUCKET_ACTIONS, ids=_name)
def test_every_action_in_a_flow_and_a_bucket(action: Action) -> None:
    flow = Flow(layout.CLASSIFIER, 200, Match.of(in_port=1, eth_type=0x800), (action,),
                cookie=0x0003_01_0000000001)
    for op in every_command(FlowOp, flow):
        assert_same(ENC, op)
    for gtype in GroupType:
        twice = (action,) if isinstance(action, Drop) else (action, action)
        group = Group(9, (Bucket((action,)), Bucket(twice)), gtype)
        for op in every_command(GroupOp, group):
            assert_same(ENC, op, first_bucket_id=700 if op.command is Command.INSERT_BUCKETS
                        else 0)


@pytest.mark.parametrize("action", BUCKET_ACTIONS, ids=_name)
def test_groupsplit_sizes_are_the_fast_paths(action: Action) -> None:
    assert action_size(action) == len(ENC.action(action))
    for op in every_command(GroupOp, Group(9, (Bucket((action,)),) * 3)):
        assert op_size(op) == len(fast_bytes(ENC, op))


@pytest.mark.parametrize("actions", FLOW_ONLY, ids=_name)
def test_flow_only_actions_and_instructions(actions: tuple[Action, ...]) -> None:
    flow = Flow(layout.EGRESS_METRIC, 0xFFFF, Match.of(in_port=1), actions, cookie=(1 << 64) - 1)
    for op in every_command(FlowOp, flow):
        assert_same(ENC, op)


MATCHES = [
    Match(),
    Match.of(in_port=7, eth_type=0x800, ip_proto=2),
    Match.of(in_port=OFPP_CONTROLLER, eth_type=0x800, ip_proto=2),
    Match.of(eth_src="02:00:00:00:00:0a", eth_dst="01:00:5e:01:01:01"),
    Match.of(eth_type=0x800, ipv4_src="10.77.1.2", ipv4_dst="224.0.0.0/4"),
    Match.of(eth_type=0x800, ip_proto=17, ipv4_dst="239.1.1.1", udp_dst=5000),
    Match.of(tunnel_id=5001, tun_ipv4_src="192.168.77.2", tun_ipv4_dst="192.168.77.1"),
    Match.of((IN_CLASS, PortClass.POD), (OUT_KIND, OutKind.REMOTE), eth_type=0x800),
    Match.of((IN_CLASS, PortClass.TUNNEL), (OVERSIZE, 1), eth_type=0x800),
    Match.of((OUT_PORT, 3), in_port=3, eth_type=0x800),
    Match.of(reg7=0xFFFFFFFF, reg0=0, reg3=5),
    Match((FieldMatch("eth_dst", "01:00:5e:00:00:00", "ff:ff:ff:80:00:00"),)),
    Match((FieldMatch("ipv4_src", "10.1.2.3", "255.255.0.0"),)),  # os-ken clears the host bits
    Match((FieldMatch("reg1", 0xFF, 0x0F), FieldMatch("udp_dst", 53, 0xFFFF))),  # full mask kept
    Match((FieldMatch("tunnel_id", 1 << 63, 1 << 63), FieldMatch("tun_ipv4_dst", "0.0.0.0"))),
    Match.of(conj_id=7, eth_type=0x800),
    Match.of((OVERSIZE, 1), conj_id=0xFFFFFFFF, eth_type=0x800),
]


@pytest.mark.parametrize("match", MATCHES, ids=lambda m: ",".join(sorted(m.names())) or "any")
def test_every_match_field(match: Match) -> None:
    for table in P.names:
        flow = Flow(table, 100, match, (Drop(),), cookie=5)
        for op in every_command(FlowOp, flow):
            assert_same(ENC, op)


def test_cookie_deletes() -> None:
    for op in (CookieDelete(*round_cookie_mask(3)), CookieDelete(0, 0),
               CookieDelete((1 << 64) - 1, (1 << 64) - 1)):
        assert_same(ENC, op)


def _sample_states() -> list[SwitchState]:
    """The golden states and the variants the real-OVS render tests use."""
    out = []
    for mode in mc.Mode:
        groups = {"239.1.1.1": (7, (1,), PEER_IPS[1:]), "239.1.1.2": (6, (1,), PEER_IPS)}
        out += [sample_state(mode), sample_state(mode, round_=4),
                build_state(mode, 3, (1,), groups, PEER_IPS[1:]),
                build_state(mode, 0xFFFF, (1, 2, 3, 250), groups, PEER_IPS)]
        out.append(SwitchState(tuple(policy.policy_flows(config(mode), sample_rules()))))
    return out


@pytest.mark.parametrize("state", _sample_states(), ids=lambda s: f"{len(s.flows)}flows")
def test_golden_sample_states(state: SwitchState) -> None:
    for flow in state.flows:
        for op in every_command(FlowOp, flow):
            assert_same(ENC, op)
    for group in state.groups:
        for op in every_command(GroupOp, group):
            assert_same(ENC, op, first_bucket_id=3 if op.command is Command.INSERT_BUCKETS else 0)


# -- the property test: random inputs through the real builders ---------------------------------

ports = st.integers(1, 99_999)  # oversize counting meters take port numbers below 100,000
ips = st.integers(0, 0xFFFFFFFF).map(lambda n: str(ipaddress.IPv4Address(n)))
multicast_ips = st.integers(0xE0000000, 0xEFFFFFFF).map(lambda n: str(ipaddress.IPv4Address(n)))
macs = st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b))
rates = st.none() | st.integers(1, 1_000_000)
limits = st.none() | st.integers(0, 0xFFFF)
group_ids = st.integers(1, 0xFFFFFEFF)


@st.composite
def builder_states(draw: st.DrawFn) -> SwitchState:
    mode = draw(st.sampled_from(list(mc.Mode)))
    tunnel, uplink = draw(ports), draw(st.none() | ports)
    cfg = mc.BridgeConfig(
        mode, draw(st.integers(0, 0xFFFF)), draw(ips), draw(macs),
        tunnel_port=tunnel if mode is mc.Mode.ENCAP else None, uplink_port=uplink,
        snat_zone=draw(st.integers(0, 0xFFFF)), pod_punt_pps=draw(rates),
        tunnel_punt_pps=draw(rates), uplink_punt_pps=draw(rates), max_pod_frame=draw(limits),
        max_received_frame=draw(limits))
    flows = list(mc.initial_flows(cfg))
    for port in draw(st.lists(ports, max_size=3, unique=True)):
        mac = draw(st.sampled_from(["", draw(macs)]))
        flows += mc.pod_flows(cfg, port, mac, draw(ips) if mac and draw(st.booleans()) else "")
    for node in draw(st.lists(ips, max_size=2)):
        flows += mc.node_flows(cfg, node)
    groups = [mc.query_group(draw(st.lists(ports, max_size=4)))]
    for _ in range(draw(st.integers(0, 3))):
        gid, group_ip = draw(group_ids), draw(multicast_ips)
        remotes = draw(st.lists(ips, max_size=4)) if mode is mc.Mode.ENCAP else []
        groups.append(mc.multicast_group(cfg, gid, draw(st.lists(ports, max_size=5)), remotes))
        flows.append(mc.route_flow(cfg, group_ip, gid))
        flows.append(mc.source_route_flow(cfg, draw(ips), group_ip, draw(group_ids)))
    if uplink is not None:
        flows.append(mc.default_external_flow(cfg))
    return SwitchState(tuple(flows), tuple(groups))


@seed(20260112)
@settings(max_examples=300, deadline=None, database=None)
@given(state=builder_states(), data=st.data())
def test_builders_random_state_bytes_are_os_kens(state: SwitchState, data: st.DataObject) -> None:
    enc = FastEncoder(P)
    xids = st.integers(0, 0xFFFFFFFF)
    ops: list[FlowOp | GroupOp] = [FlowOp(data.draw(st.sampled_from(list(Command)[:3])), f)
                                   for f in state.flows]
    ops += [GroupOp(data.draw(st.sampled_from(list(Command))), g) for g in state.groups]
    for op in ops:
        first = data.draw(st.integers(0, 3000)) if op.command is Command.INSERT_BUCKETS else 0
        alone = assert_same(enc, op, first, xid=data.draw(xids), bundle_id=data.draw(xids),
                            flags=data.draw(st.integers(0, 0xFFFF)))
        if isinstance(op, GroupOp):
            assert op_size(op) == len(alone)  # what the differ splits by
    assert enc.declined == 0


# -- declining, falling back, limits ------------------------------------------------------------

DECLINED = [
    FlowOp(Command.ADD, Flow(layout.OUTPUT, 1, Match(), (Controller(b""),))),  # os-ken: short
    FlowOp(Command.ADD, Flow(layout.OUTPUT, 1, Match((FieldMatch("eth_src", "02-00-00-00-00-01"),)),
                             (Drop(),))),  # a spelling os-ken reads its own way
    FlowOp(Command.ADD, Flow(layout.OUTPUT, 1, Match((FieldMatch("in_port", 1 << 32),)),
                             (Drop(),))),
    FlowOp(Command.DELETE, Flow("NoSuchTable", 1, Match(), (Drop(),))),
    FlowOp(Command.INSERT_BUCKETS, Flow(layout.OUTPUT, 1, Match(), (Drop(),))),
    GroupOp(Command.ADD, Group(5, (Bucket((Ct(1, True, ""),)),))),
    GroupOp(Command.ADD, Group(5, (Bucket((Output(1 << 32),)),))),
]


@pytest.mark.parametrize("op", DECLINED, ids=_name)
def test_what_it_declines_os_ken_writes(op: FlowOp | GroupOp) -> None:
    enc = OpEncoder(CONV)
    assert enc.fast.encode(op) is None and enc.fast.declined == 1
    try:
        reference = os_ken_bytes(op)
    except Exception as exc:  # noqa: BLE001 - os-ken refuses it: so must the switch
        with pytest.raises(type(exc) if isinstance(exc, ValueError | KeyError) else ConvertError):
            enc.encode(op, {5: 0})
        return
    assert enc.encode(op, {}) == reference


def test_cached_bytes_stay_right_past_the_cache_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastwire, "CACHE_LIMIT", 3)
    enc = FastEncoder(P)
    cfg = mc.BridgeConfig(mc.Mode.ENCAP, 1, "192.168.77.1", "02:77:00:00:00:01", 100, 200)
    for i in range(1, 40):
        group = mc.multicast_group(cfg, i, range(i % 7, i % 7 + 3), [f"10.0.0.{i % 5 + 1}"])
        assert_same(enc, GroupOp(Command.ADD, group))
        assert_same(enc, FlowOp(Command.ADD, mc.route_flow(cfg, f"239.0.0.{i}", i)))
        assert len(enc._buckets) <= 3 and len(enc._instructions) <= 3


def test_the_largest_message_fits_and_a_larger_one_is_refused() -> None:
    small, big = Bucket((Output(1),)), Bucket((SetField("eth_src", "02:00:00:00:00:01"),
                                               Output(1)))
    fits = GroupOp(Command.ADD, Group(8, (small,) * 2727 + (big,)))  # 65,512 bytes
    alone = assert_same(ENC, fits)
    assert len(alone) == 65512 <= MAX_BUNDLED_MESSAGE
    unbundled = GroupOp(Command.ADD, Group(8, (big,) * 1637 + (small,)))  # 65,528 bytes
    message = ENC.encode(unbundled)
    assert message is not None and len(message) == 65528 > MAX_BUNDLED_MESSAGE
    with pytest.raises(ValueError, match="does not fit a bundle"):
        bundle_add(1, 0, 1, message)
    with pytest.raises(ConvertError, match="65528 bytes does not fit a bundle"):
        OpEncoder(CONV).encode(unbundled, {})
    too_big = GroupOp(Command.ADD, Group(8, (big,) * 1638))  # 65,544: no message at all
    assert ENC.encode(too_big) is None  # declined: os-ken refuses it too
    with pytest.raises(ConvertError, match="too large"):
        OpEncoder(CONV).encode(too_big, {})
