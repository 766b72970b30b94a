"""agent.podnetwork: the pod multicast interface's MTU and its 224.0.0.0/4 route's MTU."""

from __future__ import annotations

import pytest

from agent.podnetwork import PodMtu, pod_mtu


@pytest.mark.parametrize(
    ("uplink", "encap", "tunnel", "configured", "expected"),
    [
        (1500, True, "vxlan", None, PodMtu(1500, 1450)),  # frames from outside arrive whole
        (1500, True, "geneve", None, PodMtu(1500, 1450)),
        (1500, False, "vxlan", None, PodMtu(1500, 1500)),  # noEncap: nothing to make room for
        (9000, True, "vxlan", None, PodMtu(9000, 8950)),  # jumbo underlay
        (1500, True, "vxlan", 9000, PodMtu(9000, 1450)),  # configured: the route still fits
        (1500, True, "vxlan", 1400, PodMtu(1400, 1400)),  # smaller than the tunnel allows
        (1500, False, "anything", None, PodMtu(1500, 1500)),  # no tunnel, no tunnel type
    ],
)
def test_pod_mtu(
    uplink: int, encap: bool, tunnel: str, configured: int | None, expected: PodMtu
) -> None:
    assert pod_mtu(uplink, encap, tunnel, configured) == expected


def test_frame_limits_and_json() -> None:
    mtu = pod_mtu(1500, True, "vxlan")
    assert (mtu.max_send_frame, mtu.max_receive_frame) == (1464, 1514)
    assert mtu.to_json() == {"interfaceMTU": 1500, "routeMTU": 1450}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((575, False, "vxlan", None), "uplink MTU 575 is below 576"),
        ((1500, True, "gre", None), "unknown tunnel type 'gre'"),
        ((1500, True, "vxlan", 575), "interface MTU 575 out of range 576..65535"),
        ((1500, True, "vxlan", 65536), "interface MTU 65536 out of range"),
    ],
)
def test_errors(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pod_mtu(*args)
