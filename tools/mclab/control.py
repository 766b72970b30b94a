"""The lab's control plane: a Kubernetes API (tools.kubeapi), the controller, and what kubelet
and the scheduler would write into the API.

Owns the control-plane namespace ``<prefix>cp`` on the underlay (192.168.77.250, where nodes
reach it as they would a cluster's API and controller Service), the API server and controller
processes in it, their credentials (a token per node, answered by the API server's
TokenReview as ``system:node:<name>``; an admin token; a self-signed certificate for the
controller's agent stream), the kubeconfigs (one inside the lab, one for the operator's
``kubectl`` on this machine through a loopback forwarder), and the Node, Namespace and Pod
objects of the lab's nodes and pods.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException

from tools.mclab import netns
from tools.mclab import state as st

CP_IP = f"{st.UNDERLAY_NET}.250"
API_PORT = 6443
STREAM_PORT = 10349
START_TIMEOUT = 30.0
REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "manifests" / "multicastgroup-crd.yaml"
POLICY_CRD = REPO / "manifests" / "multicastpolicy-crd.yaml"
SYSTEM_NAMESPACE = "kube-mcast"


class ControlPlaneError(RuntimeError):
    pass


def cp_netns() -> str:
    return f"{st.netns_prefix()}cp"


def cp_dir() -> Path:
    return st.lab_dir() / "cp"


def kubeconfig_path() -> Path:
    """The operator's kubeconfig (``mclab kubeconfig``): kubectl on this machine."""
    return st.lab_dir() / "kubeconfig"


def node_token_file(node: st.NodeState) -> Path:
    return Path(node.rundir) / "controller.token"


def ca_file() -> Path:
    return cp_dir() / "stream.crt"


def stream_url() -> str:
    return f"https://{CP_IP}:{STREAM_PORT}"


# ---------------------------------------------------------------------------- credentials


def _write(path: Path, text: str, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    tmp.replace(path)


def _self_signed(cert: Path, key: Path) -> None:
    """A certificate for the controller's stream at CP_IP (agents pin it as their CA)."""
    pk = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-mcast-controller")])
    now = datetime.datetime.now(datetime.UTC)
    crt = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
           .public_key(pk.public_key()).serial_number(x509.random_serial_number())
           .not_valid_before(now - datetime.timedelta(minutes=5))
           .not_valid_after(now + datetime.timedelta(days=7))
           .add_extension(x509.SubjectAlternativeName(
               [x509.IPAddress(ipaddress.IPv4Address(CP_IP))]), critical=False)
           .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
           .sign(pk, hashes.SHA256()))
    _write(cert, crt.public_bytes(serialization.Encoding.PEM).decode(), 0o644)
    _write(key, pk.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode())


