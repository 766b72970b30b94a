"""`mcctl get ...`: what one node's agent knows, over its local API; `mcctl check-config`.

    mcctl [--socket PATH | --node NODE] get podmulticaststats [POD] [-n NS | -A]
    mcctl get policystats [POLICY] [-n NS | -A]
    mcctl get pods [POD] [-n NS | -A]
    mcctl get members [GROUP]
    mcctl get groups | flows
    mcctl [--kubeconfig PATH] get multicastgroups   # the cluster view, from the API
    mcctl check-config FILE [--kind agent|controller]   # offline (tools.mcctl.checkconfig)
    mcctl trace --pod NS/NAME --group G [...]   # why a pod gets a group or not (tools.mcctl.trace)

Every ``get`` takes ``-o table|wide|json|yaml`` (table is the default; wide adds columns where
the resource has more). Without ``-n``, namespaced resources list every namespace (``-A`` says
so explicitly); a POD needs its namespace (``-n``).

Columns are contracts (DESIGN.md §5): podmulticaststats prints NAMESPACE NAME INBOUND OUTBOUND;
pods prints NAMESPACE NAME IP PRIMARY-IP OFPORT INTERFACE; policystats prints NAMESPACE POLICY RULE
ACTION PACKETS BYTES (NAMESPACE ``-`` for cluster-scoped policies), one row per rule the node
enforces; members prints GROUP SUBSCRIBER TYPE SOURCES, one row per local pod (``Local
Endpoint``) or remote node (``Remote Node``) of each group (``tools.mcctl.format``).

Failures are one line on stderr, ``mcctl: ...``: exit 1 for an unreachable agent (naming its
socket), an unknown pod, policy or group, an invalid config; exit 2 for a usage mistake.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from typing import Any

from agent.api.client import AgentClient
from agent.api.types import ApiError
from tools.mcctl import checkconfig, trace
from tools.mcctl.format import (
    MEMBER_HEADERS,
    MEMBER_WIDE_HEADERS,
    OUTPUTS,
    join_limited,
    member_rows,
    one_line,
    structured,
    table,
)

DEFAULT_SOCKET = "/var/run/kube-mcast/agent.sock"


class UsageError(Exception):
    pass


def _client(args: argparse.Namespace) -> AgentClient:
    """The agent's client; an error naming the socket when there is no socket file at all."""
    path = _socket(args)
    if not os.path.exists(path):
        raise ApiError(503, f"agent not reachable: no socket at {path} (is the agent running "
                            "on this node? an agent with multicast disabled serves no API)")
    return AgentClient(path, timeout=10)


def _namespace(args: argparse.Namespace, name_needs_namespace: bool = True) -> str | None:
    """The namespace to list (None: all); a pod's NAME needs one, and -A takes no NAME."""
    if args.all_namespaces and args.name:
        raise UsageError("a resource cannot be retrieved by name across all namespaces")
    if name_needs_namespace and args.name and not args.namespace:
        raise UsageError("a pod name needs its namespace: -n NAMESPACE")
    return None if args.all_namespaces else args.namespace


def _socket(args: argparse.Namespace) -> str:
    if args.node:
        from tools.mclab import state as lab_state  # the lab knows where each node's socket is

        lab = lab_state.load()
        if lab is None:
            raise UsageError("--node needs a running mclab lab")
        try:
            return lab.node(args.node).api_socket
        except KeyError as e:
            raise UsageError(str(e.args[0])) from None
    return args.socket or os.environ.get("MCCTL_SOCKET", DEFAULT_SOCKET)


def _podstats(client: AgentClient, args: argparse.Namespace) -> str:
    namespace = _namespace(args)
    rows = client.pod_stats()
    if namespace:
        rows = [r for r in rows if r["namespace"] == namespace]
    if args.name:
        rows = [r for r in rows if r["name"] == args.name]
        if not rows:
            raise ApiError(404, f"pod {args.namespace}/{args.name} not found")
    if args.output in ("json", "yaml"):
        return structured(rows, args.output)
    headers = ["NAMESPACE", "NAME", "INBOUND", "OUTBOUND"]
    if args.output == "wide":
        pods = {(p.namespace, p.name): p for p in client.list_pods()}
        headers += ["SPOOFED", "NOT-MULTICAST", "IGMP-RATE-DROPS", "OVERSIZED", "IP", "OFPORT",
                    "INTERFACE"]
        return table(headers, [
            [r["namespace"], r["name"], r["inbound"], r["outbound"], *_drops(r),
             *_pod_extra(pods.get((r["namespace"], r["name"])))] for r in rows])
    return table(headers, [[r["namespace"], r["name"], r["inbound"], r["outbound"]]
                           for r in rows])


