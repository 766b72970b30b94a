"""What OVS's group and bucket counters mean, measured on a real ovs-vswitchd (netdev).

The agent's metrics rest on these facts (``agent.multicast.collector``):

* a type-ALL group credits *every* bucket with each packet it replicates, including a bucket
  whose copy a later table drops (a receiving pod's ingress policy, the sender's own copy):
  bucket counters are the group's count, not per-member deliveries, so per (pod, group)
  inbound cannot come from them;
* rewriting a group (MODIFY, as every membership change does) restarts its group and bucket
  counters, while the route flow that points at it keeps counting: per-group traffic comes from
  route flows (``kube_mcast_group_packets_total``), which a membership change does not reset.

A bridge with three pod ports, a route flow ``ip,nw_dst=G → group:1`` and a group whose buckets
mimic the pipeline's local buckets (deliver to pod 2; go through a table that drops, as an
ingress drop rule would, for pod 3; deliver back to the sender's own port, which OVS drops).
Packets are injected by packet-out with ``actions=table`` (credited like received packets).
"""

from __future__ import annotations

import re
import socket
import struct

import pytest

from tools.mclab.ovsnode import OvsNode

pytestmark = pytest.mark.ovs

BR = "br0"
G = "239.5.5.5"
SENT, SIZE = 5, 100
GROUP = "group_id=1,type=all,bucket=output:2,bucket=resubmit(,1),bucket=in_port"


def _frame(length: int = SIZE) -> bytes:
    """An Ethernet/IPv4/UDP frame from pod 1 to G, ``length`` bytes long (checksums 0)."""
    payload = bytes(length - 14 - 20 - 8)
    l4 = struct.pack("!HHHH", 4000, 5000, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0, 8, 17, 0,
                     socket.inet_aton("10.0.0.1"), socket.inet_aton(G))
    eth = bytes.fromhex("01005e050505" + "0a0000000001") + b"\x08\x00"
    return eth + ip + l4


def _bridge(n: OvsNode) -> None:
    args = ["add-br", BR, "--", "set", "bridge", BR, "datapath_type=netdev", "fail_mode=secure",
            "protocols=OpenFlow13,OpenFlow15"]
    for p in (1, 2, 3):
        args += ["--", "add-port", BR, f"p{p}", "--", "set", "interface", f"p{p}",
                 "type=internal", f"ofport_request={p}"]
    n.vsctl(*args)
    n.ofctl("add-group", BR, GROUP)
    n.ofctl("add-flow", BR, f"table=0,priority=100,ip,nw_dst={G},actions=group:1")
    n.ofctl("add-flow", BR, "table=1,priority=100,ip,actions=drop")  # "pod 3's ingress drop"


def _send(n: OvsNode, count: int) -> None:
    for _ in range(count):
        n.ofctl("packet-out", BR, f"in_port=1,packet={_frame().hex()},actions=table")


def _group_stats(n: OvsNode) -> tuple[int, list[tuple[int, int]]]:
    """(group 1's packet count, [(packets, bytes) of each bucket])."""
    dump = n.ofctl("dump-group-stats", BR)
    m = re.search(r"group_id=1,.*?packet_count=(\d+)", dump)
    assert m is not None, dump
    buckets = [(int(p), int(b)) for p, b in
               re.findall(r"bucket\d+:packet_count=(\d+),byte_count=(\d+)", dump)]
    return int(m.group(1)), buckets


def _route_packets(n: OvsNode) -> tuple[int, int]:
    dump = n.ofctl("dump-flows", BR, f"ip,nw_dst={G}")
    m = re.search(r"n_packets=(\d+), n_bytes=(\d+)", dump)
    assert m is not None, dump
    return int(m.group(1)), int(m.group(2))


def test_all_group_buckets_count_every_packet_and_restart_on_modify(ovs_node: OvsNode) -> None:
    _bridge(ovs_node)
    _send(ovs_node, SENT)
    packets, buckets = _group_stats(ovs_node)
    assert packets == SENT
    # Every bucket: the delivered copy, the copy a later table dropped, the sender's own.
    assert buckets == [(SENT, SENT * SIZE)] * 3
    assert _route_packets(ovs_node) == (SENT, SENT * SIZE)

    # A MODIFY (a member joins or leaves) restarts the group's counters, not the route flow's.
    ovs_node.ofctl("mod-group", BR, GROUP)
    assert _group_stats(ovs_node) == (0, [(0, 0)] * 3)
    _send(ovs_node, 2)
    assert _group_stats(ovs_node)[0] == 2
    assert _route_packets(ovs_node) == (SENT + 2, (SENT + 2) * SIZE)
