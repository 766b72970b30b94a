"""`LabEmulator`: kmock's `KubernetesEmulator` made faithful enough for kubectl and the official
Python client. kmock keeps the objects (`.objects`), the resource registry with the bundled
built-in resources (`.resources`) and serves discovery; this layer takes over every request on
a resource and adds what a real API server does (see ../shared/k8s-api.md and the package
docstring): cluster-global resourceVersions, uid/creationTimestamp/generation, lists with
`kind`, label/field selectors, watches from a resourceVersion (410 once compacted),
`timeoutSeconds`, Table output, PUT with 409 on a stale version, the status subresource kept
apart, the patch formats, CRDs that become served resources, bearer tokens and TokenReview.

Owns: the HTTP side: routing, authentication and TokenReview, content negotiation (JSON,
Table), watch streams, discovery and OpenAPI, the lab's hooks (`POST /kubeapi/compact`,
`POST /kubeapi/drop-watches`). The objects and their changes are `tools.kubeapi.store`'s.
May import: kmock, aiohttp, PyYAML and the other modules of `tools.kubeapi`.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import kmock
import yaml
from aiohttp import web

from tools.kubeapi import discovery, tables
from tools.kubeapi import objects as o
from tools.kubeapi.objects import Obj
from tools.kubeapi.store import TOKENREVIEWS, Route, Store, api_version, route
from tools.kubeapi.watchlog import Event, WatchLog, seen_as, stream

log = logging.getLogger(__name__)

# what Kubernetes >= 1.30 puts in the TokenReview of a service-account token bound to a pod
NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"
PUBLIC_PATHS = frozenset({"/healthz", "/livez", "/readyz", "/version"})
WATCH_TIMEOUT_S = 1800.0  # the real server picks 30-60 min when the client gives none


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


def _decode(raw: web.BaseRequest, body: bytes) -> Any:
    if raw.headers.get("Content-Type", "").startswith(o.PROTOBUF):
        return o.decode_protobuf(body)
    try:
        if "yaml" in raw.headers.get("Content-Type", ""):
            return yaml.safe_load(body)
        return json.loads(body) if body else None
    except (ValueError, yaml.YAMLError) as exc:
        raise o.bad_request(f"the request body could not be decoded: {exc}") from exc


def _groups(user: str) -> list[str]:
    if user.startswith("system:node:"):
        return ["system:nodes", "system:authenticated"]
    if user.startswith("system:serviceaccount:") and user.count(":") == 3:
        ns = user.split(":")[2]
        return ["system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"]
    return ["system:authenticated"]


@dataclass(frozen=True)
class LabUser:
    """Whom a lab token authenticates: a user name and, for a service account's token bound to
    a pod, the pod's node (TokenReview's ``user.extra[NODE_NAME_EXTRA]``, as from 1.30)."""

    name: str
    node: str | None = None


class LabEmulator(kmock.KubernetesEmulator):
    def __init__(self, *, tokens: Mapping[str, str | LabUser] | None = None,
                 anonymous: bool = True, watch_cache: int = 10_000) -> None:
        super().__init__()
        # bearer token -> its user; none: no authentication
        self.tokens = {t: u if isinstance(u, LabUser) else LabUser(u)
                       for t, u in (tokens or {}).items()}
        self.anonymous = anonymous
        self.watchlog = WatchLog(watch_cache)
        self.resources.load_bundled()
        self.store = Store(self.objects, self.resources, self.watchlog)

    def close(self) -> None:
        """End every watch (before the HTTP server shuts down)."""
        self.watchlog.close()

    # -- entry point (replaces kmock's: its path parser, its request log, its error list) ----

    async def __call__(self, raw: web.BaseRequest) -> web.StreamResponse:
        try:
            body = await raw.read()
            self._authenticate(raw)
            r = route(raw.path)
            response = (await self._serve_other(raw) if r is None
                        else await self._serve_resource(r, raw, body))
        except kmock.KubernetesError as exc:
            reason, message = exc.reason or "", exc.message or ""
            if isinstance(exc, kmock.KubernetesNotFoundError) and reason != "NotFound":
                reason, message = "NotFound", "the server could not find the requested resource"
            response = _json(o.status_body(exc.status, reason, message, exc.details), exc.status)
        except Exception as exc:  # a bug here must not look like a dead server
            log.exception("%s %s failed", raw.method, raw.path_qs)
            response = _json(o.status_body(500, "InternalError", repr(exc)), 500)
        log.debug("%s %s -> %s", raw.method, raw.path_qs, response.status)
        return response

    def _authenticate(self, raw: web.BaseRequest) -> str | None:
        """A request with a token must carry a configured one; one without is anonymous, as
        with kube-apiserver's default --anonymous-auth=true (kubectl sends no credentials over
        plain HTTP), unless `anonymous` is off."""
        if not self.tokens or raw.path in PUBLIC_PATHS:
            return None
        header = raw.headers.get("Authorization")
        if header is None and self.anonymous:
            return "system:anonymous"
        scheme, _, token = (header or "").partition(" ")
        user = self.tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            raise kmock.KubernetesError(401, "Unauthorized", "Unauthorized", None)
        return user.name

    # -- everything but resources: kmock's discovery (fixed), OpenAPI, health, lab hooks ------

    async def _serve_other(self, raw: web.BaseRequest) -> web.StreamResponse:
        path = raw.path.rstrip("/") or "/"
        if path in ("/healthz", "/livez", "/readyz"):
            return web.Response(text="ok")
        if path == "/version":
            return _json(discovery.VERSION)
        if path == "/openapi/v2":
            if "protobuf" in raw.headers.get("Accept", ""):
                return web.Response(body=discovery.openapi_v2_protobuf(),
                                    content_type=discovery.OPENAPI_V2_PROTOBUF)
            return _json(discovery.openapi_v2_json())
        if path == "/openapi/v3" or path.startswith("/openapi/v3/"):
            docs = self._openapi_v3_docs()
            if path == "/openapi/v3":
                return _json(discovery.openapi_v3_root(docs))
            if path.removeprefix("/openapi/v3/") in docs:
                return _json(docs[path.removeprefix("/openapi/v3/")])
        if path == "/kubeapi/compact" and raw.method == "POST":
            through = raw.query.get("resourceVersion")
            rv = self.watchlog.compact(int(through) if through else None)
            return _json({"compactedResourceVersion": str(rv)})
        if path == "/kubeapi/drop-watches" and raw.method == "POST":
            self.watchlog.drop_all()
            return _json({"dropped": True})
        # Discovery: kmock's handlers, called directly (its request matching would keep every
        # request in memory for assertions; a lab server runs for hours).
        parts = path.strip("/").split("/")
        if raw.method != "GET" or len(parts) > 3 or parts[0] not in ("", "api", "apis"):
            raise kmock.KubernetesNotFoundError()
        request = kmock.Request(method=raw.method, url=raw.url, resource=kmock.resource(
            group="" if parts[0] == "api" else parts[1] if len(parts) > 1 else None,
            version=parts[1] if parts[0] == "api" and len(parts) > 1 else
            parts[2] if len(parts) > 2 else None))
        handler = {1: {"": self._serve_root, "api": self._serve_api, "apis": self._serve_apis},
                   2: {"api": self._serve_version, "apis": self._serve_group},
                   3: {"apis": self._serve_version}}[len(parts)].get(parts[0])
        if handler is None:
            raise kmock.KubernetesNotFoundError()
        return _json(await handler(request))

    def _openapi_v3_docs(self) -> dict[str, Obj]:
        by_gv: dict[tuple[str, str], list[tuple[str, kmock.ResourceInfo]]] = {}
        for res in list(self.resources):
            if isinstance(res, kmock.resource) and res.group is not None and res.version \
                    and res.plural:
                by_gv.setdefault((res.group, res.version), []).append(
                    (res.plural, self.resources[res]))
        return {discovery.gv_path(g, v): discovery.openapi_v3_doc(g, v, items)
                for (g, v), items in by_gv.items()}

    async def _serve_version(self, request: kmock.Request) -> kmock.Payload:
        doc = cast(Obj, await super()._serve_version(request))
        assert request.resource is not None
        return discovery.fix_resource_list(doc, request.resource.group or "",
                                           request.resource.version or "")

    async def _serve_group(self, request: kmock.Request) -> kmock.Payload:
        return discovery.fix_group(cast(Obj, await super()._serve_group(request)))

    async def _serve_apis(self, request: kmock.Request) -> kmock.Payload:
        doc = cast(Obj, await super()._serve_apis(request))
        doc["groups"] = sorted((discovery.fix_group(g) for g in doc.get("groups") or []),
                               key=lambda g: str(g.get("name")))
        return doc

    # -- resources ----------------------------------------------------------------------------

    async def _serve_resource(self, r: Route, raw: web.BaseRequest,
                              body: bytes) -> web.StreamResponse:
        if r.resource == TOKENREVIEWS and raw.method == "POST" and r.name is None:
            return _json(self._token_review(_decode(raw, body)), 201)
        if r.resource not in self.resources:
            raise kmock.KubernetesNotFoundError()
        info = self.resources[r.resource]
        if (r.namespace is not None and not info.namespaced) or (
                r.name is not None and info.namespaced and r.namespace is None) or (
                r.subresource is not None and (r.subresource != "status" or r.name is None
                                               or "status" not in info.subresources)):
            raise kmock.KubernetesNotFoundError()
        method, q = raw.method, raw.query
        if method == "GET" and (r.watch or q.get("watch") in ("true", "1")):
            return await self._watch(r, info, raw)
        if method == "GET":
            table_version = tables.wanted_table_version(raw.headers.get("Accept", ""))
            if r.name is not None:
                obj = self.store.require(r)
                found = [obj]
                rv = str(o.meta(obj).get("resourceVersion", ""))
            else:
                found = self.store.select(r.resource, info, r.namespace, q)
                rv = str(self.store.resource_version)
            if table_version:
                return _json(tables.table(found, info.kind or "", self.store.columns(r.resource),
                                          rv, q.get("includeObject", "Metadata"), table_version))
            if r.name is not None:
                return _json(found[0])
            return _json({"kind": f"{info.kind}List", "apiVersion": api_version(r.resource),
                          "metadata": {"resourceVersion": rv}, "items": found})
        if method == "POST" and r.name is None:
            return _json(self.store.create(r.resource, info, r.namespace, _decode(raw, body)), 201)
        if method == "PUT" and r.name is not None:
            new = _decode(raw, body)
            if not isinstance(new, dict):
                raise o.bad_request("the body of a PUT must be an object")
            if o.meta(new).get("name") not in (None, r.name):
                raise o.bad_request("the name of the object does not match the name on the URL")
            return _json(self.store.update(r, info, self.store.require(r), copy.deepcopy(new)))
        if method == "PATCH" and r.name is not None:
            obj, code = self.store.patch(r, info, raw.headers.get("Content-Type", ""), body)
            return _json(obj, code)
        if method == "DELETE" and r.name is not None:
            return _json(self.store.delete(r, info, self.store.require(r), _decode(raw, body)))
        if method == "DELETE":
            gone = [self.store.delete(Route(r.resource, o.meta(x).get("namespace"),
                                       o.meta(x)["name"], None, False), info, x, None)
                    for x in self.store.select(r.resource, info, r.namespace, q)]
            return _json({"kind": f"{info.kind}List", "apiVersion": api_version(r.resource),
                          "metadata": {"resourceVersion": str(self.store.resource_version)},
                          "items": gone})
        raise kmock.KubernetesError(405, "MethodNotAllowed",
                                    f"the server does not allow this method on {r.resource.plural}",
                                    None)

    # -- watch --------------------------------------------------------------------------------

    async def _watch(self, r: Route, info: kmock.ResourceInfo,
                     raw: web.BaseRequest) -> web.StreamResponse:
        q = raw.query
        visible = self.store.matcher(r.resource, info, r.namespace, r.name, q)
        rv_text = q.get("resourceVersion", "")
        initial = rv_text in ("", "0") or q.get("sendInitialEvents") == "true"
        try:
            start = 0 if initial else int(rv_text)
            timeout = float(q.get("timeoutSeconds") or WATCH_TIMEOUT_S)
        except ValueError as exc:
            raise o.bad_request(f"invalid watch parameters: {exc}") from exc
        table_version = tables.wanted_table_version(raw.headers.get("Accept", ""))
        include = q.get("includeObject", "Metadata")

        def line(kind: str, obj: Obj) -> bytes:
            if table_version:
                rv = str(o.meta(obj).get("resourceVersion", ""))
                obj = tables.table([obj], info.kind or "", self.store.columns(r.resource), rv,
                                   include, table_version)
            return json.dumps({"type": kind, "object": obj}).encode() + b"\n"

        def begin() -> tuple[int, bytes]:  # the current state, then changes after it
            if not initial:
                return start, b""
            chunk = b"".join(line("ADDED", x) for x in self.store.select(
                r.resource, info, r.namespace, q) if visible(x))
            if q.get("sendInitialEvents") == "true":
                chunk += json.dumps({"type": "BOOKMARK", "object": {
                    "kind": info.kind, "apiVersion": api_version(r.resource), "metadata": {
                        "resourceVersion": str(self.store.resource_version),
                        "annotations": {"k8s.io/initial-events-end": "true"}}}}).encode() + b"\n"
            return self.store.resource_version, chunk

        def render(event: Event) -> bytes | None:
            kind = seen_as(event, visible) if event.resource == r.resource else None
            return line(kind, event.obj) if kind else None

        return await stream(raw, self.watchlog, begin, timeout, render)

    # -- authentication -----------------------------------------------------------------------

    def _token_review(self, body: Any) -> Obj:
        if not isinstance(body, dict):
            raise o.bad_request("a TokenReview must be an object")
        spec = body.get("spec") or {}
        user = self.tokens.get(str(spec.get("token") or ""))
        status: Obj = {"authenticated": False, "user": {}, "error": "invalid bearer token"}
        if user is not None:
            info: Obj = {"username": user.name, "groups": _groups(user.name)}
            if user.node is not None:
                info["extra"] = {NODE_NAME_EXTRA: [user.node]}
            status = {"authenticated": True, "user": info,
                      "audiences": list(spec.get("audiences") or [])}
        return {"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"creationTimestamp": None}, "spec": spec, "status": status}

