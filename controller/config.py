"""Controller configuration: the YAML file (``controller.yaml``, a ConfigMap) it starts from.

Owns parsing and validating it into a frozen ``ControllerConfig``. Strict like the agent's:
every mapping declares its keys (``KEYS``, ``FEATURE_GATES``), so a misspelt key is an error
naming its path (``leaderElection.leaseDuraton``) and, through ``load_config``, the file; never
silently a default.

    featureGates: {Multicast: true}
    kubeconfig: ""                  # empty: in-cluster (the pod's service account)
    stream: {address: 0.0.0.0, port: 10349, certFile: /etc/.../tls.crt, keyFile: ...,
             agentServiceAccount: kube-mcast/kube-mcast-agent}
    leaderElection: {enable: true, leaseName: kube-mcast-controller,
                     leaseNamespace: kube-mcast, leaseDuration: 15s, renewDeadline: 10s,
                     retryPeriod: 2s}
    identity: ""                    # default: $POD_NAME, else the hostname
    metricsPort: 0                  # 0: no Prometheus endpoint

Without ``certFile``/``keyFile`` the agent stream is plain HTTP (the lab only).
``stream.agentServiceAccount`` (``NAMESPACE/NAME``; empty: none) is the agents' service account:
besides ``system:node:NAME`` users, a token of that account may open node NAME's stream when
its TokenReview names the node it was issued to (``controller.stream``).
May import: PyYAML and the standard library.
"""

from __future__ import annotations

import math
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wire.configfile import ConfigError, Schema, key_path, load_yaml, parse_duration

__all__ = ["ConfigError", "ControllerConfig", "load_config", "parse_config", "parse_duration"]


# Feature gate -> default (Antrea's shape). The policy gates will join Multicast here.
FEATURE_GATES: dict[str, bool] = {"Multicast": True}

# The keys of each mapping ("" is the top level); anything else is rejected.
KEYS: dict[str, tuple[str, ...]] = {
    "": ("featureGates", "kubeconfig", "stream", "leaderElection", "identity", "metricsPort"),
    "featureGates": tuple(FEATURE_GATES),
    "stream": ("address", "port", "certFile", "keyFile", "agentServiceAccount"),
    "leaderElection": ("enable", "leaseName", "leaseNamespace", "leaseDuration",
                       "renewDeadline", "retryPeriod"),
}

_SCHEMA = Schema(KEYS)
_get, _section, _path = _SCHEMA.get, _SCHEMA.section, key_path

DEFAULT_STREAM_PORT = 10349
DEFAULT_AGENT_SERVICE_ACCOUNT = "kube-mcast/kube-mcast-agent"
# a DNS-1123 subdomain: what Kubernetes accepts as a Lease's name and a namespace (label)
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class ControllerConfig:
    identity: str
    multicast_enabled: bool = True
    kubeconfig: str = ""  # empty: in-cluster
    # the agent stream (controller.stream): TLS when both files are given, else plain HTTP
    stream_address: str = "0.0.0.0"
    stream_port: int = DEFAULT_STREAM_PORT
    cert_file: str | None = None
    key_file: str | None = None
    # NAMESPACE/NAME of the agents' service account ("": only system:node:NAME users)
    agent_service_account: str = DEFAULT_AGENT_SERVICE_ACCOUNT
    leader_election: bool = True
    lease_name: str = "kube-mcast-controller"
    lease_namespace: str = "kube-mcast"
    lease_duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0
    metrics_port: int = 0

    @property
    def tls(self) -> bool:
        return self.cert_file is not None

    @property
    def lease_duration_seconds(self) -> int:
        """What the Lease records (an integer number of seconds, rounded up)."""
        return max(1, math.ceil(self.lease_duration_s))


def _port(d: dict[str, Any], section: str, key: str, default: int) -> int:
    port: int = _get(d, section, key, int, default)
    if not 0 <= port <= 65535:
        raise ConfigError(f"{_path(section, key)}: {port} is not a port (0..65535)")
    return port


