"""The Grafana dashboard (manifests/grafana/kube-mcast-dashboard.json) against the code.

Every PromQL expression of the dashboard (panel targets and template variables) may name only
metrics the agent and the controller export, with only the labels those metrics carry. What
is exported is asked of the real objects, not written down here: every module of ``agent`` and
``controller`` is imported (module-level metrics register themselves), and the scrape-time
collectors (``MulticastCollector``, ``PolicyCollector``, ``Controller.collect``) are run on
small real inputs. Sample names follow the exposition format (a counter ``x`` is scraped as
``x_total``, a histogram as ``x_bucket{le}``, ``x_sum``, ``x_count``).

The PromQL reader below knows just enough of the language to find selectors (a metric name
with its matchers), grouping labels (``by``, ``without``, ``on``, ``ignoring``, ``group_left``,
``group_right``) and function names; anything it does not know fails the test rather than
being skipped.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

import agent
import controller
from agent.multicast.collector import AgentInfo, MulticastCollector
from agent.multicast.core import GroupMembers
from agent.multicast.policy.enforcer import RuleCount
from agent.multicast.policy.metrics import PolicyCollector
from agent.multicast.stats import GroupTraffic, PodStats
from controller.config import ControllerConfig
from controller.main import Controller
from wire.policy import Rule, RuleKey

DASHBOARD = Path(__file__).resolve().parents[2] / "manifests" / "grafana" / \
    "kube-mcast-dashboard.json"

TARGET_LABELS = frozenset({"instance", "job"})
"""Labels Prometheus adds to every scraped series."""

FUNCTIONS = frozenset({
    "abs", "absent", "avg", "avg_over_time", "ceil", "changes", "clamp_max", "clamp_min",
    "count", "count_over_time", "delta", "deriv", "floor", "histogram_quantile", "idelta",
    "increase", "irate", "last_over_time", "max", "max_over_time", "min", "min_over_time",
    "quantile", "rate", "resets", "round", "scalar", "sort", "sort_desc", "stddev", "sum",
    "sum_over_time", "time", "timestamp", "topk", "bottomk", "vector",
})
GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
OPERATORS = frozenset({"and", "or", "unless", "bool"})

Exported = dict[str, frozenset[str]]


# ---------------------------------------------------------------------------- what the code exports


def _module_metrics() -> Iterator[MetricWrapperBase]:
    """Every module-level metric of the agent and the controller (all modules imported)."""
    for package in (agent, controller):
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            module = importlib.import_module(info.name)
            for value in vars(module).values():
                if isinstance(value, MetricWrapperBase):
                    yield value


def _rule_count() -> RuleCount:
    key = RuleKey("Namespaced", "default", "p", "Egress", 0)
    return RuleCount(Rule(key, "r", "Drop", 1.0, "at"), 1, 64)


def _collectors() -> list[Collector]:
    """The scrape-time collectors, each with a row of every kind it exports."""
    members = GroupMembers("239.1.1.1", ("default/p1",), ("10.0.0.2",))
    pods = PodStats("default", "p1", 1, 1, 1, 1, 1, 1, 64, 64)
    multicast = MulticastCollector(
        lambda: [members], lambda: [pods], lambda: {"tunnel": 0}, lambda: {"uplink": 0},
        group_traffic=lambda: [GroupTraffic("239.1.1.1", 1, 64)],
        info=AgentInfo("node1", "10.0.0.1", "encap", 1))
    control = Controller(ControllerConfig(identity="dashboard-test"), k8s.ApiClient(),
                         serve_agents=False)
    control.hub.report("node1", [])

    class ControllerMetrics(Collector):
        def collect(self) -> Iterable[Any]:
            return control.collect()

    return [multicast, PolicyCollector(lambda: [_rule_count()]), ControllerMetrics(),
            REGISTRY]


def _samples(name: str, kind: str, labels: frozenset[str]) -> Exported:
    """The sample names (and their labels) of one metric family, as Prometheus scrapes them."""
    if kind == "counter":
        return {f"{name}_total": labels, f"{name}_created": labels}
    if kind == "histogram":
        return {f"{name}_bucket": labels | {"le"}, f"{name}_sum": labels,
                f"{name}_count": labels, f"{name}_created": labels}
    if kind == "summary":
        return {name: labels | {"quantile"}, f"{name}_sum": labels, f"{name}_count": labels,
                f"{name}_created": labels}
    if kind == "info":
        return {f"{name}_info": labels}
    return {name: labels}


def _add(out: Exported, found: Exported) -> None:
    for name, labels in found.items():
        out[name] = out.get(name, frozenset()) | labels


def exported() -> Exported:
    """Sample name -> label names, for everything the agent and the controller export."""
    out: Exported = {}
    for metric in _module_metrics():
        labels = frozenset(metric._labelnames)  # the metric's declared label names
        for family in metric.describe():
            _add(out, _samples(family.name, family.type, labels))
    for collector in _collectors():
        for family in collector.collect():
            labels = frozenset(getattr(family, "_labelnames", ()))
            _add(out, _samples(family.name, family.type, labels))
            for s in family.samples:
                _add(out, {s.name: frozenset(s.labels)})
    return out


@pytest.fixture(scope="module")
def metrics() -> Exported:
    return exported()


# ---------------------------------------------------------------------------- reading PromQL


_TOKEN = re.compile(r"""
    (?P<str>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<var>\[\[\w+\]\]|\$\{[^}]*\}|\$\w+)
  | (?P<range>\[[^\]]*\])
  | (?P<num>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>==|!=|=~|!~|>=|<=|[-+*/%^<>=,(){}])
  | (?P<ws>\s+)
