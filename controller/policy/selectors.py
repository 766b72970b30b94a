"""Label selectors (``matchLabels`` + ``matchExpressions``) as Kubernetes defines them, and the
policy peers built from them (``podSelector`` / ``namespaceSelector`` / own namespace).

Owns parsing with validation (errors name the field path), normalization (``matchLabels``
become ``In`` requirements with one value; requirements and values sorted and deduplicated,
so two spellings of one selector are one ``Selector`` and hash alike) and matching. Pure; may
import the standard library only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

IN, NOT_IN, EXISTS, DOES_NOT_EXIST = "In", "NotIn", "Exists", "DoesNotExist"
OPERATORS = (IN, NOT_IN, EXISTS, DOES_NOT_EXIST)

# Kubernetes' qualified name (an optional DNS-subdomain prefix and "/") and label value rules
_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")

Labels = Mapping[str, str]


@dataclass(frozen=True, order=True)
class Requirement:
    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Labels) -> bool:
        if self.operator == IN:
            return labels.get(self.key) in self.values
        if self.operator == NOT_IN:  # as Kubernetes: an absent key satisfies NotIn
            return labels.get(self.key) not in self.values
        if self.operator == EXISTS:
            return self.key in labels
        return self.key not in labels


@dataclass(frozen=True, order=True)
class Selector:
    """A normalized label selector; no requirement at all selects everything."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Labels) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def canonical(self) -> list[Any]:
        return [[r.key, r.operator, list(r.values)] for r in self.requirements]


EVERYTHING = Selector()


@dataclass(frozen=True)
class Peer:
    """Which pods a selector entry names. ``namespace`` set: pods of that namespace (a
    namespaced policy's own); ``namespaces`` set: pods of namespaces it selects; neither:
    pods of every namespace. ``pods`` None: every pod there."""

    namespace: str | None = None
    namespaces: Selector | None = None
    pods: Selector | None = None

    def matches(self, namespace: str, labels: Labels, namespace_labels: Labels) -> bool:
        if self.namespace is not None and namespace != self.namespace:
            return False
        if self.namespaces is not None and not self.namespaces.matches(namespace_labels):
            return False
        return self.pods is None or self.pods.matches(labels)

    def sort_key(self) -> str:
        return json.dumps(self.canonical())

    def canonical(self) -> list[Any]:
        return [self.namespace, None if self.namespaces is None else self.namespaces.canonical(),
                None if self.pods is None else self.pods.canonical()]


def label_key_error(key: Any) -> str | None:
    if not isinstance(key, str) or not key:
        return f"{key!r} is not a label key"
    prefix, _, name = key.rpartition("/")
    if (prefix and (len(prefix) > 253 or not _PREFIX.match(prefix))) or not _NAME.match(name):
        return f"{key!r} is not a valid label key"
    return None


def label_value_error(value: Any) -> str | None:
    if not isinstance(value, str) or not _VALUE.match(value):
        return f"{value!r} is not a valid label value"
    return None


def parse_selector(value: Any, where: str, errors: list[str]) -> Selector | None:
    """A ``LabelSelector`` object → ``Selector``; problems go to ``errors`` (then None)."""
    if not isinstance(value, dict):
        errors.append(f"{where}: expected an object")
        return None
    before = len(errors)
    for key in sorted(set(value) - {"matchLabels", "matchExpressions"}):
        errors.append(f"{where}.{key}: unknown field")
    reqs: set[Requirement] = set()
    labels = value.get("matchLabels") or {}
    if not isinstance(labels, dict):
        errors.append(f"{where}.matchLabels: expected an object")
        labels = {}
    for k, v in labels.items():
        problem = label_key_error(k) or label_value_error(v)
        if problem:
            errors.append(f"{where}.matchLabels: {problem}")
        else:
            reqs.add(Requirement(k, IN, (v,)))
    exprs = value.get("matchExpressions") or []
    if not isinstance(exprs, list):
        errors.append(f"{where}.matchExpressions: expected a list")
        exprs = []
    for i, e in enumerate(exprs):
        at = f"{where}.matchExpressions[{i}]"
        if not isinstance(e, dict):
            errors.append(f"{at}: expected an object")
            continue
        for key in sorted(set(e) - {"key", "operator", "values"}):
            errors.append(f"{at}.{key}: unknown field")
        problem = label_key_error(e.get("key"))
        if problem:
            errors.append(f"{at}.key: {problem}")
        op, values = e.get("operator"), e.get("values") or []
        if op not in OPERATORS:
            errors.append(f"{at}.operator: {op!r} is not one of {', '.join(OPERATORS)}")
            continue
        if not isinstance(values, list):
            errors.append(f"{at}.values: expected a list")
            continue
        if op in (IN, NOT_IN) and not values:
            errors.append(f"{at}.values: {op} needs at least one value")
        if op in (EXISTS, DOES_NOT_EXIST) and values:
            errors.append(f"{at}.values: {op} takes no values")
        for j, v in enumerate(values):
            bad = label_value_error(v)
            if bad:
                errors.append(f"{at}.values[{j}]: {bad}")
        if len(errors) == before:
            reqs.add(Requirement(str(e["key"]), op, tuple(sorted(set(values)))))
    if len(errors) > before:
        return None
    return Selector(tuple(sorted(reqs)))
