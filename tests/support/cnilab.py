"""The CNI test bench: a "node" and a "pod" netns, the real plugin binaries run as the runtime
runs them, and a LocalApiServer whose in-test handler stands in for the agent.

``Lab.cni`` runs our ``mcast-cni`` console script, ``Lab.primary`` the reference ``bridge``
plugin (with ``host-local``) as a cluster's primary CNI would give the pod eth0 and its default
route. Every namespace is named ``kmc-*`` and deleted when the bench closes, whatever happened.
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
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2 import netns as pr_netns

from agent.api.server import LocalApiServer
from agent.api.types import ApiError
from agent.interfacestore import PodAttach, PodInfo
from agent.podnetwork import PodMtu

CNI_BIN = Path(sys.executable).parent / "mcast-cni"
CNI_PATH = "/usr/lib/cni"
SUBNET = "10.77.0.0/24"  # our own IPAM's (the ipam path)
PRIMARY_SUBNET = "10.88.0.0/24"  # the primary network's
PRIMARY_GW = "10.88.0.1"
POD_MTU = PodMtu(interface=1500, route=1450)  # what the agent stand-in answers (VXLAN on 1500)
LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


class RecordingAgent:
    """Stands in for the agent core: records attaches/detaches, hands out ofports.

    A detach keeps the API's contract (``PodAttach.answers_to``): one naming another pod
    interface than the attachment's changes nothing.
    """

    def __init__(self) -> None:
        self.pods: dict[str, PodInfo] = {}
        self.attaches: list[PodAttach] = []
        self.detaches: list[tuple[str, str]] = []  # (container id, ifname)
        self.reject: ApiError | None = None

    def attach_pod(self, req: PodAttach) -> PodInfo:
        self.attaches.append(req)
        if self.reject is not None:
            raise self.reject
        info = PodInfo(**asdict(req), ofport=len(self.attaches))
        self.pods[req.container_id] = info
        return info

    def detach_pod(self, container_id: str, ifname: str = "") -> None:
        self.detaches.append((container_id, ifname))
        pod = self.pods.get(container_id)
        if pod is not None and pod.answers_to(ifname):
            del self.pods[container_id]

    def list_pods(self) -> list[PodInfo]:
        return list(self.pods.values())

    def pod_network(self) -> PodMtu:
        return POD_MTU

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
        """Ours with IPAM of its own (standalone); a key set to None is left out."""
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
        return {k: v for k, v in conf.items() if v is not None}

    def bare_netconf(self, **overrides: Any) -> dict[str, Any]:
        """Ours as chained and Multus run it: no ipam, no mtu (the agent's MTUs)."""
        return self.netconf(**{"ipam": None, "mtu": None, **overrides})

    def primary_netconf(self) -> dict[str, Any]:
        return {
            "cniVersion": "1.0.0",
            "name": "kmc-primary",
            "type": "bridge",
            "bridge": "kmc-br0",
            "isGateway": True,
            "isDefaultGateway": True,
            "ipMasq": False,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": PRIMARY_SUBNET, "gateway": PRIMARY_GW}]],
                "dataDir": str(self.ipam_dir),
            },
        }

    def run_plugin(
        self, binary: Path, command: str, conf: dict[str, Any] | bytes, ifname: str, **env: str
    ) -> tuple[int, Any]:
        """Run a plugin in the node netns; returns (exit code, parsed stdout or None)."""
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
            [str(binary)],
            input=stdin,
            env=full_env,
            capture_output=True,
            timeout=60,
            preexec_fn=functools.partial(
                pr_netns.setns, f"/run/netns/{self.node}", flags=0, libc=LIBC
            ),
        )
        out = proc.stdout.decode()
        print(f"--- {binary.name} {command} rc={proc.returncode}\n{out}\n{proc.stderr.decode()}")
        return proc.returncode, (json.loads(out) if out.strip() else None)

    def cni(
        self, command: str, conf: dict[str, Any] | bytes, ifname: str = "eth0", **env: str
    ) -> tuple[int, Any]:
        """Run mcast-cni in the node netns."""
        return self.run_plugin(CNI_BIN, command, conf, ifname, **env)

    def primary(self, command: str, prev: dict[str, Any] | None = None) -> tuple[int, Any]:
        """Run the primary network (``bridge`` + ``host-local``) for eth0."""
        conf = self.primary_netconf()
        if prev is not None:
            conf["prevResult"] = prev
        return self.run_plugin(Path(CNI_PATH) / "bridge", command, conf, "eth0")

    def ip(self, netns: str, *args: str) -> Any:
        out = subprocess.run(
            ["ip", "-j", "-n", netns, *args], check=True, capture_output=True, text=True
        ).stdout
        return json.loads(out) if out.strip() else []

    def links(self, netns: str) -> set[str]:
        return {link["ifname"] for link in self.ip(netns, "link", "show")}

    def ipv4(self, ifname: str) -> list[str]:
        """The pod interface's IPv4 addresses, as address/prefix."""
        [itf] = self.ip(self.pod, "addr", "show", ifname)
        return [f"{a['local']}/{a['prefixlen']}" for a in itf["addr_info"] if a["family"] == "inet"]

    def routes(self, ifname: str) -> list[dict[str, Any]]:
        return list(self.ip(self.pod, "route", "show", "dev", ifname))

    def allocated(self, network: str = "kmc-net") -> set[str]:
        """IPs host-local has reserved (one file per IP under dataDir/<network name>)."""
        d = self.ipam_dir / network
        if not d.is_dir():
            return set()
        return {p.name for p in d.iterdir() if p.name[0].isdigit()}

    def sysctl(self, key: str) -> str:
        """A sysctl read from inside the pod's netns, e.g. net/ipv4/conf/mc0/rp_filter."""
        return subprocess.run(
            ["ip", "netns", "exec", self.pod, "cat", f"/proc/sys/{key}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

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


@contextmanager
def cni_lab(tmp_path: Path) -> Iterator[Lab]:
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
