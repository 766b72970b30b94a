"""mcctl's output shapes (contracts): the PODS column, table layout, podmulticaststats columns."""

from __future__ import annotations

import json
from typing import Any

from tools.mcctl.format import join_limited, structured, table


def test_pods_column_cut_after_three() -> None:
    assert join_limited([]) == "<none>"
    assert join_limited(["a/x", "a/y"]) == "a/x,a/y"
    assert join_limited(["a/1", "a/2", "a/3", "a/4", "a/5"]) == "a/1,a/2,a/3 + 2 more..."


def test_table_aligns_columns() -> None:
    out = table(["NAMESPACE", "NAME", "INBOUND", "OUTBOUND"], [["default", "p1", 20, 0]])
    head, row = out.splitlines()
    assert head.split() == ["NAMESPACE", "NAME", "INBOUND", "OUTBOUND"]
    assert row.split() == ["default", "p1", "20", "0"]
    assert head.index("INBOUND") == row.index("20")


def test_structured_output() -> None:
    rows = [{"namespace": "default", "name": "p1", "inbound": 1, "outbound": 2}]
    assert json.loads(structured(rows, "json")) == rows
    assert "name: p1" in structured(rows, "yaml")


def test_get_pods_columns() -> None:
    """IP is the multicast address (the source its datagrams carry), PRIMARY-IP beside it."""
    from agent.interfacestore import PodInfo
    from tools.mcctl.cli import _pods, build_parser

    class Client:
        def list_pods(self) -> list[PodInfo]:
            return [
                PodInfo("default", "p1", "c1", "mcaaaa", "10.88.0.2", "02:00:00:00:00:01", 3,
                        ifname="mc0", primary_ip="10.88.0.2"),
                PodInfo("default", "p2", "c2", "mcbbbb", "10.77.0.5", "02:00:00:00:00:02", 4,
                        ifname="eth0"),
            ]

    def get(*argv: str) -> str:
        return _pods(Client(), build_parser().parse_args(["get", "pods", *argv]))  # type: ignore[arg-type]

    head, first, second = get().splitlines()
    assert head.split() == ["NAMESPACE", "NAME", "IP", "PRIMARY-IP", "OFPORT", "INTERFACE"]
    assert first.split() == ["default", "p1", "10.88.0.2", "10.88.0.2", "3", "mcaaaa"]
    assert second.split() == ["default", "p2", "10.77.0.5", "<none>", "4", "mcbbbb"]
    assert get("-o", "table") == get() == get("-A")
    [row, _] = json.loads(get("-o", "json"))
    assert (row["ip"], row["primary_ip"], row["ifname"]) == ("10.88.0.2", "10.88.0.2", "mc0")
    # wide: + the pod-side interface, its MAC and the container
    wide = [line.split() for line in get("-o", "wide").splitlines()]
    assert wide[0][6:] == ["POD-INTERFACE", "MAC", "CONTAINER"]
    assert wide[1][6:] == ["mc0", "02:00:00:00:00:01", "c1"]
    assert wide[2][6:] == ["eth0", "02:00:00:00:00:02", "c2"]
    # one pod by name (with its namespace); -n filters
    assert len(get("p2", "-n", "default").splitlines()) == 2
    assert len(get("-n", "other").splitlines()) == 1


class _Pods:
    """An agent client double answering the two calls podmulticaststats makes."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows

    def pod_stats(self) -> list[dict]:
        return self.rows

    def list_pods(self) -> list:
        return []


def _podstats(rows: list[dict], *argv: str) -> list[list[str]]:
    from tools.mcctl.cli import RESOURCES, build_parser

    args = build_parser().parse_args(["get", "podmulticaststats", *argv])
    out = RESOURCES["podmulticaststats"](_Pods(rows), args)  # type: ignore[arg-type]
    return [line.split() for line in out.splitlines()]


def test_podmulticaststats_wide_adds_oversized_after_the_other_drops() -> None:
    row: dict[str, Any] = {"namespace": "default", "name": "p1", "inbound": 1, "outbound": 2,
           "dropped": {"spoofed": 3, "notMulticast": 4, "igmpRate": 5, "oversized": 6}}
    head, line = _podstats([row], "-o", "wide")
    assert head[:8] == ["NAMESPACE", "NAME", "INBOUND", "OUTBOUND", "SPOOFED", "NOT-MULTICAST",
                        "IGMP-RATE-DROPS", "OVERSIZED"]
    assert line == ["default", "p1", "1", "2", "3", "4", "5", "6"]
    # the default columns are a contract and stay as they are
    assert _podstats([row])[0] == ["NAMESPACE", "NAME", "INBOUND", "OUTBOUND"]
    # an agent that does not report oversized drops leaves the column empty
    del row["dropped"]["oversized"]
    assert _podstats([row], "-o", "wide")[1] == ["default", "p1", "1", "2", "3", "4", "5"]


class _Rules:
    """An agent client double answering GET /v1/policystats."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows

    def policy_stats(self) -> list[dict]:
        return [dict(r) for r in self.rows]


