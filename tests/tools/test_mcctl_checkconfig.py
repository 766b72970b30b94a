"""``mcctl check-config FILE [--kind agent|controller]``: every kind of mistake gives exactly one
line naming the file and the key's path (exit 1); a valid file ``FILE: valid KIND config``.

Real files in ``tmp_path``, through ``tools.mcctl.checkconfig.check`` (``main`` adds only the
``mcctl: `` prefix and the exit status, see test_mcctl_cli.py); the shipped ConfigMaps too.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.mcctl.checkconfig import CheckError, check, detect_kind

REPO = Path(__file__).resolve().parents[2]


def _file(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _error(path: Path, kind: str | None = None) -> str:
    with pytest.raises(CheckError) as exc:
        check(path, kind)
    message = str(exc.value)
    assert "\n" not in message and message.startswith(f"{path}: ") or \
        message.startswith(f"config file {path}: "), message
    return message


@pytest.mark.parametrize(("text", "key", "why"), [
    ("multicast:\n  igmpQueryIntreval: 10s\n", "multicast.igmpQueryIntreval", "unknown key"),
    ("nodes: {}\n", "nodes", "unknown key"),
    ("multicast:\n  limits:\n    groupsPerPods: 3\n", "multicast.limits.groupsPerPods",
     "unknown key"),
    ("featureGates:\n  MulticastPolicy: true\n", "featureGates.MulticastPolicy",
     "unknown feature gate"),
    ("multicast:\n  igmpQueryInterval: 10 seconds\n", "multicast.igmpQueryInterval",
     "is not a duration"),
    ("multicast:\n  igmpQueryInterval: 0s\n", "multicast.igmpQueryInterval", "positive"),
    ("multicast:\n  igmpMaxResponse: 1x\n", "multicast.igmpMaxResponse", "is not a duration"),
    ("multicast:\n  igmpQueryVersions: [2, 4]\n", "multicast.igmpQueryVersions",
     "subset of [1, 2, 3]"),
    ("multicast:\n  igmpQueryVersions: [0]\n", "multicast.igmpQueryVersions",
     "subset of [1, 2, 3]"),
    ("multicast:\n  igmpQueryVersions: []\n", "multicast.igmpQueryVersions",
     "subset of [1, 2, 3]"),
    ("multicast:\n  igmpRobustness: two\n", "multicast.igmpRobustness", "expected int"),
    ("featureGates:\n  Multicast: yes please\n", "featureGates.Multicast", "expected bool"),
    ("trafficEncapMode: tunnel\n", "trafficEncapMode", "not one of encap"),
    ("node:\n  ip: 10.0.0.300\n", "node.ip", "not an IPv4 address"),
    ("- a list\n", "top level", "must be a mapping"),
])
def test_agent_config_mistakes(tmp_path: Path, text: str, key: str, why: str) -> None:
    path = _file(tmp_path, text)
    message = _error(path)
    assert message.startswith(f"{path}: {key}:") and why in message, message


@pytest.mark.parametrize(("text", "key", "why"), [
    ("stream:\n  prot: 1\n", "stream.prot", "unknown key"),
    ("leaderElection:\n  leaseDuraton: 15s\n", "leaderElection.leaseDuraton", "unknown key"),
    ("leaderElection:\n  leaseDuration: forever\n", "leaderElection.leaseDuration",
     "is not a duration"),
    ("stream: {}\nfeatureGates:\n  Policy: true\n", "featureGates.Policy",
     "unknown feature gate"),
    ("stream:\n  port: 70000\n", "stream.port", "is not a port"),
])
def test_controller_config_mistakes(tmp_path: Path, text: str, key: str, why: str) -> None:
    path = _file(tmp_path, text)
    message = _error(path)
    assert message.startswith(f"{path}: {key}:") and why in message, message


def test_valid_files_and_the_kind_they_are_taken_for(tmp_path: Path) -> None:
    agent = _file(tmp_path, "featureGates: {Multicast: true}\nmulticast:\n"
                            "  igmpQueryInterval: 30s\n  igmpQueryVersions: [3]\n", "a.yaml")
    assert check(agent) == f"{agent}: valid agent config"
    controller = _file(tmp_path, "stream: {port: 10349}\nleaderElection: {leaseDuration: 20s}\n",
                       "c.yaml")
    assert check(controller) == f"{controller}: valid controller config"
    assert check(controller, "controller") == f"{controller}: valid controller config"
    empty = _file(tmp_path, "", "e.yaml")  # nothing tells: taken as an agent config
    assert check(empty) == f"{empty}: valid agent config"
    assert check(empty, "controller") == f"{empty}: valid controller config"
    # the wrong --kind: the other schema's keys are unknown keys
    assert _error(agent, "controller").startswith(f"{agent}: multicast: unknown key")
    assert _error(controller, "agent").startswith(f"{controller}: stream: unknown key")


def test_kind_detection_follows_the_schemas() -> None:
    assert detect_kind({"multicast": {}}) == "agent"
    assert detect_kind({"node": {}, "ovs": {}}) == "agent"
    assert detect_kind({"stream": {}, "identity": "x"}) == "controller"
    # mostly controller with one agent key: controller, whose parser names the stray key
    assert detect_kind({"stream": {}, "leaderElection": {}, "multicast": {}}) == "controller"
    assert detect_kind({"featureGates": {}, "metricsPort": 9}) == "agent"
    assert detect_kind([1]) == "agent"


def test_unreadable_and_not_yaml(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    assert "No such file or directory" in _error(missing)
    broken = _file(tmp_path, "multicast: [\n")
    assert "not valid YAML" in _error(broken)  # the parser's context, folded into one line
    with pytest.raises(CheckError, match="--kind"):
        check(broken, "switch")


CONFIGMAP = """\
apiVersion: v1
kind: ConfigMap
metadata: {name: kube-mcast-agent-config, namespace: kube-mcast}
data:
  agent.yaml: |
    multicast:
      igmpQueryVersions: [%s]
"""


def test_configmaps_are_checked_entry_by_entry(tmp_path: Path) -> None:
    good = _file(tmp_path, CONFIGMAP % "2, 3", "cm.yaml")
    assert check(good) == f"{good}: valid agent config (data.agent.yaml)"
    bad = _file(tmp_path, CONFIGMAP % "5", "bad-cm.yaml")
    assert _error(bad).startswith(f"{bad}: data.agent.yaml: multicast.igmpQueryVersions:")
    # several documents: each ConfigMap among them
    both = _file(tmp_path, "kind: Namespace\n---\n" + CONFIGMAP % "3", "multi.yaml")
    assert check(both) == (f"{both}: valid agent config (data.agent.yaml, "
                           "ConfigMap kube-mcast-agent-config)")
    bad_both = _file(tmp_path, "kind: Namespace\n---\n" + CONFIGMAP % "9", "bad-multi.yaml")
    assert _error(bad_both).startswith(
        f"{bad_both}: ConfigMap kube-mcast-agent-config: data.agent.yaml: multicast.")
    none = _file(tmp_path, "a: 1\n---\nb: 2\n", "none.yaml")
    assert "no ConfigMap among them" in _error(none)


@pytest.mark.parametrize(("rel", "kind"), [("manifests/agent-config.yaml", "agent"),
                                           ("manifests/controller-config.yaml", "controller")])
def test_the_shipped_configmaps_are_valid(rel: str, kind: str) -> None:
    path = REPO / rel
    assert check(path) == f"{path}: valid {kind} config (data.{kind}.yaml)"
