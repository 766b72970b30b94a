"""The agent's switch port (``agent.flowsync.switch.Switch``) over the fake OpenFlow table, and
the OVSDB pod-ports side, for tests of the core and the API.

Tests of the agent's core and API run their flows on ``pipeline.fake_table`` (checked against
real OVS in tests/pipeline/test_fake_vs_ovs.py) and ask where packets go; packet-outs are
recorded, not sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agent.flowsync.switch import CookieDelete, FlowStats, MeterStats, SwitchOp
from agent.interfacestore import PodAttach
from agent.multicast.igmp.packets import parse_frame
from pipeline.fake_table import FakeSwitch
from pipeline.layout import multicast_pipeline
from pipeline.model import Action, SwitchState


@dataclass
class PI:
    """A packet-in as the switch hands it to the core (the fields the core reads)."""

    in_port: int
    userdata: bytes
    data: bytes
    tun_src: str | None = None


class Clock:
    """A clock the test moves by hand (``clock.now += 10``)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Ports:
    """The OVSDB side of pod attachment: ofports 1, 2, ... in attach order."""

    def __init__(self) -> None:
        self.attached: dict[str, int] = {}
        self._next = 1

    def add_pod_port(self, pod: PodAttach) -> int:
        self.attached[pod.host_ifname] = self._next
        self._next += 1
        return self.attached[pod.host_ifname]

    def del_port(self, ifname: str) -> None:
        self.attached.pop(ifname, None)


class TableSwitch:
    def __init__(self, tunnel_ports: Sequence[int] = ()) -> None:
        self.table = FakeSwitch(multicast_pipeline(), tunnel_ports=tunnel_ports)
        self.packet_outs: list[tuple[bytes, tuple[Action, ...], int | None]] = []

    def apply(self, ops: Sequence[SwitchOp]) -> None:
        for op in ops:
            if isinstance(op, CookieDelete):
                for f in self.table.flows():
                    if f.cookie & op.mask == op.cookie:
                        self.table.delete_flow(f)
            else:
                self.table.apply([op])

    def dump(self) -> SwitchState:
        return SwitchState(tuple(self.table.flows()), tuple(self.table.groups().values()))

    def packet_out(self, data: bytes, actions: Sequence[Action],
                   in_port: int | None = None) -> None:
        self.packet_outs.append((data, tuple(actions), in_port))

    def flow_stats(self, cookie: int = 0, mask: int = 0) -> list[FlowStats]:
        return [FlowStats(f, self.table.n_packets(f), 0) for f in self.table.flows()
                if f.cookie & mask == cookie]

    def meter_stats(self) -> dict[int, MeterStats]:
        """The fake table passes everything through its meters: nothing is dropped."""
        return {mid: MeterStats(self.table.meter_n_packets(mid), 0) for mid in self.table.meters()}

    def sent(self) -> list[tuple[object, tuple[Action, ...]]]:
        """Packet-outs since the last call, their IGMP parsed."""
        out = [(parse_frame(d), a) for d, a, _ in self.packet_outs]
        self.packet_outs.clear()
        return out
