"""Helpers for the agent's real-OVS tests: a controller reachable from a node netns, pod veths.

How the bridge reaches the test's controller: the agent normally runs inside the node netns
and listens on 127.0.0.1 there. The test process stays in the root netns, so a short-lived
helper thread enters the node netns (setns affects only the calling thread), creates the
listening socket there and exits. A socket keeps the netns it was created in, so the bridge's
``tcp:127.0.0.1:6653`` controller target reaches the test's OpenFlowSwitch exactly as it would
reach the agent, while every other thread of the test keeps working in the root netns. The
same trick opens AF_PACKET sockets inside pod namespaces.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from typing import TypeVar

from pyroute2 import IPRoute

from agent.ovs.ovsdb import Ovsdb
from agent.ovs.switch import OpenFlowSwitch
from pipeline.tables import Pipeline
from tools.mclab import netns
from tools.mclab.ovsnode import OvsNode

CONTROLLER_PORT = 6653
T = TypeVar("T")






def ensure_br_int(db: Ovsdb, port: int = CONTROLLER_PORT) -> None:
    db.ensure_bridge("br-int", "netdev", controller=f"tcp:127.0.0.1:{port}")


@contextlib.contextmanager
def attached_switch(node: OvsNode, pipeline: Pipeline, fatal: list[BaseException],
                    port: int = CONTROLLER_PORT,
                    configure: Callable[[], None] | None = None) -> Iterator[OpenFlowSwitch]:
    """An OpenFlowSwitch the node's br-int is connected to (handshake done).

    ``configure`` runs once the controller listens, like the agent's start-up: a bridge whose
    first attempt finds nobody listening only retries after its 1 s backoff.
    """
    sw = OpenFlowSwitch(pipeline, listen_socket=netns.listen_in(node.netns, port),
                        fatal=fatal.append, timeout=30)
    sw.start()
    try:
        if configure is not None:
            configure()
        sw.wait_connected(20)
        yield sw
    finally:
        sw.stop()


def add_veth(node_ns: str, host_if: str, pod_ns: str, ip: str) -> None:
    """veth: ``host_if`` in the node netns, ``eth0`` with ``ip``/16 in the pod netns."""
    with IPRoute(netns=node_ns, flags=0) as ipr:
        ipr.link("add", ifname=host_if, kind="veth",
                 peer={"ifname": "eth0", "net_ns_fd": str(netns.NETNS_DIR / pod_ns)})
        ipr.link("set", index=ipr.link_lookup(ifname=host_if)[0], state="up")
    with IPRoute(netns=pod_ns, flags=0) as ipr:
        idx = ipr.link_lookup(ifname="eth0")[0]
        ipr.addr("add", index=idx, address=ip, prefixlen=16)
        ipr.link("set", index=idx, state="up")


def packet_socket(ns: str, ifname: str = "eth0", timeout: float = 5.0) -> socket.socket:
    """AF_PACKET socket bound to ``ifname`` inside netns ``ns`` (all protocols)."""
    def make() -> socket.socket:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        s.bind((ifname, 0))
        s.settimeout(timeout)
        return s
    return netns.call_in(ns, make)


def receive(sock: socket.socket, want: Callable[[bytes], bool], limit: int = 200) -> bytes:
    """First frame on ``sock`` that ``want`` accepts (socket timeout -> TimeoutError)."""
    for _ in range(limit):
        frame = sock.recv(65535)
        if want(frame):
            return frame
    raise AssertionError(f"no wanted frame among {limit} received")


def is_igmp(frame: bytes) -> bool:
    return len(frame) > 23 and frame[12:14] == b"\x08\x00" and frame[23] == 2
