"""Group mod sizes: pipeline.groupsplit against the adaptor's real encoding, and big groups on OVS.

The differ splits groups by sizes ``pipeline.groupsplit`` computes from the descriptions. Here
each is compared with the length os-ken serializes for the adaptor's message (OpenFlow 1.5),
and with the length of what the switch actually sends, the fast path's bytes
(``agent.ovs.fastwire``, which must be os-ken's to the byte), action kind by action kind and for
every kind of bucket the pipeline builds, for ADD, MODIFY and INSERT_BUCKETS alike: equal, not
merely bounded, so the splitter's limit is exact. Wrapped in a
bundle-add, a group mod of ``MAX_BUNDLED_MESSAGE`` bytes still fits the 16-bit length, and OVS
takes the largest one the splitter makes. A bigger group goes as ADD + INSERT_BUCKETS in one
bundle.

OVS cannot *describe* such a group back (its ofp_group_desc entry would exceed 64 KiB; OVS
sends it with a wrapped length, which breaks the framing of the channel), so the test counts
buckets with the group statistics (16 bytes per bucket) instead of dump-groups.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from oflab import attached_switch, ensure_br_int
from os_ken.ofproto import ofproto_protocol
from os_ken.ofproto import ofproto_v1_5_parser as ofpp

from agent.flowsync.reconciler import Reconciler
from agent.ovs.buckets import DESC_SAFE_BUCKETS
from agent.ovs.convert import MAX_BUNDLED_MESSAGE, OF_VERSION, Converter
from agent.ovs.fastwire import FastEncoder, bundle_add
from agent.ovs.ovsdb import Ovsdb
from agent.ovs.switch import OpenFlowSwitch
from pipeline import layout
from pipeline import multicast as mc
from pipeline.cookies import Feature
from pipeline.groupsplit import (
    BUNDLE_ADD_OVERHEAD,
    DEFAULT_BUCKET_CAP,
    OFP_MAX_MESSAGE,
    group_mod_size,
    op_size,
    split_group_op,
)
from pipeline.model import (
    Action,
    Bucket,
    Controller,
    Ct,
    Group,
    GroupAction,
    GroupType,
    LoadReg,
    Output,
    OutputReg,
    Resubmit,
    SetField,
    SetTunnelDst,
    SwitchState,
)
from pipeline.ops import Command, GroupOp
from pipeline.registers import OUT_KIND, OUT_PORT, OutKind
from tools.mclab.ovsnode import OvsNode

P = mc.pipeline()
CFG = mc.BridgeConfig(mc.Mode.ENCAP, 1, "192.168.77.1", "02:77:00:00:00:01", tunnel_port=100,
                      uplink_port=200)


def _remotes(n: int) -> list[str]:
    return [f"10.{i // 60000}.{i // 250 % 240}.{i % 250 + 1}" for i in range(n)]


def _group(n_remote: int, gid: int = 5, local: tuple[int, ...] = ()) -> Group:
    return mc.multicast_group(CFG, gid, local, _remotes(n_remote))


def _wire_size(op: GroupOp, first_bucket: int = 0) -> tuple[int, int]:
    """(group mod length, bundle-add length) as os-ken serializes them, which are also the
    fast path's: its bytes are checked to be the same."""
    dp = ofproto_protocol.ProtocolDesc(OF_VERSION)
    msg = Converter(P).group_mod(dp, op, first_bucket)
    msg.xid = 1
    msg.serialize()
    add = ofpp.OFPBundleAddMsg(dp, 1, 0, Converter(P).group_mod(dp, op, first_bucket), [])
    add.xid = 2
    add.serialize()
    fast = FastEncoder(P).encode(op, first_bucket)
    assert fast is not None and bytes(msg.buf)[8:] == fast[8:]
    assert bundle_add(1, 0, 2, fast) == bytes(add.buf)
    return len(msg.buf), len(add.buf)


