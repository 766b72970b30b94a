"""The local lab: underlay, nodes (own OVS + agent each), pods through CNI, externals.

Everything lives in network namespaces named ``mclab-*`` and under the lab directory; nothing
touches the machine's own interfaces. ``up`` cleans up after itself when it fails halfway,
and tells a ``progress`` callback each step as it finishes (underlay, control plane, each
node's OVS and agent, routes); ``down`` removes every namespace, process and file the lab made,
state file or not.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pyroute2 import IPRoute

from agent.api.client import AgentClient
from agent.api.types import ApiError
from agent.cni.podnet import set_tx_checksum
from agent.config import ConfigError, parse_config
from tools.mclab import cni, control, netns
from tools.mclab import state as st
from tools.mclab.ovsnode import OvsNode, pids_naming, require_ovs, terminate
from wire.nodes import NodeInfo

log = logging.getLogger(__name__)

AGENT_START_TIMEOUT = 30.0


class LabError(RuntimeError):
    """A lab command cannot do what was asked; the message says why."""


# ---------------------------------------------------------------------------- links


def _veth(ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
    """A veth pair with one end in each namespace, both up."""
    with IPRoute(netns=ns_a, flags=0) as ipr:
        ipr.link("add", ifname=name_a, kind="veth",
                 peer={"ifname": name_b, "net_ns_fd": str(netns.NETNS_DIR / ns_b)})
        ipr.link("set", index=ipr.link_lookup(ifname=name_a)[0], state="up")
    with IPRoute(netns=ns_b, flags=0) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname=name_b)[0], state="up")


def _enslave(ns: str, ifname: str, bridge: str) -> None:
    with IPRoute(netns=ns, flags=0) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0],
                 master=ipr.link_lookup(ifname=bridge)[0])


def _address(ns: str, ifname: str, cidr: str, mac: str | None = None) -> None:
    ip, plen = cidr.split("/")
    with IPRoute(netns=ns, flags=0) as ipr:
        idx = ipr.link_lookup(ifname=ifname)[0]
        if mac:
            ipr.link("set", index=idx, address=mac)
        ipr.addr("add", index=idx, address=ip, prefixlen=int(plen))
        ipr.link("set", index=idx, state="up")


def _multicast_route(ns: str, ifname: str) -> None:
    with IPRoute(netns=ns, flags=0) as ipr:
        ipr.route("add", dst="224.0.0.0/4", oif=ipr.link_lookup(ifname=ifname)[0])


def _tx_off(ns: str, ifname: str) -> None:
    # The userspace datapath forwards veth frames with partial checksums as they are: UDP from
    # a sender whose veth offloads the checksum arrives corrupt. Senders must checksum in full.
    set_tx_checksum(ifname, False, netns=str(netns.NETNS_DIR / ns))


def _short(prefix: str, name: str) -> str:
    """An interface name ≤ 15 characters that stays unique for long lab object names."""
    return prefix + hashlib.sha1(name.encode()).hexdigest()[: 15 - len(prefix)]


# ---------------------------------------------------------------------------- agent


def _agent_config(lab: st.LabState, node: st.NodeState, ovs: OvsNode) -> Path:
    cfg = {
        "featureGates": {"Multicast": True},
        "trafficEncapMode": lab.mode,
        "multicast": {
            "enable": True,
            "multicastInterfaces": ["eth0"],
            "igmpQueryInterval": lab.query_interval,
            "igmpQueryVersions": [1, 2, 3],
        },
        "node": {"name": node.name, "ip": node.ip, "mac": node.mac},
        "ovs": {"db": ovs.db_sock, "runDir": str(ovs.rundir), "datapathType": "netdev",
                "tunnelType": "vxlan"},
        "apiSocket": node.api_socket,
        "metricsPort": 9464,
    }
    if lab.control_plane:
        cfg["controller"] = control.agent_settings(node)
    path = Path(node.rundir) / "agent.yaml"
    path.write_text(yaml.safe_dump(merged(cfg, lab.agent_config), sort_keys=False))
    return path


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` laid over it, mapping by mapping."""
    out = dict(base)
    for key, value in extra.items():
        old = out.get(key)
        out[key] = merged(old, value) if isinstance(old, dict) and isinstance(value, dict) \
            else value
    return out


