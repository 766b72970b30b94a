"""Multicast policy on this node: the current view enforced on the switch and in IGMP, counted.

Owns the node's ``PolicyView`` once the core has applied the controller's updates to it, the
data rules it installs through the reconciler (``Feature.POLICY``, one key per rule: its key
text), the IGMP verdicts it gives the core (reports and leaves from pods: egress; queries to
pods: ingress) and the per-rule counters: data rules from the switch's metric flows, IGMP
rules from the verdicts it gave. Counters never go backwards: a metric flow that is replaced
(its rule's priority moved) or reset (ovs-vswitchd restarted) leaves its last value in a base
that the new flow's counts are added to.

Callers hold the core's lock. May import ``agent.flowsync``, ``agent.multicast.igmp``,
``pipeline`` and ``wire.policy``.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from agent.flowsync.reconciler import Reconciler
from agent.flowsync.switch import Switch, SwitchDisconnected
from agent.multicast.igmp.packets import LeaveV2, MembershipReport, ReportV1, ReportV2, ReportV3
from agent.multicast.policy import saved
from agent.multicast.policy.compiler import ConjIds, IgmpJudge, data_rules
from pipeline.cookies import Feature, feature_cookie_mask
from pipeline.model import SwitchState
from pipeline.multicast import BridgeConfig
from pipeline.policy import RULE_PRIORITIES, DataRule, rule_flows, rule_stats_of
from wire.policy import (
    ALL_HOSTS,
    DROP,
    EGRESS,
    IGMP_LEAVE,
    IGMP_QUERY,
    IGMP_V1_REPORT,
    IGMP_V2_REPORT,
    IGMP_V3_REPORT,
    INGRESS,
    PolicyView,
    Rule,
    RuleStats,
)

log = logging.getLogger(__name__)

IGMP_V1V2_SIZE = 8  # bytes of a v1/v2 report or leave, counted on the rule that judged it
V3_RECORD_HEAD = 8  # a v3 group record's header; each source adds 4
_TYPES = {ReportV1: IGMP_V1_REPORT, ReportV2: IGMP_V2_REPORT, LeaveV2: IGMP_LEAVE}


@dataclass(frozen=True)
class RuleCount:
    """One enforced rule with its cumulative counters."""

    rule: Rule
    packets: int
    bytes: int


class PolicyEnforcer:
    def __init__(self, bridge: BridgeConfig, reconciler: Reconciler, switch: Switch,
                 saved_file: Path | None = None) -> None:
        self._bridge = bridge
        self._rec = reconciler
        self._switch = switch
        self.view = PolicyView()
        self.judge = IgmpJudge.of(self.view)
        self._ids = ConjIds()
        self._installed: dict[str, DataRule] = {}
        self._key_of_conj: dict[int, str] = {}
        self._igmp: dict[str, tuple[int, int]] = {}  # rule key text -> IGMP packets, bytes
        self._base: dict[str, tuple[int, int]] = {}  # counts of metric flows no longer there
        self._seen: dict[str, tuple[object, int, int]] = {}  # last read: flow key, counts
        self._last_type: dict[str, int] = {}  # pod ref -> type of its last report
        self._over_range = 0
        self._saved_file = saved_file  # where the view is kept across restarts (``saved``)

    # -- the view and the data rules ------------------------------------------------------------

    def restore(self, pods: Mapping[str, Sequence[int]]) -> None:
        """At start-up: enforce the view saved by the previous run, if any (``saved``)."""
        view = saved.load(self._saved_file) if self._saved_file is not None else None
        if view is not None:
            self.view = view
            self.judge = IgmpJudge.of(view)
        self.sync(pods)

    def set_view(self, view: PolicyView, pods: Mapping[str, Sequence[int]]) -> None:
        """Enforce ``view`` from the next flush (and save it); rules that left it lose their
        counters."""
        if self._saved_file is not None and view != self.view:
            saved.save(self._saved_file, view)
        self.view = view
        self.judge = IgmpJudge.of(view)
        self.sync(pods)  # reads the counters of flows about to go: forget them after
        for counts in (self._igmp, self._base, self._seen):
            for key in [k for k in counts if k not in view.rules]:
                del counts[key]

    def sync(self, pods: Mapping[str, Sequence[int]]) -> None:
        """Set the reconciler's policy keys for the current view and attached pods.

        ``pods``: ``namespace/name`` -> the ports it is attached through. Called when the view
        changes and when pods attach or go; the caller flushes, in the same bundle as the rest
        of the event.
        """
        errors: list[str] = []
        wanted = data_rules(self.view, pods, self._ids, errors)
        for text in errors:
            log.error("policy rule not enforced: %s", text)
        moved = [k for k, r in self._installed.items()
                 if k not in wanted or wanted[k].priority != r.priority]
        if moved:
            # Their metric flows are about to go: keep what they counted so far.
            self._read_counters()
        for key in self._installed.keys() - wanted.keys():
            self._rec.remove(Feature.POLICY, key)
        installed = {}
        for key, rule in wanted.items():
            if self._installed.get(key) == rule:
                installed[key] = rule
                continue
            try:
                flows = rule_flows(self._bridge, rule)
            except ValueError as e:  # one bad rule must not keep the others out
                log.error("policy rule %s not enforced: %s", key, e)
                self._rec.remove(Feature.POLICY, key)
                continue
            self._rec.set(Feature.POLICY, key, SwitchState(flows=tuple(flows)))
            installed[key] = rule
        self._installed = installed
        self._key_of_conj = {r.conj_id: k for k, r in installed.items()}
        over = sum(1 for r in self.view.rules.values() if not r.is_igmp) - len(RULE_PRIORITIES)
        if over > 0 and over != self._over_range:
            log.error("%d data rules beyond the %d policy priorities of a rule table: the last "
                      "in evaluation order are not enforced", over, len(RULE_PRIORITIES))
        self._over_range = over

    def data_rules(self) -> dict[str, DataRule]:
        """What is installed (or will be at the next flush), by rule key text."""
        return dict(self._installed)

    # -- IGMP -----------------------------------------------------------------------------------

    def judge_report(self, pod_ref: str, msg: MembershipReport) -> MembershipReport | None:
        """``msg`` as egress policy lets it through: v1/v2 reports and leaves whole or not at
        all (None), v3 reports record by record (None when no record is left)."""
        if isinstance(msg, ReportV3):
            self._last_type[pod_ref] = IGMP_V3_REPORT
            if not self.judge.has(EGRESS):
                return msg
            kept = tuple(r for r in msg.records if self._passes(
                EGRESS, pod_ref, IGMP_V3_REPORT, r.group, V3_RECORD_HEAD + 4 * len(r.sources)))
            if len(kept) == len(msg.records):
                return msg
            return replace(msg, records=kept) if kept else None
        kind = _TYPES[type(msg)]
        if kind != IGMP_LEAVE:  # a leave says nothing of the version the pod reports in
            self._last_type[pod_ref] = kind
        if not self.judge.has(EGRESS):
            return msg
        return msg if self._passes(EGRESS, pod_ref, kind, msg.group, IGMP_V1V2_SIZE) else None

    def query_ports(self, pods: Iterable[tuple[str, int]], address: str,
                    size: int) -> list[int] | None:
        """The ports a query to ``address`` (224.0.0.1 for a general one) may reach, counted
        per copy on the rule that decided it; None while no ingress IGMP rule exists (the query
        group floods it to every pod, as without policy)."""
        if not self.judge.has(INGRESS):
            return None
        return sorted(port for ref, port in pods
                      if self._passes(INGRESS, ref, IGMP_QUERY, address, size))

    def kept_from_queries(self, pods: Iterable[tuple[str, Hashable]]) -> list[Hashable]:
        """Of ``(pod ref, member)``, the members whose general queries the view drops (not
        counted: nothing is sent here)."""
        if not self.judge.has(INGRESS):
            return []
        return [m for ref, m in pods if not self.judge.allows(INGRESS, ref, IGMP_QUERY,
                                                               ALL_HOSTS)]

    def denied(self, memberships: Iterable[tuple[Hashable, str, str]]
               ) -> list[tuple[Hashable, str]]:
        """Of ``(member, pod ref, group)``, the memberships the view's egress rules would no
        longer let the pod report (judged as its last report type, IGMPv3 if unknown)."""
        if not self.judge.has(EGRESS):
            return []
        return [(m, g) for m, ref, g in memberships if not self.judge.allows(
            EGRESS, ref, self._last_type.get(ref, IGMP_V3_REPORT), g)]

    def forget_pod(self, pod_ref: str) -> None:
        self._last_type.pop(pod_ref, None)

    def _passes(self, direction: str, pod_ref: str, igmp_type: int, group: str,
                size: int) -> bool:
        rule = self.judge.decide(direction, pod_ref, igmp_type, group)
        if rule is None:
            return True
        packets, bytes_ = self._igmp.get(rule.key.text, (0, 0))
        self._igmp[rule.key.text] = (packets + 1, bytes_ + size)
        return rule.action != DROP

    # -- counters -------------------------------------------------------------------------------

    def counts(self) -> list[RuleCount]:
        """Every rule of the view with its cumulative packets and bytes, in key order.

        Reads the switch's policy metric flows; while it is away, the last values read."""
        try:
            self._read_counters()
        except SwitchDisconnected:
            log.debug("switch disconnected: rule counters as last read")
        out = []
        for key, rule in sorted(self.view.rules.items()):
            seen = self._seen.get(key)
            parts = [self._igmp.get(key, (0, 0)), self._base.get(key, (0, 0)),
                     (seen[1], seen[2]) if seen is not None else (0, 0)]
            out.append(RuleCount(rule, sum(p[0] for p in parts), sum(p[1] for p in parts)))
        return out

    def rule_stats(self) -> list[RuleStats]:
        return [RuleStats(c.rule.key, c.packets, c.bytes) for c in self.counts()]

    def _read_counters(self) -> None:
        """Read the metric flows; a flow that is not the one read last time, or counts less
        than it did, was replaced or reset: what the old one counted goes to the base."""
        now: dict[str, tuple[object, int, int]] = {}
        for s in self._switch.flow_stats(*feature_cookie_mask(Feature.POLICY)):
            conj = rule_stats_of(s.flow)
            key = None if conj is None else self._key_of_conj.get(conj)
            if key is not None:
                now[key] = (s.flow.key, s.packets, s.bytes)
        for key in set(self._seen) | set(now):
            old, new = self._seen.get(key), now.get(key)
            if old is not None and (new is None or new[0] != old[0] or new[1] < old[1]):
                packets, bytes_ = self._base.get(key, (0, 0))
                self._base[key] = (packets + old[1], bytes_ + old[2])
            if new is not None:
                self._seen[key] = new
            else:
                self._seen.pop(key, None)
