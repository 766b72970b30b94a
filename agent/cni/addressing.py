"""Our pod interface's name and addresses, and how our result joins the chain's.

This module owns the choices that depend on where the plugin runs in the pod's networking:
- the pod-side interface name (``multicast_ifname``): ``interfaceName``, else ``mc0`` chained
  after the primary plugin, else CNI_IFNAME (standalone, Multus secondary network);
- the addresses: IPAM delegated to another plugin binary found in ``CNI_PATH`` (host-local in
  tests) when the netconf has ``ipam``, else the pod's primary IPv4 address as a /32
  (``primary_address``: prevResult's, or the pod namespace's), so multicast datagrams carry
  the pod's real source and unicast answers to it take the primary network;
- appending our result to prevResult (``merge_prev``).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from agent.cni import podnet
from agent.cni.spec import (
    ERR_INVALID_NETCONF,
    ERR_IPAM,
    ERR_NETLINK,
    ERR_NO_ADDRESS,
    CniEnv,
    CniError,
    IpConfig,
    NetConf,
    Result,
)

log = logging.getLogger(__name__)

CHAINED_IFNAME = "mc0"  # our interface chained after the primary plugin (which has CNI_IFNAME)
IPAM_TIMEOUT = 60.0


# -- which interface, which address ------------------------------------------------------------


def multicast_ifname(env: CniEnv, conf: NetConf) -> str:
    """The pod-side name of our interface: one rule for ADD, DEL and CHECK.

    ``interfaceName`` when the netconf sets it. Else ``mc0`` when chained after the primary
    plugin (a prevResult that describes anything): CNI_IFNAME is the primary's interface then.
    Else CNI_IFNAME (standalone, or a Multus secondary network). On DEL and CHECK the runtime
    hands every plugin the list's result as prevResult, ours included: a prevResult that holds
    our own host veth for CNI_IFNAME therefore means standalone, not chained.
    """
    if conf.interface_name:
        return conf.interface_name
    if conf.prev_result is not None:
        prev = Result.parse(conf.prev_result, "prevResult")
        ours = podnet.host_ifname(env.container_id, env.ifname)
        if (prev.interfaces or prev.ips) and all(i.get("name") != ours for i in prev.interfaces):
            return CHAINED_IFNAME
    return env.ifname


def primary_address(env: CniEnv, conf: NetConf, ifname: str) -> ipaddress.IPv4Address:
    """The pod's primary IPv4 address: prevResult's first, else the pod netns' (Multus)."""
    if conf.prev_result is not None:
        prev = Result.parse(conf.prev_result, "prevResult")
        found = next(
            (ip.address.ip for ip in prev.ips if isinstance(ip.address, ipaddress.IPv4Interface)),
            None,
        )
        if found is not None:
            return found
    try:
        address = podnet.primary_ipv4(env.netns, exclude=ifname)
    except (NetlinkError, OSError) as exc:
        raise CniError(ERR_NETLINK, f"reading the addresses in {env.netns}: {exc}") from exc
    if address is None:
        raise CniError(
            ERR_NO_ADDRESS,
            f"no IPv4 address for {ifname}: the netconf has no 'ipam', and the pod has no "
            "primary IPv4 address to share (neither in prevResult nor in its network namespace)",
            "run after the primary network, or give this network an 'ipam' section",
        )
    return address


def primary_of(env: CniEnv, conf: NetConf, ifname: str) -> str:
    """With IPAM of our own: the pod's primary address, shown beside ours; "" if unknown."""
    try:
        return str(primary_address(env, conf, ifname))
    except CniError:
        # standalone, we are the primary network: the address on the default route's interface
        try:
            return str(podnet.primary_ipv4(env.netns) or "")
        except (NetlinkError, OSError):
            return ""


def merge_prev(prev: dict[str, Any] | None, ours: Result) -> Result:
    """Chained after another plugin: keep its result and append ours (indices shifted)."""
    if not prev:
        return ours
    before = Result.parse(prev, "prevResult")
    shift = len(before.interfaces)
    return Result(
        ips=before.ips
        + [
            IpConfig(ip.address, ip.gateway, ip.interface + shift)
            if ip.interface is not None
            else ip
            for ip in ours.ips
        ],
        routes=before.routes + ours.routes,
        dns=before.dns or ours.dns,
        interfaces=before.interfaces + ours.interfaces,
    )


# -- IPAM delegation ---------------------------------------------------------------------------


def ipam_exec(env: CniEnv, conf: NetConf, stdin: bytes, command: str) -> dict[str, Any] | None:
    """Run the IPAM plugin named by ``ipam.type`` with our env and stdin (CNI delegation)."""
    assert conf.ipam is not None
    plugin = conf.ipam["type"]
    binary = next(
        (Path(d) / plugin for d in env.path if os.access(Path(d) / plugin, os.X_OK)), None
    )
    if binary is None:
        raise CniError(
            ERR_INVALID_NETCONF,
            f"IPAM plugin {plugin!r} not found in CNI_PATH",
            os.pathsep.join(env.path),
        )
    child_env = dict(os.environ, CNI_COMMAND=command)
    log.debug("IPAM %s %s", command, binary)
    try:
        proc = subprocess.run(
            [str(binary)], input=stdin, env=child_env, capture_output=True, timeout=IPAM_TIMEOUT
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CniError(ERR_IPAM, f"IPAM plugin {plugin} {command} failed: {exc}") from exc
    out = proc.stdout.strip()
    try:
        parsed = json.loads(out) if out else None
    except ValueError:
        parsed = None
    if proc.returncode != 0:
        stderr = proc.stderr.decode(errors="replace").strip()
        if isinstance(parsed, dict) and isinstance(parsed.get("code"), int):
            # the delegate's own CNI error is the most precise answer: pass it on
            raise CniError(
                parsed["code"],
                f"IPAM {plugin}: {parsed.get('msg', '')}",
                str(parsed.get("details") or stderr),
            )
        raise CniError(
            ERR_IPAM,
            f"IPAM plugin {plugin} {command} exited {proc.returncode}",
            stderr or out.decode(errors="replace"),
        )
    if command == "ADD" and not isinstance(parsed, dict):
        raise CniError(ERR_IPAM, f"IPAM plugin {plugin} returned no result")
    return parsed
