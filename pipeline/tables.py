"""Tables of the pipeline: declared once, in order, by name, with stage and miss behaviour.

A ``Pipeline`` computes table ids from the declaration order and refuses flows that match a
field the table did not declare, or jump (goto/resubmit) backwards or to a table not listed as
a successor. Pipelines are values: nothing is registered globally, so tests cannot leak state.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum

from pipeline import priorities
from pipeline.model import Action, Flow, GotoTable, Group, Match, Resubmit


class Stage(IntEnum):
    CLASSIFIER = 0
    EGRESS_SECURITY = 1
    EGRESS_METRIC = 2
    ROUTING = 3
    INGRESS_SECURITY = 4
    INGRESS_METRIC = 5
    OUTPUT = 6


class Miss(StrEnum):
    DROP = "drop"
    NEXT = "next"


class PipelineError(ValueError):
    """A flow or group does not fit the declared pipeline."""


@dataclass(frozen=True)
class TableSpec:
    name: str
    stage: Stage
    miss: Miss
    fields: frozenset[str]
    successors: frozenset[str] = frozenset()
    doc: str = ""


class Pipeline:
    """An ordered set of tables with ids starting at ``first_id``."""

    def __init__(self, specs: Sequence[TableSpec], first_id: int = 0) -> None:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise PipelineError(f"duplicate table names in {names}")
        for a, b in zip(specs, specs[1:], strict=False):
            if b.stage < a.stage:
                raise PipelineError(f"table {b.name} is declared after a later stage")
        self._specs = {s.name: s for s in specs}
        self._ids = {s.name: first_id + i for i, s in enumerate(specs)}
        for s in specs:
            for nxt in s.successors:
                if nxt not in self._ids:
                    raise PipelineError(f"table {s.name}: successor {nxt} is not declared")
                if self._ids[nxt] <= self._ids[s.name]:
                    raise PipelineError(f"table {s.name}: successor {nxt} is not a later table")
        self._order = tuple(names)

    @property
    def names(self) -> tuple[str, ...]:
        return self._order

    def table_id(self, name: str) -> int:
        try:
            return self._ids[name]
        except KeyError:
            raise PipelineError(f"unknown table {name!r}") from None

    def name_of(self, table_id: int) -> str:
        for name, tid in self._ids.items():
            if tid == table_id:
                return name
        raise PipelineError(f"no table with id {table_id}")

    def spec(self, name: str) -> TableSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise PipelineError(f"unknown table {name!r}") from None

    def next_table(self, name: str) -> str | None:
        i = self._order.index(name)
        return self._order[i + 1] if i + 1 < len(self._order) else None

    def _check_jumps(self, actions: Iterable[Action], src: TableSpec, where: str) -> None:
        for a in actions:
            if isinstance(a, GotoTable | Resubmit):
                if a.table not in self._specs:
                    raise PipelineError(f"{where}: jumps to unknown table {a.table!r}")
                if a.table not in src.successors:
                    raise PipelineError(
                        f"{where}: {src.name} may not jump to {a.table} "
                        f"(successors: {sorted(src.successors)})"
                    )

    def check_flow(self, flow: Flow) -> Flow:
        spec = self.spec(flow.table)
        extra = flow.match.names() - spec.fields
        if extra:
            raise PipelineError(f"flow in {flow.table} matches undeclared fields {sorted(extra)}")
        self._check_jumps(flow.actions, spec, f"flow in {flow.table}")
        return flow

    def check_group(self, group: Group, from_table: str) -> Group:
        """A group used by flows of ``from_table`` may only resubmit to its successors."""
        spec = self.spec(from_table)
        for b in group.buckets:
            self._check_jumps(b.actions, spec, f"group {group.group_id}")
        return group

    def miss_flows(self, cookie: int) -> list[Flow]:
        """A priority-0 ``goto next`` flow for every table whose miss is NEXT."""
        out = []
        for name in self._order:
            if self._specs[name].miss is Miss.NEXT:
                nxt = self.next_table(name)
                if nxt is None:
                    raise PipelineError(f"last table {name} cannot miss to next")
                out.append(
                    self.check_flow(
                        Flow(name, priorities.MISS, Match(), (GotoTable(nxt),), cookie)
                    )
                )
        return out
