"""The lab's state file: what `mclab up` made, so later commands and `mclab down` can find it.

One JSON file under the lab directory (``$MCLAB_DIR``, default /tmp/mclab). Writes go through
a temporary file and a rename, so a crash never leaves half a state file.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

UNDERLAY_BRIDGE = "br-ul"
UNDERLAY_NET = "192.168.77"  # node i is .i, external host k is .(200+k)


def lab_dir() -> Path:
    return Path(os.environ.get("MCLAB_DIR", "/tmp/mclab"))


def netns_prefix() -> str:
    """Prefix of every namespace of the lab ($MCLAB_PREFIX, default 'mclab-'): two labs with
    different prefixes and lab dirs can run side by side."""
    return os.environ.get("MCLAB_PREFIX", "mclab-")


def underlay_ns() -> str:
    return f"{netns_prefix()}ul"


@dataclass
class NodeState:
    name: str
    netns: str
    ip: str
    mac: str
    rundir: str
    agent_pid: int = 0

    @property
    def api_socket(self) -> str:
        return f"{self.rundir}/agent.sock"

    @property
    def index(self) -> int:
        return int(self.ip.rsplit(".", 1)[1])


@dataclass
class PodState:
    namespace: str
    name: str
    node: str
    netns: str
    container_id: str
    ip: str  # the multicast address: the source its datagrams carry
    labels: dict[str, str] = field(default_factory=dict)
    iface: str = "mc0"  # its multicast interface
    primary_ip: str = ""  # its address on the primary network (eth0)
    results: dict[str, Any] = field(default_factory=dict)
    """The CNI results of its ADD per network, handed back on DEL (libcni's cache)."""

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class ExternalState:
    name: str
    netns: str
    ip: str


@dataclass
class LabState:
    mode: str
    query_interval: str
    attach: str = "chained"  # chained | multus: how pods get their multicast interface
    nodes: list[NodeState] = field(default_factory=list)
    pods: list[PodState] = field(default_factory=list)
    externals: list[ExternalState] = field(default_factory=list)
    agent_config: dict[str, Any] = field(default_factory=dict)
    """Merged into every node's agent config (``mclab up --agent-config FILE``)."""
    control_plane: dict[str, Any] = field(default_factory=dict)
    """The API server's and the controller's pids, the forwarder's port (empty: none)."""

    def node(self, name: str) -> NodeState:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node {name!r} (nodes: {', '.join(n.name for n in self.nodes)})")

    def pod(self, name: str, namespace: str = "default") -> PodState | None:
        for p in self.pods:
            if p.name == name and p.namespace == namespace:
                return p
        return None

    def external(self, name: str) -> ExternalState | None:
        for e in self.externals:
            if e.name == name:
                return e
        return None


def state_file() -> Path:
    return lab_dir() / "state.json"


def load() -> LabState | None:
    try:
        raw = json.loads(state_file().read_text())
    except FileNotFoundError:
        return None
    return LabState(
        mode=raw["mode"],
        query_interval=raw["query_interval"],
        attach=raw.get("attach", "chained"),
        nodes=[NodeState(**n) for n in raw["nodes"]],
        pods=[PodState(**p) for p in raw["pods"]],
        externals=[ExternalState(**e) for e in raw.get("externals", [])],
        agent_config=raw.get("agent_config", {}),
        control_plane=raw.get("control_plane", {}),
    )


def save(state: LabState) -> None:
    path = state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2))
    tmp.replace(path)
