"""The agent's controller link without a controller: what it reports and how it gives up.

The stream itself (TLS, TokenReview, reconnects) is tested against a real controller stream in
tests/controller/test_stream.py.
"""

from __future__ import annotations

import time
from pathlib import Path

from agent.config import ControllerLinkConfig
from agent.controllerlink import ControllerLink, membership_report
from agent.multicast.core import GroupMembers, SourceFilterView
from wire.members import GroupReport, MemberPod
from wire.nodes import NodeInfo
from wire.stream import members_message, parse_members_message


class Core:
    def __init__(self) -> None:
        self.applied: list[list[NodeInfo]] = []

    def members(self) -> list[GroupMembers]:
        return []

    def set_nodes(self, nodes: list[NodeInfo]) -> None:
        self.applied.append(nodes)


def test_membership_report_has_local_pods_with_their_filters_and_no_remote_nodes() -> None:
    members = [
        GroupMembers("239.2.2.2", ("prod/b", "default/a"), ("10.0.0.2",),
                     {"prod/b": SourceFilterView("include", ("10.1.0.9", "10.1.0.8"))}),
        GroupMembers("239.1.1.1", (), ("10.0.0.3",)),  # remote only: not ours to report
        GroupMembers("224.5.6.4", ("default/a",), (),
                     {"default/a": SourceFilterView("exclude", ("10.1.0.7",))}),
    ]
    report = membership_report(members)
    assert report == [
        GroupReport("224.5.6.4", (MemberPod("default", "a", "exclude", ("10.1.0.7",)),)),
        GroupReport("239.2.2.2", (MemberPod("default", "a"),
                                  MemberPod("prod", "b", "include", ("10.1.0.8", "10.1.0.9")))),
    ]
    assert parse_members_message(members_message(report)) == report  # survives the wire
    assert membership_report([]) == []


def test_nothing_listening_the_link_retries_and_applies_nothing(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t\n")
    core = Core()
    link = ControllerLink(ControllerLinkConfig("http://127.0.0.1:9", str(token)), "node1", core,
                          backoff_min_s=0.05, backoff_max_s=0.1)
    link.start()
    try:
        deadline = time.monotonic() + 5
        while "cannot connect" not in link.last_error and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "cannot connect" in link.last_error and not link.connected
    finally:
        link.stop()
    assert core.applied == [] and link.connects == 0


def test_a_missing_token_file_is_reported_and_retried(tmp_path: Path) -> None:
    core = Core()
    link = ControllerLink(ControllerLinkConfig("http://127.0.0.1:9", str(tmp_path / "none")),
                          "node1", core, backoff_min_s=0.05, backoff_max_s=0.1)
    link.start()
    try:
        deadline = time.monotonic() + 5
        while "token file" not in link.last_error and time.monotonic() < deadline:
            time.sleep(0.02)
        assert link.last_error == f"token file {tmp_path / 'none'}: No such file or directory"
    finally:
        link.stop()
