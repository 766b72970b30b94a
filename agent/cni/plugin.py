"""The ``mcast-cni`` CNI plugin (spec 1.0.0, also 0.4.0 and 0.3.x): ADD, DEL, CHECK, VERSION.

This module owns the plugin's commands and their order of work: the agent's say first (is the
container attached already, which MTUs), the veth pair and the pod side (via ``podnet``), the
addresses (via ``addressing``: IPAM or the primary /32), the agent attach/detach over the
local API, and rolling back a half-done ADD. It runs standalone (the pod's only network),
chained after the cluster's primary CNI (it adds its own interface, ``mc0``, beside the
primary's), or as a Multus secondary network (``net1``); the primary interface, its routes
and DNS are never touched.

Contract with the runtime: stdout carries exactly one JSON document (a result or a CNI error)
and nothing else; logs go to stderr, and to ``logFile`` when the network config names one.

Decisions:
- One multicast interface per pod: an ADD for a container the agent has attached through
  another interface adds nothing and returns prevResult unchanged (chained and Multus both
  configured would otherwise deliver every datagram twice).
- ADD for a (container, ifname) that already has its host veth fails with code 101 and
  changes nothing: the spec forbids a second ADD without DEL, and undoing a duplicate would
  tear down the first, working attachment.
- DEL does all local clean-up even when the agent cannot be reached, then reports code 11 so
  the runtime retries; the retry finds only the agent detach left to do. The detach names our
  interface, so the DEL of a network that added nothing leaves the attachment alone.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, TextIO

from pyroute2.netlink.exceptions import NetlinkError

from agent.api.client import AgentClient
from agent.api.types import ApiError
from agent.cni import addressing, podnet
from agent.cni.spec import (
    CURRENT_VERSION,
    DEFAULT_MCAST_ROUTE,
    ERR_AGENT,
    ERR_ALREADY_EXISTS,
    ERR_CHECK,
    ERR_CONTAINER_UNKNOWN,
    ERR_INTERNAL,
    ERR_INVALID_ENV,
    ERR_INVALID_NETCONF,
    ERR_NETLINK,
    ERR_TRY_AGAIN_LATER,
    SUPPORTED_VERSIONS,
    CniEnv,
    CniError,
    IpConfig,
    NetConf,
    Result,
)
from agent.interfacestore import PodAttach, PodInfo

log = logging.getLogger(__name__)

AGENT_TIMEOUT = 10.0  # seconds; kubelet's own CNI timeout is minutes, the agent answers in ms


def _agent_error(exc: ApiError, doing: str) -> CniError:
    # unreachable or silent agent: transient by nature (it may be restarting)
    code = ERR_TRY_AGAIN_LATER if exc.status in (503, 504) else ERR_AGENT
    return CniError(code, f"{doing}: {exc.message}", f"agent status {exc.status}")


def _attached_elsewhere(client: AgentClient, container_id: str, host: str) -> PodInfo | None:
    """The container's attachment through another interface than ``host``, if it has one."""
    try:
        pods = client.list_pods()
    except ApiError as exc:
        raise _agent_error(exc, "asking the agent for its pods") from exc
    return next((p for p in pods if p.container_id == container_id and p.host_ifname != host), None)


# -- commands ----------------------------------------------------------------------------------


