"""pipeline.readback: what the builders build is read back as what it means."""

from __future__ import annotations

from pipeline import multicast as mc
from pipeline.readback import PodCounter, any_source_routes, pod_counter_of

CFG = mc.BridgeConfig(mc.Mode.ENCAP, 1, "192.168.77.1", "02:77:00:00:00:01", tunnel_port=100,
                      uplink_port=200)


def test_routes_and_their_members() -> None:
    star = mc.multicast_group(CFG, 7, [3, 1], ["192.168.77.3", "192.168.77.2"])
    ssm = mc.multicast_group(CFG, 8, [1], [])
    big = mc.multicast_group(CFG, 9, [4], [])
    flows = [mc.route_flow(CFG, "239.1.1.1", 7),
             mc.source_route_flow(CFG, "10.0.0.9", "239.1.1.1", 8),  # (S, G): not restored
             mc.route_flow(CFG, "239.3.3.3", 9), *mc.initial_flows(CFG)]
    bucketless = type(big)(big.group_id, ())  # too large to read back: listed without buckets
    (route,) = any_source_routes(flows, [star, ssm, bucketless])
    assert (route.group_ip, route.group_id) == ("239.1.1.1", 7)
    assert route.local_ports == (1, 3)
    assert route.remote_nodes == ("192.168.77.2", "192.168.77.3")


def test_pod_counters() -> None:
    found = {pod_counter_of(f) for f in mc.pod_flows(CFG, 5)} - {None}
    assert found == {(PodCounter.OUTBOUND, 5), (PodCounter.INBOUND, 5)}
    guarded = {pod_counter_of(f) for f in mc.pod_flows(CFG, 5, "0a:00:00:00:00:05", "10.0.0.5")}
    assert guarded - {None} == {(c, 5) for c in PodCounter}
    assert all(pod_counter_of(f) is None for f in mc.initial_flows(CFG))
