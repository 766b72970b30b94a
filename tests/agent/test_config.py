"""Agent config parsing: Antrea-compatible keys, defaults, and errors that name the key."""

from __future__ import annotations

import pytest

from agent.config import ConfigError, load_config, parse_config, parse_duration
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
