"""`mclab`: the command line of the local lab (kind-like, no Docker).

    mclab up [--nodes N] [--mode encap|noencap] [--attach chained|multus]
             [--query-interval 10s] [--agent-config FILE]   # progress per step on stderr
    mclab pod create NAME --node NODE [-n NAMESPACE] [--labels k=v,...]
    mclab pod delete NAME [-n NAMESPACE]
    mclab pod label NAME [-n NAMESPACE] k=v|k- ...
    mclab kubeconfig                      # path of a kubeconfig for the lab's API (kubectl)
    mclab controller stop|start|restart
    mclab external create NAME | mclab external delete NAME
    mclab exec NAME [-n NAMESPACE] -- CMD [ARGS...]
    mclab agent restart NODE
    mclab status
    mclab down

This surface is a contract (tests and users script against it): extend, do not reshape.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from pyroute2 import netns as pr_netns

from agent.api.client import AgentClient
from agent.api.types import ApiError
from agent.config import ConfigError, parse_duration
from tools.mclab import control
from tools.mclab import lab as L
from tools.mclab import state as st
from tools.mclab.ovsnode import OvsError, is_alive


def _labels(raw: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in filter(None, raw.split(",")):
        k, sep, v = part.partition("=")
        if not sep or not k:
            raise argparse.ArgumentTypeError(f"label {part!r} is not key=value")
        out[k] = v
    return out


def _label_changes(raw: list[str]) -> tuple[dict[str, str], list[str]]:
    sets: dict[str, str] = {}
    drops: list[str] = []
    for item in raw:
        if item.endswith("-") and "=" not in item:
            drops.append(item[:-1])
        else:
            sets.update(_labels(item))
    return sets, drops


def _mode(raw: str) -> str:
    modes = {"encap": "encap", "noencap": "noEncap"}
    if raw.lower() not in modes:
        raise argparse.ArgumentTypeError(f"mode {raw!r} is not encap or noencap")
    return modes[raw.lower()]


def _interval(raw: str) -> str:
    try:
        parse_duration(raw, "--query-interval")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return raw


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mclab", description="Local multicast lab on this machine")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)

    up = sub.add_parser("up", help="build the underlay, the nodes and their agents")
    up.add_argument("--nodes", type=int, default=1)
    up.add_argument("--mode", type=_mode, default="encap")
    up.add_argument("--attach", choices=("chained", "multus"), default="chained",
                    help="how pods get their multicast interface: our plugin chained after the "
                         "primary CNI (mc0), or as a Multus secondary network (net1)")
    up.add_argument("--query-interval", type=_interval, default="125s")
    up.add_argument("--no-control-plane", action="store_true",
                    help="no API server and controller (the lab tells agents the node set)")
    up.add_argument("--agent-config", metavar="FILE",
                    help="YAML merged into every node's agent config (e.g. multicast.limits)")

    pod = sub.add_parser("pod", help="create or delete a pod")
    pod_sub = pod.add_subparsers(dest="pod_cmd", required=True)
    pc = pod_sub.add_parser("create")
    pc.add_argument("name")
    pc.add_argument("--node", required=True)
    pc.add_argument("-n", "--namespace", default="default")
    pc.add_argument("--labels", type=_labels, default={})
    pd = pod_sub.add_parser("delete")
    pd.add_argument("name")
    pd.add_argument("-n", "--namespace", default="default")
    pl = pod_sub.add_parser("label", help="set (k=v) or remove (k-) labels, as kubectl label")
    pl.add_argument("name")
    pl.add_argument("labels", nargs="+")
    pl.add_argument("-n", "--namespace", default="default")

    sub.add_parser("kubeconfig", help="print the path of a kubeconfig for the lab's API")
    ctl = sub.add_parser("controller", help="stop, start or restart the lab's controller")
    ctl.add_argument("action", choices=("stop", "start", "restart"))

    ext = sub.add_parser("external", help="hosts on the underlay, outside the cluster")
    ext_sub = ext.add_subparsers(dest="ext_cmd", required=True)
    ext_sub.add_parser("create").add_argument("name")
    ext_sub.add_parser("delete").add_argument("name")

    ex = sub.add_parser("exec", help="run a command in a pod's (or external host's) netns")
    ex.add_argument("name")
    ex.add_argument("-n", "--namespace", default=None)
    # Filled by main() (_split_exec): REMAINDER would swallow the -n that follows NAME.
    ex.add_argument("command", nargs="*", help=argparse.SUPPRESS)

    ag = sub.add_parser("agent", help="restart a node's agent (flows stay; no traffic gap)")
    ag_sub = ag.add_subparsers(dest="agent_cmd", required=True)
    ag_sub.add_parser("restart").add_argument("node")

    sub.add_parser("status", help="nodes, pods, agents and their health")
    sub.add_parser("down", help="remove every namespace, process and file of the lab")
    return p


def _progress() -> L.Progress:
    """``mclab up: [  4.2s] node1: namespace and OVS`` per step, on stderr (stdout keeps the
    one result line scripts read), the seconds since the command started."""
    t0 = time.monotonic()

    def tell(step: str) -> None:
        print(f"mclab up: [{time.monotonic() - t0:5.1f}s] {step}", file=sys.stderr, flush=True)

    return tell


def _status() -> int:
    lab = st.load()
    if lab is None:
        print("no lab is up")
        return 0
    print(f"mode: {lab.mode}   attach: {lab.attach}   query interval: {lab.query_interval}")
    for line in control.status_lines(lab):
        print(line)
    print(f"{'NODE':<8} {'IP':<16} {'AGENT':<8} {'HEALTH'}")
    for n in lab.nodes:
        alive = bool(n.agent_pid) and is_alive(n.agent_pid)
        try:
            h = AgentClient(n.api_socket, timeout=3).health()
            health = f"ok ({h.get('pods', 0)} pods, {h.get('groups', 0)} groups)"
        except ApiError as err:
            health = f"unreachable: {err}"
        print(f"{n.name:<8} {n.ip:<16} {n.agent_pid if alive else 'dead':<8} {health}")
    if lab.pods:
        print(f"\n{'NAMESPACE':<12} {'POD':<16} {'NODE':<8} {'MULTICAST-IP':<16} "
              f"{'INTERFACE':<10} {'PRIMARY-IP'}")
        for p in lab.pods:
            print(f"{p.namespace:<12} {p.name:<16} {p.node:<8} {p.ip:<16} {p.iface:<10} "
                  f"{p.primary_ip}")
    if lab.externals:
        print(f"\n{'EXTERNAL':<16} {'IP'}")
        for e in lab.externals:
            print(f"{e.name:<16} {e.ip}")
    return 0


def _exec(name: str, namespace: str | None, command: list[str]) -> int:
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise L.LabError("exec: no command given (mclab exec NAME -- CMD [ARGS...])")
    target = L.netns_of(name, namespace)
    pr_netns.setns(target, flags=0)
    sys.stdout.flush()
    try:
        os.execvp(command[0], command)  # replaces us: the exit code is the command's
    except FileNotFoundError:
        print(f"mclab exec: {command[0]}: command not found", file=sys.stderr)
        return 127
    return 0  # not reached


def _split_exec(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """For ``exec NAME [-n NS] [--] CMD...``: (argv up to NAME and its options, CMD), so that
    argparse never reads CMD's own options; (argv, None) for the other commands."""
    i = next((k for k, a in enumerate(argv) if not a.startswith("-")), len(argv))
    if i >= len(argv) or argv[i] != "exec":
        return argv, None
    k = i + 2  # past "exec NAME"
    while k < len(argv):
        if argv[k] in ("-n", "--namespace"):
            k += 2
        elif argv[k].startswith(("--namespace=", "-n")):
            k += 1
        else:
            break
    if k < len(argv) and argv[k] == "--":
        return argv[:k], argv[k + 1:]
    return argv[:k], argv[k:]


