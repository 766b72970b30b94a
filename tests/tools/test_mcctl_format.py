"""mcctl's output shapes (contracts): the PODS column and table layout."""

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
