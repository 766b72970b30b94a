"""The agent's Prometheus endpoint on a real one-node lab: its counters move with real traffic.

The lab runs each agent inside its node's network namespace with ``metricsPort: 9464``
(tools/mclab/lab.py), so the test scrapes ``http://127.0.0.1:9464/metrics`` from a thread that
entered that namespace (``tools.mclab.netns.call_in``), parses the exposition with
prometheus-client's own parser, and compares two scrapes around real datagrams: per-pod
packets and bytes out and in, the group's routed packets and bytes, its local members, and
the IGMP report the agent accepted. OVS pushes datapath counters to its flows about once a
second, so the test polls until the counters reach the amounts and then insists they are
exact.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping

from conftest import Lab, Pod
from prometheus_client.parser import text_string_to_metric_families

from tools.mclab import netns

LAB_OPTIONS = {"nodes": 1, "mode": "encap"}
NODE = "node1"
METRICS_PORT = 9464  # what mclab writes into every agent's config
N, PPS, SIZE = 20, 200.0, 64
FRAME = 14 + 20 + 8 + SIZE  # Ethernet + IPv4 + UDP headers + the payload: what OVS counts

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(lab: Lab, node: str = NODE) -> Samples:
    """One scrape of ``node``'s agent, from inside the node's network namespace."""
    [ns] = [n["netns"] for n in lab.state()["nodes"] if n["name"] == node]

    def get() -> str:
        url = f"http://127.0.0.1:{METRICS_PORT}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            return str(r.read().decode())

    text = netns.call_in(ns, get)
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def pod_labels(pod: Pod) -> dict[str, str]:
    return {"namespace": pod.namespace, "pod": pod.name}


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def test_counters_move_with_real_traffic(lab: Lab) -> None:
    g, g2, port = "239.13.1.1", "239.13.1.2", 5131
    snd = lab.create_pod("m-snd", NODE)
    rcv1 = lab.create_pod("m-rcv1", NODE)
    rcv2 = lab.create_pod("m-rcv2", NODE)
    forged = lab.create_pod("m-v2", NODE)
    rx = [lab.start_receiver(p, g, port).wait_ready() for p in (rcv1, rcv2)]
    lab.wait_members(NODE, g, [rcv1, rcv2], exact=True)

    start = scrape(lab)
    assert value(start, "kube_mcast_agent_info", node_name=NODE,
                 node_ip=lab.state()["nodes"][0]["ip"], mode="encap") == 1
    assert value(start, "kube_mcast_switch_readable") == 1
    for p in (rcv1, rcv2):
        assert value(start, "kube_mcast_group_local_member", group=g, **pod_labels(p)) == 1
    assert value(start, "kube_mcast_group_members", group=g, kind="local") == 2
    accepted_v3 = value(start, "kube_mcast_igmp_messages_total", type="ReportV3",
                        verdict="accepted")
    assert accepted_v3 >= 2, "each receiver's kernel reported its join at least once"

    # Exactly one IGMPv2 report, forged from a pod whose kernel never joins: +1 accepted.
    lab.forge_v2_report(forged, g2)
    lab.wait_members(NODE, g2, [forged], exact=True)
    lab.send(snd, g, port, N, PPS, size=SIZE)
    for r in rx:
        r.wait_count(N)

    def settled() -> Samples | None:
        now = scrape(lab)
        done = (moved(start, now, "kube_mcast_pod_outbound_packets_total", **pod_labels(snd))
                >= N and all(moved(start, now, "kube_mcast_pod_inbound_packets_total",
                                   **pod_labels(p)) >= N for p in (rcv1, rcv2))
                and moved(start, now, "kube_mcast_group_packets_total", group=g) >= N)
        return now if done else None

    end = lab.wait_for(settled, 10.0, "the scraped counters to reach the datagrams sent "
                       "(OVS pushes flow stats about once a second)")
    expect: Mapping[tuple[str, Pod], float] = {
        ("kube_mcast_pod_outbound_packets_total", snd): N,
        ("kube_mcast_pod_outbound_bytes_total", snd): N * FRAME,
        ("kube_mcast_pod_inbound_packets_total", snd): 0,
        ("kube_mcast_pod_inbound_packets_total", rcv1): N,
        ("kube_mcast_pod_inbound_bytes_total", rcv1): N * FRAME,
        ("kube_mcast_pod_inbound_packets_total", rcv2): N,
        ("kube_mcast_pod_inbound_bytes_total", rcv2): N * FRAME,
        ("kube_mcast_pod_outbound_packets_total", rcv1): 0,
        ("kube_mcast_pod_inbound_packets_total", forged): 0,
    }
    got = {(name, pod): moved(start, end, name, **pod_labels(pod)) for name, pod in expect}
    assert got == expect, lab.debug()
    assert moved(start, end, "kube_mcast_group_packets_total", group=g) == N
    assert moved(start, end, "kube_mcast_group_bytes_total", group=g) == N * FRAME
    for reason in ("spoofed", "not_multicast", "igmp_rate", "oversized"):
        assert moved(start, end, "kube_mcast_pod_dropped_packets_total", reason=reason,
                     **pod_labels(snd)) == 0
    assert moved(start, end, "kube_mcast_igmp_messages_total", type="ReportV2",
                 verdict="accepted") == 1
    assert value(end, "kube_mcast_group_local_member", group=g2, **pod_labels(forged)) == 1
    assert value(end, "kube_mcast_groups") == 2
    assert moved(start, end, "kube_mcast_reconcile_rounds_total", kind="incremental",
                 result="ok") >= 1  # the forged report's group went in by one bundle
    assert value(end, "kube_mcast_flow_operation_seconds_count", kind="full") >= 1
