"""Validation of ``MulticastPolicy`` / ``ClusterMulticastPolicy`` objects: an object (the API's
JSON dict) becomes a ``ValidPolicy`` or a list of errors, each naming its field path
(``spec.egress[1].to[0].ipBlock.cidr: 10.0.0.0/8 is not multicast``).

Owns the rules the CRD schema cannot express (or that must hold even where no schema is
enforced): priority in [1, 10000]; appliedTo non-empty, ``namespaceSelector`` there only in a
cluster policy; Allow|Drop; rule names unique in the policy (default ``egress-0``,
``ingress-2``: direction and position); a rule is IGMP (``protocols``) or data, never both;
IGMP rules take no to/from/ports/sources and only their direction's types (egress: reports and
leaves, ingress: queries); ``groupAddress`` and to/from CIDRs multicast (a rule mixing
multicast and unicast CIDRs gets a message of its own); ``sources[].ipBlock`` unicast; ports
UDP 1..65535; egress data needs ``to``, ingress data ``from`` and/or ``sources``; unknown
fields refused. Pure; imports ``wire.policy`` and ``controller.policy.selectors``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from controller.policy.selectors import Peer, parse_selector
from wire.policy import (
    ACTIONS,
    CLUSTER,
    EGRESS,
    EGRESS_IGMP_TYPES,
    INGRESS,
    INGRESS_IGMP_TYPES,
    NAMESPACED,
    IgmpMatch,
)

GROUP, VERSION = "multicast.kube-mcast.io", "v1alpha1"
KINDS = {"MulticastPolicy": NAMESPACED, "ClusterMulticastPolicy": CLUSTER}
PLURALS = {NAMESPACED: "multicastpolicies", CLUSTER: "clustermulticastpolicies"}
PRIORITY_MIN, PRIORITY_MAX = 1, 10000
MULTICAST = ipaddress.IPv4Network("224.0.0.0/4")
SPEC_FIELDS = {"priority", "appliedTo", "egress", "ingress"}
RULE_FIELDS = {"name", "action", "protocols", "to", "from", "ports", "sources"}
DATA_FIELDS = ("to", "from", "ports", "sources")


@dataclass(frozen=True, order=True)
class PolicyRef:
    scope: str  # CLUSTER | NAMESPACED
    namespace: str  # "" for a cluster policy
    name: str

    @property
    def key(self) -> str:
        """The watch store's key: ``namespace/name`` or ``name``."""
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


@dataclass(frozen=True)
class RuleSpec:
    direction: str
    index: int  # position in its egress/ingress list
    name: str
    action: str
    igmp: tuple[IgmpMatch, ...] = ()
    groups: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()
    source_cidrs: tuple[str, ...] = ()
    source_peers: tuple[Peer, ...] = ()


@dataclass(frozen=True)
class ValidPolicy:
    ref: PolicyRef
    priority: float
    applied_to: tuple[Peer, ...]  # sorted, deduplicated: the applied-to group's selector
    rules: tuple[RuleSpec, ...]  # egress rules, then ingress rules


def policy_ref(obj: dict[str, Any]) -> PolicyRef:
    meta = obj.get("metadata") or {}
    scope = KINDS.get(str(obj.get("kind")), NAMESPACED if meta.get("namespace") else CLUSTER)
    return PolicyRef(scope, str(meta.get("namespace") or "") if scope == NAMESPACED else "",
                     str(meta.get("name") or ""))


def validate(obj: dict[str, Any]) -> ValidPolicy | list[str]:
    """The policy ``obj`` describes, or every problem found (field paths first)."""
    ref = policy_ref(obj)
    errors: list[str] = []
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return ["spec: required"]
    for key in sorted(set(spec) - SPEC_FIELDS):
        errors.append(f"spec.{key}: unknown field")
    priority = spec.get("priority")
    if (not isinstance(priority, int | float) or isinstance(priority, bool)
            or not PRIORITY_MIN <= priority <= PRIORITY_MAX):
        errors.append(f"spec.priority: {priority!r} is not a number in "
                      f"[{PRIORITY_MIN}, {PRIORITY_MAX}]")
    applied = _applied_to(spec.get("appliedTo"), ref, errors)
    rules: list[RuleSpec] = []
    names: dict[str, str] = {}
    for direction in (EGRESS, INGRESS):
        items = spec.get(direction, [])
        if items is None:
            items = []
        if not isinstance(items, list):
            errors.append(f"spec.{direction}: expected a list")
            continue
        for i, item in enumerate(items):
            where = f"spec.{direction}[{i}]"
            rule = _rule(item, direction, i, where, ref, errors)
            if rule is None:
                continue
            if rule.name in names:
                errors.append(f"{where}.name: {rule.name!r} is already the name of "
                              f"{names[rule.name]}")
            names.setdefault(rule.name, where)
            rules.append(rule)
    if errors:
        return errors
    assert isinstance(priority, int | float)
    return ValidPolicy(ref, float(priority), applied, tuple(rules))