def main(argv: list[str] | None = None) -> int:
    head, command = _split_exec(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(head)
    if command is not None:
        args.command = command
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.cmd == "up":
            extra = L.load_agent_config(args.agent_config) if args.agent_config else None
            progress = _progress()
            lab = L.up(args.nodes, args.mode, args.query_interval, extra, args.attach,
                       control_plane=not args.no_control_plane, progress=progress)
            progress("ready")
            print(f"lab up: {len(lab.nodes)} node(s), mode {lab.mode}, attach {lab.attach}")
        elif args.cmd == "down":
            L.down()
        elif args.cmd == "agent":
            L.restart_agent(args.node)
        elif args.cmd == "status":
            return _status()
        elif args.cmd == "pod" and args.pod_cmd == "create":
            print(L.pod_create(args.name, args.node, args.namespace, args.labels).ip)
        elif args.cmd == "pod" and args.pod_cmd == "label":
            sets, drops = _label_changes(args.labels)
            L.pod_label(args.name, args.namespace, sets, drops)
        elif args.cmd == "pod":
            L.pod_delete(args.name, args.namespace)
        elif args.cmd == "kubeconfig":
            print(L.kubeconfig())
        elif args.cmd == "controller":
            L.controller(args.action)
        elif args.cmd == "external" and args.ext_cmd == "create":
            print(L.external_create(args.name).ip)
        elif args.cmd == "external":
            L.external_delete(args.name)
        elif args.cmd == "exec":
            return _exec(args.name, args.namespace, args.command)
    except (L.LabError, OvsError, KeyError, ApiError, control.ControlPlaneError) as e:
        print(f"mclab: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
