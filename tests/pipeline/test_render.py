"""pipeline.render: canonical ovs-ofctl text, checked against golden files.

The forms asserted here were read off OVS 3.1 (``dump-flows --names --no-stats``); the real-OVS
test loads rendered text and compares the dump line by line. ``UPDATE_GOLDEN=1`` rewrites the
golden files instead of comparing.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest
from mcast_samples import render_state, sample_state

from pipeline import layout
from pipeline import multicast as mc
from pipeline.model import (
    OFPP_CONTROLLER,
    OFPP_IN_PORT,
    OFPP_LOCAL,
    Bucket,
    Controller,
    Ct,
    Drop,
    Flow,
    GotoTable,
    Group,
    GroupAction,
    GroupType,
    LoadReg,
    Match,
    Meter,
    Output,
    OutputReg,
    Resubmit,
    SetField,
    SetTunnelDst,
)
from pipeline.ops import Command, FlowOp, GroupOp, MeterOp
from pipeline.registers import IN_CLASS, OUT_KIND, OUT_PORT, RegField
from pipeline.render import (
    needs_openflow15,
    render_action,
    render_bundle,
    render_flow,
    render_group,
    render_match,
    render_meter,
    render_meter_mod,
)

GOLDEN = Path(__file__).parent / "golden"
P = layout.multicast_pipeline()


@pytest.mark.parametrize(("mode", "name"), [(mc.Mode.ENCAP, "initial_encap.txt"),
                                            (mc.Mode.NOENCAP, "initial_noencap.txt")])
def test_golden(mode: mc.Mode, name: str) -> None:
    flows, groups = render_state(sample_state(mode), P)
    text = "".join(line + "\n" for line in [*flows, "", *groups])
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(text)  # then compared like any run: the rewrite must round-trip
    want = path.read_text()
    if text != want:
        delta = "".join(difflib.unified_diff(want.splitlines(True), text.splitlines(True),
                                             f"golden/{name}", "rendered"))
        pytest.fail(f"rendered flows differ from golden/{name} "
                    f"(UPDATE_GOLDEN=1 to accept):\n{delta}", pytrace=False)


def _m(**kw: int | str) -> str:
    return render_match(Match.of(**kw), priority=10)


def test_match_shorthands_and_order() -> None:
    assert _m(eth_type=0x800) == "priority=10,ip"
    assert _m(eth_type=0x800, ip_proto=17, udp_dst=5000) == "priority=10,udp,tp_dst=5000"
    assert _m(eth_type=0x800, ip_proto=1) == "priority=10,icmp"
    # OVS 3.1 prints no igmp shorthand
    assert _m(eth_type=0x800, ip_proto=2, in_port=3) == "priority=10,ip,in_port=3,nw_proto=2"
    assert _m(eth_type=0x806) == "priority=10,arp"
    assert _m(eth_type=0x88CC) == "priority=10,dl_type=0x88cc"
    assert (render_match(Match.of((OUT_PORT, 1), eth_type=0x800, in_port=4, tunnel_id=5,
                                  ipv4_src="10.0.0.1", ipv4_dst="224.0.0.0/4",
                                  eth_src="02:00:00:00:00:0A"))
            == "ip,reg1=0x1,tun_id=0x5,in_port=4,dl_src=02:00:00:00:00:0a,"
               "nw_src=10.0.0.1,nw_dst=224.0.0.0/4")


def test_match_numbers_and_masks() -> None:
    assert render_match(Match.of((IN_CLASS, 0)), 0) == "priority=0,reg0=0/0xf"
    assert render_match(Match.of((OUT_PORT, 0))) == "reg1=0"
    assert render_match(Match.of(reg3=0xFFFFFFFF)) == "reg3=0xffffffff"
    assert render_match(Match.of(ipv4_dst="239.0.0.0/8")) == "nw_dst=239.0.0.0/8"
    assert render_match(Match.of(tun_ipv4_dst="1.2.3.4")) == "tun_dst=1.2.3.4"
    assert render_match(Match.of(in_port=OFPP_CONTROLLER)) == "in_port=CONTROLLER"
    assert render_match(Match.of(in_port=OFPP_LOCAL)) == "in_port=LOCAL"
    assert render_match(Match.of(in_port=1), port_names={1: "p1"}) == "in_port=p1"


def _a(action: object, port_names: dict[int, str] | None = None) -> str:
    return render_action(action, P, port_names)  # type: ignore[arg-type]


def test_actions() -> None:
    assert _a(Output(3)) == "output:3"
    assert _a(Output(3), {3: "p3"}) == "output:p3"
    assert _a(Output(OFPP_LOCAL)) == "LOCAL"
    assert _a(Output(OFPP_IN_PORT)) == "IN_PORT"
    assert _a(Output(OFPP_CONTROLLER)) == "CONTROLLER:65535"
    assert _a(OutputReg(OUT_PORT)) == "output:NXM_NX_REG1[]"
    assert _a(GroupAction(9)) == "group:9"
    assert _a(Controller(b"\x01")) == "controller(userdata=01)"
    assert _a(Controller(b"\x01\x02", max_len=128)) == "controller(max_len=128,userdata=01.02)"
    assert _a(Controller(b"")) == "CONTROLLER:65535"
    assert _a(Controller(b"", max_len=100)) == "CONTROLLER:100"
    assert _a(LoadReg(OUT_KIND, 0)) == "load:0->NXM_NX_REG0[4..7]"
    assert _a(LoadReg(IN_CLASS, 2)) == "load:0x2->NXM_NX_REG0[0..3]"
    assert _a(LoadReg(RegField("b", 0, 5, 5), 1)) == "load:0x1->NXM_NX_REG0[5]"
    assert _a(LoadReg(OUT_PORT, 0)) == "set_field:0->reg1"
    assert _a(LoadReg(OUT_PORT, 7)) == "set_field:0x7->reg1"
    assert _a(SetTunnelDst("192.168.1.3")) == "set_field:192.168.1.3->tun_dst"
    assert _a(SetField("eth_src", "02:00:00:00:00:AA")) == "set_field:02:00:00:00:00:aa->eth_src"
    assert _a(SetField("ipv4_src", "10.0.0.1")) == "set_field:10.0.0.1->ip_src"
    assert _a(SetField("udp_dst", 5000)) == "set_field:5000->udp_dst"
    assert _a(SetField("tunnel_id", 0)) == "set_field:0->tun_id"
    assert _a(Resubmit(layout.OUTPUT)) == "resubmit(,MulticastOutput)"
    assert _a(GotoTable(layout.ROUTING)) == "goto_table:MulticastRouting"
    assert _a(Ct(65520, True, "192.168.1.1")) == "ct(commit,zone=65520,nat(src=192.168.1.1))"
    assert _a(Ct(5, commit=False)) == "ct(zone=5)"
    assert _a(Ct(0, commit=False)) == "ct()"
    assert _a(Drop()) == "drop"


def test_unknown_table_or_field_is_refused() -> None:
    with pytest.raises(ValueError):
        _a(GotoTable("Nope"))
    with pytest.raises(ValueError):
        _a(SetField("ip_proto", 17))


def test_flow_line() -> None:
    f = Flow(layout.OUTPUT, 0x8000, Match(), (Drop(),))
    assert render_flow(f, P) == "table=MulticastOutput, actions=drop"
    f = Flow(layout.CLASSIFIER, 0, Match(), (Drop(),), cookie=0x1F)
    assert render_flow(f, P) == "cookie=0x1f, table=Classifier, priority=0 actions=drop"
    f = Flow(layout.ROUTING, 200, Match.of(eth_type=0x800, ipv4_dst="239.1.1.1"),
             (GroupAction(5),))
    assert render_flow(f, P) == "table=MulticastRouting, priority=200,ip,nw_dst=239.1.1.1 " \
                                "actions=group:5"


def test_group_line() -> None:
    g = Group(7, (Bucket((Output(1),)), Bucket(())), GroupType.SELECT)
    assert render_group(g, P) == "group_id=7,type=select,bucket=actions=output:1," \
                                 "bucket=actions=drop"
    assert render_group(Group(8, ()), P) == "group_id=8,type=all"


def test_meter() -> None:
    assert render_meter(Meter(1, 100)) == "meter=1 pktps bands=\ntype=drop rate=100"
    assert render_meter(Meter(2, 100, 50)) == \
        "meter=2 pktps burst bands=\ntype=drop rate=100 burst_size=50"
    assert render_meter_mod(Meter(2, 100, 50)) == \
        "meter=2,pktps,burst,band=type=drop,rate=100,burst_size=50"


def test_bundle_lines() -> None:
    f = Flow(layout.ROUTING, 200, Match.of(eth_type=0x800, ipv4_dst="239.1.1.1"),
             (GroupAction(5),), cookie=0x10)
    g = Group(5, (Bucket((Output(1),)), Bucket((Output(2),))))
    more = Group(5, (Bucket((Output(3),)), Bucket((Output(4),))))
    ops = [
        GroupOp(Command.ADD, g),
        GroupOp(Command.INSERT_BUCKETS, more),
        GroupOp(Command.INSERT_BUCKETS, Group(5, (Bucket((Output(6),)),))),
        GroupOp(Command.MODIFY, g),
        FlowOp(Command.ADD, f),
        FlowOp(Command.MODIFY, f),
        FlowOp(Command.DELETE, f),
        GroupOp(Command.DELETE, g),
    ]
    assert render_bundle(ops, P, {1: "p1"}).splitlines() == [
        "group add group_id=5,type=all,bucket=actions=output:p1,bucket=actions=output:2",
        "group insert_bucket group_id=5,command_bucket_id=last,"
        "bucket=bucket_id:2,actions=output:3,bucket=bucket_id:3,actions=output:4",
        "group insert_bucket group_id=5,command_bucket_id=last,bucket=bucket_id:4,"
        "actions=output:6",
        "group modify group_id=5,type=all,bucket=actions=output:p1,bucket=actions=output:2",
        "flow add cookie=0x10, table=MulticastRouting, priority=200,ip,nw_dst=239.1.1.1 "
        "actions=group:5",
        "flow modify_strict table=MulticastRouting, priority=200,ip,nw_dst=239.1.1.1 "
        "actions=group:5",
        "flow delete_strict table=MulticastRouting, priority=200,ip,nw_dst=239.1.1.1",
        "group delete group_id=5",
    ]
    assert needs_openflow15(ops)
    assert not needs_openflow15(ops[3:])


def test_bundle_refuses_meters_and_orphan_inserts() -> None:
    with pytest.raises(ValueError, match="meter"):
        render_bundle([MeterOp(Command.ADD, Meter(1, 10))], P)
    with pytest.raises(ValueError, match="insert_buckets"):
        render_bundle([GroupOp(Command.INSERT_BUCKETS, Group(5, (Bucket((Output(1),)),)))], P)