def _policystats(rows: list[dict], *argv: str) -> str:
    from tools.mcctl.cli import RESOURCES, build_parser

    args = build_parser().parse_args(["get", "policystats", *argv])
    return RESOURCES["policystats"](_Rules(rows), args)  # type: ignore[arg-type]


def test_policystats_columns_one_row_per_rule_cluster_scoped_as_dash() -> None:
    def row(ns: str, policy: str, direction: str, index: int, rule: str, action: str,
            packets: int) -> dict:
        return {"scope": "namespaced" if ns else "cluster", "namespace": ns, "policy": policy,
                "direction": direction, "index": index, "rule": rule, "action": action,
                "kind": "data", "packets": packets, "bytes": packets * 100}

    rows = [row("trading", "feed-guard", "egress", 1, "drop-g2", "Drop", 10),
            row("trading", "feed-guard", "egress", 0, "allow-g3", "Allow", 10),
            row("", "cluster-wide", "ingress", 0, "no-queries", "Drop", 2)]
    lines = [line.split() for line in _policystats(rows).splitlines()]
    assert lines == [["NAMESPACE", "POLICY", "RULE", "ACTION", "PACKETS", "BYTES"],
                     ["-", "cluster-wide", "no-queries", "Drop", "2", "200"],
                     ["trading", "feed-guard", "allow-g3", "Allow", "10", "1000"],
                     ["trading", "feed-guard", "drop-g2", "Drop", "10", "1000"]]
    assert [r["rule"] for r in json.loads(_policystats(rows, "-o", "json"))] == [
        "no-queries", "allow-g3", "drop-g2"]
    assert "rule: drop-g2" in _policystats(rows, "-o", "yaml")
    assert len(_policystats(rows, "-n", "trading").splitlines()) == 3
    assert _policystats([]).split() == ["NAMESPACE", "POLICY", "RULE", "ACTION", "PACKETS",
                                        "BYTES"]


def test_policystats_wide_adds_direction_and_kind_a_named_policy_must_exist() -> None:
    import pytest

    from tools.mcctl.cli import ApiError, UsageError

    rows = [{"scope": "cluster", "namespace": "", "policy": "cw", "direction": "ingress",
             "index": 0, "rule": "no-queries", "action": "Drop", "kind": "igmp", "packets": 2,
             "bytes": 92}]
    head, line = (ln.split() for ln in _policystats(rows, "-o", "wide").splitlines())
    assert head == ["NAMESPACE", "POLICY", "RULE", "ACTION", "PACKETS", "BYTES", "DIRECTION",
                    "KIND"]
    assert line == ["-", "cw", "no-queries", "Drop", "2", "92", "ingress", "igmp"]
    assert _policystats(rows, "-A") == _policystats(rows, "-o", "table") == _policystats(rows)
    assert len(_policystats(rows, "cw").splitlines()) == 2  # a cluster policy: no -n needed
    with pytest.raises(ApiError, match="policy other has no rules on this node"):
        _policystats(rows, "other")
    with pytest.raises(UsageError, match="across all namespaces"):
        _policystats(rows, "cw", "-A")


def test_podmulticaststats_all_namespaces_and_names() -> None:
    import pytest

    from tools.mcctl.cli import ApiError, UsageError

    rows = [{"namespace": ns, "name": "p", "inbound": 1, "outbound": 0} for ns in ("a", "b")]
    assert len(_podstats(rows)) == len(_podstats(rows, "-A")) == 3
    assert _podstats(rows, "-n", "b")[1:] == [["b", "p", "1", "0"]]
    assert _podstats(rows, "p", "-n", "a")[1:] == [["a", "p", "1", "0"]]
    with pytest.raises(UsageError, match="needs its namespace"):
        _podstats(rows, "p")
    with pytest.raises(UsageError, match="across all namespaces"):
        _podstats(rows, "p", "-A")
    with pytest.raises(ApiError, match="pod a/q not found"):
        _podstats(rows, "q", "-n", "a")


MEMBERS: list[dict[str, Any]] = [
    {"group": "239.1.1.1", "localPods": ["default/rx1", "default/rx2", "trading/rx3"],
     "remoteNodes": ["10.99.0.2", "10.99.0.3"],
     "sourceFilters": {"default/rx2": {"mode": "include", "sources": ["10.0.0.1", "10.0.0.2"]},
                       "trading/rx3": {"mode": "exclude", "sources": ["10.0.0.9"]}}},
    {"group": "239.2.2.2", "localPods": [], "remoteNodes": ["10.99.0.2"], "sourceFilters": {},
     "outsideHosts": ["192.0.2.7"]},
    # an agent from before source filters: no sourceFilters key at all
    {"group": "239.3.3.3", "localPods": ["default/rx1"], "remoteNodes": []},
]


