"""OVSDB side of the node: br-int, br-phy, tunnel, patch and pod ports, controller, table names.

This module owns every write the agent makes to the Open_vSwitch database, through ovsdbapp's
connection (python-ovs IDL underneath) to a ``unix:`` or ``tcp:`` endpoint. Each ``ensure_*``
compares the wanted rows with the IDL's copy and writes only the differences, in one
transaction: running it twice changes nothing (no write at all, no vswitchd reconfiguration).
Writes bump ``next_cfg`` and wait until ovs-vswitchd has applied them, as ovs-vsctl does.

Order matters for br-int: OVS flushes a bridge's flows and groups when a primary controller is
added or removed, so ``ensure_bridge`` sets the controller in the same transaction that makes
the bridge, before anything programs flows; an unchanged controller is never rewritten.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ovsdbapp.backend.ovs_idl import command, connection
from ovsdbapp.schema.open_vswitch import impl_idl

from pipeline.tables import Pipeline

log = logging.getLogger(__name__)

ROUND_KEY = "kube-mcast-round"
OWNER_KEY = "kube-mcast-owner"
OWNER = "kube-mcast"
PROTOCOLS = ("OpenFlow13", "OpenFlow15")
"""The agent speaks OpenFlow 1.5 (insert-bucket); 1.3 stays allowed for ovs-ofctl -O OpenFlow13."""
TABLES = ("Open_vSwitch", "Bridge", "Port", "Interface", "Controller", "Flow_Table")


CONTROLLER_MAX_BACKOFF_MS = 1000


class OvsdbError(RuntimeError):
    """An OVSDB operation failed; the message names the object."""


@dataclass(frozen=True)
class PortInfo:
    name: str
    ofport: int
    type: str
    external_ids: dict[str, str] = field(default_factory=dict)


def pod_external_ids(namespace: str, name: str, container_id: str) -> dict[str, str]:
    """external_ids of a pod's port: who it belongs to (kept across agent restarts)."""
    return {OWNER_KEY: OWNER, "pod-namespace": namespace, "pod-name": name,
            "container-id": container_id}


_UNSET = object()


def _get(row: Any, column: str, default: Any) -> Any:
    """A column's value; ``default`` for a row inserted in this transaction and not set yet."""
    try:
        return getattr(row, column)
    except AttributeError:
        return default


def _one(value: Any) -> Any:
    """The value of an optional (0..1) column, or None."""
    return value[0] if isinstance(value, list) and value else (None if value == [] else value)


class _Fn(command.BaseCommand):
    """Runs ``fn(txn, tables)`` inside an IDL transaction; its return value is the result."""

    def __init__(self, api: Any, fn: Callable[[Any, Any], Any], what: str,
                 read_only: bool = False) -> None:
        super().__init__(api)
        self.fn, self.what = fn, what
        self.READ_ONLY = read_only

    def run_idl(self, txn: Any) -> None:
        self.result = self.fn(txn, self.api.tables)

    def __str__(self) -> str:
        return self.what


class _Txn(impl_idl.OvsVsctlTransaction):
    """Bumps next_cfg (and waits for vswitchd) only if a command wrote something."""

    def pre_commit(self, txn: Any) -> None:
        txn.expected_ifaces = set()

    def post_commit(self, txn: Any) -> None:
        if getattr(txn, "kmc_bumped", False):
            super().post_commit(txn)


class _Api(impl_idl.OvsdbIdl):
    def create_transaction(self, check_error: bool = False, log_errors: bool = True,
                           **kwargs: Any) -> _Txn:
        return _Txn(self, self.ovsdb_connection, check_error=check_error,
                    log_errors=log_errors)


class _Writer:
    """Per-transaction helper: set a column only if it differs; count writes."""

    def __init__(self, api: Any, txn: Any) -> None:
        self.api, self.txn, self.changed = api, txn, False

    def touch(self) -> None:
        if not self.changed:
            self.changed = True
            self.api._ovs.increment("next_cfg")
            self.txn.kmc_bumped = True

    def set(self, row: Any, column: str, value: Any) -> None:
        current = _get(row, column, _UNSET)
        if isinstance(current, list):
            if isinstance(value, list):
                current, value = sorted(current), sorted(value)
            else:
                current = _one(current)
        if current != value:
            self.touch()
            setattr(row, column, value)

    def setkeys(self, row: Any, column: str, values: Mapping[str, str]) -> None:
        current = _get(row, column, {})
        for k, v in values.items():
            if current.get(k) != v:
                self.touch()
                row.setkey(column, k, v)

    def insert(self, table: str) -> Any:
        self.touch()
        return self.txn.insert(self.api.tables[table])


