"""mcast-cni beside the cluster's primary CNI: chained after it (``mc0``) or as a Multus secondary
network (``net1``), with the reference ``bridge`` + ``host-local`` plugins as the primary.

The real plugin binaries run in a "node" netns against a "pod" netns; a LocalApiServer with an
in-test handler stands in for the agent (tests/support/cnilab.py). What is checked: the pod's
primary interface, routes and DNS stay as the primary made them; ours shares the primary's
address as a /32 and carries 224.0.0.0/4 with the agent's route MTU; rp_filter is loose; one
multicast interface per pod; DEL removes only what it names.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cnilab import POD_MTU, Lab, cni_lab
from pyroute2 import IPRoute

from agent.cni import podnet
from agent.cni.podnet import host_ifname
from agent.interfacestore import PodAttach

pytestmark = pytest.mark.lab

EMPTY_RESULT = {"cniVersion": "1.0.0", "interfaces": [], "ips": [], "routes": [], "dns": {}}


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with cni_lab(tmp_path) as bench:
        yield bench


def _primary(lab: Lab, version: str = "1.0.0") -> tuple[dict[str, Any], str]:
    """ADD the pod's primary network on eth0; its result and its IPv4 address."""
    conf = lab.primary_netconf() | {"cniVersion": version}
    rc, prev = lab.run_plugin(Path("/usr/lib/cni/bridge"), "ADD", conf, "eth0")
    assert rc == 0, prev
    return prev, prev["ips"][0]["address"].split("/")[0]


def _primary_state(lab: Lab) -> Any:
    """What the primary network gave the pod: eth0's addresses and every route not via ours."""
    routes = [r for r in lab.ip(lab.pod, "route", "show") if r.get("dev") == "eth0"]
    return lab.ipv4("eth0"), routes


def _multicast_routes(lab: Lab, ifname: str) -> list[tuple[str, Any]]:
    return [(r["dst"], r.get("metrics")) for r in lab.routes(ifname)]


@pytest.mark.parametrize("version", ["1.0.0", "0.4.0", "0.3.1"])
def test_chained_after_the_primary(lab: Lab, version: str) -> None:
    prev, primary_ip = _primary(lab, version)
    before = _primary_state(lab)
    assert any(r["dst"] == "default" for r in before[1])

    conf = lab.bare_netconf(cniVersion=version, prevResult=prev)
    rc, res = lab.cni("ADD", conf)
    assert rc == 0, res
    host = host_ifname(lab.container_id, "mc0")
    # the result is the primary's with our interfaces appended, its address listed once
    assert res["cniVersion"] == version
    assert res["interfaces"][: len(prev["interfaces"])] == prev["interfaces"]
    [host_itf, pod_itf] = res["interfaces"][len(prev["interfaces"]) :]
    assert host_itf["name"] == host and pod_itf == {
        "name": "mc0",
        "mac": pod_itf["mac"],
        "sandbox": lab.pod_path,
    }
    assert res["ips"] == prev["ips"]
    assert res["routes"] == prev.get("routes", []) + [{"dst": "224.0.0.0/4"}]
    assert res["dns"] == prev.get("dns", {})

    # the pod: eth0 as the primary left it, mc0 beside it with the primary address as a /32
    assert lab.links(lab.pod) == {"lo", "eth0", "mc0"}
    assert _primary_state(lab) == before
    assert lab.ipv4("mc0") == [f"{primary_ip}/32"]
    assert _multicast_routes(lab, "mc0") == [("224.0.0.0/4", [{"mtu": POD_MTU.route}])]
    [mc0] = lab.ip(lab.pod, "link", "show", "mc0")
    assert mc0["mtu"] == POD_MTU.interface and mc0["address"] == pod_itf["mac"]
    [veth] = lab.ip(lab.node, "link", "show", host)
    assert veth["mtu"] == POD_MTU.interface
    assert lab.sysctl("net/ipv4/conf/mc0/rp_filter") == "2"
    assert lab.sysctl("net/ipv6/conf/mc0/disable_ipv6") == "1"  # no IPv6 noise on br-int
    # a datagram to a group leaves through mc0 with the pod's real address as its source
    [route] = lab.ip(lab.pod, "route", "get", "239.1.1.1")
    assert (route["dev"], route["prefsrc"]) == ("mc0", primary_ip)
    assert lab.agent.attaches == [
        PodAttach(
            "ns1",
            "pod-a",
            lab.container_id,
            host,
            primary_ip,
            pod_itf["mac"],
            ifname="mc0",
            primary_ip=primary_ip,
        )
    ]
    assert lab.cni("CHECK", lab.bare_netconf(cniVersion=version, prevResult=res)) == (0, None)

    # the same (container, mc0) again: refused, nothing changes
    rc, err = lab.cni("ADD", conf)
    assert rc != 0 and err["code"] == 101
    assert len(lab.agent.attaches) == 1 and lab.agent.detaches == []

    # a DEL naming another interface of the container (a Multus net1) leaves ours alone
    assert lab.cni("DEL", lab.bare_netconf(cniVersion=version), ifname="net1") == (0, None)
    assert lab.agent.detaches == [(lab.container_id, "net1")]
    assert lab.container_id in lab.agent.pods and "mc0" in lab.links(lab.pod)

    # DEL with the cached result, as libcni runs it: only ours goes
    assert lab.cni("DEL", lab.bare_netconf(cniVersion=version, prevResult=res)) == (0, None)
    assert lab.agent.detaches[-1] == (lab.container_id, "mc0") and lab.agent.pods == {}
    assert lab.links(lab.pod) == {"lo", "eth0"} and _primary_state(lab) == before
    assert host not in lab.links(lab.node)
    primary_conf = lab.primary_netconf() | {"cniVersion": version, "prevResult": prev}
    assert lab.run_plugin(Path("/usr/lib/cni/bridge"), "DEL", primary_conf, "eth0")[0] == 0