ACTIONS = [
    Output(3), GroupAction(5), OutputReg(OUT_PORT), Resubmit(layout.OUTPUT),
    SetTunnelDst("10.0.0.1"), SetField("eth_src", "02:00:00:00:00:01"),
    SetField("ipv4_src", "10.0.0.1"), SetField("tunnel_id", 5), SetField("udp_dst", 53),
    LoadReg(OUT_PORT, 3), LoadReg(OUT_KIND, OutKind.REMOTE), Controller(b"\x01"),
    Controller(b"\x01\x02\x03\x04\x05", max_len=128), Ct(65520, True, "192.168.77.1"),
    Ct(7, True),
]  # fmt: skip


@pytest.mark.parametrize("action", ACTIONS, ids=lambda a: type(a).__name__)
def test_action_size_is_the_adaptors(action: Action) -> None:
    op = GroupOp(Command.ADD, Group(1, (Bucket((action,)),)))
    assert op_size(op) == _wire_size(op)[0]


BUCKETS = {
    "local": mc.local_bucket(7),
    "remote": mc.remote_bucket("10.1.2.3"),
    "external": mc.external_bucket(),
    "query": mc.query_group([4]).buckets[0],  # output to a pod
}


@pytest.mark.parametrize("gtype", [GroupType.ALL, GroupType.SELECT])
@pytest.mark.parametrize("command", [Command.ADD, Command.MODIFY, Command.INSERT_BUCKETS])
@pytest.mark.parametrize("kind", BUCKETS)
def test_computed_size_is_the_encoded_size(kind: str, command: Command, gtype: GroupType) -> None:
    for n in (1, DEFAULT_BUCKET_CAP):
        op = GroupOp(command, Group(9, (BUCKETS[kind],) * n, gtype))
        size, bundled = _wire_size(op, first_bucket=700 if command is Command.INSERT_BUCKETS
                                   else 0)
        assert op_size(op) == size and bundled == size + BUNDLE_ADD_OVERHEAD
    mixed = _group(DEFAULT_BUCKET_CAP - 3, local=(1, 2))  # local, remote and external buckets
    op = GroupOp(command, Group(9, mixed.buckets, gtype))
    assert op_size(op) == _wire_size(op)[0]
    assert op_size(GroupOp(Command.DELETE, mixed)) == _wire_size(GroupOp(Command.DELETE, mixed))[0]


def test_largest_group_mod_fits_one_message() -> None:
    group = _group(DEFAULT_BUCKET_CAP - 1)  # 699 remote buckets + the external bucket
    assert len(group.buckets) == DEFAULT_BUCKET_CAP
    op = GroupOp(Command.MODIFY, group)
    assert split_group_op(op) == [op]  # the differ sends it whole
    size, bundled = _wire_size(op)
    assert size == op_size(op) <= MAX_BUNDLED_MESSAGE and bundled <= OFP_MAX_MESSAGE
    remote_only = Group(5, tuple(mc.remote_bucket(ip) for ip in _remotes(DEFAULT_BUCKET_CAP)))
    size, bundled = _wire_size(GroupOp(Command.ADD, remote_only))
    assert size == 24 + 700 * 56 and bundled == size + 16  # 39,224 bytes: ample headroom


def _byte_bound_group() -> Group:
    """A group whose first message is the largest the splitter allows: 65,512 bytes (sizes are
    multiples of 8), then 10 more buckets."""
    small, big = Bucket((Output(1),)), Bucket((SetField("eth_src", "02:00:00:00:00:01"),
                                               Output(1)))
    assert group_mod_size(Group(1, (small,) * 2727 + (big,))) == 65512
    return Group(8, (small,) * 2727 + (big,) + (small,) * 10)


def test_every_split_piece_fits() -> None:
    for op in split_group_op(GroupOp(Command.ADD, _group(3000, local=(1, 2, 3)))):
        size, bundled = _wire_size(op, first_bucket=700)
        assert size == op_size(op) and bundled <= OFP_MAX_MESSAGE
    pieces = split_group_op(GroupOp(Command.ADD, _byte_bound_group()), cap=10_000)
    assert [len(p.group.buckets) for p in pieces] == [2728, 10]
    size, bundled = _wire_size(pieces[0])
    assert size == op_size(pieces[0]) == 65512 and bundled == 65528 <= OFP_MAX_MESSAGE


