"""OvsNode: private ovsdb-server + ovs-vswitchd inside a network namespace (real binaries)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tools.mclab import netns
from tools.mclab.ovsnode import OvsError, OvsNode, is_alive, pids_naming

pytestmark = pytest.mark.ovs

FLOW = "table=0,priority=100,in_port=1,udp,nw_dst=239.1.1.1,actions=output:2"


def _add_br_int(node: OvsNode) -> None:
    node.vsctl(
        "add-br", "br-int", "--", "set", "bridge", "br-int", "datapath_type=netdev",
        "fail_mode=secure",
    )  # fmt: skip


def _netns_inode(name: str) -> int:
    return os.stat(netns.NETNS_DIR / name).st_ino


def test_node_lifecycle(netns_name: str, kmt_session_dir: Path) -> None:
    node = OvsNode(netns_name, kmt_session_dir / netns_name, netns_name)
    try:
        node.start()  # creates the netns, since it does not exist yet
        assert netns.exists(netns_name)
        pids = node.pids()
        assert set(pids) == {"ovsdb-server", "ovs-vswitchd"}
        for pid in pids.values():  # both daemons live in the node's netns
            assert os.stat(f"/proc/{pid}/ns/net").st_ino == _netns_inode(netns_name)

        _add_br_int(node)
        assert node.vsctl("list-br").split() == ["br-int"]
        assert node.vsctl("get", "bridge", "br-int", "fail_mode").strip() == "secure"
        assert "br-int" in netns.links(netns_name)  # internal port = tap inside the netns

        node.ofctl("add-flow", "br-int", FLOW)
        flows = node.ofctl("dump-flows", "br-int")
        assert "OF1.3" in flows
        assert "priority=100,udp,in_port=1,nw_dst=239.1.1.1 actions=output:2" in flows

        assert "Open vSwitch" in node.appctl("version")
        with pytest.raises(OvsError, match="no-such-bridge"):
            node.ofctl("dump-flows", "no-such-bridge")
    finally:
        node.stop()

    assert not any(is_alive(p) for p in pids.values())
    assert pids_naming(f"{node.rundir}/") == []
    assert node.pids() == {}
    assert not netns.exists(netns_name)


def test_two_nodes_side_by_side(make_ovs_node: Callable[[], OvsNode]) -> None:
    a, b = make_ovs_node(), make_ovs_node()
    assert a.netns != b.netns and a.rundir != b.rundir
    _add_br_int(a)
    b.vsctl("add-br", "br-b", "--", "set", "bridge", "br-b", "datapath_type=netdev")

    assert a.vsctl("list-br").split() == ["br-int"]
    assert b.vsctl("list-br").split() == ["br-b"]
    assert "br-int" in netns.links(a.netns) and "br-int" not in netns.links(b.netns)
    assert "br-b" in netns.links(b.netns) and "br-b" not in netns.links(a.netns)
    for node in (a, b):
        inode = _netns_inode(node.netns)
        assert all(os.stat(f"/proc/{p}/ns/net").st_ino == inode for p in node.pids().values())
        assert "Open vSwitch" in node.appctl("version")

    a.ofctl("add-flow", "br-int", FLOW)
    assert "nw_dst=239.1.1.1" in a.ofctl("dump-flows", "br-int")
    assert "nw_dst=239.1.1.1" not in b.ofctl("dump-flows", "br-b")

    a_pids = list(a.pids().values())
    a.stop()  # stopping one node leaves the other running
    assert not any(is_alive(p) for p in a_pids)
    assert len(b.pids()) == 2 and "Open vSwitch" in b.appctl("version")


def test_ovs_node_fixture(ovs_node: OvsNode) -> None:
    assert netns.exists(ovs_node.netns) and ovs_node.netns.startswith("kmt-")
    assert str(ovs_node.rundir).startswith("/tmp/kmt/")
    assert ovs_node.db_sock == f"unix:{ovs_node.rundir}/db.sock"
    assert ovs_node.vsctl("list-br").strip() == ""