def test_check_fails_when_rp_filter_is_strict(lab: Lab) -> None:
    prev, _ = _primary(lab)
    rc, res = lab.cni("ADD", lab.bare_netconf(prevResult=prev))
    assert rc == 0, res
    subprocess.run(
        ["ip", "netns", "exec", lab.pod, "sysctl", "-qw", "net.ipv4.conf.mc0.rp_filter=1"],
        check=True,
    )
    rc, err = lab.cni("CHECK", lab.bare_netconf(prevResult=res))
    assert rc != 0 and err["code"] == 105 and "rp_filter" in err["msg"]


def test_netconf_mtu_sizes_the_interface_and_caps_the_route(lab: Lab) -> None:
    prev, _ = _primary(lab)
    rc, res = lab.cni("ADD", lab.bare_netconf(prevResult=prev, mtu=1400, interfaceName="mcast"))
    assert rc == 0, res
    assert res["interfaces"][-1]["name"] == "mcast"
    assert lab.ip(lab.pod, "link", "show", "mcast")[0]["mtu"] == 1400
    assert _multicast_routes(lab, "mcast") == [("224.0.0.0/4", [{"mtu": 1400}])]


def test_multus_net1_shares_the_primary_address(lab: Lab) -> None:
    """Multus runs us alone, after the primary, with CNI_IFNAME=net1 and no prevResult."""
    _, primary_ip = _primary(lab)
    before = _primary_state(lab)
    nad = lab.bare_netconf(name="kube-mcast")
    rc, res = lab.cni("ADD", nad, ifname="net1")
    assert rc == 0, res
    host = host_ifname(lab.container_id, "net1")
    assert res == {
        **EMPTY_RESULT,
        "interfaces": [
            {"name": host, "mac": res["interfaces"][0]["mac"]},
            {"name": "net1", "mac": res["interfaces"][1]["mac"], "sandbox": lab.pod_path},
        ],
        "routes": [{"dst": "224.0.0.0/4"}],
    }
    assert lab.ipv4("net1") == [f"{primary_ip}/32"] and _primary_state(lab) == before
    assert _multicast_routes(lab, "net1") == [("224.0.0.0/4", [{"mtu": POD_MTU.route}])]
    assert lab.sysctl("net/ipv4/conf/net1/rp_filter") == "2"
    [req] = lab.agent.attaches
    assert (req.ifname, req.ip, req.primary_ip) == ("net1", primary_ip, primary_ip)

    # Multus hands our own result back on CHECK and DEL: still net1, not mc0
    assert lab.cni("CHECK", nad | {"prevResult": res}, ifname="net1") == (0, None)
    assert lab.cni("DEL", nad | {"prevResult": res}, ifname="net1") == (0, None)
    assert lab.agent.detaches == [(lab.container_id, "net1")] and lab.agent.pods == {}
    assert lab.links(lab.pod) == {"lo", "eth0"} and _primary_state(lab) == before
    assert host not in lab.links(lab.node) and "kmc-br0" in lab.links(lab.node)


