"""Large groups: what os-ken really encodes, and a 3000-bucket group applied on real OVS.

An OpenFlow message carries its length in 16 bits. The largest group mod we send (the differ's
700-bucket cap, remote buckets being the biggest) must fit, also wrapped in a bundle-add. A
bigger group goes as ADD + INSERT_BUCKETS in one bundle (OpenFlow 1.5 on the wire).

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
from agent.flowsync.switch import DESC_SAFE_BUCKETS
from agent.ovs.convert import MAX_BUNDLED_MESSAGE, MAX_MESSAGE, OF_VERSION, Converter
from agent.ovs.ovsdb import Ovsdb
from agent.ovs.switch import OpenFlowSwitch
from pipeline import multicast as mc
from pipeline.cookies import Feature
from pipeline.groupsplit import DEFAULT_BUCKET_CAP, op_size, split_group_op
from pipeline.model import Group, SwitchState
from pipeline.ops import Command, GroupOp
from tools.mclab.ovsnode import OvsNode

P = mc.pipeline()
CFG = mc.BridgeConfig(mc.Mode.ENCAP, 1, "192.168.77.1", "02:77:00:00:00:01", tunnel_port=100,
                      uplink_port=200)


def _remotes(n: int) -> list[str]:
    return [f"10.{i // 60000}.{i // 250 % 240}.{i % 250 + 1}" for i in range(n)]


def _group(n_remote: int, gid: int = 5, local: tuple[int, ...] = ()) -> Group:
    return mc.multicast_group(CFG, gid, local, _remotes(n_remote))


def _wire_size(op: GroupOp, first_bucket: int = 0) -> tuple[int, int]:
    """(group mod length, bundle-add length) as os-ken serializes them."""
    dp = ofproto_protocol.ProtocolDesc(OF_VERSION)
    msg = Converter(P).group_mod(dp, op, first_bucket)
    msg.xid = 1
    msg.serialize()
    add = ofpp.OFPBundleAddMsg(dp, 1, 0, Converter(P).group_mod(dp, op, first_bucket), [])
    add.xid = 2
    add.serialize()
    return len(msg.buf), len(add.buf)


def test_largest_group_mod_fits_one_message() -> None:
    group = _group(DEFAULT_BUCKET_CAP - 1)  # 699 remote buckets + the external bucket
    assert len(group.buckets) == DEFAULT_BUCKET_CAP
    op = GroupOp(Command.MODIFY, group)
    assert split_group_op(op) == [op]  # the differ sends it whole
    size, bundled = _wire_size(op)
    assert size < MAX_MESSAGE and bundled < MAX_MESSAGE and size <= MAX_BUNDLED_MESSAGE
    assert size <= op_size(op)  # the differ's (OpenFlow 1.3) estimate is an upper bound
    remote_only = Group(5, tuple(mc.remote_bucket(ip) for ip in _remotes(DEFAULT_BUCKET_CAP)))
    size, bundled = _wire_size(GroupOp(Command.ADD, remote_only))
    assert size == 24 + 700 * 56 and bundled == size + 16  # 39,224 bytes: ample headroom


def test_every_split_piece_fits() -> None:
    for op in split_group_op(GroupOp(Command.ADD, _group(3000, local=(1, 2, 3)))):
        size, bundled = _wire_size(op, first_bucket=700)
        assert bundled < MAX_MESSAGE and size <= op_size(op)


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
    assert kinds[1:] == [Command.INSERT_BUCKETS] * 4  # 700 + 4 x 575
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
