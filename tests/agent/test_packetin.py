"""agent.packetin: a packet-in reaches the handler of the feature its punt flow's cookie names."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from agent.flowsync.switch import PacketIn
from agent.packetin import PacketInRouter
from pipeline.cookies import Cookie, Feature


def _pin(cookie: int) -> PacketIn:
    return PacketIn(7, b"\x01", b"frame", None, cookie, 0, 1)


def test_routed_by_the_cookie_feature_whatever_the_round_and_object() -> None:
    router, got = PacketInRouter(), []
    router.register(Feature.IGMP, lambda b: got.append(("igmp", [p.cookie for p in b])))
    router.register(Feature.POLICY, lambda b: got.append(("policy", [p.cookie for p in b])))
    igmp = [Cookie(3, Feature.IGMP, 7).pack(), Cookie(3, Feature.IGMP, 8).pack()]
    policy = Cookie(9, Feature.POLICY, 1).pack()
    router([_pin(igmp[0]), _pin(policy), _pin(igmp[1])])
    assert got == [("igmp", igmp), ("policy", [policy])]  # each feature's share as one batch


def test_unrouted_packet_ins_are_counted_not_raised() -> None:
    router = PacketInRouter()
    router.register(Feature.IGMP, lambda p: pytest.fail("wrong handler"))
    before = REGISTRY.get_sample_value("kube_mcast_packet_ins_unrouted_total") or 0
    router([_pin(Cookie(1, Feature.POD, 7).pack()),  # a feature with no handler
            _pin(0xFF << 40)])  # not one of our features at all
    assert REGISTRY.get_sample_value("kube_mcast_packet_ins_unrouted_total") == before + 2


def test_one_handler_per_feature() -> None:
    router = PacketInRouter()
    router.register(Feature.IGMP, lambda p: None)
    with pytest.raises(ValueError, match="IGMP already have a handler"):
        router.register(Feature.IGMP, lambda p: None)
