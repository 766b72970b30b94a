"""The agent's OVSDB and OpenFlow adaptors and the reconciler against a real ovs-vswitchd.

Each test gets a private ovsdb-server + ovs-vswitchd in a fresh netns (``ovs_node``). The
controller listens on 127.0.0.1:6653 *inside* that netns (see ``oflab``), as the agent does.
"""

from __future__ import annotations

import queue
from collections.abc import Sequence

import pytest
from oflab import add_veth, attached_switch, ensure_br_int, is_igmp, packet_socket, receive
from os_ken.lib.packet import ethernet, igmp, ipv4, packet
from pyroute2 import IPRoute

from agent.flowsync.reconciler import Reconciler
from agent.flowsync.switch import PacketIn, SwitchOp
from agent.ovs.ovsdb import Ovsdb, OvsdbError, pod_external_ids
from agent.ovs.switch import OpenFlowError, OpenFlowSwitch
from pipeline import multicast as mc
from pipeline.cookies import Feature, round_of
from pipeline.diff import canonical
from pipeline.model import OFPP_TABLE, Flow, GroupAction, Match, Meter, Output, SwitchState
from pipeline.ops import Command, FlowOp, GroupOp
from tools.mclab import netns
from tools.mclab.ovsnode import OvsNode

pytestmark = pytest.mark.ovs

P = mc.pipeline()
NODE_IP, NODE_MAC = "192.168.77.1", "02:77:00:00:00:01"
GROUP_ID = 5


class Counting:
    """Wraps a switch to count apply() calls (bundles)."""

    def __init__(self, sw: OpenFlowSwitch) -> None:
        self.sw, self.bundles = sw, 0

    def apply(self, ops: Sequence[SwitchOp]) -> None:
        self.bundles += 1
        self.sw.apply(ops)

    def dump(self) -> SwitchState:
        return self.sw.dump()


def _cfg(round_: int) -> mc.BridgeConfig:
    return mc.BridgeConfig(mc.Mode.ENCAP, round_, NODE_IP, NODE_MAC, tunnel_port=100,
                           uplink_port=200)


def _load(rec: Reconciler, round_: int, ports: Sequence[int], remotes: Sequence[str]) -> None:
    cfg = _cfg(round_)
    rec.set(Feature.PIPELINE, "",
            SwitchState(tuple(mc.initial_flows(cfg)), (mc.query_group(ports),)))
    for p in ports:
        rec.set(Feature.POD, str(p), SwitchState(tuple(mc.pod_flows(cfg, p))))
    rec.set(Feature.GROUP, "239.1.1.1", SwitchState((mc.route_flow(cfg, "239.1.1.1", GROUP_ID),),
                                               (mc.multicast_group(cfg, GROUP_ID, ports,
                                                                   remotes),)))


def _snapshot(node: OvsNode) -> tuple[str, ...]:
    return (node.vsctl("get", "Open_vSwitch", ".", "next_cfg"), node.vsctl("show"),
            node.vsctl("--columns=_uuid,target,connection_mode", "list", "Controller"),
            node.vsctl("--columns=_uuid,name", "list", "Flow_Table"))


