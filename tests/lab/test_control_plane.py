"""The Kubernetes control plane in the lab: objects in the API drive it, kubectl shows it.

A 2-node lab (encap) with its API server and controller; pods join with their own kernels'
IGMP. Checked through the real ``kubectl`` binary with ``mclab kubeconfig``:
- the lab writes Node and Pod objects as kubelet and the scheduler would (``mclab pod label``
  changes the Pod's labels);
- ``kubectl get multicastgroups`` lists exactly the groups with members and their pods, and
  follows a leave and a pod deletion;
- the controller killed while a stream flows loses no datagram and a join made meanwhile is
  delivered (agents meet without it); started again, the objects converge; the same after an
  agent restart.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator

import pytest
from conftest import Lab, Pod, Receiver, _teardown, foreign_lab, fresh_lab, wait_for

pytestmark = pytest.mark.lab

CONVERGE_S = 10.0  # the bound is 2 s after a join settles; IGMP itself takes longer
RECONNECT_S = 30.0  # agents retry with backoff (up to 10 s) while the controller is away


@pytest.fixture(scope="module")
def klab() -> Iterator[Lab]:
    lab_dir, prefix = fresh_lab()
    why = foreign_lab(prefix)
    if why:
        pytest.fail(why, pytrace=False)
    lab = Lab(lab_dir, prefix, 2, "encap", "10s")
    try:
        lab.mclab("up", "--nodes", "2", "--mode", "encap", "--query-interval", "10s",
                  timeout=180.0)
        yield lab
    finally:
        _teardown(lab)


def kubectl(lab: Lab, *args: str) -> str:
    return lab.kubectl(*args).stdout


def wait_groups(lab: Lab, want: dict[str, str], what: str,
                timeout: float = CONVERGE_S) -> None:
    def ok() -> bool:
        have = lab.multicastgroups()
        return have == {g: (g, pods) for g, pods in want.items()}

    wait_for(ok, timeout, f"kubectl get multicastgroups to show {want} ({what}); "
             f"it shows {lab.multicastgroups()}")


def test_nodes_and_pods_are_in_the_api(klab: Lab) -> None:
    nodes = json.loads(kubectl(klab, "get", "nodes", "-o", "json"))["items"]
    got = {n["metadata"]["name"]: [a["address"] for a in n["status"]["addresses"]
                                   if a["type"] == "InternalIP"] for n in nodes}
    assert got == {"node1": ["192.168.77.1"], "node2": ["192.168.77.2"]}
    pod = klab.create_pod("api-pod", "node2", "team-a")
    obj = json.loads(kubectl(klab, "get", "pod", "-n", "team-a", "api-pod", "-o", "json"))
    assert obj["spec"]["nodeName"] == "node2" and obj["status"]["phase"] == "Running"
    assert obj["status"]["podIP"] == pod.primary_ip
    klab.mclab("pod", "label", "api-pod", "-n", "team-a", "app=reader", "tier=x")
    klab.mclab("pod", "label", "api-pod", "-n", "team-a", "tier-")
    shown = kubectl(klab, "get", "pods", "-n", "team-a", "-l", "app=reader", "-o", "name")
    assert shown.split() == ["pod/api-pod"]
    obj = json.loads(kubectl(klab, "get", "pod", "-n", "team-a", "api-pod", "-o", "json"))
    assert obj["metadata"]["labels"] == {"app": "reader"}
    klab.delete_pod(pod)
    assert kubectl(klab, "get", "pods", "-n", "team-a", "-o", "name").split() == []


def test_multicastgroups_follow_joins_leaves_and_pod_deletion(klab: Lab) -> None:
    a = klab.create_pod("mcjoin", "node1")
    b = klab.create_pod("reader", "node2", "prod")
    g1, g2, port = "225.1.2.3", "224.5.6.4", 5300
    rx = {"a1": klab.start_receiver(a, g1, port), "b1": klab.start_receiver(b, g1, port),
          "a2": klab.start_receiver(a, g2, port)}
    for r in rx.values():
        r.wait_ready()
    wait_groups(klab, {g1: "default/mcjoin, prod/reader", g2: "default/mcjoin"}, "joins")
    # mcctl shows the same cluster view, through the lab's kubeconfig
    lines = klab.mcctl("get", "multicastgroups").stdout.splitlines()
    assert [ln.split(None, 1) for ln in lines] == [
        ["GROUP", "PODS"], [g2, "default/mcjoin"], [g1, "default/mcjoin, prod/reader"]], lines
    rx["a2"].stop()  # its socket closes: the kernel leaves g2
    wait_groups(klab, {g1: "default/mcjoin, prod/reader"}, "a leave")
    rx["b1"].stop()
    klab.delete_pod(b)
    wait_groups(klab, {g1: "default/mcjoin"}, "a pod deleted")
    rx["a1"].stop()
    klab.delete_pod(a)
    wait_groups(klab, {}, "the last member gone")


def _stream(lab: Lab, snd: Pod, group: str, port: int, count: int, pps: float
            ) -> subprocess.Popen[str]:
    from conftest import MCPROBE, PYTHON

    return lab.popen(snd, PYTHON, MCPROBE, "send", group, str(port), "--count", str(count),
                     "--pps", str(pps), "--ttl", "3")


def test_controller_down_loses_nothing_and_objects_converge(klab: Lab) -> None:
    g, port, count, pps = "239.60.1.1", 5301, 1000, 100.0
    snd = klab.create_pod("cd-snd", "node1")
    r1 = klab.create_pod("cd-r1", "node2")
    late = klab.create_pod("cd-late", "node2")
    rx1 = klab.start_receiver(r1, g, port).wait_ready()
    wait_groups(klab, {g: "default/cd-r1"}, "the first receiver")

    sender = _stream(klab, snd, g, port, count, pps)
    time.sleep(1.0)
    klab.mclab("controller", "stop")
    rx_late: Receiver = klab.start_receiver(late, g, port).wait_ready()
    klab.wait_members("node2", g, [r1, late])
    time.sleep(2.0)
    klab.mclab("controller", "start")
    out, err = sender.communicate(timeout=count / pps + 30)
    assert sender.returncode == 0, err
    assert rx1.wait_count(count, timeout=15) == count
    assert rx_late.count() > 0, "a join made while the controller was down got nothing"
    wait_groups(klab, {g: "default/cd-late, default/cd-r1"}, "controller back", RECONNECT_S)

    klab.mclab("agent", "restart", "node2")
    wait_groups(klab, {g: "default/cd-late, default/cd-r1"}, "agent restarted", RECONNECT_S)
    rx_late.stop()
    wait_groups(klab, {g: "default/cd-r1"}, "a leave after the restarts")
    got = rx1.stop()
    assert got["n"] == count and got["distinct"] == count, got  # nothing lost, nothing doubled