""", re.VERBOSE)


@dataclass
class Refs:
    """What one expression names: selectors (metric, matcher labels), grouping labels."""

    selectors: list[tuple[str, set[str]]] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


def _tokens(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"cannot read {expr[pos:]!r} in {expr!r}")
        kind = m.lastgroup
        assert kind is not None
        if kind != "ws":
            out.append((kind, m.group()))
        pos = m.end()
    return out


def references(expr: str) -> Refs:
    refs = Refs()
    toks = _tokens(expr)
    i = 0

    def label_list(j: int) -> int:
        """Labels in ``( a, b )`` starting at toks[j] == "("; returns the index after ")"."""
        assert toks[j] == ("op", "("), expr
        j += 1
        while toks[j] != ("op", ")"):
            kind, text = toks[j]
            if kind == "ident":
                refs.grouping.add(text)
            elif text != ",":
                refs.problems.append(f"unexpected {text!r} in a label list of {expr!r}")
            j += 1
        return j + 1

    def matchers(j: int, metric: str) -> int:
        """Matchers in ``{ l="v", ... }`` starting at toks[j] == "{"; returns the index after."""
        labels: set[str] = set()
        j += 1
        while toks[j] != ("op", "}"):
            kind, text = toks[j]
            if kind == "ident":
                labels.add(text)
                if toks[j + 1][1] not in ("=", "!=", "=~", "!~") or toks[j + 2][0] != "str":
                    refs.problems.append(f"bad matcher after {text!r} in {expr!r}")
                j += 3
            elif text == ",":
                j += 1
            else:
                refs.problems.append(f"unexpected {text!r} in the matchers of {expr!r}")
                j += 1
        refs.selectors.append((metric, labels))
        return j + 1

    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else ""
        if kind == "ident":
            if text in GROUPING and nxt == "(":
                i = label_list(i + 1)
                continue
            if text == "offset":
                i += 3  # offset 5m: a number and a unit
                continue
            if text in OPERATORS or (text in FUNCTIONS and nxt in GROUPING):
                pass  # an aggregation whose grouping comes first: sum by (x) (...)
            elif nxt == "(":
                if text not in FUNCTIONS:
                    refs.problems.append(f"unknown function {text}() in {expr!r}")
            elif nxt == "{":
                i = matchers(i + 1, text)
                continue
            else:
                refs.selectors.append((text, set()))
        elif text == "{":
            refs.problems.append(f"a selector without a metric name in {expr!r}")
            i = matchers(i, "")
            continue
        i += 1
    return refs


def check_expr(expr: str, metrics: Exported, where: str) -> list[str]:
    """What is wrong with ``expr``: metrics not exported, labels they do not have."""
    refs = references(expr)
    problems = [f"{where}: {p}" for p in refs.problems]
    available: set[str] = set(TARGET_LABELS)
    for metric, labels in refs.selectors:
        if metric not in metrics:
            problems.append(f"{where}: metric {metric} is not exported by the code")
            continue
        have = metrics[metric] | TARGET_LABELS
        available |= have
        for label in sorted(labels - have):
            problems.append(f"{where}: {metric} has no label {label!r} "
                            f"(it has {sorted(metrics[metric])})")
    if not refs.selectors:
        problems.append(f"{where}: names no metric: {expr!r}")
    for label in sorted(refs.grouping - available):
        problems.append(f"{where}: grouping label {label!r} is on none of the metrics of "
                        f"{expr!r}")
    return problems


_LABEL_VALUES = re.compile(r"^label_values\((?:(?P<expr>.+),\s*)?(?P<label>\w+)\)$")


def check_variable(query: str, metrics: Exported, where: str) -> list[str]:
    m = _LABEL_VALUES.match(query.strip())
    if m is None:
        return [f"{where}: not a label_values(...) query: {query!r}"]
    expr, label = m.group("expr"), m.group("label")
    if expr is None:
        return [] if any(label in labels for labels in metrics.values()) else [
            f"{where}: no metric has label {label!r}"]
    problems = check_expr(expr, metrics, where)
    for metric, _ in references(expr).selectors:
        if metric in metrics and label not in metrics[metric] | TARGET_LABELS:
            problems.append(f"{where}: {metric} has no label {label!r}")
    return problems


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in items:
        yield p
        yield from panels(p.get("panels", []))


def dashboard_problems(dash: dict[str, Any], metrics: Exported) -> list[str]:
    problems = []
    for p in panels(dash["panels"]):
        for t in p.get("targets", []):
            problems += check_expr(t["expr"], metrics, f"panel {p['title']!r} {t['refId']}")
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            query = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            problems += check_variable(query, metrics, f"variable ${v['name']}")
    return problems


@pytest.fixture(scope="module")
def dash() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


# ---------------------------------------------------------------------------- the tests


def test_every_query_names_exported_metrics_with_their_labels(dash: dict[str, Any],
                                                              metrics: Exported) -> None:
    assert dashboard_problems(dash, metrics) == []


def test_the_check_fails_on_a_missing_metric_or_label(dash: dict[str, Any],
                                                      metrics: Exported) -> None:
    """The check above is not vacuous: it refuses what the code does not export."""
    def broken(expr: str) -> list[str]:
        bad = json.loads(json.dumps(dash))
        bad["panels"][1]["targets"][0]["expr"] = expr
        return dashboard_problems(bad, metrics)

    assert broken("sum(rate(kube_mcast_pod_inbound_packets_total[5m]))") == []
    assert broken("rate(kube_mcast_no_such_metric_total[5m])")
    assert broken("rate(kube_mcast_pod_inbound_packets[5m])")  # counters are scraped as _total
    assert broken('kube_mcast_groups{pod="p1"}')
    assert broken("sum by (pod) (kube_mcast_groups)")
    assert broken("kube_mcast_pod_inbound_packets_total * on (node_name) kube_mcast_groups")
    assert broken("frobnicate(kube_mcast_groups)")
    assert broken('{__name__="kube_mcast_groups"}')


def test_exported_names_come_from_the_code(metrics: Exported) -> None:
    """Spot checks of the inventory itself: collectors, module metrics, histograms."""
    assert metrics["kube_mcast_pod_inbound_packets_total"] == {"namespace", "pod"}
    assert metrics["kube_mcast_group_local_member"] == {"group", "namespace", "pod"}
    assert metrics["kube_mcast_igmp_messages_total"] == {"type", "verdict"}
    assert metrics["kube_mcast_flow_operation_seconds_bucket"] == {"kind", "le"}
    assert metrics["kube_mcast_controller_stream_clients"] == frozenset()
    assert metrics["kube_mcast_controller_watch_relists_total"] == {"resource"}
    assert metrics["kube_mcast_policy_rule_packets_total"] == {
        "namespace", "policy", "rule", "direction", "action"}
    assert "process_resident_memory_bytes" in metrics


def test_shape(dash: dict[str, Any]) -> None:
    assert dash["schemaVersion"] == 39 and dash["uid"] == "kube-mcast"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"node", "namespace", "pod", "group"} <= variables.keys()
    every = list(panels(dash["panels"]))
    ids = [p["id"] for p in every]
    assert len(ids) == len(set(ids))
    for p in every:
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"] and p.get("description"), p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", p["title"]
        pos = p["gridPos"]
        assert pos["x"] + pos["w"] <= 24, p["title"]


def test_every_kube_mcast_metric_is_on_the_dashboard(dash: dict[str, Any],
                                                     metrics: Exported) -> None:
    """A metric added to the code without a panel fails here: add one (or say why not)."""
    used = {m for p in panels(dash["panels"]) for t in p.get("targets", [])
            for m, _ in references(t["expr"]).selectors}
    families = {re.sub(r"_(bucket|sum|count)$", "", name) for name in metrics
                if name.startswith("kube_mcast_") and not name.endswith("_created")}
    used_families = {re.sub(r"_(bucket|sum|count)$", "", name) for name in used}
    assert sorted(families - used_families) == []
