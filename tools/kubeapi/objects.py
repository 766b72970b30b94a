"""Pure rules of the Kubernetes API on plain JSON dicts: errors as `Status`, label and field
selectors, the three patch formats, simple JSONPath, and object metadata.

Owns what a real API server computes from an object and a request alone (no state, no I/O).
The emulator (`tools.kubeapi.emulator`) applies these to kmock's stored objects.
May import: the standard library, kmock (its `KubernetesError` is how errors become a
`Status` response) and jsonpatch (RFC 6902, already a dependency of kmock's).
"""

from __future__ import annotations

import copy
import datetime
import re
import secrets
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jsonpatch
import kmock

Obj = dict[str, Any]

# -- errors: raised anywhere, rendered as a `Status` by the emulator --------------------------


def api_error(code: int, reason: str, message: str, **details: Any) -> kmock.KubernetesError:
    return kmock.KubernetesError(code, reason, message, details or None)


def qualified(plural: str, group: str) -> str:
    """How errors name a resource: `pods`, `multicastgroups.multicast.kube-mcast.io`."""
    return f"{plural}.{group}" if group else plural


def not_found(plural: str, group: str, name: str) -> kmock.KubernetesError:
    return api_error(404, "NotFound", f'{qualified(plural, group)} "{name}" not found',
                     name=name, group=group, kind=plural)


def already_exists(plural: str, group: str, name: str) -> kmock.KubernetesError:
    return api_error(409, "AlreadyExists", f'{qualified(plural, group)} "{name}" already exists',
                     name=name, group=group, kind=plural)


def conflict(plural: str, group: str, name: str, why: str = "") -> kmock.KubernetesError:
    why = why or ("the object has been modified; please apply your changes to the latest "
                  "version and try again")
    return api_error(409, "Conflict",
                     f'Operation cannot be fulfilled on {qualified(plural, group)} "{name}": {why}',
                     name=name, group=group, kind=plural)


def bad_request(message: str) -> kmock.KubernetesError:
    return api_error(400, "BadRequest", message)


def invalid(kind: str, name: str, message: str) -> kmock.KubernetesError:
    return api_error(422, "Invalid", f'{kind} "{name}" is invalid: {message}', name=name, kind=kind)


def status_body(code: int, reason: str, message: str, details: Any = None) -> Obj:
    body: Obj = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                 "message": message, "reason": reason, "code": code}
    if details:
        body["details"] = details
    return body


# -- metadata ---------------------------------------------------------------------------------


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str) -> datetime.datetime | None:
    try:
        return datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=datetime.UTC)
    except (TypeError, ValueError):
        return None


def new_uid() -> str:
    return str(uuid.uuid4())


def generated_name(prefix: str) -> str:
    alphabet = "bcdfghjklmnpqrstvwxz2456789"  # the apiserver's: no vowels, no look-alikes
    return prefix + "".join(secrets.choice(alphabet) for _ in range(5))


def meta(obj: Mapping[str, Any]) -> Obj:
    m = obj.get("metadata")
    return m if isinstance(m, dict) else {}


def spec_part(obj: Mapping[str, Any]) -> Obj:
    """Everything `metadata.generation` counts: all but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


# -- label selectors --------------------------------------------------------------------------

_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"
_VALUE = r"[-A-Za-z0-9_.]*"
_SET_RE = re.compile(rf"^({_KEY})\s+(in|notin)\s+\(\s*([^)]*)\)$")
_EQ_RE = re.compile(rf"^({_KEY})\s*(==|=|!=)\s*({_VALUE})$")
_EXISTS_RE = re.compile(rf"^(!?)\s*({_KEY})$")


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # = != in notin exists !
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        has, value = self.key in labels, labels.get(self.key)
        if self.op == "=":
            return has and value == self.values[0]
        if self.op == "!=":
            return not has or value != self.values[0]
        if self.op == "in":
            return has and value in self.values
        if self.op == "notin":
            return not has or value not in self.values
        return has if self.op == "exists" else not has


def _split_top(text: str) -> list[str]:
    """Split on commas outside parentheses: `a in (x,y),b` -> [`a in (x,y)`, `b`]."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def parse_label_selector(text: str) -> list[Requirement]:
    reqs: list[Requirement] = []
    for term in _split_top(text or ""):
        if m := _SET_RE.match(term):
            values = tuple(v.strip() for v in m.group(3).split(",") if v.strip())
            reqs.append(Requirement(m.group(1), m.group(2), values))
        elif m := _EQ_RE.match(term):
            reqs.append(Requirement(m.group(1), "!=" if m.group(2) == "!=" else "=",
                                    (m.group(3),)))
        elif m := _EXISTS_RE.match(term):
            reqs.append(Requirement(m.group(2), "!" if m.group(1) else "exists"))
        else:
            raise bad_request(f'unable to parse requirement: invalid label selector "{term}"')
    return reqs


