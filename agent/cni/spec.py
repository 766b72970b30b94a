"""CNI spec data for the mcast-cni plugin: errors, environment, network config, results.

This module owns parsing what the runtime hands the plugin (``CNI_*`` variables and the
network configuration on stdin), parsing what the delegated IPAM plugin returns, and
rendering our result and error JSON in the version the runtime asked for (0.3.x, 0.4.0 or
1.0.0).
It does no I/O beyond ``os.environ``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# 0.3.x because stock Calico and flannel conflists still say 0.3.1, and the runtime hands a
# conflist's version to every plugin chained in it. 0.3.x has no CHECK; results are 0.4.0's.
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0")
CURRENT_VERSION = "1.0.0"
DEFAULT_MCAST_ROUTE = ipaddress.ip_network("224.0.0.0/4")

# Well-known codes from the CNI spec ("Error codes 0-99 are reserved for well-known errors").
ERR_INCOMPATIBLE_VERSION = 1
ERR_CONTAINER_UNKNOWN = 3
ERR_INVALID_ENV = 4
ERR_IO = 5
ERR_DECODE = 6
ERR_INVALID_NETCONF = 7
ERR_TRY_AGAIN_LATER = 11
# Ours (100+).
ERR_INTERNAL = 100
ERR_ALREADY_EXISTS = 101  # ADD for a (container, ifname) that is already set up
ERR_AGENT = 102  # the agent answered, with an error
ERR_NETLINK = 103  # a netlink or ethtool operation failed
ERR_IPAM = 104  # the IPAM plugin failed without a CNI error of its own
ERR_CHECK = 105  # CHECK found the container's networking different from prevResult
ERR_NO_ADDRESS = 106  # no ipam, and no primary IPv4 address to give the multicast interface

COMMANDS = ("ADD", "DEL", "CHECK", "VERSION")
_IFNAME = re.compile(r"^[^\s/:]{1,15}$")


class CniError(Exception):
    """A failure reported to the runtime as CNI error JSON on stdout."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, version: str) -> dict[str, Any]:
        return {"cniVersion": version, "code": self.code, "msg": self.msg, "details": self.details}


