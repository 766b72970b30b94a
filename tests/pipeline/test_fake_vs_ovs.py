"""The fake table checked against real OVS: same flows, same packets, same outcome.

For each mode a private ovs-vswitchd (netdev datapath, ``ovs_node`` fixture) gets a br-int with
real ports at the walks' ofports (internal ports for pods 1-4 and the uplink 200, a flow-based
VXLAN port 100 in encap), named tables, and the rendered flows and groups of walks.node(mode).
Every packet of walks.packets() is then traced with ``ofproto/trace`` and reduced (ovstrace.py)
to the fake table's Outcome: the multiset of (ofport, tun_dst, ipv4_src, eth_src) copies that
leave the datapath plus the packet-in userdata. They must be equal; if not, the fake is wrong.

We compare at the datapath level, so tunnel copies must really be encapsulated: in encap the bed
adds br-phy (node IP, plus a port so the outer packet has somewhere to go) and seeds the tunnel
neighbours with ``tnl/arp/set``; without that OVS emits no ``tnl_push`` and the copy vanishes.
A second test feeds both switches deliberately odd buckets to pin down OVS's group semantics.
"""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
from ovstrace import (
    OvsTrace,
    packet_bytes,
    parse_datapath_actions,
    parse_dpif_show,
    parse_flow_stats,
    parse_group_stats,
    parse_meter_stats,
    parse_trace,
    trace_flow,
)
from policy_samples import walk_packets, walk_rules
from pyroute2 import IPRoute
from walks import (
    G1,
    NODE_B,
    NODE_C,
    NODE_IP,
    NODE_MAC,
    PODS,
    TUNNEL,
    UPLINK,
    NodeState,
    from_pod,
    node,
    packets,
)

from pipeline import layout, oversize, policy
from pipeline import multicast as mc
from pipeline.fake_table import FakeSwitch, Packet
from pipeline.model import (
    ETH_TYPE_IP,
    OFPP_CONTROLLER,
    Bucket,
    Controller,
    Ct,
    Flow,
    Group,
    GroupAction,
    LoadReg,
    Match,
    Meter,
    Output,
    OutputReg,
    Resubmit,
    SetField,
    SetTunnelDst,
)
from pipeline.multicast import Mode
from pipeline.registers import OUT_PORT
from pipeline.render import render_flow, render_group, render_meter_mod
from tools.mclab.ovsnode import OvsNode

BR = "br-int"
PHY_PREFIX = 24


def _build_bridge(n: OvsNode, encap: bool) -> None:
    """br-int with fixed ofports and named tables; in encap also br-phy for the underlay."""
    args = ["add-br", BR, "--", "set", "bridge", BR, "datapath_type=netdev", "fail_mode=secure",
            "protocols=OpenFlow13"]
    ports = [(f"pod{p}", p) for p in PODS] + [("uplink", UPLINK)]
    for name, ofport in ports:
        args += ["--", "add-port", BR, name, "--", "set", "interface", name, "type=internal",
                 f"ofport_request={ofport}"]
    if encap:
        args += ["--", "add-port", BR, "vxlan0", "--", "set", "interface", "vxlan0",
                 "type=vxlan", "options:remote_ip=flow", "options:key=flow",
                 f"ofport_request={TUNNEL}"]
    pipe = mc.pipeline()
    for i, name in enumerate(pipe.names):
        args += ["--", f"--id=@t{i}", "create", "Flow_Table", f"name={name}",
                 "--", "set", "bridge", BR, f"flow_tables:{pipe.table_id(name)}=@t{i}"]
    n.vsctl(*args)
    if not encap:
        return
    n.vsctl("add-br", "br-phy", "--", "set", "bridge", "br-phy", "datapath_type=netdev",
            f"other_config:hwaddr={NODE_MAC}", "--", "add-port", "br-phy", "phy0",
            "--", "set", "interface", "phy0", "type=internal")
    with IPRoute(netns=n.netns, flags=0) as ipr:
        for dev in ("br-phy", "phy0"):
            idx = ipr.link_lookup(ifname=dev)[0]
            ipr.link("set", index=idx, state="up")
        ipr.addr("add", index=ipr.link_lookup(ifname="br-phy")[0], address=NODE_IP,
                 prefixlen=PHY_PREFIX)
    # vswitchd learns the netns routes by netlink; wait until it can route to the peers.
    deadline = time.monotonic() + 10
    while f"192.168.77.0/{PHY_PREFIX} dev br-phy" not in n.appctl("ovs/route/show"):
        assert time.monotonic() < deadline, n.appctl("ovs/route/show")
        time.sleep(0.05)
    for i, ip in enumerate((NODE_B, NODE_C), start=2):
        n.appctl("tnl/arp/set", "br-phy", ip, f"02:77:00:00:00:{i:02x}")


