"""A node's ``PolicyView`` compiled into what enforces it (pure): data rules and IGMP verdicts.

Owns the translation from ``wire.policy`` rules to ``pipeline.policy.DataRule``: which rules
reach the switch (data rules with applied-to pods attached here), their conjunction ids (stable
per rule for as long as the rule is in the view: ``ConjIds``), their OVS priorities (from
``Rule.order()``: the first rule evaluated gets the highest priority, unique per direction),
and the first-match verdict of IGMP rules (``IgmpJudge``). No switch, no clock, no agent state:
it may import ``wire.policy`` and ``pipeline.policy`` only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from pipeline.policy import RULE_PRIORITIES, DataRule, Direction, Verdict
from wire.policy import DROP, EGRESS, INGRESS, PolicyView, Rule

MAX_CONJ_ID = (1 << 32) - 1


class ConjIds:
    """Conjunction ids by rule key text: a rule keeps its id while it stays in the view.

    Ids are handed out lowest-free first, but an id given back in one ``assign`` is not handed
    out again in the same call, so one bundle never removes a rule's flows and adds another's
    under the same id.
    """

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._free: list[int] = []
        self._next = 1

    def assign(self, keys: Iterable[str]) -> dict[str, int]:
        wanted = set(keys)
        gone = [k for k in self._ids if k not in wanted]
        for key in sorted(wanted - self._ids.keys()):
            self._ids[key] = self._take()
        for key in gone:  # after the allocations above: see the class docstring
            self._free.append(self._ids.pop(key))
        self._free.sort(reverse=True)
        return dict(self._ids)

    def _take(self) -> int:
        if self._free:
            return self._free.pop()
        if self._next > MAX_CONJ_ID:
            raise ValueError("conjunction ids exhausted")
        self._next += 1
        return self._next - 1


def data_rules_in_order(view: PolicyView, direction: str) -> list[Rule]:
    return [r for r in view.ordered_rules() if not r.is_igmp and r.key.direction == direction]


def priorities(view: PolicyView) -> dict[str, int]:
    """OVS priority per data rule (key text): in evaluation order from the top of
    ``RULE_PRIORITIES`` down, per direction. Rules beyond the range get none (not enforced;
    the caller logs them): far more rules than any node's policy holds."""
    out: dict[str, int] = {}
    for direction in (EGRESS, INGRESS):
        for i, rule in enumerate(data_rules_in_order(view, direction)[:len(RULE_PRIORITIES)]):
            out[rule.key.text] = RULE_PRIORITIES[-1 - i]
    return out


def sources_of(rule: Rule, view: PolicyView) -> tuple[str, ...] | None:
    """An ingress rule's sender CIDRs: its own plus every address of its address groups, as
    /32s; () when the rule names no sources (any sender); None when it names some but they
    resolve to no address yet: then it is about nobody and must not match everyone."""
    if not rule.has_sources:
        return ()
    found = set(rule.source_cidrs)
    for gid in rule.source_groups:
        found |= {f"{ip}/32" for ip in view.addresses.get(gid, ())}
    if not found:
        return None
    return tuple(sorted(found, key=lambda c: (int(ipaddress.IPv4Network(c).network_address),
                                              c)))


def data_rule(rule: Rule, view: PolicyView, pods: Mapping[str, Sequence[int]], conj_id: int,
              priority: int) -> DataRule | None:
    """``rule``'s data rule on this node, or None if it has nothing to enforce here (no
    applied-to pod attached, or sources that resolve to nobody)."""
    ports = sorted({p for ref in view.applied_to.get(rule.applied_to, ())
                    for p in pods.get(ref, ())})
    if not ports:
        return None
    sources = sources_of(rule, view) if rule.key.direction == INGRESS else ()
    if sources is None:
        return None
    return DataRule(conj_id=conj_id, priority=priority, direction=Direction(rule.key.direction),
                    verdict=Verdict(rule.action), ports=tuple(ports), groups=rule.groups,
                    sources=sources, udp_ports=tuple(sorted(rule.ports)))


def data_rules(view: PolicyView, pods: Mapping[str, Sequence[int]], ids: ConjIds,
               errors: list[str] | None = None) -> dict[str, DataRule]:
    """Every data rule of the view with something to enforce here, by rule key text.

    ``pods`` maps ``namespace/name`` to the ports it is attached through (a restarted pod may
    briefly have two). Conjunction ids are assigned to every data rule of the view, with or
    without local pods, so a pod coming and going does not move them. A rule the switch
    could not take is left out, its reason appended to ``errors``.
    """
    prio = priorities(view)
    conj = ids.assign(k for k, r in view.rules.items() if not r.is_igmp)
    out = {}
    for key, priority in prio.items():
        try:
            built = data_rule(view.rules[key], view, pods, conj[key], priority)
        except ValueError as e:  # pipeline.policy.PolicyError: one bad rule, not all rules
            if errors is not None:
                errors.append(f"{key}: {e}")
            continue
        if built is not None:
            out[key] = built
    return out


@dataclass(frozen=True)
class IgmpJudge:
    """First-match verdicts of a view's IGMP rules, per direction in evaluation order."""

    rules: Mapping[str, tuple[Rule, ...]]  # direction -> IGMP rules, in order
    applied_to: Mapping[str, frozenset[str]]

    @classmethod
    def of(cls, view: PolicyView) -> IgmpJudge:
        ordered = [r for r in view.ordered_rules() if r.is_igmp]
        return cls({d: tuple(r for r in ordered if r.key.direction == d)
                    for d in (EGRESS, INGRESS)}, view.applied_to)

    def has(self, direction: str) -> bool:
        return bool(self.rules.get(direction))

    def decide(self, direction: str, pod_ref: str, igmp_type: int, group: str) -> Rule | None:
        """The first rule that applies to ``pod_ref`` and matches (type, group); None: no rule
        matches, so the message is allowed."""
        for rule in self.rules.get(direction, ()):
            if pod_ref in self.applied_to.get(rule.applied_to, ()) and any(
                    m.matches(igmp_type, group) for m in rule.igmp):
                return rule
        return None

    def allows(self, direction: str, pod_ref: str, igmp_type: int, group: str) -> bool:
        rule = self.decide(direction, pod_ref, igmp_type, group)
        return rule is None or rule.action != DROP
