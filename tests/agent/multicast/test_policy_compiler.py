"""The policy compiler (pure): conjunction ids, priorities, sources and IGMP verdicts."""

from __future__ import annotations

from agent.multicast.policy.compiler import ConjIds, IgmpJudge, data_rules, priorities
from pipeline.policy import RULE_PRIORITIES, Direction, Verdict
from wire.policy import (
    ALL_HOSTS,
    CLUSTER,
    EGRESS,
    INGRESS,
    NAMESPACED,
    IgmpMatch,
    PolicyView,
    Rule,
    RuleKey,
)

TOP = RULE_PRIORITIES[-1]


def rule(policy: str, direction: str, index: int = 0, *, priority: float = 10,
         action: str = "Drop", ns: str = "default", applied: str = "at1", **kw: object) -> Rule:
    key = RuleKey(NAMESPACED if ns else CLUSTER, ns, policy, direction, index)
    return Rule(key, f"{policy}-{direction}-{index}", action, priority, applied, **kw)  # type: ignore[arg-type]


def view(*rules: Rule, applied: dict | None = None, addresses: dict | None = None) -> PolicyView:
    return PolicyView({r.key.text: r for r in rules},
                      {k: frozenset(v) for k, v in (applied or {"at1": ["default/a"]}).items()},
                      {k: frozenset(v) for k, v in (addresses or {}).items()})


def test_conj_ids_are_stable_per_rule_and_not_reused_in_the_same_assignment() -> None:
    ids = ConjIds()
    first = ids.assign(["a", "b"])
    assert first == {"a": 1, "b": 2}
    assert ids.assign(["b", "c"]) == {"b": 2, "c": 3}  # a's 1 is freed after c is given one
    assert ids.assign(["b", "c", "d"])["d"] == 1  # and reused later
    assert ids.assign(["b", "c", "d"]) == {"b": 2, "c": 3, "d": 1}


def test_priorities_follow_evaluation_order_per_direction() -> None:
    r1 = rule("late", EGRESS, priority=20, groups=("239.1.0.0/16",))
    r2 = rule("early", EGRESS, priority=5, groups=("239.2.0.0/16",))
    r3 = rule("early", EGRESS, 1, priority=5)
    cl = rule("cl", EGRESS, priority=5, ns="")  # cluster-scoped first at equal priority
    ing = rule("in", INGRESS, priority=99, groups=("239.1.0.0/16",))
    igmp = rule("q", INGRESS, priority=1, igmp=(IgmpMatch(),))  # no flows: no priority
    prio = priorities(view(r1, r2, r3, cl, ing, igmp))
    assert [prio[r.key.text] for r in (cl, r2, r3, r1)] == [TOP, TOP - 1, TOP - 2, TOP - 3]
    assert prio[ing.key.text] == TOP and igmp.key.text not in prio


def test_data_rules_cover_local_pods_with_groups_ports_and_sources() -> None:
    eg = rule("p", EGRESS, groups=("239.1.1.0/24",), ports=(5000,), action="Allow")
    ing = rule("p", INGRESS, groups=("239.2.0.0/16",), source_cidrs=("192.168.0.0/16",),
               source_groups=("ag1", "ag2"))
    nobody = rule("p", INGRESS, 1, source_groups=("ag3",))  # sources resolve to no address
    elsewhere = rule("q", EGRESS, applied="at2")  # applied-to pods are not attached here
    v = view(eg, ing, nobody, elsewhere,
             applied={"at1": ["default/a", "default/b"], "at2": ["default/z"]},
             addresses={"ag1": ["10.0.0.9", "10.0.0.10"], "ag2": ["10.0.0.9"], "ag3": []})
    ids = ConjIds()
    out = data_rules(v, {"default/a": [3], "default/b": [7, 4]}, ids)
    assert set(out) == {eg.key.text, ing.key.text}
    e, i = out[eg.key.text], out[ing.key.text]
    assert (e.direction, e.verdict, e.ports, e.groups, e.udp_ports, e.sources) == (
        Direction.EGRESS, Verdict.ALLOW, (3, 4, 7), ("239.1.1.0/24",), (5000,), ())
    assert (i.direction, i.verdict, i.groups) == (Direction.INGRESS, Verdict.DROP,
                                                   ("239.2.0.0/16",))
    assert i.sources == ("10.0.0.9/32", "10.0.0.10/32", "192.168.0.0/16")
    # a pod attaching or going changes ports, never the rule's id or priority
    again = data_rules(v, {"default/a": [3]}, ids)
    assert (again[eg.key.text].conj_id, again[eg.key.text].priority) == (e.conj_id, e.priority)
    assert again[eg.key.text].ports == (3,)
    assert data_rules(v, {}, ids) == {}


def test_igmp_judge_takes_the_first_matching_rule_of_the_pods_rules() -> None:
    allow_g = rule("a", EGRESS, priority=1, action="Allow",
                   igmp=(IgmpMatch(0x16, "239.1.1.1"),))
    drop_all = rule("b", EGRESS, priority=2, igmp=(IgmpMatch(),))
    other_pod = rule("c", EGRESS, priority=0, applied="at2", igmp=(IgmpMatch(),))
    queries = rule("d", INGRESS, igmp=(IgmpMatch(0x11, ALL_HOSTS),))
    judge = IgmpJudge.of(view(drop_all, allow_g, other_pod, queries,
                              applied={"at1": ["default/a"], "at2": ["default/b"]}))
    assert judge.decide(EGRESS, "default/a", 0x16, "239.1.1.1") == allow_g
    assert judge.decide(EGRESS, "default/a", 0x22, "239.1.1.1") == drop_all
    assert not judge.allows(EGRESS, "default/a", 0x12, "239.1.1.1")
    assert judge.decide(EGRESS, "default/c", 0x16, "239.1.1.1") is None  # no rule: allowed
    assert judge.allows(EGRESS, "default/c", 0x16, "239.1.1.1")
    assert judge.decide(INGRESS, "default/a", 0x11, "239.1.1.1") is None
    assert not judge.allows(INGRESS, "default/a", 0x11, ALL_HOSTS)
    assert judge.has(INGRESS) and not IgmpJudge.of(view(allow_g)).has(INGRESS)