def _load(n: OvsNode, flows: tuple[Flow, ...], groups: tuple[Group, ...],
          meters: tuple[Meter, ...] = ()) -> None:
    pipe = mc.pipeline()
    for m in meters:  # meters first too: a flow naming a missing meter is refused
        n.ofctl("add-meter", BR, render_meter_mod(m))
    gfile, ffile = n.rundir / "groups.txt", n.rundir / "flows.txt"
    gfile.write_text("".join(render_group(g, pipe) + "\n" for g in groups))
    ffile.write_text("".join(render_flow(f, pipe) + "\n" for f in flows))
    n.ofctl("add-groups", BR, str(gfile))  # groups first: flows may only name existing groups
    n.ofctl("--bundle", "add-flows", BR, str(ffile))
    assert len(n.ofctl("dump-flows", BR).splitlines()) - 1 == len(flows)


def _ovs_trace(n: OvsNode, ports: dict[int, int], p: Packet) -> OvsTrace:
    if p.in_port == OFPP_CONTROLLER:  # a packet-out whose action list is output:TABLE
        text = n.appctl("ofproto/trace-packet-out", BR, trace_flow(p), "output:TABLE")
    else:
        text = n.appctl("ofproto/trace", BR, trace_flow(p))
    return parse_trace(text, ports, p)


def _compare(n: OvsNode, sw: FakeSwitch, cases: dict[str, Packet]) -> None:
    ports = parse_dpif_show(n.appctl("dpif/show"), BR)
    bad = []
    for name, p in cases.items():
        fake, real = sw.process(p), _ovs_trace(n, ports, p)
        if fake.outcome() != real.outcome() or len(fake.suppressed) != real.suppressed:
            bad.append(f"--- {name}\nfake: {fake.outcome()} suppressed={len(fake.suppressed)}\n"
                       f"ovs:  {real.outcome()} suppressed={real.suppressed}\n"
                       f"{fake.explain()}\n{real.text}")
    assert not bad, "\n".join(bad)


@pytest.mark.ovs
@pytest.mark.parametrize("mode", [Mode.ENCAP, Mode.NOENCAP])
def test_walks_agree_with_ovs(ovs_node: OvsNode, mode: Mode) -> None:
    state: NodeState = node(mode)
    _build_bridge(ovs_node, mode is Mode.ENCAP)
    _load(ovs_node, state.flows, state.groups, state.meters)
    _compare(ovs_node, state.switch(), packets())


PORT_NAMES = {**{p: f"pod{p}" for p in PODS}, UPLINK: "uplink", TUNNEL: "vxlan0"}


