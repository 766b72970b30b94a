"""pipeline.switchmodel: OVS's answer to each flow, group and meter mod, and its errors.

The same rules hold for ``diff.apply_ops`` and the fake table, which both use this model; the
cookie rules were checked on OVS 3.1 with ``ovs-ofctl -O OpenFlow15``.
"""

from __future__ import annotations

import pytest

from pipeline import layout
from pipeline.diff import DiffError
from pipeline.fake_table import FakeSwitch, FakeTableError
from pipeline.model import (
    Bucket,
    Drop,
    Flow,
    Group,
    GroupAction,
    GroupType,
    Match,
    Meter,
    Output,
    SwitchState,
)
from pipeline.ops import Command, FlowOp, GroupOp, MeterOp
from pipeline.switchmodel import SwitchError, SwitchModel

ROUTE = layout.ROUTING


def _route(gid: int, cookie: int = 1, ip: str = "239.1.1.1") -> Flow:
    return Flow(ROUTE, 200, Match.of(eth_type=0x800, ipv4_dst=ip), (GroupAction(gid),), cookie)


def _group(gid: int, *ports: int) -> Group:
    return Group(gid, tuple(Bucket((Output(p),)) for p in ports))


def _switch() -> SwitchModel:
    return SwitchModel(SwitchState((_route(1),), (_group(1, 1), _group(2, 2))))


def test_one_error_type_under_every_name() -> None:
    assert DiffError is SwitchError is FakeTableError
    with pytest.raises(SwitchError) as err:
        _switch().add_group(_group(1))
    assert err.value.ofp_error == "OFPGMFC_GROUP_EXISTS" and "group 1 exists" in str(err.value)


def test_flow_add_replaces_and_modify_keeps_the_cookie() -> None:
    sw = _switch()
    sw.add_flow(_route(2, cookie=7))  # same key: replaced, new cookie
    assert sw.flows() == [_route(2, cookie=7)]
    sw.modify_flow(_route(1, cookie=9))  # new actions, old cookie
    assert sw.flows() == [_route(1, cookie=7)]
    sw.modify_flow(_route(1, ip="239.9.9.9"))  # missing: nothing, not an add
    sw.delete_flow(_route(1, ip="239.9.9.9"))  # missing: no error
    assert sw.flows() == [_route(1, cookie=7)]
    sw.delete_flow(_route(2, cookie=0))  # strict: by key, whatever the actions and cookie
    assert sw.flows() == []


def test_groups() -> None:
    sw = _switch()
    with pytest.raises(SwitchError, match="OFPGMFC_UNKNOWN_GROUP"):
        sw.modify_group(_group(3, 1))
    with pytest.raises(SwitchError, match="OFPGMFC_UNKNOWN_GROUP"):
        sw.insert_buckets(_group(3, 1))
    sw.apply([GroupOp(Command.INSERT_BUCKETS, Group(2, (Bucket((Output(3),)),), GroupType.SELECT))])
    assert sw.group(2) == _group(2, 2, 3)  # appended; the group keeps its type
    sw.modify_group(_group(1, 5))
    assert sw.group(1) == _group(1, 5) and sw.flows() == [_route(1)]
    sw.delete_group(1)  # takes the flow that outputs to it
    assert sw.groups() == {2: _group(2, 2, 3)} and sw.flows() == []
    sw.delete_group(1)  # unknown: no error


def test_missing_groups_are_refused_and_change_nothing() -> None:
    sw = _switch()
    with pytest.raises(SwitchError, match=r"missing groups \[8, 9\].*OFPBAC_BAD_OUT_GROUP"):
        sw.add_flow(Flow(ROUTE, 5, Match(), (GroupAction(9), GroupAction(8))))
    with pytest.raises(SwitchError, match="OFPBAC_BAD_OUT_GROUP"):
        sw.add_group(Group(3, (Bucket((GroupAction(9),)),)))
    with pytest.raises(SwitchError, match="OFPBAC_BAD_OUT_GROUP"):
        sw.modify_flow(_route(9))
    assert sw.flows() == [_route(1)] and set(sw.groups()) == {1, 2}


def test_meters() -> None:
    sw = SwitchModel()
    sw.apply([MeterOp(Command.ADD, Meter(1, 10))])
    with pytest.raises(SwitchError, match="OFPMMFC_METER_EXISTS"):
        sw.add_meter(Meter(1, 20))
    with pytest.raises(SwitchError, match="OFPMMFC_UNKNOWN_METER"):
        sw.modify_meter(Meter(2, 20))
    sw.modify_meter(Meter(1, 20))
    sw.delete_meter(2)
    assert sw.meters() == {1: Meter(1, 20)}


def test_a_state_is_taken_as_given_but_must_be_consistent() -> None:
    # A dump or one owner's part of the desired state may name groups kept elsewhere.
    assert SwitchModel(SwitchState((_route(9),))).flows() == [_route(9)]
    assert SwitchModel(SwitchState((_route(1), _route(1)))).flows() == [_route(1)]
    with pytest.raises(SwitchError, match="share key"):
        SwitchModel(SwitchState((_route(1), _route(2))))
    with pytest.raises(SwitchError, match="two different meters"):
        SwitchModel(SwitchState(meters=(Meter(1, 1), Meter(1, 2))))
    with pytest.raises(SwitchError, match="not a flow command"):
        SwitchModel().apply([FlowOp(Command.INSERT_BUCKETS, _route(1))])


def test_the_fake_table_adds_its_checks_and_counters() -> None:
    sw = FakeSwitch(layout.multicast_pipeline(), groups=(_group(1, 1),))
    flow = Flow(layout.CLASSIFIER, 5, Match.of(in_port=1), (Drop(),))
    sw.apply([FlowOp(Command.ADD, flow)])
    with pytest.raises(FakeTableError, match="OFPBMC_BAD_PREREQ"):
        sw.add_flow(Flow(layout.CLASSIFIER, 5, Match.of(ip_proto=2), (Drop(),)))
    assert sw.n_packets(flow) == 0 and sw.group_n_packets(1) == 0
    sw.delete_flow(flow)
    with pytest.raises(KeyError):
        sw.n_packets(flow)
