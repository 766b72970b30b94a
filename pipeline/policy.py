"""Builders of the flows of multicast NetworkPolicy data rules (pure: they return descriptions).

This module owns how one rule of a pod's multicast policy becomes flows in the two rule tables
(``layout.EGRESS_RULE`` for what a pod sends, ``layout.INGRESS_RULE`` for each copy a pod
receives) and how those flows are recognised again (``rule_stats_of``). The rules themselves,
which pods they apply to and in what order, are computed elsewhere; here a rule arrives as a
``DataRule`` with its OVS priority and conjunction id already chosen.

A rule is an OVS conjunctive match (``model.Conjunction``): one flow per value of each of its
dimensions -- the pods it applies to, the groups (ipv4_dst), for ingress the sources (ipv4_src),
the UDP ports -- each saying "clause k of n of conjunction ID", all at the rule's priority. A
packet that matches one flow of every dimension hits the rule's one ``conj_id=ID`` flow, which
allows (goes on to the metric table) or drops, and whose counters are the rule's statistics:
the dimension flows never count (OVS credits only the flow a lookup runs). N rules of M values
each cost N*M flows instead of the N*M^k of a cross product.

Why the group dimension is always there: OVS wants at least two clauses, and a rule restricted
by its pods alone would otherwise need plain flows, and then one counting flow per pod. A rule
for any group matches ipv4_dst=224.0.0.0/4, which every packet in these tables has (the
classifier forks nothing else into them), so every rule has exactly one metric flow.

What OVS does with them (lib/classifier.c, checked with ``ofproto/trace`` on 3.1, see
``switchmodel.classify``): the rule of the highest priority whose dimensions all match wins;
a rule only partly matched is skipped and lower ones are tried; no rule matched: the table's
miss flow allows. A plain flow above the rules (the self-loop drop) still wins over all of
them. The metric flow is at the rule's priority because OVS runs whatever the second lookup
finds highest: a conj_id flow below a plain flow that matches anyway would never run.

A pod's packet under the classifier's size check (``BridgeConfig.max_pod_frame``) crosses its
egress rules twice in OVS's translation, once per outcome, and OVS credits both; so there the
metric flow matches frames that are not oversized, and a twin with the same verdict the rest.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from pipeline import layout, priorities
from pipeline.cookies import Cookie, Feature, feature_of
from pipeline.model import (
    ETH_TYPE_IP,
    IP_PROTO_UDP,
    Action,
    Conjunction,
    Drop,
    Flow,
    GotoTable,
    Match,
)
from pipeline.multicast import MULTICAST_NET, BridgeConfig, pipeline
from pipeline.registers import OUT_PORT, OVERSIZE

RULE_PRIORITIES = range(priorities.POLICY_RULE_LOWEST, priorities.POLICY_RULE_HIGHEST + 1)
"""The OVS priorities rules may use: above the rule tables' miss, below SELF_LOOP."""
MAX_CONJ_ID = (1 << 32) - 1
DIMENSION_OBJECT = 1 << 32
"""Set in the cookie object id of a rule's dimension flows (beside the conj_id), so that only
its metric flow has the bare conj_id as object id (``rule_stats_of``)."""
MAX_OFPORT = 0xFFFFFF00
"""Ports from here on are OpenFlow's reserved ones, never a pod's."""
_MULTICAST = ipaddress.IPv4Network(MULTICAST_NET)


class Direction(StrEnum):
    EGRESS = "egress"
    INGRESS = "ingress"


class Verdict(StrEnum):
    ALLOW = "Allow"
    DROP = "Drop"


_TABLES = MappingProxyType({Direction.EGRESS: layout.EGRESS_RULE,
                            Direction.INGRESS: layout.INGRESS_RULE})
_ALLOWED_TO = MappingProxyType({Direction.EGRESS: layout.EGRESS_METRIC,
                                Direction.INGRESS: layout.INGRESS_METRIC})


class PolicyError(ValueError):
    """A rule that cannot become flows (out of range, a group that is not multicast ...)."""


