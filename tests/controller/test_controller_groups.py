"""controller.groups, the MulticastGroup writer, against the lab API server with the CRD from
manifests/: memberships in the hub become objects (status via the status subresource, within
2 s), a leave updates one, the last member gone deletes it, stale objects are deleted when a
writer starts leading (after its delete grace), a non-leader writes nothing, a failed pass is
retried, a hand-deleted object comes back at the resync; and the real kubectl prints the
GROUP and PODS columns (`kubectl get multicastgroups`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client

from controller.groups import GROUP, PLURAL, VERSION, GroupWriter
from controller.hub import Hub
from controller.watch import Backoff
from wire.members import GroupReport, MemberPod
from wire.nodes import NodeInfo

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("mcg_crd", "clean")]

Wait = Callable[..., Any]
CONVERGE_S = 2.0  # the issue: within 2 s of a join or leave


def report(hub: Hub, node: str, groups: dict[str, list[str]]) -> None:
    hub.report(node, [GroupReport(g, tuple(MemberPod(*ref.split("/")) for ref in refs))
                      for g, refs in groups.items()])


def objects(kube: Any) -> dict[str, Any]:
    listed = client.CustomObjectsApi(kube.client()).list_cluster_custom_object(
        GROUP, VERSION, PLURAL)
    return {o["metadata"]["name"]: o.get("status") for o in listed["items"]}


def create_object(kube: Any, name: str, status: dict[str, Any] | None = None) -> None:
    custom = client.CustomObjectsApi(kube.client())
    custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "MulticastGroup",
        "metadata": {"name": name}})
    if status is not None:
        custom.patch_cluster_custom_object_status(GROUP, VERSION, PLURAL, name,
                                                  {"status": status})


@pytest.fixture
def clean(kube: Any, mcg_crd: None) -> None:
    custom = client.CustomObjectsApi(kube.client())
    for name in objects(kube):
        custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name)


@pytest.fixture
def writers(kube: Any) -> Iterator[Callable[..., GroupWriter]]:
    made: list[GroupWriter] = []

    def make(hub: Hub, leading: bool = True, **kwargs: Any) -> GroupWriter:
        w = GroupWriter(hub, kube.client(), **kwargs)
        made.append(w)
        w.start()
        if leading:
            w.set_leading(True)
        return w

    yield make
    for w in made:
        w.stop()


def test_reports_become_objects_with_their_status(kube: Any, writers: Callable[..., GroupWriter],
                                                  wait: Wait) -> None:
    hub = Hub()
    writers(hub)
    reported = time.monotonic()
    report(hub, "node1", {"225.1.2.3": ["default/mcjoin"], "224.5.6.4": ["default/mcjoin"]})
    report(hub, "node2", {"225.1.2.3": ["prod/reader"]})
    wait(lambda: len(objects(kube)) == 2 and all(objects(kube).values()), timeout=CONVERGE_S)
    assert time.monotonic() - reported < CONVERGE_S
    assert objects(kube) == {
        "224.5.6.4": {"group": "224.5.6.4", "podsSummary": "default/mcjoin",
                      "pods": [{"namespace": "default", "name": "mcjoin", "node": "node1"}]},
        "225.1.2.3": {"group": "225.1.2.3", "podsSummary": "default/mcjoin, prod/reader",
                      "pods": [{"namespace": "default", "name": "mcjoin", "node": "node1"},
                               {"namespace": "prod", "name": "reader", "node": "node2"}]}}
    made = client.CustomObjectsApi(kube.client()).get_cluster_custom_object(
        GROUP, VERSION, PLURAL, "225.1.2.3")
    assert made["kind"] == "MulticastGroup" and made["apiVersion"] == f"{GROUP}/{VERSION}"
    assert made["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "kube-mcast-controller"}


def test_a_burst_of_reports_is_one_pass(kube: Any, writers: Callable[..., GroupWriter],
                                        wait: Wait) -> None:
    hub = Hub()
    w = writers(hub)
    wait(lambda: w.stats.passes == 1)  # the pass on becoming leader
    for i in range(20):
        report(hub, "node1", {"239.0.0.1": [f"ns/p{k}" for k in range(i + 1)]})
        time.sleep(0.01)
    wait(lambda: (objects(kube).get("239.0.0.1") or {}).get("podsSummary", "").endswith(
        "+ 17 more..."), timeout=CONVERGE_S)
    assert w.stats.passes <= 3 and w.stats.creates == 1 and w.stats.updates == 1


def test_summary_is_cut_after_three_and_a_leave_updates(kube: Any,
                                                        writers: Callable[..., GroupWriter],
                                                        wait: Wait) -> None:
    hub = Hub()
    writers(hub)
    report(hub, "node1", {"239.1.1.1": ["a/p1", "a/p2", "b/p3"]})
    report(hub, "node2", {"239.1.1.1": ["c/p4", "a/p0"]})
    wait(lambda: (objects(kube).get("239.1.1.1") or {}).get("podsSummary")
         == "a/p0, a/p1, a/p2 + 2 more...", timeout=CONVERGE_S)
    assert len(objects(kube)["239.1.1.1"]["pods"]) == 5
    left = time.monotonic()
    report(hub, "node2", {"239.1.1.1": ["a/p0"]})  # c/p4 leaves
    report(hub, "node1", {"239.1.1.1": ["a/p1"]})
    wait(lambda: objects(kube)["239.1.1.1"]["podsSummary"] == "a/p0, a/p1", timeout=CONVERGE_S)
    assert time.monotonic() - left < CONVERGE_S
    assert objects(kube)["239.1.1.1"]["pods"] == [
        {"namespace": "a", "name": "p0", "node": "node2"},
        {"namespace": "a", "name": "p1", "node": "node1"}]


def test_the_last_member_gone_deletes_the_object(kube: Any, writers: Callable[..., GroupWriter],
                                                 wait: Wait) -> None:
    hub = Hub()
    hub.set_nodes([NodeInfo("node1", ("192.168.77.1",)), NodeInfo("node2", ("192.168.77.2",))])
    writers(hub)
    report(hub, "node1", {"239.2.2.2": ["ns/a"], "239.3.3.3": ["ns/a"]})
    report(hub, "node2", {"239.2.2.2": ["ns/b"]})
    wait(lambda: set(objects(kube)) == {"239.2.2.2", "239.3.3.3"}, timeout=CONVERGE_S)
    report(hub, "node1", {"239.3.3.3": ["ns/a"]})
    time.sleep(0.5)
    assert set(objects(kube)) == {"239.2.2.2", "239.3.3.3"}  # ns/b is still in 239.2.2.2
    gone = time.monotonic()
    report(hub, "node2", {})
    wait(lambda: set(objects(kube)) == {"239.3.3.3"}, timeout=CONVERGE_S)
    assert time.monotonic() - gone < CONVERGE_S
    hub.set_nodes([NodeInfo("node2", ("192.168.77.2",))])  # node1 leaves, its members too
    wait(lambda: objects(kube) == {}, timeout=CONVERGE_S)


def test_stale_objects_are_deleted_when_leading_starts(kube: Any,
                                                       writers: Callable[..., GroupWriter],
                                                       wait: Wait) -> None:
    create_object(kube, "239.9.9.9", {"group": "239.9.9.9", "podsSummary": "old/pod"})
    create_object(kube, "225.1.2.3", {"group": "225.1.2.3", "podsSummary": "wrong",
                                      "note": "hand-made"})
    create_object(kube, "239.8.8.8")  # never got a status
    hub = Hub()
    report(hub, "node1", {"225.1.2.3": ["default/mcjoin"]})
    writers(hub)
    wait(lambda: set(objects(kube)) == {"225.1.2.3"}, timeout=CONVERGE_S)
    assert objects(kube)["225.1.2.3"] == {
        "group": "225.1.2.3", "podsSummary": "default/mcjoin",
        "pods": [{"namespace": "default", "name": "mcjoin", "node": "node1"}]}


def test_a_new_leader_deletes_nothing_during_its_grace(kube: Any,
                                                       writers: Callable[..., GroupWriter],
                                                       wait: Wait) -> None:
    create_object(kube, "239.7.7.7", {"group": "239.7.7.7", "podsSummary": "ns/was"})
    hub = Hub()
    report(hub, "node1", {"239.6.6.6": ["ns/now"]})
    started = time.monotonic()
    writers(hub, delete_grace=1.0)
    wait(lambda: "239.6.6.6" in objects(kube), timeout=CONVERGE_S)  # creates right away
    assert "239.7.7.7" in objects(kube) and time.monotonic() - started < 1.0
    wait(lambda: "239.7.7.7" not in objects(kube), timeout=CONVERGE_S)
    assert time.monotonic() - started >= 1.0


def test_only_the_leader_writes(kube: Any, writers: Callable[..., GroupWriter],
                                wait: Wait) -> None:
    hub = Hub()
    w = writers(hub, leading=False)
    report(hub, "node1", {"239.4.4.4": ["ns/a"]})
    time.sleep(1.2)  # a leader would have written by now (max_delay 1 s)
    assert objects(kube) == {} and w.stats.lists == 0
    w.set_leading(True)
    wait(lambda: "239.4.4.4" in objects(kube), timeout=CONVERGE_S)
    w.set_leading(False)
    time.sleep(0.1)
    report(hub, "node1", {"239.5.5.5": ["ns/a"]})
    time.sleep(1.2)  # a leader would have written by now (max_delay 1 s)
    assert set(objects(kube)) == {"239.4.4.4"}


def test_a_failed_pass_is_retried(kube: Any, writers: Callable[..., GroupWriter],
                                  wait: Wait) -> None:
    """The CRD goes away (every request: 404) and comes back: the writer converges again."""
    ext = client.ApiextensionsV1Api(kube.client())
    crd = ext.read_custom_resource_definition(f"{PLURAL}.{GROUP}")
    hub = Hub()
    report(hub, "node1", {"239.10.0.1": ["ns/a"]})
    w = writers(hub, backoff=Backoff(0.2, 0.5))
    wait(lambda: "239.10.0.1" in objects(kube), timeout=CONVERGE_S)
    ext.delete_custom_resource_definition(crd.metadata.name)
    report(hub, "node1", {"239.10.0.2": ["ns/b"]})
    wait(lambda: w.stats.errors >= 2, timeout=5)
    body = client.ApiClient().sanitize_for_serialization(crd)
    body["metadata"] = {"name": crd.metadata.name}
    body.pop("status", None)
    ext.create_custom_resource_definition(body)
    wait(lambda: set(objects(kube)) == {"239.10.0.2"}, timeout=5)
    assert objects(kube)["239.10.0.2"]["podsSummary"] == "ns/b"


def test_the_resync_puts_back_a_hand_deleted_object(kube: Any,
                                                    writers: Callable[..., GroupWriter],
                                                    wait: Wait) -> None:
    hub = Hub()
    report(hub, "node1", {"239.11.0.1": ["ns/a"]})
    writers(hub, resync_period=0.5)
    wait(lambda: "239.11.0.1" in objects(kube), timeout=CONVERGE_S)
    client.CustomObjectsApi(kube.client()).delete_cluster_custom_object(
        GROUP, VERSION, PLURAL, "239.11.0.1")
    wait(lambda: (objects(kube).get("239.11.0.1") or {}).get("podsSummary") == "ns/a",
         timeout=CONVERGE_S)


def test_kubectl_get_multicastgroups(kube: Any, writers: Callable[..., GroupWriter],
                                     wait: Wait) -> None:
    hub = Hub()
    writers(hub)
    report(hub, "node1", {"225.1.2.3": ["default/mcjoin"], "224.5.6.4": ["default/mcjoin"]})
    report(hub, "node2", {"225.1.2.3": ["prod/reader"],
                          "239.1.2.3": ["a/p1", "a/p2", "b/p3", "b/p4", "c/p5"]})
    wait(lambda: len([s for s in objects(kube).values() if s]) == 3, timeout=CONVERGE_S)
    lines = kube.kubectl("get", "multicastgroups").splitlines()
    assert lines[0].split()[:3] == ["NAME", "GROUP", "PODS"]
    columns = [lines[0].index(c) for c in ("GROUP", "PODS")]
    rows = [(line[:columns[0]].strip(), line[columns[0]:columns[1]].strip(),
             line[columns[1]:].split("   ")[0].strip()) for line in lines[1:]]
    assert rows == [("224.5.6.4", "224.5.6.4", "default/mcjoin"),
                    ("225.1.2.3", "225.1.2.3", "default/mcjoin, prod/reader"),
                    ("239.1.2.3", "239.1.2.3", "a/p1, a/p2, b/p3 + 2 more...")]
    wide = yaml.safe_load(kube.kubectl("get", "mcg", "225.1.2.3", "-o", "yaml"))
    assert wide["status"]["pods"][1] == {"namespace": "prod", "name": "reader", "node": "node2"}