def test_one_multicast_interface_per_pod(lab: Lab) -> None:
    prev, _ = _primary(lab)
    rc, res = lab.cni("ADD", lab.bare_netconf(prevResult=prev))
    assert rc == 0, res
    # Multus configured too: its net1 adds nothing, and says so with an empty result
    nad = lab.bare_netconf(name="kube-mcast")
    assert lab.cni("ADD", nad, ifname="net1") == (0, EMPTY_RESULT)
    # a second chained entry (another name) returns the primary's result unchanged
    assert lab.cni("ADD", lab.bare_netconf(prevResult=prev, interfaceName="mc1")) == (0, prev)
    assert lab.links(lab.pod) == {"lo", "eth0", "mc0"} and len(lab.agent.attaches) == 1
    assert lab.cni("CHECK", nad | {"prevResult": EMPTY_RESULT}, ifname="net1") == (0, None)

    # their DELs leave the attachment (and mc0) alone
    assert lab.cni("DEL", nad | {"prevResult": EMPTY_RESULT}, ifname="net1") == (0, None)
    assert lab.cni("DEL", lab.bare_netconf(prevResult=prev, interfaceName="mc1")) == (0, None)
    assert lab.container_id in lab.agent.pods and "mc0" in lab.links(lab.pod)
    assert lab.cni("CHECK", lab.bare_netconf(prevResult=res)) == (0, None)
    assert lab.cni("DEL", lab.bare_netconf(prevResult=res)) == (0, None)
    assert lab.agent.pods == {} and lab.links(lab.pod) == {"lo", "eth0"}


def test_primary_address_is_the_default_route_interface_s(lab: Lab) -> None:
    """Read from the pod netns (Multus): the default route's interface first, else any other."""
    with IPRoute(netns=lab.pod, flags=0) as ipr:  # an earlier interface, no default route
        ipr.link("add", ifname="aa0", kind="veth", peer={"ifname": "aa1"})
        idx = ipr.link_lookup(ifname="aa0")[0]
        ipr.addr("add", index=idx, address="10.99.0.2", prefixlen=24)
        ipr.link("set", index=idx, state="up")
    _, primary_ip = _primary(lab)
    assert str(podnet.primary_ipv4(lab.pod_path)) == primary_ip
    assert str(podnet.primary_ipv4(lab.pod_path, exclude="eth0")) == "10.99.0.2"
    subprocess.run(["ip", "-n", lab.pod, "route", "del", "default"], check=True)
    assert str(podnet.primary_ipv4(lab.pod_path)) == "10.99.0.2"  # lower index wins now
    assert str(podnet.primary_ipv4(lab.pod_path, exclude="aa0")) == primary_ip


def test_sysctl_is_per_network_namespace(lab: Lab) -> None:
    _primary(lab)
    podnet.set_ip_conf(lab.pod_path, "eth0", "rp_filter", 2)
    assert podnet.get_ip_conf(lab.pod_path, "eth0", "rp_filter") == 2
    assert lab.sysctl("net/ipv4/conf/eth0/rp_filter") == "2"
    podnet.set_ip_conf(lab.pod_path, "eth0", "rp_filter", 0)
    assert lab.sysctl("net/ipv4/conf/eth0/rp_filter") == "0"
    with pytest.raises(OSError, match="FileNotFoundError"):
        podnet.set_ip_conf(lab.pod_path, "nope0", "rp_filter", 2)
    with pytest.raises(ValueError):
        podnet.set_ip_conf(lab.pod_path, "../all", "rp_filter", 2)
