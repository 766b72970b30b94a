"""Agent config parsing: Antrea-compatible keys, defaults, and errors that name the key."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from agent.config import (
    KEYS,
    ConfigError,
    ControllerLinkConfig,
    load_config,
    parse_config,
    parse_duration,
)
from agent.multicast.uplink import ExternalForwarding
from pipeline.multicast import Mode

BASE = {"node": {"name": "node1", "ip": "192.168.77.1"}}


def test_defaults_follow_antrea() -> None:
    cfg = parse_config(BASE)
    assert cfg.multicast_enabled and cfg.encap_mode is Mode.ENCAP
    assert (cfg.query_interval_s, cfg.max_response_s, cfg.robustness) == (125.0, 10.0, 2)
    assert cfg.query_versions == (1, 2, 3) and cfg.uplink is None


def test_full_config() -> None:
    cfg = parse_config({
        **BASE,
        "featureGates": {"Multicast": True},
        "trafficEncapMode": "noEncap",
        "multicast": {"enable": True, "multicastInterfaces": ["eth0"],
                      "igmpQueryInterval": "10s", "igmpQueryVersions": [2, 3]},
        "ovs": {"datapathType": "netdev", "tunnelType": "geneve"},
    })
    assert cfg.encap_mode is Mode.NOENCAP and cfg.uplink == "eth0"
    assert cfg.query_interval_s == 10 and cfg.max_response_s == 5  # short interval: shorter window
    assert cfg.query_versions == (2, 3)
    assert (cfg.datapath_type, cfg.tunnel_type) == ("netdev", "geneve")


def test_node_identity_from_the_environment() -> None:
    cfg = parse_config({}, env={"NODE_NAME": "w1", "NODE_IP": "10.0.0.7"})
    assert (cfg.node_name, cfg.node_ip) == ("w1", "10.0.0.7")


def test_feature_gate_off_disables_multicast() -> None:
    assert not parse_config({**BASE, "featureGates": {"Multicast": False}}).multicast_enabled


@pytest.mark.parametrize(("raw", "key"), [
    ({"node": {"ip": "1.2.3.4"}}, "node.name"),
    ({"node": {"name": "n", "ip": "nope"}}, "node.ip"),
    ({**BASE, "trafficEncapMode": "hybrid"}, "trafficEncapMode"),
    ({**BASE, "multicast": {"igmpQueryVersions": [4]}}, "igmpQueryVersions"),
    ({**BASE, "multicast": {"igmpQueryInterval": "soon"}}, "igmpQueryInterval"),
    ({**BASE, "multicast": {"igmpQueryInterval": "10s", "igmpMaxResponse": "10s"}},
     "igmpMaxResponse"),
    ({**BASE, "multicast": {"multicastInterfaces": "eth0"}}, "multicastInterfaces"),
    ({**BASE, "ovs": {"tunnelType": "gre"}}, "tunnelType"),
    ({**BASE, "ovs": {"controllerPort": True}}, "controllerPort"),
])
def test_bad_input_names_the_key(raw: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        parse_config(raw, env={})


def test_durations() -> None:
    assert parse_duration("125s", "k") == 125 and parse_duration("2m", "k") == 120
    assert parse_duration("500ms", "k") == 0.5 and parse_duration(3, "k") == 3
    for bad in ("0s", "-1s", "1d", True):
        with pytest.raises(ConfigError):
            parse_duration(bad, "k")


def test_load_config_file_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("node: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    good = tmp_path / "good.yaml"
    good.write_text("node: {name: n1, ip: 10.0.0.1}\n")
    assert load_config(good).node_name == "n1"


# ------------------------------------------------------------------ unknown keys

def test_misspelt_key_is_an_error_not_a_default(tmp_path) -> None:
    """`igmpQueryIntervall` used to be ignored, leaving the 125 s default in place."""
    path = tmp_path / "agent.yaml"
    path.write_text("node: {name: n1, ip: 10.0.0.1}\nmulticast: {igmpQueryIntervall: 5s}\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == (
        f"{path}: multicast.igmpQueryIntervall: unknown key (known: enable, externalForwarding, "
        "igmpMaxResponse, igmpQueryInterval, igmpQueryVersions, igmpRateLimit, igmpRobustness, "
        "interfaceMTU, limits, multicastInterfaces)")


@pytest.mark.parametrize(("raw", "path"), [
    ({**BASE, "metricPort": 9464}, "metricPort: unknown key"),
    ({**BASE, "multicast": {"enabled": True}}, "multicast.enabled: unknown key"),
    ({"node": {**BASE["node"], "nodeIP": "10.0.0.2"}}, "node.nodeIP: unknown key"),
    ({**BASE, "ovs": {"bridge": "br-int"}}, "ovs.bridge: unknown key"),
    ({**BASE, "featureGates": {"Multicast": True, "Egres": True}},
     "featureGates.Egres: unknown feature gate"),
])
def test_unknown_keys_are_rejected_with_their_path(tmp_path, raw: dict, path: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{re.escape(path)} \(known: "):
        parse_config(raw, env={})
    f = tmp_path / "agent.yaml"
    f.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(f))}: {re.escape(path)} \("):
        load_config(f)


def test_feature_gates_must_be_bool() -> None:
    with pytest.raises(ConfigError, match=r"^featureGates\.Multicast: expected bool, got str"):
        parse_config({**BASE, "featureGates": {"Multicast": "yes"}})


def test_bad_values_name_the_file(tmp_path) -> None:
    f = tmp_path / "agent.yaml"
    f.write_text("node: {name: n1, ip: 10.0.0.1}\novs: {tunnelType: gre}\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(f))}: ovs\.tunnelType: 'gre'"):
        load_config(f)
    f.write_text("[node]\n")
    with pytest.raises(ConfigError, match=r"agent\.yaml: top level: must be a mapping"):
        load_config(f)


def test_every_declared_key_is_accepted() -> None:
    raw: dict[str, Any] = {
        "featureGates": {"Multicast": True},
        "trafficEncapMode": "encap",
        "multicast": {"enable": True, "multicastInterfaces": ["eth0"],
                      "igmpQueryInterval": "10s", "igmpMaxResponse": "1s",
                      "igmpQueryVersions": [3], "igmpRobustness": 3,
                      "limits": {"recordsPerReport": 10, "sourcesPerRecord": 11,
                                 "groupsPerPod": 12, "sourcesPerPod": 13, "groupsPerNode": 14},
                      "igmpRateLimit": {"podPps": 15, "tunnelPps": 16, "uplinkPps": 17},
                      "interfaceMTU": 9000, "externalForwarding": "always"},
        "node": {"name": "n1", "ip": "10.0.0.1", "mac": "0a:00:00:00:00:01"},
        "ovs": {"db": "unix:/tmp/db.sock", "runDir": "/tmp/ovs", "datapathType": "netdev",
                "tunnelType": "geneve", "intBridge": "br-a", "phyBridge": "br-b",
                "controllerPort": 6654},
        "apiSocket": "/tmp/agent.sock", "metricsPort": 1,
        "controller": {"address": "https://ctl:1234", "tokenFile": "/t", "caFile": "/ca"},
    }
    assert set(raw) == set(KEYS[""])
    def section(path: str) -> dict[str, Any]:
        d = raw
        for part in path.split("."):
            d = d[part]
        return d

    assert all(set(section(s)) == set(KEYS[s]) for s in KEYS if s)
    cfg = parse_config(raw, env={})
    assert (cfg.node_mac, cfg.ovsdb, cfg.ovs_rundir, cfg.controller_port) == (
        "0a:00:00:00:00:01", "unix:/tmp/db.sock", "/tmp/ovs", 6654)
    assert (cfg.int_bridge, cfg.phy_bridge, cfg.query_versions) == ("br-a", "br-b", (3,))
    assert (cfg.max_response_s, cfg.robustness, cfg.api_socket, cfg.metrics_port) == (
        1, 3, "/tmp/agent.sock", 1)
    assert (cfg.interface_mtu, cfg.external_forwarding) == (9000, ExternalForwarding.ALWAYS)
    assert cfg.controller == ControllerLinkConfig("https://ctl:1234", "/t", "/ca")


def test_external_forwarding_is_auto_unless_told_always() -> None:
    assert parse_config(BASE).external_forwarding is ExternalForwarding.AUTO
    with pytest.raises(ConfigError, match=r"^multicast\.externalForwarding: 'never' is not auto "
                                          r"or always$"):
        parse_config({**BASE, "multicast": {"externalForwarding": "never"}})


def test_limits_and_punt_rates() -> None:
    cfg = parse_config({**BASE, "multicast": {
        "limits": {"groupsPerPod": 7}, "igmpRateLimit": {"podPps": 50}}})
    assert (cfg.limits.groups_per_pod, cfg.limits.records_per_report) == (7, 256)
    assert (cfg.punt_rates.pod_pps, cfg.punt_rates.tunnel_pps) == (50, 5000)
    with pytest.raises(ConfigError, match=r"^multicast\.limits\.groupsPerPood: unknown key"):
        parse_config({**BASE, "multicast": {"limits": {"groupsPerPood": 7}}})
    with pytest.raises(ConfigError, match=r"^multicast\.limits\.sourcesPerPod: must be at "
                                          r"least 1, got 0"):
        parse_config({**BASE, "multicast": {"limits": {"sourcesPerPod": 0}}})
    with pytest.raises(ConfigError, match=r"^multicast\.igmpRateLimit\.tunnelPps: expected int"):
        parse_config({**BASE, "multicast": {"igmpRateLimit": {"tunnelPps": "fast"}}})


@pytest.mark.parametrize("mtu", [575, 65536, True, "1500"])
def test_interface_mtu_out_of_range_or_wrong_type(mtu: Any) -> None:
    raw = {"node": {"name": "n1", "ip": "10.0.0.1"}, "multicast": {"interfaceMTU": mtu}}
    with pytest.raises(ConfigError, match=r"multicast\.interfaceMTU"):
        parse_config(raw, env={})


# ------------------------------------------------------------------ the controller link

def test_no_controller_section_means_no_link() -> None:
    assert parse_config(BASE).controller is None


@pytest.mark.parametrize(("address", "expected"), [
    ("https://ctl.kube-mcast.svc", "https://ctl.kube-mcast.svc:10349"),  # the default port
    ("https://10.96.0.7:443/", "https://10.96.0.7:443"),
    ("http://127.0.0.1:9000", "http://127.0.0.1:9000"),  # labs and tests
    ("https://[fd00::7]", "https://[fd00::7]:10349"),
])
def test_controller_address(address: str, expected: str) -> None:
    cfg = parse_config({**BASE, "controller": {"address": address, "tokenFile": "/tok"}})
    assert cfg.controller == ControllerLinkConfig(expected, "/tok", "")


@pytest.mark.parametrize(("controller", "message"), [
    ({"tokenFile": "/t"}, r"^controller\.address: required"),
    ({"address": "ctl:10349", "tokenFile": "/t"}, r"^controller\.address: 'ctl:10349' is not"),
    ({"address": "wss://ctl", "tokenFile": "/t"}, r"^controller\.address: 'wss://ctl' is not"),
    ({"address": "https://ctl/v1/stream", "tokenFile": "/t"}, r"^controller\.address: .* not"),
    ({"address": "https://ctl:99999", "tokenFile": "/t"}, r"^controller\.address: .*range"),
    ({"address": "https://ctl"}, r"^controller\.tokenFile: required"),
    ({"address": "http://ctl", "tokenFile": "/t", "caFile": "/ca"},
     r"^controller\.caFile: given but controller\.address is not https"),
    ({"address": "https://ctl", "tokenFile": "/t", "token": "x"},
     r"^controller\.token: unknown key \(known: address, caFile, tokenFile\)"),
    ({"address": 10349, "tokenFile": "/t"}, r"^controller\.address: expected str, got int"),
])
def test_controller_errors_name_the_key(controller: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({**BASE, "controller": controller})
