"""The policy wiring: watch events of Pods, Namespaces, MulticastPolicies and
ClusterMulticastPolicies into ``PolicyState``, its changed views out to ``PolicyViews``, and
each policy's desired status for the status writer.

Owns ``PolicySync``: the validation result of every policy object and the version of it that is
enforced. A valid object is enforced as it is; an invalid one changes nothing on any node: if
an earlier version of it was valid (seen by this controller), that version stays enforced,
else the policy enforces nothing. Views are published only once all four watches have listed
(``PolicyViews.set_synced``), then after every event (a relist's events as one batch, at its
``on_synced``). Also ``policy_status``: a policy's ``status`` (the ``Valid`` condition and
``ruleStats`` summed from the agents' counters), pure.

Handlers run on the watchers' threads; one lock serializes them. Imports ``controller.watch``,
``controller.policy`` and ``wire``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from controller.policy.compute import PolicyState, pod_info
from controller.policy.validate import PolicyRef, ValidPolicy, policy_ref, validate
from controller.policy.views import PolicyViews
from controller.watch import Handlers, Obj, Watcher, meta, object_key
from wire.policy import RuleKey

MESSAGE_ERRORS = 3  # the Valid=False message names the first few problems


@dataclass(frozen=True)
class Verdict:
    """What this controller made of one policy object."""

    obj: Obj
    errors: tuple[str, ...]  # () if valid
    enforced: ValidPolicy | None  # the version enforced (this one, or an earlier valid one)
    enforced_generation: int | None


def _generation(obj: Obj) -> int | None:
    g = meta(obj).get("generation")
    return g if isinstance(g, int) else None


def policy_status(v: Verdict, totals: Mapping[RuleKey, tuple[int, int]]) -> dict[str, Any]:
    """The ``status`` the object should have (``lastTransitionTime`` left to the writer)."""
    generation = _generation(v.obj)
    if not v.errors:
        condition: dict[str, Any] = {"type": "Valid", "status": "True", "reason": "Valid",
                     "message": "the policy is valid and enforced"}
    else:
        shown = "; ".join(v.errors[:MESSAGE_ERRORS])
        more = len(v.errors) - MESSAGE_ERRORS
        message = shown + (f"; and {more} more" if more > 0 else "")
        if v.enforced is not None:
            message += (f" (generation {v.enforced_generation}, the last valid one, stays "
                        "enforced)")
        else:
            message += " (nothing of it is enforced)"
        condition = {"type": "Valid", "status": "False", "reason": "Invalid",
                     "message": message}
    if generation is not None:
        condition = {**condition, "observedGeneration": generation}
    stats = []
    if v.enforced is not None:
        ref = v.enforced.ref
        for rule in v.enforced.rules:
            packets, bytes_ = totals.get(RuleKey(ref.scope, ref.namespace, ref.name,
                                                 rule.direction, rule.index), (0, 0))
            stats.append({"name": rule.name, "packets": packets, "bytes": bytes_})
    return {"conditions": [condition], "ruleStats": stats}


def _state_key(ref: PolicyRef) -> str:
    return f"{ref.scope}:{ref.key}"


class PolicySync:
    """Feeds the computation from four watchers and publishes its views."""

    def __init__(self, views: PolicyViews, *, pods: Watcher, namespaces: Watcher,
                 policies: Watcher, cluster_policies: Watcher) -> None:
        self.views = views
        self.state = PolicyState()
        self._lock = threading.Lock()
        self._verdicts: dict[PolicyRef, Verdict] = {}
        self._watchers = (pods, namespaces, policies, cluster_policies)
        self._synced: set[str] = set()
        self._listeners: list[Callable[[], None]] = []
        self._add(pods, lambda o: self.state.set_pod(object_key(o), pod_info(o)),
                  lambda o: self.state.set_pod(object_key(o), None))
        self._add(namespaces,
                  lambda o: self.state.set_namespace(str(meta(o).get("name")),
                                                     meta(o).get("labels") or {}),
                  lambda o: self.state.set_namespace(str(meta(o).get("name")), None))
        for w in (policies, cluster_policies):
            self._add(w, self._policy_changed, self._policy_deleted)

    def _add(self, w: Watcher, put: Callable[[Obj], None], gone: Callable[[Obj], None]) -> None:
        def event(fn: Callable[[Obj], None], obj: Obj) -> None:
            with self._lock:
                fn(obj)
                if len(self._synced) == len(self._watchers) and not w.listing:
                    self.views.update(self.state.take_changes())

        def synced() -> None:
            with self._lock:
                self._synced.add(w.name)
                if len(self._synced) < len(self._watchers):
                    return
                self.views.update(self.state.take_changes())
            self.views.set_synced()

        w.add_handlers(Handlers(on_add=lambda o: event(put, o),
                                on_update=lambda _old, o: event(put, o),
                                on_delete=lambda o: event(gone, o), on_synced=synced))

    # -- policies ------------------------------------------------------------------------------

    def _policy_changed(self, obj: Obj) -> None:
        ref = policy_ref(obj)
        result = validate(obj)
        before = self._verdicts.get(ref)
        if isinstance(result, ValidPolicy):
            verdict = Verdict(obj, (), result, _generation(obj))
            self.state.set_policy(_state_key(ref), result)
        elif before is not None and meta(before.obj).get("uid") == meta(obj).get("uid"):
            verdict = Verdict(obj, tuple(result), before.enforced, before.enforced_generation)
        else:  # never valid (or a new object of the same name): nothing enforced
            verdict = Verdict(obj, tuple(result), None, None)
            self.state.set_policy(_state_key(ref), None)
        self._verdicts[ref] = verdict
        self._notify()

    def _policy_deleted(self, obj: Obj) -> None:
        ref = policy_ref(obj)
        self._verdicts.pop(ref, None)
        self.state.set_policy(_state_key(ref), None)
        self._notify()

    def _notify(self) -> None:
        for fn in list(self._listeners):
            fn()

    def on_policies(self, fn: Callable[[], None]) -> Callable[[], None]:
        """Call ``fn`` after every policy event (on a watcher's thread: hand over only)."""
        self._listeners.append(fn)
        return lambda: self._listeners.remove(fn) if fn in self._listeners else None

    # -- reads ---------------------------------------------------------------------------------

    def verdicts(self) -> dict[PolicyRef, Verdict]:
        with self._lock:
            return dict(self._verdicts)

    def statuses(self) -> dict[PolicyRef, tuple[Obj, dict[str, Any]]]:
        """Every policy's object and desired status."""
        totals = self.views.totals()
        return {ref: (v.obj, policy_status(v, totals)) for ref, v in self.verdicts().items()}

    def validity(self) -> dict[str, int]:
        """Policies by validity, for the metrics."""
        out = {"true": 0, "false": 0}
        for v in self.verdicts().values():
            out["false" if v.errors else "true"] += 1
        return out
