"""The ``mcast-cni`` CNI plugin (spec 1.0.0, also 0.4.0): ADD, DEL, CHECK, VERSION.

This module owns the plugin's commands and their order of work: the veth pair (via
``podnet``), IPAM delegated to another plugin binary found in ``CNI_PATH`` (host-local in
tests), the agent attach/detach over the local API, and rolling back a half-done ADD.

Contract with the runtime: stdout carries exactly one JSON document (a result or a CNI error)
and nothing else; logs go to stderr, and to ``logFile`` when the network config names one.

Decisions:
- ADD for a (container, ifname) that already has its host veth fails with code 101 and
  changes nothing: the spec forbids a second ADD without DEL, and undoing a duplicate would
  tear down the first, working attachment.
- DEL does all local clean-up even when the agent cannot be reached, then reports code 11 so
  the runtime retries; the retry finds only the agent detach left to do.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from pyroute2.netlink.exceptions import NetlinkError

from agent.api.client import AgentClient
from agent.api.types import ApiError
from agent.cni import podnet
from agent.cni.spec import (
    CURRENT_VERSION,
    ERR_AGENT,
    ERR_ALREADY_EXISTS,
    ERR_CHECK,
    ERR_CONTAINER_UNKNOWN,
    ERR_INTERNAL,
    ERR_INVALID_ENV,
    ERR_INVALID_NETCONF,
    ERR_IPAM,
    ERR_NETLINK,
    ERR_TRY_AGAIN_LATER,
    SUPPORTED_VERSIONS,
    CniEnv,
    CniError,
    IpConfig,
    NetConf,
    Result,
)
from agent.interfacestore import PodAttach

log = logging.getLogger(__name__)

AGENT_TIMEOUT = 10.0  # seconds; kubelet's own CNI timeout is minutes, the agent answers in ms
IPAM_TIMEOUT = 60.0


def _agent_error(exc: ApiError, doing: str) -> CniError:
    # unreachable or silent agent: transient by nature (it may be restarting)
    code = ERR_TRY_AGAIN_LATER if exc.status in (503, 504) else ERR_AGENT
    return CniError(code, f"{doing}: {exc.message}", f"agent status {exc.status}")


# -- IPAM delegation ---------------------------------------------------------------------------


def _ipam_exec(env: CniEnv, conf: NetConf, stdin: bytes, command: str) -> dict[str, Any] | None:
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
    host = podnet.host_ifname(env.container_id, env.ifname)
    if not os.path.exists(env.netns):
        raise CniError(ERR_INVALID_ENV, f"CNI_NETNS {env.netns} does not exist")
    try:
        host_taken = podnet.link_exists(host)
        pod_taken = podnet.link_exists(env.ifname, env.netns)
    except (NetlinkError, OSError) as exc:
        raise CniError(ERR_NETLINK, f"inspecting {env.netns}: {exc}") from exc
    if host_taken:
        raise CniError(
            ERR_ALREADY_EXISTS,
            f"container {env.container_id} {env.ifname} is already set up "
            f"(host interface {host} exists); DEL it first",
        )
    if pod_taken:
        raise CniError(ERR_ALREADY_EXISTS, f"interface {env.ifname} already exists in {env.netns}")

    undo = _Undo()
    try:
        try:
            veth = podnet.create_veth(host, env.ifname, env.netns, conf.mtu)
        except NetlinkError as exc:
            code = ERR_ALREADY_EXISTS if exc.code == errno.EEXIST else ERR_NETLINK
            raise CniError(code, f"creating veth {host}/{env.ifname}: {exc}") from exc
        undo.push(f"delete veth {host}", lambda: podnet.delete_link(host))

        ipam = Result()
        if conf.ipam is not None:
            ipam = Result.parse(_ipam_exec(env, conf, stdin, "ADD"), "IPAM result")
            undo.push("IPAM DEL", lambda: _ipam_exec(env, conf, stdin, "DEL"))

        # interfaces[0] is the host end, [1] the pod end: IPs belong to the pod end
        ips = [IpConfig(ip.address, ip.gateway, 1) for ip in ipam.ips]
        try:
            routes = podnet.configure_pod(
                env.netns, env.ifname, ips, ipam.routes, conf.multicast_route
            )
            if not conf.tx_checksum_offload:
                # the userspace (netdev) datapath forwards veth frames with the partial
                # checksum unresolved, so receivers drop UDP; the kernel datapath copes
                podnet.set_tx_checksum(env.ifname, False, env.netns)
                podnet.set_tx_checksum(host, False)
        except (NetlinkError, OSError) as exc:
            raise CniError(ERR_NETLINK, f"configuring {env.ifname} in {env.netns}: {exc}") from exc

        v4 = [ip for ip in ips if ip.address.version == 4]
        first_ip = str((v4 or ips)[0].address.ip) if ips else ""
        req = PodAttach(
            env.pod_namespace, env.pod_name, env.container_id, host, first_ip, veth.pod_mac
        )
        client = AgentClient(conf.agent_socket, timeout=AGENT_TIMEOUT)
        # a timed-out attach may still have happened: detaching an unknown pod is harmless
        undo.push("agent detach", lambda: client.detach_pod(env.container_id))
        try:
            info = client.attach_pod(req)
        except ApiError as exc:
            raise _agent_error(exc, f"agent attach of {host}") from exc
        log.info(
            "attached %s/%s (%s) as %s, ofport %d",
            req.namespace,
            req.name,
            env.container_id,
            host,
            info.ofport,
        )
    except BaseException:
        undo.run()
        raise

    result = Result(
        ips=ips,
        routes=routes,
        dns=ipam.dns,
        interfaces=[
            {"name": host, "mac": veth.host_mac},
            {"name": env.ifname, "mac": veth.pod_mac, "sandbox": env.netns},
        ],
    )
    return _merge_prev(conf.prev_result, result).to_json(conf.cni_version)


def _merge_prev(prev: dict[str, Any] | None, ours: Result) -> Result:
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


def cmd_del(env: CniEnv, conf: NetConf, stdin: bytes) -> None:
    """Idempotent: whatever is already gone (netns, veth, agent pod, IP) is fine."""
    host = podnet.host_ifname(env.container_id, env.ifname)
    agent_failure: CniError | None = None
    try:
        AgentClient(conf.agent_socket, timeout=AGENT_TIMEOUT).detach_pod(env.container_id)
    except ApiError as exc:
        agent_failure = _agent_error(exc, f"agent detach of {env.container_id}")
        log.warning("%s; cleaning up locally anyway", agent_failure.msg)
    try:
        podnet.delete_link(host)  # takes the pod end along, if the netns still exists
    except (NetlinkError, OSError) as exc:
        raise CniError(ERR_NETLINK, f"deleting {host}: {exc}") from exc
    if conf.ipam is not None:
        _ipam_exec(env, conf, stdin, "DEL")
    if agent_failure is not None:
        raise agent_failure


def cmd_check(env: CniEnv, conf: NetConf, stdin: bytes) -> None:
    if conf.prev_result is None:
        raise CniError(ERR_INVALID_NETCONF, "CHECK needs prevResult")
    prev = Result.parse(conf.prev_result, "prevResult")
    host = podnet.host_ifname(env.container_id, env.ifname)
    if not os.path.exists(env.netns):
        raise CniError(ERR_CONTAINER_UNKNOWN, f"CNI_NETNS {env.netns} does not exist")
    if conf.ipam is not None:
        _ipam_exec(env, conf, stdin, "CHECK")
    try:
        pod = podnet.inspect_pod(env.netns, env.ifname)
        host_ok = podnet.link_exists(host)
    except (NetlinkError, OSError) as exc:
        raise CniError(ERR_NETLINK, f"inspecting {env.ifname} in {env.netns}: {exc}") from exc
    if pod is None:
        raise CniError(ERR_CHECK, f"{env.ifname} missing in {env.netns}")
    if not host_ok:
        raise CniError(ERR_CHECK, f"host interface {host} missing")

    ours = [
        i
        for i, itf in enumerate(prev.interfaces)
        if itf.get("name") == env.ifname and itf.get("sandbox")
    ]
    for i in ours:
        mac = prev.interfaces[i].get("mac")
        if mac and mac.lower() != pod.mac.lower():
            raise CniError(ERR_CHECK, f"{env.ifname} has MAC {pod.mac}, prevResult says {mac}")
    for ip in prev.ips:
        if (ip.interface is None or ip.interface in ours) and ip.address not in pod.addresses:
            raise CniError(ERR_CHECK, f"{env.ifname} in {env.netns} lacks {ip.address}")
    for route in prev.routes:
        if not any(
            dst == str(route.dst) and (route.gw is None or gw == str(route.gw))
            for dst, gw in pod.routes
        ):
            raise CniError(ERR_CHECK, f"route to {route.dst} via {env.ifname} missing")

    try:
        pods = AgentClient(conf.agent_socket, timeout=AGENT_TIMEOUT).list_pods()
    except ApiError as exc:
        raise _agent_error(exc, "asking the agent for its pods") from exc
    if not any(p.container_id == env.container_id and p.host_ifname == host for p in pods):
        raise CniError(ERR_CHECK, f"the agent does not know container {env.container_id} on {host}")


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
