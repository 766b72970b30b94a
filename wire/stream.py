"""The agent ↔ controller stream: where it is, how it authenticates, and its messages.

One long-lived WebSocket per agent, opened by the agent::

    GET {address}/v1/stream?node=NODE        (wss; ws only in labs and tests)
    Authorization: Bearer TOKEN

The controller checks the token with a ``TokenReview``; the user must be ``system:node:NODE``,
or the agents' service account with the review's node-name extra ``[NODE]`` (a token bound to
the agent's pod; ``controller.stream``), for the very node named in the query (bad or unknown
token: 401; another node's stream, or not that node at all: 403; no ``node``: 400; the API
server unreachable: 503). Then, in JSON text frames:

- controller → agent ``{"type": "nodes", "version": N, "nodes": [{"name", "ips"}]}``: the full
  node set (``wire.nodes``), first as soon as the controller knows one, then after each change.
  ``N`` grows within one connection; a new connection starts over (the controller may have
  restarted, or be another replica), so an agent compares versions only within a connection.
- controller → agent ``{"type": "policy", "version": N, "full": bool, "rules": ...,
  "appliedToGroups": ..., "addressGroups": ...}``: the multicast policy that applies to the
  agent's pods (``wire.policy``), in full first (once the controller has synced its policy
  watches), then as patches; ``N`` counts policy messages within one connection.
- agent → controller ``{"type": "members", "groups": [...]}``: the agent's full local
  membership (``wire.members``), on connect and after each change.
- agent → controller ``{"type": "ruleStats", "rules": [{"key", "packets", "bytes"}]}``: the
  counters of every policy rule the agent enforces (``wire.policy``), when they move.

A message that is not one of these is answered by closing the stream with a reason naming the
problem: ``CLOSE_MALFORMED`` (1007) for bad JSON or shape, ``CLOSE_BINARY`` (1003) for a binary
frame. The controller closes with ``CLOSE_RESTART`` (1012) when it stops and with
``CLOSE_REPLACED`` (1008) when a newer stream of the same node takes over. Both sides run
WebSocket pings (``HEARTBEAT_S``), so a dead peer is noticed without any traffic.

Owns the path, the default port, the close codes and the two message envelopes (building and
checked parsing); the payloads are ``wire.nodes``' and ``wire.members``'. Imports nothing of
ours but ``wire``. ``message_type`` tells which envelope a text frame carries.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from wire.members import GroupReport, groups_from_json, groups_to_json
from wire.nodes import NodeInfo, WireError, nodes_from_json, nodes_to_json
from wire.policy import (
    PolicyUpdate,
    RuleStats,
    stats_from_json,
    stats_to_json,
    update_from_json,
    update_to_json,
)

STREAM_PATH = "/v1/stream"
NODE_PARAM = "node"
DEFAULT_PORT = 10349
NODE_USER_PREFIX = "system:node:"  # TokenReview usernames the stream accepts

HEARTBEAT_S = 10.0  # WebSocket ping interval on both sides; a missing pong ends the stream
MAX_MESSAGE_BYTES = 64 << 20  # a full membership of a busy node, a full node set of a big cluster

NODES = "nodes"
MEMBERS = "members"
POLICY = "policy"
RULE_STATS = "ruleStats"

CLOSE_BINARY = 1003  # RFC 6455 "unsupported data"
CLOSE_MALFORMED = 1007  # RFC 6455 "invalid frame payload data"
CLOSE_REPLACED = 1008  # RFC 6455 "policy violation": a newer stream of the same node
CLOSE_INTERNAL = 1011  # RFC 6455 "internal error": the closing side failed, not the peer
CLOSE_RESTART = 1012  # "service restart": the controller is stopping; reconnect
CLOSE_REASON_BYTES = 120  # a close frame carries at most 123 bytes of reason


def node_of_user(username: str) -> str | None:
    """``system:node:NAME`` → NAME; any other user is no node (None)."""
    if not username.startswith(NODE_USER_PREFIX):
        return None
    return username[len(NODE_USER_PREFIX):] or None


def close_reason(text: str) -> bytes:
    """``text`` cut to what a close frame holds (UTF-8, whole characters)."""
    raw = text.encode()
    if len(raw) <= CLOSE_REASON_BYTES:
        return raw
    return raw[:CLOSE_REASON_BYTES - 3].decode(errors="ignore").encode() + b"..."


def _load(text: str | bytes) -> dict[str, Any]:
    try:
        body = json.loads(text)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise WireError(f"not JSON: {e}") from None
    if not isinstance(body, dict):
        raise WireError(f"expected an object, got {type(body).__name__}")
    return body


def message_type(text: str | bytes) -> str:
    """The ``type`` of a message (not otherwise checked); ``WireError`` if it has none."""
    kind = _load(text).get("type")
    if not isinstance(kind, str):
        raise WireError(f"type: expected a string, got {kind!r}")
    return kind


def _version(body: dict[str, Any]) -> int:
    version = body.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise WireError(f"version: expected a positive integer, got {version!r}")
    return version


def _message(text: str | bytes, kind: str) -> dict[str, Any]:
    body = _load(text)
    if body.get("type") != kind:
        raise WireError(f"type: expected {kind!r}, got {body.get('type')!r}")
    return body


# -- controller → agent ---------------------------------------------------------------------


def nodes_message(version: int, nodes: Iterable[NodeInfo]) -> str:
    return json.dumps({"type": NODES, "version": version, **nodes_to_json(nodes)})


def parse_nodes_message(text: str | bytes) -> tuple[int, list[NodeInfo]]:
    """``(version, node set)``; ``WireError`` names what is wrong."""
    body = _message(text, NODES)
    return _version(body), nodes_from_json(body)


def policy_message(version: int, update: PolicyUpdate) -> str:
    return json.dumps({"type": POLICY, "version": version, **update_to_json(update)})


def parse_policy_message(text: str | bytes) -> tuple[int, PolicyUpdate]:
    """``(version, policy update)``; ``WireError`` names what is wrong."""
    body = _message(text, POLICY)
    return _version(body), update_from_json(body)


# -- agent → controller ---------------------------------------------------------------------


def members_message(groups: Iterable[GroupReport]) -> str:
    return json.dumps({"type": MEMBERS, **groups_to_json(groups)})


def parse_members_message(text: str | bytes) -> list[GroupReport]:
    """The agent's full local membership; ``WireError`` names what is wrong."""
    return groups_from_json(_message(text, MEMBERS))


def rule_stats_message(stats: Iterable[RuleStats]) -> str:
    return json.dumps({"type": RULE_STATS, **stats_to_json(stats)})


def parse_rule_stats_message(text: str | bytes) -> list[RuleStats]:
    """The agent's rule counters; ``WireError`` names what is wrong."""
    return stats_from_json(_message(text, RULE_STATS))
