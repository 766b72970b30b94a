"""`mcctl trace`: why a pod did (or did not) get a multicast group, asked of its node's agent.

    mcctl [--socket PATH | --node NODE] trace --pod NS/NAME --group G [--source S] [--port P]
          [--size BYTES] [--from-pod NS/NAME | --from-node NODE_IP | --from-uplink]
          [-o text|json|yaml]

The agent dumps its switch, walks a UDP datagram to G through it on the fake table and explains
the walk (``agent.multicast.trace``, ``POST /v1/trace``); this module asks and prints. Where
the datagram comes from: ``--from-pod`` a local pod (its own address unless ``--source``; its
egress policy and spoof guard apply), ``--from-node`` another node through the tunnel (noEncap:
the underlay), ``--from-uplink`` a host outside the cluster (192.0.2.1 unless ``--source``);
none of them: from outside the node, through the uplink if it has one, else the tunnel.

The text form (a contract, like the ``get`` columns; ``-o json|yaml`` prints the agent's
answer as data), here for a pod that has not joined (flows shortened)::

    Packet:        239.1.1.1:5000 from 192.0.2.1 (106-byte frame), in from the uplink (port 2)
    Pod:           default/rx (port 5) on node1
    Verdict:       NOT DELIVERED
    Reason:        not a member of 239.1.1.1
    Policy rule:   <none>
    Tables:
      Classifier              priority=200,ip,in_port=2,nw_dst=224.0.0.0/4 actions=... [pipeline]
      MulticastRouting        priority=200,ip,nw_dst=239.1.1.1 actions=group:1 [group (*, ...)]
      group 1: 2 buckets
        bucket 0 to pod default/a (port 4): delivered to pod default/a (port 4)
        bucket 1 to external receivers (the uplink): dropped here: a node never relays ...
    Membership of 239.1.1.1:
      Local pods:    default/a
      Remote nodes:  <none>
      default/rx:    not a member

Verdicts: DELIVERED, NOT DELIVERED, UNKNOWN (a group too large to read back). The reason names
what decided: the membership ("not a member of G", "not a member of (S, G): its IGMPv3 source
filter (include ...) does not admit S"), a policy rule ("dropped by policy rule ns/policy/rule
(Drop)", also on the "Policy rule:" line with its direction), the spoof guard, the pod's own
datagram, a size limit ("dropped as oversize: ..."). Table lines end with the flow's owner,
read from its cookie: ``[feature object]``.

The traced pod's own bucket is followed table by table (indented under it); the other buckets
show what became of their copy. A trace that worked exits 0 whatever its verdict; an unknown
pod, a group that is not multicast or an unreachable agent is a one-line error and exit 1.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import yaml

from agent.api.client import AgentClient
from agent.api.types import TraceQuery

TABLE_WIDTH = 24  # the longest table name (MulticastIngressMetric) and two spaces
LABEL_WIDTH = 15


def add_parser(sub: Any) -> None:
    """The ``trace`` subcommand, on ``mcctl``'s subparsers."""
    p = sub.add_parser("trace", help="why a pod did or did not get a multicast group",
                       description="Walk a UDP datagram to a group through this node's switch "
                                   "and say what became of it for one pod.")
    p.add_argument("--pod", required=True, metavar="NS/NAME",
                   help="the receiving pod (NAME alone: in namespace default)")
    p.add_argument("--group", required=True, metavar="G", help="the multicast group")
    p.add_argument("--source", metavar="S",
                   help="the datagram's source address (default: the sender's own)")
    p.add_argument("--port", type=int, metavar="P", help="UDP destination port (default 5000)")
    p.add_argument("--size", type=int, metavar="BYTES", help="UDP payload (default 64)")
    origin = p.add_mutually_exclusive_group()
    origin.add_argument("--from-pod", metavar="NS/NAME", help="sent by a pod of this node")
    origin.add_argument("--from-node", metavar="NODE_IP", help="sent by a pod of another node")
    origin.add_argument("--from-uplink", action="store_true",
                        help="sent by a host outside the cluster")
    p.add_argument("-o", "--output", choices=("text", "json", "yaml"), default="text")


