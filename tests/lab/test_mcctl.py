"""``mcctl`` against a running 2-node lab (encap) with real joins and real traffic: the exact
output of ``get members`` (one row per subscriber, a source-specific member's IGMPv3 filter),
``get podmulticaststats -o wide``, ``get pods -A``, ``-o yaml``/``-o json`` as data, the
one-line errors and their exit statuses, and ``check-config`` on the lab's own agent config.

Tables are compared whole: the expected text is built from the expected cells with
``tools.mcctl.format.table`` (whose alignment tests/tools/test_mcctl_format.py pins), so a
changed column, order, or cell fails here.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from conftest import Lab, Pod, wait_for

from tools.mcctl.format import MEMBER_HEADERS, table

pytestmark = pytest.mark.lab

LAB_OPTIONS = {"nodes": 2, "mode": "encap"}
NODE = "node1"
NODE2_IP = "192.168.77.2"
G, PORT = "239.20.0.1", 5201
N = 10
PPS = 200.0
PODSTATS_WIDE = ["NAMESPACE", "NAME", "INBOUND", "OUTBOUND", "SPOOFED", "NOT-MULTICAST",
                 "IGMP-RATE-DROPS", "OVERSIZED", "IP", "OFPORT", "INTERFACE"]
PODS = ["NAMESPACE", "NAME", "IP", "PRIMARY-IP", "OFPORT", "INTERFACE"]


def _get(lab: Lab, *args: str) -> str:
    return lab.mcctl("--node", NODE, "get", *args).stdout


def _fails(lab: Lab, *args: str) -> tuple[int, str]:
    """(exit status, stderr) of a failing mcctl; nothing on stdout, one line, no traceback."""
    res = lab.mcctl(*args, check=False)
    assert res.returncode != 0 and res.stdout == "", res
    assert res.stderr.startswith("mcctl: ") and res.stderr.count("\n") == 1, res.stderr
    return res.returncode, res.stderr


@pytest.fixture(scope="module")
def pods(lab: Lab) -> dict[str, Pod]:
    """A sender and two receivers on node1 (one in another namespace), a receiver on node2."""
    return {"tx": lab.create_pod("mc-tx", NODE), "any": lab.create_pod("mc-any", NODE),
            "ssm": lab.create_pod("mc-ssm", NODE, namespace="team-a"),
            "far": lab.create_pod("mc-far", "node2")}


def test_members_podmulticaststats_and_pods_after_real_traffic(lab: Lab,
                                                              pods: dict[str, Pod]) -> None:
    tx, anysrc, ssm, far = pods["tx"], pods["any"], pods["ssm"], pods["far"]
    rxs = [lab.start_receiver(anysrc, G, PORT), lab.start_receiver(ssm, G, PORT, source=tx.ip),
           lab.start_receiver(far, G, PORT)]
    for rx in rxs:
        rx.wait_ready()
    lab.wait_members(NODE, G, [anysrc, ssm], exact=True)
    lab.wait_members("node2", G, [far], exact=True)
    members: list[dict[str, Any]] = wait_for(
        lambda: (m := lab.mcctl_json(NODE, "members")) and m[0]["remoteNodes"] == [NODE2_IP]
        and m, 10.0, f"{NODE} to list {NODE2_IP} as a remote member of {G}")

    # one row per subscriber: the local pods (a source-specific one with its INCLUDE filter),
    # then the remote node; the same for the group by name
    want = table(MEMBER_HEADERS, [[G, anysrc.ref, "Local Endpoint", "*"],
                                  [G, ssm.ref, "Local Endpoint", f"include {tx.ip}"],
                                  [G, NODE2_IP, "Remote Node", "*"]]) + "\n"
    assert _get(lab, "members") == want
    assert _get(lab, "members", G) == want
    # json and yaml: the agent's rows, their keys as the other lab tests read them
    assert members == [{"group": G, "localPods": [anysrc.ref, ssm.ref],
                        "remoteNodes": [NODE2_IP], "outsideHosts": [],
                        "sourceFilters": {ssm.ref: {"mode": "include", "sources": [tx.ip]}}}]
    assert yaml.safe_load(_get(lab, "members", G, "-o", "yaml")) == members

    lab.send(tx, G, PORT, N, PPS)
    for rx in rxs:
        rx.wait_count(N)

    def settled() -> list[dict[str, Any]]:  # OVS pushes flow stats about once a second
        rows: list[dict[str, Any]] = lab.mcctl_json(NODE, "podmulticaststats")
        got = {(r["namespace"], r["name"]): (r["inbound"], r["outbound"]) for r in rows}
        want = {(tx.namespace, tx.name): (0, N), (anysrc.namespace, anysrc.name): (N, 0),
                (ssm.namespace, ssm.name): (N, 0)}
        return rows if got == want else []

    stats = wait_for(settled, 10.0, "node1's pod counters to show the N datagrams")
    attached = {(p["namespace"], p["name"]): p for p in lab.mcctl_json(NODE, "pods")}
    wide = [[r["namespace"], r["name"], r["inbound"], r["outbound"], 0, 0, 0, 0,
             attached[r["namespace"], r["name"]]["ip"],
             attached[r["namespace"], r["name"]]["ofport"],
             attached[r["namespace"], r["name"]]["host_ifname"]] for r in stats]
    assert _get(lab, "podmulticaststats", "-o", "wide") == table(PODSTATS_WIDE, wide) + "\n"
    assert yaml.safe_load(_get(lab, "podmulticaststats", "-o", "yaml")) == stats
    for rx in rxs:
        rx.stop()

    # every pod of node1, whatever its namespace; -n narrows
    rows = [[p["namespace"], p["name"], p["ip"], p["primary_ip"] or "<none>", p["ofport"],
             p["host_ifname"]] for p in attached.values()]
    assert {(r[0], r[1], r[2]) for r in rows} == {(p.namespace, p.name, p.ip)
                                                  for p in (tx, anysrc, ssm)}
    assert _get(lab, "pods", "-A") == table(PODS, rows) + "\n" == _get(lab, "pods")
    assert _get(lab, "pods", "-n", "team-a") == table(
        PODS, [r for r in rows if r[0] == "team-a"]) + "\n"
    [one] = yaml.safe_load(_get(lab, "pods", ssm.name, "-n", ssm.namespace, "-o", "yaml"))
    assert (one["namespace"], one["name"], one["ip"]) == (ssm.namespace, ssm.name, ssm.ip)


def test_unknown_pod_group_and_node_are_one_line_errors(lab: Lab, pods: dict[str, Pod]) -> None:
    assert _fails(lab, "--node", NODE, "get", "podmulticaststats", "nosuch", "-n",
                  "default") == (1, "mcctl: pod default/nosuch not found\n")
    assert _fails(lab, "--node", NODE, "get", "pods", "mc-ssm", "-n",
                  "default") == (1, "mcctl: pod default/mc-ssm not found\n")
    assert _fails(lab, "--node", NODE, "get", "members", "239.20.0.99") == (
        1, "mcctl: group 239.20.0.99 has no members on this node\n")
    code, err = _fails(lab, "--node", NODE, "get", "pods", "mc-tx")
    assert code == 2 and "-n NAMESPACE" in err, err
    code, err = _fails(lab, "--node", "node9", "get", "pods")
    assert code == 2 and "no node 'node9'" in err, err


def test_unreachable_agent_names_its_socket(lab: Lab) -> None:
    code, err = _fails(lab, "--socket", "/nonexistent", "get", "members")
    assert code == 1 and "no socket at /nonexistent" in err, err
    assert "multicast disabled" in err  # such an agent serves no API: the same error


def test_other_gets_take_every_output(lab: Lab, pods: dict[str, Pod]) -> None:
    wait_for(lambda: lab.members(NODE) == {}, 15.0, f"the receivers' leaves on {NODE}")
    flows = json.loads(_get(lab, "flows", "-o", "json"))
    assert flows and all(isinstance(f, str) for f in flows)
    assert _get(lab, "flows") == "\n".join(flows) + "\n"
    assert _get(lab, "policystats", "-o", "wide").split() == [
        "NAMESPACE", "POLICY", "RULE", "ACTION", "PACKETS", "BYTES", "DIRECTION", "KIND"]
    assert yaml.safe_load(_get(lab, "groups", "-o", "yaml")) in (None, [])
    assert _get(lab, "groups", "-o", "wide") == _get(lab, "groups") == "GROUP   PODS\n"


def test_check_config_on_the_lab_agents_config(lab: Lab) -> None:
    [node] = [n for n in lab.state()["nodes"] if n["name"] == NODE]
    path = f"{node['rundir']}/agent.yaml"
    assert lab.mcctl("check-config", path).stdout == f"{path}: valid agent config\n"