class _Members:
    """An agent client double answering GET /v1/members and GET /v1/pods."""

    def members(self) -> list[dict]:
        return [dict(m) for m in MEMBERS]

    def list_pods(self) -> list:
        from agent.interfacestore import PodInfo

        return [PodInfo("default", "rx1", "c1", "mc1111", "10.88.0.11", "02:00:00:00:00:11",
                        5, ifname="mc0")]


def _members(*argv: str) -> str:
    from tools.mcctl.cli import RESOURCES, build_parser

    args = build_parser().parse_args(["get", "members", *argv])
    return RESOURCES["members"](_Members(), args)  # type: ignore[arg-type]


def test_sources_column() -> None:
    from tools.mcctl.format import sources_cell

    assert sources_cell(None) == sources_cell({}) == "*"
    assert sources_cell({"mode": "exclude", "sources": []}) == "*"
    assert sources_cell({"mode": "exclude", "sources": ["10.0.0.9"]}) == "exclude 10.0.0.9"
    assert sources_cell({"mode": "include", "sources": ["10.0.0.1", "10.0.0.2"]}) == \
        "include 10.0.0.1,10.0.0.2"
    assert sources_cell({"mode": "include", "sources": []}) == "include <none>"


def test_members_one_row_per_subscriber_local_endpoints_then_remote_nodes_then_outside() -> None:
    out = _members()
    lines = out.splitlines()
    assert lines[0].split() == ["GROUP", "SUBSCRIBER", "TYPE", "SOURCES"]
    # TYPE holds a blank ("Local Endpoint"): columns are cut at the header's offsets
    starts = [lines[0].index(h) for h in ("SUBSCRIBER", "TYPE", "SOURCES")]
    cells = [[ln[:starts[0]].strip(), ln[starts[0]:starts[1]].strip(),
              ln[starts[1]:starts[2]].strip(), ln[starts[2]:].strip()] for ln in lines[1:]]
    assert cells == [
        ["239.1.1.1", "default/rx1", "Local Endpoint", "*"],
        ["239.1.1.1", "default/rx2", "Local Endpoint", "include 10.0.0.1,10.0.0.2"],
        ["239.1.1.1", "trading/rx3", "Local Endpoint", "exclude 10.0.0.9"],
        ["239.1.1.1", "10.99.0.2", "Remote Node", "*"],
        ["239.1.1.1", "10.99.0.3", "Remote Node", "*"],
        ["239.2.2.2", "10.99.0.2", "Remote Node", "*"],
        ["239.2.2.2", "192.0.2.7", "Outside Host", "*"],
        ["239.3.3.3", "default/rx1", "Local Endpoint", "*"],
    ]
    assert _members("-o", "table") == out


def test_members_of_one_group_and_of_an_unknown_one() -> None:
    import pytest

    from tools.mcctl.cli import ApiError, UsageError

    assert [ln.split()[:2] for ln in _members("239.2.2.2").splitlines()[1:]] == [
        ["239.2.2.2", "10.99.0.2"], ["239.2.2.2", "192.0.2.7"]]
    with pytest.raises(ApiError, match="group 239.9.9.9 has no members on this node"):
        _members("239.9.9.9")
    with pytest.raises(UsageError, match="not a multicast address"):
        _members("10.1.1.1")
    with pytest.raises(UsageError, match="not an IPv4 address"):
        _members("nonsense")


def test_members_wide_and_structured_output_keeps_the_agents_keys() -> None:
    import yaml

    head, *rows = (ln.split() for ln in _members("-o", "wide").splitlines())
    assert head == ["GROUP", "SUBSCRIBER", "TYPE", "SOURCES", "IP", "OFPORT", "INTERFACE"]
    assert rows[0] == ["239.1.1.1", "default/rx1", "Local", "Endpoint", "*", "10.88.0.11", "5",
                       "mc1111"]
    assert rows[1][-3:] == ["<unknown>", "-", "-"]  # a member the pod list does not know
    assert rows[3] == ["239.1.1.1", "10.99.0.2", "Remote", "Node", "*", "10.99.0.2", "-", "-"]
    # json and yaml: the agent's rows unchanged (lab tests and scripts read these keys)
    assert json.loads(_members("-o", "json")) == MEMBERS
    assert yaml.safe_load(_members("-o", "yaml")) == MEMBERS
    assert json.loads(_members("239.3.3.3", "-o", "json")) == [MEMBERS[2]]
