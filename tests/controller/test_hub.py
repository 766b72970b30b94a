"""controller.hub: the node set and memberships, versioned, with listeners; the MulticastGroup
statuses and the PODS summary they give. Pure."""

from __future__ import annotations

import threading

from controller.hub import Hub, group_statuses, pods_summary
from wire.members import GroupReport, MemberPod
from wire.nodes import NodeInfo

N1, N2 = NodeInfo("node1", ("192.168.77.1",)), NodeInfo("node2", ("192.168.77.2",))


def group(ip: str, *refs: str) -> GroupReport:
    return GroupReport(ip, tuple(sorted(MemberPod(*r.split("/")) for r in refs)))


def test_node_set_is_sorted_versioned_and_told() -> None:
    hub, told = Hub(), []
    hub.on_nodes(lambda: told.append("nodes"))
    assert hub.nodes() == (0, ())
    assert hub.set_nodes([N2, N1])
    assert hub.nodes() == (1, (N1, N2)) and told == ["nodes"]
    assert not hub.set_nodes([N1, N2])  # the same set in another order: no change
    assert hub.nodes()[0] == 1 and told == ["nodes"]
    assert hub.has_node("node2") and not hub.has_node("node3")
    moved = NodeInfo("node2", ("192.168.77.22",))
    assert hub.set_nodes([N1, moved]) and hub.nodes() == (2, (N1, moved))


def test_reports_are_versioned_and_empty_ones_drop_the_node() -> None:
    hub, told = Hub(), []
    cancel = hub.on_members(lambda: told.append("members"))
    assert hub.report("node1", [group("239.1.1.1", "ns/b", "ns/a"), group("239.0.0.9")])
    version, members = hub.memberships()
    assert version == 1 and members == {"node1": (group("239.1.1.1", "ns/a", "ns/b"),)}
    assert not hub.report("node1", [group("239.1.1.1", "ns/a", "ns/b")])  # unchanged
    assert hub.memberships()[0] == 1 and told == ["members"]
    members["node9"] = ()  # a copy: the hub is not touched
    assert "node9" not in hub.memberships()[1]
    assert hub.report("node1", [])
    assert hub.memberships() == (2, {}) and told == ["members", "members"]
    assert not hub.report("node1", [])
    cancel()
    cancel()  # twice is harmless
    hub.report("node2", [group("239.1.1.1", "ns/c")])
    assert told == ["members", "members"]


def test_a_node_that_leaves_takes_its_memberships() -> None:
    hub, told = Hub(), []
    hub.on_nodes(lambda: told.append("nodes"))
    hub.on_members(lambda: told.append("members"))
    hub.set_nodes([N1, N2])
    hub.report("node1", [group("239.1.1.1", "ns/a")])
    hub.report("node2", [group("239.1.1.1", "ns/b")])
    told.clear()
    members_version = hub.memberships()[0]
    assert hub.set_nodes([N1])
    assert hub.memberships() == (members_version + 1, {"node1": (group("239.1.1.1", "ns/a"),)})
    assert sorted(told) == ["members", "nodes"]
    told.clear()
    assert hub.set_nodes([N1, N2]) and told == ["nodes"]  # none left: members unchanged


def test_listeners_run_outside_the_lock() -> None:
    hub = Hub()
    seen: list[int] = []
    hub.on_members(lambda: seen.append(hub.memberships()[0]))  # would deadlock under it
    hub.report("node1", [group("239.1.1.1", "ns/a")])
    assert seen == [1]


def test_concurrent_reports_are_all_counted() -> None:
    hub = Hub()

    def reporter(node: str) -> None:
        for i in range(200):
            hub.report(node, [group("239.1.1.1", f"ns/p{i}")])

    threads = [threading.Thread(target=reporter, args=(f"node{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    version, members = hub.memberships()
    assert version == 800 and sorted(members) == ["node0", "node1", "node2", "node3"]


def test_pods_summary_cuts_after_three() -> None:
    assert pods_summary([]) == ""
    assert pods_summary(["a/x"]) == "a/x"
    assert pods_summary(["a/x", "b/y", "c/z"]) == "a/x, b/y, c/z"
    assert pods_summary(["a/x", "b/y", "c/z", "d/w"]) == "a/x, b/y, c/z + 1 more..."
    assert pods_summary([f"n/p{i}" for i in range(5)]) == "n/p0, n/p1, n/p2 + 2 more..."


def test_group_statuses() -> None:
    memberships = {
        "node2": [group("225.1.2.3", "prod/reader"), group("239.9.9.9")],
        "node1": [group("225.1.2.3", "default/mcjoin"), group("224.5.6.4", "default/mcjoin")],
        # the same pod name reported by two nodes (a pod moved, old report not yet gone)
        "node3": [group("224.5.6.4", "default/mcjoin")],
    }
    assert group_statuses(memberships) == {
        "225.1.2.3": {"group": "225.1.2.3", "podsSummary": "default/mcjoin, prod/reader",
                      "pods": [{"namespace": "default", "name": "mcjoin", "node": "node1"},
                               {"namespace": "prod", "name": "reader", "node": "node2"}]},
        "224.5.6.4": {"group": "224.5.6.4", "podsSummary": "default/mcjoin",
                      "pods": [{"namespace": "default", "name": "mcjoin", "node": "node1"},
                               {"namespace": "default", "name": "mcjoin", "node": "node3"}]},
    }
    assert group_statuses({}) == {}


def test_group_status_summary_of_many_pods_across_nodes() -> None:
    statuses = group_statuses({
        "node1": [group("239.1.1.1", "b/p1", "a/p9")],
        "node2": [group("239.1.1.1", "c/p1", "a/p2", "b/p0")],
    })
    status = statuses["239.1.1.1"]
    assert status["podsSummary"] == "a/p2, a/p9, b/p0 + 2 more..."
    assert [(p["namespace"], p["name"]) for p in status["pods"]] == [
        ("a", "p2"), ("a", "p9"), ("b", "p0"), ("b", "p1"), ("c", "p1")]
