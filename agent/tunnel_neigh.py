"""Tunnel neighbours: make sure OVS knows a peer node's MAC before anything is tunnelled to it.

OVS resolves the underlay neighbour of a tunnel destination only when the first packet needs
it, and that packet is lost. So when a node joins the node set we resolve it through the
kernel (a datagram to the discard port triggers ARP on the uplink), read the MAC from the
kernel's neighbour table and hand it to ovs-vswitchd (``tnl/arp/set`` over its unixctl socket).
"""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

from ovs.unixctl.client import UnixctlClient
from pyroute2 import IPRoute

log = logging.getLogger(__name__)

DISCARD_PORT = 9
RESOLVE_TIMEOUT_S = 1.0


def vswitchd_ctl(rundir: str) -> str:
    """The unixctl socket of ovs-vswitchd: a fixed name if given one, else <pid>.ctl."""
    fixed = Path(rundir) / "ovs-vswitchd.ctl"
    if fixed.exists():
        return str(fixed)
    pid = (Path(rundir) / "ovs-vswitchd.pid").read_text().strip()
    return str(Path(rundir) / f"ovs-vswitchd.{pid}.ctl")


def kernel_neighbour(ip: str, timeout_s: float = RESOLVE_TIMEOUT_S) -> str | None:
    """The MAC of ``ip`` on the underlay, resolving it through the kernel if needed."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.sendto(b"", (ip, DISCARD_PORT))
        except OSError as e:
            log.warning("cannot reach node %s to resolve it: %s", ip, e)
            return None
    deadline = time.monotonic() + timeout_s
    with IPRoute() as ipr:
        while True:
            for n in ipr.get_neighbours(family=socket.AF_INET, dst=ip):
                mac = n.get("NDA_LLADDR")
                if mac and n["state"] not in (0x01, 0x20):  # not INCOMPLETE / FAILED
                    return str(mac)
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.01)


def seed_tunnel_neighbour(rundir: str, bridge: str, ip: str) -> bool:
    """Resolve ``ip`` and install it in OVS's tunnel neighbour cache. True when seeded."""
    mac = kernel_neighbour(ip)
    if mac is None:
        log.warning("node %s did not answer ARP; its first tunnelled packet may be lost", ip)
        return False
    err, client = UnixctlClient.create(vswitchd_ctl(rundir))
    if err:
        log.warning("cannot reach ovs-vswitchd unixctl in %s: %s", rundir, err)
        return False
    try:
        code, _out, error = client.transact("tnl/arp/set", [bridge, ip, mac])
    finally:
        client.close()
    if code or error:
        log.warning("tnl/arp/set %s %s %s failed: %s", bridge, ip, mac, error or code)
        return False
    log.info("tunnel neighbour %s is %s", ip, mac)
    return True
