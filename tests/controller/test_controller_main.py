"""controller.main against the lab API server: Node objects become the hub's node set (the
InternalIP first), pods and namespaces land in their indexed stores, two controllers on one
Lease (only the leader writes MulticastGroups and serves agents; the successor converges the
objects to its own view), and the `mcast-controller` process itself (`python -m
controller.main`): it leads, serves metrics, and on SIGTERM stops and releases the Lease. A bad
config is exit status 2 with the key and the file named.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from controller.config import ControllerConfig
from controller.groups import GROUP, PLURAL, VERSION
from controller.main import Controller, main, node_info
from wire.members import GroupReport, MemberPod
from wire.nodes import NodeInfo

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
Wait = Callable[..., Any]


def node(name: str, *addresses: tuple[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "status": {"addresses": [{"type": t, "address": a} for t, a in addresses]}}


def test_node_info_puts_the_internal_ip_first() -> None:
    assert node_info(node("n1", ("Hostname", "n1"), ("ExternalIP", "203.0.113.1"),
                          ("InternalIP", "fd00::1"), ("InternalIP", "10.0.0.1"),
                          ("InternalIP", "10.0.0.1"))) == NodeInfo("n1", ("10.0.0.1",
                                                                          "203.0.113.1"))
    assert node_info({"metadata": {"name": "bare"}}) == NodeInfo("bare", ())


@pytest.fixture(scope="module")
def nodes(kube: Any) -> list[str]:
    core = kube.core()
    core.create_node(node("node1", ("InternalIP", "192.168.77.1")))
    core.create_node(node("node2", ("InternalIP", "192.168.77.2")))
    return ["node1", "node2"]


@pytest.fixture
def controllers(kube: Any) -> Iterator[Callable[..., Controller]]:
    made: list[Controller] = []

    def make(identity: str, **options: Any) -> Controller:
        cfg = ControllerConfig(identity=identity, kubeconfig=str(kube.kubeconfig),
                               stream_address="127.0.0.1", stream_port=0,
                               lease_duration_s=2.0, renew_deadline_s=1.5, retry_period_s=0.2,
                               **{k: v for k, v in options.items()
                                  if k in ControllerConfig.__dataclass_fields__})
        c = Controller(cfg, kube.client(), delete_grace=0.0, **{
            k: v for k, v in options.items() if k not in ControllerConfig.__dataclass_fields__})
        made.append(c)
        c.start()
        return c

    yield make
    for c in made:
        c.stop()


def groups(kube: Any) -> dict[str, str]:
    listed = client.CustomObjectsApi(kube.client()).list_cluster_custom_object(
        GROUP, VERSION, PLURAL)
    return {o["metadata"]["name"]: (o.get("status") or {}).get("podsSummary")
            for o in listed["items"]}


def test_nodes_namespaces_and_pods_are_watched(kube: Any, nodes: list[str],
                                               controllers: Callable[..., Controller],
                                               wait: Wait) -> None:
    c = controllers("solo", leader_election=False, multicast_enabled=False, serve_agents=False)
    assert c.leading
    wait(lambda: [n.name for n in c.hub.nodes()[1]] == ["node1", "node2"])
    assert c.hub.nodes()[1][0] == NodeInfo("node1", ("192.168.77.1",))
    core = kube.core()
    core.create_node(node("node3", ("InternalIP", "192.168.77.3")))
    wait(lambda: len(c.hub.nodes()[1]) == 3)
    c.hub.report("node3", [GroupReport("239.0.0.3", (MemberPod("ns", "p"),))])
    core.patch_node_status("node3", {"status": {"addresses": [
        {"type": "InternalIP", "address": "192.168.77.33"}]}})
    wait(lambda: c.hub.nodes()[1][2] == NodeInfo("node3", ("192.168.77.33",)))
    core.delete_node("node3")
    wait(lambda: len(c.hub.nodes()[1]) == 2)
    assert "node3" not in c.hub.memberships()[1]  # its members left with it
    ns = kube.namespace("main-pods")
    core.patch_namespace(ns, {"metadata": {"labels": {"team": "blue"}}})
    core.create_namespaced_pod(ns, {"metadata": {"name": "p", "labels": {"app": "mc"}},
                                    "spec": {"nodeName": "node2", "containers": [
                                        {"name": "c", "image": "busybox"}]}})
    wait(lambda: c.pods.store.by_node("node2"))
    assert [p["metadata"]["name"] for p in c.pods.store.by_labels({"app": "mc"}, ns)] == ["p"]
    wait(lambda: c.namespaces.store.by_labels({"team": "blue"}))


@pytest.mark.usefixtures("mcg_crd")
def test_two_controllers_only_the_leader_writes(kube: Any, nodes: list[str],
                                                controllers: Callable[..., Controller],
                                                wait: Wait) -> None:
    kube.namespace("kube-mcast")
    a = controllers("replica-a")
    wait(lambda: a.leading)
    b = controllers("replica-b")
    a.hub.report("node1", [GroupReport("239.20.0.1", (MemberPod("ns", "seen-by-a"),))])
    b.hub.report("node2", [GroupReport("239.20.0.2", (MemberPod("ns", "seen-by-b"),))])
    wait(lambda: groups(kube) == {"239.20.0.1": "ns/seen-by-a"}, timeout=2)
    time.sleep(1.0)
    assert groups(kube) == {"239.20.0.1": "ns/seen-by-a"} and not b.leading
    stream = sys.modules.get("controller.stream")
    if stream is not None:  # the agent stream runs on the leader only
        assert a._stream is not None and b._stream is None
    a.stop()
    wait(lambda: b.leading, timeout=1)
    wait(lambda: groups(kube) == {"239.20.0.2": "ns/seen-by-b"}, timeout=2)
    assert a.hub.memberships()[1] == {}  # what agents told a is a's no more
    if stream is not None:
        assert a._stream is None and b._stream is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_process_leads_and_releases_the_lease_on_sigterm(kube: Any, tmp_path: Path,
                                                             wait: Wait) -> None:
    kube.core().create_namespace({"metadata": {"name": "proc-ns"}})
    metrics = _free_port()
    config = tmp_path / "controller.yaml"
    config.write_text(yaml.safe_dump({
        "kubeconfig": str(kube.kubeconfig), "identity": "proc-0", "metricsPort": metrics,
        "stream": {"address": "127.0.0.1", "port": 0},
        "leaderElection": {"leaseNamespace": "proc-ns", "leaseDuration": "2s",
                           "renewDeadline": "1500ms", "retryPeriod": "200ms"}}))
    log = (tmp_path / "controller.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "controller.main", "--config", str(config)],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    leases = client.CoordinationV1Api(kube.client())

    def holder() -> str | None:
        try:
            return leases.read_namespaced_lease("kube-mcast-controller", "proc-ns"
                                                ).spec.holder_identity
        except client.ApiException:
            return None

    try:
        wait(lambda: holder() == "proc-0", timeout=20)

        def scraped() -> str:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics",
                                            timeout=2) as r:
                    return str(r.read().decode())
            except OSError:
                return ""

        text = wait(lambda: "kube_mcast_controller_leader 1.0" in scraped() and scraped(),
                    timeout=5)
        assert 'kube_mcast_controller_watch_lists_total{resource="nodes"} 1.0' in text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert holder() is None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    out = (tmp_path / "controller.log").read_text()
    assert "SIGTERM: stopping" in out and "released the lease" in out, out


def test_a_bad_config_is_exit_status_2(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "controller.yaml"
    config.write_text("leaderElection: {leaseDuration: 15s, renewDeadline: 20s}\n")
    assert main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{config}: leaderElection.renewDeadline: must be below leaseDuration" in err
