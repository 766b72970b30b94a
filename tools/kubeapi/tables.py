"""Server-side `Table` output (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`), which is
what `kubectl get` prints: the columns of a CRD's `additionalPrinterColumns`, and the built-in
columns of the core kinds the lab uses (Pod, Node, Namespace, CRD, Lease; other kinds get
Name and Age).

Owns: column definitions, cell values, ages as the API server words them, the Table and
PartialObjectMetadata envelopes, and reading the Accept header for them.
May import: the standard library and `tools.kubeapi.objects`.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Iterable
from typing import Any

from tools.kubeapi.objects import Obj, lookup, meta, parse_time

Cell = Callable[[Obj], Any]


def _col(name: str, description: str, *, type_: str = "string", priority: int = 0,
         format_: str = "") -> Obj:
    return {"name": name, "type": type_, "format": format_, "description": description,
            "priority": priority}


NAME = _col("Name", "Name must be unique within a namespace.", format_="name")
AGE = _col("Age", "CreationTimestamp is a timestamp representing the server time when this "
           "object was created.")


def human_duration(seconds: float) -> str:
    """An age as `kubectl get` shows it: 45s, 3m20s, 12m, 5h30m, 20h, 3d4h, 30d, 2y100d."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if hours < 24 * 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    years = days // 365
    if days < 365 * 8:
        return f"{years}y{days % 365}d" if days % 365 else f"{years}y"
    return f"{years}y"


def age(timestamp: Any) -> str:
    when = parse_time(timestamp) if isinstance(timestamp, str) else None
    if when is None:
        return "<unknown>"
    return human_duration((datetime.datetime.now(datetime.UTC) - when).total_seconds())


def _age(obj: Obj) -> str:
    return age(meta(obj).get("creationTimestamp"))


def _name(obj: Obj) -> str:
    return str(meta(obj).get("name", ""))


# -- core kinds -------------------------------------------------------------------------------


def _pod_cells(obj: Obj) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    statuses = status.get("containerStatuses") or []
    ready = sum(1 for c in statuses if c.get("ready"))
    restarts = sum(int(c.get("restartCount") or 0) for c in statuses)
    reason = status.get("reason") or status.get("phase") or ""
    for c in statuses:
        state = c.get("state") or {}
        detail = (state.get("waiting") or state.get("terminated") or {}).get("reason")
        if detail:
            reason = detail
    if meta(obj).get("deletionTimestamp"):
        reason = "Terminating"
    return [f"{ready}/{len(spec.get('containers') or [])}", reason, str(restarts), _age(obj),
            status.get("podIP") or "<none>", spec.get("nodeName") or "<none>",
            status.get("nominatedNodeName") or "<none>", "<none>"]


def _node_cells(obj: Obj) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    state = "Unknown" if ready is None else "Ready" if ready.get("status") == "True" else "NotReady"
    if spec.get("unschedulable"):
        state += ",SchedulingDisabled"
    labels = meta(obj).get("labels") or {}
    roles = sorted({k.split("/", 1)[1] for k in labels if k.startswith("node-role.kubernetes.io/")}
                   | ({labels["kubernetes.io/role"]} if "kubernetes.io/role" in labels else set()))
    info = status.get("nodeInfo") or {}
    addresses = status.get("addresses") or []

    def address(kind: str) -> str:
        return next((a.get("address") for a in addresses if a.get("type") == kind), "<none>")

    return [state, ",".join(r for r in roles if r) or "<none>", _age(obj),
            info.get("kubeletVersion", ""), address("InternalIP"), address("ExternalIP"),
            info.get("osImage") or "<unknown>", info.get("kernelVersion") or "<unknown>",
            info.get("containerRuntimeVersion") or "<unknown>"]


