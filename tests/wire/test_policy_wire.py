"""wire.policy: views, patches and their JSON round-trip; the stream's policy envelopes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wire.nodes import WireError
from wire.policy import (
    ALLOW,
    CLUSTER,
    DROP,
    EGRESS,
    INGRESS,
    NAMESPACED,
    IgmpMatch,
    PolicyView,
    Rule,
    RuleKey,
    RuleStats,
    diff,
    full_update,
)
from wire.stream import (
    message_type,
    parse_policy_message,
    parse_rule_stats_message,
    policy_message,
    rule_stats_message,
)

KEY = RuleKey(NAMESPACED, "trading", "feed-guard", EGRESS, 0)
DATA = Rule(KEY, "allow-feed-a", ALLOW, 10, "atg-1", groups=("239.1.1.0/24",), ports=(5000,))
IGMP = Rule(RuleKey(CLUSTER, "", "queries", INGRESS, 1), "no-queries", DROP, 1.5, "atg-2",
            igmp=(IgmpMatch(0x11, "224.0.0.1"),))
SOURCES = Rule(RuleKey(CLUSTER, "", "senders", INGRESS, 0), "untrusted", DROP, 5, "atg-2",
               source_cidrs=("192.168.0.0/16",), source_groups=("ag-1",))


def test_diff_then_apply_gives_the_new_view() -> None:
    old = PolicyView({KEY.text: DATA}, {"atg-1": frozenset({"trading/a"})},
                     {"ag-1": frozenset({"10.0.0.1"})})
    new = PolicyView({KEY.text: DATA, IGMP.key.text: IGMP, SOURCES.key.text: SOURCES},
                     {"atg-1": frozenset({"trading/b"}), "atg-2": frozenset({"x/y"})},
                     {"ag-1": frozenset({"10.0.0.2"})})
    update = diff(old, new)
    assert old.apply(update) == new
    assert update.addresses.add == {"ag-1": frozenset({"10.0.0.2"})}  # a patch, not the group
    assert update.addresses.remove == {"ag-1": frozenset({"10.0.0.1"})}
    assert [r.key for r in update.set_rules] == sorted([IGMP.key, SOURCES.key],
                                                       key=lambda k: k.text)
    assert new.apply(diff(new, new)).rules == new.rules and diff(new, new).empty()
    assert PolicyView().apply(full_update(new)) == new
    assert old.apply(full_update(new)) == new  # full replaces whatever was there


def test_rules_are_ordered_by_priority_scope_name_position() -> None:
    ns_first = Rule(RuleKey(NAMESPACED, "a", "p", EGRESS, 0), "x", DROP, 1, "g")
    view = PolicyView({r.key.text: r for r in (DATA, IGMP, SOURCES, ns_first)})
    assert [r.name for r in view.ordered_rules()] == ["x", "no-queries", "untrusted",
                                                      "allow-feed-a"]
    same = Rule(RuleKey(NAMESPACED, "a", "p", EGRESS, 0), "y", DROP, 5, "g")
    assert SOURCES.order() < same.order()  # equal priority: cluster-scoped first


@given(st.lists(st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3"]), unique=True),
       st.lists(st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3"]), unique=True),
       st.booleans(), st.booleans())
def test_any_two_views_round_trip_through_the_wire(a: list[str], b: list[str], ra: bool,
                                                   rb: bool) -> None:
    pods_a, pods_b = (frozenset(f"ns/{ip}" for ip in x) for x in (a, b))
    old = PolicyView({KEY.text: DATA} if ra else {}, {"atg-1": pods_a} if a else {},
                     {"ag-1": frozenset(a)})
    new = PolicyView({IGMP.key.text: IGMP} if rb else {}, {"atg-1": pods_b},
                     {"ag-1": frozenset(b)} if b else {})
    version, update = parse_policy_message(policy_message(7, diff(old, new)))
    assert version == 7 and old.apply(update) == new


def test_rule_stats_round_trip() -> None:
    stats = [RuleStats(KEY, 10, 1420), RuleStats(IGMP.key, 2, 16)]
    assert parse_rule_stats_message(rule_stats_message(stats)) == sorted(stats)
    assert message_type(rule_stats_message(stats)) == "ruleStats"


@pytest.mark.parametrize(("body", "named"), [
    ('{"type": "policy", "version": 1, "rules": {"set": [{"key": {}}]}}', "rules.set[0]"),
    ('{"type": "policy", "version": 0}', "version"),
    ('{"type": "policy", "version": 1, "addressGroups": {"set": [{"id": "a", '
     '"members": ["x"]}]}}', "addressGroups.set[0].members"),
    ('{"type": "policy", "version": 1, "appliedToGroups": {"add": [{"id": "a", '
     '"members": ["nons"]}]}}', "appliedToGroups.add[0].members"),
])
def test_malformed_policy_messages_name_the_field(body: str, named: str) -> None:
    with pytest.raises(WireError, match=named.replace("[", r"\[").replace("]", r"\]")):
        parse_policy_message(body)


def test_a_rule_with_a_bad_action_or_cidr_is_refused() -> None:
    good = DATA.to_json()
    for field, value, named in (("action", "Reject", "action"), ("groups", ["x"], "groups"),
                                ("ports", [0], "ports")):
        bad = {**good, field: value}
        msg = policy_message(1, full_update(PolicyView()))
        msg = msg.replace('"set": []', f'"set": [{__import__("json").dumps(bad)}]', 1)
        with pytest.raises(WireError, match=named):
            parse_policy_message(msg)