@dataclass(frozen=True)
class CniEnv:
    """The ``CNI_*`` environment of one invocation."""

    command: str
    container_id: str = ""
    netns: str = ""  # path; may be empty on DEL
    ifname: str = ""
    args: dict[str, str] = field(default_factory=dict)
    path: tuple[str, ...] = ()

    @property
    def pod_namespace(self) -> str:
        return self.args.get("K8S_POD_NAMESPACE", "")

    @property
    def pod_name(self) -> str:
        # outside Kubernetes there is no pod name; the container id still identifies it
        return self.args.get("K8S_POD_NAME") or self.container_id[:12]

    @classmethod
    def from_environ(cls, environ: dict[str, str] | os._Environ[str]) -> CniEnv:
        command = environ.get("CNI_COMMAND", "")
        if command not in COMMANDS:
            raise CniError(ERR_INVALID_ENV, f"CNI_COMMAND {command!r} is not one of {COMMANDS}")
        if command == "VERSION":
            return cls(command)
        missing = [v for v in ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH") if not environ.get(v)]
        if command != "DEL" and not environ.get("CNI_NETNS"):
            missing.append("CNI_NETNS")  # a DEL may come after the netns is gone
        if missing:
            raise CniError(ERR_INVALID_ENV, f"missing environment: {', '.join(missing)}")
        ifname = environ["CNI_IFNAME"]
        if not valid_ifname(ifname):
            raise CniError(ERR_INVALID_ENV, f"CNI_IFNAME {ifname!r} is not a valid interface name")
        return cls(
            command=command,
            container_id=environ["CNI_CONTAINERID"],
            netns=environ.get("CNI_NETNS", ""),
            ifname=ifname,
            args=_parse_args(environ.get("CNI_ARGS", "")),
            path=tuple(p for p in environ["CNI_PATH"].split(os.pathsep) if p),
        )


def valid_ifname(name: str) -> bool:
    """A Linux interface name: 1-15 bytes, no '/', ':' or blank, not '.' or '..'."""
    return bool(_IFNAME.match(name)) and name not in (".", "..")


def _parse_args(raw: str) -> dict[str, str]:
    """``K8S_POD_NAMESPACE=ns;K8S_POD_NAME=name;IgnoreUnknown=1`` → dict."""
    out: dict[str, str] = {}
    for pair in filter(None, raw.split(";")):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CniError(ERR_INVALID_ENV, f"CNI_ARGS: {pair!r} is not KEY=VALUE")
        out[key] = value
    return out


@dataclass(frozen=True)
class NetConf:
    """The network configuration on stdin, reduced to what the plugin uses."""

    cni_version: str
    name: str
    agent_socket: str
    ipam: dict[str, Any] | None = None  # passed verbatim to the IPAM plugin (on stdin)
    mtu: int | None = None
    tx_checksum_offload: bool = False  # False: turn it off (needed by the userspace datapath)
    multicast_route: bool = True  # add 224.0.0.0/4 via the pod interface
    log_file: str | None = None
    prev_result: dict[str, Any] | None = None
    interface_name: str | None = None  # our pod-side interface; see plugin.multicast_ifname

    @classmethod
    def parse(cls, raw: bytes) -> NetConf:
        try:
            obj = json.loads(raw)
        except ValueError as exc:
            raise CniError(ERR_DECODE, f"network configuration is not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise CniError(ERR_DECODE, "network configuration is not a JSON object")
        version = obj.get("cniVersion")
        if version not in SUPPORTED_VERSIONS:
            raise CniError(
                ERR_INCOMPATIBLE_VERSION,
                f"cniVersion {version!r} is not supported",
                f"supported versions: {', '.join(SUPPORTED_VERSIONS)}",
            )

        def get(key: str, typ: type | tuple[type, ...], default: Any = None) -> Any:
            value = obj.get(key, default)
            # bool is an int: an mtu of `true` is a config error, not 1
            if value is not default and (
                not isinstance(value, typ) or (typ is int and isinstance(value, bool))
            ):
                raise CniError(ERR_INVALID_NETCONF, f"netconf {key!r}: wrong type")
            return value

        name, sock = get("name", str, ""), get("agentSocket", str, "")
        if not name or not sock:
            raise CniError(ERR_INVALID_NETCONF, "netconf needs non-empty 'name' and 'agentSocket'")
        ipam = get("ipam", dict)
        if ipam is not None and not (isinstance(ipam.get("type"), str) and ipam["type"]):
            raise CniError(ERR_INVALID_NETCONF, "netconf 'ipam' needs a 'type'")
        if ipam is not None and "/" in ipam["type"]:
            raise CniError(ERR_INVALID_NETCONF, "netconf 'ipam.type' must be a plugin name")
        mtu = get("mtu", int)
        if mtu is not None and not 68 <= mtu <= 65535:
            raise CniError(ERR_INVALID_NETCONF, f"netconf 'mtu' {mtu} out of range 68..65535")
        ifname = get("interfaceName", str)
        if ifname is not None and not valid_ifname(ifname):
            raise CniError(
                ERR_INVALID_NETCONF, f"netconf 'interfaceName' {ifname!r} is not an interface name"
            )
        return cls(
            cni_version=version,
            name=name,
            agent_socket=sock,
            ipam=ipam,
            mtu=mtu,
            tx_checksum_offload=get("txChecksumOffload", bool, False),
            multicast_route=get("multicastRoute", bool, True),
            log_file=get("logFile", str),
            prev_result=get("prevResult", dict),
            interface_name=ifname,
        )


# -- results ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class IpConfig:
    address: IPInterface  # address with prefix length
    gateway: IPAddress | None = None
    interface: int | None = None  # index into the result's interfaces


@dataclass(frozen=True)
class Route:
    dst: IPNetwork
    gw: IPAddress | None = None


@dataclass
class Result:
    """A CNI result: what IPAM returned, then completed by the plugin."""

    ips: list[IpConfig] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    dns: dict[str, Any] = field(default_factory=dict)
    interfaces: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def parse(cls, obj: Any, what: str = "result") -> Result:
        """Parse a 0.3.x, 0.4.0 or 1.0.0 result (IPAM output or prevResult)."""
        try:
            ips = [
                IpConfig(
                    address=ipaddress.ip_interface(ip["address"]),
                    gateway=ipaddress.ip_address(ip["gateway"]) if ip.get("gateway") else None,
                    interface=ip.get("interface"),
                )
                for ip in obj.get("ips") or []
            ]
            routes = [
                Route(
                    dst=ipaddress.ip_network(r["dst"], strict=False),
                    gw=ipaddress.ip_address(r["gw"]) if r.get("gw") else None,
                )
                for r in obj.get("routes") or []
            ]
            interfaces = [dict(i) for i in obj.get("interfaces") or []]
            dns = dict(obj.get("dns") or {})
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise CniError(ERR_DECODE, f"cannot parse {what}: {exc!r}") from None
        return cls(ips=ips, routes=routes, dns=dns, interfaces=interfaces)

    def to_json(self, version: str) -> dict[str, Any]:
        ips = []
        for ip in self.ips:
            entry: dict[str, Any] = {"address": str(ip.address)}
            if version != "1.0.0":
                entry["version"] = str(ip.address.version)  # dropped from the spec in 1.0
            if ip.gateway is not None:
                entry["gateway"] = str(ip.gateway)
            if ip.interface is not None:
                entry["interface"] = ip.interface
            ips.append(entry)
        routes = [
            {"dst": str(r.dst), **({"gw": str(r.gw)} if r.gw is not None else {})}
            for r in self.routes
        ]
        return {
            "cniVersion": version,
            "interfaces": self.interfaces,
            "ips": ips,
            "routes": routes,
            "dns": self.dns,
        }
