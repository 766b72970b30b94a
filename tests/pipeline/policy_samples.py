"""Multicast policy rule sets shared by the policy tests (golden, fake table, real OVS).

``sample_rules`` fits the golden sample states (``mcast_samples``: pods 1 and 2) and uses every
kind of dimension; ``walk_rules`` fits the walks' node (``walks``: pods 1-4, G1 = pods 2,3, G2 =
pod 4, G5 = pod 2) and gives each packet of ``walk_packets`` an allow rule, a drop rule, no
rule, or two overlapping rules, among them a higher rule only partly matched above a lower
one that matches whole.
"""

from __future__ import annotations

from walks import G1, G2, G3, G5, OUTSIDE_IP, REMOTE_POD_IP, from_pod, from_tunnel, from_uplink

from pipeline.fake_table import Packet
from pipeline.policy import DataRule, Direction, Verdict

EGRESS, INGRESS = Direction.EGRESS, Direction.INGRESS
ALLOW, DROP = Verdict.ALLOW, Verdict.DROP


def sample_rules() -> list[DataRule]:
    return [
        DataRule(1, 3000, EGRESS, DROP, (1,), ("239.2.2.0/24",), udp_ports=(5000, 5001)),
        DataRule(2, 2000, EGRESS, ALLOW, (1, 2)),
        DataRule(3, 5000, INGRESS, DROP, (2,), ("239.1.1.1",), ("10.77.1.2", "10.9.0.0/16")),
        DataRule(4, 4000, INGRESS, ALLOW, (2, 1), ("239.0.0.0/8",), udp_ports=(5000,)),
        DataRule(0xFFFFFFFF, 60000, INGRESS, DROP, (1,)),
    ]


def walk_rules() -> list[DataRule]:
    return [
        # pod 1: G1 on UDP 5001 allowed above a drop of all 239/8 (G1 on 5000 falls to it)
        DataRule(11, 5000, EGRESS, ALLOW, (1,), (G1,), udp_ports=(5001,)),
        DataRule(12, 4000, EGRESS, DROP, (1,), ("239.0.0.0/8",)),
        DataRule(13, 3000, EGRESS, ALLOW, (3,), (G1,)),
        DataRule(14, 2000, EGRESS, DROP, (3, 4), (G2,)),
        # pod 2 takes G1 from anywhere but the remote pod, and nothing from outside on G5
        DataRule(21, 5000, INGRESS, DROP, (2,), (G1,), (REMOTE_POD_IP,)),
        DataRule(22, 4000, INGRESS, ALLOW, (2, 3), (G1,)),
        DataRule(23, 3000, INGRESS, DROP, (2,), (), (OUTSIDE_IP,)),
        DataRule(24, 2000, INGRESS, DROP, (4,), (G2,), udp_ports=(5000,)),
    ]


def walk_packets() -> dict[str, Packet]:
    return {
        "pod1->G1:5001 (allow above drop)": from_pod(1, G1).replace(udp_dst=5001),
        "pod1->G1:5000 (allow incomplete, drop below)": from_pod(1, G1),
        "pod1->G2 (drop)": from_pod(1, G2),
        "pod2->G1 (no egress rule, self-loop)": from_pod(2, G1),
        "pod3->G1 (allow)": from_pod(3, G1),
        "pod3->G2 (drop)": from_pod(3, G2),
        "pod4->G2 (drop)": from_pod(4, G2),
        "pod4->G1 (no egress rule)": from_pod(4, G1),
        "pod4->G3 (no group, no rule)": from_pod(4, G3),
        "pod2->G5 (sender is the member)": from_pod(2, G5),
        "pod4->G5 (pod 2 allowed)": from_pod(4, G5),
        "tunnel->G1 (pod 2 drops the source)": from_tunnel(G1),
        "uplink->G1 (source rule incomplete, allow below)": from_uplink(G1),
        "uplink->G5 (drop from outside)": from_uplink(G5),
        "uplink->G2:5000 (pod 4 drops)": from_uplink(G2),
        "uplink->G2:6000 (no rule)": from_uplink(G2).replace(udp_dst=6000),
    }
