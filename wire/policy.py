"""Multicast policy as the controller streams it to one agent, and rule statistics back.

The controller splits every valid ``MulticastPolicy`` / ``ClusterMulticastPolicy`` into
``Rule`` objects plus shared groups, the way Antrea's controller does: an ``AppliedToGroup``
per distinct appliedTo selector (holding, for one node, the ``namespace/name`` of its pods on
that node) and an ``AddressGroup`` per distinct ``sources`` selector (the IPv4 addresses of its
pods cluster-wide). Rules name their groups by id. A node's ``PolicyView`` holds only the rules
whose applied-to pods run there (its span) and the groups they use.

On the stream the controller sends ``{"type": "policy", "version": N, "full": bool, ...}``
(``wire.stream``): ``full`` replaces the agent's view (the first message of a connection),
otherwise the message patches it. ``diff(old, new)`` computes that patch and
``PolicyView.apply`` applies it; for any two views ``old.apply(diff(old, new)) == new``. Groups
change by added/removed members, so a pod label change costs a few addresses, not a group.

An agent reports ``RuleStats`` per rule it enforces (cumulative since it started enforcing the
rule); the controller sums them over nodes into each policy's ``status.ruleStats``.

Imports nothing of ours but ``wire``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from wire.nodes import WireError

EGRESS, INGRESS = "egress", "ingress"
DIRECTIONS = (EGRESS, INGRESS)
ALLOW, DROP = "Allow", "Drop"
ACTIONS = (ALLOW, DROP)
CLUSTER, NAMESPACED = "cluster", "namespaced"
SCOPES = (CLUSTER, NAMESPACED)

IGMP_QUERY = 0x11
IGMP_V1_REPORT = 0x12
IGMP_V2_REPORT = 0x16
IGMP_LEAVE = 0x17
IGMP_V3_REPORT = 0x22
EGRESS_IGMP_TYPES = (IGMP_V1_REPORT, IGMP_V2_REPORT, IGMP_LEAVE, IGMP_V3_REPORT)
INGRESS_IGMP_TYPES = (IGMP_QUERY,)
ALL_HOSTS = "224.0.0.1"  # the group address of a general query (its destination)


@dataclass(frozen=True, order=True)
class RuleKey:
    """Names one rule cluster-wide: its policy, direction and position in that list."""

    scope: str  # CLUSTER | NAMESPACED
    namespace: str  # "" for cluster-scoped policies
    policy: str
    direction: str  # EGRESS | INGRESS
    index: int

    @property
    def policy_ref(self) -> str:
        return f"{self.namespace}/{self.policy}" if self.namespace else self.policy

    @property
    def text(self) -> str:
        return f"{self.scope}/{self.namespace}/{self.policy}/{self.direction}/{self.index}"

    def to_json(self) -> dict[str, Any]:
        return {"scope": self.scope, "namespace": self.namespace, "policy": self.policy,
                "direction": self.direction, "index": self.index}


@dataclass(frozen=True, order=True)
class IgmpMatch:
    """An IGMP rule's ``protocols[].igmp``: None matches any type / any group."""

    igmp_type: int | None = None
    group: str | None = None

    def matches(self, igmp_type: int, group: str) -> bool:
        return ((self.igmp_type is None or self.igmp_type == igmp_type)
                and (self.group is None or self.group == group))


@dataclass(frozen=True)
class Rule:
    """One rule as enforced: IGMP (``igmp`` non-empty) or data (groups/sources/ports)."""

    key: RuleKey
    name: str
    action: str  # ALLOW | DROP
    priority: float  # the policy's spec.priority (lower is evaluated first)
    applied_to: str  # AppliedToGroup id
    igmp: tuple[IgmpMatch, ...] = ()
    groups: tuple[str, ...] = ()  # multicast CIDRs (egress ``to``, ingress ``from``); () = any
    ports: tuple[int, ...] = ()  # UDP destination ports; () = any
    source_cidrs: tuple[str, ...] = ()  # ingress: unicast CIDRs of senders
    source_groups: tuple[str, ...] = ()  # ingress: AddressGroup ids of sender pods

    @property
    def is_igmp(self) -> bool:
        return bool(self.igmp)

    @property
    def has_sources(self) -> bool:
        return bool(self.source_cidrs or self.source_groups)

    def order(self) -> tuple[float, int, str, str, int]:
        """Evaluation order: priority, cluster-scoped first, policy name, rule position."""
        k = self.key
        return (self.priority, 0 if k.scope == CLUSTER else 1, k.policy, k.namespace, k.index)

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key.to_json(), "name": self.name, "action": self.action,
                "priority": self.priority, "appliedTo": self.applied_to,
                "igmp": [{"type": m.igmp_type, "group": m.group} for m in self.igmp],
                "groups": list(self.groups), "ports": list(self.ports),
                "sourceCidrs": list(self.source_cidrs), "sourceGroups": list(self.source_groups)}