def _ref(pod: str) -> str:
    return pod if "/" in pod else f"default/{pod}"


def query(args: argparse.Namespace) -> TraceQuery:
    return TraceQuery(_ref(args.pod), args.group, args.source, args.port, args.size,
                      _ref(args.from_pod) if args.from_pod else None, args.from_node,
                      args.from_uplink)


def run(client: AgentClient, args: argparse.Namespace) -> str:
    result = client.trace(query(args))
    if args.output == "json":
        return json.dumps(result, indent=2)
    if args.output == "yaml":
        return yaml.safe_dump(result, sort_keys=False).rstrip()
    return render(result)


def _line(label: str, value: object, indent: int = 0) -> str:
    return f"{' ' * indent}{(label + ':').ljust(LABEL_WIDTH - 1)} {value}"


def _table(step: dict[str, Any], indent: int) -> str:
    head = " " * indent + step["table"].ljust(TABLE_WIDTH)
    if step["priority"] is None:
        return head + "no flow matched: dropped"
    match = ",".join(x for x in (f"priority={step['priority']}", step["match"]) if x)
    owner = step["owner"]
    who = " ".join(x for x in (owner["feature"], owner["object"]) if x)
    return f"{head}{match} actions={step['actions']} [{who}]"


def _steps(steps: list[dict[str, Any]]) -> list[str]:
    """Tables at the packet's level and in the traced pod's bucket; one line per bucket."""
    lines = []
    shown: int | None = None  # the level of the bucket whose tables are shown
    for step in steps:
        level = step["level"]
        if shown is not None and level <= shown:
            shown = None
        indent = 2 + 4 * level  # a bucket's tables sit under it, its bucket under its group
        if step["kind"] == "group":
            lines.append(f"{' ' * indent}group {step['groupId']}: {step['buckets']} buckets")
        elif step["kind"] == "bucket":
            lines.append(f"{' ' * (indent + 2)}bucket {step['index']} to {step['to']}: "
                         f"{step['result']}")
            if step["target"]:
                shown = level
        elif level == 0 or shown is not None:
            lines.append(_table(step, indent))
    return lines


def _membership(m: dict[str, Any], pod: str) -> list[str]:
    lines = [f"Membership of {m['group']}:",
             _line("Local pods", ",".join(m["localPods"]) or "<none>", 2),
             _line("Remote nodes", ",".join(m["remoteNodes"]) or "<none>", 2)]
    if m.get("outsideHosts"):
        lines.append(_line("Outside hosts", ",".join(m["outsideHosts"]), 2))
    for ref, f in sorted(m["sourceFilters"].items()):
        if ref != pod:
            lines.append(_line(ref, f"{f['mode']} {','.join(f['sources']) or 'no source'}", 2))
    lines.append(_line(pod, m["pod"], 2))
    return lines


def render(result: dict[str, Any]) -> str:
    """The agent's answer as the text documented above."""
    pkt, pod = result["packet"], result["pod"]
    rule = result["policyRule"]
    lines = [
        _line("Packet", f"{pkt['group']}:{pkt['udpPort']} from {pkt['source']} "
                        f"({pkt['frameBytes']}-byte frame), in from {pkt['origin']}"),
        _line("Pod", f"{pod['ref']} (port {pod['port']}) on {result['node']}"),
        _line("Verdict", result["verdict"]),
        _line("Reason", result["reason"]),
        _line("Policy rule", "<none>" if rule is None else
              f"{rule['rule']} ({rule['direction']}, {rule['action']})"),
        "Tables:",
        *_steps(result["steps"]),
        *_membership(result["membership"], pod["ref"]),
    ]
    lines += [_line("Note", n) for n in result.get("notes", [])]
    return "\n".join(lines)
