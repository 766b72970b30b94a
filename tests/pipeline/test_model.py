"""pipeline.model: match normalisation, action and flow validation."""

from __future__ import annotations

import pytest

from pipeline.model import (
    Bucket,
    Drop,
    FieldMatch,
    Flow,
    FlowError,
    GotoTable,
    Group,
    GroupType,
    LoadReg,
    Match,
    MatchError,
    Meter,
    Output,
    SetField,
    SetTunnelDst,
    SwitchState,
)
from pipeline.registers import IN_CLASS, OUT_KIND, OUT_PORT, OutKind, PortClass


def test_cidr_becomes_network_and_netmask() -> None:
    m = Match.of(ipv4_dst="224.0.0.0/4")
    assert m.get("ipv4_dst") == FieldMatch("ipv4_dst", "224.0.0.0", "240.0.0.0")


def test_slash_32_is_exact() -> None:
    assert Match.of(ipv4_src="10.0.0.1/32") == Match.of(ipv4_src="10.0.0.1")
    assert Match.of(ipv4_src="10.0.0.1").get("ipv4_src") == FieldMatch("ipv4_src", "10.0.0.1")


def test_cidr_with_host_bits_is_refused() -> None:
    with pytest.raises(ValueError):
        Match.of(ipv4_dst="239.1.1.1/4")


def test_bad_ip_is_refused() -> None:
    with pytest.raises(ValueError):
        Match.of(ipv4_dst="239.1.1.300")


def test_mac_is_lowercased() -> None:
    assert Match.of(eth_src="02:AA:00:00:00:01").get("eth_src").value == "02:aa:00:00:00:01"


def test_field_order_does_not_matter() -> None:
    a = Match.of(in_port=1, eth_type=0x800, ip_proto=2)
    b = Match.of(ip_proto=2, eth_type=0x800, in_port=1)
    assert a == b and hash(a) == hash(b)
    assert [f.name for f in a.fields] == sorted(f.name for f in a.fields)


def test_unknown_field_is_refused() -> None:
    with pytest.raises(MatchError, match="unknown match field"):
        Match.of(vlan_vid=5)


@pytest.mark.parametrize("kw", [{"eth_type": 0x10000}, {"ip_proto": 256}, {"in_port": -1},
                                {"udp_dst": "53"}])
def test_value_must_fit_the_field(kw: dict) -> None:
    with pytest.raises(MatchError):
        Match.of(**kw)


def test_register_fields_sharing_a_register_merge() -> None:
    m = Match.of((IN_CLASS, PortClass.POD), (OUT_KIND, OutKind.REMOTE))
    assert m.get("reg0") == FieldMatch("reg0", 0x21, 0xFF)


def test_full_register_mask_is_dropped() -> None:
    assert Match.of((OUT_PORT, 7)).get("reg1") == FieldMatch("reg1", 7)


def test_register_value_must_fit() -> None:
    with pytest.raises(ValueError):
        Match.of((IN_CLASS, 16))


def test_register_given_twice_is_refused() -> None:
    with pytest.raises(MatchError, match="overlaps"):
        Match.of((IN_CLASS, 1), (IN_CLASS, 2))
    with pytest.raises(MatchError, match="both raw"):
        Match.of((IN_CLASS, 1), reg0=1)


def test_empty_match() -> None:
    assert Match.of() == Match()
    assert Match().names() == frozenset()


def test_load_reg_stores_plain_int_and_checks_width() -> None:
    a = LoadReg(IN_CLASS, PortClass.TUNNEL)
    assert type(a.value) is int and a.value == 2
    with pytest.raises(ValueError):
        LoadReg(OUT_KIND, 16)


def test_set_field_and_tunnel_dst_are_checked() -> None:
    SetField("eth_src", "02:00:00:00:00:01")
    with pytest.raises(MatchError):
        SetField("vlan_vid", 1)
    with pytest.raises(ValueError):
        SetTunnelDst("not-an-ip")


def test_flow_key_and_errors() -> None:
    m = Match.of(eth_type=0x800)
    f = Flow("T", 10, m, (Output(1),), cookie=5)
    assert f.key == ("T", 10, m)
    with pytest.raises(FlowError):
        Flow("T", 0x10000, m, (Output(1),))
    with pytest.raises(FlowError, match="no actions"):
        Flow("T", 1, m, ())
    with pytest.raises(FlowError, match="drop"):
        Flow("T", 1, m, (Drop(), Output(1)))
    with pytest.raises(FlowError, match="last"):
        Flow("T", 1, m, (GotoTable("U"), Output(1)))


def test_bucket_refuses_goto() -> None:
    with pytest.raises(FlowError):
        Bucket((GotoTable("U"),))


def test_group_and_meter_ranges() -> None:
    assert Group(1, ()).type is GroupType.ALL
    for bad in (0, 0xFFFFFFFF):
        with pytest.raises(FlowError):
            Group(bad, ())
    with pytest.raises(FlowError):
        Meter(0, 10)
    with pytest.raises(FlowError):
        Meter(1, 0)


def test_desired_state_defaults_are_empty() -> None:
    s = SwitchState()
    assert s.flows == s.groups == s.meters == ()