def labels_match(reqs: Iterable[Requirement], obj: Mapping[str, Any]) -> bool:
    labels = meta(obj).get("labels") or {}
    return all(r.matches(labels) for r in reqs)


# -- field selectors --------------------------------------------------------------------------

# What the real API server lets each kind select on (beyond metadata.name/metadata.namespace).
FIELD_LABELS: dict[str, frozenset[str]] = {
    "Pod": frozenset({"spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
                      "spec.serviceAccountName", "spec.hostNetwork", "status.phase",
                      "status.podIP", "status.nominatedNodeName"}),
    "Node": frozenset({"spec.unschedulable"}),
    "Namespace": frozenset({"status.phase"}),
    "Secret": frozenset({"type"}),
    "Event": frozenset({"involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
                        "involvedObject.uid", "involvedObject.apiVersion", "reason", "type",
                        "involvedObject.resourceVersion", "involvedObject.fieldPath",
                        "reportingComponent", "source"}),
}

_FIELD_RE = re.compile(r"^([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*)$")


@dataclass(frozen=True)
class FieldRequirement:
    path: str
    equal: bool
    value: str

    def matches(self, obj: Mapping[str, Any]) -> bool:
        return (field_value(obj, self.path) == self.value) == self.equal


def parse_field_selector(text: str, kind: str,
                         extra: Iterable[str] = ()) -> list[FieldRequirement]:
    allowed = FIELD_LABELS.get(kind, frozenset()) | {"metadata.name", "metadata.namespace"}
    allowed |= set(extra)
    reqs = []
    for term in (t.strip() for t in (text or "").split(",")):
        if not term:
            continue
        m = _FIELD_RE.match(term)
        if not m:
            raise bad_request(f'invalid field selector: "{term}"')
        if m.group(1) not in allowed:
            raise bad_request(f'field label not supported: {m.group(1)}')
        reqs.append(FieldRequirement(m.group(1), m.group(2) != "!=", m.group(3).strip()))
    return reqs


def field_value(obj: Mapping[str, Any], path: str) -> str:
    value = lookup(obj, "." + path)
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def fields_match(reqs: Iterable[FieldRequirement], obj: Mapping[str, Any]) -> bool:
    return all(r.matches(obj) for r in reqs)


def name_from_field_selector(reqs: Iterable[FieldRequirement]) -> str | None:
    for r in reqs:
        if r.path == "metadata.name" and r.equal:
            return r.value
    return None


# -- protobuf bodies --------------------------------------------------------------------------

PROTOBUF = "application/vnd.kubernetes.protobuf"


def _fields(data: bytes) -> list[tuple[int, int, Any]]:
    """Decode one protobuf message: [(field, wire type, int or bytes)]."""
    out: list[tuple[int, int, Any]] = []
    pos = 0

    def varint() -> int:
        nonlocal pos
        value = shift = 0
        while True:
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    while pos < len(data):
        key = varint()
        field, wire = key >> 3, key & 7
        if wire == 0:
            out.append((field, wire, varint()))
        elif wire == 2:
            size = varint()
            out.append((field, wire, data[pos:pos + size]))
            pos += size
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            out.append((field, wire, None))
        else:
            raise ValueError(f"protobuf wire type {wire}")
    return out


def _empty(value: Any) -> bool:
    """A zero value, or a message made only of zero values (Go marshals empty structs)."""
    if not value:
        return True
    try:
        return isinstance(value, bytes) and all(_empty(v) for _, _, v in _fields(value))
    except (ValueError, IndexError):
        return False


def decode_protobuf(body: bytes) -> Obj:
    """What kubectl's typed clients send (`kubectl create namespace NAME`): the `k8s\\0`
    envelope around an object. Only objects made of metadata alone (name, generateName,
    namespace, labels, annotations) are understood; anything more is refused (415), never
    silently cut."""
    unsupported = api_error(415, "UnsupportedMediaType",
                            "protobuf bodies are understood only for objects with nothing but "
                            "metadata; send JSON (kubectl apply -f / create -f)")
    try:
        if not body.startswith(b"k8s\x00"):
            raise ValueError("no envelope")
        envelope = {f: v for f, _, v in _fields(body[4:])}
        type_meta = {f: v.decode() for f, _, v in _fields(envelope.get(1, b""))}
        obj: Obj = {"apiVersion": type_meta.get(1, ""), "kind": type_meta.get(2, "")}
        for field, _, value in _fields(envelope.get(2, b"")):
            if field != 1:
                if not _empty(value):  # spec, status, data...: more than we can decode
                    raise unsupported
                continue
            m: Obj = {}
            for f, _, v in _fields(value):
                if f in (1, 2, 3) and v:
                    m[("name", "generateName", "namespace")[f - 1]] = v.decode()
                elif f in (11, 12):
                    entry = {k: x.decode() for k, _, x in _fields(v)}
                    m.setdefault("labels" if f == 11 else "annotations", {})[
                        entry.get(1, "")] = entry.get(2, "")
            obj["metadata"] = m
        return obj
    except (ValueError, IndexError, UnicodeDecodeError, AttributeError) as exc:
        raise unsupported from exc