@pytest.mark.ovs
@pytest.mark.parametrize("mode", [Mode.ENCAP, Mode.NOENCAP])
def test_counters_agree_with_ovs(ovs_node: OvsNode, mode: Mode) -> None:
    """Packet-outs (in_port = a pod or the uplink, actions=TABLE) credit flow, group and meter
    counters like received packets do; every count must equal the fake table's, including the
    flows OVS credits for both outcomes of a size check.

    This includes the member sender's own copy, which must not reach its ingress metric."""
    state = node(mode)
    _build_bridge(ovs_node, mode is Mode.ENCAP)
    _load(ovs_node, state.flows, state.groups, state.meters)
    sw = state.switch()
    sent = [p for p in packets().values() if p.in_port in (*PODS, UPLINK)]
    for p in sent + sent[:3]:  # some packets twice, so counts are not all 0/1
        sw.process(p)
        ovs_node.ofctl("packet-out", BR,
                       f"in_port={p.in_port},packet={packet_bytes(p).hex()},actions=table")
    pipe = mc.pipeline()
    real = parse_flow_stats(ovs_node.ofctl("dump-flows", "--names", BR))
    fake = {render_flow(f, pipe, PORT_NAMES): sw.n_packets(f) for f in state.flows}
    assert real == fake
    real_groups = parse_group_stats(ovs_node.ofctl("dump-group-stats", BR))
    assert real_groups == {gid: sw.group_n_packets(gid) for gid in sw.groups()}
    assert sum(fake.values()) > len(sent)  # not a comparison of zeros
    # Meters count in the datapath: only what took their way (oversized frames, IGMP punts).
    real_meters = parse_meter_stats(ovs_node.ofctl("meter-stats", BR))
    assert real_meters == {mid: sw.meter_n_packets(mid) for mid in sw.meters()}
    assert sw.meter_n_packets(oversize.count_meter_id(1)) > 0

    # pod 2 sends to its own group: no copy comes back, and its inbound metric stays put
    # (the pipeline's self-loop drop hits first; OVS itself would credit the metric and only
    # then drop the output to in_port).
    ingress2 = render_flow(state.flow(layout.INGRESS_METRIC, **{OUT_PORT.oxm: 2}), pipe,
                           PORT_NAMES)
    p = from_pod(2, G1)
    ovs_node.ofctl("packet-out", BR,
                   f"in_port={p.in_port},packet={packet_bytes(p).hex()},actions=table")
    after = parse_flow_stats(ovs_node.ofctl("dump-flows", "--names", BR))
    assert after[ingress2] == real[ingress2]
    sw.process(p)
    assert after == {render_flow(f, pipe, PORT_NAMES): sw.n_packets(f) for f in state.flows}


@pytest.mark.ovs
@pytest.mark.parametrize("mode", [Mode.ENCAP, Mode.NOENCAP])
def test_policy_conjunctions_agree_with_ovs(ovs_node: OvsNode, mode: Mode) -> None:
    """Multicast policy rules (conjunctive flows) on the walks' node: allow, drop, no rule,
    overlapping rules at two priorities, a higher rule partly matched above a lower one that
    matches whole (policy_samples.walk_packets names each case). Traces must agree, and so
    must every flow's count after packet-outs: OVS credits the conj_id flow a lookup runs,
    never a conjunctive flow, and the egress rules once per outcome of the size check."""
    base = node(mode)
    state = replace(base, flows=base.flows + tuple(policy.policy_flows(base.cfg, walk_rules())))
    _build_bridge(ovs_node, mode is Mode.ENCAP)
    _load(ovs_node, state.flows, state.groups, state.meters)
    sw = state.switch()
    cases = walk_packets()
    _compare(ovs_node, sw, cases)
    sw.reset_counters()
    sent = [p for p in cases.values() if p.in_port in (*PODS, UPLINK)]
    for p in sent:
        sw.process(p)
        ovs_node.ofctl("packet-out", BR,
                       f"in_port={p.in_port},packet={packet_bytes(p).hex()},actions=table")
    pipe = mc.pipeline()
    real = parse_flow_stats(ovs_node.ofctl("dump-flows", "--names", BR))
    assert real == {render_flow(f, pipe, PORT_NAMES): sw.n_packets(f) for f in state.flows}
    stats = {cid: sw.n_packets(f) for f in state.flows
             if (cid := policy.rule_stats_of(f)) is not None}
    # every rule was hit but the one for tunnel packets (traced above, not sent: no tunnel)
    assert sorted(stats) == sorted(r.conj_id for r in walk_rules())
    assert [cid for cid, n in stats.items() if not n] == [21]