def _kubeconfig(server: str, token: str, path: Path) -> None:
    name = "kube-mcast-lab"
    _write(path, yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": name, "cluster": {"server": server}}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name}, sort_keys=False))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------- processes


def _wait_listening(ns: str, port: int, proc: subprocess.Popen[str], what: str,
                    log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            netns.call_in(ns, lambda: socket.create_connection((CP_IP, port), 1).close())
            return
        except OSError:
            time.sleep(0.1)
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    raise ControlPlaneError(f"the lab's {what} did not start:\n{tail}")


def _start(ns: str | None, argv: list[str], log: Path) -> subprocess.Popen[str]:
    with open(log, "ab") as out:
        kwargs: dict[str, Any] = {"stdout": out, "stderr": subprocess.STDOUT,
                                  "stdin": subprocess.DEVNULL, "start_new_session": True,
                                  "env": {**os.environ, "PYTHONUNBUFFERED": "1"},
                                  "cwd": str(REPO)}
        if ns is None:
            return subprocess.Popen(argv, text=True, **kwargs)
        return netns.popen(ns, argv, **kwargs)


def start(lab: st.LabState, node_names: list[str]) -> None:
    """The API server and the controller in ``<prefix>cp`` (already on the underlay), the
    operator's forwarder and kubeconfig, the CRDs and the controller's namespace."""
    d = cp_dir()
    d.mkdir(parents=True, exist_ok=True)
    admin = secrets.token_hex(16)
    tokens = {"admin": admin, **{f"system:node:{n}": secrets.token_hex(16) for n in node_names}}
    _write(d / "tokens", "".join(f"{n}={t}\n" for n, t in tokens.items()))
    for n in node_names:
        _write(st.lab_dir() / n / "controller.token", tokens[f"system:node:{n}"])
    api_log = d / "kubeapi.log"
    api = _start(cp_netns(), [sys.executable, "-m", "tools.kubeapi", "serve", "--host", CP_IP,
                              "--port", str(API_PORT), "--token-file", str(d / "tokens"),
                              "--ready-file", str(d / "kubeapi.ready.json")], api_log)
    lab.control_plane = {"api_pid": api.pid}
    st.save(lab)
    _wait_listening(cp_netns(), API_PORT, api, "API server", api_log)

    # the operator's kubectl reaches the API through a loopback forwarder into the lab
    port = _free_port()
    # one connection each: socat forks this script, which enters the control-plane namespace
    # (a script, because socat would split an inline command at its colons)
    script = d / "forward.sh"
    _write(script, f"#!/bin/sh\nexec nsenter --net={netns.NETNS_DIR / cp_netns()} "
                   f"socat STDIO TCP:{CP_IP}:{API_PORT}\n", 0o755)
    fwd = _start(None, ["socat", "-L", str(d / "forwarder.lock"),
                        f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork",
                        f"EXEC:{script}"], d / "forwarder.log")
    lab.control_plane.update(forwarder_pid=fwd.pid, forwarder_port=port)
    st.save(lab)
    _kubeconfig(f"http://127.0.0.1:{port}", admin, kubeconfig_path())
    _kubeconfig(f"http://{CP_IP}:{API_PORT}", admin, d / "controller.kubeconfig")
    _wait_api(fwd)
    kubectl("apply", "-f", str(CRD), "-f", str(POLICY_CRD))
    kubectl("wait", "--for", "condition=established", "--timeout", "30s",
            "crd/multicastgroups.multicast.kube-mcast.io",
            "crd/multicastpolicies.multicast.kube-mcast.io",
            "crd/clustermulticastpolicies.multicast.kube-mcast.io")
    ensure_namespace(SYSTEM_NAMESPACE)

    _self_signed(d / "stream.crt", d / "stream.key")
    cfg = {
        "featureGates": {"Multicast": True},
        "kubeconfig": str(d / "controller.kubeconfig"),
        "identity": "controller-0",
        "stream": {"address": CP_IP, "port": STREAM_PORT, "certFile": str(d / "stream.crt"),
                   "keyFile": str(d / "stream.key")},
        "leaderElection": {"enable": True, "leaseNamespace": SYSTEM_NAMESPACE},
    }
    _write(d / "controller.yaml", yaml.safe_dump(cfg, sort_keys=False), 0o644)
    start_controller(lab)


def start_controller(lab: st.LabState) -> None:
    d = cp_dir()
    log = d / "controller.log"
    proc = _start(cp_netns(), [sys.executable, "-m", "controller.main", "--config",
                               str(d / "controller.yaml")], log)
    lab.control_plane["controller_pid"] = proc.pid
    st.save(lab)
    _wait_listening(cp_netns(), STREAM_PORT, proc, "controller", log)


def stop_controller(lab: st.LabState) -> None:
    from tools.mclab.ovsnode import terminate  # noqa: PLC0415 - avoids an import cycle

    pid = int(lab.control_plane.get("controller_pid", 0))
    if pid:
        terminate([pid], f"{cp_dir()}/controller.yaml")
        lab.control_plane["controller_pid"] = 0
        st.save(lab)


def agent_settings(node: st.NodeState) -> dict[str, Any]:
    """The agent config's ``controller`` section for ``node``."""
    return {"address": stream_url(), "tokenFile": str(node_token_file(node)),
            "caFile": str(ca_file())}


# ---------------------------------------------------------------------------- the API


def kubectl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["kubectl", "--kubeconfig", str(kubeconfig_path()), *args],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    if check and res.returncode != 0:
        raise ControlPlaneError(f"kubectl {' '.join(args)}: {res.stderr.strip()}")
    return res


def _wait_api(fwd: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and fwd.poll() is None:
        if kubectl("get", "--raw", "/version", check=False).returncode == 0:
            return
        time.sleep(0.2)
    raise ControlPlaneError("the lab's API server is not reachable through the forwarder")


def core() -> k8s.CoreV1Api:
    return k8s.CoreV1Api(k8s_config.new_client_from_config(str(kubeconfig_path())))


def ensure_namespace(name: str) -> None:
    try:
        core().create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    except ApiException as e:
        if e.status != 409:
            raise


def write_node(node: st.NodeState) -> None:
    """The Node object kubelet would register: name and InternalIP."""
    api = core()
    api.create_node(k8s.V1Node(metadata=k8s.V1ObjectMeta(name=node.name,
                                                          labels={"kubernetes.io/os": "linux"})))
    api.patch_node_status(node.name, {"status": {
        "addresses": [{"type": "InternalIP", "address": node.ip},
                      {"type": "Hostname", "address": node.name}],
        "conditions": [{"type": "Ready", "status": "True"}]}})


def write_pod(pod: st.PodState, node: st.NodeState) -> None:
    """The Pod as the scheduler and kubelet leave it: bound to its node, Running, its IP."""
    ensure_namespace(pod.namespace)
    api = core()
    api.create_namespaced_pod(pod.namespace, k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name=pod.name, namespace=pod.namespace, labels=pod.labels),
        spec=k8s.V1PodSpec(node_name=node.name,
                           containers=[k8s.V1Container(name="app", image="mclab/pod")])))
    ip = pod.primary_ip or pod.ip
    api.patch_namespaced_pod_status(pod.name, pod.namespace, {"status": {
        "phase": "Running", "hostIP": node.ip, "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": "True"}],
        "containerStatuses": [{"name": "app", "ready": True, "restartCount": 0,
                               "image": "mclab/pod", "imageID": "", "started": True,
                               "state": {"running": {}}}]}})


def delete_pod(pod: st.PodState) -> None:
    try:
        core().delete_namespaced_pod(pod.name, pod.namespace)
    except ApiException as e:
        if e.status != 404:
            raise


def label_pod(pod: st.PodState) -> None:
    """Make the Pod's labels exactly ``pod.labels``."""
    api = core()
    meta = api.read_namespaced_pod(pod.name, pod.namespace).metadata
    have = (meta.labels if meta is not None else None) or {}
    patch = {k: None for k in have if k not in pod.labels} | dict(pod.labels)
    api.patch_namespaced_pod(pod.name, pod.namespace, {"metadata": {"labels": patch}})


def status_lines(lab: st.LabState) -> list[str]:
    cp = lab.control_plane
    if not cp:
        return []
    from tools.mclab.ovsnode import is_alive  # noqa: PLC0415

    def alive(key: str) -> str:
        pid = int(cp.get(key, 0))
        return str(pid) if pid and is_alive(pid) else "dead"

    return [f"control plane: API {CP_IP}:{API_PORT} (pid {alive('api_pid')}), controller "
            f"{stream_url()} (pid {alive('controller_pid')}), kubeconfig {kubeconfig_path()}"]

