"""agent.multicast.forwarding: a group's switch state holds its members' counting flows."""

from __future__ import annotations

from agent.multicast import forwarding as fw
from agent.multicast.igmp.membership import ANY_SOURCE, FilterMode, SourceFilter
from pipeline import layout
from pipeline import multicast as mc
from pipeline.cookies import Cookie, Feature
from pipeline.readback import pod_group_of

CFG = mc.BridgeConfig(mc.Mode.ENCAP, 1, "192.168.77.1", "02:77:00:00:00:01", tunnel_port=100,
                      uplink_port=200)
G, S = "239.1.1.1", "10.0.0.9"


def _ids(source: str | None) -> int:
    return 1 if source is None else 2


def test_every_local_member_gets_one_counting_flow_under_g_whatever_its_filter() -> None:
    local = {3: ANY_SOURCE, 5: SourceFilter(FilterMode.INCLUDE, frozenset({S}))}
    state = fw.group_state(CFG, G, _ids, local, ["192.168.77.2"])
    shares = [f for f in state.flows if f.table == layout.INGRESS_METRIC]
    assert [pod_group_of(f) for f in shares] == [(3, G), (5, G)]
    assert {Cookie.unpack(f.cookie).feature for f in shares} == {Feature.GROUP}
    assert len(state.groups) == 2  # (*, G) and (S, G): the counting flows are per G only


def test_only_source_specific_members_still_count_under_g() -> None:
    state = fw.group_state(CFG, G, _ids, {5: SourceFilter(FilterMode.INCLUDE, frozenset({S}))},
                           [])
    assert [pod_group_of(f) for f in state.flows if pod_group_of(f)] == [(5, G)]


def test_remote_members_alone_have_no_counting_flow() -> None:
    state = fw.group_state(CFG, G, _ids, {}, ["192.168.77.2"])
    assert [f for f in state.flows if f.table == layout.INGRESS_METRIC] == []
