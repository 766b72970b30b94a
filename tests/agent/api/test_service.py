"""The real AgentApi: the service over the multicast core, served on a real unix socket.

The core runs on the fake OpenFlow table (as in tests/agent/multicast/test_core.py); the
client is the one mcctl and the CNI plugin use. What is checked is the API's contract: JSON
shapes, domain errors as statuses, the node set reaching the core.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fakeport import Ports, TableSwitch

from agent.api.client import AgentClient
from agent.api.server import LocalApiServer
from agent.api.service import AgentService
from agent.api.types import AgentApi, ApiError
from agent.config import parse_config
from agent.flowsync.reconciler import Reconciler
from agent.interfacestore import PodAttach, PodInfo
from agent.multicast.core import MulticastCore
from agent.multicast.igmp.packets import GroupRecord, RecordType, build_v3_reports
from agent.podnetwork import PodMtu, pod_mtu
from pipeline.layout import multicast_pipeline
from pipeline.multicast import BridgeConfig, Mode
from wire.nodes import NodeInfo

NODE_IP, TUNNEL = "192.168.77.1", 65000


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[AgentClient, MulticastCore]]:
    cfg = parse_config({"node": {"name": "node1", "ip": NODE_IP}})
    bridge = BridgeConfig(Mode.ENCAP, 1, NODE_IP, "02:77:00:00:00:01", tunnel_port=TUNNEL)
    switch = TableSwitch(tunnel_ports=(TUNNEL,))
    core = MulticastCore(cfg, bridge, switch, Reconciler(switch, multicast_pipeline()), Ports())
    core.start()
    service = AgentService(core, switch, multicast_pipeline(), pod_mtu(1500, True, "vxlan"))
    assert isinstance(service, AgentApi)
    with LocalApiServer(tmp_path / "agent.sock", service) as server:
        yield AgentClient(server.path), core


POD = PodAttach("ns1", "a", "cid-a", "mc1", "10.77.1.2", "0a:00:00:00:00:02")


def test_attach_conflict_is_409_and_changes_nothing(served) -> None:
    client, _ = served
    assert client.attach_pod(POD) == PodInfo(**POD.__dict__, ofport=1)
    assert client.attach_pod(POD).ofport == 1  # the same attach again: idempotent
    other = PodAttach(**{**POD.__dict__, "host_ifname": "mc2"})
    with pytest.raises(ApiError) as exc:
        client.attach_pod(other)
    assert exc.value.status == 409 and "attached as mc1" in exc.value.message
    assert [p.host_ifname for p in client.list_pods()] == ["mc1"]


def test_members_stats_flows_and_health_as_json(served) -> None:
    client, core = served
    pod = client.attach_pod(POD)
    (frame,) = build_v3_reports([GroupRecord(RecordType.TO_IN, "239.1.1.1", ("10.9.9.9",))],
                                pod.ip, pod.mac)
    from agent.flowsync.switch import PacketIn
    from pipeline.multicast import PuntReason
    core.handle_packet_in(PacketIn(pod.ofport, bytes([PuntReason.IGMP_POD]), frame, None, 0, 0, 0))
    assert client.members() == [{
        "group": "239.1.1.1", "localPods": ["ns1/a"], "remoteNodes": [], "outsideHosts": [],
        "sourceFilters": {"ns1/a": {"mode": "include", "sources": ["10.9.9.9"]}}}]
    assert client.pod_stats() == [{"namespace": "ns1", "name": "a", "inbound": 0,
                                   "outbound": 0, "dropped": {"spoofed": 0, "notMulticast": 0,
                                                              "igmpRate": 0,
                                                              "oversized": 0}}]
    flows = client.flows()
    assert flows[0].startswith("group_id=") and any("nw_dst=239.1.1.1" in f for f in flows)
    client.set_nodes([NodeInfo("node1", (NODE_IP,)), NodeInfo("node2", ("192.168.77.2",))])
    assert core.node_ips() == ["192.168.77.2"]
    assert client.health() == {"node": "node1", "mode": "encap", "pods": 1, "groups": 1,
                               "nodes": ["node2"]}


def test_a_bad_node_set_is_refused_before_the_core(served) -> None:
    client, core = served
    with pytest.raises(ApiError) as exc:
        client._call("PUT", "/v1/nodes", {"nodes": [{"name": "n2", "ips": ["not-an-ip"]}]})
    assert exc.value.status == 400 and "nodes[0].ips" in exc.value.message
    assert core.node_ips() == []


def test_detach_only_through_the_named_interface(served) -> None:
    client, _ = served
    client.attach_pod(PodAttach(**{**POD.__dict__, "ifname": "mc0", "primary_ip": POD.ip}))
    client.detach_pod(POD.container_id, "net1")  # another network's DEL: nothing happens
    [pod] = client.list_pods()
    assert (pod.ifname, pod.primary_ip) == ("mc0", POD.ip)
    client.detach_pod("cid-unknown", "mc0")
    client.detach_pod(POD.container_id, "mc0")
    assert client.list_pods() == []


def test_detach_of_an_attachment_without_a_name(served) -> None:
    client, _ = served
    client.attach_pod(POD)  # an older plugin: no ifname
    client.detach_pod(POD.container_id, "net1")
    assert client.list_pods() == []


def test_pod_network_is_the_agents(served, tmp_path: Path) -> None:
    client, core = served
    assert client.pod_network() == PodMtu(interface=1500, route=1450)
    bare = AgentService(core, TableSwitch(), multicast_pipeline())  # started without MTUs
    with LocalApiServer(tmp_path / "bare.sock", bare) as server, pytest.raises(ApiError) as exc:
        AgentClient(server.path).pod_network()
    assert exc.value.status == 503
