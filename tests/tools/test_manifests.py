"""The shipped manifests: valid Kubernetes objects (checked offline against Kubernetes' JSON
schemas), consistent with what reads them (the agent's and the controller's config parsers,
the installer's command line, the CNI plugin's netconf parser), RBAC that grants what the code
calls and no more, and applied to the lab API server (tools.kubeapi) with the real kubectl,
following README's "Install on a cluster" to the letter."""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import os
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes import client as k8s
from kubernetes_validate.utils import latest_version

from agent.cni.install import build_parser
from agent.cni.install import main as install_main
from agent.cni.spec import NetConf
from agent.config import parse_config
from controller import config as controller_config
from controller import groups as controller_groups
from pipeline.multicast import Mode
from tools.kubeapi.server import ApiServerProcess, kubeconfig, spawn
from tools.mcprobe import build_parser as mcprobe_parser
from wire.stream import DEFAULT_PORT

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"


def test_agent_configmap_is_a_valid_agent_config() -> None:
    cm = yaml.safe_load((MANIFESTS / "agent-config.yaml").read_text())
    assert cm["kind"] == "ConfigMap"
    cfg = parse_config(yaml.safe_load(cm["data"]["agent.yaml"]),
                       env={"NODE_NAME": "worker-1", "NODE_IP": "10.0.0.11"})
    assert cfg.multicast_enabled and cfg.encap_mode is Mode.ENCAP
    assert cfg.query_interval_s == 125 and cfg.datapath_type == "system"


def test_multicastgroup_crd_prints_group_and_pods() -> None:
    crd = yaml.safe_load((MANIFESTS / "multicastgroup-crd.yaml").read_text())
    assert crd["spec"]["scope"] == "Cluster"
    (version,) = crd["spec"]["versions"]
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["GROUP", "PODS", "AGE"]


# -- offline schema validation -----------------------------------------------------------------
# kubernetes-validate ships Kubernetes' JSON schemas (strict: unknown fields are errors), so
# this needs no cluster and no network. Checked against the oldest Kubernetes we support and
# the newest the package knows.

K8S_VERSIONS = ("1.28", latest_version())
NAD_API = "k8s.cni.cncf.io/v1"
# The NetworkAttachmentDefinition CRD's schema (Network Plumbing WG, as Multus installs it),
# closed to unknown fields here so a typo fails (the API server would silently prune it).
NAD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": NAD_API},
        "kind": {"const": "NetworkAttachmentDefinition"},
        "metadata": {"type": "object"},
        "spec": {"type": "object", "additionalProperties": False,
                 "properties": {"config": {"type": "string"}}},
    },
}


def docs(rel: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((MANIFESTS / rel).read_text()) if d is not None]


def manifest_files() -> list[str]:
    return sorted(str(p.relative_to(MANIFESTS)) for p in MANIFESTS.rglob("*.yaml"))


def one(rel: str, kind: str) -> dict[str, Any]:
    (doc,) = [d for d in docs(rel) if d["kind"] == kind]
    return doc


def test_the_manifests_are_the_expected_set() -> None:
    assert manifest_files() == [
        "agent-config.yaml", "agent-daemonset.yaml", "controller-config.yaml", "controller.yaml",
        "multicastgroup-crd.yaml", "multicastpolicy-crd.yaml", "multus/agent-daemonset.yaml",
        "multus/example-pod.yaml", "multus/kube-mcast-nad.yaml", "uninstall.yaml",
    ]


@pytest.mark.parametrize("rel", manifest_files())
def test_every_manifest_validates_offline(rel: str) -> None:
    for doc in docs(rel):
        name = f"{rel}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if doc.get("apiVersion") == NAD_API:
            jsonschema.validate(doc, NAD_SCHEMA)
            # its metadata is an ordinary ObjectMeta: check it on a kind that has a schema
            meta_only = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]}
            for v in K8S_VERSIONS:
                kubernetes_validate.validate(meta_only, v, strict=True)
            continue
        for v in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, v, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{name} (Kubernetes {v}): {exc.message} at {list(exc.path)}")


def test_validation_catches_mistakes() -> None:
    ds = one("agent-daemonset.yaml", "DaemonSet")
    bad = copy.deepcopy(ds)
    bad["spec"]["template"]["spec"]["hostNetwrk"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)
    bad = copy.deepcopy(ds)
    bad["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][0]["mountPath"] = 7
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)
    nad = one("multus/kube-mcast-nad.yaml", "NetworkAttachmentDefinition")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**nad, "spec": {"confg": "{}"}}, NAD_SCHEMA)


# -- the DaemonSets against the installer, the agent config and the plugin ---------------------


def pod_spec(rel: str, kind: str = "DaemonSet") -> dict[str, Any]:
    spec: dict[str, Any] = one(rel, kind)["spec"]["template"]["spec"]
    return spec


def container(spec: dict[str, Any], name: str) -> dict[str, Any]:
    (c,) = [c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == name]
    return c


