"""The shipped manifests: valid Kubernetes objects (checked offline against Kubernetes' JSON
schemas), and consistent with what reads them: the agent's config parser, the installer's
command line, the CNI plugin's netconf parser."""

from __future__ import annotations

import argparse
import copy
import json
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from agent.cni.install import build_parser
from agent.cni.install import main as install_main
from agent.cni.spec import NetConf
from agent.config import parse_config
from pipeline.multicast import Mode
from tools.mcprobe import build_parser as mcprobe_parser

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"


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
        "agent-config.yaml", "agent-daemonset.yaml", "multicastgroup-crd.yaml",
        "multus/agent-daemonset.yaml", "multus/example-pod.yaml", "multus/kube-mcast-nad.yaml",
        "uninstall.yaml",
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