# -- simple JSONPath (printer columns, selectable fields): .a.b[0].c[?(@.type=="Valid")].d ------

_STEP_RE = re.compile(r"\.([^.\[\]]+)|\[(\d+)\]"
                      r"|\[\?\(@\.([^=!<>\s]+)\s*==\s*[\"']([^\"']*)[\"']\)\]")


def lookup(obj: Any, path: str) -> Any:
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    pos, cur = 0, obj
    while pos < len(path):
        m = _STEP_RE.match(path, pos)
        if not m:
            return None
        pos = m.end()
        if m.group(1) is not None:
            cur = cur.get(m.group(1)) if isinstance(cur, dict) else None
        elif m.group(3) is not None:  # a filter, as printer columns use on conditions
            found = [x for x in cur if isinstance(x, dict)
                     and str(x.get(m.group(3))) == m.group(4)] if isinstance(cur, list) else []
            cur = found[0] if found else None
        else:
            idx = int(m.group(2))
            cur = cur[idx] if isinstance(cur, list) and idx < len(cur) else None
        if cur is None:
            return None
    return cur


# -- patches ----------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: maps merge, `null` deletes, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def json_patch(target: Obj, ops: Any) -> Obj:
    """RFC 6902 JSON patch; a failing operation is a 422, as on a real server."""
    if not isinstance(ops, list):
        raise bad_request("a JSON patch must be a list of operations")
    try:
        result = jsonpatch.apply_patch(target, ops, in_place=False)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
        raise api_error(422, "Invalid", f"the JSON patch could not be applied: {exc}") from exc
    if not isinstance(result, dict):
        raise api_error(422, "Invalid", "the JSON patch did not produce an object")
    return result


# Strategic merge patch: the list fields of built-in kinds that merge by a key (their
# `patchMergeKey`); other lists are replaced. `None` marks a merged list of primitives.
_MERGE_KEYS: dict[str, tuple[str, ...] | None] = {
    "containers": ("name",), "initContainers": ("name",), "ephemeralContainers": ("name",),
    "volumes": ("name",), "env": ("name",), "imagePullSecrets": ("name",),
    "volumeMounts": ("mountPath",), "ports": ("containerPort", "port"),
    "conditions": ("type",), "addresses": ("type",), "ownerReferences": ("uid",),
    "taints": ("key",), "hostAliases": ("ip",), "finalizers": None,
}


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """The common subset of Kubernetes' strategic merge patch for built-in kinds: maps merge,
    `null` deletes, keyed lists (`_MERGE_KEYS`) merge item by item, `$patch: replace|delete`
    and `$deleteFromPrimitiveList/` are honoured; ordering directives are ignored."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return None
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            out[field] = [x for x in out.get(field) or [] if x not in (value or [])]
        elif key.startswith("$"):
            continue  # $retainKeys, $setElementOrder/...: hints we do not need
        elif value is None:
            out.pop(key, None)
        elif isinstance(value, dict):
            merged = strategic_merge_patch(out.get(key), value)
            if merged is None:
                out.pop(key, None)
            else:
                out[key] = merged
        elif isinstance(value, list) and key in _MERGE_KEYS and isinstance(out.get(key), list):
            out[key] = _merge_list(out[key], value, _MERGE_KEYS[key])
        else:
            out[key] = copy.deepcopy(value)
    return out


def _merge_list(current: list[Any], patch: list[Any], keys: tuple[str, ...] | None) -> list[Any]:
    if keys is None:  # a set of primitives
        return list(current) + [v for v in patch if v not in current]
    items = [p for p in patch if isinstance(p, dict)]
    key = next((k for k in keys if items and all(k in p for p in items)), None)
    if key is None or len(items) != len(patch):
        return copy.deepcopy(patch)
    out = list(current)
    for item in items:
        idx = next((i for i, c in enumerate(out)
                    if isinstance(c, dict) and c.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if idx is not None:
                del out[idx]
        elif idx is None:
            out.append(strategic_merge_patch({}, item))
        else:
            out[idx] = strategic_merge_patch(out[idx], item)
    return out
