"""The objects of the lab API server and every change to them, as a real API server makes it:
each write gets the next cluster-global resourceVersion (plus uid, creationTimestamp,
generation) and goes to the watch log; PUT and PATCH check a given resourceVersion (409),
keep the status subresource apart and change nothing when nothing changes; deletion honours
finalizers; a namespace takes its objects along and a CRD its custom resources; a CRD becomes
served resources (kmock's registry) with `Established`, its printer columns and selectable
fields.

Owns: the write path over kmock's object store, reads with selectors, resource paths (`route`).
May import: kmock, PyYAML, `tools.kubeapi.objects`, `tools.kubeapi.discovery` (what a CRD
serves) and `tools.kubeapi.watchlog`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import kmock
import yaml

from tools.kubeapi import discovery
from tools.kubeapi import objects as o
from tools.kubeapi.objects import Obj
from tools.kubeapi.watchlog import Event, WatchLog

CRDS = kmock.resource(group="apiextensions.k8s.io", version="v1",
                      plural="customresourcedefinitions")
NAMESPACES = kmock.resource(group="", version="v1", plural="namespaces")
PODS = kmock.resource(group="", version="v1", plural="pods")
TOKENREVIEWS = kmock.resource(group="authentication.k8s.io", version="v1",
                              plural="tokenreviews")
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


@dataclass(frozen=True)
class Route:
    resource: kmock.resource
    namespace: str | None
    name: str | None
    subresource: str | None
    watch: bool  # the legacy /watch/ path prefix


def route(path: str) -> Route | None:
    """Parse a resource path; None for anything else (discovery, /version, /openapi...).
    kmock's own parser answers 500 for /api/v1/namespaces."""
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 3 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 4 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    watch = rest[0] == "watch"
    rest = rest[1:] if watch else rest
    if not rest:
        return None
    namespace = None
    namespace_sub = group == "" and len(rest) == 3 and rest[2] in ("status", "finalize")
    if rest[0] == "namespaces" and len(rest) >= 3 and not namespace_sub:
        namespace, rest = rest[1], rest[2:]
    return Route(kmock.resource(group=group, version=version, plural=rest[0]), namespace,
                 rest[1] if len(rest) > 1 else None, "/".join(rest[2:]) or None, watch)


def api_version(res: kmock.resource) -> str:
    return f"{res.group}/{res.version}" if res.group else str(res.version)


@dataclass(frozen=True)
class CustomKind:
    crd: str
    printer_columns: list[Obj]
    selectable: list[str]


