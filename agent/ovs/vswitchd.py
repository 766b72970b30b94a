"""Run-time commands to ovs-vswitchd over its unixctl socket (python-ovs, no shelling out).

Tunnel neighbours: OVS resolves the underlay neighbour of a tunnel destination only when the
first packet needs it, and that packet is lost. So when a node joins the node set we resolve it
through the kernel (a datagram to the discard port triggers ARP on the uplink), read the MAC
from the kernel's neighbour table and hand it to ovs-vswitchd (``tnl/arp/set``).

The node MAC on br-phy: frames the agent sends to the uplink through the patch port (proxy
reports, SNATed multicast) carry the node's MAC as source, so br-phy's NORMAL learning would
move that MAC onto the patch port and tunnel traffic for the node would stop reaching its
LOCAL port (where OVS pops tunnels). A static FDB entry pins it to LOCAL.
"""

from __future__ import annotations

import logging
import os
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


def unixctl(rundir: str, command: str, *args: str) -> bool:
    """Run one ovs-vswitchd unixctl command; False (logged) when it fails."""
    err, client = UnixctlClient.create(vswitchd_ctl(rundir))
    if err:
        log.warning("cannot reach ovs-vswitchd unixctl in %s: %s", rundir, os.strerror(err))
        return False
    try:
        code, _out, error = client.transact(command, list(args))
    finally:
        client.close()
    if code or error:
        log.warning("%s %s failed: %s", command, " ".join(args), error or code)
        return False
    return True


def seed_tunnel_neighbour(rundir: str, bridge: str, ip: str) -> bool:
    """Resolve ``ip`` and install it in OVS's tunnel neighbour cache. True when seeded."""
    mac = kernel_neighbour(ip)
    if mac is None:
        log.warning("node %s did not answer ARP; its first tunnelled packet may be lost", ip)
        return False
    if unixctl(rundir, "tnl/arp/set", bridge, ip, mac):
        log.info("tunnel neighbour %s is %s", ip, mac)
        return True
    return False


def pin_local_mac(rundir: str, bridge: str, mac: str) -> bool:
    """Static FDB entry: ``mac`` lives on ``bridge``'s LOCAL port, whatever else sends it.

    Retried briefly: right after the bridge is created, vswitchd may not have it yet.
    """
    deadline = time.monotonic() + RESOLVE_TIMEOUT_S * 5
    while not unixctl(rundir, "fdb/add", bridge, bridge, "0", mac):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True