def _quirks() -> tuple[tuple[Flow, ...], tuple[Group, ...]]:
    """Buckets OVS rewrites (action sets), NAT leaking across buckets, in_port inside a group."""
    cls_match = Match.of(in_port=1, eth_type=ETH_TYPE_IP)
    flows = (
        Flow(layout.CLASSIFIER, 100, cls_match, (GroupAction(10),)),
        Flow(layout.ROUTING, 100, Match.of(eth_type=ETH_TYPE_IP),
             (Ct(zone=9, nat_src=NODE_IP), SetField("eth_src", NODE_MAC), Output(UPLINK))),
    )
    buckets = (
        (Output(2), SetField("eth_src", "02:00:00:00:00:99"), Output(3)),  # only the last output
        (LoadReg(OUT_PORT, 2), OutputReg(OUT_PORT)),  # no final action: nothing at all
        (Controller(b"\x05"),),  # not allowed in an action set: dropped
        (Output(1),),  # to in_port: dropped
        (Resubmit(layout.ROUTING),),  # SNAT, then every later copy carries the node source
        (SetTunnelDst(NODE_B), Output(TUNNEL)),
        (Output(4),),
        (Ct(zone=9, nat_src="192.168.77.50"), Output(2)),  # output wins over ct
    )
    return flows, (Group(10, tuple(Bucket(b) for b in buckets)),)


@pytest.mark.ovs
def test_group_quirks_agree_with_ovs(ovs_node: OvsNode) -> None:
    flows, groups = _quirks()
    _build_bridge(ovs_node, encap=True)
    _load(ovs_node, flows, groups)
    sw = FakeSwitch(mc.pipeline(), flows, groups, tunnel_ports={TUNNEL}, strict_buckets=False)
    t = sw.process(from_pod(1, G1))
    assert [(d.port, d.packet.ipv4_src) for d in t.deliveries] == [
        (3, "10.10.1.1"), (UPLINK, NODE_IP), (TUNNEL, NODE_IP), (4, NODE_IP), (2, NODE_IP),
    ], t.explain()
    _compare(ovs_node, sw, {"pod1 through odd buckets": from_pod(1, G1)})


# -- the parser on recorded OVS 3.1 output (no OVS needed) ------------------------------------

_DPIF = """netdev@ovs-netdev: hit:0 missed:2
  br-int:
    br-int 65534/6: (tap)
    p1 1/4: (tap)
    p2 2/1: (tap)
    vxlan0 100/3: (vxlan: key=flow, remote_ip=flow)
  br-phy:
    br-phy 65534/7: (tap)
"""
_ACTIONS = (
    "ct(commit,zone=65520,nat(src=192.168.77.1)),set(eth(src=02:77:00:00:00:01)),1,"
    "set(eth(src=02:00:00:00:00:01)),clone(tnl_push(tnl_port(3),header(size=50,type=4,"
    "eth(dst=02:77:00:00:00:02,src=02:77:00:00:00:01,dl_type=0x0800),ipv4(src=192.168.77.1,"
    "dst=192.168.77.2,proto=17,tos=0,ttl=64,frag=0x4000),udp(src=0,dst=4789,csum=0x0),"
    "vxlan(flags=0x8000000,vni=0x0)),out_port(7)),8),4,userspace(pid=0,controller(reason=1,"
    "dont_send=1,continuation=0,recirc_id=1,rule_cookie=0,controller_id=0,max_len=65535))"
)


def test_parser_on_recorded_trace() -> None:
    ports = parse_dpif_show(_DPIF, BR)
    assert ports == {6: 65534, 4: 1, 1: 2, 3: 100}
    p = from_pod(2, G1)
    r = parse_datapath_actions(_ACTIONS, ports, p)
    assert r.deliveries == [
        (2, None, NODE_IP, NODE_MAC),
        (100, NODE_B, NODE_IP, "02:00:00:00:00:01"),
        (1, None, NODE_IP, "02:00:00:00:00:01"),
    ]
    assert r.packet_ins == 1
    text = f"    controller(userdata=01)\n >> skipping output to input port\n" \
           f"Datapath actions: {_ACTIONS}\n"
    t = parse_trace(text, ports, p)
    assert t.userdata == (b"\x01",) and t.suppressed == 1
    assert "nw_proto=2" in trace_flow(from_pod(1, G1, 2))
    assert trace_flow(from_pod(1, G1)).startswith("in_port=1,udp,")
