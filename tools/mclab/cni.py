"""How the lab attaches pods: CNI run the way kubelet (and Multus) would run it.

Owns the lab's network configurations and their execution:
- the *primary* network every pod gets, from Debian's reference plugins (``bridge`` on
  ``cni0`` + ``host-local``, default route via the node, masquerade to the underlay), as a
  cluster's own CNI would give it;
- **chained** attachment (the default): one conflist, the primary plugin then ``mcast-cni``,
  run in order with each plugin's result as the next one's ``prevResult``, and deleted in
  reverse order with the cached result, as libcni does;
- **multus** attachment: what Multus does for a pod annotated with our
  NetworkAttachmentDefinition: the primary conflist on ``eth0``, then our plugin alone with
  ``CNI_IFNAME=net1`` and the NAD's config (Multus is not packaged for Debian).

Plugins are found through a lab-private ``CNI_PATH`` directory of links: the reference
plugins of /usr/lib/cni and this venv's ``mcast-cni``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from tools.mclab import netns
from tools.mclab import state as st

REFERENCE_PLUGINS = Path("/usr/lib/cni")
PRIMARY_NET = "10.244.0.0/16"  # node i holds 10.244.i.0/24, routed between nodes
PRIMARY_BRIDGE = "cni0"
NAD_NAME = "kube-mcast"  # the NetworkAttachmentDefinition in manifests/multus/
ATTACH_MODES = ("chained", "multus")
MULTICAST_IFNAME = {"chained": "mc0", "multus": "net1"}
CNI_TIMEOUT = 60.0


class CniFailure(RuntimeError):
    """A plugin failed; the message carries its CNI error."""


def plugin_dir() -> Path:
    return st.lab_dir() / "cni-bin"


def install_plugins() -> None:
    """The lab's CNI_PATH: links to the reference plugins and to our plugin."""
    d = plugin_dir()
    d.mkdir(parents=True, exist_ok=True)
    for name in ("bridge", "host-local", "loopback"):
        link = d / name
        if not link.exists():
            link.symlink_to(REFERENCE_PLUGINS / name)
    ours = d / "mcast-cni"
    if not ours.exists():
        ours.symlink_to(Path(sys.executable).parent / "mcast-cni")


def primary_subnet(node: st.NodeState) -> str:
    return f"10.244.{node.index}.0/24"


def primary_plugin(node: st.NodeState) -> dict[str, Any]:
    """The cluster's own CNI for this node: a bridge with host-local IPAM and a default route."""
    subnet = ipaddress.ip_network(primary_subnet(node))
    return {
        "type": "bridge",
        "bridge": PRIMARY_BRIDGE,
        "isGateway": True,
        "isDefaultGateway": True,
        "ipMasq": True,
        "hairpinMode": False,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": str(subnet), "gateway": str(subnet[1])}]],
            "dataDir": f"{node.rundir}/ipam-primary",
        },
    }


def multicast_plugin(node: st.NodeState) -> dict[str, Any]:
    """Our plugin as the DaemonSet's installer appends it to the node's conflist."""
    return {
        "type": "mcast-cni",
        "agentSocket": node.api_socket,
        "interfaceName": MULTICAST_IFNAME["chained"],
        # the userspace datapath forwards veth frames with partial checksums unresolved
        "txChecksumOffload": False,
        "logFile": f"{node.rundir}/cni.log",
    }


def nad_config(node: st.NodeState) -> dict[str, Any]:
    """The config of manifests/multus/kube-mcast-nad.yaml, with this node's agent socket."""
    return {
        "cniVersion": "1.0.0",
        "name": NAD_NAME,
        "type": "mcast-cni",
        "agentSocket": node.api_socket,
        "txChecksumOffload": False,
        "logFile": f"{node.rundir}/cni.log",
    }


def conflist(node: st.NodeState, attach: str) -> dict[str, Any]:
    """The node's default network: primary alone (multus) or primary + ours (chained)."""
    plugins = [primary_plugin(node)]
    if attach == "chained":
        plugins.append(multicast_plugin(node))
    return {"cniVersion": "1.0.0", "name": "k8s-pod-network", "plugins": plugins}


@dataclass(frozen=True)
class Invocation:
    """One pod's identity as the runtime hands it to every plugin."""

    container_id: str
    netns: str  # path
    namespace: str
    name: str

    def env(self, command: str, ifname: str) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": self.container_id,
            "CNI_NETNS": self.netns,
            "CNI_IFNAME": ifname,
            "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={self.namespace};"
                        f"K8S_POD_NAME={self.name}",
            "CNI_PATH": str(plugin_dir()),
        }


