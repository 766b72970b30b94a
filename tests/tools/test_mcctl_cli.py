"""mcctl's command line end to end against a real local API socket (an in-test AgentApi):
exit statuses and the one-line errors (unreachable agent, unknown pod or group, usage
mistakes), never a traceback; ``-o`` for every ``get``; ``check-config`` through ``main``.

The same commands against a running lab with real traffic are in tests/lab/test_mcctl.py.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.api.server import LocalApiServer
from agent.api.types import ApiError
from agent.interfacestore import PodAttach, PodInfo
from agent.podnetwork import PodMtu
from tools.mcctl.cli import main
from wire.nodes import NodeInfo

POD = PodInfo("default", "rx1", "c0ffee0123456789", "mc1111", "10.88.0.11",
              "02:00:00:00:00:11", 5, ifname="mc0", primary_ip="10.88.0.11")


class FakeAgent:
    """An AgentApi with one pod that joined 239.1.1.1 for two sources; one remote node."""

    def attach_pod(self, req: PodAttach) -> PodInfo:
        raise ApiError(405, "read-only")

    def detach_pod(self, container_id: str, ifname: str = "") -> None:
        raise ApiError(405, "read-only")

    def list_pods(self) -> list[PodInfo]:
        return [POD]

    def pod_network(self) -> PodMtu:
        return PodMtu(interface=1450, route=1450)

    def members(self) -> list[dict[str, Any]]:
        return [{"group": "239.1.1.1", "localPods": ["default/rx1"], "remoteNodes": ["10.9.0.2"],
                 "sourceFilters": {"default/rx1": {"mode": "include",
                                                   "sources": ["10.0.0.1", "10.0.0.2"]}}}]

    def pod_stats(self) -> list[dict[str, Any]]:
        return [{"namespace": "default", "name": "rx1", "inbound": 7, "outbound": 0,
                 "dropped": {"spoofed": 0, "notMulticast": 0, "igmpRate": 0, "oversized": 0}}]

    def flows(self) -> list[str]:
        return ["table=0, priority=0 actions=drop"]

    def policy_stats(self) -> list[dict[str, Any]]:
        return []

    def trace(self, query: Any) -> dict[str, Any]:
        raise ApiError(404, "no trace here")

    def set_nodes(self, nodes: list[NodeInfo]) -> None:
        pass

    def health(self) -> dict[str, Any]:
        return {"node": "node1"}


@pytest.fixture
def sock(tmp_path: Path) -> Iterator[str]:
    path = tmp_path / "agent.sock"
    with LocalApiServer(path, FakeAgent()):
        yield str(path)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_every_get_takes_every_output(sock: str, capsys: pytest.CaptureFixture[str]) -> None:
    for resource in ("podmulticaststats", "policystats", "members", "groups", "pods", "flows"):
        for output in ("table", "wide", "json", "yaml"):
            code, out, err = run(capsys, "--socket", sock, "get", resource, "-o", output)
            assert (code, err) == (0, ""), (resource, output, err)
            if output == "json":
                assert isinstance(json.loads(out), list)
            elif output == "yaml":
                assert isinstance(yaml.safe_load(out) or [], list)
        assert run(capsys, "--socket", sock, "get", resource)[1] == \
            run(capsys, "--socket", sock, "get", resource, "-o", "table")[1]


def test_members_table_through_the_socket(sock: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--socket", sock, "get", "members", "239.1.1.1")
    assert code == 0
    assert [ln.split() for ln in out.splitlines()] == [
        ["GROUP", "SUBSCRIBER", "TYPE", "SOURCES"],
        ["239.1.1.1", "default/rx1", "Local", "Endpoint", "include", "10.0.0.1,10.0.0.2"],
        ["239.1.1.1", "10.9.0.2", "Remote", "Node", "*"]]


def _one_line_error(code: int, out: str, err: str, want_code: int, *parts: str) -> None:
    assert code == want_code and out == "", (code, out, err)
    assert err.startswith("mcctl: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for part in parts:
        assert part in err, err


def test_unknown_pod_group_policy_exit_1(sock: str, capsys: pytest.CaptureFixture[str]) -> None:
    _one_line_error(*run(capsys, "--socket", sock, "get", "podmulticaststats", "nope", "-n",
                         "default"), 1, "pod default/nope not found")
    _one_line_error(*run(capsys, "--socket", sock, "get", "pods", "nope", "-n", "x"), 1,
                    "pod x/nope not found")
    _one_line_error(*run(capsys, "--socket", sock, "get", "members", "239.9.9.9"), 1,
                    "mcctl: group 239.9.9.9 has no members on this node")
    _one_line_error(*run(capsys, "--socket", sock, "get", "policystats", "p"), 1,
                    "policy p has no rules on this node")


def test_usage_mistakes_exit_2(sock: str, capsys: pytest.CaptureFixture[str]) -> None:
    _one_line_error(*run(capsys, "--socket", sock, "get", "pods", "rx1"), 2, "-n NAMESPACE")
    _one_line_error(*run(capsys, "--socket", sock, "get", "pods", "rx1", "-A"), 2,
                    "across all namespaces")
    _one_line_error(*run(capsys, "--socket", sock, "get", "members", "10.0.0.1"), 2,
                    "not a multicast address")


def test_unreachable_agent_names_the_socket(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "nonexistent.sock")
    _one_line_error(*run(capsys, "--socket", missing, "get", "members"), 1,
                    f"no socket at {missing}", "multicast disabled")
    # a socket file nobody listens on (an agent that died): connection refused
    dead = tmp_path / "dead.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(dead))
    try:
        _one_line_error(*run(capsys, "--socket", str(dead), "get", "pods"), 1,
                        f"agent not reachable at {dead}", "refused")
    finally:
        s.close()


def test_node_without_a_lab_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCLAB_DIR", str(tmp_path / "nolab"))
    _one_line_error(*run(capsys, "--node", "node1", "get", "members"), 2, "mclab lab")


def test_check_config_through_main(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "agent.yaml"
    good.write_text("multicast:\n  igmpQueryVersions: [2, 3]\n")
    assert run(capsys, "check-config", str(good)) == (0, f"{good}: valid agent config\n", "")
    bad = tmp_path / "bad.yaml"
    bad.write_text("multicast:\n  igmpQueryVersions: [4]\n")
    _one_line_error(*run(capsys, "check-config", str(bad)), 1, str(bad),
                    "multicast.igmpQueryVersions")
    _one_line_error(*run(capsys, "check-config", str(good), "--kind", "controller"), 1,
                    f"{good}: multicast: unknown key")


def test_unreachable_api_server_for_multicastgroups(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:1"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "users": [{"name": "u", "user": {}}]}))
    _one_line_error(*run(capsys, "--kubeconfig", str(kubeconfig), "get", "multicastgroups"), 1,
                    "API server http://127.0.0.1:1 not reachable")
