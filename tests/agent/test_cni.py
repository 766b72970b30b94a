"""mcast-cni end to end: the real console script in a "node" netns, a "pod" netns, real
host-local IPAM, and a LocalApiServer whose in-test handler stands in for the agent.

Every namespace is named ``kmc-*`` and deleted in fixture teardown, whatever happened.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute
from pyroute2 import netns as pr_netns

from agent.api.server import LocalApiServer
from agent.api.types import ApiError
from agent.cni.podnet import host_ifname
from agent.interfacestore import PodAttach, PodInfo

pytestmark = pytest.mark.lab

CNI_BIN = Path(sys.executable).parent / "mcast-cni"
CNI_PATH = "/usr/lib/cni"
SUBNET = "10.77.0.0/24"
LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


class RecordingAgent:
    """Stands in for the agent core: records attaches/detaches, hands out ofports."""

    def __init__(self) -> None:
        self.pods: dict[str, PodInfo] = {}
        self.attaches: list[PodAttach] = []
        self.detaches: list[str] = []
        self.reject: ApiError | None = None

    def attach_pod(self, req: PodAttach) -> PodInfo:
        self.attaches.append(req)
        if self.reject is not None:
            raise self.reject
        info = PodInfo(**asdict(req), ofport=len(self.attaches))
        self.pods[req.container_id] = info
        return info

    def detach_pod(self, container_id: str) -> None:
        self.detaches.append(container_id)
        self.pods.pop(container_id, None)

    def list_pods(self) -> list[PodInfo]:
        return list(self.pods.values())

    def members(self) -> list[dict]:
        return []

    def pod_stats(self) -> list[dict]:
        return []

    def flows(self) -> list[str]:
        return []

    def set_nodes(self, nodes: list[dict]) -> None:
        pass

    def health(self) -> dict:
        return {"ok": True}


@dataclass
class Lab:
    node: str  # netns names
    pod: str
    ipam_dir: Path
    sock: Path
    agent: RecordingAgent
    container_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def pod_path(self) -> str:
        return f"/run/netns/{self.pod}"

    def netconf(self, **overrides: Any) -> dict[str, Any]:
        conf: dict[str, Any] = {
            "cniVersion": "1.0.0",
            "name": "kmc-net",
            "type": "mcast-cni",
            "agentSocket": str(self.sock),
            "mtu": 1400,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": SUBNET}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": str(self.ipam_dir),
            },
        }
        conf.update(overrides)
        return conf

    def cni(
        self, command: str, conf: dict[str, Any] | bytes, ifname: str = "eth0", **env: str
    ) -> tuple[int, Any]:
        """Run mcast-cni in the node netns; returns (exit code, parsed stdout or None)."""
        full_env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": self.container_id,
            "CNI_NETNS": self.pod_path,
            "CNI_IFNAME": ifname,
            "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=pod-a",
            "CNI_PATH": CNI_PATH,
            **env,
        }
        stdin = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
        proc = subprocess.run(
            [str(CNI_BIN)],
            input=stdin,
            env=full_env,
            capture_output=True,
            timeout=60,
            preexec_fn=functools.partial(
                pr_netns.setns, f"/run/netns/{self.node}", flags=0, libc=LIBC
            ),
        )
        out = proc.stdout.decode()
        print(f"--- {command} rc={proc.returncode}\n{out}\n{proc.stderr.decode()}")
        return proc.returncode, (json.loads(out) if out.strip() else None)

    def ip(self, netns: str, *args: str) -> Any:
        out = subprocess.run(
            ["ip", "-j", "-n", netns, *args], check=True, capture_output=True, text=True
        ).stdout
        return json.loads(out) if out.strip() else []

    def links(self, netns: str) -> set[str]:
        return {link["ifname"] for link in self.ip(netns, "link", "show")}

    def allocated(self) -> set[str]:
        """IPs host-local has reserved (one file per IP under dataDir/<network name>)."""
        d = self.ipam_dir / "kmc-net"
        if not d.is_dir():
            return set()
        return {p.name for p in d.iterdir() if p.name[0].isdigit()}

    def tx_checksumming(self, netns: str, ifname: str) -> str:
        out = subprocess.run(
            ["ip", "netns", "exec", netns, "ethtool", "-k", ifname],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        line = next(x for x in out.splitlines() if x.startswith("tx-checksumming:"))
        return line.split(":", 1)[1].strip()


def _make_netns(name: str) -> None:
    pr_netns.create(name)
    with IPRoute(netns=name, flags=0) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    tag = uuid.uuid4().hex[:8]
    node, pod = f"kmc-{tag}-node", f"kmc-{tag}-pod"
    agent = RecordingAgent()
    server = LocalApiServer(tmp_path / "agent.sock", agent)
    made: list[str] = []
    try:
        for name in (node, pod):
            _make_netns(name)
            made.append(name)
        server.start()
        yield Lab(node, pod, tmp_path / "ipam", tmp_path / "agent.sock", agent)
    finally:
        server.stop()
        for name in made:
            if name in pr_netns.listnetns():
                pr_netns.remove(name)


def assert_nothing_left(lab: Lab) -> None:
    assert lab.links(lab.node) == {"lo"}
    if lab.pod in pr_netns.listnetns():
        assert lab.links(lab.pod) == {"lo"}
    assert lab.allocated() == set()


# -- tests ------------------------------------------------------------------------------------


def test_version(lab: Lab) -> None:
    rc, out = lab.cni("VERSION", b"", CNI_CONTAINERID="", CNI_NETNS="")
    assert rc == 0
    assert out == {"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0"]}


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
    routes = {(r["dst"], r.get("gateway")) for r in lab.ip(lab.pod, "route", "show", "dev", "eth0")}
    assert ("224.0.0.0/4", None) in routes and ("default", "10.77.0.1") in routes
    assert "UP" in lab.ip(lab.pod, "link", "show", "lo")[0]["flags"]
    assert lab.tx_checksumming(lab.pod, "eth0") == "off"
    # the node side
    [veth] = lab.ip(lab.node, "link", "show", host)
    assert veth["mtu"] == 1400 and "UP" in veth["flags"] and veth["address"] == host_itf["mac"]
    assert lab.tx_checksumming(lab.node, host) == "off"
    # the agent saw the attach
    assert lab.agent.attaches == [
        PodAttach(
            "ns1", "pod-a", lab.container_id, host, ip["address"].split("/")[0], pod_itf["mac"]
        )
    ]
    assert lab.allocated() == {ip["address"].split("/")[0]}

    rc, out = lab.cni("CHECK", lab.netconf(prevResult=res))
    assert (rc, out) == (0, None)

    rc, out = lab.cni("DEL", lab.netconf())
    assert (rc, out) == (0, None)
    assert lab.agent.detaches == [lab.container_id] and lab.agent.pods == {}
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
    assert lab.agent.detaches == [lab.container_id]  # the roll-back told the agent too
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


def test_secondary_network_net1(lab: Lab) -> None:
    """Multus-style: eth0 from a first network, net1 from ours; no default route via net1."""
    primary = lab.netconf(
        name="kmc-primary",
        ipam={
            "type": "host-local",
            "ranges": [[{"subnet": "10.88.0.0/24"}]],
            "dataDir": str(lab.ipam_dir),
        },
    )
    assert lab.cni("ADD", primary)[0] == 0
    second = lab.netconf(
        cniVersion="0.4.0",
        ipam={"type": "host-local", "ranges": [[{"subnet": SUBNET}]], "dataDir": str(lab.ipam_dir)},
    )
    rc, res = lab.cni("ADD", second, ifname="net1")
    assert rc == 0, res
    assert res["cniVersion"] == "0.4.0"
    assert res["interfaces"][1]["name"] == "net1"
    assert res["interfaces"][0]["name"] == host_ifname(lab.container_id, "net1")
    assert res["ips"][0]["version"] == "4" and res["ips"][0]["address"].startswith("10.77.0.")
    # eth0 already routes 224/4: net1 does not take it over, nor add a default route
    assert res["routes"] == []
    net1_routes = lab.ip(lab.pod, "route", "show", "dev", "net1")
    assert [r["dst"] for r in net1_routes] == ["10.77.0.0/24"]
    assert lab.tx_checksumming(lab.pod, "net1") == "off"
    # one container, two attachments: only host_ifname tells them apart (detach_pod takes
    # just the container id, so the agent must key its ports by host_ifname)
    assert [a.host_ifname for a in lab.agent.attaches] == [
        host_ifname(lab.container_id, "eth0"),
        host_ifname(lab.container_id, "net1"),
    ]
    assert lab.cni("CHECK", second | {"prevResult": res}, ifname="net1") == (0, None)

    assert lab.cni("DEL", second, ifname="net1") == (0, None)
    assert lab.links(lab.pod) == {"lo", "eth0"}
    assert lab.allocated() == set()
    assert lab.cni("DEL", primary) == (0, None)
    assert lab.links(lab.node) == {"lo"}


def test_tx_checksum_offload_can_stay_on(lab: Lab) -> None:
    rc, res = lab.cni("ADD", lab.netconf(txChecksumOffload=True))
    assert rc == 0
    assert lab.tx_checksumming(lab.pod, "eth0") == "on"
    assert lab.cni("DEL", lab.netconf()) == (0, None)