@dataclass(frozen=True)
class DataRule:
    """One rule of multicast policy as the switch enforces it on this node."""

    conj_id: int
    """1..2**32-1, unique per bridge (both directions): the rule's conjunction id."""
    priority: int
    """OVS priority, unique per direction, within RULE_PRIORITIES: the higher matches first."""
    direction: Direction
    verdict: Verdict
    ports: tuple[int, ...]
    """ofports of the pods the rule applies to: egress, the sender's in_port; ingress, the
    receiving pod's, i.e. register OUT_PORT (reg1) as the group bucket set it."""
    groups: tuple[str, ...] = ()
    """Multicast CIDRs or addresses matched on ipv4_dst; () = any multicast."""
    sources: tuple[str, ...] = ()
    """Ingress only: CIDRs or addresses matched on ipv4_src; () = any source."""
    udp_ports: tuple[int, ...] = ()
    """udp_dst (so UDP only); () = any protocol and port."""

    def __post_init__(self) -> None:
        if not 1 <= self.conj_id <= MAX_CONJ_ID:
            raise PolicyError(f"rule conj_id {self.conj_id} is not in 1..{MAX_CONJ_ID}")
        if self.priority not in RULE_PRIORITIES:
            raise PolicyError(f"rule {self.conj_id}: priority {self.priority} is not in "
                              f"{RULE_PRIORITIES.start}..{RULE_PRIORITIES.stop - 1}")
        if self.sources and self.direction is not Direction.INGRESS:
            raise PolicyError(f"rule {self.conj_id}: only ingress rules match sources")
        for port in self.ports:
            if not 0 < port < MAX_OFPORT:
                raise PolicyError(f"rule {self.conj_id}: {port} is not a pod's ofport")
        for udp in self.udp_ports:
            if not 0 <= udp <= 0xFFFF:
                raise PolicyError(f"rule {self.conj_id}: UDP port {udp} is not 16 bits")
        for group in _networks(self.groups):
            if not group.subnet_of(_MULTICAST):
                raise PolicyError(f"rule {self.conj_id}: {group} is not multicast")
        _networks(self.sources)


def _networks(values: Iterable[str]) -> list[ipaddress.IPv4Network]:
    """Addresses and CIDRs, host bits cleared as OVS clears them under a mask."""
    try:
        return [ipaddress.IPv4Network(v, strict=False) for v in values]
    except ValueError as exc:
        raise PolicyError(str(exc)) from None


def _cidrs(values: Iterable[str]) -> list[str]:
    """One value per distinct network, in address order (one flow each)."""
    return [str(n) for n in sorted(set(_networks(values)))]


def _flow(table: str, priority: int, match: Match, actions: tuple[Action, ...],
          cookie: int) -> Flow:
    return pipeline().check_flow(Flow(table, priority, match, actions, cookie))


def _pod_match(direction: Direction, port: int) -> Match:
    if direction is Direction.EGRESS:
        return Match.of(in_port=port, eth_type=ETH_TYPE_IP)
    return Match.of((OUT_PORT, port), eth_type=ETH_TYPE_IP)


def _dimensions(rule: DataRule) -> list[list[Match]]:
    """The rule's clauses in order, each a list of alternative matches (one flow each)."""
    dims = [
        [_pod_match(rule.direction, p) for p in sorted(set(rule.ports))],
        [Match.of(eth_type=ETH_TYPE_IP, ipv4_dst=g) for g in _cidrs(rule.groups or
                                                                    (MULTICAST_NET,))],
    ]
    if rule.sources:
        dims.append([Match.of(eth_type=ETH_TYPE_IP, ipv4_src=s) for s in _cidrs(rule.sources)])
    if rule.udp_ports:
        dims.append([Match.of(eth_type=ETH_TYPE_IP, ip_proto=IP_PROTO_UDP, udp_dst=u)
                     for u in sorted(set(rule.udp_ports))])
    return dims


def _verdict(rule: DataRule) -> tuple[Action, ...]:
    if rule.verdict is Verdict.ALLOW:
        return (GotoTable(_ALLOWED_TO[rule.direction]),)
    return (Drop(),)