@dataclass(frozen=True)
class PolicyView:
    """What one agent enforces: rules by key text, applied-to groups (member pods on the
    node, ``namespace/name``) and address groups (IPv4 addresses), by id."""

    rules: Mapping[str, Rule] = field(default_factory=dict)
    applied_to: Mapping[str, frozenset[str]] = field(default_factory=dict)
    addresses: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def ordered_rules(self) -> list[Rule]:
        return sorted(self.rules.values(), key=Rule.order)

    def apply(self, update: PolicyUpdate) -> PolicyView:
        base = PolicyView() if update.full else self
        rules = {k: v for k, v in base.rules.items() if k not in update.delete_rules}
        rules.update({r.key.text: r for r in update.set_rules})
        return PolicyView(rules, _patched(base.applied_to, update.applied_to),
                          _patched(base.addresses, update.addresses))


@dataclass(frozen=True)
class GroupChanges:
    """Changes of one kind of group: whole groups set, members added/removed, groups gone."""

    set: Mapping[str, frozenset[str]] = field(default_factory=dict)
    add: Mapping[str, frozenset[str]] = field(default_factory=dict)
    remove: Mapping[str, frozenset[str]] = field(default_factory=dict)
    delete: frozenset[str] = frozenset()

    def empty(self) -> bool:
        return not (self.set or self.add or self.remove or self.delete)


@dataclass(frozen=True)
class PolicyUpdate:
    full: bool = False
    set_rules: tuple[Rule, ...] = ()
    delete_rules: frozenset[str] = frozenset()
    applied_to: GroupChanges = GroupChanges()
    addresses: GroupChanges = GroupChanges()

    def empty(self) -> bool:
        return (not self.full and not self.set_rules and not self.delete_rules
                and self.applied_to.empty() and self.addresses.empty())


def _patched(groups: Mapping[str, frozenset[str]], ch: GroupChanges) -> dict[str, frozenset[str]]:
    out = {k: v for k, v in groups.items() if k not in ch.delete}
    out.update(ch.set)
    for gid, added in ch.add.items():
        out[gid] = out.get(gid, frozenset()) | added
    for gid, removed in ch.remove.items():
        if gid in out:
            out[gid] = out[gid] - removed
    return out


def _group_diff(old: Mapping[str, frozenset[str]],
                new: Mapping[str, frozenset[str]]) -> GroupChanges:
    set_, add, remove = {}, {}, {}
    for gid, members in new.items():
        before = old.get(gid)
        if before is None:
            set_[gid] = members
        elif before != members:
            if members - before:
                add[gid] = members - before
            if before - members:
                remove[gid] = before - members
    return GroupChanges(set_, add, remove, frozenset(old) - frozenset(new))


def diff(old: PolicyView, new: PolicyView) -> PolicyUpdate:
    """The patch that turns ``old`` into ``new`` (rules whole, groups by member)."""
    return PolicyUpdate(
        False,
        tuple(r for k, r in sorted(new.rules.items()) if old.rules.get(k) != r),
        frozenset(old.rules) - frozenset(new.rules),
        _group_diff(old.applied_to, new.applied_to),
        _group_diff(old.addresses, new.addresses))


def full_update(view: PolicyView) -> PolicyUpdate:
    return replace(diff(PolicyView(), view), full=True)


@dataclass(frozen=True, order=True)
class RuleStats:
    key: RuleKey
    packets: int
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key.to_json(), "packets": self.packets, "bytes": self.bytes}


# -- JSON ------------------------------------------------------------------------------------


def _str(obj: Mapping[str, Any], key: str, where: str, empty: bool = False) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or (not value and not empty):
        raise WireError(f"{where}.{key}: expected a {'' if empty else 'non-empty '}string")
    return value