def host_paths(spec: dict[str, Any], c: dict[str, Any]) -> dict[str, str]:
    """mountPath → hostPath path, for the container's hostPath mounts."""
    vols = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    return {m["mountPath"]: vols[m["name"]] for m in c["volumeMounts"] if m["name"] in vols}


def installer_args(c: dict[str, Any]) -> argparse.Namespace:
    assert c["command"][0] == "mcast-cni-install"
    return build_parser().parse_args(c["command"][1:])  # the real parser: exits on a typo


def agent_config() -> dict[str, Any]:
    cm = yaml.safe_load((MANIFESTS / "agent-config.yaml").read_text())
    cfg: dict[str, Any] = yaml.safe_load(cm["data"]["agent.yaml"])
    return cfg


def test_console_scripts_used_by_the_manifests_exist() -> None:
    pyproject = tomllib.loads((MANIFESTS.parent / "pyproject.toml").read_text())
    scripts = pyproject["project"]["scripts"]
    assert scripts["mcast-cni-install"] == "agent.cni.install:main"
    for rel in ("agent-daemonset.yaml", "multus/agent-daemonset.yaml", "uninstall.yaml"):
        spec = pod_spec(rel)
        for c in spec.get("initContainers", []) + spec["containers"]:
            assert c["command"][0] in scripts, (rel, c["name"])


def test_agent_daemonset_runs_on_every_node_with_the_host_mounts() -> None:
    for rel in ("agent-daemonset.yaml", "multus/agent-daemonset.yaml"):
        all_docs = docs(rel)
        ds = one(rel, "DaemonSet")
        spec = pod_spec(rel)
        assert ds["metadata"]["namespace"] == "kube-mcast"
        assert {(d["kind"], d["metadata"]["name"]) for d in all_docs} >= {
            ("Namespace", "kube-mcast"), ("ServiceAccount", spec["serviceAccountName"])}
        assert spec["hostNetwork"] is True and spec["hostPID"] is False
        assert {"operator": "Exists"} in spec["tolerations"]
        agent = container(spec, "agent")
        assert agent["securityContext"]["privileged"] is True
        assert agent["command"] == ["mcast-agent", "--config", "/etc/kube-mcast/agent.yaml"]
        assert {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in agent["env"]} == {
            "NODE_NAME": "spec.nodeName", "NODE_IP": "status.hostIP"}
        mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
        assert host_paths(spec, agent) == {p: p for p in (
            "/var/run/openvswitch", "/var/run/kube-mcast", "/var/run/netns")}
        assert mounts["/var/run/netns"]["mountPropagation"] == "HostToContainer"
        (cm_vol,) = [v for v in spec["volumes"]
                     if v["name"] == mounts["/etc/kube-mcast"]["name"]]
        cm = yaml.safe_load((MANIFESTS / "agent-config.yaml").read_text())
        assert cm_vol["configMap"]["name"] == cm["metadata"]["name"]
        assert cm["metadata"]["namespace"] == ds["metadata"]["namespace"]
        ovs = agent_config()["ovs"]
        assert ovs["db"] == "unix:/var/run/openvswitch/db.sock"


def test_chained_install_command_matches_the_installer_and_the_agent() -> None:
    spec = pod_spec("agent-daemonset.yaml")
    init, watch = container(spec, "install-cni"), container(spec, "cni-watch")
    args = installer_args(init)
    assert (args.command, args.mode, args.interface_name, args.tx_checksum_offload) == (
        "install", "chained", "mc0", True)
    assert args.watch is None and args.wait > 0
    # the agent listens where the plugin (on the host) will call it
    assert args.agent_socket == agent_config()["apiSocket"]
    assert str(Path(args.agent_socket).parent) in host_paths(spec, container(spec, "agent"))
    # the installer writes where the host's runtime reads
    assert host_paths(spec, init) == {str(args.cni_conf_dir): "/etc/cni/net.d",
                                      str(args.cni_bin_dir): "/opt/cni/bin"}
    # the sidecar does the same work, again and again
    w = installer_args(watch)
    assert w.watch and w.watch > 0
    assert {**vars(w), "watch": None, "wait": 0.0} == {**vars(args), "wait": 0.0}
    assert host_paths(spec, watch) == host_paths(spec, init)


def test_the_chained_daemonset_writes_a_netconf_the_plugin_accepts(tmp_path: Path) -> None:
    conf_dir, bin_dir = tmp_path / "net.d", tmp_path / "bin"
    conf_dir.mkdir()
    calico = {"name": "k8s-pod-network", "cniVersion": "1.0.0",
              "plugins": [{"type": "calico", "ipam": {"type": "calico-ipam"}},
                          {"type": "portmap", "capabilities": {"portMappings": True}}]}
    (conf_dir / "10-calico.conflist").write_text(json.dumps(calico))
    argv = container(pod_spec("agent-daemonset.yaml"), "install-cni")["command"][1:]
    argv = [{"/etc/cni/net.d": str(conf_dir), "/opt/cni/bin": str(bin_dir)}.get(a, a)
            for a in argv]
    assert install_main(argv) == 0
    out = json.loads((conf_dir / "10-calico.conflist").read_text())
    entry = out["plugins"][-1]
    # what the runtime hands the last plugin of the list
    stdin = {**entry, "name": out["name"], "cniVersion": out["cniVersion"],
             "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.5/24"}]}}
    conf = NetConf.parse(json.dumps(stdin).encode())
    assert conf.agent_socket == agent_config()["apiSocket"]
    assert conf.interface_name == "mc0" and conf.tx_checksum_offload is True


