"""The shipped manifests parse, and the agent ConfigMap holds a config the agent accepts."""

from __future__ import annotations

from pathlib import Path

import yaml

from agent.config import parse_config
from pipeline.multicast import Mode

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
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["GROUP", "PODS"]