def test_ensure_is_idempotent(ovs_node: OvsNode, db: Ovsdb) -> None:
    with IPRoute(netns=ovs_node.netns, flags=0) as ipr:  # the node's uplink (no dummy module)
        ipr.link("add", ifname="eth0", kind="veth", peer={"ifname": "eth0-peer"})
        ipr.link("add", ifname="vp1", kind="veth", peer={"ifname": "vp1-peer"})

    def ensure() -> int:
        ensure_br_int(db)
        db.set_table_names("br-int", P)
        db.ensure_tunnel_port("br-int", "tun0", "vxlan", 100)
        db.ensure_uplink("br-phy", "netdev", "eth0", "br-int", "patch-phy", "patch-int", 200,
                         hwaddr=NODE_MAC)
        return db.add_pod_port("vp1", pod_external_ids("ns1", "pod1", "c0ffee"),
                               ofport_request=1)

    assert ensure() == 1
    ovs_node.ofctl("add-flow", "br-int", "table=0,priority=1,actions=drop")
    before = _snapshot(ovs_node)
    assert ensure() == 1
    assert _snapshot(ovs_node) == before  # not even next_cfg moved: no write at all
    assert "priority=1 actions=drop" in ovs_node.ofctl("dump-flows", "br-int")

    get = ovs_node.vsctl
    assert get("get", "Bridge", "br-int", "fail_mode").strip() == "secure"
    assert get("get", "Bridge", "br-int", "protocols").strip() == "[OpenFlow13, OpenFlow15]"
    assert get("get", "Bridge", "br-int", "other_config:disable-in-band").strip() == '"true"'
    assert get("get", "Bridge", "br-phy", "fail_mode").strip() == "[]"
    ctl = get("--columns=target,connection_mode", "list", "Controller")
    assert '"tcp:127.0.0.1:6653"' in ctl and "out-of-band" in ctl
    assert get("get", "Interface", "tun0", "ofport").strip() == "100"
    assert get("get", "Interface", "patch-phy", "ofport").strip() == "200"
    assert get("get", "Interface", "vp1", "external_ids:pod-name").strip() == "pod1"
    assert set(get("list-ports", "br-phy").split()) == {"eth0", "patch-int"}
    assert "actions=NORMAL" in ovs_node.ofctl("dump-flows", "br-phy")  # a plain L2 bridge
    ports = {p.name: p for p in db.list_ports("br-int")}
    assert {"tun0", "patch-phy", "vp1"} <= set(ports)
    assert ports["vp1"].external_ids["pod-namespace"] == "ns1" and ports["vp1"].ofport == 1

    assert db.get_round() is None
    db.set_round(7)
    assert db.get_round() == 7
    db.del_port("vp1")
    db.del_port("vp1")  # already gone: fine
    assert "vp1" not in get("list-ports", "br-int").split()
    with pytest.raises(OvsdbError, match="ensure tunnel port tun9 on br-nope: bridge br-nope"):
        db.ensure_tunnel_port("br-nope", "tun9", "vxlan", 101)


def test_initial_flows_in_one_bundle_read_back_equal(switch: OpenFlowSwitch,
                                                     ovs_node: OvsNode) -> None:
    counting = Counting(switch)
    rec = Reconciler(counting, P)
    _load(rec, 1, [1, 2], ["192.168.77.2", "192.168.77.3"])
    ops = rec.flush()
    assert len(ops) > 30 and counting.bundles == 1  # the first flush also read the switch
    assert canonical(switch.dump(), P) == canonical(rec.desired(), P)
    names = ovs_node.ofctl("dump-flows", "br-int", "--names")
    assert "table=MulticastRouting" in names and "goto_table:MulticastRouting" in names
    assert rec.flush() == [] and counting.bundles == 1
    # Meters cannot go in a bundle: they are applied around it.
    meter = Meter(1, rate_pps=100, burst=10)
    rec.set(Feature.PIPELINE, "meter", SwitchState(meters=(meter,)))
    rec.flush()
    assert switch.dump().meters == (meter,)
    rec.remove(Feature.PIPELINE, "meter")
    rec.flush()
    assert switch.dump().meters == ()


def test_restart_with_new_round_swaps_flows_and_adopts_groups(
        ovs_node: OvsNode, db: Ovsdb, fatal: list[BaseException]) -> None:
    with attached_switch(ovs_node, P, fatal, configure=lambda: ensure_br_int(db)) as sw:
        old = Reconciler(sw, P)
        _load(old, 1, [1, 2], ["192.168.77.2"])
        old.startup(1)
        assert {round_of(f.cookie) for f in sw.dump().flows} == {1}
    db.set_round(2)  # the restarted agent bumps the round before connecting
    with attached_switch(ovs_node, P, fatal) as sw:  # the bridge reconnects to it
        rec = Reconciler(sw, P)
        _load(rec, 2, [1], ["192.168.77.2", "192.168.77.3"])
        ops = rec.startup(2)
        state = sw.dump()
    assert {round_of(f.cookie) for f in state.flows} == {2}
    assert canonical(state, P) == canonical(rec.desired(), P)
    group_ops = [(op.command, op.group.group_id) for op in ops if isinstance(op, GroupOp)]
    assert (Command.MODIFY, GROUP_ID) in group_ops
    assert all(cmd is not Command.ADD for cmd, _ in group_ops)
    deleted = {op.flow.key for op in ops if isinstance(op, FlowOp) and op.command is Command.DELETE}
    assert not deleted & {f.key for f in state.flows}  # kept keys were replaced, never removed
    assert "192.168.77.3->tun_dst" in ovs_node.ofctl("dump-groups", "br-int")


