"""agent.ovs.podports against a real ovsdb-server and ovs-vswitchd: what a restarted agent
re-adopts from OVSDB alone is the pod it attached, the pod-side interface name and primary
address included (the detach-by-interface rule needs them after a restart too)."""

from __future__ import annotations

import pytest
from oflab import ensure_br_int
from pyroute2 import IPRoute

from agent.interfacestore import PodAttach, PodInfo
from agent.ovs.ovsdb import Ovsdb
from agent.ovs.podports import OvsdbPodPorts
from tools.mclab.ovsnode import OvsNode

pytestmark = pytest.mark.ovs


def test_existing_pods_come_back_whole(ovs_node: OvsNode, db: Ovsdb) -> None:
    with IPRoute(netns=ovs_node.netns, flags=0) as ipr:
        for name in ("mcaaaa", "mcbbbb"):
            ipr.link("add", ifname=name, kind="veth", peer={"ifname": f"{name}-p"})
    ensure_br_int(db)
    ports = OvsdbPodPorts(db, "br-int")
    chained = PodAttach("ns1", "a", "cid-a", "mcaaaa", "10.88.0.2", "02:00:00:00:00:0a",
                        ifname="mc0", primary_ip="10.88.0.2")
    older = PodAttach("ns1", "b", "cid-b", "mcbbbb", "10.77.0.3", "02:00:00:00:00:0b")
    attached = [PodInfo(**chained.__dict__, ofport=ports.add_pod_port(chained)),
                PodInfo(**older.__dict__, ofport=ports.add_pod_port(older))]
    # a new OvsdbPodPorts, as a restarted agent builds it
    assert sorted(OvsdbPodPorts(db, "br-int").existing_pods(), key=lambda p: p.name) == attached
    assert attached[1].ifname == "" and attached[1].answers_to("net1")
