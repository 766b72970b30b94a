"""Tables and structured output for mcctl (pure): no agent, no sockets, no files.

Owns how rows look: the aligned table, ``-o json|yaml``, the PODS column's cut after three, and
the subscriber rows of ``mcctl get members`` (one row per local pod or remote node of a group,
with the pod's IGMPv3 source filter), and folding an error into mcctl's one line. Column
layouts are contracts: scripts parse them; ``-o json|yaml`` print the agent's rows as data,
unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

MAX_LISTED = 3
OUTPUTS = ("table", "wide", "json", "yaml")
"""What every ``get`` takes after ``-o``: table (the default), wide (more columns where the
resource has more), json and yaml (the rows as data)."""

LOCAL = "Local Endpoint"
REMOTE = "Remote Node"
OUTSIDE = "Outside Host"
MEMBER_HEADERS = ["GROUP", "SUBSCRIBER", "TYPE", "SOURCES"]
MEMBER_WIDE_HEADERS = [*MEMBER_HEADERS, "IP", "OFPORT", "INTERFACE"]


def join_limited(items: Sequence[str], limit: int = MAX_LISTED) -> str:
    """'a,b,c + 2 more...' as kubectl's multicastgroups PODS column; '<none>' when empty."""
    if not items:
        return "<none>"
    head = ",".join(items[:limit])
    rest = len(items) - limit
    return f"{head} + {rest} more..." if rest > 0 else head


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns left-aligned, three spaces apart, trailing blanks cut (kubectl's layout)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    return "\n".join(lines)


def one_line(message: str) -> str:
    """``message`` with its line breaks (a YAML error's context, a server's) folded into
    spaces: mcctl's errors are one line."""
    return " ".join(message.split())


def structured(rows: Any, output: str) -> str:
    """``rows`` (a list of dicts, or of strings) as JSON or YAML."""
    if output == "json":
        return json.dumps(rows, indent=2)
    return yaml.safe_dump(rows, sort_keys=False).rstrip()


def sources_cell(source_filter: Mapping[str, Any] | None) -> str:
    """A pod's IGMPv3 source filter as the SOURCES column.

    ``*``: any source (no filter, IGMPv1/v2, or EXCLUDE of nothing); ``include A,B``: only
    those; ``exclude A``: any but those; ``include <none>``: a filter that admits nothing."""
    if not source_filter:
        return "*"
    mode = str(source_filter.get("mode", "exclude"))
    sources = [str(s) for s in source_filter.get("sources", [])]
    if mode == "exclude" and not sources:
        return "*"
    return f"{mode} {','.join(sources) or '<none>'}"


def member_rows(members: Sequence[Mapping[str, Any]],
                pods: Mapping[str, Sequence[object]] | None = None) -> list[list[object]]:
    """The rows of ``mcctl get members`` from the agent's ``GET /v1/members`` answer.

    One row per subscriber, group by group as the agent orders them: first the group's local
    pods (``Local Endpoint``, SUBSCRIBER ``ns/name``, SOURCES their filter), then the nodes it
    forwards the group to (``Remote Node``, SUBSCRIBER the node IP, SOURCES ``*``: the node gets
    every source, its agent filters for its pods), then the hosts that reported it on the uplink
    (``Outside Host``, SUBSCRIBER the host's IP, SOURCES ``*``). With ``pods`` ({ref: [ip,
    ofport, interface]}), the wide columns: a local pod's, a remote node's IP and ``-``.
    """
    rows: list[list[object]] = []
    for m in members:
        filters = m.get("sourceFilters") or {}
        for ref in m.get("localPods", []):
            row: list[object] = [m["group"], ref, LOCAL, sources_cell(filters.get(ref))]
            if pods is not None:
                row += list(pods.get(ref, ["<unknown>", "-", "-"]))
            rows.append(row)
        for node in m.get("remoteNodes", []):
            row = [m["group"], node, REMOTE, "*"]
            if pods is not None:
                row += [node, "-", "-"]
            rows.append(row)
        for host in m.get("outsideHosts", []):
            row = [m["group"], host, OUTSIDE, "*"]
            if pods is not None:
                row += [host, "-", "-"]
            rows.append(row)
    return rows