def test_multus_daemonset_is_the_chained_one_with_a_multus_install() -> None:
    chained, multus = one("agent-daemonset.yaml", "DaemonSet"), \
        one("multus/agent-daemonset.yaml", "DaemonSet")
    m_spec = multus["spec"]["template"]["spec"]
    args = installer_args(container(m_spec, "install-cni"))
    assert (args.command, args.mode) == ("install", "multus")
    assert host_paths(m_spec, container(m_spec, "install-cni")) == {
        str(args.cni_conf_dir): "/etc/cni/net.d", str(args.cni_bin_dir): "/opt/cni/bin"}
    # apart from the init container's arguments and the watcher, the same object
    same = copy.deepcopy(chained)
    c_spec = same["spec"]["template"]["spec"]
    c_spec["containers"] = [c for c in c_spec["containers"] if c["name"] != "cni-watch"]
    c_spec["initContainers"][0]["command"] = m_spec["initContainers"][0]["command"]
    assert multus == same
    assert [d for d in docs("multus/agent-daemonset.yaml") if d["kind"] != "DaemonSet"] == [
        d for d in docs("agent-daemonset.yaml") if d["kind"] != "DaemonSet"]


def test_nad_config_is_a_netconf_the_plugin_accepts() -> None:
    nad = one("multus/kube-mcast-nad.yaml", "NetworkAttachmentDefinition")
    assert nad["metadata"]["name"] == "kube-mcast"
    config = json.loads(nad["spec"]["config"])
    assert config["type"] == "mcast-cni" and config["name"] == "kube-mcast"
    assert "ipam" not in config  # the plugin reuses the pod's primary address
    conf = NetConf.parse(nad["spec"]["config"].encode())
    assert conf.cni_version == "1.0.0" and conf.agent_socket == agent_config()["apiSocket"]
    assert conf.tx_checksum_offload is True and conf.ipam is None


def test_example_pod_asks_for_the_nad() -> None:
    pod = one("multus/example-pod.yaml", "Pod")
    nad = one("multus/kube-mcast-nad.yaml", "NetworkAttachmentDefinition")
    assert pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] == \
        nad["metadata"]["name"]
    (c,) = pod["spec"]["containers"]
    assert c["command"][:3] == ["python3", "-m", "tools.mcprobe"]
    args = mcprobe_parser().parse_args(c["command"][3:])
    assert args.group == "239.1.1.1"


def test_uninstall_daemonset_undoes_the_install_on_every_node() -> None:
    spec = pod_spec("uninstall.yaml")
    assert {"operator": "Exists"} in spec["tolerations"]
    install = installer_args(container(pod_spec("agent-daemonset.yaml"), "install-cni"))
    for name in ("uninstall-cni", "keep-clean"):
        c = container(spec, name)
        args = installer_args(c)
        assert args.command == "uninstall"
        assert (args.cni_conf_dir, args.cni_bin_dir) == (install.cni_conf_dir,
                                                          install.cni_bin_dir)
        assert host_paths(spec, c) == {str(args.cni_conf_dir): "/etc/cni/net.d",
                                       str(args.cni_bin_dir): "/opt/cni/bin"}
    assert installer_args(container(spec, "uninstall-cni")).watch is None
    assert installer_args(container(spec, "keep-clean")).watch
    assert one("uninstall.yaml", "DaemonSet")["metadata"]["name"] != \
        one("agent-daemonset.yaml", "DaemonSet")["metadata"]["name"]


# -- the controller's side ---------------------------------------------------------------------

NAMESPACE = "kube-mcast"


def controller_cfg() -> controller_config.ControllerConfig:
    cm = one("controller-config.yaml", "ConfigMap")
    return controller_config.parse_config(yaml.safe_load(cm["data"]["controller.yaml"]),
                                          env={"POD_NAME": "kube-mcast-controller-5d8f-x2x9q"})


def all_docs() -> list[dict[str, Any]]:
    return [d for rel in manifest_files() for d in docs(rel)]


