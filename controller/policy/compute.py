"""The policy computation, pure and incremental: pods, namespaces and valid policies in; per
node, the ``wire.policy.PolicyView`` its agent enforces out.

Owns ``PolicyState``. Each policy becomes ``Rule`` objects plus shared groups, as Antrea's
controller splits them: one applied-to group per distinct normalized ``appliedTo`` selector set
and one address group per distinct ``sources`` selector, each named by a short hash of its
selector (``atg-…``, ``ag-…``) so that policies with the same selector share it. A group holds
its member pods (scheduled, not Succeeded/Failed); an applied-to group also by node, an address
group as its members' IPv4 addresses (counted, since pods may share one). A node's view: the
rules whose applied-to group has a pod there, those groups cut to the node's pods
(``namespace/name``), and the address groups the rules name.

Incremental: a pod event re-matches only the groups whose selectors could name it (those of its
old and new namespace, and the cluster-wide ones) and touches a group only if its membership
moved; a namespace label change re-matches only groups with a namespaceSelector, for that
namespace's pods; a policy change only that policy's rules and groups (a new group is filled
from the pods once). Every change marks the nodes whose view it can alter; ``take_changes``
recomputes those views only. ``from_scratch`` is the reference the tests compare against.

Not thread-safe (the caller serializes). Imports ``wire.policy`` and ``controller.policy``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.policy.selectors import Peer
from controller.policy.validate import ValidPolicy
from wire.policy import PolicyView, Rule, RuleKey

EMPTY = PolicyView()


@dataclass(frozen=True)
class PodInfo:
    """What the computation reads of a Pod."""

    namespace: str
    name: str
    node: str
    labels: Mapping[str, str] = field(default_factory=dict)
    ips: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def pod_info(obj: Mapping[str, Any]) -> PodInfo | None:
    """A Pod object → ``PodInfo``, or None if it does not count (not scheduled, finished)."""
    meta, spec, status = (obj.get(k) or {} for k in ("metadata", "spec", "status"))
    node = spec.get("nodeName")
    if not node or status.get("phase") in ("Succeeded", "Failed"):
        return None
    found = [p.get("ip") for p in status.get("podIPs") or [] if isinstance(p, dict)]
    found.append(status.get("podIP"))
    ips = []
    for ip in found:
        try:
            ips.append(str(ipaddress.IPv4Address(ip)))
        except (ValueError, TypeError):
            continue  # IPv6 or absent: address groups are IPv4
    return PodInfo(str(meta.get("namespace") or ""), str(meta.get("name") or ""), str(node),
                   dict(meta.get("labels") or {}), tuple(dict.fromkeys(ips)))


def group_id(prefix: str, peers: Iterable[Peer]) -> str:
    text = json.dumps([p.canonical() for p in peers], separators=(",", ":"))
    return f"{prefix}-{hashlib.blake2b(text.encode(), digest_size=6).hexdigest()}"


@dataclass
class _Group:
    id: str
    peers: tuple[Peer, ...]
    applied_to: bool  # an applied-to group (by node) or an address group (by IP)
    users: set[str] = field(default_factory=set)  # policy keys
    members: set[str] = field(default_factory=set)  # pod keys
    by_node: dict[str, set[str]] = field(default_factory=dict)  # applied-to: node -> pods
    ips: Counter[str] = field(default_factory=Counter)  # address: ip -> member pods with it

    @property
    def namespaces(self) -> set[str | None]:
        """Where its pods can be: the namespaces named, or None (any namespace)."""
        return {p.namespace for p in self.peers}

    @property
    def selects_namespaces(self) -> bool:
        return any(p.namespaces is not None for p in self.peers)


@dataclass(frozen=True)
class _Compiled:
    policy: ValidPolicy
    rules: tuple[Rule, ...]
    applied_to: str
    addresses: tuple[str, ...]


class PolicyState:
    """Pods, namespaces and valid policies; per-node views, recomputed where marked."""

    def __init__(self) -> None:
        self._pods: dict[str, PodInfo] = {}
        self._pods_by_ns: dict[str, set[str]] = {}
        self._ns_labels: dict[str, Mapping[str, str]] = {}
        self._policies: dict[str, _Compiled] = {}
        self._groups: dict[str, _Group] = {}
        self._by_ns: dict[str | None, set[str]] = {}  # namespace (None: any) -> group ids
        self._ns_selecting: set[str] = set()  # groups with a namespaceSelector
        self._node_groups: dict[str, set[str]] = {}  # node -> applied-to groups with pods there
        self._views: dict[str, PolicyView] = {}
        self._dirty: set[str] = set()

    # -- inputs --------------------------------------------------------------------------------

    def set_pod(self, key: str, pod: PodInfo | None) -> None:
        """``key``'s pod is now ``pod`` (None: gone, or does not count)."""
        old = self._pods.get(key)
        if old == pod:
            return
        if old is not None:
            del self._pods[key]
            self._pods_by_ns[old.namespace].discard(key)
        if pod is not None:
            self._pods[key] = pod
            self._pods_by_ns.setdefault(pod.namespace, set()).add(key)
        spaces = {p.namespace for p in (old, pod) if p is not None}
        candidates = set(self._by_ns.get(None, ())).union(
            *(self._by_ns.get(ns, ()) for ns in spaces))
        for gid in candidates:
            g = self._groups[gid]
            was = key in g.members
            now = pod is not None and self._matches(g, pod)
            if was and now and old is not None and pod is not None and (
                    old.node, old.ips) == (pod.node, pod.ips):
                continue
            if was and old is not None:
                self._remove(g, key, old)
            if now and pod is not None:
                self._add(g, key, pod)

    def set_namespace(self, name: str, labels: Mapping[str, str] | None) -> None:
        labels = dict(labels or {})
        if self._ns_labels.get(name, {}) == labels:
            return
        if labels:
            self._ns_labels[name] = labels
        else:
            self._ns_labels.pop(name, None)
        for gid in self._ns_selecting:
            g = self._groups[gid]
            for key in self._pods_by_ns.get(name, ()):
                pod = self._pods[key]
                was, now = key in g.members, self._matches(g, pod)
                if was and not now:
                    self._remove(g, key, pod)
                elif now and not was:
                    self._add(g, key, pod)

    def set_policy(self, key: str, policy: ValidPolicy | None) -> None:
        """``key``'s enforced version is now ``policy`` (None: none any more)."""
        old = self._policies.get(key)
        if (old.policy if old else None) == policy:
            return
        if old is not None:
            self._mark_span(old.applied_to)
            del self._policies[key]
        kept: set[str] = set()
        if policy is not None:
            # acquired before the old version's groups are released: a group both use (the
            # same selector) keeps its members instead of being refilled
            compiled = self._compile(key, policy)
            self._policies[key] = compiled
            kept = {compiled.applied_to, *compiled.addresses}
            self._mark_span(compiled.applied_to)
        if old is not None:
            for gid in {old.applied_to, *old.addresses} - kept:
                self._release(gid, key)

    def _compile(self, key: str, policy: ValidPolicy) -> _Compiled:
        atg = self._acquire(policy.applied_to, True, key)
        rules: list[Rule] = []
        used: list[str] = []
        for spec in policy.rules:
            ags = tuple(self._acquire((peer,), False, key) for peer in spec.source_peers)
            used += ags
            rules.append(Rule(
                RuleKey(policy.ref.scope, policy.ref.namespace, policy.ref.name, spec.direction,
                        spec.index), spec.name, spec.action, policy.priority, atg, spec.igmp,
                spec.groups, spec.ports, spec.source_cidrs, ags))
        return _Compiled(policy, tuple(rules), atg, tuple(dict.fromkeys(used)))

    # -- outputs -------------------------------------------------------------------------------

    def take_changes(self) -> dict[str, PolicyView]:
        """Recompute the marked nodes' views; those that changed (an empty view: nothing)."""
        changed = {}
        for node in sorted(self._dirty):
            view = self._compute(node)
            if view != self._views.get(node, EMPTY):
                changed[node] = view
                if view == EMPTY:
                    self._views.pop(node, None)
                else:
                    self._views[node] = view
        self._dirty.clear()
        return changed

    def view(self, node: str) -> PolicyView:
        return self._views.get(node, EMPTY)

    def views(self) -> dict[str, PolicyView]:
        """Every non-empty view as last taken (``take_changes`` first)."""
        return dict(self._views)

    def rules(self, key: str) -> tuple[Rule, ...]:
        compiled = self._policies.get(key)
        return compiled.rules if compiled else ()

    @property
    def group_count(self) -> int:
        return len(self._groups)

    # -- groups --------------------------------------------------------------------------------

    def _matches(self, g: _Group, pod: PodInfo) -> bool:
        ns_labels = self._ns_labels.get(pod.namespace, {})
        return any(p.matches(pod.namespace, pod.labels, ns_labels) for p in g.peers)

    def _acquire(self, peers: tuple[Peer, ...], applied_to: bool, user: str) -> str:
        gid = group_id("atg" if applied_to else "ag", peers)
        g = self._groups.get(gid)
        if g is None:
            g = self._groups[gid] = _Group(gid, peers, applied_to)
            for ns in g.namespaces:
                self._by_ns.setdefault(ns, set()).add(gid)
            if g.selects_namespaces:
                self._ns_selecting.add(gid)
            spaces = g.namespaces
            keys = (self._pods if None in spaces else
                    set().union(*(self._pods_by_ns.get(str(ns), ()) for ns in spaces)))
            for key in keys:
                pod = self._pods[key]
                if self._matches(g, pod):
                    self._add(g, key, pod, mark=False)  # no rule uses it yet
        g.users.add(user)
        return gid

    def _release(self, gid: str, user: str) -> None:
        g = self._groups[gid]
        g.users.discard(user)
        if g.users:
            return
        for node in g.by_node:
            self._node_groups[node].discard(gid)
        for ns in g.namespaces:
            self._by_ns[ns].discard(gid)
        self._ns_selecting.discard(gid)
        del self._groups[gid]

    def _add(self, g: _Group, key: str, pod: PodInfo, mark: bool = True) -> None:
        g.members.add(key)
        if g.applied_to:
            g.by_node.setdefault(pod.node, set()).add(key)
            self._node_groups.setdefault(pod.node, set()).add(g.id)
            self._dirty.add(pod.node)
            return
        fresh = False
        for ip in pod.ips:
            g.ips[ip] += 1
            fresh |= g.ips[ip] == 1
        if fresh and mark:
            self._mark_users(g)

    def _remove(self, g: _Group, key: str, pod: PodInfo) -> None:
        g.members.discard(key)
        if g.applied_to:
            on_node = g.by_node[pod.node]
            on_node.discard(key)
            if not on_node:
                del g.by_node[pod.node]
                self._node_groups[pod.node].discard(g.id)
            self._dirty.add(pod.node)
            return
        gone = False
        for ip in pod.ips:
            g.ips[ip] -= 1
            if g.ips[ip] <= 0:
                del g.ips[ip]
                gone = True
        if gone:
            self._mark_users(g)

    def _mark_span(self, atg: str) -> None:
        g = self._groups.get(atg)
        if g is not None:
            self._dirty.update(g.by_node)

    def _mark_users(self, ag: _Group) -> None:
        """An address group moved: every node where a rule naming it is enforced."""
        for user in ag.users:
            compiled = self._policies.get(user)
            if compiled is not None:
                self._mark_span(compiled.applied_to)

    def _compute(self, node: str) -> PolicyView:
        rules: dict[str, Rule] = {}
        applied: dict[str, frozenset[str]] = {}
        addresses: dict[str, frozenset[str]] = {}
        for gid in self._node_groups.get(node, ()):
            g = self._groups[gid]
            for user in g.users:
                compiled = self._policies[user]
                if not compiled.rules:
                    continue
                applied[gid] = frozenset(g.by_node[node])
                for rule in compiled.rules:
                    rules[rule.key.text] = rule
                for ag in compiled.addresses:
                    addresses[ag] = frozenset(self._groups[ag].ips)
        return PolicyView(rules, applied, addresses)


def from_scratch(pods: Mapping[str, PodInfo], namespaces: Mapping[str, Mapping[str, str]],
                 policies: Mapping[str, ValidPolicy]) -> PolicyState:
    """A state built in one go (policies first, so no group is filled twice)."""
    state = PolicyState()
    for name, labels in namespaces.items():
        state.set_namespace(name, labels)
    for key, policy in sorted(policies.items()):
        state.set_policy(key, policy)
    for key, pod in sorted(pods.items()):
        state.set_pod(key, pod)
    state.take_changes()
    return state
