"""The cluster's node set as agents receive it: ``{"nodes": [{"name", "ips"}]}``.

The first IP of a node is its tunnel endpoint (its InternalIP). Parsing refuses anything else
with a message naming the offending entry, so a bad sender is told what it got wrong.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


class WireError(ValueError):
    """A message does not have the declared shape; the text names the field."""


@dataclass(frozen=True)
class NodeInfo:
    name: str
    ips: tuple[str, ...]

    @property
    def tunnel_ip(self) -> str | None:
        return self.ips[0] if self.ips else None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ips": list(self.ips)}


def nodes_from_json(body: Any) -> list[NodeInfo]:
    """Validate ``{"nodes": [{"name": str, "ips": [IPv4, ...]}, ...]}``."""
    nodes = body.get("nodes") if isinstance(body, dict) else None
    if not isinstance(nodes, list):
        raise WireError('expected {"nodes": [...]}')
    out = []
    for i, node in enumerate(nodes):
        if not isinstance(node, dict) or not isinstance(node.get("name"), str):
            raise WireError(f"nodes[{i}]: expected an object with a string 'name'")
        ips = node.get("ips")
        if not isinstance(ips, list) or not all(isinstance(ip, str) for ip in ips):
            raise WireError(f"nodes[{i}].ips: expected a list of strings")
        for ip in ips:
            try:
                ipaddress.IPv4Address(ip)
            except ValueError:
                raise WireError(f"nodes[{i}].ips: {ip!r} is not an IPv4 address") from None
        out.append(NodeInfo(node["name"], tuple(ips)))
    return out


def nodes_to_json(nodes: Iterable[NodeInfo]) -> dict[str, Any]:
    return {"nodes": [n.to_json() for n in nodes]}
