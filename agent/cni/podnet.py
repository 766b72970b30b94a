"""Kernel-side work of the mcast-cni plugin: the veth pair, pod addressing, sysctls, tx checksum.

This module owns every netlink, sysctl and ethtool operation of the plugin. The plugin runs in
the node's network namespace; pod-side work is done through sockets created inside the pod's
namespace (pyroute2 forks a short-lived helper that calls setns(2) and hands the socket
back), so this process never switches namespace itself. Sysctls under /proc/sys/net belong to
the network namespace of the process that opens them, so they are read and written by a
forked child that enters the pod's namespace first.

No shelling out: netlink goes through pyroute2; tx checksum offload is switched with the
legacy SIOCETHTOOL/ETHTOOL_STXCSUM ioctl, which the kernel maps onto the feature bits
(``ethtool -K IF tx off`` does the same through ETHTOOL_SFEATURES). pyroute2's own ethtool
module cannot target another namespace, hence the ioctl.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import ipaddress
import logging
import os
import socket
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2 import netns as pr_netns
from pyroute2.netlink.exceptions import NetlinkError

from agent.cni.spec import DEFAULT_MCAST_ROUTE, IPAddress, IpConfig, IPInterface, Route

log = logging.getLogger(__name__)

SIOCETHTOOL = 0x8946
ETHTOOL_GTXCSUM = 0x16
ETHTOOL_STXCSUM = 0x17
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_TABLE_MAIN = 254
RP_FILTER_LOOSE = 2


def host_ifname(container_id: str, ifname: str) -> str:
    """Node-side veth name: stable per (container, pod ifname), within IFNAMSIZ (15)."""
    return "mc" + hashlib.sha1((container_id + ifname).encode()).hexdigest()[:10]


@contextmanager
def _ipr(netns: str | None = None) -> Iterator[IPRoute]:
    """An rtnetlink socket in this namespace, or in the one at path ``netns``."""
    if netns is None:
        with IPRoute() as ipr:
            yield ipr
        return
    if not os.path.exists(netns):
        raise FileNotFoundError(errno.ENOENT, "network namespace not found", netns)
    # flags=0: pyroute2's default O_CREAT would *create* a missing namespace
    with IPRoute(netns=netns, flags=0) as ipr:
        yield ipr


def _index(ipr: IPRoute, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


def link_exists(ifname: str, netns: str | None = None) -> bool:
    with _ipr(netns) as ipr:
        return _index(ipr, ifname) is not None


@dataclass(frozen=True)
class Veth:
    host_ifname: str
    host_mac: str
    pod_ifname: str
    pod_mac: str


def create_veth(host: str, pod_ifname: str, netns: str, mtu: int | None) -> Veth:
    """Create the pair with its pod end born inside ``netns`` as ``pod_ifname``, both up.

    Creating the peer directly in the pod namespace avoids a temporary name in the node
    namespace (where "eth0" usually exists already). Raises NetlinkError(EEXIST) when
    either name is taken; the caller owns the pair only once this returns.
    """
    peer: dict[str, object] = {"ifname": pod_ifname, "net_ns_fd": netns}
    extra: dict[str, object] = {}
    if mtu is not None:
        peer["mtu"] = extra["mtu"] = mtu
    with _ipr() as ipr:
        ipr.link("add", ifname=host, kind="veth", peer=peer, **extra)
    try:
        with _ipr() as ipr:
            idx = _index(ipr, host)
            if idx is None:
                raise NetlinkError(errno.ENODEV, f"{host} vanished after creation")
            ipr.link("set", index=idx, state="up")
            host_mac = ipr.get_links(idx)[0].get("address")
        with _ipr(netns) as ipr:
            idx = _index(ipr, pod_ifname)
            if idx is None:
                raise NetlinkError(errno.ENODEV, f"{pod_ifname} did not appear in {netns}")
            ipr.link("set", index=idx, state="up")
            pod_mac = ipr.get_links(idx)[0].get("address")
    except BaseException:
        delete_link(host)  # we created it: do not leave it behind for the caller to guess
        raise
    log.debug("veth %s <-> %s:%s created", host, netns, pod_ifname)
    return Veth(host, host_mac, pod_ifname, pod_mac)


def delete_link(ifname: str) -> bool:
    """Delete ``ifname`` in this namespace (a veth takes its peer along); False if absent."""
    with _ipr() as ipr:
        idx = _index(ipr, ifname)
        if idx is None:
            return False
        try:
            ipr.link("del", index=idx)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:  # went away meanwhile (e.g. its netns was deleted)
                return False
            raise
    log.debug("deleted %s", ifname)
    return True


def configure_pod(
    netns: str,
    ifname: str,
    ips: list[IpConfig],
    routes: list[Route],
    multicast_route: bool,
    route_mtu: int | None = None,
) -> list[Route]:
    """Addresses, routes and lo inside the pod; returns the routes actually installed.

    A route without a gateway goes via the gateway IPAM gave for its family, or is on-link if
    there is none (as the reference plugins do). No default route unless IPAM returns one.
    The 224.0.0.0/4 route carries ``route_mtu`` (RTAX_MTU): the pod's kernel fragments larger
    datagrams so that they fit the tunnel.
    """
    installed: list[Route] = []
    with _ipr(netns) as ipr:
        lo = _index(ipr, "lo")
        if lo is not None:
            ipr.link("set", index=lo, state="up")
        idx = _index(ipr, ifname)
        if idx is None:
            raise NetlinkError(errno.ENODEV, f"{ifname} not found in {netns}")
        for ip in ips:
            ipr.addr(
                "add", index=idx, address=str(ip.address.ip), prefixlen=ip.address.network.prefixlen
            )
        gateways = {ip.address.version: ip.gateway for ip in reversed(ips) if ip.gateway}
        for route in routes:
            _add_route(ipr, idx, route, route.gw or gateways.get(route.dst.version))
            installed.append(route)
        mroute = Route(DEFAULT_MCAST_ROUTE)
        has_v4 = any(ip.address.version == 4 for ip in ips)
        if multicast_route and has_v4 and mroute.dst not in {r.dst for r in routes}:
            try:
                _add_route(ipr, idx, mroute, None, route_mtu)
                installed.append(mroute)
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise
                # another interface of this pod (e.g. the primary network) already carries
                # multicast; keep it, multicastRoute: false on one network makes it explicit
                log.warning("224.0.0.0/4 already routed in %s; not adding it via %s", netns, ifname)
    return installed


def _add_route(
    ipr: IPRoute, idx: int, route: Route, gw: IPAddress | None, mtu: int | None = None
) -> None:
    kwargs: dict[str, object] = {"dst": str(route.dst), "oif": idx}
    if mtu is not None:
        kwargs["metrics"] = {"mtu": mtu}
    if route.dst.version == 6:
        kwargs["family"] = socket.AF_INET6
    if gw is not None:
        kwargs["gateway"] = str(gw)
    elif route.dst.version == 4:
        kwargs["scope"] = RT_SCOPE_LINK  # what `ip route add ... dev X` does without a gateway
    ipr.route("add", **kwargs)


@dataclass(frozen=True)
class PodIface:
    """What CHECK compares with prevResult."""

    mac: str
    addresses: frozenset[IPInterface]
    routes: frozenset[tuple[str, str | None]]  # (dst, gateway) of routes via the interface


def inspect_pod(netns: str, ifname: str) -> PodIface | None:
    """The pod interface's MAC, addresses and routes; None if it does not exist."""
    with _ipr(netns) as ipr:
        idx = _index(ipr, ifname)
        if idx is None:
            return None
        mac = ipr.get_links(idx)[0].get("address")
        addrs = frozenset(
            ipaddress.ip_interface(f"{a.get('address')}/{a['prefixlen']}")
            for family in (socket.AF_INET, socket.AF_INET6)
            for a in ipr.get_addr(family=family, index=idx)
        )
        routes = frozenset(
            (
                str(ipaddress.ip_network(f"{r.get('dst') or _any(r['family'])}/{r['dst_len']}")),
                r.get("gateway"),
            )
            for family in (socket.AF_INET, socket.AF_INET6)
            for r in ipr.get_routes(family=family, oif=idx)
        )
    return PodIface(mac, addrs, routes)


