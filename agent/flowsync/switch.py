"""The switch port: what the agent needs of br-int, as a protocol and plain values.

This module owns what the rest of the agent sees of the switch without importing os_ken: the
``Switch`` protocol the OpenFlow adaptor (``agent.ovs.switch``) implements and the fake table
stands in for in tests, packet-ins, flow and meter counters, the switch-level CookieDelete op,
the two ways a request fails (``OpenFlowError``, ``SwitchDisconnected``), readable op
descriptions for errors and logs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from pipeline.model import Action, Flow, SwitchState
from pipeline.ops import FlowOp, GroupOp, MeterOp, Op
from pipeline.render import render_flow
from pipeline.tables import Pipeline


@dataclass(frozen=True)
class CookieDelete:
    """Delete every flow (any table) whose cookie matches ``cookie`` under ``mask``."""

    cookie: int
    mask: int


SwitchOp = Op | CookieDelete


@dataclass(frozen=True)
class PacketIn:
    """A punted packet (NXT_PACKET_IN2)."""

    in_port: int
    userdata: bytes
    data: bytes
    tun_src: str | None
    cookie: int
    table_id: int
    reason: int


class FlowStats(NamedTuple):
    """A flow with its counters (a tuple, so callers may unpack ``flow, packets, bytes``)."""

    flow: Flow
    packets: int
    bytes: int


class MeterStats(NamedTuple):
    """A meter's counters: packets that reached it, and those it dropped (over its rate)."""

    packets: int
    dropped: int


class OpenFlowError(RuntimeError):
    """The switch refused a request. ``failures`` pairs each failed op (or step) with the
    error text; ``failed_ops`` are the ops those labels name."""

    def __init__(self, what: str, failures: list[tuple[str, str]],
                 ops: Sequence[Any] = (), failed_ops: Sequence[Any] = ()) -> None:
        self.failures = failures
        self.ops = list(ops)
        self.failed_ops = list(failed_ops)
        lines = "; ".join(f"{label}: {text}" for label, text in failures)
        super().__init__(f"{what} failed: {lines}")


class SwitchDisconnected(RuntimeError):
    """No bridge is connected, or it went away while we waited for its answer."""


class Switch(Protocol):
    """br-int as the agent uses it. Every method may raise ``SwitchDisconnected``."""

    def apply(self, ops: Sequence[SwitchOp]) -> None:
        """All ops in one atomic bundle, or none (``OpenFlowError`` naming the failed ops)."""

    def dump(self) -> SwitchState:
        """What the switch holds now: flows, groups, meters."""

    def flow_stats(self, cookie: int = 0, mask: int = 0) -> list[FlowStats]:
        """Flows whose cookie matches (cookie, mask), with their counters."""

    def meter_stats(self) -> dict[int, MeterStats]:
        """Each meter's counters, by meter id."""

    def packet_out(self, data: bytes, actions: Sequence[Action],
                   in_port: int | None = None) -> None:
        """Send a frame with ``actions``; ``Output(OFPP_TABLE)`` runs it through the tables."""


def _match_text(flow: Flow) -> str:
    parts = []
    for f in flow.match.fields:
        value = f"{f.value:#x}" if isinstance(f.value, int) and f.name != "in_port" else f.value
        mask = "" if f.mask is None else (f"/{f.mask:#x}" if isinstance(f.mask, int)
                                          else f"/{f.mask}")
        parts.append(f"{f.name}={value}{mask}")
    return ",".join(parts) or "*"


def describe(op: SwitchOp, pipeline: Pipeline | None = None) -> str:
    """Short readable form of an op (ovs-ofctl syntax given the pipeline), for errors and logs."""
    match op:
        case FlowOp(command, flow):
            if pipeline is not None:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    return f"{command.value} flow {render_flow(flow, pipeline)}"
            return (f"{command.value} flow table={flow.table},priority={flow.priority},"
                    f"{_match_text(flow)} cookie={flow.cookie:#x} actions={flow.actions}")
        case GroupOp(command, group):
            return f"{command.value} group {group.group_id:#x} ({len(group.buckets)} buckets)"
        case MeterOp(command, meter):
            return f"{command.value} meter {meter.meter_id} ({meter.rate_pps} pps)"
        case CookieDelete(cookie, mask):
            return f"delete flows cookie={cookie:#x}/{mask:#x}"
    return repr(op)