class Ovsdb:
    """Connection to one node's OVSDB. Thread-safe (ovsdbapp serialises transactions)."""

    def __init__(self, endpoint: str, timeout: float = 30.0) -> None:
        self.endpoint, self.timeout = endpoint, timeout
        try:
            idl = connection.OvsdbIdl.from_server(endpoint, "Open_vSwitch",
                                                  helper_tables=TABLES)
            self._conn = connection.Connection(idl, timeout=int(timeout))
            # ovsdbapp keeps the connection in a class attribute (one per class per process);
            # a class of our own per instance lets several nodes' OVSDBs live in one process.
            api_cls = type("_NodeApi", (_Api,), {"_ovsdb_connection": None})
            self.api = api_cls(self._conn)
        except Exception as exc:
            raise OvsdbError(f"cannot connect to OVSDB at {endpoint}: {exc}") from exc

    def close(self) -> None:
        self._conn.stop(timeout=5)

    def __enter__(self) -> Ovsdb:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------------------------

    def _write(self, what: str, fn: Callable[[_Writer, Any], Any]) -> Any:
        """Run ``fn(writer, tables)`` in one transaction; errors name ``what``."""
        def run(txn: Any, tables: Any) -> Any:
            w = _Writer(self.api, txn)
            result = fn(w, tables)
            return (w.changed, result)
        try:
            changed, result = _Fn(self.api, run, what).execute(check_error=True,
                                                               log_errors=False)
        except Exception as exc:
            raise OvsdbError(f"{what}: {exc}") from exc
        if changed:
            log.info("%s: updated", what)
        return result

    def _read(self, fn: Callable[[Any], Any], what: str = "read") -> Any:
        try:
            return _Fn(self.api, lambda _t, tables: fn(tables), what, read_only=True).execute(
                check_error=True, log_errors=False)
        except Exception as exc:
            raise OvsdbError(f"{what}: {exc}") from exc

    @staticmethod
    def _row(tables: Any, table: str, name: str) -> Any | None:
        for row in tables[table].rows.values():
            if row.name == name:
                return row
        return None

    def _bridge(self, tables: Any, name: str) -> Any:
        br = self._row(tables, "Bridge", name)
        if br is None:
            raise OvsdbError(f"bridge {name} does not exist")
        return br

    def _port_row(self, w: _Writer, tables: Any, br: Any, name: str, type_: str = "",
                  options: Mapping[str, str] | None = None,
                  ofport: int | None = None) -> Any:
        """Ensure port+interface ``name`` on bridge row ``br``; returns the Interface row."""
        port = self._row(tables, "Port", name)
        if port is not None and port not in _get(br, "ports", []):
            raise OvsdbError(f"port {name} exists on another bridge")
        if port is None:
            iface = w.insert("Interface")
            iface.name = name
            port = w.insert("Port")
            port.name = name
            port.interfaces = [iface]
            br.addvalue("ports", port)
        iface = port.interfaces[0]
        w.set(iface, "type", type_)
        if options is not None:
            w.set(iface, "options", dict(options))
        if ofport is not None:
            w.set(iface, "ofport_request", ofport)
        return iface

    # -- bridges --------------------------------------------------------------------------------

    def ensure_bridge(self, name: str, datapath_type: str, *, controller: str | None = None,
                      secure: bool = True, hwaddr: str | None = None) -> None:
        """br-int style bridge: secure fail mode, our protocols, in-band off, and the controller
        (``tcp:127.0.0.1:PORT``, out-of-band) set in the same transaction as the bridge.
        ``secure=False`` and no controller give a plain NORMAL bridge (br-phy)."""
        def fn(w: _Writer, tables: Any) -> None:
            br = self._row(tables, "Bridge", name)
            if br is None:
                br = w.insert("Bridge")
                br.name = name
                self.api._ovs.addvalue("bridges", br)
                self._port_row(w, tables, br, name, "internal")
            w.set(br, "datapath_type", datapath_type)
            w.set(br, "fail_mode", "secure" if secure else [])
            if secure:
                w.set(br, "protocols", list(PROTOCOLS))
                w.setkeys(br, "other_config", {"disable-in-band": "true"})
            if hwaddr is not None:
                w.setkeys(br, "other_config", {"hwaddr": hwaddr})
            if controller is not None:
                self._controller(w, br, controller)
        self._write(f"ensure bridge {name}", fn)

    @staticmethod
    def _controller(w: _Writer, br: Any, target: str) -> None:
        ctls = _get(br, "controller", [])
        if len(ctls) == 1 and ctls[0].target == target:
            # Same target: adjust in place. Replacing the row would flush the bridge's flows.
            w.set(ctls[0], "connection_mode", "out-of-band")
            w.set(ctls[0], "max_backoff", CONTROLLER_MAX_BACKOFF_MS)
            return
        ctl = w.insert("Controller")
        ctl.target = target
        ctl.connection_mode = "out-of-band"
        # The agent is local: a restarted agent should be reconnected within a second, not
        # after OVS's default backoff of up to 8 s.
        ctl.max_backoff = CONTROLLER_MAX_BACKOFF_MS
        br.controller = [ctl]

    def set_table_names(self, bridge: str, pipeline: Pipeline) -> None:
        """Flow_Table rows named after the pipeline, so ``dump-flows --names`` reads well."""
        wanted = {pipeline.table_id(n): n for n in pipeline.names}

        def fn(w: _Writer, tables: Any) -> None:
            br = self._bridge(tables, bridge)
            have = dict(_get(br, "flow_tables", {}))
            for tid, name in wanted.items():
                row = have.get(tid)
                if row is None:
                    row = w.insert("Flow_Table")
                    row.name = name
                    br.setkey("flow_tables", tid, row)
                else:
                    w.set(row, "name", name)
            for tid in set(have) - set(wanted):
                w.touch()
                br.delkey("flow_tables", tid)
        self._write(f"name tables of {bridge}", fn)

    # -- ports ----------------------------------------------------------------------------------

    def ensure_tunnel_port(self, bridge: str, name: str, kind: str, ofport: int) -> None:
        """Flow-based tunnel (remote_ip and key from the flow), vxlan or geneve."""
        if kind not in ("vxlan", "geneve"):
            raise OvsdbError(f"tunnel port {name}: unknown tunnel type {kind!r}")

        def fn(w: _Writer, tables: Any) -> None:
            self._port_row(w, tables, self._bridge(tables, bridge), name, kind,
                           {"remote_ip": "flow", "key": "flow"}, ofport)
        self._write(f"ensure tunnel port {name} on {bridge}", fn)

    def ensure_uplink(self, phy_bridge: str, datapath_type: str, uplink: str, int_bridge: str,
                      int_patch: str, phy_patch: str, int_ofport: int,
                      hwaddr: str | None = None) -> None:
        """br-phy (a plain NORMAL bridge) with the uplink, patched to ``int_bridge``."""
        self.ensure_bridge(phy_bridge, datapath_type, secure=False, hwaddr=hwaddr)

        def fn(w: _Writer, tables: Any) -> None:
            phy, integ = self._bridge(tables, phy_bridge), self._bridge(tables, int_bridge)
            self._port_row(w, tables, phy, uplink)
            self._port_row(w, tables, phy, phy_patch, "patch", {"peer": int_patch})
            self._port_row(w, tables, integ, int_patch, "patch", {"peer": phy_patch}, int_ofport)
        self._write(f"ensure uplink {uplink} and patch {int_patch}<->{phy_patch}", fn)

    def add_pod_port(self, ifname: str, external_ids: Mapping[str, str],
                     bridge: str = "br-int", ofport_request: int | None = None) -> int:
        """Attach a pod's host-side interface; returns its ofport once vswitchd assigned it."""
        def fn(w: _Writer, tables: Any) -> None:
            iface = self._port_row(w, tables, self._bridge(tables, bridge), ifname,
                                   ofport=ofport_request)
            w.setkeys(iface, "external_ids", external_ids)
        self._write(f"add pod port {ifname} to {bridge}", fn)
        return self.ofport(ifname)

    def del_port(self, ifname: str) -> None:
        """Remove a port from whichever bridge holds it (no error if it is gone)."""
        def fn(w: _Writer, tables: Any) -> None:
            port = self._row(tables, "Port", ifname)
            if port is None:
                return
            for br in tables["Bridge"].rows.values():
                if port in br.ports:
                    w.touch()
                    br.delvalue("ports", port)
        self._write(f"delete port {ifname}", fn)

    def ofport(self, ifname: str, timeout: float | None = None) -> int:
        """The interface's OpenFlow port number, waiting until vswitchd has assigned it."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            ofport, error = self._read(lambda t: self._ofport_now(t, ifname), f"ofport {ifname}")
            if ofport is not None and ofport > 0:
                return int(ofport)
            if ofport == -1 or error:
                raise OvsdbError(f"interface {ifname} has no ofport: {error or 'refused'}")
            if time.monotonic() > deadline:
                raise OvsdbError(f"interface {ifname}: no ofport assigned within {timeout}s")
            time.sleep(0.02)

    def _ofport_now(self, tables: Any, ifname: str) -> tuple[int | None, str | None]:
        iface = self._row(tables, "Interface", ifname)
        if iface is None:
            raise OvsdbError(f"interface {ifname} does not exist")
        return _one(iface.ofport), _one(iface.error)

    def list_ports(self, bridge: str = "br-int") -> list[PortInfo]:
        def fn(tables: Any) -> list[PortInfo]:
            out = []
            for port in self._bridge(tables, bridge).ports:
                for iface in port.interfaces:
                    out.append(PortInfo(iface.name, _one(iface.ofport) or 0, iface.type,
                                        dict(iface.external_ids)))
            return sorted(out, key=lambda p: p.name)
        return self._read(fn, f"list ports of {bridge}")

    # -- round number ---------------------------------------------------------------------------

    def get_round(self, bridge: str = "br-int") -> int | None:
        value = self._read(lambda t: self._bridge(t, bridge).external_ids.get(ROUND_KEY),
                           f"read round of {bridge}")
        return int(value) if value is not None else None

    def set_round(self, round_: int, bridge: str = "br-int") -> None:
        self._write(f"set round of {bridge}",
                    lambda w, t: w.setkeys(self._bridge(t, bridge), "external_ids",
                                           {ROUND_KEY: str(round_)}))


__all__ = ["Ovsdb", "OvsdbError", "PortInfo", "pod_external_ids"]