@pytest.fixture
def switch(ovs_node: OvsNode) -> Iterator[OpenFlowSwitch]:
    fatal: list[BaseException] = []
    with Ovsdb(ovs_node.db_sock) as db, attached_switch(
            ovs_node, P, fatal, configure=lambda: ensure_br_int(db)) as sw:
        yield sw
    assert not fatal


def _bucket_counts(node: OvsNode) -> dict[int, int]:
    """Buckets per group from ``dump-group-stats`` (one bucketN counter per bucket)."""
    out = {}
    for line in node.ofctl("dump-group-stats", "br-int").splitlines():
        m = re.search(r"group_id=(\d+)", line)
        if m:
            out[int(m.group(1))] = len(re.findall(r"bucket\d+:", line))
    return out


class Counting:
    def __init__(self, sw: OpenFlowSwitch) -> None:
        self.sw, self.bundles, self.ops = sw, 0, []

    def apply(self, ops):  # noqa: ANN001, ANN201 - the Reconciler's Switch protocol
        self.bundles += 1
        self.ops = list(ops)
        self.sw.apply(ops)

    def dump(self) -> SwitchState:
        return self.sw.dump()


@pytest.mark.ovs
def test_3000_bucket_group_in_one_bundle(switch: OpenFlowSwitch, ovs_node: OvsNode) -> None:
    counting = Counting(switch)
    rec = Reconciler(counting, P)
    small = _group(2, gid=6, local=(1,))
    rec.set(Feature.GROUP, "small", SwitchState(groups=(small,)))
    rec.set(Feature.GROUP, "big", SwitchState((mc.route_flow(CFG, "239.1.1.1", 5),),
                                         (_group(2999),)))
    rec.flush()  # reads the (empty) switch first, then one bundle
    kinds = [op.command for op in counting.ops if isinstance(op, GroupOp)
             and op.group.group_id == 5]
    assert counting.bundles == 1 and kinds[0] is Command.ADD
    assert kinds[1:] == [Command.INSERT_BUCKETS] * 4  # 700 per message, 200 in the last
    assert _bucket_counts(ovs_node) == {5: 3000, 6: len(small.buckets)}

    # Grow it: MODIFY + INSERT_BUCKETS again, bucket ids restart at 0 and stay unique.
    rec.set(Feature.GROUP, "big", SwitchState((mc.route_flow(CFG, "239.1.1.1", 5),),
                                         (_group(3100),)))
    rec.flush()
    assert counting.bundles == 2 and _bucket_counts(ovs_node)[5] == 3101

    # Reading back: the big group is listed without buckets, the small one in full, and the
    # channel survives (the next request still works).
    state = switch.dump()
    groups = {g.group_id: g for g in state.groups}
    assert groups[5].buckets == () and len(_group(3100).buckets) > DESC_SAFE_BUCKETS
    assert groups[6] == small
    assert switch.dump() == state


@pytest.mark.ovs
def test_largest_split_message_and_select_groups_on_ovs(switch: OpenFlowSwitch,
                                                          ovs_node: OvsNode) -> None:
    big = _byte_bound_group()
    switch.apply(split_group_op(GroupOp(Command.ADD, big), cap=10_000))  # 65,528-byte bundle-add
    # Select buckets go without a weight property (as sized): OVS takes them, weight 1.
    select = Group(9, (mc.local_bucket(3), mc.remote_bucket("10.0.0.1")), GroupType.SELECT)
    switch.apply([GroupOp(Command.ADD, Group(9, select.buckets[:1], GroupType.SELECT)),
                  GroupOp(Command.INSERT_BUCKETS, Group(9, select.buckets[1:], GroupType.SELECT))])
    assert _bucket_counts(ovs_node) == {8: len(big.buckets), 9: 2}
    assert {g.group_id: g for g in switch.dump().groups}[9] == select
    text = ovs_node.ofctl("-O", "OpenFlow15", "dump-groups", "br-int", "9")
    assert "type=select" in text and "weight" not in text  # ofctl shows weights other than 1