def test_rejected_bundle_names_the_op_and_changes_nothing(switch: OpenFlowSwitch) -> None:
    rec = Reconciler(switch, P)
    _load(rec, 1, [1], [])
    rec.flush()
    before, installed = switch.dump(), rec.installed
    cfg = _cfg(1)
    bad = Flow(mc.layout.ROUTING, 200, Match.of(eth_type=0x800, ipv4_dst="239.9.9.9"),
               (GroupAction(999),), cfg.cookie(Feature.GROUP, 9))
    rec.set(Feature.POD, "2", SwitchState(tuple(mc.pod_flows(cfg, 2))))  # valid, same bundle
    rec.set(Feature.POD, "bad", SwitchState((bad,)))
    with pytest.raises(OpenFlowError) as err:
        rec.flush()
    text = str(err.value)
    assert "OFPBAC_BAD_OUT_GROUP" in text and "nw_dst=239.9.9.9" in text and "group:999" in text
    assert err.value.failed_ops == [FlowOp(Command.ADD, bad)]
    assert rec.installed == installed
    assert canonical(switch.dump(), P) == canonical(before, P)  # atomic: pod 2 not there
    # A failure only the commit finds (the group exists) is reported against its op too.
    dup = GroupOp(Command.ADD, mc.query_group([3]))
    pod2 = FlowOp(Command.ADD, mc.pod_flows(cfg, 2)[0])
    with pytest.raises(OpenFlowError) as err:
        switch.apply([pod2, dup])
    assert "OFPGMFC_GROUP_EXISTS" in str(err.value) and err.value.failed_ops == [dup]
    assert canonical(switch.dump(), P) == canonical(before, P)


def _igmp_frame(src_mac: str, src_ip: str, dst_ip: str, proto: object) -> bytes:
    b = [int(x) for x in dst_ip.split(".")]
    dst_mac = f"01:00:5e:{b[1] & 0x7F:02x}:{b[2]:02x}:{b[3]:02x}"
    pkt = packet.Packet()
    pkt.add_protocol(ethernet.ethernet(dst=dst_mac, src=src_mac, ethertype=0x0800))
    pkt.add_protocol(ipv4.ipv4(header_length=6, tos=0xC0, ttl=1, proto=2, src=src_ip,
                               dst=dst_ip, option=b"\x94\x04\x00\x00"))
    pkt.add_protocol(proto)
    pkt.serialize()
    return bytes(pkt.data)


def _pod(ovs_node: OvsNode, db: Ovsdb, pod_ns: str, ofport: int = 1) -> int:
    add_veth(ovs_node.netns, "vp1", pod_ns, "10.77.1.1")
    return db.add_pod_port("vp1", pod_external_ids("ns1", "pod1", "c1"), ofport_request=ofport)


def test_packet_out_query_reaches_the_pod(switch: OpenFlowSwitch, ovs_node: OvsNode, db: Ovsdb,
                                          netns_name: str) -> None:
    netns.create(netns_name)
    port = _pod(ovs_node, db, netns_name)
    sock = packet_socket(netns_name)
    query = _igmp_frame(NODE_MAC, NODE_IP, "224.0.0.1",
                        igmp.igmpv3_query(maxresp=100, address="0.0.0.0", qrv=2, qqic=125))
    switch.packet_out(query, (Output(port),))
    assert receive(sock, is_igmp)[:len(query)] == query
    # Through the pipeline: the query flow floods agent queries to every pod via the group.
    rec = Reconciler(switch, P)
    _load(rec, 1, [port], [])
    rec.flush()
    switch.packet_out(query, (Output(OFPP_TABLE),))
    assert receive(sock, is_igmp)[:len(query)] == query
    sock.close()


def test_igmp_from_a_pod_is_punted_with_userdata(switch: OpenFlowSwitch, ovs_node: OvsNode,
                                                 db: Ovsdb, netns_name: str) -> None:
    netns.create(netns_name)
    port = _pod(ovs_node, db, netns_name)
    got: queue.Queue[PacketIn] = queue.Queue()
    switch.on_packet_ins = lambda batch: [got.put(p) for p in batch]
    rec = Reconciler(switch, P)
    _load(rec, 1, [port], [])
    rec.flush()
    report = _igmp_frame("02:00:0a:4d:01:01", "10.77.1.1", "239.1.1.1",
                         igmp.igmp(msgtype=igmp.IGMP_TYPE_REPORT_V2, address="239.1.1.1"))
    sock = packet_socket(netns_name)
    sock.send(report)
    pin = got.get(timeout=5)
    while pin.data[:len(report)] != report:  # skip anything the pod kernel sent on its own
        pin = got.get(timeout=5)
    assert pin.in_port == port and pin.userdata == bytes([mc.PuntReason.IGMP_POD])
    assert pin.cookie == _cfg(1).cookie(Feature.IGMP, port) and pin.table_id == 0
    assert pin.tun_src is None
    sock.close()