def _any(family: int) -> str:
    return "::" if family == socket.AF_INET6 else "0.0.0.0"


def primary_ipv4(netns: str, exclude: str | None = None) -> ipaddress.IPv4Address | None:
    """The pod's primary IPv4 address, as its own network gave it; None if it has none.

    The first global-scope IPv4 address of the interface that holds the default route, else of
    any other interface (in index order); ``exclude`` (our own interface) and lo never count.
    """
    with _ipr(netns) as ipr:
        names = {link["index"]: link.get("ifname") for link in ipr.get_links()}
        default_oifs = [
            oif
            for r in ipr.get_routes(family=socket.AF_INET)
            if r["dst_len"] == 0 and r.get("table") == RT_TABLE_MAIN
            for oif in [r.get("oif")] + [nh.get("oif") for nh in r.get("multipath") or []]
            if oif is not None
        ]
        addrs: dict[int, list[str]] = {}
        for a in ipr.get_addr(family=socket.AF_INET):
            if a["scope"] == RT_SCOPE_UNIVERSE:
                addrs.setdefault(a["index"], []).append(a.get("address"))
    for idx in dict.fromkeys(default_oifs + sorted(names)):  # ordered, without repeats
        if names.get(idx) not in (exclude, "lo") and addrs.get(idx):
            return ipaddress.IPv4Address(addrs[idx][0])
    return None


