"""Switch operations: what a reconcile round sends, in the order it must be sent.

The differ produces these from desired vs actual state; the renderer prints them as an
``ovs-ofctl bundle`` file; the agent's os-ken adaptor encodes them as messages in one bundle.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pipeline.model import Flow, Group, Meter


class Command(StrEnum):
    ADD = "add"
    MODIFY = "modify"
    DELETE = "delete"
    INSERT_BUCKETS = "insert_buckets"
    """Append ``group.buckets`` to an existing group (used to split large groups)."""


@dataclass(frozen=True)
class FlowOp:
    """ADD/MODIFY/DELETE of one flow, identified strictly by (table, priority, match)."""

    command: Command
    flow: Flow


@dataclass(frozen=True)
class GroupOp:
    command: Command
    group: Group


@dataclass(frozen=True)
class MeterOp:
    command: Command
    meter: Meter


Op = FlowOp | GroupOp | MeterOp
