"""mclab up --agent-config: a YAML mapping laid over every node's agent config, checked first."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.mclab.lab import LabError, load_agent_config, merged


def test_merged_lays_mappings_over_mappings() -> None:
    base = {"multicast": {"enable": True, "igmpQueryInterval": "10s"}, "metricsPort": 9464}
    extra = {"multicast": {"limits": {"groupsPerPod": 9}}, "metricsPort": 1}
    assert merged(base, extra) == {
        "multicast": {"enable": True, "igmpQueryInterval": "10s", "limits": {"groupsPerPod": 9}},
        "metricsPort": 1}
    assert base["multicast"] == {"enable": True, "igmpQueryInterval": "10s"}  # not changed


def test_a_bad_file_is_refused_before_any_node_starts(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("multicast: {igmpRateLimit: {podPps: 5000}}\n")
    assert load_agent_config(str(good)) == {"multicast": {"igmpRateLimit": {"podPps": 5000}}}
    bad = tmp_path / "bad.yaml"
    bad.write_text("multicast: {limits: {groupsPerPood: 5}}\n")
    with pytest.raises(LabError, match=r"bad\.yaml: multicast\.limits\.groupsPerPood: unknown"):
        load_agent_config(str(bad))
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n")
    with pytest.raises(LabError, match="expected a YAML mapping"):
        load_agent_config(str(listed))
