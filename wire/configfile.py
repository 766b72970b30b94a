"""The rules agent.yaml and controller.yaml share: declared keys only, typed values, durations,
and error messages that name the key's path and the file.

Owns ``ConfigError``, ``parse_duration``, ``Schema`` (a file's declared keys per mapping and the
typed reads against them) and ``load_yaml``. Both config parsers build on it, so an operator
meets one error format whichever file is wrong. Imports nothing of ours.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key (and the file, once loaded)."""


def parse_duration(value: Any, key: str) -> float:
    """'125s', '2m', '500ms' → seconds. Plain numbers are seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value).strip())
        if not m:
            raise ConfigError(f"{key}: {value!r} is not a duration like '15s', '2m' or '500ms'")
        seconds = float(m.group(1)) * _UNIT[m.group(2)]
    if seconds <= 0:
        raise ConfigError(f"{key}: duration must be positive, got {value!r}")
    return seconds


def key_path(section: str, key: object) -> str:
    return f"{section}.{key}" if section else str(key)


class Schema:
    """The keys each mapping of one file may hold (``""`` is the top level)."""

    def __init__(self, keys: dict[str, tuple[str, ...]]) -> None:
        self.keys = keys

    def get(self, d: dict[str, Any], section: str, key: str, kind: type[Any],
            default: Any) -> Any:
        """``d[key]`` (``d`` being mapping ``section``) if set, else ``default``; by type."""
        assert key in self.keys[section], f"{key_path(section, key)} read but not declared"
        if key not in d or d[key] is None:
            return default
        v = d[key]
        if kind is int and isinstance(v, bool) or not isinstance(v, kind):
            raise ConfigError(
                f"{key_path(section, key)}: expected {kind.__name__}, got {type(v).__name__}")
        return v

    def check_keys(self, d: dict[str, Any], section: str) -> None:
        what = "feature gate" if section == "featureGates" else "key"
        for key in d:
            if key not in self.keys[section]:
                known = ", ".join(sorted(self.keys[section]))
                raise ConfigError(f"{key_path(section, key)}: unknown {what} (known: {known})")

    def section(self, raw: dict[str, Any], name: str) -> dict[str, Any]:
        """Top-level mapping ``name`` (empty if absent), its keys checked."""
        d: dict[str, Any] = self.get(raw, "", name, dict, {})
        self.check_keys(d, name)
        return d

    def subsection(self, parent: dict[str, Any], section: str, key: str) -> dict[str, Any]:
        """Mapping ``section.key`` inside ``parent`` (empty if absent), its keys checked."""
        d: dict[str, Any] = self.get(parent, section, key, dict, {})
        self.check_keys(d, key_path(section, key))
        return d


def load_yaml(path: str | Path, parse: Callable[[Any], T]) -> T:
    """Read the YAML file at ``path`` and ``parse`` it; errors start with the path as given."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise ConfigError(f"config file {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path}: not valid YAML: {e}") from None
    try:
        return parse({} if raw is None else raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
