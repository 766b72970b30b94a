"""controller.policy.compute: rules and shared groups per node (span), incremental updates that
touch only what an event can change, and — hypothesis — incremental == from scratch after any
sequence of pod, namespace and policy events."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.policy.compute import PodInfo, PolicyState, from_scratch, pod_info
from controller.policy.validate import ValidPolicy, validate
from wire.policy import EGRESS, INGRESS, PolicyView, diff


def valid(spec: dict[str, Any], name: str = "p", namespace: str | None = "ns1") -> ValidPolicy:
    obj = {"kind": "MulticastPolicy" if namespace else "ClusterMulticastPolicy",
           "metadata": {"name": name, **({"namespace": namespace} if namespace else {})},
           "spec": spec}
    v = validate(obj)
    assert isinstance(v, ValidPolicy), v
    return v


def spec(app: str, source_role: str | None = None, priority: int = 10) -> dict[str, Any]:
    ingress = [{"action": "Drop", "from": [{"ipBlock": {"cidr": "239.1.1.0/24"}}],
                **({"sources": [{"podSelector": {"matchLabels": {"role": source_role}}}]}
                   if source_role else {})}]
    return {"priority": priority, "appliedTo": [{"podSelector": {"matchLabels": {"app": app}}}],
            "egress": [{"action": "Allow", "to": [{"ipBlock": {"cidr": "239.2.0.0/16"}}]},
                       {"action": "Drop", "protocols": [{"igmp": {"igmpType": 0x16}}]}],
            "ingress": ingress}


def pod(name: str, node: str, ip: str, ns: str = "ns1", **labels: str) -> PodInfo:
    return PodInfo(ns, name, node, labels, (ip,))


def test_pod_info_counts_scheduled_running_pods_with_ipv4() -> None:
    obj = {"metadata": {"namespace": "a", "name": "p", "labels": {"x": "1"}},
           "spec": {"nodeName": "n1"}, "status": {"phase": "Running", "podIP": "10.0.0.5",
                                                  "podIPs": [{"ip": "fd00::5"},
                                                             {"ip": "10.0.0.5"}]}}
    assert pod_info(obj) == PodInfo("a", "p", "n1", {"x": "1"}, ("10.0.0.5",))
    assert pod_info({**obj, "spec": {}}) is None
    assert pod_info({**obj, "status": {"phase": "Succeeded"}}) is None
    assert pod_info({**obj, "status": {}}) == PodInfo("a", "p", "n1", {"x": "1"}, ())


def test_rules_go_only_to_nodes_with_applied_to_pods_and_groups_are_shared() -> None:
    s = PolicyState()
    s.set_pod("ns1/r1", pod("r1", "n1", "10.0.1.1", app="reader"))
    s.set_pod("ns1/r2", pod("r2", "n2", "10.0.2.1", app="reader"))
    s.set_pod("ns1/w", pod("w", "n3", "10.0.3.1", app="writer", role="bad"))
    s.set_policy("a", valid(spec("reader", "bad"), "a"))
    s.set_policy("b", valid(spec("reader"), "b"))
    changed = s.take_changes()
    assert set(changed) == {"n1", "n2"}  # n3 runs no reader
    v1 = changed["n1"]
    assert len(v1.rules) == 6
    (atg,) = v1.applied_to  # both policies share the one selector's group
    assert atg.startswith("atg-") and v1.applied_to[atg] == {"ns1/r1"}
    rule = v1.rules["namespaced/ns1/a/ingress/0"]
    assert rule.applied_to == atg and rule.groups == ("239.1.1.0/24",)
    (ag,) = rule.source_groups
    assert ag.startswith("ag-") and v1.addresses == {ag: frozenset({"10.0.3.1"})}
    assert v1.rules["namespaced/ns1/b/egress/1"].igmp[0].igmp_type == 0x16
    assert s.take_changes() == {}


def test_a_label_change_touches_only_the_nodes_it_concerns() -> None:
    s = PolicyState()
    for i in range(1, 4):
        s.set_pod(f"ns1/r{i}", pod(f"r{i}", f"n{i}", f"10.0.{i}.1", app="reader"))
    s.set_pod("ns1/w", pod("w", "n9", "10.0.9.1", app="writer"))
    s.set_policy("a", valid(spec("reader", "bad"), "a"))
    before = s.take_changes()
    assert set(before) == {"n1", "n2", "n3"}
    # the writer becomes a bad source: every node that enforces the rule gets its address
    s.set_pod("ns1/w", pod("w", "n9", "10.0.9.1", app="writer", role="bad"))
    after = s.take_changes()
    assert set(after) == {"n1", "n2", "n3"}
    patch = diff(before["n1"], after["n1"])
    assert not patch.set_rules and not patch.delete_rules and patch.applied_to.empty()
    assert list(patch.addresses.set.values()) == [frozenset({"10.0.9.1"})] or \
        list(patch.addresses.add.values()) == [frozenset({"10.0.9.1"})]
    # r2 stops being a reader: only n2 changes (it loses every rule)
    s.set_pod("ns1/r2", pod("r2", "n2", "10.0.2.1", app="other"))
    assert s.take_changes() == {"n2": PolicyView()}
    # an unrelated label change: nothing
    s.set_pod("ns1/r1", pod("r1", "n1", "10.0.1.1", app="reader", extra="y"))
    assert s.take_changes() == {}


def test_namespace_selectors_follow_namespace_labels() -> None:
    s = PolicyState()
    s.set_pod("ns1/r", pod("r", "n1", "10.0.1.1"))
    s.set_pod("ns2/r", pod("r", "n2", "10.0.2.1", ns="ns2"))
    cluster = valid({"priority": 5, "appliedTo": [
        {"namespaceSelector": {"matchLabels": {"team": "a"}}}],
        "egress": [{"action": "Drop", "to": [{"ipBlock": {"cidr": "239.0.0.0/8"}}]}]},
        "c", None)
    s.set_policy("c", cluster)
    assert s.take_changes() == {}
    s.set_namespace("ns2", {"team": "a"})
    changed = s.take_changes()
    assert set(changed) == {"n2"}
    assert changed["n2"].rules["cluster//c/egress/0"].key.scope == "cluster"
    s.set_namespace("ns2", None)
    assert s.take_changes() == {"n2": PolicyView()}


def test_a_policy_change_and_removal() -> None:
    s = PolicyState()
    s.set_pod("ns1/r", pod("r", "n1", "10.0.1.1", app="reader"))
    s.set_pod("ns1/x", pod("x", "n2", "10.0.2.1", app="x"))
    s.set_policy("a", valid(spec("reader"), "a"))
    s.take_changes()
    s.set_policy("a", valid(spec("x"), "a"))  # now applied to x, on n2
    changed = s.take_changes()
    assert changed["n1"] == PolicyView() and len(changed["n2"].rules) == 3
    s.set_policy("a", None)
    assert s.take_changes() == {"n2": PolicyView()} and s.group_count == 0


# -- incremental == from scratch -------------------------------------------------------------

NODES, NSS, APPS, ROLES = ("n1", "n2", "n3"), ("ns1", "ns2"), ("a", "b", None), ("x", "y")
POLICIES = {
    "ns1/p1": valid(spec("a", "x"), "p1"),
    "ns1/p1v2": valid(spec("b", "y", 20), "p1"),
    "ns2/p2": valid(spec("b", "x"), "p2", "ns2"),
    "c": valid({"priority": 1, "appliedTo": [
        {"namespaceSelector": {"matchLabels": {"team": "t"}},
         "podSelector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]}}],
        "ingress": [{"action": "Allow", "sources": [
            {"namespaceSelector": {"matchLabels": {"team": "t"}}},
            {"podSelector": {"matchLabels": {"role": "y"}}}]}]}, "c", None),
}

pod_events = st.tuples(st.just("pod"), st.integers(0, 5), st.booleans(), st.sampled_from(NSS),
                       st.sampled_from(NODES), st.sampled_from(APPS), st.sampled_from(ROLES),
                       st.integers(1, 3))
ns_events = st.tuples(st.just("ns"), st.sampled_from(NSS), st.booleans())
policy_events = st.tuples(st.just("policy"), st.sampled_from(["p1", "p2", "c"]),
                          st.sampled_from([None, "ns1/p1", "ns1/p1v2", "ns2/p2", "c"]))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(pod_events, ns_events, policy_events), max_size=40),
       st.lists(st.integers(0, 40), max_size=5))
def test_incremental_equals_from_scratch(events: list[tuple[Any, ...]],
                                         takes: list[int]) -> None:
    s = PolicyState()
    pods: dict[str, PodInfo] = {}
    namespaces: dict[str, dict[str, str]] = {}
    policies: dict[str, ValidPolicy] = {}
    seen: dict[str, PolicyView] = {}
    for i, e in enumerate(events):
        if e[0] == "pod":
            _, n, alive, ns, node, app, role, ip = e
            key = f"ns{n % 2 + 1}/p{n}"
            labels = {"role": role, **({"app": app} if app else {})}
            new = (PodInfo(key.split("/")[0], f"p{n}", node, labels, (f"10.0.0.{ip}",))
                   if alive else None)
            s.set_pod(key, new)
            pods.pop(key, None)
            if new is not None:
                pods[key] = new
        elif e[0] == "ns":
            _, ns, on = e
            s.set_namespace(ns, {"team": "t"} if on else None)
            namespaces.pop(ns, None)
            if on:
                namespaces[ns] = {"team": "t"}
        else:
            _, slot, which = e
            chosen = POLICIES[which] if which and POLICIES[which].ref.name == slot else None
            s.set_policy(slot, chosen)
            policies.pop(slot, None)
            if chosen is not None:
                policies[slot] = chosen
        if i in takes:
            seen.update(s.take_changes())
    seen.update(s.take_changes())
    scratch = from_scratch(pods, namespaces, policies)
    assert {n: v for n, v in seen.items() if v != PolicyView()} == scratch.views()
    assert s.views() == scratch.views()
    for view in scratch.views().values():  # every rule's groups are in the view
        for rule in view.rules.values():
            assert rule.applied_to in view.applied_to
            assert set(rule.source_groups) <= set(view.addresses)
            assert rule.key.direction in (EGRESS, INGRESS)