def load_agent_config(path: str) -> dict[str, Any]:
    """The ``--agent-config`` file: a YAML mapping, checked by the agent's own parser now
    rather than by a node that fails to start."""
    try:
        extra = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise LabError(f"--agent-config {path}: {e}") from None
    if not isinstance(extra, dict):
        raise LabError(f"--agent-config {path}: expected a YAML mapping")
    sample = {"node": {"name": "check", "ip": "192.0.2.1"}}
    try:
        parse_config(merged(sample, extra))
    except ConfigError as e:
        raise LabError(f"--agent-config {path}: {e}") from None
    return extra


def start_agent(lab: st.LabState, node: st.NodeState) -> None:
    """Start the node's agent inside its namespace and wait until its API answers."""
    ovs = _ovs(node)
    cfg = _agent_config(lab, node, ovs)
    logf = open(Path(node.rundir) / "agent.log", "ab")  # noqa: SIM115 - handed to the child
    proc = netns.popen(node.netns, [sys.executable, "-m", "agent.main", "--config", str(cfg)],
                       stdout=logf, stderr=logf, stdin=None, start_new_session=True,
                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
    logf.close()
    node.agent_pid = proc.pid
    client = AgentClient(node.api_socket, timeout=5)
    deadline = time.monotonic() + AGENT_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LabError(f"agent of {node.name} exited with {proc.returncode}:\n"
                           + _tail(Path(node.rundir) / "agent.log"))
        try:
            client.health()
            return
        except ApiError:
            time.sleep(0.1)
    raise LabError(f"agent of {node.name} did not answer within {AGENT_START_TIMEOUT:.0f}s:\n"
                   + _tail(Path(node.rundir) / "agent.log"))


def stop_agent(node: st.NodeState) -> None:
    if node.agent_pid:
        terminate([node.agent_pid], f"--config {node.rundir}/agent.yaml")
        node.agent_pid = 0


def restart_agent(node_name: str) -> None:
    """Stop a node's agent and start a new one, as a DaemonSet rollout would."""
    lab = require_lab()
    node = lab.node(node_name)
    stop_agent(node)
    start_agent(lab, node)
    st.save(lab)
    announce_nodes(lab)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _ovs(node: st.NodeState) -> OvsNode:
    return OvsNode(node.name, Path(node.rundir) / "ovs", node.netns)


def announce_nodes(lab: st.LabState) -> None:
    """Tell every agent the node set: the controller does, from the Node objects, when the
    lab has a control plane; without one, the lab does it through the agents' debug hook."""
    if lab.control_plane:
        return
    nodes = [NodeInfo(n.name, (n.ip,)) for n in lab.nodes]
    for n in lab.nodes:
        AgentClient(n.api_socket, timeout=10).set_nodes(nodes)


# ---------------------------------------------------------------------------- up / down


Progress = Callable[[str], None]
"""Told each step of ``up`` as it is done (``mclab up`` prints them on stderr)."""


def _quiet(_step: str) -> None:
    pass


def up(nodes: int, mode: str, query_interval: str,
       agent_config: dict[str, Any] | None = None, attach: str = "chained",
       control_plane: bool = True, progress: Progress = _quiet) -> st.LabState:
    require_ovs()
    if attach not in cni.ATTACH_MODES:
        raise LabError(f"--attach {attach}: one of {', '.join(cni.ATTACH_MODES)}")
    if st.load() is not None or netns.list_netns(st.netns_prefix()):
        raise LabError(f"a lab is already up (state in {st.lab_dir()}); run 'mclab down' first")
    if not 1 <= nodes <= 50:
        raise LabError(f"--nodes {nodes}: between 1 and 50")
    lab = st.LabState(mode=mode, query_interval=query_interval, attach=attach,
                      agent_config=agent_config or {})
    try:
        st.lab_dir().mkdir(parents=True, exist_ok=True)
        st.save(lab)
        netns.create(st.underlay_ns())
        with IPRoute(netns=st.underlay_ns(), flags=0) as ipr:
            ipr.link("add", ifname=st.UNDERLAY_BRIDGE, kind="bridge")
            ipr.link("set", index=ipr.link_lookup(ifname=st.UNDERLAY_BRIDGE)[0], state="up")
        cni.install_plugins()
        progress("underlay bridge and CNI plugins")
        if control_plane:
            netns.create(control.cp_netns())
            _veth(st.underlay_ns(), "ul-cp", control.cp_netns(), "eth0")
            _enslave(st.underlay_ns(), "ul-cp", st.UNDERLAY_BRIDGE)
            _address(control.cp_netns(), "eth0", f"{control.CP_IP}/24")
            _tx_off(control.cp_netns(), "eth0")  # TCP to the nodes crosses their netdev br-phy
            control.start(lab, [f"node{i}" for i in range(1, nodes + 1)])
            progress("control plane: API server and controller")
        for i in range(1, nodes + 1):
            lab.nodes.append(_make_node(lab, i, progress))
            st.save(lab)
            if control_plane:
                control.write_node(lab.nodes[-1])
        cni.route_between_nodes(lab.nodes)
        announce_nodes(lab)
        progress(f"{nodes} node(s) routed to each other, the node set announced")
    except BaseException:
        down()
        raise
    return lab


def _make_node(lab: st.LabState, i: int, progress: Progress = _quiet) -> st.NodeState:
    name = f"node{i}"
    node = st.NodeState(name=name, netns=f"{st.netns_prefix()}{name}", ip=f"{st.UNDERLAY_NET}.{i}",
                        mac=f"02:77:00:00:00:{i:02x}", rundir=str(st.lab_dir() / name))
    Path(node.rundir).mkdir(parents=True, exist_ok=True)
    netns.create(node.netns)
    ovs = _ovs(node)
    ovs.start()
    progress(f"{name}: namespace and OVS")
    _veth(st.underlay_ns(), f"ul-{name}", node.netns, "eth0")
    _enslave(st.underlay_ns(), f"ul-{name}", st.UNDERLAY_BRIDGE)
    _tx_off(node.netns, "eth0")
    # Host network of the node: its address lives on br-phy, which holds the uplink.
    ovs.vsctl("add-br", "br-phy", "--", "set", "bridge", "br-phy", "datapath_type=netdev",
              f"other_config:hwaddr={node.mac}", "--", "add-port", "br-phy", "eth0")
    _address(node.netns, "br-phy", f"{node.ip}/24")
    start_agent(lab, node)
    progress(f"{name}: agent answering on {node.api_socket}")
    return node


def down() -> None:
    """Remove everything the lab made. A no-op when nothing is up."""
    lab = st.load()
    if lab is not None:
        for node in lab.nodes:
            stop_agent(node)
    marker = f"{st.lab_dir()}/"
    terminate(pids_naming(marker, exclude=(os.getpid(),)), marker)
    for ns in netns.list_netns(st.netns_prefix()):
        netns.delete(ns)
    if st.lab_dir().exists():
        shutil.rmtree(st.lab_dir(), ignore_errors=True)


def kubeconfig() -> str:
    lab = require_lab()
    if not lab.control_plane:
        raise LabError("this lab has no control plane (mclab up --no-control-plane)")
    return str(control.kubeconfig_path())


def controller(action: str) -> None:
    lab = require_lab()
    if not lab.control_plane:
        raise LabError("this lab has no control plane (mclab up --no-control-plane)")
    if action in ("stop", "restart"):
        control.stop_controller(lab)
    if action in ("start", "restart"):
        control.start_controller(lab)


def require_lab() -> st.LabState:
    lab = st.load()
    if lab is None:
        raise LabError("no lab is up: run 'mclab up' first")
    return lab


# ---------------------------------------------------------------------------- pods


def _invocation(pod: st.PodState) -> cni.Invocation:
    return cni.Invocation(pod.container_id, str(netns.NETNS_DIR / pod.netns), pod.namespace,
                          pod.name)


def pod_create(name: str, node_name: str, namespace: str, labels: dict[str, str]) -> st.PodState:
    lab = require_lab()
    node = lab.node(node_name)
    if lab.pod(name, namespace) is not None:
        raise LabError(f"pod {namespace}/{name} already exists")
    pod = st.PodState(namespace=namespace, name=name, node=node.name,
                      netns=f"{st.netns_prefix()}pod-{namespace}-{name}",
                      container_id=uuid.uuid4().hex, ip="", labels=labels)
    netns.create(pod.netns)
    try:
        got = cni.attach(node, _invocation(pod), lab.attach)
    except cni.CniFailure as e:
        netns.delete(pod.netns)
        raise LabError(f"CNI ADD for {pod.ref} failed: {e}") from None
    except BaseException:
        netns.delete(pod.netns)
        raise
    pod.iface, pod.ip, pod.primary_ip, pod.results = got.iface, got.ip, got.primary_ip, got.results
    lab.pods.append(pod)
    st.save(lab)
    if lab.control_plane:
        control.write_pod(pod, node)
    return pod


def pod_label(name: str, namespace: str, labels: dict[str, str], remove: list[str]) -> None:
    """Set ``labels`` and drop the keys in ``remove`` (``kubectl label`` semantics)."""
    lab = require_lab()
    pod = lab.pod(name, namespace)
    if pod is None:
        raise LabError(f"pod {namespace}/{name} not found")
    pod.labels = {k: v for k, v in {**pod.labels, **labels}.items() if k not in remove}
    st.save(lab)
    if lab.control_plane:
        control.label_pod(pod)


def pod_delete(name: str, namespace: str) -> None:
    lab = require_lab()
    pod = lab.pod(name, namespace)
    if pod is None:
        raise LabError(f"pod {namespace}/{name} not found")
    if lab.control_plane:
        control.delete_pod(pod)
    errors = cni.detach(lab.node(pod.node), _invocation(pod), lab.attach, pod.iface, pod.results)
    if errors:
        raise LabError(f"CNI DEL for {pod.ref} failed: " + "; ".join(errors))
    netns.delete(pod.netns)
    lab.pods.remove(pod)
    st.save(lab)


# ---------------------------------------------------------------------------- externals


def external_create(name: str) -> st.ExternalState:
    lab = require_lab()
    if lab.external(name) is not None:
        raise LabError(f"external host {name} already exists")
    used = {int(e.ip.rsplit(".", 1)[1]) for e in lab.externals}
    octet = next(k for k in range(200, 255) if k not in used)
    ext = st.ExternalState(name=name, netns=f"{st.netns_prefix()}ext-{name}",
                           ip=f"{st.UNDERLAY_NET}.{octet}")
    netns.create(ext.netns)
    try:
        ul_side = _short("ux", name)
        _veth(st.underlay_ns(), ul_side, ext.netns, "eth0")
        _enslave(st.underlay_ns(), ul_side, st.UNDERLAY_BRIDGE)
        _address(ext.netns, "eth0", f"{ext.ip}/24")
        _multicast_route(ext.netns, "eth0")
        _tx_off(ext.netns, "eth0")
    except BaseException:
        netns.delete(ext.netns)
        raise
    lab.externals.append(ext)
    st.save(lab)
    return ext


def external_delete(name: str) -> None:
    lab = require_lab()
    ext = lab.external(name)
    if ext is None:
        raise LabError(f"external host {name} not found")
    netns.delete(ext.netns)
    lab.externals.remove(ext)
    st.save(lab)


def netns_of(name: str, namespace: str | None) -> str:
    """The namespace `mclab exec` enters: a pod (default namespace) or an external host."""
    lab = require_lab()
    pod = lab.pod(name, namespace or "default")
    if pod is not None:
        return pod.netns
    if namespace is None:
        ext = lab.external(name)
        if ext is not None:
            return ext.netns
    raise LabError(f"no pod {namespace or 'default'}/{name}"
                   + ("" if namespace else " and no external host of that name"))