def mounted_files(spec: dict[str, Any], c: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    """Path in the container → where the kubelet takes it from: ("configMap"|"secret", name,
    key, optional) or ("serviceAccountToken", audience, expirationSeconds), for the container's
    configMap, secret and projected volumes."""
    vols = {v["name"]: v for v in spec["volumes"]}
    out: dict[str, tuple[str, ...]] = {}

    def add(mount: str, kind: str, src: dict[str, Any]) -> None:
        name = str(src.get("name") or src.get("secretName"))
        items = src.get("items")
        if items is None:  # every key of the object
            (obj,) = [d for d in all_docs() if d["kind"] == kind[0].upper() + kind[1:]
                      and d["metadata"]["name"] == name]
            items = [{"key": k, "path": k} for k in obj["data"]]
        for item in items:
            out[f"{mount}/{item['path']}"] = (kind, name, item["key"],
                                              str(src.get("optional", False)))

    for m in c.get("volumeMounts", []):
        v, mount = vols[m["name"]], m["mountPath"]
        for kind in ("configMap", "secret"):
            if kind in v:
                add(mount, kind, v[kind])
        for src in v.get("projected", {}).get("sources", []):
            for kind in ("configMap", "secret"):
                if kind in src:
                    add(mount, kind, src[kind])
            if "serviceAccountToken" in src:
                t = src["serviceAccountToken"]
                out[f"{mount}/{t['path']}"] = ("serviceAccountToken", t.get("audience", ""),
                                               str(t.get("expirationSeconds", 3600)))
    return out


def test_controller_configmap_is_a_valid_controller_config() -> None:
    cfg = controller_cfg()
    assert cfg.identity == "kube-mcast-controller-5d8f-x2x9q"  # $POD_NAME
    assert cfg.multicast_enabled and cfg.leader_election and cfg.kubeconfig == ""  # in-cluster
    assert cfg.tls and cfg.stream_port == DEFAULT_PORT == 10349
    assert (cfg.lease_namespace, cfg.lease_name) == (NAMESPACE, "kube-mcast-controller")
    agent_sa = one("agent-daemonset.yaml", "ServiceAccount")["metadata"]
    assert cfg.agent_service_account == f"{agent_sa['namespace']}/{agent_sa['name']}"
    assert one("controller-config.yaml", "ConfigMap")["metadata"]["namespace"] == NAMESPACE


def test_controller_deployment_runs_two_replicas_with_its_config_and_certificate() -> None:
    cfg = controller_cfg()
    deploy = one("controller.yaml", "Deployment")
    spec = pod_spec("controller.yaml", "Deployment")
    assert deploy["metadata"]["namespace"] == NAMESPACE and deploy["spec"]["replicas"] == 2
    (c,) = spec["containers"]
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"][c["command"][0]] == "controller.main:main"
    assert c["command"][1] == "--config"
    assert {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in c["env"]} == {
        "POD_NAME": "metadata.name"}  # the Lease identity, one per replica
    files = mounted_files(spec, c)
    cm = one("controller-config.yaml", "ConfigMap")
    assert files[c["command"][2]] == ("configMap", cm["metadata"]["name"], "controller.yaml",
                                      "False")
    assert files[cfg.cert_file or ""] == ("secret", "kube-mcast-controller-tls", "tls.crt",
                                          "False")
    assert files[cfg.key_file or ""] == ("secret", "kube-mcast-controller-tls", "tls.key",
                                         "False")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"stream": cfg.stream_port, "metrics": cfg.metrics_port}
    # only the leader listens on the stream port: the Service's one Ready endpoint
    assert c["readinessProbe"]["tcpSocket"]["port"] == "stream"
    # and so a rolling update must not wait for a new pod to be Ready before it removes an
    # old one (a new pod leads only once the old leader is gone): all may go at once
    rolling = deploy["spec"]["strategy"]["rollingUpdate"]
    assert rolling == {"maxSurge": 0, "maxUnavailable": "100%"}
    assert spec["serviceAccountName"] == one("controller.yaml", "ServiceAccount")[
        "metadata"]["name"]
    assert spec.get("automountServiceAccountToken", True)  # in-cluster API access
    assert spec["securityContext"]["runAsNonRoot"] is True


def test_the_service_reaches_the_stream_where_the_agents_dial() -> None:
    svc = one("controller.yaml", "Service")
    deploy = one("controller.yaml", "Deployment")
    assert svc["spec"]["selector"] == deploy["spec"]["template"]["metadata"]["labels"]
    (port,) = svc["spec"]["ports"]
    assert port["targetPort"] == "stream"
    link = parse_config(agent_config(), env={"NODE_NAME": "worker-1", "NODE_IP": "10.0.0.11"})
    assert link.controller is not None
    host = f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc"
    assert link.controller.address == f"https://{host}:{port['port']}"
    assert port["port"] == controller_cfg().stream_port


@pytest.mark.parametrize("rel", ["agent-daemonset.yaml", "multus/agent-daemonset.yaml"])
def test_the_agent_gets_a_bound_token_and_the_controllers_ca(rel: str) -> None:
    spec = pod_spec(rel)
    link = parse_config(agent_config(), env={"NODE_NAME": "worker-1", "NODE_IP": "10.0.0.11"})
    assert link.controller is not None
    files = mounted_files(spec, container(spec, "agent"))
    # a token of the pod's service account, bound to the pod, for the API server's audience
    # (what a TokenReview without audiences checks), renewed by the kubelet
    assert files[link.controller.token_file] == ("serviceAccountToken", "", "3600")
    assert link.controller.token_file == "/var/run/secrets/kube-mcast/token"
    # the CA from a ConfigMap (never the Secret: agents must not see the controller's key);
    # optional, so that an agent starts (and pods get attached) before it exists
    assert files[link.controller.ca_file] == ("configMap", "kube-mcast-ca", "ca.crt", "True")
    assert not any(f[0] == "secret" for f in files.values())
    assert spec["automountServiceAccountToken"] is False  # no API credentials beyond that