def _drops(row: dict[str, Any]) -> list[object]:
    """Packets br-int dropped from the pod, by reason (an older agent reports none).

    OVERSIZED: multicast larger than the pod may send (it would not fit the tunnel)."""
    d = row.get("dropped", {})
    return [d.get("spoofed", ""), d.get("notMulticast", ""), d.get("igmpRate", ""),
            d.get("oversized", "")]


def _pod_extra(pod: object | None) -> list[object]:
    if pod is None:
        return ["", "", ""]
    return [pod.ip or "<none>", pod.ofport, pod.host_ifname]  # type: ignore[attr-defined]


def _policystats(client: AgentClient, args: argparse.Namespace) -> str:
    """The node's view of its policy rules: packets and bytes each rule decided here."""
    namespace = _namespace(args, name_needs_namespace=False)  # cluster policies have none
    rows = client.policy_stats()
    if namespace:
        rows = [r for r in rows if r["namespace"] == namespace]
    if args.name:
        rows = [r for r in rows if r["policy"] == args.name]
        if not rows:
            where = f" in namespace {namespace}" if namespace else ""
            raise ApiError(404, f"policy {args.name}{where} has no rules on this node")
    rows.sort(key=lambda r: (r["namespace"] or "-", r["policy"], r["direction"], r["index"]))
    if args.output in ("json", "yaml"):
        return structured(rows, args.output)
    wide = args.output == "wide"  # + DIRECTION (ingress/egress) and KIND (igmp/data)
    return table(["NAMESPACE", "POLICY", "RULE", "ACTION", "PACKETS", "BYTES",
                  *(["DIRECTION", "KIND"] if wide else [])],
                 [[r["namespace"] or "-", r["policy"], r["rule"], r["action"], r["packets"],
                   r["bytes"], *([r["direction"], r.get("kind", "")] if wide else [])]
                  for r in rows])


def _members(client: AgentClient, args: argparse.Namespace) -> str:
    """``GROUP SUBSCRIBER TYPE SOURCES``, one row per local pod or remote node of a group (as
    ``cilium bpf multicast subscriber list``); wide adds the pod's IP, OFPORT, INTERFACE.
    With GROUP, that group only, and an error if it has no member here. ``-o json|yaml``: the
    agent's rows as they are (``group``, ``localPods``, ``remoteNodes``, ``sourceFilters``)."""
    rows = client.members()
    if args.name:
        group = _group_arg(args.name)
        rows = [r for r in rows if r["group"] == group]
        if not rows:
            raise ApiError(404, f"group {group} has no members on this node")
    if args.output in ("json", "yaml"):
        return structured(rows, args.output)
    if args.output != "wide":
        return table(MEMBER_HEADERS, member_rows(rows))
    pods = {p.ref: [p.ip or "<none>", p.ofport, p.host_ifname] for p in client.list_pods()}
    return table(MEMBER_WIDE_HEADERS, member_rows(rows, pods))


def _group_arg(raw: str) -> str:
    try:
        group = ipaddress.IPv4Address(raw)
    except ValueError:
        raise UsageError(f"group {raw!r} is not an IPv4 address") from None
    if not group.is_multicast:
        raise UsageError(f"group {raw}: not a multicast address (224.0.0.0/4)")
    return str(group)


def _groups(client: AgentClient, args: argparse.Namespace) -> str:
    rows = [r for r in client.members() if r["localPods"]]
    if args.output in ("json", "yaml"):
        return structured([{"group": r["group"], "pods": r["localPods"]} for r in rows],
                          args.output)
    return table(["GROUP", "PODS"], [[r["group"], join_limited(r["localPods"])] for r in rows])


def _pods(client: AgentClient, args: argparse.Namespace) -> str:
    """The pods attached on this node; wide adds the pod-side interface, its MAC and the
    container (first 12 characters of its id, as ``crictl ps``)."""
    namespace = _namespace(args)
    pods = client.list_pods()
    if namespace:
        pods = [p for p in pods if p.namespace == namespace]
    if args.name:
        pods = [p for p in pods if p.name == args.name]
        if not pods:
            raise ApiError(404, f"pod {namespace}/{args.name} not found")
    if args.output in ("json", "yaml"):
        return structured([p.__dict__ for p in pods], args.output)
    wide = args.output == "wide"
    # IP: the multicast interface's address (the source its datagrams carry); PRIMARY-IP: the
    # pod's address on its primary network (equal in chained and Multus mode, or "<none>")
    return table(["NAMESPACE", "NAME", "IP", "PRIMARY-IP", "OFPORT", "INTERFACE",
                  *(["POD-INTERFACE", "MAC", "CONTAINER"] if wide else [])],
                 [[p.namespace, p.name, p.ip or "<none>", p.primary_ip or "<none>", p.ofport,
                   p.host_ifname,
                   *([p.ifname or "<unknown>", p.mac, p.container_id[:12]] if wide else [])]
                  for p in pods])


