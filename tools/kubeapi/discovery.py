"""What the API serves and how it describes it, as kubectl and client-go expect: fixes to kmock's
discovery (`groupVersion` of the core group, preferred versions, subresources' own verbs), what
a CRD serves (its validation, `Established` status, resources, printer columns), the server
version, and a minimal OpenAPI v3 (and v2 for older kubectl) so that kubectl's validation finds
what it looks for instead of failing.

kubectl (>= 1.27) validates on the server when the OpenAPI v3 document of a group-version says
that PATCH takes `fieldValidation`; so each document lists, per resource, a PATCH operation with
that parameter and the resource's group-version-kind, and no schemas (nothing is validated,
as documented in the package). kubectl 1.20-1.26 read OpenAPI v2 as protobuf: an empty
document (no definitions) makes them skip client-side validation.

Owns: these documents and CRD rules (pure: the store applies them).
May import: the standard library, kmock (resource types) and `tools.kubeapi.objects`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from typing import Any

import kmock

from tools.kubeapi import objects as o

Doc = dict[str, Any]

VERSION = {"major": "1", "minor": "32", "gitVersion": "v1.32.0-kmock.0.8",
           "gitCommit": "", "gitTreeState": "clean", "buildDate": "1970-01-01T00:00:00Z",
           "goVersion": "go1.23", "compiler": "gc", "platform": "linux/amd64"}
STANDARD_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
_VERSION_RE = re.compile(r"^v(\d+)(?:(alpha|beta)(\d+))?$")


def version_priority(version: str) -> tuple[int, int, int]:
    """Kubernetes' version order: GA > beta > alpha, then by number (v2 > v1 > v1beta2)."""
    m = _VERSION_RE.match(version)
    if not m:
        return (-1, 0, 0)
    stability = {"alpha": 0, "beta": 1}.get(m.group(2) or "", 2)
    return (stability, int(m.group(1)), int(m.group(3) or 0))


def fix_group(group: Doc) -> Doc:
    """An APIGroup with its versions in preference order and the preferred one first."""
    versions = sorted(group.get("versions") or [], key=lambda v: version_priority(v["version"]),
                      reverse=True)
    if versions:
        group["versions"] = versions
        group["preferredVersion"] = versions[0]
    return group


def fix_resource_list(doc: Doc, group: str, version: str) -> Doc:
    """kmock writes `/v1` for the core group (kubectl then drops every core resource) and gives
    subresources their parent's short names, categories and verbs."""
    doc["groupVersion"] = f"{group}/{version}" if group else version
    for entry in doc.get("resources") or []:
        if "/" in entry.get("name", ""):
            entry["shortNames"] = []
            entry["categories"] = []
            entry["verbs"] = ["get", "patch", "update"]
        else:
            entry["verbs"] = sorted(entry.get("verbs") or [])
        entry["namespaced"] = bool(entry.get("namespaced"))
    doc["resources"] = sorted(doc.get("resources") or [], key=lambda e: e.get("name", ""))
    return doc


# -- CustomResourceDefinitions ----------------------------------------------------------------


def check_crd(crd: Doc) -> None:
    """What the API server refuses (422) before a CRD can serve anything."""
    spec = crd.get("spec") or {}
    names, versions = spec.get("names") or {}, spec.get("versions") or []
    name = str(o.meta(crd).get("name"))
    problems = [f"spec.{f}: Required value" for f, v in (
        ("group", spec.get("group")), ("names.plural", names.get("plural")),
        ("names.kind", names.get("kind"))) if not v]
    if name != f"{names.get('plural')}.{spec.get('group')}":
        problems.append(f'metadata.name: Invalid value: "{name}": must be '
                        f'spec.names.plural+"."+spec.group')
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        problems.append("spec.scope: Unsupported value: must be Namespaced or Cluster")
    if not versions or not all(v.get("name") for v in versions) or sum(
            bool(v.get("storage")) for v in versions) != 1:
        problems.append("spec.versions: Invalid value: must have exactly one version "
                        "marked as storage version")
    if problems:
        raise o.invalid("CustomResourceDefinition.apiextensions.k8s.io", name,
                        "[" + ", ".join(problems) + "]")


