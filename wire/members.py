"""A node's local multicast membership as its agent reports it to the controller.

``{"groups": [{"group": "239.1.1.1", "pods": [{"namespace", "name", "mode", "sources"}]}]}``:
every group with at least one local member pod, each pod with its IGMPv3 filter mode
(``exclude`` with no sources is a plain any-source join) and its source list. Parsing refuses
anything else with a message naming the offending entry.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from wire.nodes import WireError

FILTER_MODES = ("include", "exclude")


@dataclass(frozen=True, order=True)
class MemberPod:
    namespace: str
    name: str
    mode: str = "exclude"
    sources: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def to_json(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "name": self.name, "mode": self.mode,
                "sources": list(self.sources)}


@dataclass(frozen=True)
class GroupReport:
    """One group's local member pods on the reporting node."""

    group: str
    pods: tuple[MemberPod, ...]

    def to_json(self) -> dict[str, Any]:
        return {"group": self.group, "pods": [p.to_json() for p in self.pods]}


def _ipv4(value: Any, where: str, multicast: bool) -> str:
    try:
        ip = ipaddress.IPv4Address(value)
    except (ValueError, TypeError):
        raise WireError(f"{where}: {value!r} is not an IPv4 address") from None
    if multicast and not ip.is_multicast:
        raise WireError(f"{where}: {value} is not a multicast address")
    return str(ip)


def _pod(obj: Any, where: str) -> MemberPod:
    if not isinstance(obj, dict):
        raise WireError(f"{where}: expected an object")
    for key in ("namespace", "name"):
        if not isinstance(obj.get(key), str) or not obj[key]:
            raise WireError(f"{where}.{key}: expected a non-empty string")
    mode = obj.get("mode", "exclude")
    if mode not in FILTER_MODES:
        raise WireError(f"{where}.mode: {mode!r} is not one of {', '.join(FILTER_MODES)}")
    sources = obj.get("sources", [])
    if not isinstance(sources, list):
        raise WireError(f"{where}.sources: expected a list")
    return MemberPod(obj["namespace"], obj["name"], mode,
                     tuple(sorted(_ipv4(s, f"{where}.sources", False) for s in sources)))


def groups_from_json(body: Any) -> list[GroupReport]:
    """Validate ``{"groups": [{"group": G, "pods": [...]}, ...]}``."""
    groups = body.get("groups") if isinstance(body, dict) else None
    if not isinstance(groups, list):
        raise WireError('expected {"groups": [...]}')
    out = []
    for i, entry in enumerate(groups):
        if not isinstance(entry, dict):
            raise WireError(f"groups[{i}]: expected an object")
        group = _ipv4(entry.get("group"), f"groups[{i}].group", True)
        pods = entry.get("pods")
        if not isinstance(pods, list):
            raise WireError(f"groups[{i}].pods: expected a list")
        out.append(GroupReport(group, tuple(sorted(
            _pod(p, f"groups[{i}].pods[{k}]") for k, p in enumerate(pods)))))
    return out


def groups_to_json(groups: Iterable[GroupReport]) -> dict[str, Any]:
    return {"groups": [g.to_json() for g in groups]}
