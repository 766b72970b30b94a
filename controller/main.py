"""The controller's wiring (console script ``mcast-controller``): configuration → API client →
``Hub`` → watchers (Nodes, Namespaces, Pods, MulticastPolicies, ClusterMulticastPolicies) →
the policy computation (``controller.policy``) → leader election → ``MulticastGroup`` writer,
policy status writer and the agent stream server; SIGTERM or SIGINT stop it all and release
the Lease.

Owns ``Controller`` (what runs, in which order, and what leadership switches on and off),
the node set taken from Node objects (``node_info``: InternalIPs first, the first being the
tunnel endpoint), the API client from the configuration (a kubeconfig, or in-cluster), the
Prometheus endpoint (``metricsPort``) and ``main``.

Threading model: each watcher, the leader elector and the group writer run in a thread of
their own; the stream server (``controller.stream``, when present) runs its own event loop.
They meet only in ``Hub`` (thread-safe; its listeners only wake the writer or the stream).
Only the leader writes ``MulticastGroup`` objects and serves agents: the stream server starts
when this replica starts leading and stops when it stops (agents reconnect to whichever replica
leads), and the memberships reported to it are dropped with it. A new leader deletes no
``MulticastGroup`` for its first ``DELETE_GRACE_S`` (agents reconnect and report meanwhile), so
groups do not flap on a failover or a restart. Without leader election the one replica leads
from the start. The main thread only waits for a signal.

May import: ``controller.*``, ``wire``, the official ``kubernetes`` client, prometheus-client,
PyYAML (through ``controller.config``) and the standard library; never ``agent`` or ``tools``.
"""

from __future__ import annotations

import argparse
import importlib
import ipaddress
import logging
import signal
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from types import FrameType
from typing import Any

from kubernetes import client
from kubernetes import config as kubeconfig
from prometheus_client import REGISTRY, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.config import ConfigError, ControllerConfig, load_config
from controller.groups import GroupWriter
from controller.hub import Hub
from controller.leader import LeaderElector
from controller.policy.status import StatusWriter
from controller.policy.sync import PolicySync
from controller.policy.validate import GROUP, PLURALS, VERSION
from controller.policy.views import PolicyViews
from controller.watch import Handlers, Obj, Watcher, meta
from wire.nodes import NodeInfo
from wire.policy import CLUSTER, NAMESPACED

log = logging.getLogger("controller")

DEFAULT_CONFIG = "/etc/kube-mcast/controller.yaml"
NODE_SYNC_TIMEOUT_S = 10.0  # lead only with a node set, unless the API takes longer than this
DELETE_GRACE_S = 5.0  # a new leader waits this long for agents to report before deleting


def node_info(node: Obj) -> NodeInfo:
    """A Node object as agents see it: its IPv4 InternalIPs, then ExternalIPs."""
    addresses = (node.get("status") or {}).get("addresses") or []
    ordered = [a.get("address") for kind in ("InternalIP", "ExternalIP")
               for a in addresses if isinstance(a, dict) and a.get("type") == kind]
    ips = []
    for ip in dict.fromkeys(ordered):
        try:
            ipaddress.IPv4Address(ip)
        except ValueError:
            continue  # IPv6 or garbage: agents speak IPv4 tunnels
        ips.append(str(ip))
    return NodeInfo(str(meta(node).get("name")), tuple(ips))


def new_api_client(cfg: ControllerConfig) -> client.ApiClient:
    """The official client, from ``cfg.kubeconfig`` or, when empty, the pod's service account."""
    configuration = client.Configuration()
    loader: Any  # kubernetes.config has no annotations
    if cfg.kubeconfig:
        loader = kubeconfig.load_kube_config
        loader(config_file=cfg.kubeconfig, persist_config=False,
               client_configuration=configuration)
    else:
        loader = kubeconfig.load_incluster_config
        loader(client_configuration=configuration)
    configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize or 0, 16)
    return client.ApiClient(configuration)


def _stream_server_class() -> Any:
    """``controller.stream.StreamServer`` if that module exists yet (None otherwise)."""
    try:
        module = importlib.import_module("controller.stream")
    except ModuleNotFoundError as exc:
        if exc.name != "controller.stream":
            raise
        return None
    return getattr(module, "StreamServer", None)