# -- RBAC ----------------------------------------------------------------------------------------

# Every Kubernetes API call of controller/*.py → the (apiGroup, resource, verb) it needs, and
# where: "cluster", or "lease" (the Lease, in leaderElection.leaseNamespace, by name). A call
# missing here fails test_the_controllers_rbac_covers_every_api_call_of_its_code.
MCG = (controller_groups.GROUP, controller_groups.PLURAL)
MCP, CMCP = "multicastpolicies", "clustermulticastpolicies"
CONTROLLER_CALLS: dict[str, list[tuple[str, str, str, str]]] = {
    # controller.watch: list, then watch from the list's resourceVersion
    "list_node": [("", "nodes", v, "cluster") for v in ("list", "watch")],
    "list_namespace": [("", "namespaces", v, "cluster") for v in ("list", "watch")],
    "list_pod_for_all_namespaces": [("", "pods", v, "cluster") for v in ("list", "watch")],
    "create_token_review": [("authentication.k8s.io", "tokenreviews", "create", "cluster")],
    "list_cluster_custom_object": [(*MCG, "list", "cluster")] + [
        (MCG[0], r, v, "cluster") for r in (MCP, CMCP) for v in ("list", "watch")],
    "create_cluster_custom_object": [(*MCG, "create", "cluster")],
    "delete_cluster_custom_object": [(*MCG, "delete", "cluster")],
    "patch_cluster_custom_object_status": [(MCG[0], f"{MCG[1]}/status", "patch", "cluster"),
                                           (MCG[0], f"{CMCP}/status", "patch", "cluster")],
    "patch_namespaced_custom_object_status": [(MCG[0], f"{MCP}/status", "patch", "cluster")],
    "read_namespaced_lease": [("coordination.k8s.io", "leases", "get", "lease")],
    "replace_namespaced_lease": [("coordination.k8s.io", "leases", "update", "lease")],
    "create_namespaced_lease": [("coordination.k8s.io", "leases", "create", "lease")],
}
# granted beyond the calls: reading the objects the controller watches (get/list/watch, as
# the kube-controller-manager's roles do)
CONTROLLER_EXTRAS = {("", r, "get") for r in ("nodes", "namespaces", "pods")} | {
    (*MCG, "get"), (MCG[0], MCP, "get"), (MCG[0], CMCP, "get")}


def api_methods() -> set[str]:
    """The operations of the official client's API classes (CoreV1Api.list_node, ...)."""
    return {name for cls_name in dir(k8s) if cls_name.endswith("Api")
            for name, _ in inspect.getmembers(getattr(k8s, cls_name), inspect.isfunction)
            if re.match(r"(create|delete|get|list|patch|read|replace|connect)_", name)
            and not name.endswith("_with_http_info")}


def api_calls_in(package: str) -> set[str]:
    names = set()
    for path in (REPO / package).rglob("*.py"):
        names |= set(re.findall(r"\.([a-z_]+)\b", path.read_text()))
    return names & api_methods()


def covers(rules: list[dict[str, Any]], group: str, resource: str, verb: str,
           name: str | None = None) -> bool:
    """Whether a rule grants ``verb`` on ``group/resource`` (object ``name``), as RBAC does."""
    return any(group in r.get("apiGroups", []) and resource in r.get("resources", [])
               and verb in r.get("verbs", [])
               and (not r.get("resourceNames") or name in r["resourceNames"]) for r in rules)


def rules_of(namespace: str, account: str) -> tuple[list[dict[str, Any]],
                                                    dict[str, list[dict[str, Any]]]]:
    """What the manifests grant service account ``namespace/account``: cluster-wide rules,
    and rules per namespace."""
    found = all_docs()
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d["rules"]
             for d in found if d["kind"] in ("ClusterRole", "Role")}
    cluster: list[dict[str, Any]] = []
    namespaced: dict[str, list[dict[str, Any]]] = {}
    for b in found:
        if b["kind"] not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        if not any(s == {"kind": "ServiceAccount", "name": account, "namespace": namespace}
                   for s in b["subjects"]):
            continue
        ref = b["roleRef"]
        rules = roles[(ref["kind"], None if ref["kind"] == "ClusterRole"
                       else b["metadata"]["namespace"], ref["name"])]
        if b["kind"] == "ClusterRoleBinding":
            cluster += rules
        else:
            namespaced.setdefault(b["metadata"]["namespace"], []).extend(rules)
    return cluster, namespaced


def test_no_rbac_rule_uses_wildcards() -> None:
    for d in all_docs():
        for rule in d.get("rules", []) if d["kind"] in ("ClusterRole", "Role") else []:
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[key], (d["metadata"]["name"], rule)