# -- sysctls, inside the pod's network namespace -----------------------------------------------


def _in_netns(netns: str, fn: Callable[[], bytes]) -> bytes:
    """Run ``fn`` in a forked child that entered ``netns``; its bytes, or its error as OSError.

    setns(2) in this process would move the plugin itself (and its later netlink sockets); a
    child that exits at once cannot leak the namespace anywhere.
    """
    if not os.path.exists(netns):
        raise FileNotFoundError(errno.ENOENT, "network namespace not found", netns)
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns, never runs the parent's clean-ups
        code = 0
        try:
            os.close(rfd)
            pr_netns.setns(netns, flags=0)
            out = fn()
        except BaseException as exc:
            out, code = f"{type(exc).__name__}: {exc}".encode(), 1
        try:
            os.write(wfd, out)
        finally:
            os._exit(code)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as pipe:
        out = pipe.read()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise OSError(f"in {netns}: {out.decode(errors='replace') or 'child failed'}")
    return out


def _sysctl_path(ifname: str, key: str, family: str) -> str:
    if "/" in ifname or ifname in ("", ".", ".."):
        raise ValueError(f"{ifname!r} is not an interface name")
    if family not in ("ipv4", "ipv6"):
        raise ValueError(f"{family!r} is not ipv4 or ipv6")
    return f"/proc/sys/net/{family}/conf/{ifname}/{key}"


def set_ip_conf(netns: str, ifname: str, key: str, value: int, family: str = "ipv4") -> None:
    """``net.<family>.conf.<ifname>.<key> = value`` inside ``netns``."""
    path = _sysctl_path(ifname, key, family)

    def write() -> bytes:
        with open(path, "w") as f:
            f.write(str(value))
        return b""

    _in_netns(netns, write)
    log.debug("%s: %s = %d", netns, path, value)


def get_ip_conf(netns: str, ifname: str, key: str, family: str = "ipv4") -> int:
    """``net.<family>.conf.<ifname>.<key>`` inside ``netns``."""
    path = _sysctl_path(ifname, key, family)

    def read() -> bytes:
        with open(path, "rb") as f:
            return f.read()

    return int(_in_netns(netns, read))


# -- tx checksum offload (ethtool ioctl) -------------------------------------------------------


def _ethtool_value(sock: socket.socket, ifname: str, cmd: int, value: int = 0) -> int:
    """One ``struct ethtool_value`` ioctl; returns the value the kernel wrote back."""
    buf = ctypes.create_string_buffer(struct.pack("II", cmd, value))
    ifreq = struct.pack("16sP", ifname.encode(), ctypes.addressof(buf))
    fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)
    return struct.unpack("II", buf.raw[:8])[1]


@contextmanager
def _ioctl_socket(netns: str | None) -> Iterator[socket.socket]:
    if netns is None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    else:
        # an ioctl acts on the namespace the socket was created in
        sock = pr_netns.create_socket(netns, socket.AF_INET, socket.SOCK_DGRAM, flags=0)
    try:
        yield sock
    finally:
        sock.close()


def set_tx_checksum(ifname: str, enabled: bool, netns: str | None = None) -> None:
    with _ioctl_socket(netns) as sock:
        _ethtool_value(sock, ifname, ETHTOOL_STXCSUM, int(enabled))


def get_tx_checksum(ifname: str, netns: str | None = None) -> bool:
    with _ioctl_socket(netns) as sock:
        return bool(_ethtool_value(sock, ifname, ETHTOOL_GTXCSUM))