def _exec(node: st.NodeState, inv: Invocation, command: str, ifname: str,
          conf: dict[str, Any]) -> dict[str, Any]:
    """Run the plugin ``conf["type"]`` in the node's namespace; its result (or {})."""
    binary = plugin_dir() / conf["type"]
    res = netns.run(node.netns, [str(binary)], env=inv.env(command, ifname),
                    input=json.dumps(conf), timeout=CNI_TIMEOUT)
    try:
        out = json.loads(res.stdout) if res.stdout.strip() else {}
    except ValueError:
        out = {"msg": res.stdout.strip()}
    if res.returncode != 0:
        msg = out.get("msg", "") if isinstance(out, dict) else ""
        details = out.get("details", "") if isinstance(out, dict) else ""
        raise CniFailure(f"{conf['type']} {command} ({ifname}): {msg or res.stderr.strip()}"
                         + (f" ({details})" if details else ""))
    return out if isinstance(out, dict) else {}


def _plugin_conf(netlist: dict[str, Any], plugin: dict[str, Any],
                 prev: dict[str, Any] | None) -> dict[str, Any]:
    conf = {"cniVersion": netlist["cniVersion"], "name": netlist["name"], **plugin}
    if prev is not None:
        conf["prevResult"] = prev
    return conf


def add_list(node: st.NodeState, inv: Invocation, netlist: dict[str, Any],
             ifname: str) -> dict[str, Any]:
    """ADD through a conflist, each plugin getting the previous one's result (libcni)."""
    prev: dict[str, Any] | None = None
    done: list[dict[str, Any]] = []
    try:
        for plugin in netlist["plugins"]:
            prev = _exec(node, inv, "ADD", ifname, _plugin_conf(netlist, plugin, prev))
            done.append(plugin)
    except CniFailure:
        # a failed ADD is undone by a DEL of what ran, as kubelet would on sandbox failure
        for plugin in reversed(done):
            with contextlib.suppress(CniFailure):
                _exec(node, inv, "DEL", ifname, _plugin_conf(netlist, plugin, prev))
        raise
    return prev or {}


def del_list(node: st.NodeState, inv: Invocation, netlist: dict[str, Any], ifname: str,
             cached: dict[str, Any] | None) -> list[str]:
    """DEL through a conflist in reverse, each with the cached ADD result; the errors."""
    errors = []
    for plugin in reversed(netlist["plugins"]):
        try:
            _exec(node, inv, "DEL", ifname, _plugin_conf(netlist, plugin, cached))
        except CniFailure as e:
            errors.append(str(e))
    return errors


@dataclass(frozen=True)
class Attached:
    """What a pod got: its multicast interface and address, its primary address, the results
    to hand back on DEL."""

    iface: str
    ip: str  # the multicast address: the source its datagrams carry
    primary_ip: str
    results: dict[str, Any]


def _ipv4_of(result: dict[str, Any], ifname: str | None) -> str:
    """The first IPv4 of ``result`` on the sandbox interface ``ifname`` (any, if None)."""
    itfs = result.get("interfaces") or []
    for ip in result.get("ips") or []:
        addr = ipaddress.ip_interface(ip["address"])
        idx = ip.get("interface")
        on = itfs[idx].get("name") if isinstance(idx, int) and idx < len(itfs) else None
        if addr.version == 4 and (ifname is None or on == ifname):
            return str(addr.ip)
    return ""


def attach(node: st.NodeState, inv: Invocation, mode: str) -> Attached:
    """ADD the pod to the node's networks as ``mode`` says; undone if any step fails."""
    netlist = conflist(node, mode)
    primary = add_list(node, inv, netlist, "eth0")
    primary_ip = _ipv4_of(primary, "eth0")
    if mode == "chained":
        iface = MULTICAST_IFNAME["chained"]
        return Attached(iface, _ipv4_of(primary, iface) or primary_ip, primary_ip,
                        {"default": primary})
    iface = MULTICAST_IFNAME["multus"]
    try:
        ours = _exec(node, inv, "ADD", iface, nad_config(node))
    except CniFailure:
        del_list(node, inv, netlist, "eth0", primary)
        raise
    return Attached(iface, _ipv4_of(ours, iface) or primary_ip, primary_ip,
                    {"default": primary, NAD_NAME: ours})


def detach(node: st.NodeState, inv: Invocation, mode: str, iface: str,
           results: dict[str, Any]) -> list[str]:
    """DEL the pod from its networks (secondary first, as Multus does); the errors."""
    errors = []
    if mode == "multus":
        conf = nad_config(node)
        if results.get(NAD_NAME):
            conf["prevResult"] = results[NAD_NAME]
        try:
            _exec(node, inv, "DEL", iface, conf)
        except CniFailure as e:
            errors.append(str(e))
    errors += del_list(node, inv, conflist(node, mode), "eth0", results.get("default"))
    return errors


def route_between_nodes(nodes: list[st.NodeState]) -> None:
    """Each node routes the other nodes' primary pod subnets via their underlay address, as
    a cluster's CNI (or cloud routes) would, so pods reach each other by unicast."""
    for node in nodes:
        with IPRoute(netns=node.netns, flags=0) as ipr:
            for other in nodes:
                if other is not node:
                    ipr.route("replace", dst=primary_subnet(other), gateway=other.ip)
