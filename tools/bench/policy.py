"""``policy`` section: the controller's policy computation (``controller.policy.compute``),
pure, at cluster scale — no lab, no root.

A synthetic cluster: N pods over M nodes and 20 namespaces, each pod labelled ``app`` (one of
50), ``role`` (one of 5) and ``tier``; P policies (¾ namespaced, ¼ cluster-scoped), each with an
appliedTo on one app, an egress data rule, an IGMP rule and an ingress rule whose sources select
a role (an address group). Timed: the full computation (all objects in, every node's view out),
then one pod label change (the pod changes app and role), then one policy change (its appliedTo
moves to another app), each with the number of nodes whose view changed; at ¼, ½ and 1× the
size, for the growth. Imports ``controller.policy`` (the code under measurement).
"""

from __future__ import annotations

import random
import time
from typing import Any

from controller.policy.compute import PodInfo, PolicyState
from controller.policy.validate import ValidPolicy, validate

APPS, ROLES, NAMESPACES = 50, 5, 20
FULL_SIZE = (5000, 500, 100)  # pods, policies, nodes
QUICK_SIZE = (400, 40, 10)


def _policy(i: int, app: int, rng: random.Random) -> ValidPolicy:
    cluster = i % 4 == 3
    meta = {"name": f"pol-{i}"} if cluster else {"name": f"pol-{i}",
                                                 "namespace": f"ns-{i % NAMESPACES}"}
    spec = {"priority": 1 + i % 100,
            "appliedTo": [{"podSelector": {"matchLabels": {"app": f"app-{app}"}}}],
            "egress": [{"action": "Allow", "to": [{"ipBlock": {"cidr": f"239.{i % 250}.0.0/16"}}],
                        "ports": [{"port": 5000 + i % 100}]},
                       {"action": "Drop", "protocols": [{"igmp": {"igmpType": 0x16}}]}],
            "ingress": [{"action": "Drop", "from": [{"ipBlock": {"cidr": "239.255.0.0/16"}}],
                         "sources": [{"podSelector": {"matchLabels": {
                             "role": f"role-{rng.randrange(ROLES)}"}}}]}]}
    v = validate({"kind": "ClusterMulticastPolicy" if cluster else "MulticastPolicy",
                  "metadata": meta, "spec": spec})
    assert isinstance(v, ValidPolicy), v
    return v


def _pod(i: int, nodes: int, app: int, role: int) -> PodInfo:
    return PodInfo(f"ns-{i % NAMESPACES}", f"pod-{i}", f"node-{i % nodes}",
                   {"app": f"app-{app}", "role": f"role-{role}", "tier": "t"},
                   (f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}",))


def measure(pods: int, policies: int, nodes: int, seed: int = 1) -> dict[str, Any]:
    rng = random.Random(seed)
    state = PolicyState()
    t0 = time.perf_counter()
    for n in range(NAMESPACES):
        state.set_namespace(f"ns-{n}", {"team": f"t{n % 3}"})
    made = [_policy(i, rng.randrange(APPS), rng) for i in range(policies)]
    t_validate = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(pods):
        pod = _pod(i, nodes, rng.randrange(APPS), rng.randrange(ROLES))
        state.set_pod(f"{pod.namespace}/{pod.name}", pod)
    for v in made:
        state.set_policy(v.ref.key, v)
    views = state.take_changes()
    full_s = time.perf_counter() - t0
    rules = sum(len(v.rules) for v in views.values())

    target = pods // 2
    pod = _pod(target, nodes, (rng.randrange(APPS)), rng.randrange(ROLES))
    t0 = time.perf_counter()
    state.set_pod(f"{pod.namespace}/{pod.name}", pod)
    label_nodes = len(state.take_changes())
    label_s = time.perf_counter() - t0

    changed = _policy(policies // 2, rng.randrange(APPS), rng)
    t0 = time.perf_counter()
    state.set_policy(made[policies // 2].ref.key, changed)
    policy_nodes = len(state.take_changes())
    policy_s = time.perf_counter() - t0
    return {"pods": pods, "policies": policies, "nodes": nodes,
            "validate_ms": round(t_validate * 1e3, 2),
            "full_s": round(full_s, 4), "groups": state.group_count,
            "views": len(views), "rules_sent_total": rules,
            "pod_label_change_ms": round(label_s * 1e3, 3),
            "pod_label_change_nodes": label_nodes,
            "policy_change_ms": round(policy_s * 1e3, 3),
            "policy_change_nodes": policy_nodes}


def run(size: tuple[int, int, int] = FULL_SIZE) -> dict[str, Any]:
    """The full-size figures and the growth at ¼, ½ and 1× of ``size``."""
    pods, policies, nodes = size
    growth = [measure(max(1, pods * k // 4), max(1, policies * k // 4), max(1, nodes * k // 4))
              for k in (1, 2, 4)]
    return {"size": {"pods": pods, "policies": policies, "nodes": nodes},
            "full": growth[-1], "growth": growth}


def summary_lines(sec: dict[str, Any]) -> list[str]:
    f = sec["full"]
    lines = [f"[7] policy computation ({f['pods']} pods / {f['policies']} policies / "
             f"{f['nodes']} nodes): full {f['full_s']} s ({f['groups']} groups, "
             f"{f['rules_sent_total']} rules over {f['views']} nodes); pod label change "
             f"{f['pod_label_change_ms']} ms ({f['pod_label_change_nodes']} nodes); policy "
             f"change {f['policy_change_ms']} ms ({f['policy_change_nodes']} nodes)"]
    lines.append("    growth (pods: full s): " + ", ".join(
        f"{g['pods']}: {g['full_s']}" for g in sec["growth"]))
    return lines