def test_the_agent_has_no_rbac_at_all() -> None:
    """The agent calls no Kubernetes API: pod identity comes from CNI_ARGS, its token only
    proves its node to the controller. Above all: no Pod list."""
    sa = one("agent-daemonset.yaml", "ServiceAccount")["metadata"]
    cluster, namespaced = rules_of(sa["namespace"], sa["name"])
    assert cluster == [] and namespaced == {}
    for rules in (cluster, *namespaced.values()):
        for verb in ("list", "watch", "get"):
            assert not covers(rules, "", "pods", verb)
    assert api_calls_in("agent") == set()  # and the agent's code makes none


def test_the_controllers_rbac_covers_every_api_call_of_its_code() -> None:
    assert api_calls_in("controller") == set(CONTROLLER_CALLS), \
        "a Kubernetes API call in controller/ that CONTROLLER_CALLS (and the ClusterRole) lacks"
    cfg = controller_cfg()
    sa = one("controller.yaml", "ServiceAccount")["metadata"]
    cluster, namespaced = rules_of(sa["namespace"], sa["name"])
    needed = [need for needs in CONTROLLER_CALLS.values() for need in needs]
    for group, resource, verb, where in needed:
        if where == "cluster":
            assert covers(cluster, group, resource, verb), (group, resource, verb)
        else:
            assert covers(namespaced.get(cfg.lease_namespace, []), group, resource, verb,
                          cfg.lease_name), (group, resource, verb)
    # and nothing more: the ClusterRole grants the calls (and reading what is watched), the
    # Role only the Lease, and the MulticastGroup resource is the CRD's
    granted = {(g, r, v) for rule in cluster for g in rule["apiGroups"]
               for r in rule["resources"] for v in rule["verbs"]}
    assert granted == {(g, r, v) for g, r, v, where in needed if where == "cluster"} \
        | CONTROLLER_EXTRAS
    (lease_ns,) = namespaced
    assert all(rule["resources"] == ["leases"] for rule in namespaced[lease_ns])
    assert not covers(namespaced[lease_ns], "coordination.k8s.io", "leases", "update", "other")
    crd = one("multicastgroup-crd.yaml", "CustomResourceDefinition")
    assert (crd["spec"]["group"], crd["spec"]["names"]["plural"]) == MCG


# -- applied to the lab API server with the real kubectl, as README says ------------------------

# What Multus installs (the Network Plumbing WG's CRD), so that the NAD can be applied
NAD_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "network-attachment-definitions.k8s.cni.cncf.io"},
    "spec": {"group": "k8s.cni.cncf.io", "scope": "Namespaced",
             "names": {"plural": "network-attachment-definitions", "singular":
                       "network-attachment-definition", "kind": "NetworkAttachmentDefinition",
                       "shortNames": ["net-attach-def"]},
             "versions": [{"name": "v1", "served": True, "storage": True, "schema": {
                 "openAPIV3Schema": {"type": "object", "properties": {"spec": {
                     "type": "object", "properties": {"config": {"type": "string"}}}}}}}]},
}