class _Undo:
    """Compensating actions for a half-done ADD, run newest first, errors logged only."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], object]]] = []

    def push(self, what: str, fn: Callable[[], object]) -> None:
        self._steps.append((what, fn))

    def run(self) -> None:
        while self._steps:
            what, fn = self._steps.pop()
            try:
                fn()
                log.info("rolled back: %s", what)
            except Exception as exc:  # e.g. the agent that failed the attach is still down
                log.warning("roll-back step failed: %s: %s", what, exc)


def cmd_add(env: CniEnv, conf: NetConf, stdin: bytes) -> dict[str, Any]:
    ifname = addressing.multicast_ifname(env, conf)
    host = podnet.host_ifname(env.container_id, ifname)
    if not os.path.exists(env.netns):
        raise CniError(ERR_INVALID_ENV, f"CNI_NETNS {env.netns} does not exist")
    client = AgentClient(conf.agent_socket, timeout=AGENT_TIMEOUT)
    other = _attached_elsewhere(client, env.container_id, host)
    if other is not None:
        # one multicast interface per pod (chained and Multus both configured, say): the
        # agent keeps one port per container and would refuse a second attach anyway
        log.warning(
            "container %s already has its multicast interface (%s, host %s): %s adds nothing",
            env.container_id,
            other.ifname or "?",
            other.host_ifname,
            ifname,
        )
        if conf.prev_result is None:
            return Result().to_json(conf.cni_version)
        return {**conf.prev_result, "cniVersion": conf.cni_version}
    try:
        host_taken = podnet.link_exists(host)
        pod_taken = podnet.link_exists(ifname, env.netns)
    except (NetlinkError, OSError) as exc:
        raise CniError(ERR_NETLINK, f"inspecting {env.netns}: {exc}") from exc
    if host_taken:
        raise CniError(
            ERR_ALREADY_EXISTS,
            f"container {env.container_id} {ifname} is already set up "
            f"(host interface {host} exists); DEL it first",
        )
    if pod_taken:
        raise CniError(ERR_ALREADY_EXISTS, f"interface {ifname} already exists in {env.netns}")
    try:
        mtus = client.pod_network()
    except ApiError as exc:
        raise _agent_error(exc, "asking the agent for the pod network's MTUs") from exc
    # netconf 'mtu' sizes the interface; the route still has to fit the tunnel
    route_mtu = mtus.route if conf.mtu is None else min(mtus.route, conf.mtu)
    primary = None if conf.ipam is not None else addressing.primary_address(env, conf, ifname)

    undo = _Undo()
    try:
        try:
            veth = podnet.create_veth(host, ifname, env.netns, conf.mtu or mtus.interface)
        except NetlinkError as exc:
            code = ERR_ALREADY_EXISTS if exc.code == errno.EEXIST else ERR_NETLINK
            raise CniError(code, f"creating veth {host}/{ifname}: {exc}") from exc
        undo.push(f"delete veth {host}", lambda: podnet.delete_link(host))

        ipam = Result()
        if conf.ipam is not None:
            ipam = Result.parse(addressing.ipam_exec(env, conf, stdin, "ADD"), "IPAM result")
            undo.push("IPAM DEL", lambda: addressing.ipam_exec(env, conf, stdin, "DEL"))

        # interfaces[0] is the host end, [1] the pod end: IPs belong to the pod end
        ips = [IpConfig(ip.address, ip.gateway, 1) for ip in ipam.ips]
        if primary is not None:
            # the primary address again, alone: datagrams carry the pod's real source, no
            # subnet route competes with the primary interface's, and the result lists the
            # address once (under the primary interface)
            ips = [IpConfig(ipaddress.IPv4Interface(f"{primary}/32"), None, 1)]
        try:
            routes = podnet.configure_pod(
                env.netns, ifname, ips, ipam.routes, conf.multicast_route, route_mtu
            )
            # loose: multicast from a source routed via the primary interface is not dropped
            # when the runtime made rp_filter strict (the kernel applies max(all, interface))
            podnet.set_ip_conf(env.netns, ifname, "rp_filter", podnet.RP_FILTER_LOOSE)
            # IPv4 multicast is all br-int carries: IPv6 on this interface would only send
            # router solicitations and MLD reports for br-int to drop (and count as noise)
            try:
                podnet.set_ip_conf(env.netns, ifname, "disable_ipv6", 1, family="ipv6")
            except OSError as exc:  # a kernel without IPv6 has nothing to disable
                log.warning("cannot disable IPv6 on %s: %s", ifname, exc)
            if not conf.tx_checksum_offload:
                # the userspace (netdev) datapath forwards veth frames with the partial
                # checksum unresolved, so receivers drop UDP; the kernel datapath copes
                podnet.set_tx_checksum(ifname, False, env.netns)
                podnet.set_tx_checksum(host, False)
        except (NetlinkError, OSError) as exc:
            raise CniError(ERR_NETLINK, f"configuring {ifname} in {env.netns}: {exc}") from exc

        v4 = [ip for ip in ips if ip.address.version == 4]
        first_ip = str((v4 or ips)[0].address.ip) if ips else ""
        if primary is not None:
            primary_ip = str(primary)
        else:
            primary_ip = addressing.primary_of(env, conf, ifname)
        req = PodAttach(
            env.pod_namespace,
            env.pod_name,
            env.container_id,
            host,
            first_ip,
            veth.pod_mac,
            ifname=ifname,
            primary_ip=primary_ip,
        )
        # a timed-out attach may still have happened: detaching an unknown pod is harmless
        undo.push("agent detach", lambda: client.detach_pod(env.container_id, ifname))
        try:
            info = client.attach_pod(req)
        except ApiError as exc:
            raise _agent_error(exc, f"agent attach of {host}") from exc
        log.info(
            "attached %s/%s (%s) %s as %s, ofport %d",
            req.namespace,
            req.name,
            env.container_id,
            ifname,
            host,
            info.ofport,
        )
    except BaseException:
        undo.run()
        raise

    result = Result(
        ips=ips if primary is None else [],
        routes=routes,
        dns=ipam.dns,
        interfaces=[
            {"name": host, "mac": veth.host_mac},
            {"name": ifname, "mac": veth.pod_mac, "sandbox": env.netns},
        ],
    )
    return addressing.merge_prev(conf.prev_result, result).to_json(conf.cni_version)


def cmd_del(env: CniEnv, conf: NetConf, stdin: bytes) -> None:
    """Idempotent: whatever is already gone (netns, veth, agent pod, IP) is fine.

    The detach names our interface, so the DEL of a network that added nothing (the container
    had its multicast interface already) leaves the other network's attachment alone.
    """
    ifname = addressing.multicast_ifname(env, conf)
    host = podnet.host_ifname(env.container_id, ifname)
    agent_failure: CniError | None = None
    try:
        AgentClient(conf.agent_socket, timeout=AGENT_TIMEOUT).detach_pod(env.container_id, ifname)
    except ApiError as exc:
        agent_failure = _agent_error(exc, f"agent detach of {env.container_id}")
        log.warning("%s; cleaning up locally anyway", agent_failure.msg)
    try:
        podnet.delete_link(host)  # takes the pod end along, if the netns still exists
    except (NetlinkError, OSError) as exc:
        raise CniError(ERR_NETLINK, f"deleting {host}: {exc}") from exc
    if conf.ipam is not None:
        addressing.ipam_exec(env, conf, stdin, "DEL")
    if agent_failure is not None:
        raise agent_failure


def cmd_check(env: CniEnv, conf: NetConf, stdin: bytes) -> None:
    if conf.prev_result is None:
        raise CniError(ERR_INVALID_NETCONF, "CHECK needs prevResult")
    prev = Result.parse(conf.prev_result, "prevResult")
    ifname = addressing.multicast_ifname(env, conf)
    host = podnet.host_ifname(env.container_id, ifname)
    if not os.path.exists(env.netns):
        raise CniError(ERR_CONTAINER_UNKNOWN, f"CNI_NETNS {env.netns} does not exist")
    try:
        pods = AgentClient(conf.agent_socket, timeout=AGENT_TIMEOUT).list_pods()
    except ApiError as exc:
        raise _agent_error(exc, "asking the agent for its pods") from exc
    attached = next((p for p in pods if p.container_id == env.container_id), None)
    if attached is None:
        raise CniError(ERR_CHECK, f"the agent does not know container {env.container_id}")
    # our interfaces in prevResult: the host veth and the pod end
    ours = {
        i
        for i, itf in enumerate(prev.interfaces)
        if itf.get("name") == host or (itf.get("name") == ifname and itf.get("sandbox"))
    }
    if attached.host_ifname != host:
        if ours:
            raise CniError(
                ERR_CHECK,
                f"the agent knows container {env.container_id} on {attached.host_ifname}, "
                f"not {host}",
            )
        log.info("%s added nothing (attached through %s)", ifname, attached.host_ifname)
        return
    if conf.ipam is not None:
        addressing.ipam_exec(env, conf, stdin, "CHECK")
    try:
        pod = podnet.inspect_pod(env.netns, ifname)
        host_ok = podnet.link_exists(host)
        rp_filter = max(
            podnet.get_ip_conf(env.netns, "all", "rp_filter"),
            podnet.get_ip_conf(env.netns, ifname, "rp_filter") if pod else 0,
        )
    except (NetlinkError, OSError) as exc:
        raise CniError(ERR_NETLINK, f"inspecting {ifname} in {env.netns}: {exc}") from exc
    if pod is None:
        raise CniError(ERR_CHECK, f"{ifname} missing in {env.netns}")
    if not host_ok:
        raise CniError(ERR_CHECK, f"host interface {host} missing")
    if rp_filter == 1:
        raise CniError(ERR_CHECK, f"rp_filter on {ifname} in {env.netns} is strict")

    for i in ours:
        mac = prev.interfaces[i].get("mac")
        if prev.interfaces[i].get("sandbox") and mac and mac.lower() != pod.mac.lower():
            raise CniError(ERR_CHECK, f"{ifname} has MAC {pod.mac}, prevResult says {mac}")
    alone = len(ours) == len(prev.interfaces)  # prevResult is ours only: standalone
    if conf.ipam is None:
        want = ipaddress.IPv4Interface(f"{addressing.primary_address(env, conf, ifname)}/32")
        if want not in pod.addresses:
            raise CniError(ERR_CHECK, f"{ifname} in {env.netns} lacks the primary address {want}")
    for ip in prev.ips if conf.ipam is not None else []:
        mine = ip.interface in ours or (ip.interface is None and alone)
        if mine and ip.address not in pod.addresses:
            raise CniError(ERR_CHECK, f"{ifname} in {env.netns} lacks {ip.address}")
    # chained, the other routes are the primary plugin's business
    for route in [r for r in prev.routes if alone or r.dst == DEFAULT_MCAST_ROUTE]:
        if not any(
            dst == str(route.dst) and (route.gw is None or gw == str(route.gw))
            for dst, gw in pod.routes
        ):
            raise CniError(ERR_CHECK, f"route to {route.dst} via {ifname} missing")


# -- entry point -------------------------------------------------------------------------------


def _setup_logging(conf: NetConf | None) -> None:
    root = logging.getLogger()
    if not root.handlers:
        stderr = logging.StreamHandler(sys.stderr)
        stderr.setLevel(logging.WARNING)
        root.addHandler(stderr)
        root.setLevel(logging.DEBUG)
        # pyroute2 logs every netlink message at DEBUG: far too much for a per-pod log
        for noisy in ("pyroute2", "asyncio"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    if conf is not None and conf.log_file:
        try:
            handler = logging.FileHandler(conf.log_file)
        except OSError as exc:
            log.warning("cannot open logFile %s: %s", conf.log_file, exc)
            return
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
        )
        root.addHandler(handler)


def run(environ: dict[str, str], stdin: bytes) -> dict[str, Any] | None:
    """Execute one invocation; returns the JSON to print (None for DEL/CHECK success)."""
    env = CniEnv.from_environ(environ)
    if env.command == "VERSION":
        return {"cniVersion": CURRENT_VERSION, "supportedVersions": list(SUPPORTED_VERSIONS)}
    conf = NetConf.parse(stdin)
    _setup_logging(conf)
    log.info(
        "%s container=%s netns=%s ifname=%s", env.command, env.container_id, env.netns, env.ifname
    )
    if env.command == "ADD":
        return cmd_add(env, conf, stdin)
    if env.command == "DEL":
        cmd_del(env, conf, stdin)
    else:
        cmd_check(env, conf, stdin)
    return None


def _version_of(stdin: bytes) -> str:
    """The cniVersion to answer an error in: the caller's if we can tell, else ours."""
    try:
        version = json.loads(stdin).get("cniVersion")
    except (ValueError, AttributeError):
        return CURRENT_VERSION
    return version if version in SUPPORTED_VERSIONS else CURRENT_VERSION


def _claim_stdout() -> TextIO:
    """Keep the real stdout for the result; point fd 1 at stderr for everyone else.

    Anything a library or a forked helper might print would otherwise corrupt the result.
    """
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return out


def main() -> int:
    out = _claim_stdout()
    _setup_logging(None)
    stdin = b""
    try:
        if os.environ.get("CNI_COMMAND") != "VERSION" or not sys.stdin.isatty():
            stdin = sys.stdin.buffer.read()
        answer = run(dict(os.environ), stdin)
        rc = 0
    except CniError as exc:
        log.error("%s failed: %s (%s)", os.environ.get("CNI_COMMAND"), exc.msg, exc.details)
        answer, rc = exc.to_json(_version_of(stdin)), 1
    except Exception as exc:
        log.exception("unexpected failure")
        err = CniError(ERR_INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
        answer, rc = err.to_json(_version_of(stdin)), 1
    if answer is not None:
        json.dump(answer, out)
        out.write("\n")
    out.flush()
    return rc


if __name__ == "__main__":
    sys.exit(main())