def _size_checked(cfg: BridgeConfig, rule: DataRule) -> bool:
    """Whether the classifier's size check forks this rule's table in two.

    ``check_pkt_larger`` makes OVS translate, and credit, what follows once per outcome; a
    pod's packet meets its egress rules in both (the oversized one leaves at the egress
    metric), copies meet ingress rules only in the outcome that is not oversized.
    """
    return rule.direction is Direction.EGRESS and cfg.max_pod_frame is not None


def metric_flow(cfg: BridgeConfig, rule: DataRule) -> Flow:
    """The flow a packet that matches the whole rule hits: it does the verdict and counts.

    Allowed packets go on to the direction's metric table (and are counted there too, as the
    pod's); dropped ones never reach it. Under the size check it takes only frames that are
    not oversized, so each packet counts once (``oversize_twin_flow`` takes the others).
    """
    checked = ((OVERSIZE, 0),) if _size_checked(cfg, rule) else ()
    return _flow(_TABLES[rule.direction], rule.priority,
                 Match.of(*checked, conj_id=rule.conj_id, eth_type=ETH_TYPE_IP),
                 _verdict(rule), cfg.cookie(Feature.POLICY, rule.conj_id))


def oversize_twin_flow(cfg: BridgeConfig, rule: DataRule) -> Flow | None:
    """The metric flow's twin for the oversized outcome of the size check (same verdict, a
    dimension cookie: not the rule's count), or None where no check forks the table."""
    if not _size_checked(cfg, rule):
        return None
    return _flow(_TABLES[rule.direction], rule.priority,
                 Match.of((OVERSIZE, 1), conj_id=rule.conj_id, eth_type=ETH_TYPE_IP),
                 _verdict(rule), cfg.cookie(Feature.POLICY, DIMENSION_OBJECT | rule.conj_id))


def rule_flows(cfg: BridgeConfig, rule: DataRule) -> list[Flow]:
    """The conjunctive flows of ``rule``, its metric flow (and that one's oversize twin); none
    without a pod on this node."""
    if not rule.ports:
        return []
    dims = _dimensions(rule)
    table, cookie = _TABLES[rule.direction], cfg.cookie(Feature.POLICY,
                                                        DIMENSION_OBJECT | rule.conj_id)
    flows = [_flow(table, rule.priority, match, (Conjunction(rule.conj_id, k, len(dims)),),
                   cookie)
             for k, matches in enumerate(dims, start=1) for match in matches]
    twin = oversize_twin_flow(cfg, rule)
    return [*flows, metric_flow(cfg, rule), *([] if twin is None else [twin])]


def check_rules(rules: Iterable[DataRule]) -> None:
    """Refuse rule sets OVS would resolve arbitrarily: a conj_id twice on the bridge, or two
    rules of one direction at one priority (their flows would merge or tie)."""
    ids: dict[int, DataRule] = {}
    slots: dict[tuple[Direction, int], DataRule] = {}
    for rule in rules:
        other = ids.setdefault(rule.conj_id, rule)
        if other is not rule and other != rule:
            raise PolicyError(f"two rules with conj_id {rule.conj_id}")
        other = slots.setdefault((rule.direction, rule.priority), rule)
        if other is not rule and other != rule:
            raise PolicyError(f"rules {other.conj_id} and {rule.conj_id}: both {rule.direction} "
                              f"at priority {rule.priority}")


def policy_flows(cfg: BridgeConfig, rules: Iterable[DataRule]) -> list[Flow]:
    """The flows of a whole rule set (``check_rules`` first); identical rules count once."""
    unique = list(dict.fromkeys(rules))
    check_rules(unique)
    return [f for rule in unique for f in rule_flows(cfg, rule)]


def rule_stats_of(flow: Flow) -> int | None:
    """The conj_id if ``flow`` is a rule's metric flow (by its cookie and table), else None."""
    if flow.table not in _TABLES.values() or feature_of(flow.cookie) is not Feature.POLICY:
        return None
    object_id = Cookie.unpack(flow.cookie).object_id
    conj = flow.match.get("conj_id")
    if object_id & DIMENSION_OBJECT or conj is None or conj.value != object_id:
        return None
    return object_id
