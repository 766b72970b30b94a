"""Pods as a real cluster attaches them: a primary network beside our multicast interface.

Two nodes per mode (encap, noEncap), pods chained (primary ``bridge`` + host-local on eth0,
then our plugin's ``mc0``), one outside host. Real applications, unchanged:
- unicast to the outside leaves through the primary network (ping, a TCP connect), while the
  pod's multicast goes through ours (the pod's counters on both paths say so);
- iperf2 receivers in pods on both nodes (``iperf -s -u -B GROUP -i 1``) get an outside
  iperf2 source's stream at iperf2's default datagram size (1470 bytes: a full 1512-byte
  frame), which the pods' multicast interface must take whole;
- 8,000-byte datagrams from a pod still reach every receiver across nodes (fragmented to the
  route MTU, so every fragment fits the tunnel);
- the producer and consumer of a public Python example (TTL 1 from a socket bound to
  0.0.0.0; ``IP_ADD_MEMBERSHIP`` on INADDR_ANY, bound to the group) work across nodes.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PYTHON, Lab, Pod, _teardown, foreign_lab, fresh_lab, wait_for

pytestmark = pytest.mark.lab

EXAMPLES = Path(__file__).resolve().parent / "examples"
NODES = 2
IPERF_GROUP = "224.0.67.67"
IPERF_SECONDS = 3


@pytest.fixture(scope="class")
def alab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    lab_dir, prefix = fresh_lab()
    why = foreign_lab(prefix)
    if why:
        pytest.fail(why, pytrace=False)
    lab = Lab(lab_dir, prefix, NODES, request.cls.MODE, "10s")
    try:
        lab.mclab("up", "--nodes", str(NODES), "--mode", lab.mode, "--query-interval", "10s",
                  timeout=120.0)
        yield lab
    finally:
        _teardown(lab)


@pytest.fixture(scope="class")
def pods(alab: Lab) -> dict[str, Pod]:
    return {f"n{i}{k}": alab.create_pod(f"n{i}{k}", f"node{i}")
            for i in range(1, NODES + 1) for k in "ab"}


@pytest.fixture(scope="class")
def ext(alab: Lab) -> Pod:
    return alab.create_external("outside")


def link_stats(lab: Lab, pod: Pod, ifname: str) -> dict[str, int]:
    [link] = json.loads(lab.exec(pod, "ip", "-s", "-j", "link", "show", ifname).stdout)
    return {"tx": link["stats64"]["tx"]["packets"], "rx": link["stats64"]["rx"]["packets"]}


def pod_stats(lab: Lab, pod: Pod) -> dict[str, object]:
    [row] = [r for r in lab.mcctl_json(pod.node, "podmulticaststats")
             if r["name"] == pod.name and r["namespace"] == pod.namespace]
    return dict(row)


def outbound(lab: Lab, pod: Pod) -> int:
    return int(pod_stats(lab, pod)["outbound"])  # type: ignore[call-overload]


def iperf_datagrams(out: str) -> int:
    """Datagrams an iperf2 UDP server got: the sum of its per-second ``lost/total`` figures."""
    got = 0
    for m in re.finditer(r"(\d+\.\d+)-\s*(\d+\.\d+) sec.*?(\d+)/\s*(\d+)\s+\(", out):
        start, end = float(m.group(1)), float(m.group(2))
        if end - start <= 1.5:  # interval lines only, not the final summary
            got += int(m.group(4)) - int(m.group(3))
    return got


class _Attach:
    MODE = "encap"

    def test_pod_has_primary_network_and_our_multicast_interface(
            self, alab: Lab, pods: dict[str, Pod]) -> None:
        pod = pods["n1a"]
        assert pod.iface == "mc0" and pod.ip == pod.primary_ip, pod
        routes = {r["dst"]: r for r in json.loads(alab.exec(pod, "ip", "-j", "route").stdout)}
        assert routes["default"]["dev"] == "eth0", routes
        assert routes["224.0.0.0/4"]["dev"] == "mc0", routes
        mtu = json.loads(alab.exec(pod, "ip", "-j", "link", "show", "mc0").stdout)[0]["mtu"]
        assert mtu == 1500
        metrics = {k: v for m in routes["224.0.0.0/4"].get("metrics", []) for k, v in m.items()}
        assert metrics.get("mtu", 1500) == (1450 if alab.mode == "encap" else 1500), routes
        status = alab.mclab("status").stdout
        assert re.search(rf"\bn1a\s+node1\s+{re.escape(pod.ip)}\s+mc0\s+{re.escape(pod.ip)}",
                         status), status

    def test_unicast_goes_by_the_primary_network_multicast_by_ours(
            self, alab: Lab, pods: dict[str, Pod], ext: Pod) -> None:
        pod = pods["n1a"]
        eth0, stats = link_stats(alab, pod, "eth0"), pod_stats(alab, pod)
        alab.exec(pod, "ping", "-c", "3", "-i", "0.2", "-W", "2", ext.ip)
        server = alab.popen(ext, "timeout", "20", "socat", "-u", "TCP-LISTEN:7001,reuseaddr",
                            "STDOUT")
        wait_for(lambda: "7001" in alab.exec(ext, "ss", "-ltn").stdout, 10, "socat to listen")
        alab.exec(pod, "sh", "-c", f"echo over-tcp | socat -u STDIN TCP:{ext.ip}:7001")
        out, _ = server.communicate(timeout=20)
        assert out.strip() == "over-tcp", out
        after = link_stats(alab, pod, "eth0")
        assert after["tx"] - eth0["tx"] >= 3 + 3, (eth0, after)  # 3 pings, the TCP handshake
        dropped = pod_stats(alab, pod)["dropped"]
        assert dropped == stats["dropped"], f"unicast reached br-int: {stats} -> {dropped}"

        rx = alab.start_receiver(pods["n2a"], "239.50.1.1", 5101).wait_ready()
        alab.wait_members("node2", "239.50.1.1", [pods["n2a"]])
        before, before_eth0 = outbound(alab, pod), link_stats(alab, pod, "eth0")
        alab.send(pod, "239.50.1.1", 5101, 50, 100.0)
        rx.wait_count(50)
        after_eth0 = link_stats(alab, pod, "eth0")
        # the agent reads flow counters from the switch: they catch up within a poll or two
        sent = wait_for(lambda: outbound(alab, pod) - before >= 50 and outbound(alab, pod) - before,
                        10, "the pod's outbound counter to count the 50 datagrams")
        assert sent == 50
        assert after_eth0["tx"] - before_eth0["tx"] < 10, "multicast left by eth0"

    def test_iperf2_outside_source_reaches_pods_on_both_nodes(
            self, alab: Lab, pods: dict[str, Pod], ext: Pod) -> None:
        receivers = [pods["n1b"], pods["n2b"]]
        servers = [alab.popen(p, "timeout", "25", "iperf", "-s", "-u", "-B", IPERF_GROUP,
                              "-i", "1") for p in receivers]
        for p in receivers:
            alab.wait_members(p.node, IPERF_GROUP, [p], timeout=15)
        client = alab.exec(ext, "iperf", "-c", IPERF_GROUP, "-u", "-T", "1", "-b", "1M",
                           "-t", str(IPERF_SECONDS), timeout=30).stdout
        m = re.search(r"Sent (\d+) datagrams", client)
        assert m, client
        sent = int(m.group(1))
        time.sleep(2.0)  # the servers' last interval report
        outs = []
        for s in servers:
            s.terminate()
            out, err = s.communicate(timeout=10)
            outs.append(out + err)
        for p, out in zip(receivers, outs, strict=True):
            assert "connect UDP failed" not in out, out
            got = iperf_datagrams(out)
            assert got >= 0.95 * sent, f"{p.ref} got {got} of {sent} datagrams:\n{out}"

    def test_8000_byte_datagrams_reach_every_receiver_across_nodes(
            self, alab: Lab, pods: dict[str, Pod]) -> None:
        g, port, n = "239.50.3.1", 5103, 40
        rxs = [alab.start_receiver(p, g, port).wait_ready()
               for p in (pods["n1b"], pods["n2a"], pods["n2b"])]
        alab.wait_members("node2", g, [pods["n2a"], pods["n2b"]])
        alab.wait_members("node1", g, [pods["n1b"]])
        alab.send(pods["n1a"], g, port, n, 50.0, size=8000)
        for rx in rxs:
            rx.wait_count(n, timeout=15)
        for rx in rxs:
            got = rx.stop()
            assert got["n"] == n and got["distinct"] == n, got

    def test_public_example_producer_and_consumer_across_nodes(
            self, alab: Lab, pods: dict[str, Pod]) -> None:
        consumers = {p.ref: alab.popen(p, "timeout", "15", PYTHON,
                                       str(EXAMPLES / "consumer.py"))
                     for p in (pods["n2a"], pods["n1b"])}
        alab.wait_members("node2", "224.1.1.1", [pods["n2a"]])
        alab.wait_members("node1", "224.1.1.1", [pods["n1b"]])
        alab.exec(pods["n1a"], PYTHON, str(EXAMPLES / "producer.py"), timeout=30)
        time.sleep(1.0)
        for ref, proc in consumers.items():
            proc.terminate()
            try:
                out, _ = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
            got = [ln for ln in out.splitlines() if ln.startswith("b'robot ")]
            assert len(got) == 20, f"{ref} got {len(got)} of 20:\n{out}"


class TestAttachEncap(_Attach):
    MODE = "encap"


class TestAttachNoEncap(_Attach):
    MODE = "noEncap"
