"""controller.config: controller.yaml parsed strictly (pure; files in tmp_path)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from controller.config import ConfigError, ControllerConfig, load_config, parse_config


def test_defaults() -> None:
    cfg = parse_config({}, env={"POD_NAME": "kube-mcast-controller-7d9f-abcde"})
    assert cfg == ControllerConfig(identity="kube-mcast-controller-7d9f-abcde")
    assert cfg.multicast_enabled and cfg.kubeconfig == "" and cfg.leader_election
    assert (cfg.stream_address, cfg.stream_port, cfg.cert_file, cfg.key_file) == (
        "0.0.0.0", 10349, None, None)
    assert not cfg.tls and cfg.metrics_port == 0
    assert cfg.agent_service_account == "kube-mcast/kube-mcast-agent"
    assert (cfg.lease_name, cfg.lease_namespace) == ("kube-mcast-controller", "kube-mcast")
    assert (cfg.lease_duration_s, cfg.renew_deadline_s, cfg.retry_period_s) == (15, 10, 2)
    assert cfg.lease_duration_seconds == 15


def test_identity_falls_back_to_the_hostname() -> None:
    assert parse_config({}, env={}).identity == socket.gethostname()
    assert parse_config({"identity": "replica-1"}, env={"POD_NAME": "p"}).identity == "replica-1"


def test_every_key() -> None:
    cfg = parse_config({
        "featureGates": {"Multicast": False},
        "kubeconfig": "/etc/kube-mcast/kubeconfig",
        "stream": {"address": "10.0.0.5", "port": 0, "certFile": "/tls/tls.crt",
                   "keyFile": "/tls/tls.key", "agentServiceAccount": "sys/mc-agent"},
        "leaderElection": {"enable": False, "leaseName": "mc.lease", "leaseNamespace": "sys",
                           "leaseDuration": "2500ms", "renewDeadline": 2, "retryPeriod": "0.5s"},
        "identity": "me", "metricsPort": 10351}, env={})
    assert cfg == ControllerConfig(
        identity="me", multicast_enabled=False, kubeconfig="/etc/kube-mcast/kubeconfig",
        stream_address="10.0.0.5", stream_port=0, cert_file="/tls/tls.crt",
        key_file="/tls/tls.key", agent_service_account="sys/mc-agent", leader_election=False,
        lease_name="mc.lease",
        lease_namespace="sys", lease_duration_s=2.5, renew_deadline_s=2.0, retry_period_s=0.5,
        metrics_port=10351)
    assert cfg.tls and cfg.lease_duration_seconds == 3


@pytest.mark.parametrize(("raw", "message"), [
    ({"kubeConfig": ""}, "kubeConfig: unknown key (known: featureGates, identity, kubeconfig"),
    ({"featureGates": {"Policy": True}}, "featureGates.Policy: unknown feature gate"),
    ({"stream": {"tls": True}}, "stream.tls: unknown key (known: address, agentServiceAccount, "
                                "certFile, keyFile, port)"),
    ({"stream": {"agentServiceAccount": "kube-mcast-agent"}},
     "stream.agentServiceAccount: 'kube-mcast-agent' is not NAMESPACE/NAME"),
    ({"stream": {"agentServiceAccount": "kube-mcast/"}},
     "stream.agentServiceAccount: 'kube-mcast/' is not NAMESPACE/NAME"),
    ({"stream": {"agentServiceAccount": "a.b/agent"}}, "stream.agentServiceAccount: 'a.b/agent'"),
    ({"stream": {"agentServiceAccount": "ns/Agent_1"}}, "stream.agentServiceAccount: 'ns/Agent_1'"),
    ({"stream": {"agentServiceAccount": ["ns", "sa"]}},
     "stream.agentServiceAccount: expected str, got list"),
    ({"leaderElection": {"leaseDuraton": "15s"}}, "leaderElection.leaseDuraton: unknown key"),
    ({"stream": {"certFile": "/a.crt"}}, "stream.certFile, stream.keyFile: give both"),
    ({"stream": {"port": 70000}}, "stream.port: 70000 is not a port"),
    ({"stream": {"port": "10349"}}, "stream.port: expected int, got str"),
    ({"stream": {"address": ""}}, "stream.address: must not be empty"),
    ({"metricsPort": True}, "metricsPort: expected int, got bool"),
    ({"featureGates": {"Multicast": "yes"}}, "featureGates.Multicast: expected bool"),
    ({"leaderElection": {"leaseDuration": "15 seconds"}},
     "leaderElection.leaseDuration: '15 seconds' is not a duration"),
    ({"leaderElection": {"retryPeriod": 0}}, "leaderElection.retryPeriod: duration must be"),
    ({"leaderElection": {"renewDeadline": "15s"}},
     "leaderElection.renewDeadline: must be below leaseDuration"),
    ({"leaderElection": {"retryPeriod": "9s"}},
     "leaderElection.retryPeriod: must be below renewDeadline / 1.2"),
    ({"leaderElection": {"leaseName": "Not_Valid"}}, "leaderElection.leaseName: 'Not_Valid'"),
    ({"leaderElection": {"leaseNamespace": "a.b"}}, "leaderElection.leaseNamespace: 'a.b'"),
    ({"stream": []}, "stream: expected dict, got list"),
    ([], "top level: must be a mapping"),
])
def test_errors_name_the_key(raw: object, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(raw, env={})
    assert message in str(error.value)


def test_the_agents_service_account_may_be_turned_off() -> None:
    assert parse_config({"stream": {"agentServiceAccount": ""}}, env={}).agent_service_account \
        == ""
    assert parse_config({"stream": {"agentServiceAccount": None}}, env={}
                        ).agent_service_account == "kube-mcast/kube-mcast-agent"


def test_load_config_names_the_file(tmp_path: Path) -> None:
    good = tmp_path / "controller.yaml"
    good.write_text("kubeconfig: /k\nleaderElection: {enable: false}\n")
    assert load_config(good, env={"POD_NAME": "x"}).kubeconfig == "/k"
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty, env={"POD_NAME": "x"}).identity == "x"
    bad = tmp_path / "bad.yaml"
    bad.write_text("leaderElection:\n  enabled: true\n")
    with pytest.raises(ConfigError, match=rf"^{bad}: leaderElection.enabled: unknown key"):
        load_config(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("stream: [\n")
    with pytest.raises(ConfigError, match=rf"^config file {broken}: not valid YAML"):
        load_config(broken)
    with pytest.raises(ConfigError, match="config file /nonexistent.yaml: No such file"):
        load_config("/nonexistent.yaml")
