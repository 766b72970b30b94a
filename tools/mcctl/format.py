"""Tables and structured output for mcctl (pure).

Column layouts are contracts: scripts parse them. ``-o json|yaml`` print the rows as data.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import yaml

MAX_LISTED = 3


def join_limited(items: Sequence[str], limit: int = MAX_LISTED) -> str:
    """'a,b,c + 2 more...' as kubectl's multicastgroups PODS column; '<none>' when empty."""
    if not items:
        return "<none>"
    head = ",".join(items[:limit])
    rest = len(items) - limit
    return f"{head} + {rest} more..." if rest > 0 else head


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    return "\n".join(lines)


def structured(rows: list[dict], output: str) -> str:
    if output == "json":
        return json.dumps(rows, indent=2)
    return yaml.safe_dump(rows, sort_keys=False).rstrip()
