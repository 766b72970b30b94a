"""`mcctl check-config FILE [--kind agent|controller]`: validate a config offline.

Owns choosing which parser a file is for and reporting its verdict in one line. The parsers
are the products' own strict ones (``agent.config.parse_config``, ``controller.config.
parse_config``, both on ``wire.configfile.load_yaml``), so a file passes here exactly when the
agent or the controller would start from it: an unknown key or feature gate, a value of the
wrong type, a bad duration, IGMP versions outside {1, 2, 3} each give one line naming the file
and the key's path.

The file may be the config itself (``agent.yaml``, ``controller.yaml``) or a ConfigMap manifest
holding it under ``data`` (``manifests/agent-config.yaml``): every ``*.yaml`` entry is checked,
its kind told by its name (``agent.yaml``, ``controller.yaml``) unless ``--kind`` says.

Without ``--kind``, the top-level keys decide: a key only the controller's schema declares
(``stream``, ``leaderElection``, ...) makes it a controller config, a key only the agent's
declares (``node``, ``multicast``, ...) an agent config, whichever has more; a file with
neither (only ``featureGates``, ``metricsPort``, or empty) is taken as an agent config.

``node.name`` and ``node.ip`` default to the downward API's $NODE_NAME / $NODE_IP in a
DaemonSet, so here they stand in as ``check-config`` / ``192.0.2.1`` when the file has none: a
ConfigMap shared by every node validates; a ``node.ip`` the file does give is checked.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from agent import config as agent_config
from controller import config as controller_config
from tools.mcctl.format import one_line
from wire.configfile import ConfigError, load_yaml

KINDS = ("agent", "controller")
STAND_IN_ENV = {"NODE_NAME": "check-config", "NODE_IP": "192.0.2.1", "POD_NAME": "check-config"}
"""What the downward API gives the agent (and the controller's identity) in a cluster."""

_AGENT_ONLY = set(agent_config.KEYS[""]) - set(controller_config.KEYS[""])
_CONTROLLER_ONLY = set(controller_config.KEYS[""]) - set(agent_config.KEYS[""])
_ENTRY_KIND = {"agent.yaml": "agent", "controller.yaml": "controller"}


class CheckError(Exception):
    """The file is not a valid config; the message is the one line to print."""


def detect_kind(raw: Any) -> str:
    """``agent`` or ``controller`` from a config document's top-level keys (see the module)."""
    if not isinstance(raw, dict):
        return "agent"
    keys = set(raw)
    return "controller" if len(keys & _CONTROLLER_ONLY) > len(keys & _AGENT_ONLY) else "agent"


def _parser(kind: str) -> Callable[[Any], object]:
    if kind == "agent":
        return lambda raw: agent_config.parse_config(raw, env=STAND_IN_ENV)
    return lambda raw: controller_config.parse_config(raw, env=STAND_IN_ENV)


def _is_configmap(raw: Any) -> bool:
    return isinstance(raw, dict) and raw.get("kind") == "ConfigMap" and "data" in raw


def _check_document(raw: Any, kind: str | None) -> str:
    """Validate one config document; its kind (given or detected). Raises ConfigError."""
    kind = kind or detect_kind(raw)
    _parser(kind)(raw)
    return kind


def _check_configmap(cm: dict[str, Any], kind: str | None) -> list[str]:
    """Validate every ``*.yaml`` entry of a ConfigMap; ``["agent config (data.agent.yaml)"]``."""
    data = cm.get("data")
    if not isinstance(data, dict):
        raise ConfigError("data: a ConfigMap's data must be a mapping")
    entries = sorted(k for k in data if str(k).endswith((".yaml", ".yml")))
    if not entries:
        raise ConfigError("data: this ConfigMap holds no *.yaml entry to check")
    verdicts = []
    for entry in entries:
        where = f"data.{entry}"
        text = data[entry]
        if not isinstance(text, str):
            raise ConfigError(f"{where}: expected the config as a string")
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{where}: not valid YAML: {e}") from None
        try:
            got = _check_document({} if raw is None else raw, kind or _ENTRY_KIND.get(entry))
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        verdicts.append(f"{got} config ({where})")
    return verdicts


def check(path: str | Path, kind: str | None = None) -> str:
    """The verdict line for a valid file (``FILE: valid agent config``); ``CheckError`` with
    the one line naming the file and the key otherwise (a missing or unreadable file too)."""
    if kind is not None and kind not in KINDS:
        raise CheckError(f"--kind {kind}: one of {', '.join(KINDS)}")

    try:
        verdicts = _check_file(path, kind)
    except ConfigError as e:
        raise CheckError(one_line(str(e))) from None
    except Exception as e:  # noqa: BLE001 - a parser bug still gets one line, not a traceback
        raise CheckError(one_line(f"{path}: cannot check: {type(e).__name__}: {e}")) from None
    return f"{path}: valid " + ", ".join(verdicts)


def _check_file(path: str | Path, kind: str | None) -> list[str]:
    """One document through ``load_yaml`` (the products' own reading and error format); a
    manifest of several documents (``---``): each ConfigMap in it."""
    try:
        docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d is not None]
    except (OSError, yaml.YAMLError):
        docs = []  # load_yaml says what is wrong, in its words
    if len(docs) <= 1:
        return load_yaml(path, lambda raw: _check_configmap(raw, kind) if _is_configmap(raw)
                         else [f"{_check_document(raw, kind)} config"])
    maps = [d for d in docs if _is_configmap(d)]
    if not maps:
        raise ConfigError(f"{path}: {len(docs)} YAML documents and no ConfigMap among them: "
                          "give the config itself or its ConfigMap")
    verdicts = []
    for cm in maps:
        name = (cm.get("metadata") or {}).get("name", "?")
        try:
            verdicts += [f"{v[:-1]}, ConfigMap {name})" for v in _check_configmap(cm, kind)]
        except ConfigError as e:
            raise ConfigError(f"{path}: ConfigMap {name}: {e}") from None
    return verdicts
