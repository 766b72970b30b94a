"""Agent configuration: the YAML file (ConfigMap) an agent starts from, parsed and validated.

The multicast keys follow Antrea's agent config (``featureGates``, ``multicast``,
``trafficEncapMode``); the node keys say where this agent's OVS, bridges and sockets are.
Bad input raises ``ConfigError`` naming the key's path (``multicast.igmpQueryInterval``), and
the file when read by ``load_config``. Every mapping declares its keys (``KEYS``,
``FEATURE_GATES``): a misspelt key is an error, never silently a default.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.multicast.igmp.limits import Cap, Limits
from agent.multicast.uplink import ExternalForwarding
from agent.podnetwork import MIN_MTU
from pipeline.multicast import Mode
from wire.configfile import ConfigError, Schema, key_path, load_yaml, parse_duration
from wire.stream import DEFAULT_PORT

__all__ = ["AgentConfig", "ConfigError", "ControllerLinkConfig", "PuntRates", "load_config",
           "parse_config", "parse_duration"]


# Feature gate -> default. Gates for policy and egress will join Multicast here.
FEATURE_GATES: dict[str, bool] = {"Multicast": True}

# The keys of each mapping ("" is the top level); anything else is rejected.
KEYS: dict[str, tuple[str, ...]] = {
    "": ("featureGates", "trafficEncapMode", "multicast", "node", "ovs", "apiSocket",
         "metricsPort", "controller"),
    "featureGates": tuple(FEATURE_GATES),
    "multicast": ("enable", "multicastInterfaces", "igmpQueryInterval", "igmpMaxResponse",
                  "igmpQueryVersions", "igmpRobustness", "limits", "igmpRateLimit",
                  "interfaceMTU", "externalForwarding"),
    "multicast.limits": tuple(c.value for c in Cap),
    "multicast.igmpRateLimit": ("podPps", "tunnelPps", "uplinkPps"),
    "node": ("name", "ip", "mac"),
    "ovs": ("db", "runDir", "datapathType", "tunnelType", "intBridge", "phyBridge",
            "controllerPort"),
    "controller": ("address", "tokenFile", "caFile"),
}
_SCHEMA = Schema(KEYS)
_get, _section, _subsection = _SCHEMA.get, _SCHEMA.section, _SCHEMA.subsection
_path = key_path




@dataclass(frozen=True)
class PuntRates:
    """Packets per second of IGMP each source may punt to the agent (OpenFlow meters): per pod
    port, the tunnel (peer agents) and the uplink, so a flooding pod exhausts only its own."""

    pod_pps: int = 200
    tunnel_pps: int = 5000
    uplink_pps: int = 1000


@dataclass(frozen=True)
class ControllerLinkConfig:
    """Where the cluster controller's agent stream is and how to authenticate to it."""

    address: str  # scheme://host:port (https; http only in labs and tests)
    token_file: str  # a bearer token, re-read on every connect (projected tokens rotate)
    ca_file: str = ""  # the CA that signed the controller's certificate ("": the system's)


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
    node_mac: str = ""
    limits: Limits = Limits()
    punt_rates: PuntRates = PuntRates()
    interface_mtu: int | None = None  # the pod's multicast interface; None: the uplink's
    controller: ControllerLinkConfig | None = None  # None: no controller (the lab's PUT /v1/nodes)
    # auto: pod multicast leaves by the uplink only for groups outside hosts reported there,
    # link-local groups, or every group while a multicast router is heard there (RFC 4541)
    external_forwarding: ExternalForwarding = ExternalForwarding.AUTO

    @property
    def uplink(self) -> str | None:
        return self.multicast_interfaces[0] if self.multicast_interfaces else None


def _positive(d: dict[str, Any], section: str, key: str, default: int) -> int:
    value: int = _get(d, section, key, int, default)
    if value < 1:
        raise ConfigError(f"{_path(section, key)}: must be at least 1, got {value}")
    return value


def _limits(mc: dict[str, Any]) -> Limits:
    d, sec = _subsection(mc, "multicast", "limits"), "multicast.limits"
    default = Limits()
    return Limits.from_caps({c: _positive(d, sec, c.value, default[c]) for c in Cap})


def _punt_rates(mc: dict[str, Any]) -> PuntRates:
    d, sec = _subsection(mc, "multicast", "igmpRateLimit"), "multicast.igmpRateLimit"
    default = PuntRates()
    return PuntRates(_positive(d, sec, "podPps", default.pod_pps),
                     _positive(d, sec, "tunnelPps", default.tunnel_pps),
                     _positive(d, sec, "uplinkPps", default.uplink_pps))


def _interface_mtu(mc: dict[str, Any]) -> int | None:
    mtu = _get(mc, "multicast", "interfaceMTU", int, None)
    if mtu is not None and not MIN_MTU <= mtu <= 65535:
        raise ConfigError(f"multicast.interfaceMTU: {mtu} out of range {MIN_MTU}..65535")
    return mtu


def _external_forwarding(mc: dict[str, Any]) -> ExternalForwarding:
    value = _get(mc, "multicast", "externalForwarding", str, "auto")
    try:
        return ExternalForwarding(value)
    except ValueError:
        raise ConfigError(f"multicast.externalForwarding: {value!r} is not auto or always"
                          ) from None


