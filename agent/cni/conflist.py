"""The node's CNI network configuration as data: which file is active, and our entry in it.

This module owns the pure half of ``mcast-cni-install`` (``agent.cni.install`` does the file
I/O): choosing the configuration file the container runtime uses, checking it, turning a
single-plugin ``.conf`` into a conflist, adding, updating and removing the ``mcast-cni``
entry, and rendering the result. Nothing here touches the file system.

How a runtime picks its network (libcni ``ConfFiles`` as used by containerd and CRI-O): the
regular files of the conf dir whose names end in ``.conf``, ``.conflist`` or ``.json``, sorted
by name (byte order); the first one wins. A ``.conflist`` holds ``plugins``; a ``.conf`` or
``.json`` is one plugin, which the runtime wraps in a list of one (libcni
``ConfListFromConf``: the plugin keeps its own ``name`` and ``cniVersion``). The runtime hands
every plugin of the list the list's ``name`` and ``cniVersion`` and the previous plugin's
result as ``prevResult``: our entry therefore goes last, after the primary plugin (and after
portmap, bandwidth and the like, which pass the primary's result through).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from typing import Any

from agent.cni.spec import SUPPORTED_VERSIONS

PLUGIN_TYPE = "mcast-cni"  # our entries are matched by this type, and it names the executable
CONF_EXTENSIONS = (".conf", ".conflist", ".json")
# Temporary files we create in the conf and bin dirs; never a config (wrong suffix too).
TEMP_PREFIX = ".mcast-cni-install."
TEMP_SUFFIX = ".tmp"

Json = dict[str, Any]


class ConfigError(Exception):
    """A CNI config file we must not patch: the message names the file and the problem."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name = name
        self.problem = problem


def is_own_file(name: str) -> bool:
    return name.startswith(TEMP_PREFIX) or name.endswith(TEMP_SUFFIX)


def config_candidates(names: Iterable[str]) -> list[str]:
    """The names a runtime would consider, in its order (the first is the active one)."""
    return sorted(n for n in names if n.endswith(CONF_EXTENSIONS) and not is_own_file(n))


def active_config(names: Iterable[str]) -> str | None:
    """The file name the runtime uses among ``names`` (regular files only), or None."""
    candidates = config_candidates(names)
    return candidates[0] if candidates else None


def is_conflist_name(name: str) -> bool:
    return name.endswith(".conflist")


def conflist_name(name: str) -> str:
    """``10-flannel.conf`` → ``10-flannel.conflist``: same base name, so it still sorts first.

    (``10-x.conf`` and ``10-x.json`` both become ``10-x.conflist``; between the old and the
    new name no other file can sort, since the base name is a prefix of both.)
    """
    base = name.rsplit(".", 1)[0] if name.endswith(CONF_EXTENSIONS) else name
    return base + ".conflist"


def plugin_entry(agent_socket: str, interface_name: str, tx_checksum_offload: bool) -> Json:
    """Our chained entry: what ``install --mode chained`` puts last in the conflist."""
    return {
        "type": PLUGIN_TYPE,
        "agentSocket": agent_socket,
        "interfaceName": interface_name,
        "txChecksumOffload": tx_checksum_offload,
    }


def parse(name: str, raw: bytes) -> Json:
    """The file's JSON object; a ConfigError naming ``name`` if it is not one."""
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(name, f"is not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ConfigError(name, f"is not a JSON object (found {type(obj).__name__})")
    return obj


def as_conflist(name: str, obj: Json) -> Json:
    """The network list the runtime builds from the file: checked, and a copy.

    A ``.conf``/``.json`` becomes a list of one plugin, the way libcni does it.
    """
    if is_conflist_name(name):
        conflist = copy.deepcopy(obj)
    else:
        if "plugins" in obj:
            raise ConfigError(name, "has 'plugins' but is not a .conflist (the runtime reads "
                                    "it as a single plugin); rename it to .conflist")
        if not isinstance(obj.get("type"), str) or not obj["type"]:
            raise ConfigError(name, "has no plugin 'type'")
        conflist = {"cniVersion": obj.get("cniVersion"), "name": obj.get("name"),
                    "plugins": [copy.deepcopy(obj)]}
    _check(name, conflist)
    return conflist


def _check(name: str, conflist: Json) -> None:
    plugins = conflist.get("plugins")
    if not isinstance(plugins, list) or not plugins:
        raise ConfigError(name, "has no plugins (a conflist needs a non-empty 'plugins' list)")
    for i, p in enumerate(plugins):
        if not isinstance(p, dict) or not isinstance(p.get("type"), str) or not p["type"]:
            raise ConfigError(name, f"plugins[{i}] is not an object with a 'type'")
    if not isinstance(conflist.get("name"), str) or not conflist["name"]:
        raise ConfigError(name, "has no network 'name'")


def check_version(name: str, conflist: Json) -> None:
    """Refuse a list whose ``cniVersion`` the plugin rejects: every pod ADD would fail.

    The runtime passes the list's version to each plugin; we keep it as it is.
    """
    version = conflist.get("cniVersion")
    if version not in SUPPORTED_VERSIONS:
        raise ConfigError(
            name,
            f"cniVersion {version!r} is not supported by {PLUGIN_TYPE} "
            f"(supported: {', '.join(SUPPORTED_VERSIONS)}); chaining it would fail every pod "
            "ADD on this node: configure the primary CNI for a supported version",
        )


def _ours(plugin: Any) -> bool:
    return isinstance(plugin, dict) and plugin.get("type") == PLUGIN_TYPE


def has_entry(conflist: Json) -> bool:
    plugins = conflist.get("plugins")
    return isinstance(plugins, list) and any(_ours(p) for p in plugins)


def with_entry(conflist: Json, entry: Json) -> Json:
    """``conflist`` with ``entry`` in it: appended last, or the present one updated in place.

    Updating keeps the entry's position and any key we do not set (an operator's
    ``logFile``, say), sets ours to ``entry``'s values, and drops further duplicates.
    Applying it twice gives the same list (idempotent).
    """
    out = copy.deepcopy(conflist)
    plugins: list[Any] = out["plugins"]
    idx = next((i for i, p in enumerate(plugins) if _ours(p)), None)
    if idx is None:
        plugins.append(copy.deepcopy(entry))
        return out
    merged = {**plugins[idx], **copy.deepcopy(entry)}
    out["plugins"] = [merged if i == idx else p for i, p in enumerate(plugins)
                      if i == idx or not _ours(p)]
    return out


def without_entry(conflist: Json) -> Json:
    """``conflist`` with every ``mcast-cni`` entry removed (the others untouched, in order)."""
    out = copy.deepcopy(conflist)
    plugins = out.get("plugins")
    if isinstance(plugins, list):
        out["plugins"] = [p for p in plugins if not _ours(p)]
    return out


def render(obj: Json) -> bytes:
    """The bytes we write: two-space JSON, keys in their order, a final newline."""
    return (json.dumps(obj, indent=2) + "\n").encode()
