"""wire.nodes: the node-set message, both ways, and what it refuses."""

from __future__ import annotations

import pytest

from wire.nodes import NodeInfo, WireError, nodes_from_json, nodes_to_json


def test_round_trip() -> None:
    nodes = [NodeInfo("n1", ("192.168.77.1",)), NodeInfo("n2", ("192.168.77.2", "10.0.0.2"))]
    assert nodes_from_json(nodes_to_json(nodes)) == nodes
    assert nodes[1].tunnel_ip == "192.168.77.2" and NodeInfo("n3", ()).tunnel_ip is None


@pytest.mark.parametrize(("body", "where"), [
    ([], '{"nodes"'),
    ({"nodes": {}}, '{"nodes"'),
    ({"nodes": [{"name": 1}]}, "nodes[0]"),
    ({"nodes": [{"name": "n", "ips": "1.2.3.4"}]}, "nodes[0].ips"),
    ({"nodes": [{"name": "n", "ips": ["1.2.3.4"]}, {"name": "m", "ips": ["::1"]}]},
     "nodes[1].ips: '::1'"),
])
def test_refused_with_the_field_named(body: object, where: str) -> None:
    with pytest.raises(WireError) as exc:
        nodes_from_json(body)
    assert where in str(exc.value)