def install_section() -> list[tuple[str, str]]:
    """README's "Install on a cluster": its code blocks in order, ("sh", script) for fenced
    ones and ("cmd", command) for each command of an indented one."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Install on a cluster\n", 1)[1].split("\n## ", 1)[0]
    blocks: list[tuple[str, str]] = []
    fenced: list[str] | None = None
    command = ""
    for line in section.splitlines():
        if fenced is not None:
            if line.startswith("```"):
                blocks.append(("sh", "\n".join(fenced)))
                fenced = None
            else:
                fenced.append(line)
        elif line.startswith("```"):
            fenced = []
        elif line.startswith("    ") and (command or line.strip().startswith("kubectl")):
            command += " " + line.strip()
            if command.endswith("\\"):
                command = command[:-1]
            else:
                blocks.append(("cmd", command.split("#")[0].strip()))
                command = ""
    return blocks


def kubectl_binary() -> str:
    found = ("/usr/bin/kubectl" if os.access("/usr/bin/kubectl", os.X_OK)
             else shutil.which("kubectl"))
    if not found:
        pytest.fail("no kubectl: run tools/install.sh", pytrace=False)
    return found


@dataclass
class LabKubectl:
    """The real kubectl against a lab API server (``env``: for shell snippets too: PATH has
    kubectl, KUBECONFIG points at the server, HOME is private)."""

    server: ApiServerProcess
    env: dict[str, str]

    def __call__(self, *args: str, stdin: str | None = None) -> str:
        done = subprocess.run(["kubectl", *args], env=self.env, cwd=REPO, input=stdin,
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
        return done.stdout


@pytest.fixture
def kubectl(tmp_path: Path) -> Iterator[LabKubectl]:
    server = spawn(tmp_path / "kubeapi", tokens={"admin": "admin-token"})
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "kubectl").symlink_to(kubectl_binary())
    env = {"PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
           "HOME": str(tmp_path / "home"),
           "KUBECONFIG": str(kubeconfig(server.url, "admin-token", tmp_path / "kubeconfig"))}
    try:
        lab = LabKubectl(server, env)
        lab("apply", "-f", "-", stdin=json.dumps(NAD_CRD))  # as Multus installs it
        yield lab
    finally:
        server.stop()


def _handshake(cert: str, key: str, ca: str, hostname: str) -> str:
    """A TLS handshake: a server with ``cert``/``key``, a client trusting only ``ca``."""
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=ca)
    a, b = socket.socketpair()

    def serve() -> None:
        try:
            with server.wrap_socket(a, server_side=True) as s:
                s.recv(1)
        except OSError:
            pass

    t = threading.Thread(target=serve)
    t.start()
    try:
        with client.wrap_socket(b, server_hostname=hostname) as c:
            c.send(b"x")
            return str(c.version())
    finally:
        t.join(5)


@pytest.mark.timeout(180)
def test_readme_install_and_uninstall_on_the_lab_api_server(kubectl: LabKubectl,
                                                            tmp_path: Path) -> None:
    applied: list[str] = []
    listed = ""
    blocks = install_section()
    assert [b for b in blocks if b[0] == "sh"], "README lost the certificate recipe"
    work = tmp_path / "certs"
    work.mkdir()
    for kind, text in blocks:
        if kind == "sh":  # the certificate, verbatim
            done = subprocess.run(["bash", "-euo", "pipefail", "-c", text], env=kubectl.env,
                                  cwd=work, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, f"{text}\n{done.stderr}"
            # what the controller's and the agents' pods mount
            secret = json.loads(kubectl("-n", NAMESPACE, "get", "secret",
                                        "kube-mcast-controller-tls", "-o", "json"))
            assert secret["type"] == "kubernetes.io/tls"
            assert set(secret["data"]) == {"tls.crt", "tls.key"}
            ca = json.loads(kubectl("-n", NAMESPACE, "get", "configmap", "kube-mcast-ca",
                                    "-o", "json"))
            assert ca["data"]["ca.crt"] == (work / "ca.crt").read_text()
            continue
        args = shlex.split(text)
        assert args[0] == "kubectl", text
        if args[1:3] == ["-n", NAMESPACE] and "rollout" in args:
            continue  # no kubelet in the lab: nothing ever rolls out
        out = kubectl(*args[1:])
        if args[1] == "apply":
            applied += [args[i + 1] for i, a in enumerate(args) if a == "-f"]
        if "deploy,ds,svc,sa,endpoints" in args:
            listed = out
    # every manifest but the example pod went through the README's commands
    assert set(manifest_files()) - {p.removeprefix("manifests/") for p in applied} == {
        "multus/example-pod.yaml"}
    assert applied.index("manifests/controller.yaml") > applied.index(
        "manifests/agent-daemonset.yaml")  # the namespace first
    names = {line.split()[0] for line in listed.splitlines() if line and not
             line.startswith("NAME")}
    assert {"deployment.apps/kube-mcast-controller", "daemonset.apps/kube-mcast-agent",
            "service/kube-mcast-controller", "serviceaccount/kube-mcast-agent",
            "serviceaccount/kube-mcast-controller"} <= names
    # uninstalled: nothing of ours is left (the namespace took the Secret and the ConfigMaps)
    assert "kube-mcast" not in kubectl("get", "ns", "-o", "name")
    assert "kube-mcast" not in kubectl("get", "clusterrole,clusterrolebinding,crd", "-o",
                                       "name")
    # the recipe's certificate is one the agents accept for the Service's name
    assert _handshake(str(work / "tls.crt"), str(work / "tls.key"), str(work / "ca.crt"),
                      "kube-mcast-controller.kube-mcast.svc").startswith("TLS")


def test_every_manifest_applies_with_kubectl_and_is_listed(kubectl: LabKubectl) -> None:
    """Each file on its own (in an order that puts the namespace and CRDs first), twice: the
    second apply changes nothing."""
    first = ["agent-daemonset.yaml", "multicastgroup-crd.yaml", "multicastpolicy-crd.yaml"]
    files = first + [f for f in manifest_files() if f not in first]
    for rel in files:  # (multus/agent-daemonset.yaml reconfigures the chained DaemonSet)
        out = kubectl("apply", "-f", f"manifests/{rel}").splitlines()
        assert len(out) == len(docs(rel)), out
        assert all(line.endswith((" created", " configured", " unchanged")) for line in out)
    for rel in files[1:]:  # (the chained DaemonSet would put its sidecar back)
        out = kubectl("apply", "-f", f"manifests/{rel}").splitlines()
        assert all(line.endswith(" unchanged") for line in out), out
    listed = kubectl("get", "deploy,ds,svc,sa", "-n", NAMESPACE, "-o", "name")
    assert sorted(listed.split()) == sorted([
        "daemonset.apps/kube-mcast-agent", "daemonset.apps/kube-mcast-cni-uninstall",
        "deployment.apps/kube-mcast-controller", "service/kube-mcast-controller",
        "serviceaccount/kube-mcast-agent", "serviceaccount/kube-mcast-controller"])
    deployed = json.loads(kubectl("get", "deploy", "kube-mcast-controller", "-n", NAMESPACE,
                                  "-o", "json"))
    assert deployed["spec"]["replicas"] == 2


# -- the policy CRDs -----------------------------------------------------------------------------


def test_policy_crds_names_columns_and_status() -> None:
    crds = {d["spec"]["names"]["kind"]: d for d in docs("multicastpolicy-crd.yaml")}
    assert set(crds) == {"MulticastPolicy", "ClusterMulticastPolicy"}
    for kind, scope, short in (("MulticastPolicy", "Namespaced", "mcp"),
                               ("ClusterMulticastPolicy", "Cluster", "cmcp")):
        spec = crds[kind]["spec"]
        assert spec["scope"] == scope and spec["names"]["shortNames"] == [short]
        assert spec["group"] == "multicast.kube-mcast.io"
        (version,) = spec["versions"]
        assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
        assert [c["name"] for c in version["additionalPrinterColumns"]] == [
            "PRIORITY", "VALID", "AGE"]
        schema = version["schema"]["openAPIV3Schema"]["properties"]
        s = schema["spec"]
        assert s["required"] == ["priority", "appliedTo"]
        assert (s["properties"]["priority"]["minimum"], s["properties"]["priority"]["maximum"]) \
            == (1, 10000)
        egress = s["properties"]["egress"]["items"]["properties"]
        ingress = s["properties"]["ingress"]["items"]["properties"]
        assert egress["action"]["enum"] == ["Allow", "Drop"]
        assert egress["protocols"]["items"]["properties"]["igmp"]["properties"]["igmpType"][
            "enum"] == [0x12, 0x16, 0x17, 0x22]
        assert ingress["protocols"]["items"]["properties"]["igmp"]["properties"]["igmpType"][
            "enum"] == [0x11]
        assert "from" not in egress and "sources" not in egress and "to" not in ingress
        applied = s["properties"]["appliedTo"]["items"]["properties"]
        assert ("namespaceSelector" in applied) == (kind == "ClusterMulticastPolicy")
        assert set(schema["status"]["properties"]) == {"conditions", "ruleStats"}


def test_policies_apply_with_kubectl_and_print_their_columns(kubectl: LabKubectl) -> None:
    kubectl("apply", "-f", "manifests/multicastpolicy-crd.yaml")
    kubectl("wait", "--for", "condition=established", "--timeout", "10s",
            "crd/multicastpolicies.multicast.kube-mcast.io",
            "crd/clustermulticastpolicies.multicast.kube-mcast.io")
    kubectl("create", "namespace", "trading")
    issue_example = """
