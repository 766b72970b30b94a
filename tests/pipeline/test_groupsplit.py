"""pipeline.groupsplit: OpenFlow 1.5 byte sizes from the message layouts, and splitting.

The sizes here follow the OpenFlow 1.5 structures (the numbers are the spec's, written out);
that they equal what the os-ken adaptor really encodes is checked against ``agent.ovs.convert``
in tests/agent/ovs/test_groupmod_size.py, where os-ken may be imported.
"""

from __future__ import annotations

import pytest

from pipeline import layout
from pipeline import multicast as mc
from pipeline.groupsplit import (
    DEFAULT_BUCKET_CAP,
    MAX_BUNDLED_MESSAGE,
    action_size,
    bucket_size,
    group_mod_size,
    op_size,
    split_group_op,
)
from pipeline.model import (
    Action,
    Bucket,
    Controller,
    Ct,
    Drop,
    GotoTable,
    Group,
    GroupAction,
    GroupType,
    LoadReg,
    Output,
    OutputReg,
    Resubmit,
    SetField,
    SetTunnelDst,
)
from pipeline.ops import Command, GroupOp
from pipeline.registers import OUT_KIND, OUT_PORT, OutKind

SIZES = [
    (Output(3), 16), (GroupAction(5), 8), (OutputReg(OUT_PORT), 24),
    (Resubmit(layout.OUTPUT), 16), (SetTunnelDst("10.0.0.1"), 16),
    (SetField("eth_src", "02:00:00:00:00:01"), 16), (SetField("tunnel_id", 5), 16),
    (LoadReg(OUT_PORT, 3), 16),  # whole register: set_field reg1, 4-byte value
    (LoadReg(OUT_KIND, OutKind.REMOTE), 16),  # masked set_field: value 4 + mask 4
    (Controller(b"\x01"), 16 + 8), (Controller(b"\x01" * 5, max_len=128), 16 + 8 + 16),
    (Ct(65520, True, "192.168.77.1"), 24 + 24), (Ct(7, True), 24), (Drop(), 0),
]  # fmt: skip


@pytest.mark.parametrize(("action", "size"), SIZES, ids=[type(a).__name__ for a, _ in SIZES])
def test_action_sizes(action: Action, size: int) -> None:
    assert action_size(action) == size


def test_goto_is_no_bucket_action() -> None:
    with pytest.raises(ValueError, match="instruction"):
        action_size(GotoTable(layout.OUTPUT))


def test_group_mod_layout() -> None:
    remote = mc.remote_bucket("10.0.0.1")  # masked load, tun_dst, resubmit
    assert bucket_size(remote) == 8 + 16 + 16 + 16
    group = Group(9, (remote,) * DEFAULT_BUCKET_CAP)
    assert group_mod_size(group) == 24 + 700 * 56 < MAX_BUNDLED_MESSAGE
    # Every command has the same layout (OpenFlow 1.5); the adaptor adds no select weight.
    for command in (Command.ADD, Command.MODIFY, Command.INSERT_BUCKETS):
        assert op_size(GroupOp(command, group)) == group_mod_size(group)
    select = Group(9, group.buckets, GroupType.SELECT)
    assert op_size(GroupOp(Command.INSERT_BUCKETS, select)) == group_mod_size(group)
    assert op_size(GroupOp(Command.DELETE, group)) == 24


def test_bundle_limit_is_openflow_15() -> None:
    assert MAX_BUNDLED_MESSAGE == 65535 - 16  # ofp_header, bundle_id, pad, flags


def _remote_group(n: int) -> Group:
    return Group(9, tuple(mc.remote_bucket(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
                          for i in range(1, n + 1)))


@pytest.mark.parametrize("command", [Command.ADD, Command.MODIFY])
def test_5000_buckets_split_into_fitting_pieces(command: Command) -> None:
    group = _remote_group(5000)
    pieces = split_group_op(GroupOp(command, group))
    assert pieces[0].command is command
    assert all(p.command is Command.INSERT_BUCKETS for p in pieces[1:])
    assert [len(p.group.buckets) for p in pieces] == [700] * 7 + [100]
    assert sum((p.group.buckets for p in pieces), ()) == group.buckets  # all, once, in order
    assert all(op_size(p) <= MAX_BUNDLED_MESSAGE for p in pieces)


def test_bytes_force_fewer_buckets_than_the_cap() -> None:
    big = Bucket((Ct(1, True, "10.0.0.1"), Controller(b"\x01" * 200), Output(1)))
    assert bucket_size(big) == 8 + 48 + 16 + 208 + 16
    group = Group(3, (big,) * 1000)
    pieces = split_group_op(GroupOp(Command.ADD, group))
    per_message = (MAX_BUNDLED_MESSAGE - 24) // 296
    assert [len(p.group.buckets) for p in pieces] == [per_message] * 4 + [1000 - 4 * per_message]
    assert op_size(pieces[0]) <= MAX_BUNDLED_MESSAGE < op_size(pieces[0]) + 296


def test_small_cap_and_untouched_ops() -> None:
    group = _remote_group(5)
    assert [len(p.group.buckets) for p in split_group_op(GroupOp(Command.ADD, group),
                                                         cap=2)] == [2, 2, 1]
    ins = split_group_op(GroupOp(Command.INSERT_BUCKETS, group), cap=3)
    assert [(p.command, len(p.group.buckets)) for p in ins] == [
        (Command.INSERT_BUCKETS, 3), (Command.INSERT_BUCKETS, 2)]
    for op in (GroupOp(Command.DELETE, group), GroupOp(Command.ADD, Group(4, ())),
               GroupOp(Command.ADD, group)):
        assert split_group_op(op) == [op]


def test_select_group_pieces_keep_their_type() -> None:
    group = Group(3, _remote_group(3).buckets, GroupType.SELECT)
    pieces = split_group_op(GroupOp(Command.ADD, group), cap=1)
    assert {p.group.type for p in pieces} == {GroupType.SELECT}
    assert op_size(pieces[1]) == 24 + 8 + 48  # header, bucket header, actions


def test_a_bucket_that_cannot_fit_is_an_error() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        split_group_op(GroupOp(Command.ADD, _remote_group(2)), max_bytes=60)
    with pytest.raises(ValueError):
        split_group_op(GroupOp(Command.ADD, _remote_group(2)), cap=0)