def _controller(raw: dict[str, Any]) -> ControllerLinkConfig | None:
    """``controller``: absent → None; else an http(s) address (port default 10349) and a
    token file, and for https optionally the CA file."""
    if raw.get("controller") is None:
        return None
    d = _section(raw, "controller")
    address = _get(d, "controller", "address", str, "")
    if not address:
        raise ConfigError("controller.address: required (e.g. 'https://host:10349')")
    try:
        url = urlsplit(address)
        port = url.port
    except ValueError as e:
        raise ConfigError(f"controller.address: {address!r}: {e}") from None
    if url.scheme not in ("https", "http") or not url.hostname or url.path.strip("/") \
            or url.query or url.fragment or url.username:
        raise ConfigError(f"controller.address: {address!r} is not like "
                          f"'https://host:{DEFAULT_PORT}'")
    host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
    token_file = _get(d, "controller", "tokenFile", str, "")
    if not token_file:
        raise ConfigError("controller.tokenFile: required with controller.address")
    ca_file = _get(d, "controller", "caFile", str, "")
    if ca_file and url.scheme != "https":
        raise ConfigError("controller.caFile: given but controller.address is not https")
    return ControllerLinkConfig(f"{url.scheme}://{host}:{port or DEFAULT_PORT}",
                                token_file, ca_file)


def parse_config(raw: dict[str, Any], env: Mapping[str, str] | None = None) -> AgentConfig:
    """Validate ``raw``. node.name / node.ip default to $NODE_NAME / $NODE_IP (downward API)."""
    env = os.environ if env is None else env
    if not isinstance(raw, dict):
        raise ConfigError(f"top level: must be a mapping, got {type(raw).__name__}")
    _SCHEMA.check_keys(raw, "")
    gates = _section(raw, "featureGates")
    gate = {g: bool(_get(gates, "featureGates", g, bool, on)) for g, on in FEATURE_GATES.items()}
    mc = _section(raw, "multicast")
    node = _section(raw, "node")
    ovs = _section(raw, "ovs")

    mode_raw = _get(raw, "", "trafficEncapMode", str, "encap")
    modes = {"encap": Mode.ENCAP, "noencap": Mode.NOENCAP}
    if mode_raw.lower() not in modes:
        raise ConfigError(f"trafficEncapMode: {mode_raw!r} is not one of encap, noEncap")
    enabled = gate["Multicast"] and bool(_get(mc, "multicast", "enable", bool, True))
    versions = _get(mc, "multicast", "igmpQueryVersions", list, [1, 2, 3])
    if not versions or any(v not in (1, 2, 3) for v in versions):
        raise ConfigError(
            f"multicast.igmpQueryVersions: {versions!r} must be a subset of [1, 2, 3]"
        )
    ifaces = _get(mc, "multicast", "multicastInterfaces", list, [])
    if any(not isinstance(i, str) or not i for i in ifaces):
        raise ConfigError("multicast.multicastInterfaces: must be a list of interface names")

    name = _get(node, "node", "name", str, env.get("NODE_NAME", ""))
    if not name:
        raise ConfigError("node.name: required (or $NODE_NAME)")
    ip = _get(node, "node", "ip", str, env.get("NODE_IP", ""))
    try:
        ipaddress.IPv4Address(ip)
    except ValueError:
        raise ConfigError(f"node.ip: {ip!r} is not an IPv4 address") from None
    tunnel = _get(ovs, "ovs", "tunnelType", str, "vxlan")
    if tunnel not in ("vxlan", "geneve"):
        raise ConfigError(f"ovs.tunnelType: {tunnel!r} is not vxlan or geneve")
    dp = _get(ovs, "ovs", "datapathType", str, "system")
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
        node_mac=_get(node, "node", "mac", str, ""),
        encap_mode=modes[mode_raw.lower()],
        multicast_enabled=enabled,
        multicast_interfaces=tuple(ifaces),
        query_interval_s=interval,
        query_versions=tuple(sorted(set(versions))),
        max_response_s=max_resp,
        robustness=_get(mc, "multicast", "igmpRobustness", int, 2),
        datapath_type=dp,
        ovsdb=_get(ovs, "ovs", "db", str, AgentConfig.ovsdb),
        ovs_rundir=_get(ovs, "ovs", "runDir", str, AgentConfig.ovs_rundir),
        int_bridge=_get(ovs, "ovs", "intBridge", str, "br-int"),
        phy_bridge=_get(ovs, "ovs", "phyBridge", str, "br-phy"),
        tunnel_type=tunnel,
        controller_port=_get(ovs, "ovs", "controllerPort", int, 6653),
        api_socket=_get(raw, "", "apiSocket", str, AgentConfig.api_socket),
        metrics_port=_get(raw, "", "metricsPort", int, 0),
        limits=_limits(mc),
        punt_rates=_punt_rates(mc),
        interface_mtu=_interface_mtu(mc),
        controller=_controller(raw),
        external_forwarding=_external_forwarding(mc),
    )


def load_config(path: str | Path) -> AgentConfig:
    """Read and parse the YAML file at ``path``; errors start with the path as given."""
    return load_yaml(path, parse_config)