class Store:
    def __init__(self, objects: kmock.ObjectsArray, resources: kmock.ResourcesArray,
                 watchlog: WatchLog) -> None:
        self.objects, self.resources, self.watchlog = objects, resources, watchlog
        self.resource_version = 0
        self._custom: dict[kmock.resource, CustomKind] = {}
        for name in DEFAULT_NAMESPACES:
            self.create(NAMESPACES, self.resources[NAMESPACES], None, {"metadata": {"name": name}})

    def stored(self, res: kmock.resource, namespace: str | None, name: str) -> Obj | None:
        key = (res, namespace, name)
        if key in self.objects and not self.objects[key].deleted:
            return self.objects[key].raw
        return None

    def require(self, r: Route) -> Obj:
        assert r.name is not None
        obj = self.stored(r.resource, r.namespace, r.name)
        if obj is None:
            raise o.not_found(str(r.resource.plural), str(r.resource.group), r.name)
        return obj

    def columns(self, res: kmock.resource) -> list[Obj] | None:
        return self._custom[res].printer_columns if res in self._custom else None

    def matcher(self, res: kmock.resource, info: kmock.ResourceInfo, namespace: str | None,
                 name: str | None, q: Mapping[str, str]) -> Callable[[Obj], bool]:
        labels = o.parse_label_selector(q.get("labelSelector", ""))
        extra = self._custom[res].selectable if res in self._custom else []
        fields = o.parse_field_selector(q.get("fieldSelector", ""), info.kind or "", extra)

        def matches(obj: Obj) -> bool:
            m = o.meta(obj)
            return ((namespace is None or m.get("namespace") == namespace)
                    and (name is None or m.get("name") == name)
                    and o.labels_match(labels, obj) and o.fields_match(fields, obj))
        return matches

    def select(self, res: kmock.resource, info: kmock.ResourceInfo, namespace: str | None,
                q: Mapping[str, str]) -> list[Obj]:
        matches = self.matcher(res, info, namespace, None, q)
        found = [obj.raw for (r, _, _), obj in self.objects.items()
                 if r == res and not obj.deleted]
        return sorted((x for x in found if matches(x)),
                      key=lambda x: (o.meta(x).get("namespace") or "", o.meta(x).get("name")))

    # -- writes -------------------------------------------------------------------------------

    def _commit(self, kind: str, res: kmock.resource, namespace: str | None, name: str,
                obj: Obj, old: Obj | None) -> Obj:
        """Every change: the next cluster-global resourceVersion, stored, logged for watches."""
        self.resource_version += 1
        obj = dict(obj)
        obj["metadata"] = dict(o.meta(obj), resourceVersion=str(self.resource_version))
        key = (res, namespace, name)
        if kind == "DELETED":
            if key in self.objects:
                del self.objects[key]
        else:
            self.objects[key] = obj
        self.watchlog.append(Event(self.resource_version, kind, res, namespace, name, obj, old))
        return obj

    def create(self, res: kmock.resource, info: kmock.ResourceInfo, namespace: str | None,
                body: Any) -> Obj:
        if not isinstance(body, dict):
            raise o.bad_request("the body of a create must be an object")
        if body.get("kind") not in (None, "", info.kind) or body.get("apiVersion") not in (
                None, "", api_version(res)):
            raise o.bad_request(f"the object ({body.get('apiVersion')}, {body.get('kind')}) is "
                                f"not a {api_version(res)} {info.kind}")
        obj = copy.deepcopy(body)
        m = obj["metadata"] = dict(o.meta(obj))
        name = m.get("name") or (o.generated_name(m["generateName"]) if m.get("generateName")
                                 else "")
        if not name:
            raise o.invalid(str(info.kind), "",
                            "metadata.name: Required value: name or generateName is required")
        if info.namespaced:
            if namespace and m.get("namespace") not in (None, "", namespace):
                raise o.bad_request("the namespace of the provided object does not match the "
                                    "namespace sent on the request")
            namespace = namespace or m.get("namespace")
            if not namespace:
                raise o.bad_request("a namespaced object needs a namespace")
            if self.stored(NAMESPACES, None, namespace) is None:
                raise o.not_found("namespaces", "", namespace)
            m["namespace"] = namespace
        else:
            namespace = None
            m.pop("namespace", None)
        if self.stored(res, namespace, name) is not None:
            raise o.already_exists(str(res.plural), str(res.group), name)
        for key in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"):
            m.pop(key, None)
        m.update(name=name, uid=o.new_uid(), creationTimestamp=o.now(), generation=1)
        obj["apiVersion"], obj["kind"] = api_version(res), info.kind
        if res == CRDS:
            discovery.check_crd(obj)
            obj["status"] = discovery.crd_status(obj, None)
        elif res in self._custom and "status" in info.subresources:
            obj.pop("status", None)  # written through /status only
        elif res == PODS:
            obj["status"] = {"phase": "Pending"}  # the kubelet reports the rest
        elif res == NAMESPACES:
            obj["status"] = {"phase": "Active"}
        obj = self._commit("ADDED", res, namespace, name, obj, None)
        if res == CRDS:
            self._register_crd(obj)
        return obj

    def patch(self, r: Route, info: kmock.ResourceInfo, content_type: str,
               body: bytes) -> tuple[Obj, int]:
        kind = content_type.split(";")[0].strip().lower()
        assert r.name is not None
        current = self.stored(r.resource, r.namespace, r.name)
        try:
            patch = yaml.safe_load(body) if kind.endswith("yaml") else json.loads(body or b"null")
        except (ValueError, yaml.YAMLError) as exc:
            raise o.bad_request(f"the patch could not be decoded: {exc}") from exc
        if kind == "application/apply-patch+yaml":  # server-side apply, as a plain merge
            if not isinstance(patch, dict):
                raise o.bad_request("an applied configuration must be an object")
            if current is None and r.subresource is None:
                patch.setdefault("metadata", {}).setdefault("name", r.name)
                return self.create(r.resource, info, r.namespace, patch), 201
            new = o.merge_patch(self.require(r), patch)
        elif current is None:
            raise o.not_found(str(r.resource.plural), str(r.resource.group), r.name)
        elif kind == "application/json-patch+json":
            new = o.json_patch(current, patch)
        elif kind == "application/merge-patch+json":
            new = o.merge_patch(current, patch)
        elif kind == "application/strategic-merge-patch+json" and r.resource not in self._custom:
            new = o.strategic_merge_patch(current, patch)
        else:
            raise kmock.KubernetesError(415, "UnsupportedMediaType",
                                        "the body of the request was in an unknown format - "
                                        "accepted media types include: application/json-patch"
                                        "+json, application/merge-patch+json, application/"
                                        "apply-patch+yaml", None)
        return self.update(r, info, self.require(r), new), 200

    def update(self, r: Route, info: kmock.ResourceInfo, current: Obj, new: Any) -> Obj:
        """PUT and PATCH: preconditions, immutable fields, the status subresource kept apart,
        generation, no-op writes that change nothing (as on a real server)."""
        assert r.name is not None
        if not isinstance(new, dict):
            raise o.bad_request("the result of the write is not an object")
        old_meta = o.meta(current)
        wanted_rv = o.meta(new).get("resourceVersion")
        if wanted_rv and wanted_rv != old_meta.get("resourceVersion"):
            raise o.conflict(str(r.resource.plural), str(r.resource.group), r.name)
        if r.subresource == "status":  # only the status changes
            status, new = new.get("status"), copy.deepcopy(current)
            new.pop("status", None)
            if status is not None:
                new["status"] = status
        elif "status" in info.subresources:  # the status changes only through /status
            new.pop("status", None)
            if "status" in current:
                new["status"] = copy.deepcopy(current["status"])
        m = new["metadata"] = dict(o.meta(new))
        for key in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp",
                    "deletionGracePeriodSeconds", "generation", "resourceVersion"):
            m.pop(key, None)
            if key in old_meta:
                m[key] = old_meta[key]
        new["apiVersion"], new["kind"] = api_version(r.resource), info.kind
        if o.spec_part(new) != o.spec_part(current):
            m["generation"] = int(old_meta.get("generation") or 0) + 1
        if r.resource == CRDS and r.subresource is None:
            discovery.check_crd(new)
            new["status"] = discovery.crd_status(new, current)
        if new == current:
            return current
        if m.get("deletionTimestamp") and not m.get("finalizers"):
            return self._remove(r.resource, r.namespace, r.name, new, current)
        stored = self._commit("MODIFIED", r.resource, r.namespace, r.name, new, current)
        if r.resource == CRDS:
            self._register_crd(stored)
        return stored

    def delete(self, r: Route, info: kmock.ResourceInfo, current: Obj, options: Any) -> Obj:
        assert r.name is not None
        pre = (options or {}).get("preconditions") or {} if isinstance(options, dict) else {}
        m = o.meta(current)
        for key in ("uid", "resourceVersion"):
            if pre.get(key) and pre[key] != m.get(key):
                raise o.conflict(str(r.resource.plural), str(r.resource.group), r.name,
                                 f"Precondition failed: {key} in precondition: {pre[key]}, "
                                 f"{key} in object meta: {m.get(key)}")
        if not m.get("finalizers"):
            return self._remove(r.resource, r.namespace, r.name, current, current)
        if m.get("deletionTimestamp"):
            return current
        new = copy.deepcopy(current)
        new["metadata"].update(deletionTimestamp=o.now(), deletionGracePeriodSeconds=0,
                               generation=int(m.get("generation") or 0) + 1)
        return self._commit("MODIFIED", r.resource, r.namespace, r.name, new, current)

    def _remove(self, res: kmock.resource, namespace: str | None, name: str, last: Obj,
                old: Obj) -> Obj:
        """Delete for good; a namespace takes its objects along, a CRD its custom resources."""
        doomed: list[tuple[kmock.resource, str | None, str]] = []
        if res == NAMESPACES:
            doomed = [k for k in self.objects if k[1] == name]
        elif res == CRDS:
            kinds = {k for k, c in self._custom.items() if c.crd == name}
            doomed = [k for k in self.objects if k[0] in kinds]
            self._unregister_crd(name)
        for key in doomed:
            if (gone := self.stored(*key)) is not None:
                self._commit("DELETED", *key, gone, gone)
        return self._commit("DELETED", res, namespace, name, last, old)

    # -- CRDs ---------------------------------------------------------------------------------

    def _register_crd(self, crd: Obj) -> None:
        """The CRD's served versions become resources: discovery, REST paths, Table columns."""
        name = str(o.meta(crd)["name"])
        self._unregister_crd(name)
        for res, info, printer_columns, selectable in discovery.crd_resources(crd):
            self.resources[res] = info
            self._custom[res] = CustomKind(name, printer_columns, selectable)

    def _unregister_crd(self, name: str) -> None:
        for res in [k for k, c in self._custom.items() if c.crd == name]:
            del self._custom[res]
            del self.resources[res]