_BUILTIN: dict[str, tuple[list[Obj], Callable[[Obj], list[Any]]]] = {
    "Pod": ([_col("Ready", "The aggregate readiness state of this pod for accepting traffic."),
             _col("Status", "The aggregate status of the containers in this pod."),
             _col("Restarts", "The number of times the containers in this pod have been "
                  "restarted."), AGE,
             _col("IP", "IP address allocated to the pod.", priority=1),
             _col("Node", "NodeName is a request to schedule this pod onto a specific node.",
                  priority=1),
             _col("Nominated Node", "The node this pod is nominated to run on.", priority=1),
             _col("Readiness Gates", "The readiness gates of this pod.", priority=1)],
            _pod_cells),
    "Node": ([_col("Status", "The status of the node"),
              _col("Roles", "The roles of the node"), AGE,
              _col("Version", "Kubelet Version reported by the node."),
              _col("Internal-IP", "The node's internal IP address.", priority=1),
              _col("External-IP", "The node's external IP address.", priority=1),
              _col("OS-Image", "OS Image reported by the node.", priority=1),
              _col("Kernel-Version", "Kernel Version reported by the node.", priority=1),
              _col("Container-Runtime", "Container Runtime Version reported by the node.",
                   priority=1)],
             _node_cells),
    "Namespace": ([_col("Status", "The status of the namespace"), AGE],
                  lambda o: [(o.get("status") or {}).get("phase", ""), _age(o)]),
    "CustomResourceDefinition": (
        [_col("Created At", "The time the CRD was created.", type_="date")],
        lambda o: [meta(o).get("creationTimestamp")]),
    "Lease": ([_col("Holder", "The holder of the lease."), AGE],
              lambda o: [(o.get("spec") or {}).get("holderIdentity") or "", _age(o)]),
}


# -- custom resources -------------------------------------------------------------------------


def _crd_cell(column: Obj) -> Cell:
    path, kind = str(column.get("jsonPath", "")), column.get("type", "string")

    def cell(obj: Obj) -> Any:
        value = lookup(obj, path)
        if value is None:
            return None
        if kind == "string":
            return value if isinstance(value, str) else json.dumps(value)
        if kind == "integer" and isinstance(value, int | float) and not isinstance(value, bool):
            return int(value)
        if kind == "number" and isinstance(value, int | float) and not isinstance(value, bool):
            return value
        if kind == "boolean" and isinstance(value, bool):
            return value
        if kind == "date" and isinstance(value, str):
            return age(value) if parse_time(value) else "<invalid>"
        return None

    return cell


def columns(kind: str, printer_columns: list[Obj] | None) -> tuple[list[Obj], Cell]:
    """The column definitions of a kind and how to compute one row's cells."""
    if printer_columns is not None:  # a custom resource
        printer_columns = printer_columns or [
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp",
             "description": AGE["description"]}]
        defs = [NAME] + [_col(c["name"], c.get("description", ""), type_=c.get("type", "string"),
                              priority=int(c.get("priority", 0)), format_=c.get("format", ""))
                         for c in printer_columns]
        cells = [_crd_cell(c) for c in printer_columns]
        return defs, lambda obj: [_name(obj)] + [cell(obj) for cell in cells]
    extra, builtin_cells = _BUILTIN.get(kind, ([AGE], lambda o: [_age(o)]))
    return [NAME, *extra], lambda obj: [_name(obj), *builtin_cells(obj)]


def partial_metadata(obj: Obj, api_version: str = "meta.k8s.io/v1") -> Obj:
    return {"kind": "PartialObjectMetadata", "apiVersion": api_version, "metadata": meta(obj)}


def table(objs: Iterable[Obj], kind: str, printer_columns: list[Obj] | None,
          resource_version: str, include_object: str = "Metadata",
          api_version: str = "meta.k8s.io/v1") -> Obj:
    defs, cells = columns(kind, printer_columns)
    rows = []
    for obj in objs:
        row: Obj = {"cells": cells(obj)}
        if include_object == "Object":
            row["object"] = obj
        elif include_object != "None":
            row["object"] = partial_metadata(obj, api_version)
        rows.append(row)
    return {"kind": "Table", "apiVersion": api_version,
            "metadata": {"resourceVersion": resource_version},
            "columnDefinitions": defs, "rows": rows}


def wanted_table_version(accept: str) -> str | None:
    """`meta.k8s.io/v1` (or v1beta1) if the client asks for a Table, else None; the media
    ranges are tried in the client's order, as the real server negotiates."""
    for media in accept.split(","):
        mime, *params = (p.strip() for p in media.split(";"))
        options = dict(p.split("=", 1) for p in params if "=" in p)
        if mime in ("application/json", "*/*", "application/*") and "as" not in options:
            return None  # plain JSON is preferred over a Table
        if options.get("as") == "Table" and options.get("g") == "meta.k8s.io":
            return f"meta.k8s.io/{options.get('v', 'v1')}"
    return None