def _stream(raw: dict[str, Any]) -> dict[str, Any]:
    s = _section(raw, "stream")
    cert = _get(s, "stream", "certFile", str, "") or None
    key = _get(s, "stream", "keyFile", str, "") or None
    if (cert is None) != (key is None):
        raise ConfigError("stream.certFile, stream.keyFile: give both (TLS) or neither "
                          "(plain HTTP, the lab only)")
    address = _get(s, "stream", "address", str, "0.0.0.0")
    if not address:
        raise ConfigError("stream.address: must not be empty")
    account = _get(s, "stream", "agentServiceAccount", str, DEFAULT_AGENT_SERVICE_ACCOUNT)
    if account:
        namespace, slash, name = account.partition("/")
        if (not slash or not _LABEL.match(namespace) or len(namespace) > 63
                or not _SUBDOMAIN.match(name) or len(name) > 253):
            raise ConfigError(f"stream.agentServiceAccount: {account!r} is not NAMESPACE/NAME "
                              "of a service account (or empty: none)")
    return {"stream_address": address,
            "stream_port": _port(s, "stream", "port", DEFAULT_STREAM_PORT),
            "cert_file": cert, "key_file": key, "agent_service_account": account}


def _leader_election(raw: dict[str, Any]) -> dict[str, Any]:
    le, sec = _section(raw, "leaderElection"), "leaderElection"
    name = _get(le, sec, "leaseName", str, "kube-mcast-controller")
    if not _SUBDOMAIN.match(name) or len(name) > 253:
        raise ConfigError(f"leaderElection.leaseName: {name!r} is not a valid object name")
    namespace = _get(le, sec, "leaseNamespace", str, "kube-mcast")
    if not _LABEL.match(namespace) or len(namespace) > 63:
        raise ConfigError(f"leaderElection.leaseNamespace: {namespace!r} is not a valid "
                          "namespace name")
    duration = parse_duration(le.get("leaseDuration", "15s"), "leaderElection.leaseDuration")
    deadline = parse_duration(le.get("renewDeadline", "10s"), "leaderElection.renewDeadline")
    retry = parse_duration(le.get("retryPeriod", "2s"), "leaderElection.retryPeriod")
    # as client-go: the leader gives up before others may take over, and retries in time
    if deadline >= duration:
        raise ConfigError("leaderElection.renewDeadline: must be below leaseDuration")
    if retry * 1.2 >= deadline:
        raise ConfigError("leaderElection.retryPeriod: must be below renewDeadline / 1.2")
    return {"leader_election": bool(_get(le, sec, "enable", bool, True)), "lease_name": name,
            "lease_namespace": namespace, "lease_duration_s": duration,
            "renew_deadline_s": deadline, "retry_period_s": retry}


def default_identity(env: Mapping[str, str]) -> str:
    """$POD_NAME (unique per replica, stable across container restarts), else the hostname."""
    return env.get("POD_NAME") or socket.gethostname()


def parse_config(raw: Any, env: Mapping[str, str] | None = None) -> ControllerConfig:
    """Validate ``raw`` (the YAML document); ``env`` gives $POD_NAME for the identity."""
    env = os.environ if env is None else env
    if not isinstance(raw, dict):
        raise ConfigError(f"top level: must be a mapping, got {type(raw).__name__}")
    _SCHEMA.check_keys(raw, "")
    gates = _section(raw, "featureGates")
    gate = {g: bool(_get(gates, "featureGates", g, bool, on)) for g, on in FEATURE_GATES.items()}
    identity = _get(raw, "", "identity", str, "") or default_identity(env)
    return ControllerConfig(
        identity=identity,
        multicast_enabled=gate["Multicast"],
        kubeconfig=_get(raw, "", "kubeconfig", str, ""),
        metrics_port=_port(raw, "", "metricsPort", 0),
        **_stream(raw),
        **_leader_election(raw),
    )


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> ControllerConfig:
    """Read and parse the YAML file at ``path``; errors start with the path as given."""
    return load_yaml(path, lambda raw: parse_config(raw, env))