def _flows(client: AgentClient, args: argparse.Namespace) -> str:
    """The switch's groups and flows as ovs-ofctl text (json/yaml: a list of those lines)."""
    flows = client.flows()
    if args.output in ("json", "yaml"):
        return structured(flows, args.output)
    return "\n".join(flows)


MCG = ("multicast.kube-mcast.io", "v1alpha1", "multicastgroups")


def _kubeconfig(args: argparse.Namespace) -> str | None:
    """--kubeconfig, else $KUBECONFIG, else a running lab's, else the client's default."""
    if args.kubeconfig or os.environ.get("KUBECONFIG"):
        return str(args.kubeconfig or os.environ["KUBECONFIG"])
    from tools.mclab import control
    from tools.mclab import state as lab_state

    lab = lab_state.load()
    return str(control.kubeconfig_path()) if lab is not None and lab.control_plane else None


def _multicastgroups(args: argparse.Namespace) -> str:
    """``GROUP  PODS``: every MulticastGroup object the controller keeps (wide: + NODES)."""
    from kubernetes import client as k8s
    from kubernetes import config as k8s_config
    from kubernetes.client.rest import ApiException
    from urllib3.exceptions import HTTPError, MaxRetryError

    try:
        api = k8s.CustomObjectsApi(k8s_config.new_client_from_config(_kubeconfig(args)))
        listed: dict[str, Any] = api.list_cluster_custom_object(  # type: ignore[assignment]
            *MCG, _request_timeout=10)
        items = listed["items"]
    except ApiException as e:  # its str() is many lines: headers and body
        raise ApiError(503, f"cannot list multicastgroups: {e.status} {e.reason}") from None
    except MaxRetryError as e:
        host = api.api_client.configuration.host
        raise ApiError(503, f"cannot list multicastgroups: API server {host} not reachable: "
                            f"{e.reason}") from None
    except (k8s_config.ConfigException, OSError, HTTPError) as e:
        raise ApiError(503, f"cannot list multicastgroups: {e}") from None
    rows = sorted((i.get("status") or {} for i in items), key=lambda st: st.get("group", ""))
    if args.output in ("json", "yaml"):
        return structured(rows, args.output)
    if args.output != "wide":
        return table(["GROUP", "PODS"], [[r.get("group", ""), r.get("podsSummary", "")]
                                         for r in rows])
    return table(["GROUP", "PODS", "NODES"], [
        [r.get("group", ""), r.get("podsSummary", ""),
         join_limited(sorted({p.get("node", "") for p in r.get("pods", [])}))] for r in rows])


RESOURCES = {
    "podmulticaststats": _podstats,
    "policystats": _policystats,
    "members": _members,
    "groups": _groups,
    "pods": _pods,
    "flows": _flows,
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mcctl", description="Inspect a kube-mcast agent")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--socket", help=f"agent API socket (default {DEFAULT_SOCKET})")
    where.add_argument("--node", help="a node of the local mclab lab")
    p.add_argument("--kubeconfig", help="for multicastgroups (default $KUBECONFIG, the lab's)")
    sub = p.add_subparsers(dest="verb", required=True)
    get = sub.add_parser("get")
    get.add_argument("resource", choices=sorted([*RESOURCES, "multicastgroups"]))
    get.add_argument("name", nargs="?", help="a pod (with -n), a policy or a group")
    get.add_argument("-n", "--namespace", help="only this namespace (default: all)")
    get.add_argument("-A", "--all-namespaces", action="store_true",
                     help="every namespace (the default without -n)")
    get.add_argument("-o", "--output", choices=OUTPUTS, default="table")
    check = sub.add_parser("check-config", help="validate an agent or controller config file "
                                                "(or its ConfigMap) offline")
    check.add_argument("file")
    check.add_argument("--kind", choices=checkconfig.KINDS,
                       help="default: told by the file's keys")
    trace.add_parser(sub)
    return p


def _check_config(args: argparse.Namespace) -> int:
    try:
        print(checkconfig.check(args.file, args.kind))
    except checkconfig.CheckError as e:
        print(f"mcctl: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verb == "check-config":
        return _check_config(args)
    try:
        if args.verb == "trace":
            print(trace.run(_client(args), args))
            return 0
        if args.resource == "multicastgroups":
            print(_multicastgroups(args))
            return 0
        print(RESOURCES[args.resource](_client(args), args))
    except UsageError as e:
        print(f"mcctl: {e}", file=sys.stderr)
        return 2
    except ApiError as e:  # one line, without the status: the message says what went wrong
        print(f"mcctl: {one_line(e.message)}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `mcctl get flows | head`: quiet, also when Python flushes
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
