"""The multicast pipeline of br-int: its tables in order, and the names builders use.

Multicast (224.0.0.0/4) forks off in the classifier into: egress rule -> egress pod metric ->
routing -> ingress rule -> ingress pod metric -> output. Only the classifier and the output
table drop on miss; every other table continues to the next one.

A frame over its size limit (``registers.OVERSIZE``, checked once in the fork) leaves that
path where its source is counted: a pod's in its egress metric, the tunnel's and the uplink's
in routing. From there it goes to the output table, which punts it to the agent instead of
delivering it.
"""

from __future__ import annotations

from pipeline.tables import Miss, Pipeline, Stage, TableSpec

CLASSIFIER = "Classifier"
EGRESS_RULE = "MulticastEgressRule"
EGRESS_METRIC = "MulticastEgressMetric"
ROUTING = "MulticastRouting"
INGRESS_RULE = "MulticastIngressRule"
INGRESS_METRIC = "MulticastIngressMetric"
OUTPUT = "MulticastOutput"

_IP = frozenset({"eth_type", "ip_proto", "ipv4_src", "ipv4_dst", "udp_dst"})

TABLES = (
    TableSpec(
        CLASSIFIER, Stage.CLASSIFIER, Miss.DROP,
        frozenset({"in_port", "eth_src"} | _IP),
        frozenset({EGRESS_RULE, ROUTING}),
        "Sorts packets by the port they came in on; punts IGMP; forks 224.0.0.0/4.",
    ),
    TableSpec(
        EGRESS_RULE, Stage.EGRESS_SECURITY, Miss.NEXT,
        frozenset({"in_port", "reg0", "conj_id"} | _IP),
        frozenset({EGRESS_METRIC}),
        "Multicast egress policy of the sending pod: conjunctive rules (pipeline.policy), "
        "allow on miss.",
    ),
    TableSpec(
        EGRESS_METRIC, Stage.EGRESS_METRIC, Miss.NEXT,
        frozenset({"in_port", "reg0", "eth_type"}),
        frozenset({ROUTING, OUTPUT}),
        "One flow per pod: its packet count is the pod's outbound multicast.",
    ),
    TableSpec(
        ROUTING, Stage.ROUTING, Miss.NEXT,
        frozenset({"reg0", "eth_type", "ipv4_src", "ipv4_dst"}),
        frozenset({INGRESS_RULE, OUTPUT}),
        "Per group: to the group that replicates to members; else to external receivers.",
    ),
    TableSpec(
        INGRESS_RULE, Stage.INGRESS_SECURITY, Miss.NEXT,
        frozenset({"in_port", "reg0", "reg1", "conj_id"} | _IP),
        frozenset({INGRESS_METRIC}),
        "Multicast ingress policy of the receiving pod: conjunctive rules (pipeline.policy), "
        "allow on miss.",
    ),
    TableSpec(
        INGRESS_METRIC, Stage.INGRESS_METRIC, Miss.NEXT,
        frozenset({"reg1", "eth_type"}),
        frozenset({OUTPUT}),
        "One flow per pod: its packet count is the pod's inbound multicast.",
    ),
    TableSpec(
        OUTPUT, Stage.OUTPUT, Miss.DROP,
        frozenset({"reg0", "reg1", "eth_type"}),
        frozenset(),
        "Delivers each copy: to a pod port, into the tunnel, or (SNATed) out the uplink.",
    ),
)


def multicast_pipeline() -> Pipeline:
    return Pipeline(TABLES)