def _peer(item: Any, where: str, ref: PolicyRef, errors: list[str], *, sources: bool,
          ) -> Peer | None:
    if not isinstance(item, dict):
        errors.append(f"{where}: expected an object")
        return None
    allowed = {"podSelector", "namespaceSelector"}
    for key in sorted(set(item) - allowed - ({"ipBlock"} if sources else set())):
        errors.append(f"{where}.{key}: unknown field")
    if "podSelector" not in item and "namespaceSelector" not in item:
        errors.append(f"{where}: needs podSelector and/or namespaceSelector")
        return None
    if "namespaceSelector" in item and ref.scope == NAMESPACED and not sources:
        errors.append(f"{where}.namespaceSelector: only a ClusterMulticastPolicy selects "
                      "namespaces in appliedTo")
        return None
    pods = (parse_selector(item["podSelector"], f"{where}.podSelector", errors)
            if "podSelector" in item else None)
    namespaces = (parse_selector(item["namespaceSelector"], f"{where}.namespaceSelector",
                                 errors) if "namespaceSelector" in item else None)
    own = ref.namespace if ref.scope == NAMESPACED and namespaces is None else None
    return Peer(own, namespaces, pods)


def _applied_to(value: Any, ref: PolicyRef, errors: list[str]) -> tuple[Peer, ...]:
    if not isinstance(value, list) or not value:
        errors.append("spec.appliedTo: must list at least one selector")
        return ()
    peers = [_peer(v, f"spec.appliedTo[{i}]", ref, errors, sources=False)
             for i, v in enumerate(value)]
    return tuple(sorted({p for p in peers if p is not None}, key=Peer.sort_key))


def _list(rule: dict[str, Any], key: str, where: str, errors: list[str]) -> list[Any]:
    value = rule.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        errors.append(f"{where}.{key}: expected a list")
        return []
    if not value:
        errors.append(f"{where}.{key}: must not be empty (leave it out instead)")
    return value


def _rule(item: Any, direction: str, index: int, where: str, ref: PolicyRef,
          errors: list[str]) -> RuleSpec | None:
    if not isinstance(item, dict):
        errors.append(f"{where}: expected an object")
        return None
    before = len(errors)
    for key in sorted(set(item) - RULE_FIELDS):
        errors.append(f"{where}.{key}: unknown field")
    name = item.get("name", f"{direction}-{index}")
    if not isinstance(name, str) or not name or len(name) > 253:
        errors.append(f"{where}.name: {name!r} is not a rule name")
    action = item.get("action")
    if action not in ACTIONS:
        errors.append(f"{where}.action: {action!r} is not one of {', '.join(ACTIONS)}")
    wrong = "from" if direction == EGRESS else "to"
    for key in (wrong, "sources") if direction == EGRESS else (wrong,):
        if key in item:
            errors.append(f"{where}.{key}: not allowed in an {direction} rule")
    if "protocols" in item:
        igmp = _igmp(item, direction, where, errors)
        if len(errors) > before:
            return None
        return RuleSpec(direction, index, str(name), str(action), igmp)
    groups_key = "to" if direction == EGRESS else "from"
    groups = _cidrs(_list(item, groups_key, where, errors), f"{where}.{groups_key}", errors,
                    multicast=True)
    ports = _ports(_list(item, "ports", where, errors), f"{where}.ports", errors)
    cidrs: list[str] = []
    peers: list[Peer] = []
    if direction == INGRESS:
        for i, s in enumerate(_list(item, "sources", where, errors)):
            at = f"{where}.sources[{i}]"
            if isinstance(s, dict) and "ipBlock" in s:
                if set(s) != {"ipBlock"}:
                    errors.append(f"{at}: ipBlock excludes podSelector and namespaceSelector")
                cidrs += _cidrs([s], at, errors, multicast=False)
            else:
                peer = _peer(s, at, ref, errors, sources=True)
                if peer is not None:
                    peers.append(peer)
    if direction == EGRESS and not item.get("to"):
        errors.append(f"{where}: an egress data rule needs to (or protocols for IGMP)")
    if direction == INGRESS and not item.get("from") and not item.get("sources"):
        errors.append(f"{where}: an ingress data rule needs from and/or sources "
                      "(or protocols for IGMP)")
    if len(errors) > before:
        return None
    return RuleSpec(direction, index, str(name), str(action), (), tuple(groups), tuple(ports),
                    tuple(sorted(set(cidrs))), tuple(dict.fromkeys(peers)))