apiVersion: multicast.kube-mcast.io/v1alpha1
kind: MulticastPolicy
metadata: {name: feed-guard, namespace: trading}
spec:
  priority: 10
  appliedTo:
    - podSelector: {matchLabels: {app: reader}}
  egress:
    - name: allow-feed-a
      action: Allow
      to: [{ipBlock: {cidr: 239.1.1.0/24}}]
      ports: [{protocol: UDP, port: 5000}]
    - name: no-joins-outside-a
      action: Drop
      protocols: [{igmp: {igmpType: 0x16, groupAddress: 239.2.0.1}}]
  ingress:
    - name: allow-queries
      action: Allow
      protocols: [{igmp: {igmpType: 0x11, groupAddress: 224.0.0.1}}]
    - name: only-trusted-senders
      action: Drop
      from: [{ipBlock: {cidr: 239.1.1.0/24}}]
      sources:
        - podSelector: {matchLabels: {role: untrusted}}
        - ipBlock: {cidr: 192.168.0.0/16}
---
apiVersion: multicast.kube-mcast.io/v1alpha1
kind: ClusterMulticastPolicy
metadata: {name: allow-list}
spec:
  priority: 9000
  appliedTo: [{namespaceSelector: {}}]
  egress: [{action: Drop, to: [{ipBlock: {cidr: 224.0.0.0/4}}]}]
"""
    out = kubectl("apply", "-f", "-", stdin=issue_example)
    assert "multicastpolicy.multicast.kube-mcast.io/feed-guard created" in out
    kubectl("patch", "mcp", "feed-guard", "-n", "trading", "--subresource=status", "--type",
            "merge", "-p", json.dumps({"status": {"conditions": [
                {"type": "Valid", "status": "True", "reason": "Valid", "message": "",
                 "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}))
    lines = kubectl("get", "mcp", "-n", "trading").splitlines()
    assert lines[0].split() == ["NAME", "PRIORITY", "VALID", "AGE"]
    assert lines[1].split()[:3] == ["feed-guard", "10", "True"]  # VALID: a JSONPath filter
    assert kubectl("get", "cmcp").splitlines()[1].split()[:2] == ["allow-list", "9000"]
    got = yaml.safe_load(kubectl("get", "mcp", "feed-guard", "-n", "trading", "-o", "yaml"))
    assert got["spec"]["egress"][1]["protocols"][0]["igmp"]["igmpType"] == 0x16
