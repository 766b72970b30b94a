"""pipeline.tables: declared tables refuse flows that do not fit them."""

from __future__ import annotations

import pytest

from pipeline import layout
from pipeline.model import Bucket, Drop, Flow, GotoTable, Group, Match, Output, Resubmit
from pipeline.tables import Miss, Pipeline, PipelineError, Stage, TableSpec


def _spec(name: str, stage: Stage, successors: frozenset[str] = frozenset(),
          miss: Miss = Miss.NEXT) -> TableSpec:
    return TableSpec(name, stage, miss, frozenset({"in_port", "eth_type"}), successors)


@pytest.fixture
def pipe() -> Pipeline:
    return Pipeline(
        [
            _spec("A", Stage.CLASSIFIER, frozenset({"C"}), Miss.DROP),
            _spec("B", Stage.ROUTING, frozenset({"C"})),
            _spec("C", Stage.OUTPUT, miss=Miss.DROP),
        ],
        first_id=10,
    )


def test_ids_follow_declaration_order(pipe: Pipeline) -> None:
    assert pipe.names == ("A", "B", "C")
    assert [pipe.table_id(n) for n in pipe.names] == [10, 11, 12]
    assert pipe.name_of(11) == "B"
    assert pipe.next_table("A") == "B" and pipe.next_table("C") is None


def test_unknown_table_is_refused(pipe: Pipeline) -> None:
    with pytest.raises(PipelineError, match="unknown table"):
        pipe.table_id("Z")
    with pytest.raises(PipelineError):
        pipe.name_of(99)
    with pytest.raises(PipelineError, match="unknown table"):
        pipe.check_flow(Flow("Z", 1, Match(), (Drop(),)))
    with pytest.raises(PipelineError, match="unknown table"):
        pipe.check_flow(Flow("A", 1, Match(), (GotoTable("Z"),)))


def test_undeclared_field_is_refused(pipe: Pipeline) -> None:
    pipe.check_flow(Flow("A", 1, Match.of(in_port=1), (Drop(),)))
    with pytest.raises(PipelineError, match="undeclared fields"):
        pipe.check_flow(Flow("A", 1, Match.of(ipv4_dst="239.1.1.1"), (Drop(),)))


def test_jump_only_to_declared_successor(pipe: Pipeline) -> None:
    pipe.check_flow(Flow("A", 1, Match(), (GotoTable("C"),)))
    with pytest.raises(PipelineError, match="may not jump"):
        pipe.check_flow(Flow("A", 1, Match(), (GotoTable("B"),)))  # later, but not listed
    with pytest.raises(PipelineError, match="may not jump"):
        pipe.check_flow(Flow("C", 1, Match(), (GotoTable("A"),)))  # backwards


def test_backward_successor_is_refused_at_declaration() -> None:
    with pytest.raises(PipelineError, match="not a later table"):
        Pipeline([_spec("A", Stage.CLASSIFIER), _spec("B", Stage.ROUTING, frozenset({"A"}))])
    with pytest.raises(PipelineError, match="not a later table"):
        Pipeline([_spec("A", Stage.CLASSIFIER, frozenset({"A"}))])


def test_undeclared_successor_and_bad_declarations_are_refused() -> None:
    with pytest.raises(PipelineError, match="not declared"):
        Pipeline([_spec("A", Stage.CLASSIFIER, frozenset({"Q"}))])
    with pytest.raises(PipelineError, match="duplicate"):
        Pipeline([_spec("A", Stage.CLASSIFIER), _spec("A", Stage.ROUTING)])
    with pytest.raises(PipelineError, match="later stage"):
        Pipeline([_spec("A", Stage.ROUTING), _spec("B", Stage.CLASSIFIER)])


def test_group_resubmits_follow_the_using_table(pipe: Pipeline) -> None:
    g = Group(1, (Bucket((Resubmit("C"),)), Bucket((Output(1),))))
    assert pipe.check_group(g, "B") is g
    with pytest.raises(PipelineError):
        pipe.check_group(Group(1, (Bucket((Resubmit("A"),)),)), "B")


def test_miss_flows_go_to_the_next_table(pipe: Pipeline) -> None:
    flows = pipe.miss_flows(cookie=7)
    assert [(f.table, f.actions, f.cookie) for f in flows] == [("B", (GotoTable("C"),), 7)]


def test_last_table_cannot_miss_to_next() -> None:
    with pytest.raises(PipelineError, match="cannot miss"):
        Pipeline([_spec("A", Stage.CLASSIFIER)]).miss_flows(0)


def test_multicast_layout() -> None:
    p = layout.multicast_pipeline()
    assert p.names == (layout.CLASSIFIER, layout.EGRESS_RULE, layout.EGRESS_METRIC,
                       layout.ROUTING, layout.INGRESS_RULE, layout.INGRESS_METRIC, layout.OUTPUT)
    drops = [n for n in p.names if p.spec(n).miss is Miss.DROP]
    assert drops == [layout.CLASSIFIER, layout.OUTPUT]
    assert len(p.miss_flows(0)) == 5
    # Two pipelines are independent values: nothing is registered globally.
    assert layout.multicast_pipeline() is not p