def _igmp(item: dict[str, Any], direction: str, where: str,
          errors: list[str]) -> tuple[IgmpMatch, ...]:
    for key in DATA_FIELDS:
        if key in item:
            errors.append(f"{where}.{key}: an IGMP rule (protocols) takes no {key}")
    types = EGRESS_IGMP_TYPES if direction == EGRESS else INGRESS_IGMP_TYPES
    out = []
    for i, p in enumerate(_list(item, "protocols", where, errors)):
        at = f"{where}.protocols[{i}]"
        if not isinstance(p, dict) or set(p) != {"igmp"} or not isinstance(p["igmp"], dict):
            errors.append(f"{at}: expected {{igmp: {{igmpType, groupAddress}}}}")
            continue
        igmp = p["igmp"]
        for key in sorted(set(igmp) - {"igmpType", "groupAddress"}):
            errors.append(f"{at}.igmp.{key}: unknown field")
        t, g = igmp.get("igmpType"), igmp.get("groupAddress")
        if t is not None and (not isinstance(t, int) or isinstance(t, bool) or t not in types):
            errors.append(f"{at}.igmp.igmpType: {t!r} is not an {direction} IGMP type "
                          f"({', '.join(hex(x) for x in types)})")
        if g is not None:
            problem = _address_error(g)
            if problem:
                errors.append(f"{at}.igmp.groupAddress: {problem}")
        out.append(IgmpMatch(t, None if g is None else str(g)))
    return tuple(sorted(set(out), key=lambda m: (m.igmp_type or -1, m.group or "")))


def _address_error(value: Any) -> str | None:
    try:
        address = ipaddress.IPv4Address(value)
    except (ValueError, TypeError):
        return f"{value!r} is not an IPv4 address"
    return None if address.is_multicast else f"{value} is not multicast"


def _cidrs(blocks: list[Any], where: str, errors: list[str], *, multicast: bool) -> list[str]:
    """Each ``{ipBlock: {cidr}}``'s network; multicast ones (``to``/``from``) or unicast ones
    (``sources``). One list mixing both gets a message of its own."""
    nets: list[tuple[str, ipaddress.IPv4Network]] = []
    for i, b in enumerate(blocks):
        at = where if not multicast else f"{where}[{i}]"
        block = b.get("ipBlock") if isinstance(b, dict) else None
        if not isinstance(block, dict) or (multicast and set(b) != {"ipBlock"}):
            errors.append(f"{at}: expected {{ipBlock: {{cidr}}}}")
            continue
        for key in sorted(set(block) - {"cidr"}):
            errors.append(f"{at}.ipBlock.{key}: unknown field")
        try:
            nets.append((f"{at}.ipBlock.cidr", ipaddress.IPv4Network(block.get("cidr"))))
        except (ValueError, TypeError) as e:
            errors.append(f"{at}.ipBlock.cidr: {block.get('cidr')!r} is not an IPv4 CIDR ({e})")
    def is_mc(n: ipaddress.IPv4Network) -> bool:
        return n.subnet_of(MULTICAST)

    if multicast:
        mc = [str(n) for _, n in nets if is_mc(n)]
        uni = [str(n) for _, n in nets if not is_mc(n)]
        if mc and uni:
            errors.append(f"{where}: mixes multicast ({', '.join(mc)}) and unicast "
                          f"({', '.join(uni)}) CIDRs")
            return []
        for at, n in nets:
            if not is_mc(n):
                errors.append(f"{at}: {n} is not multicast")
        return sorted(set(mc), key=lambda c: ipaddress.IPv4Network(c))
    for at, n in nets:
        if n.overlaps(MULTICAST) or n.overlaps(ipaddress.IPv4Network("240.0.0.0/4")):
            errors.append(f"{at}: {n} is not unicast")
    return [str(n) for _, n in nets]


def _ports(entries: list[Any], where: str, errors: list[str]) -> list[int]:
    """UDP destination ports; an entry without ``port`` means every UDP port (Antrea's)."""
    ports: set[int] = set()
    any_port = False
    for i, e in enumerate(entries):
        at = f"{where}[{i}]"
        if not isinstance(e, dict):
            errors.append(f"{at}: expected an object")
            continue
        for key in sorted(set(e) - {"protocol", "port"}):
            errors.append(f"{at}.{key}: unknown field")
        if e.get("protocol", "UDP") != "UDP":
            errors.append(f"{at}.protocol: {e.get('protocol')!r} is not UDP (multicast data "
                          "is UDP)")
        port = e.get("port")
        if port is None:
            any_port = True
        elif not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            errors.append(f"{at}.port: {port!r} is not a port in 1..65535")
        else:
            ports.add(port)
    return [] if any_port else sorted(ports)
