"""mcctl's output shapes (contracts): the PODS column, table layout, podmulticaststats columns."""

from __future__ import annotations

import json

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
    import argparse

    from agent.interfacestore import PodInfo
    from tools.mcctl.cli import _pods

    class Client:
        def list_pods(self) -> list[PodInfo]:
            return [
                PodInfo("default", "p1", "c1", "mcaaaa", "10.88.0.2", "02:00:00:00:00:01", 3,
                        ifname="mc0", primary_ip="10.88.0.2"),
                PodInfo("default", "p2", "c2", "mcbbbb", "10.77.0.5", "02:00:00:00:00:02", 4,
                        ifname="eth0"),
            ]

    args = argparse.Namespace(output=None)
    head, first, second = _pods(Client(), args).splitlines()  # type: ignore[arg-type]
    assert head.split() == ["NAMESPACE", "NAME", "IP", "PRIMARY-IP", "OFPORT", "INTERFACE"]
    assert first.split() == ["default", "p1", "10.88.0.2", "10.88.0.2", "3", "mcaaaa"]
    assert second.split() == ["default", "p2", "10.77.0.5", "<none>", "4", "mcbbbb"]
    [row, _] = json.loads(_pods(Client(), argparse.Namespace(output="json")))  # type: ignore[arg-type]
    assert (row["ip"], row["primary_ip"], row["ifname"]) == ("10.88.0.2", "10.88.0.2", "mc0")


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
    row = {"namespace": "default", "name": "p1", "inbound": 1, "outbound": 2,
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
