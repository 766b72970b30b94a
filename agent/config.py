"""Agent configuration: the YAML file (ConfigMap) an agent starts from, parsed and validated.

The multicast keys follow Antrea's agent config (``featureGates``, ``multicast``,
``trafficEncapMode``); the node keys say where this agent's OVS, bridges and sockets are.
Bad input raises ``ConfigError`` naming the key.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.multicast import Mode


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key."""


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any, key: str) -> float:
    """'125s', '2m', '500ms' → seconds. Plain numbers are seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value).strip())
        if not m:
            raise ConfigError(f"{key}: {value!r} is not a duration like '125s', '2m' or '500ms'")
        seconds = float(m.group(1)) * _UNIT[m.group(2)]
    if seconds <= 0:
        raise ConfigError(f"{key}: duration must be positive, got {value!r}")
    return seconds


@dataclass(frozen=True)
class AgentConfig:
    node_name: str
    node_ip: str
    encap_mode: Mode = Mode.ENCAP
    multicast_enabled: bool = True
    multicast_interfaces: tuple[str, ...] = ()
    query_interval_s: float = 125.0
    query_versions: tuple[int, ...] = (1, 2, 3)
    max_response_s: float = 10.0
    robustness: int = 2
    datapath_type: str = "system"
    ovsdb: str = "unix:/var/run/openvswitch/db.sock"
    ovs_rundir: str = "/var/run/openvswitch"
    int_bridge: str = "br-int"
    phy_bridge: str = "br-phy"
    tunnel_type: str = "vxlan"
    tunnel_ofport: int = 65000
    uplink_ofport: int = 65001
    controller_port: int = 6653
    api_socket: str = "/var/run/kube-mcast/agent.sock"
    metrics_port: int = 0
    state_dir: str = "/var/run/kube-mcast"
    node_mac: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def uplink(self) -> str | None:
        return self.multicast_interfaces[0] if self.multicast_interfaces else None


def _get(d: dict[str, Any], key: str, path: str, kind: type, default: Any) -> Any:
    if key not in d or d[key] is None:
        return default
    v = d[key]
    if kind is int and isinstance(v, bool) or not isinstance(v, kind):
        raise ConfigError(f"{path}{key}: expected {kind.__name__}, got {type(v).__name__}")
    return v


def parse_config(raw: dict[str, Any], env: Mapping[str, str] | None = None) -> AgentConfig:
    """Validate ``raw``. node.name / node.ip default to $NODE_NAME / $NODE_IP (downward API)."""
    env = os.environ if env is None else env
    if not isinstance(raw, dict):
        raise ConfigError("config: top level must be a mapping")
    gates = _get(raw, "featureGates", "", dict, {})
    mc = _get(raw, "multicast", "", dict, {})
    node = _get(raw, "node", "", dict, {})
    ovs = _get(raw, "ovs", "", dict, {})

    mode_raw = _get(raw, "trafficEncapMode", "", str, "encap")
    modes = {"encap": Mode.ENCAP, "noencap": Mode.NOENCAP}
    if mode_raw.lower() not in modes:
        raise ConfigError(f"trafficEncapMode: {mode_raw!r} is not one of encap, noEncap")
    enabled = bool(_get(gates, "Multicast", "featureGates.", bool, True)) and bool(
        _get(mc, "enable", "multicast.", bool, True)
    )
    versions = _get(mc, "igmpQueryVersions", "multicast.", list, [1, 2, 3])
    if not versions or any(v not in (1, 2, 3) for v in versions):
        raise ConfigError(
            f"multicast.igmpQueryVersions: {versions!r} must be a subset of [1, 2, 3]"
        )
    ifaces = _get(mc, "multicastInterfaces", "multicast.", list, [])
    if any(not isinstance(i, str) or not i for i in ifaces):
        raise ConfigError("multicast.multicastInterfaces: must be a list of interface names")

    name = _get(node, "name", "node.", str, env.get("NODE_NAME", ""))
    if not name:
        raise ConfigError("node.name: required (or $NODE_NAME)")
    ip = _get(node, "ip", "node.", str, env.get("NODE_IP", ""))
    try:
        ipaddress.IPv4Address(ip)
    except ValueError:
        raise ConfigError(f"node.ip: {ip!r} is not an IPv4 address") from None
    tunnel = _get(ovs, "tunnelType", "ovs.", str, "vxlan")
    if tunnel not in ("vxlan", "geneve"):
        raise ConfigError(f"ovs.tunnelType: {tunnel!r} is not vxlan or geneve")
    dp = _get(ovs, "datapathType", "ovs.", str, "system")
    if dp not in ("system", "netdev"):
        raise ConfigError(f"ovs.datapathType: {dp!r} is not system or netdev")

    interval = parse_duration(mc.get("igmpQueryInterval", "125s"), "multicast.igmpQueryInterval")
    if "igmpMaxResponse" in mc:
        max_resp = parse_duration(mc["igmpMaxResponse"], "multicast.igmpMaxResponse")
        if max_resp >= interval:
            raise ConfigError("multicast.igmpMaxResponse: must be below igmpQueryInterval")
    else:
        # RFC default 10 s, but a short lab query interval needs a shorter response window.
        max_resp = min(10.0, interval / 2)
    return AgentConfig(
        node_name=name,
        node_ip=ip,
        node_mac=_get(node, "mac", "node.", str, ""),
        encap_mode=modes[mode_raw.lower()],
        multicast_enabled=enabled,
        multicast_interfaces=tuple(ifaces),
        query_interval_s=interval,
        query_versions=tuple(sorted(set(versions))),
        max_response_s=max_resp,
        robustness=_get(mc, "igmpRobustness", "multicast.", int, 2),
        datapath_type=dp,
        ovsdb=_get(ovs, "db", "ovs.", str, AgentConfig.ovsdb),
        ovs_rundir=_get(ovs, "runDir", "ovs.", str, AgentConfig.ovs_rundir),
        int_bridge=_get(ovs, "intBridge", "ovs.", str, "br-int"),
        phy_bridge=_get(ovs, "phyBridge", "ovs.", str, "br-phy"),
        tunnel_type=tunnel,
        controller_port=_get(ovs, "controllerPort", "ovs.", int, 6653),
        api_socket=_get(raw, "apiSocket", "", str, AgentConfig.api_socket),
        metrics_port=_get(raw, "metricsPort", "", int, 0),
        state_dir=_get(raw, "stateDir", "", str, AgentConfig.state_dir),
    )


def load_config(path: str | Path) -> AgentConfig:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise ConfigError(f"config file {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path}: not valid YAML: {e}") from None
    return parse_config(raw or {})