def crd_status(crd: Doc, old: Doc | None) -> Doc:
    """NamesAccepted and Established at once (a real server takes a moment), acceptedNames,
    storedVersions; transition times kept across updates."""
    spec, stamp = crd["spec"], o.now()
    names = spec["names"]
    before = {c.get("type"): c for c in ((old or {}).get("status") or {}).get("conditions")
              or []}

    def condition(kind: str, reason: str, message: str) -> Doc:
        since = (before.get(kind) or {}).get("lastTransitionTime", stamp)
        return {"type": kind, "status": "True", "lastTransitionTime": since,
                "reason": reason, "message": message}

    accepted = {"plural": names["plural"], "kind": names["kind"],
                "singular": names.get("singular") or names["kind"].lower(),
                "listKind": names.get("listKind") or names["kind"] + "List"}
    accepted |= {k: names[k] for k in ("shortNames", "categories") if names.get(k)}
    stored = list(((old or {}).get("status") or {}).get("storedVersions") or [])
    stored += [v["name"] for v in spec["versions"] if v.get("storage")
               and v["name"] not in stored]
    return {"conditions": [condition("NamesAccepted", "NoConflicts", "no conflicts found"),
                           condition("Established", "InitialNamesAccepted",
                                     "the initial names have been accepted")],
            "acceptedNames": accepted, "storedVersions": stored}


def crd_resources(crd: Doc) -> list[tuple[kmock.resource, kmock.ResourceInfo, list[Doc],
                                          list[str]]]:
    """Per served version: the resource, its discovery entry, its printer columns and its
    selectable fields (paths without the leading dot)."""
    spec = crd["spec"]
    names = spec["names"]
    out = []
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        info = kmock.ResourceInfo(
            namespaced=spec["scope"] == "Namespaced", kind=names["kind"],
            singular=names.get("singular") or names["kind"].lower(), verbs=STANDARD_VERBS,
            shortnames=names.get("shortNames") or [], categories=names.get("categories") or [],
            subresources=["status"] if "status" in (version.get("subresources") or {}) else [])
        out.append((kmock.resource(group=spec["group"], version=version["name"],
                                   plural=names["plural"]), info,
                    list(version.get("additionalPrinterColumns") or []),
                    [str(f.get("jsonPath", "")).lstrip(".")
                     for f in version.get("selectableFields") or []]))
    return out


# -- OpenAPI ----------------------------------------------------------------------------------


def gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def openapi_v3_doc(group: str, version: str,
                   resources: Iterable[tuple[str, kmock.ResourceInfo]]) -> Doc:
    paths: Doc = {}
    for plural, info in sorted(resources, key=lambda r: r[0]):
        if "patch" not in info.verbs or not info.kind:
            continue
        scope = "namespaces/{namespace}/" if info.namespaced else ""
        paths[f"/{gv_path(group, version)}/{scope}{plural}/{{name}}"] = {"patch": {
            "operationId": f"patch{info.kind}",
            "x-kubernetes-group-version-kind": {"group": group, "version": version,
                                                "kind": info.kind},
            "parameters": [{"name": name, "in": "query", "schema": {"type": "string"}}
                           for name in ("dryRun", "fieldManager", "fieldValidation", "force")],
            "requestBody": {"content": {
                t: {"schema": {"type": "object"}} for t in (
                    "application/json-patch+json", "application/merge-patch+json",
                    "application/apply-patch+yaml")}},
            "responses": {"200": {"description": "OK"}},
        }}
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": VERSION["gitVersion"]},
            "paths": paths, "components": {"schemas": {}}}


def digest(doc: Doc) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32].upper()


def openapi_v3_root(docs: dict[str, Doc]) -> Doc:
    """`/openapi/v3`: where each group-version's document is (the hash lets clients cache)."""
    return {"paths": {path: {"serverRelativeURL": f"/openapi/v3/{path}?hash={digest(doc)}"}
                      for path, doc in sorted(docs.items())}}


def openapi_v2_json() -> Doc:
    return {"swagger": "2.0", "info": {"title": "Kubernetes", "version": VERSION["gitVersion"]},
            "paths": {}, "definitions": {}}


# what kube-openapi answers to `Accept: ...spec.v2@v1.0+protobuf` (Go cannot parse an `@`)
OPENAPI_V2_PROTOBUF = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"


def openapi_v2_protobuf() -> bytes:
    """The same document in gnostic's protobuf encoding (fields: 1 swagger, 2 info{1 title,
    2 version}), which is what client-go asks for."""
    def field(number: int, payload: bytes) -> bytes:
        return bytes([number << 3 | 2, len(payload)]) + payload

    info = field(1, b"Kubernetes") + field(2, str(VERSION["gitVersion"]).encode())
    return field(1, b"2.0") + field(2, info)
