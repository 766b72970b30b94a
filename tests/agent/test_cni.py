"""mcast-cni end to end, standalone (the pod's only network, IPAM of its own): the real console
script in a "node" netns, a "pod" netns, real host-local IPAM, and a LocalApiServer whose
in-test handler stands in for the agent (tests/support/cnilab.py). Chained and Multus mode:
test_cni_chained.py.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cnilab import POD_MTU, Lab, assert_nothing_left, cni_lab
from pyroute2 import netns as pr_netns

from agent.api.types import ApiError
from agent.cni.podnet import host_ifname
from agent.interfacestore import PodAttach

pytestmark = pytest.mark.lab


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with cni_lab(tmp_path) as bench:
        yield bench


# -- tests ------------------------------------------------------------------------------------


def test_version(lab: Lab) -> None:
    rc, out = lab.cni("VERSION", b"", CNI_CONTAINERID="", CNI_NETNS="")
    assert rc == 0
    assert out == {"cniVersion": "1.0.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]}


def test_add_check_del(lab: Lab) -> None:
    host = host_ifname(lab.container_id, "eth0")
    rc, res = lab.cni("ADD", lab.netconf())
    assert rc == 0, res
    assert res["cniVersion"] == "1.0.0"
    [host_itf, pod_itf] = res["interfaces"]
    assert host_itf["name"] == host and len(host) <= 15
    assert pod_itf["name"] == "eth0" and pod_itf["sandbox"] == lab.pod_path
    [ip] = res["ips"]
    assert ip["interface"] == 1 and ip["gateway"] == "10.77.0.1"
    assert ip["address"].startswith("10.77.0.") and ip["address"].endswith("/24")
    assert res["routes"] == [{"dst": "0.0.0.0/0"}, {"dst": "224.0.0.0/4"}]

    # the pod side
    [eth0] = lab.ip(lab.pod, "addr", "show", "eth0")
    assert eth0["mtu"] == 1400 and "UP" in eth0["flags"]
    assert eth0["address"] == pod_itf["mac"]
    assert [
        f"{a['local']}/{a['prefixlen']}" for a in eth0["addr_info"] if a["family"] == "inet"
    ] == [ip["address"]]
    routes = {(r["dst"], r.get("gateway")) for r in lab.routes("eth0")}
    assert ("224.0.0.0/4", None) in routes and ("default", "10.77.0.1") in routes
    # netconf mtu 1400 < the agent's route MTU: the route takes the smaller
    [mroute] = [r for r in lab.routes("eth0") if r["dst"] == "224.0.0.0/4"]
    assert mroute["metrics"] == [{"mtu": min(1400, POD_MTU.route)}]
    assert lab.sysctl("net/ipv4/conf/eth0/rp_filter") == "2"
    assert "UP" in lab.ip(lab.pod, "link", "show", "lo")[0]["flags"]
    assert lab.tx_checksumming(lab.pod, "eth0") == "off"
    # the node side
    [veth] = lab.ip(lab.node, "link", "show", host)
    assert veth["mtu"] == 1400 and "UP" in veth["flags"] and veth["address"] == host_itf["mac"]
    assert lab.tx_checksumming(lab.node, host) == "off"
    # the agent saw the attach
    addr = ip["address"].split("/")[0]
    # standalone, our interface holds the default route: it is the primary network too
    assert lab.agent.attaches == [
        PodAttach(
            "ns1",
            "pod-a",
            lab.container_id,
            host,
            addr,
            pod_itf["mac"],
            ifname="eth0",
            primary_ip=addr,
        )
    ]
    assert lab.allocated() == {ip["address"].split("/")[0]}

    rc, out = lab.cni("CHECK", lab.netconf(prevResult=res))
    assert (rc, out) == (0, None)

    rc, out = lab.cni("DEL", lab.netconf())
    assert (rc, out) == (0, None)
    assert lab.agent.detaches == [(lab.container_id, "eth0")] and lab.agent.pods == {}
    assert_nothing_left(lab)
    rc, out = lab.cni("DEL", lab.netconf())  # idempotent
    assert (rc, out) == (0, None)


def test_add_twice_is_refused_and_leaves_the_first_intact(lab: Lab) -> None:
    """Decision: a second ADD without DEL is an error (code 101), never a re-attach."""
    rc, first = lab.cni("ADD", lab.netconf())
    assert rc == 0
    rc, err = lab.cni("ADD", lab.netconf())
    assert rc != 0 and err["code"] == 101 and "already set up" in err["msg"]
    assert len(lab.agent.attaches) == 1 and lab.agent.detaches == []
    assert len(lab.allocated()) == 1
    assert lab.cni("CHECK", lab.netconf(prevResult=first)) == (0, None)


def test_check_fails_when_pod_ip_removed(lab: Lab) -> None:
    rc, res = lab.cni("ADD", lab.netconf())
    assert rc == 0
    subprocess.run(
        ["ip", "-n", lab.pod, "addr", "del", res["ips"][0]["address"], "dev", "eth0"], check=True
    )
    rc, err = lab.cni("CHECK", lab.netconf(prevResult=res))
    assert rc != 0 and err["code"] == 105 and res["ips"][0]["address"] in err["msg"]


def test_check_fails_when_agent_forgot_the_pod(lab: Lab) -> None:
    rc, res = lab.cni("ADD", lab.netconf())
    assert rc == 0
    lab.agent.pods.clear()
    rc, err = lab.cni("CHECK", lab.netconf(prevResult=res))
    assert rc != 0 and err["code"] == 105 and "does not know" in err["msg"]


def test_del_after_netns_gone(lab: Lab) -> None:
    rc, _ = lab.cni("ADD", lab.netconf())
    assert rc == 0
    pr_netns.remove(lab.pod)
    assert lab.cni("DEL", lab.netconf()) == (0, None)
    assert_nothing_left(lab)
    assert lab.cni("DEL", lab.netconf(), CNI_NETNS="") == (0, None)


def test_agent_unreachable_rolls_back(lab: Lab) -> None:
    rc, err = lab.cni("ADD", lab.netconf(agentSocket=str(lab.sock.parent / "missing.sock")))
    assert rc != 0 and err["code"] == 11
    assert "agent not reachable at" in err["msg"]
    assert_nothing_left(lab)


def test_agent_rejection_rolls_back(lab: Lab) -> None:
    lab.agent.reject = ApiError(409, "port name clash")
    rc, err = lab.cni("ADD", lab.netconf())
    assert rc != 0 and err["code"] == 102 and "port name clash" in err["msg"]
    assert lab.agent.detaches == [(lab.container_id, "eth0")]  # the roll-back told it too
    assert_nothing_left(lab)


def test_del_with_agent_down_cleans_up_and_asks_for_retry(lab: Lab) -> None:
    assert lab.cni("ADD", lab.netconf())[0] == 0
    rc, err = lab.cni("DEL", lab.netconf(agentSocket=str(lab.sock.parent / "missing.sock")))
    assert rc != 0 and err["code"] == 11
    assert_nothing_left(lab)
    assert lab.cni("DEL", lab.netconf()) == (0, None)  # the retry
    assert lab.agent.pods == {}


@pytest.mark.parametrize(
    ("stdin", "env", "code"),
    [
        (b"{not json", {}, 6),
        (json.dumps({"cniVersion": "1.0.0", "name": "kmc-net", "type": "mcast-cni"}), {}, 7),
        (None, {"mtu": "big"}, 7),
        (None, {"cniVersion": "0.2.0"}, 1),
        (None, {"ipam": {"type": "no-such-ipam"}}, 7),
        (None, {"interfaceName": "a/b"}, 7),
        (None, {"interfaceName": ""}, 7),
        (None, {"interfaceName": 5}, 7),
        (None, {"ipam": None}, 106),  # no ipam and no primary address to share
        (None, {"__env__": {"CNI_NETNS": ""}}, 4),
        (None, {"__env__": {"CNI_IFNAME": "a/b"}}, 4),
        (None, {"__env__": {"CNI_COMMAND": "FROB"}}, 4),
    ],
)
def test_bad_input(lab: Lab, stdin: Any, env: dict[str, Any], code: int) -> None:
    extra_env = env.pop("__env__", {})
    conf = stdin.encode() if isinstance(stdin, str) else stdin
    if conf is None:
        conf = lab.netconf(**env)
    command = extra_env.pop("CNI_COMMAND", "ADD")
    rc, err = lab.cni(command, conf, **extra_env)
    assert rc != 0 and err["code"] == code and set(err) == {"cniVersion", "code", "msg", "details"}
    assert_nothing_left(lab)


def test_tx_checksum_offload_can_stay_on(lab: Lab) -> None:
    rc, res = lab.cni("ADD", lab.netconf(txChecksumOffload=True))
    assert rc == 0
    assert lab.tx_checksumming(lab.pod, "eth0") == "on"
    assert lab.cni("DEL", lab.netconf()) == (0, None)
