"""controller.policy.validate and .selectors: each kind of invalid policy gets its message,
naming the field; valid ones normalize (defaults, sorted selectors, own namespace)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from controller.policy.selectors import IN, NOT_IN, Peer, Requirement, Selector, parse_selector
from controller.policy.validate import ValidPolicy, validate
from wire.policy import IgmpMatch


def policy(spec: dict[str, Any], kind: str = "MulticastPolicy") -> dict[str, Any]:
    meta = {"name": "p", "namespace": "trading"} if kind == "MulticastPolicy" else {"name": "p"}
    return {"kind": kind, "metadata": meta, "spec": spec}


BASE: dict[str, Any] = {
    "priority": 10, "appliedTo": [{"podSelector": {"matchLabels": {"app": "reader"}}}],
    "egress": [{"name": "allow-feed-a", "action": "Allow",
                "to": [{"ipBlock": {"cidr": "239.1.1.0/24"}}],
                "ports": [{"protocol": "UDP", "port": 5000}]},
               {"action": "Drop", "protocols": [{"igmp": {"igmpType": 0x16,
                                                          "groupAddress": "239.2.0.1"}}]}],
    "ingress": [{"name": "allow-queries", "action": "Allow",
                 "protocols": [{"igmp": {"igmpType": 0x11, "groupAddress": "224.0.0.1"}}]},
                {"name": "only-trusted", "action": "Drop",
                 "from": [{"ipBlock": {"cidr": "239.1.1.0/24"}}],
                 "sources": [{"podSelector": {"matchLabels": {"role": "untrusted"}}},
                             {"ipBlock": {"cidr": "192.168.0.0/16"}}]}],
}


def test_the_issues_example_is_valid_and_normalized() -> None:
    v = validate(policy(BASE))
    assert isinstance(v, ValidPolicy)
    own = Peer("trading", None, Selector((Requirement("app", IN, ("reader",)),)))
    assert v.applied_to == (own,) and v.priority == 10.0
    assert [(r.direction, r.index, r.name) for r in v.rules] == [
        ("egress", 0, "allow-feed-a"), ("egress", 1, "egress-1"),
        ("ingress", 0, "allow-queries"), ("ingress", 1, "only-trusted")]
    assert v.rules[0].groups == ("239.1.1.0/24",) and v.rules[0].ports == (5000,)
    assert v.rules[1].igmp == (IgmpMatch(0x16, "239.2.0.1"),)
    assert v.rules[3].source_cidrs == ("192.168.0.0/16",)
    assert v.rules[3].source_peers == (Peer("trading", None, Selector((
        Requirement("role", IN, ("untrusted",)),))),)


def edit(path: str, value: Any, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    """BASE with the value at ``a.b[0].c`` replaced (``...`` deletes it)."""
    spec = copy.deepcopy(spec or BASE)
    parts = path.replace("]", "").replace("[", ".").split(".")
    target: Any = spec
    for p in parts[:-1]:
        target = target[int(p)] if p.isdigit() else target[p]
    last: Any = int(parts[-1]) if parts[-1].isdigit() else parts[-1]
    if value is ...:
        del target[last]
    else:
        target[last] = value
    return spec


CIDR = "spec.egress[0].to[0].ipBlock.cidr"
INVALID = [
    (edit("priority", 0), "spec.priority: 0 is not a number in [1, 10000]"),
    (edit("priority", "high"), "spec.priority: 'high' is not a number in [1, 10000]"),
    (edit("appliedTo", []), "spec.appliedTo: must list at least one selector"),
    (edit("appliedTo[0].namespaceSelector", {}),
     "spec.appliedTo[0].namespaceSelector: only a ClusterMulticastPolicy selects namespaces"),
    (edit("egress[0].action", "Deny"), "spec.egress[0].action: 'Deny' is not one of Allow, Drop"),
    (edit("ingress[1].name", "allow-feed-a"),
     "spec.ingress[1].name: 'allow-feed-a' is already the name of spec.egress[0]"),
    (edit("egress[1].name", "egress-1", edit("egress[0].name", "egress-1")),
     "spec.egress[1].name: 'egress-1' is already the name of spec.egress[0]"),
    (edit("egress[1].to", [{"ipBlock": {"cidr": "239.0.0.0/8"}}]),
     "spec.egress[1].to: an IGMP rule (protocols) takes no to"),
    (edit("ingress[0].sources", [{"ipBlock": {"cidr": "10.0.0.0/8"}}]),
     "spec.ingress[0].sources: an IGMP rule (protocols) takes no sources"),
    (edit("egress[1].ports", [{"port": 1}]),
     "spec.egress[1].ports: an IGMP rule (protocols) takes no ports"),
    (edit("egress[1].protocols[0].igmp.igmpType", 0x11),
     "spec.egress[1].protocols[0].igmp.igmpType: 17 is not an egress IGMP type"),
    (edit("ingress[0].protocols[0].igmp.igmpType", 0x16),
     "spec.ingress[0].protocols[0].igmp.igmpType: 22 is not an ingress IGMP type (0x11)"),
    (edit("egress[1].protocols[0].igmp.groupAddress", "10.1.1.1"),
     "spec.egress[1].protocols[0].igmp.groupAddress: 10.1.1.1 is not multicast"),
    (edit("egress[1].protocols[0].igmp.groupAddress", "nope"),
     "spec.egress[1].protocols[0].igmp.groupAddress: 'nope' is not an IPv4 address"),
    (edit("egress[0].to", ...), "spec.egress[0]: an egress data rule needs to"),
    (edit("ingress[1].from", ..., edit("ingress[1].sources", ...)),
     "spec.ingress[1]: an ingress data rule needs from and/or sources"),
    (edit("egress[0].to[0].ipBlock.cidr", "10.0.0.0/8"), f"{CIDR}: 10.0.0.0/8 is not multicast"),
    (edit("egress[0].to", [{"ipBlock": {"cidr": "239.1.0.0/16"}},
                           {"ipBlock": {"cidr": "10.0.0.0/8"}}]),
     "spec.egress[0].to: mixes multicast (239.1.0.0/16) and unicast (10.0.0.0/8) CIDRs"),
    (edit("egress[0].to[0].ipBlock.cidr", "239.1.1.1/33"),
     f"{CIDR}: '239.1.1.1/33' is not an IPv4 CIDR"),
    (edit("ingress[1].sources[1].ipBlock.cidr", "239.0.0.0/8"),
     "spec.ingress[1].sources[1].ipBlock.cidr: 239.0.0.0/8 is not unicast"),
    (edit("egress[0].ports[0].protocol", "TCP"),
     "spec.egress[0].ports[0].protocol: 'TCP' is not UDP"),
    (edit("egress[0].ports[0].port", 70000),
     "spec.egress[0].ports[0].port: 70000 is not a port in 1..65535"),
    (edit("egress[0].endPort", 6000), "spec.egress[0].endPort: unknown field"),
    (edit("tier", "x"), "spec.tier: unknown field"),
    (edit("egress[0].from", [{"ipBlock": {"cidr": "239.1.1.0/24"}}]),
     "spec.egress[0].from: not allowed in an egress rule"),
    (edit("egress[0].sources", [{"ipBlock": {"cidr": "10.0.0.0/8"}}]),
     "spec.egress[0].sources: not allowed in an egress rule"),
    (edit("ingress[1].to", [{"ipBlock": {"cidr": "239.1.1.0/24"}}]),
     "spec.ingress[1].to: not allowed in an ingress rule"),
    (edit("ingress[1].sources[0].ipBlock", {"cidr": "10.0.0.0/8"}),
     "spec.ingress[1].sources[0]: ipBlock excludes podSelector and namespaceSelector"),
    (edit("appliedTo[0].podSelector.matchExpressions", [{"key": "a", "operator": "Near"}]),
     "spec.appliedTo[0].podSelector.matchExpressions[0].operator: 'Near' is not one of In, "
     "NotIn, Exists, DoesNotExist"),
    (edit("appliedTo[0].podSelector.matchExpressions", [{"key": "a", "operator": "In"}]),
     "spec.appliedTo[0].podSelector.matchExpressions[0].values: In needs at least one value"),
    (edit("appliedTo[0].podSelector.matchExpressions",
          [{"key": "a", "operator": "Exists", "values": ["x"]}]),
     "spec.appliedTo[0].podSelector.matchExpressions[0].values: Exists takes no values"),
    (edit("appliedTo[0].podSelector.matchLabels", {"bad key!": "x"}),
     "spec.appliedTo[0].podSelector.matchLabels: 'bad key!' is not a valid label key"),
    (edit("appliedTo[0].podSelector.matchLabel", {}),
     "spec.appliedTo[0].podSelector.matchLabel: unknown field"),
    (edit("egress[1].protocols", []), "spec.egress[1].protocols: must not be empty"),
]


@pytest.mark.parametrize(("spec", "message"), INVALID, ids=[m.split(":")[0] + m[-12:]
                                                            for _, m in INVALID])
def test_each_invalid_kind_gets_its_message(spec: dict[str, Any], message: str) -> None:
    errors = validate(policy(spec))
    assert isinstance(errors, list), "accepted"
    assert any(e.startswith(message) for e in errors), errors


def test_a_cluster_policy_may_select_namespaces_and_pods_everywhere() -> None:
    spec = edit("appliedTo", [{"namespaceSelector": {"matchLabels": {"team": "a"}}},
                              {"podSelector": {}}])
    v = validate(policy(spec, "ClusterMulticastPolicy"))
    assert isinstance(v, ValidPolicy) and v.ref.scope == "cluster" and v.ref.namespace == ""
    assert set(v.applied_to) == {Peer(None, None, Selector()),
                                 Peer(None, Selector((Requirement("team", IN, ("a",)),)), None)}
    # a cluster policy's podSelector-only source selects in every namespace
    assert v.rules[3].source_peers[0].namespace is None


def test_no_spec_and_a_port_without_number() -> None:
    assert validate({"kind": "MulticastPolicy", "metadata": {"name": "x"}}) == ["spec: required"]
    v = validate(policy(edit("egress[0].ports", [{"protocol": "UDP"}, {"port": 5}])))
    assert isinstance(v, ValidPolicy) and v.rules[0].ports == ()  # any UDP port


def test_selectors_normalize_and_match() -> None:
    errors: list[str] = []
    a = parse_selector({"matchLabels": {"b": "2", "a": "1"}, "matchExpressions": [
        {"key": "c", "operator": "NotIn", "values": ["y", "x", "x"]}]}, "s", errors)
    b = parse_selector({"matchExpressions": [
        {"key": "c", "operator": "NotIn", "values": ["x", "y"]},
        {"key": "a", "operator": "In", "values": ["1"]}], "matchLabels": {"b": "2"}}, "s", errors)
    assert errors == [] and a == b and a is not None
    assert a.requirements[2] == Requirement("c", NOT_IN, ("x", "y"))
    assert a.matches({"a": "1", "b": "2"}) and a.matches({"a": "1", "b": "2", "c": "z"})
    assert not a.matches({"a": "1", "b": "2", "c": "x"}) and not a.matches({"a": "1"})
    ex = parse_selector({"matchExpressions": [{"key": "k", "operator": "Exists"},
                                              {"key": "example.com/n", "operator":
                                               "DoesNotExist"}]}, "s", errors)
    assert ex is not None and ex.matches({"k": ""})
    assert not ex.matches({"k": "", "example.com/n": "1"})
    assert Selector().matches({}) and errors == []