def _int(value: Any, where: str, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise WireError(f"{where}: expected an integer in {lo}..{hi}, got {value!r}")
    return value


def _list(obj: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = obj.get(key, [])
    if not isinstance(value, list):
        raise WireError(f"{where}.{key}: expected a list")
    return value


def _obj(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise WireError(f"{where}: expected an object")
    return value


def _net(value: Any, where: str) -> str:
    try:
        return str(ipaddress.IPv4Network(value, strict=False))
    except (ValueError, TypeError):
        raise WireError(f"{where}: {value!r} is not an IPv4 CIDR") from None


def _ip(value: Any, where: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except (ValueError, TypeError):
        raise WireError(f"{where}: {value!r} is not an IPv4 address") from None


def _choice(obj: Mapping[str, Any], key: str, where: str, allowed: tuple[str, ...]) -> str:
    value = obj.get(key)
    if value not in allowed:
        raise WireError(f"{where}.{key}: {value!r} is not one of {', '.join(allowed)}")
    return str(value)


def rule_key_from_json(value: Any, where: str) -> RuleKey:
    obj = _obj(value, where)
    scope = _choice(obj, "scope", where, SCOPES)
    direction = _choice(obj, "direction", where, DIRECTIONS)
    namespace = _str(obj, "namespace", where, empty=True)
    if (scope == NAMESPACED) != bool(namespace):
        raise WireError(f"{where}.namespace: a {scope} rule "
                        f"{'needs' if scope == NAMESPACED else 'has no'} namespace")
    return RuleKey(scope, namespace, _str(obj, "policy", where), direction,
                   _int(obj.get("index"), f"{where}.index", 0, 1 << 16))


def rule_from_json(value: Any, where: str) -> Rule:
    obj = _obj(value, where)
    action = _choice(obj, "action", where, ACTIONS)
    priority = obj.get("priority")
    if not isinstance(priority, int | float) or isinstance(priority, bool):
        raise WireError(f"{where}.priority: expected a number, got {priority!r}")
    igmp = []
    for i, m in enumerate(_list(obj, "igmp", where)):
        m = _obj(m, f"{where}.igmp[{i}]")
        t, g = m.get("type"), m.get("group")
        igmp.append(IgmpMatch(None if t is None else _int(t, f"{where}.igmp[{i}].type", 0, 255),
                              None if g is None else _ip(g, f"{where}.igmp[{i}].group")))
    return Rule(
        rule_key_from_json(obj.get("key"), f"{where}.key"), _str(obj, "name", where),
        action, float(priority), _str(obj, "appliedTo", where), tuple(igmp),
        tuple(_net(c, f"{where}.groups") for c in _list(obj, "groups", where)),
        tuple(_int(p, f"{where}.ports", 1, 65535) for p in _list(obj, "ports", where)),
        tuple(_net(c, f"{where}.sourceCidrs") for c in _list(obj, "sourceCidrs", where)),
        tuple(_str({"id": g}, "id", f"{where}.sourceGroups")
              for g in _list(obj, "sourceGroups", where)))


def _members(value: Any, where: str, ips: bool) -> frozenset[str]:
    if not isinstance(value, list):
        raise WireError(f"{where}: expected a list")
    if ips:
        return frozenset(_ip(v, where) for v in value)
    for v in value:
        if not isinstance(v, str) or v.count("/") != 1:
            raise WireError(f"{where}: {v!r} is not namespace/name")
    return frozenset(value)


def _group_changes_from_json(value: Any, where: str, ips: bool) -> GroupChanges:
    obj = _obj(value if value is not None else {}, where)
    sets: dict[str, dict[str, frozenset[str]]] = {"set": {}, "add": {}, "remove": {}}
    for part, members_key in (("set", "members"), ("add", "members"), ("remove", "members")):
        for i, g in enumerate(_list(obj, part, where)):
            g = _obj(g, f"{where}.{part}[{i}]")
            sets[part][_str(g, "id", f"{where}.{part}[{i}]")] = _members(
                g.get(members_key), f"{where}.{part}[{i}].{members_key}", ips)
    delete = _list(obj, "delete", where)
    if not all(isinstance(d, str) for d in delete):
        raise WireError(f"{where}.delete: expected a list of ids")
    return GroupChanges(sets["set"], sets["add"], sets["remove"], frozenset(delete))


def _group_changes_to_json(ch: GroupChanges) -> dict[str, Any]:
    def entries(groups: Mapping[str, frozenset[str]]) -> list[dict[str, Any]]:
        return [{"id": gid, "members": sorted(m)} for gid, m in sorted(groups.items())]
    return {"set": entries(ch.set), "add": entries(ch.add), "remove": entries(ch.remove),
            "delete": sorted(ch.delete)}


def update_to_json(update: PolicyUpdate) -> dict[str, Any]:
    return {"full": update.full,
            "rules": {"set": [r.to_json() for r in update.set_rules],
                      "delete": sorted(update.delete_rules)},
            "appliedToGroups": _group_changes_to_json(update.applied_to),
            "addressGroups": _group_changes_to_json(update.addresses)}


def update_from_json(body: Any) -> PolicyUpdate:
    """Validate a policy update's body; ``WireError`` names the offending field."""
    obj = _obj(body, "policy")
    full = obj.get("full", False)
    if not isinstance(full, bool):
        raise WireError("full: expected true or false")
    rules = _obj(obj.get("rules", {}), "rules")
    deleted = _list(rules, "delete", "rules")
    if not all(isinstance(d, str) for d in deleted):
        raise WireError("rules.delete: expected a list of rule key texts")
    return PolicyUpdate(
        full,
        tuple(rule_from_json(r, f"rules.set[{i}]")
              for i, r in enumerate(_list(rules, "set", "rules"))),
        frozenset(deleted),
        _group_changes_from_json(obj.get("appliedToGroups"), "appliedToGroups", ips=False),
        _group_changes_from_json(obj.get("addressGroups"), "addressGroups", ips=True))


def stats_to_json(stats: Iterable[RuleStats]) -> dict[str, Any]:
    return {"rules": [s.to_json() for s in sorted(stats)]}


def stats_from_json(body: Any) -> list[RuleStats]:
    obj = _obj(body, "ruleStats")
    out = []
    for i, s in enumerate(_list(obj, "rules", "ruleStats")):
        where = f"rules[{i}]"
        s = _obj(s, where)
        out.append(RuleStats(rule_key_from_json(s.get("key"), f"{where}.key"),
                             _int(s.get("packets"), f"{where}.packets", 0, 1 << 63),
                             _int(s.get("bytes"), f"{where}.bytes", 0, 1 << 63)))
    return out