class Controller:
    """Everything the controller runs; ``start()`` and ``stop()`` from one thread."""

    def __init__(self, cfg: ControllerConfig, api: client.ApiClient, *,
                 serve_agents: bool = True, delete_grace: float = DELETE_GRACE_S,
                 resync_period: float = 60.0, watch_timeout: int = 300) -> None:
        self.cfg, self.api = cfg, api
        self.hub = Hub()
        core = client.CoreV1Api(api)
        self.nodes = Watcher("nodes", core.list_node, timeout_seconds=watch_timeout)
        self.namespaces = Watcher("namespaces", core.list_namespace,
                                  timeout_seconds=watch_timeout)
        self.pods = Watcher("pods", core.list_pod_for_all_namespaces,
                            timeout_seconds=watch_timeout)
        custom = client.CustomObjectsApi(api)
        self.policies = Watcher("multicastpolicies", partial(
            custom.list_cluster_custom_object, GROUP, VERSION, PLURALS[NAMESPACED]),
            timeout_seconds=watch_timeout)
        self.cluster_policies = Watcher("clustermulticastpolicies", partial(
            custom.list_cluster_custom_object, GROUP, VERSION, PLURALS[CLUSTER]),
            timeout_seconds=watch_timeout)
        self.policy_views = PolicyViews()
        self.policy_sync = PolicySync(self.policy_views, pods=self.pods,
                                      namespaces=self.namespaces, policies=self.policies,
                                      cluster_policies=self.cluster_policies)
        self.status_writer = StatusWriter(self.policy_sync, self.policy_views, api)
        self.nodes.add_handlers(Handlers(
            on_add=lambda _: self._node_changed(), on_update=lambda _o, _n: self._node_changed(),
            on_delete=lambda _: self._node_changed(), on_synced=self._update_nodes))
        self.writer = (GroupWriter(self.hub, api, delete_grace=delete_grace,
                                   resync_period=resync_period)
                       if cfg.multicast_enabled else None)
        self.elector = (LeaderElector(
            api, name=cfg.lease_name, namespace=cfg.lease_namespace, identity=cfg.identity,
            lease_duration=cfg.lease_duration_s, renew_deadline=cfg.renew_deadline_s,
            retry_period=cfg.retry_period_s, on_started_leading=self._started_leading,
            on_stopped_leading=self._stopped_leading) if cfg.leader_election else None)
        self._stream_class = _stream_server_class() if serve_agents else None
        self._stream: Any = None
        self._leading = threading.Event()

    @property
    def watchers(self) -> tuple[Watcher, ...]:
        return self.nodes, self.namespaces, self.pods, self.policies, self.cluster_policies

    @property
    def leading(self) -> bool:
        return self._leading.is_set()

    def start(self) -> None:
        for w in self.watchers:
            w.start()
        if not self.nodes.wait_synced(NODE_SYNC_TIMEOUT_S):
            log.warning("no node list after %.0fs: starting without one", NODE_SYNC_TIMEOUT_S)
        if self.writer is not None:
            self.writer.start()
        self.status_writer.start()
        if self.elector is not None:
            self.elector.start()
        else:
            self._started_leading()
        log.info("controller %s started (leader election %s, multicast %s, agent stream %s)",
                 self.cfg.identity, "on" if self.elector else "off",
                 "on" if self.writer else "off", "on" if self._stream_class else "absent")

    def stop(self) -> None:
        if self.elector is not None:
            self.elector.stop(release=True)  # stops leading first: nothing written after
        else:
            self._stopped_leading()
        if self.writer is not None:
            self.writer.stop()
        self.status_writer.stop()
        for w in self.watchers:
            w.stop()

    # -- leadership ----------------------------------------------------------------------------

    def _started_leading(self) -> None:
        self._leading.set()
        if self.writer is not None:
            self.writer.set_leading(True)
        self.status_writer.set_leading(True)
        if self._stream_class is not None and self._stream is None:
            try:
                self._stream = self._stream_class(self.cfg, self.hub, self.api,
                                                  policies=self.policy_views)
                self._stream.start()
            except Exception:
                log.exception("the agent stream server did not start")
                self._stream = None

    def _stopped_leading(self) -> None:
        self._leading.clear()
        if self.writer is not None:
            self.writer.set_leading(False)
        self.status_writer.set_leading(False)
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.stop()
            except Exception:
                log.exception("stopping the agent stream server failed")
        _, memberships = self.hub.memberships()
        for node in memberships:  # reported to this leader: the next one hears them afresh
            self.hub.report(node, ())

    # -- the node set --------------------------------------------------------------------------

    def _node_changed(self) -> None:
        if not self.nodes.listing:  # a (re)list ends with on_synced: one update for it all
            self._update_nodes()

    def _update_nodes(self) -> None:
        self.hub.set_nodes(node_info(n) for n in self.nodes.store.values())

    # -- metrics -------------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        leader = GaugeMetricFamily("kube_mcast_controller_leader",
                                   "1 if this replica leads (writes MulticastGroups, serves "
                                   "agents)")
        leader.add_metric([], 1.0 if self.leading else 0.0)
        yield leader
        nodes = GaugeMetricFamily("kube_mcast_controller_nodes", "Nodes in the node set")
        nodes.add_metric([], float(len(self.hub.nodes()[1])))
        yield nodes
        for name, help_text in (("lists", "Lists (the first included)"),
                                ("relists", "Relists after 410 Gone"),
                                ("resumes", "Watches resumed after a failure"),
                                ("renewals", "Watches that ended at their timeout, renewed"),
                                ("events", "Watch events received")):
            family = CounterMetricFamily(f"kube_mcast_controller_watch_{name}", help_text,
                                         labels=["resource"])
            for w in self.watchers:
                family.add_metric([w.name], float(getattr(w.stats, name)))
            yield family
        _, memberships = self.hub.memberships()
        groups = GaugeMetricFamily("kube_mcast_controller_groups",
                                   "Multicast groups with a member pod on some node, as agents "
                                   "reported them to this replica")
        groups.add_metric([], float(len({r.group for rs in memberships.values() for r in rs})))
        yield groups
        node_groups = GaugeMetricFamily("kube_mcast_controller_node_groups",
                                        "Groups with member pods on each node, as reported",
                                        labels=["node"])
        for node, reports in sorted(memberships.items()):
            node_groups.add_metric([node], float(len(reports)))
        yield node_groups
        if self.writer is not None:
            writes = CounterMetricFamily("kube_mcast_controller_multicastgroup_writes",
                                         "MulticastGroup writes", labels=["op"])
            for op in ("creates", "updates", "deletes"):
                writes.add_metric([op.removesuffix("s")], float(getattr(self.writer.stats, op)))
            yield writes
            errors = CounterMetricFamily("kube_mcast_controller_multicastgroup_errors",
                                         "MulticastGroup passes that failed (retried)")
            errors.add_metric([], float(self.writer.stats.errors))
            yield errors
        policies = GaugeMetricFamily("kube_mcast_controller_policies",
                                     "Multicast policies by validity", labels=["valid"])
        for valid, count in sorted(self.policy_sync.validity().items()):
            policies.add_metric([valid], float(count))
        yield policies
        rules = GaugeMetricFamily("kube_mcast_controller_policy_rules",
                                  "Rules in each node's policy view", labels=["node"])
        for node, count in sorted(self.policy_views.rule_counts().items()):
            rules.add_metric([node], float(count))
        yield rules
        writes = CounterMetricFamily("kube_mcast_controller_policy_status_writes",
                                     "Policy status writes")
        writes.add_metric([], float(self.status_writer.stats.writes))
        yield writes


class _Metrics(Collector):
    def __init__(self, controller: Controller) -> None:
        self._controller = controller

    def collect(self) -> Iterable[Metric]:
        return self._controller.collect()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mcast-controller",
                                     description="The kube-mcast cluster controller.")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"default {DEFAULT_CONFIG}")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"mcast-controller: {exc}", file=sys.stderr)
        return 2
    try:
        api = new_api_client(cfg)
    except (kubeconfig.ConfigException, OSError) as exc:
        print(f"mcast-controller: no Kubernetes API: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    controller = Controller(cfg, api)
    if cfg.metrics_port:  # with the stream server's metrics (the default registry)
        REGISTRY.register(_Metrics(controller))
        start_http_server(cfg.metrics_port)
    controller.start()
    stop.wait()
    controller.stop()
    log.info("controller %s stopped", cfg.identity)
    return 0


if __name__ == "__main__":
    sys.exit(main())
