"""`mcast-agent`: start-up and wiring of the node agent, and its timer loop.

This is the one place that knows every layer: it builds the OVS adaptors (``agent.ovs``), the
reconciler (``agent.flowsync``), the multicast core (``agent.multicast``), the packet-in router
and the local API (``agent.api``), and connects them.

Order matters: the OpenFlow listener starts first, then OVSDB sets br-int's controller (before
anything is programmed: adding a controller flushes the bridge), names the tables, ensures the
tunnel port and the uplink patch; then, once the bridge is connected, the new round's flows go
in and older rounds go out in one bundle. Only then does the local API open. A fatal error in
any thread stops the process so the supervisor restarts it.

The timer loop sleeps until the core's next deadline (an expiry, a due query, the refresh) and
is woken early by any event that may have moved it.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from prometheus_client import REGISTRY, start_http_server
from pyroute2 import IPRoute

from agent.api.server import LocalApiServer
from agent.api.service import AgentService
from agent.config import AgentConfig, ConfigError, load_config
from agent.controllerlink import ControllerLink
from agent.flowsync.reconciler import Reconciler
from agent.multicast.collector import register_collector
from agent.multicast.core import MulticastCore
from agent.multicast.policy.metrics import PolicyCollector
from agent.ovs.ovsdb import Ovsdb
from agent.ovs.podports import OvsdbPodPorts
from agent.ovs.switch import OpenFlowSwitch
from agent.ovs.vswitchd import pin_local_mac, seed_tunnel_neighbour
from agent.packetin import PacketInRouter
from agent.podnetwork import PodMtu, pod_mtu
from pipeline.cookies import Feature
from pipeline.layout import multicast_pipeline
from pipeline.multicast import BridgeConfig, Mode

log = logging.getLogger(__name__)

TUNNEL_PORT = "mc-tun0"
INT_PATCH = "mc-patch-phy"  # on br-int, towards br-phy
PHY_PATCH = "mc-patch-int"  # on br-phy, towards br-int
ROUND_LIMIT = 0xFFFF
CONNECT_TIMEOUT_S = 30.0
POLICY_FILE = "policy.json"  # the last policy view, beside the API socket (a run directory)
UPLINK_FILE = "uplink.json"  # who outside listens, and the uplink's router: beside it too
DEFAULT_UPLINK_MTU = 1500


def _interface_mac(ifname: str) -> str:
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            raise ConfigError(f"node.mac: not given and interface {ifname} not found")
        return str(ipr.get_links(idx[0])[0].get("IFLA_ADDRESS"))


def _interface_mtu(ifname: str | None) -> int:
    """The uplink's MTU (Ethernet's 1500 when there is no uplink)."""
    if ifname is None:
        return DEFAULT_UPLINK_MTU
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            raise ConfigError(f"multicast.multicastInterfaces: interface {ifname} not found")
        return int(ipr.get_links(idx[0])[0].get("IFLA_MTU"))


def pod_mtu_of(cfg: AgentConfig) -> PodMtu:
    try:
        return pod_mtu(_interface_mtu(cfg.uplink), cfg.encap_mode is Mode.ENCAP,
                       cfg.tunnel_type, cfg.interface_mtu)
    except ValueError as e:
        raise ConfigError(f"multicast.interfaceMTU: {e}") from None


class Agent:
    """The running agent process: adaptors, core, API, timer."""

    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.pod_mtu = pod_mtu_of(cfg)
        self.pipeline = multicast_pipeline()
        self.switch = OpenFlowSwitch(self.pipeline, "127.0.0.1", cfg.controller_port)
        self.db = Ovsdb(cfg.ovsdb)
        self.stop_event = threading.Event()
        self.wake = threading.Event()  # set by the core when its next deadline may be earlier
        self.core: MulticastCore | None = None
        self.api: LocalApiServer | None = None
        self.link: ControllerLink | None = None  # the controller's stream, when configured

    def _bridges(self) -> tuple[int | None, int | None, str]:
        cfg, db = self.cfg, self.db
        db.ensure_bridge(cfg.int_bridge, cfg.datapath_type,
                         controller=f"tcp:127.0.0.1:{cfg.controller_port}")
        db.set_table_names(cfg.int_bridge, self.pipeline)
        tunnel = None
        if cfg.encap_mode is Mode.ENCAP:
            db.ensure_tunnel_port(cfg.int_bridge, TUNNEL_PORT, cfg.tunnel_type, cfg.tunnel_ofport)
            tunnel = cfg.tunnel_ofport
        uplink = None
        if cfg.uplink:
            db.ensure_uplink(cfg.phy_bridge, cfg.datapath_type, cfg.uplink, cfg.int_bridge,
                             INT_PATCH, PHY_PATCH, cfg.uplink_ofport,
                             hwaddr=cfg.node_mac or None)
            uplink = cfg.uplink_ofport
        mac = cfg.node_mac or _interface_mac(cfg.phy_bridge if cfg.uplink else cfg.int_bridge)
        if uplink is not None and not pin_local_mac(cfg.ovs_rundir, cfg.phy_bridge, mac):
            raise RuntimeError(f"cannot pin {mac} to {cfg.phy_bridge}'s LOCAL port")
        return tunnel, uplink, mac

    def start(self) -> None:
        cfg = self.cfg
        self.switch.start()
        tunnel, uplink, mac = self._bridges()
        round_ = (self.db.get_round(cfg.int_bridge) or 0) % ROUND_LIMIT + 1
        self.switch.wait_connected(CONNECT_TIMEOUT_S)
        rates = cfg.punt_rates
        bridge = BridgeConfig(cfg.encap_mode, round_, cfg.node_ip, mac, tunnel_port=tunnel,
                              uplink_port=uplink, pod_punt_pps=rates.pod_pps,
                              tunnel_punt_pps=rates.tunnel_pps, uplink_punt_pps=rates.uplink_pps,
                              max_pod_frame=self.pod_mtu.max_send_frame,
                              max_received_frame=self.pod_mtu.max_receive_frame)
        rec = Reconciler(self.switch, self.pipeline)

        def seed(ip: str) -> None:
            seed_tunnel_neighbour(cfg.ovs_rundir, cfg.phy_bridge, ip)

        ports = OvsdbPodPorts(self.db, cfg.int_bridge)
        core = MulticastCore(cfg, bridge, self.switch, rec, ports,
                             neighbour_seeder=seed if tunnel is not None else None,
                             wake=self.wake.set,
                             policy_file=Path(cfg.api_socket).parent / POLICY_FILE,
                             uplink_file=Path(cfg.api_socket).parent / UPLINK_FILE)
        pods = ports.existing_pods()
        core.start(pods, install=lambda: rec.startup(round_), found=self.switch.dump())
        self.db.set_round(round_, cfg.int_bridge)
        router = PacketInRouter()
        router.register(Feature.IGMP, core.handle_packet_ins)
        router.register(Feature.OVERSIZE, core.oversize_log.handle_packet_ins)
        self.switch.on_packet_ins = router

        def reconnected(_dpid: int) -> None:
            # A restarted ovs-vswitchd lost its flows, its FDB pin and its tunnel neighbours:
            # restore all three (flows from the reconciler's desired state).
            if uplink is not None:
                pin_local_mac(cfg.ovs_rundir, cfg.phy_bridge, mac)
            if tunnel is not None:
                for ip in core.node_ips():
                    seed(ip)
            rec.startup(round_)

        self.switch.on_connected = reconnected
        self.core = core
        if cfg.metrics_port:
            start_http_server(cfg.metrics_port)
            register_collector(core, self.switch)
            REGISTRY.register(PolicyCollector(core.policy_counts))
        self.api = LocalApiServer(cfg.api_socket, AgentService(core, self.switch, self.pipeline,
                                                                 self.pod_mtu))
        self.api.start()
        if cfg.controller is not None:  # else the node set comes by the API's PUT /v1/nodes
            self.link = ControllerLink(cfg.controller, cfg.node_name, core)
            self.link.start()
        log.info("agent of %s up: mode %s, round %d, %d pods re-adopted", cfg.node_name,
                 cfg.encap_mode, round_, len(pods))

    def run(self) -> None:
        """Tick whenever the core has work due, until stopped."""
        core = self.core
        assert core is not None
        while not self.stop_event.is_set():
            core.tick()
            self.wake.wait(max(0.0, core.next_deadline() - time.monotonic()))
            self.wake.clear()

    def request_stop(self) -> None:
        self.stop_event.set()
        self.wake.set()

    def stop(self) -> None:
        self.request_stop()
        if self.link is not None:
            self.link.stop()
        if self.api is not None:
            self.api.stop()
        self.switch.stop()
        self.db.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mcast-agent", description="kube-mcast node agent")
    p.add_argument("--config", required=True, help="agent YAML config")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pyroute2").setLevel(logging.WARNING)
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"mcast-agent: {e}", file=sys.stderr)
        return 2
    if not cfg.multicast_enabled:
        log.warning("multicast is disabled (featureGates.Multicast / multicast.enable): idle")
    agent = Agent(cfg)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping (flows stay installed for the next start)", signum)
        agent.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if not cfg.multicast_enabled:
        agent.stop_event.wait()
        return 0
    agent.start()
    try:
        agent.run()
    finally:
        agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
