"""``mcctl trace`` against a running 2-node lab (encap) after real joins: the agent dumps the real
br-int, walks the datagram on the fake table and explains it.

Pods on node1: a receiver joined to G (``mcprobe recv``), a pod that joined nothing, a sender; on
node2 a receiver, so node1's group of G also has a bucket for node2; an outside host joined to G
too, which node1 hears on its uplink, so the group also has an external bucket. The exact text
shape is checked (``tools.mcctl.trace``): the header lines with the verdict, the tables crossed in
order with their flows' owners, the group's buckets and what became of each copy, the membership.
The flows' priorities, matches and actions are whatever the agent installed: they must parse as a
table line, and the route must point at the group that ran.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from conftest import Lab, Pod

pytestmark = pytest.mark.lab

LAB_OPTIONS = {"nodes": 2, "mode": "encap"}
NODE = "node1"
NODE2_IP = "192.168.77.2"
G, PORT = "239.30.0.1", 5301
TABLE_LINE = re.compile(r"^(?P<indent> +)(?P<table>Multicast\w+|Classifier) +"
                        r"priority=(?P<prio>\d+)\S* actions=(?P<actions>\S+) \[(?P<owner>.+)\]$")


@pytest.fixture(scope="module")
def pods(lab: Lab) -> dict[str, Pod]:
    pods = {"rx": lab.create_pod("tr-rx", NODE), "non": lab.create_pod("tr-non", NODE),
            "tx": lab.create_pod("tr-tx", NODE), "far": lab.create_pod("tr-far", "node2"),
            "out": lab.create_external("tr-out")}
    receivers = [lab.start_receiver(pods[p], G, PORT).wait_ready() for p in ("rx", "far", "out")]

    def joined() -> bool:
        m = _json(lab, "--pod", pods["rx"].ref)["membership"]
        return m["localPods"] == [pods["rx"].ref] and m["remoteNodes"] == [NODE2_IP] \
            and m["outsideHosts"] == [pods["out"].ip]

    try:
        # each node's own join first, so a failure says which side is missing
        lab.wait_members(NODE, G, [pods["rx"]], timeout=15)
        lab.wait_members("node2", G, [pods["far"]], timeout=15)
        lab.wait_for(joined, 15, f"{pods['rx'].ref}, node2 and {pods['out'].ip} (outside) to be "
                     f"members of {G} on {NODE} (node1's members: "
                     f"{lab.mcctl_json(NODE, 'members')})")
    except BaseException:  # their processes would outlive the lab
        for r in receivers:
            r.stop()
        raise
    return pods


def _member_line(ref: str, state: str) -> str:
    return "  " + f"{ref}:".ljust(14) + " " + state


def _trace(lab: Lab, *args: str) -> list[str]:
    res = lab.mcctl("--node", NODE, "trace", "--group", G, *args)
    assert res.stderr == "", res.stderr
    return res.stdout.splitlines()


def _tables(lines: list[str]) -> list[tuple[int, str, str]]:
    """(indent, table, owner) of every table line."""
    out = []
    for line in lines:
        m = TABLE_LINE.match(line)
        if m:
            out.append((len(m["indent"]), m["table"], m["owner"]))
    return out


def _json(lab: Lab, *args: str) -> dict[str, Any]:
    return json.loads(lab.mcctl("--node", NODE, "trace", "--group", G, *args, "-o",
                                "json").stdout)


def test_a_member_from_outside_and_from_a_local_sender(lab: Lab, pods: dict[str, Pod]) -> None:
    rx = pods["rx"]
    res = _json(lab, "--pod", rx.ref)
    port, uplink = res["pod"]["port"], res["packet"]["inPort"]
    lines = _trace(lab, "--pod", rx.ref)
    assert lines[:6] == [
        f"Packet:        {G}:5000 from 192.0.2.1 (106-byte frame), in from the uplink "
        f"(port {uplink})",
        f"Pod:           {rx.ref} (port {port}) on {NODE}",
        "Verdict:       DELIVERED",
        f"Reason:        a member of {G} (any source)",
        "Policy rule:   <none>",
        "Tables:"], "\n".join(lines)
    assert _tables(lines) == [
        (2, "Classifier", "pipeline"), (2, "MulticastRouting", f"group (*, {G})"),
        (6, "MulticastIngressRule", "pipeline"),
        (6, "MulticastIngressMetric", f"pod {rx.ref}"),  # its INBOUND counter flow
        (6, "MulticastOutput", "pipeline")], "\n".join(lines)
    [route] = [ln for ln in lines if ln.startswith("  MulticastRouting ")]
    [group_line] = [ln for ln in lines if ln.startswith("  group ")]
    gid = int(group_line.split()[1].rstrip(":"))
    assert f"actions=group:{gid} " in route and group_line == f"  group {gid}: 3 buckets"
    buckets = [ln for ln in lines if ln.startswith("    bucket ")]
    relay = "dropped here: a node never relays what came in through the tunnel or the uplink"
    assert buckets == [
        f"    bucket 0 to pod {rx.ref} (port {port}): delivered to pod {rx.ref} (port {port})",
        f"    bucket 1 to node {NODE2_IP} (the tunnel): {relay}",
        f"    bucket 2 to external receivers (the uplink): {relay}"], "\n".join(lines)
    assert lines[-5:] == [
        f"Membership of {G}:",
        f"  Local pods:    {rx.ref}",
        f"  Remote nodes:  {NODE2_IP}",
        f"  Outside hosts: {pods['out'].ip}",
        _member_line(rx.ref, "member (any source)")], "\n".join(lines)

    tx = pods["tx"]
    lines = _trace(lab, "--pod", rx.ref, "--from-pod", tx.ref)
    assert lines[0].startswith(f"Packet:        {G}:5000 from {tx.ip} (106-byte frame), in "
                               f"from pod {tx.ref} (port ")
    assert lines[2] == "Verdict:       DELIVERED"
    assert [t for _, t, _ in _tables(lines)][:4] == [
        "Classifier", "MulticastEgressRule", "MulticastEgressMetric", "MulticastRouting"]
    assert [ln.split(": ", 1)[1] for ln in lines if ln.startswith("    bucket ")][1:] == [
        f"sent to {NODE2_IP} through the tunnel", "sent out the uplink from 192.168.77.1"]


def test_a_non_member_and_a_packet_from_node2(lab: Lab, pods: dict[str, Pod]) -> None:
    non, rx = pods["non"], pods["rx"]
    lines = _trace(lab, "--pod", non.ref, "--from-node", NODE2_IP, "--source", pods["far"].ip)
    assert lines[2:5] == ["Verdict:       NOT DELIVERED",
                          f"Reason:        not a member of {G}",
                          "Policy rule:   <none>"], "\n".join(lines)
    assert lines[0].startswith(f"Packet:        {G}:5000 from {pods['far'].ip} (106-byte "
                               f"frame), in from node {NODE2_IP} (the tunnel, port ")
    # Only the packet's own path: no bucket of the group is the non-member's.
    assert _tables(lines) == [(2, "Classifier", "pipeline"),
                              (2, "MulticastRouting", f"group (*, {G})")], "\n".join(lines)
    port = _json(lab, "--pod", rx.ref)["pod"]["port"]
    assert f"    bucket 0 to pod {rx.ref} (port {port}): delivered to pod {rx.ref} (port " \
           f"{port})" in lines, "\n".join(lines)
    assert lines[-1] == _member_line(non.ref, "not a member")


def test_errors_are_one_line(lab: Lab, pods: dict[str, Pod]) -> None:
    for args, err in ((("--pod", "default/tr-nobody", "--group", G),
                       f"mcctl: pod default/tr-nobody is not attached to node {NODE}\n"),
                      (("--pod", pods["rx"].ref, "--group", "10.1.2.3"),
                       "mcctl: group 10.1.2.3 is not a multicast address (224.0.0.0/4)\n")):
        res = lab.mcctl("--node", NODE, "trace", *args, check=False)
        assert (res.returncode, res.stdout, res.stderr) == (1, "", err)
