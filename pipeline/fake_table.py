"""A pure switch simulator over our flow/group descriptions (cf. Faucet's fakeoftable).

This module owns the *packet* semantics tests rely on when they ask "where does this packet go":
priority lookup, masked and register matches, apply-actions in order, ALL groups whose buckets
each work on a copy, resubmit/goto, packet-ins, the implicit drop of output to the input port,
and per-flow / per-group packet counters. No os-ken, no I/O, no module-level mutable state.
What flow, group and meter mods do to the tables (replace, modify-strict, a group delete taking
its flows, the errors OVS answers) is ``switchmodel.SwitchModel``, which ``FakeSwitch`` extends.

Where Open vSwitch 3.1 differs from a naive reading of OpenFlow, we follow OVS (checked against
``ofproto/trace`` in tests/pipeline/test_fake_vs_ovs.py):

* A group bucket is an OpenFlow *action set*: OVS runs its set-field/load actions in order and
  then only ONE final action (group > output > resubmit > ct, the last of a kind wins); any
  other action (output_reg, controller, a second output ...) is silently dropped. A bucket not
  already in that form is refused at install time (``strict_buckets``), since it is a pipeline
  bug that the switch would hide.
* ``ct(nat)`` rewrites the datapath packet, which OVS cannot roll back when it "clones" for the
  next bucket: every copy delivered after a NAT in the same traversal carries the NATed source,
  even from another bucket. Matching is unaffected (the translated flow keeps the old source).
* Conjunctive matches resolve as OVS's classifier does (``switchmodel.classify``): the flow
  run is the ``conj_id`` flow of a completed conjunction, never a conjunctive flow, which
  therefore counts no packets.
* ``check_pkt_larger`` translates the rest of the flow's actions once per outcome and the
  datapath picks one per packet by its length: the packet goes one way, but the flows and
  groups of *both* ways are credited with it. Meters run in the datapath: only the way taken
  counts there.

On top of the model, a flow is checked against the pipeline declaration and its match
prerequisites (OVS: OFPBMC_BAD_PREREQ) as it goes in, so a pipeline bug fails at install time.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from types import MappingProxyType

from pipeline.model import (
    ETH_TYPE_IP,
    FIELD_KINDS,
    IP_PROTO_UDP,
    OFPP_CONTROLLER,
    OFPP_IN_PORT,
    Action,
    ApplyMeter,
    Bucket,
    CheckPktLarger,
    Controller,
    Ct,
    Drop,
    Flow,
    GotoTable,
    Group,
    GroupAction,
    LoadReg,
    Match,
    Meter,
    Output,
    OutputReg,
    Resubmit,
    SetField,
    SetTunnelDst,
)
from pipeline.switchmodel import (
    AmbiguousMatch as AmbiguousMatch,  # the fake table's error, raised by classify
)
from pipeline.switchmodel import FlowKey, SwitchError, SwitchModel, classify, describe
from pipeline.tables import Pipeline
from pipeline.walkrecord import (  # the fake table's packets and traces, named from here too
    DEFAULT_FRAME_LEN as DEFAULT_FRAME_LEN,
)
from pipeline.walkrecord import Delivery as Delivery
from pipeline.walkrecord import Outcome as Outcome
from pipeline.walkrecord import Packet as Packet
from pipeline.walkrecord import Punt as Punt
from pipeline.walkrecord import Step as Step
from pipeline.walkrecord import Trace as Trace
from pipeline.walkrecord import multicast_mac as multicast_mac

MAX_DEPTH = 64
"""Nested table/group invocations before translation aborts (OVS's MAX_DEPTH)."""

_SET_ACTIONS = (SetField, LoadReg, SetTunnelDst)
# Final actions of an action set, lowest precedence first (OVS ACTION_SET_FINAL_PRIORITY).
_FINAL_ACTIONS: tuple[type, ...] = (Ct, Resubmit, Output, GroupAction)
_NEEDS_IP = frozenset({"ip_proto", "ipv4_src", "ipv4_dst", "udp_dst"})
_PACKET_ATTRS = MappingProxyType({"tun_ipv4_src": "tun_src", "tun_ipv4_dst": "tun_dst"})


FakeTableError = SwitchError
"""The fake table's name for what the switch would refuse or a pipeline bug it detects."""


@dataclass(frozen=True)
class _State:
    """The translated packet: headers and metadata as later matches see them, plus registers."""

    packet: Packet
    regs: tuple[int, ...] = (0,) * 8
    conj_id: int = 0  # only while a table is looked up again for a completed conjunction


class _TooDeep(Exception):
    """Internal: translation went past MAX_DEPTH (caught in ``process``)."""


def _as_int(name: str, value: int | str) -> int:
    kind = FIELD_KINDS[name]
    if kind == "ip":
        return int(ipaddress.IPv4Address(value))
    return int(str(value).replace(":", ""), 16) if kind == "mac" else int(value)


def _field_value(state: _State, name: str) -> int | None:
    """Value of match field ``name`` for this packet; None when the packet lacks the field."""
    if name.startswith("reg"):
        return state.regs[int(name[3:])]
    if name == "conj_id":
        return state.conj_id
    p = state.packet
    if name == "eth_type":
        return ETH_TYPE_IP
    if name == "udp_dst":
        return (p.udp_dst or 0) if p.ip_proto == IP_PROTO_UDP else None
    value = getattr(p, _PACKET_ATTRS.get(name, name))
    return 0 if value is None else _as_int(name, value)  # no tunnel metadata reads as 0


def _matches(match: Match, state: _State) -> bool:
    for fm in match.fields:
        have = _field_value(state, fm.name)
        if have is None:
            return False
        want = _as_int(fm.name, fm.value)
        if fm.mask is not None:
            mask = _as_int(fm.name, fm.mask)
            if have & mask != want & mask:
                return False
        elif have != want:
            return False
    return True


def _check_prerequisites(flow: Flow) -> None:
    """OpenFlow refuses L3/L4 matches without their prerequisites (OFPBMC_BAD_PREREQ)."""
    names = flow.match.names()
    eth = flow.match.get("eth_type")
    if names & _NEEDS_IP and (eth is None or eth.value != ETH_TYPE_IP):
        raise FakeTableError(f"{describe(flow.key)}: IPv4 fields need eth_type=0x0800",
                             "OFPBMC_BAD_PREREQ")
    proto = flow.match.get("ip_proto")
    if "udp_dst" in names and (proto is None or proto.value != IP_PROTO_UDP):
        raise FakeTableError(f"{describe(flow.key)}: udp_dst needs ip_proto=17",
                             "OFPBMC_BAD_PREREQ")


def effective_bucket_actions(bucket: Bucket) -> tuple[Action, ...]:
    """What OVS executes for a bucket: its set actions in order, then the one final action."""
    sets = tuple(a for a in bucket.actions if isinstance(a, _SET_ACTIONS))
    final: Action | None = None
    rank = -1
    for a in bucket.actions:
        for r, kind in enumerate(_FINAL_ACTIONS):
            if isinstance(a, kind) and r >= rank:
                final, rank = a, r
    return sets + (final,) if final is not None else ()


class FakeSwitch(SwitchModel):
    """One bridge's flow tables and groups; ``process`` walks a packet through them."""

    def __init__(self, pipeline: Pipeline, flows: Iterable[Flow] = (),
                 groups: Iterable[Group] = (), *, meters: Iterable[Meter] = (),
                 tunnel_ports: Collection[int] = (),
                 ports: Collection[int] | None = None, strict_buckets: bool = True) -> None:
        """``tunnel_ports`` send to tun_dst; with ``ports``, outputs elsewhere are dropped."""
        super().__init__(tables=pipeline.names)
        self.pipeline = pipeline
        self.tunnel_ports = frozenset(tunnel_ports)
        self.ports = frozenset(ports) if ports is not None else None
        self.strict_buckets = strict_buckets
        # Counters of installed flows, groups and meters; absent means 0 (see _forget_*).
        self._flow_packets: dict[FlowKey, int] = {}
        self._group_packets: dict[int, int] = {}
        self._meter_packets: dict[int, int] = {}
        # Groups and meters first: flows may only name existing ones, as on a real switch.
        for m in meters:
            self.add_meter(m)
        for g in groups:
            self.add_group(g)
        for f in flows:
            self.add_flow(f)

    # -- what the model asks of a switch that checks more and counts packets --------------------

    def _vet_flow(self, flow: Flow) -> None:
        self.pipeline.check_flow(flow)
        _check_prerequisites(flow)

    def _vet_buckets(self, group_id: int, buckets: tuple[Bucket, ...]) -> None:
        for bucket in buckets:
            for a in bucket.actions:
                if isinstance(a, GotoTable | Resubmit):
                    self.pipeline.spec(a.table)
            if self.strict_buckets and effective_bucket_actions(bucket) != bucket.actions:
                raise FakeTableError(f"group {group_id}: bucket {bucket.actions} is an action "
                                     f"set; OVS would run {effective_bucket_actions(bucket)}")

    def _forget_flow(self, key: FlowKey) -> None:
        self._flow_packets.pop(key, None)  # a flow added again starts from 0, as on OVS

    def _forget_group(self, group_id: int) -> None:
        self._group_packets.pop(group_id, None)

    def _forget_meter(self, meter_id: int) -> None:
        self._meter_packets.pop(meter_id, None)

    # -- inspection ---------------------------------------------------------------------------

    def n_packets(self, flow: Flow | FlowKey) -> int:
        """Packets that hit ``flow`` (a copy through a group counts once per copy)."""
        table, priority, match = flow.key if isinstance(flow, Flow) else flow
        if (priority, match) not in self.table(table):
            raise KeyError(f"no flow {describe((table, priority, match))}")
        return self._flow_packets.get((table, priority, match), 0)

    def group_n_packets(self, group_id: int) -> int:
        if self.group(group_id) is None:
            raise KeyError(f"no group {group_id}")
        return self._group_packets.get(group_id, 0)

    def meter_n_packets(self, meter_id: int) -> int:
        """Packets that reached the meter (rates are not simulated: none is dropped)."""
        if meter_id not in self.meters():
            raise KeyError(f"no meter {meter_id}")
        return self._meter_packets.get(meter_id, 0)

    def reset_counters(self) -> None:
        self._flow_packets.clear()
        self._group_packets.clear()
        self._meter_packets.clear()

    # -- packet processing --------------------------------------------------------------------

    def process(self, packet: Packet) -> Trace:
        """Walk ``packet`` from the first table; a packet-out uses ``in_port=OFPP_CONTROLLER``."""
        walk = _Walk(self, Trace(packet))
        try:
            walk.table(self.pipeline.names[0], _State(packet), 0)
        except _TooDeep:
            # OVS abandons the whole translation: nothing is sent at all.
            walk.trace.deliveries.clear()
            walk.trace.packet_ins.clear()
            walk.trace.drops.append(f"translation deeper than {MAX_DEPTH}")
        return walk.trace

    def _lookup(self, table: str, state: _State) -> Flow | None:
        """The flow OVS runs for this packet in ``table`` (conjunctions resolved), or None."""
        return classify(table, self.table(table).values(), lambda f, conj_id: _matches(
            f.match, state if conj_id == state.conj_id else
            dataclasses.replace(state, conj_id=conj_id)), str(state.packet))


class _Walk:
    """One packet's translation: the trace being built and the datapath-level NAT.

    A ``shadow`` walk translates the outcome of a ``check_pkt_larger`` the packet does not
    take: it credits flows and groups, as OVS does, and nothing else reaches the trace.
    """

    def __init__(self, switch: FakeSwitch, trace: Trace, shadow: bool = False) -> None:
        self.sw = switch
        self.trace = trace
        self.shadow = shadow
        self.nat_src: str | None = None  # applies to the datapath packet, never rolled back

    def table(self, name: str, state: _State, depth: int) -> _State:
        if depth > MAX_DEPTH:
            raise _TooDeep
        self.trace.tables.append(name)
        flow = self.sw._lookup(name, state)
        self.trace.steps.append(Step(depth, name, flow))
        if flow is None:
            self.trace.drops.append(f"miss in {name}")
            return state
        self.sw._flow_packets[flow.key] = self.sw._flow_packets.get(flow.key, 0) + 1
        self.trace.flows.append(flow.key)
        return self.actions(flow.actions, state, name, depth)

    def actions(self, actions: Iterable[Action], state: _State, table: str,
                depth: int) -> _State:
        actions = tuple(actions)
        for i, a in enumerate(actions):
            if isinstance(a, CheckPktLarger):
                return self.check_larger(a, actions[i + 1:], state, table, depth)
            if isinstance(a, GotoTable | Resubmit):
                # Both continue with (and keep) whatever the other table changed.
                state = self.table(a.table, state, depth + 1)
            elif isinstance(a, GroupAction):
                self.group(a.group_id, state, table, depth + 1)
            elif isinstance(a, Output):
                self.output(a.port, state, table)
            elif isinstance(a, OutputReg):
                self.output(a.field.decode(state.regs[a.field.reg]), state, table)
            elif isinstance(a, Controller):
                self.trace.packet_ins.append(Punt(a.userdata, table, self._as_sent(state)))
            elif isinstance(a, Ct):
                if a.nat_src is not None:
                    self.nat_src = a.nat_src
                    self.trace.nat.append(a.nat_src)
            elif isinstance(a, Drop):
                self.trace.drops.append(f"drop by flow in {table}")
            elif isinstance(a, ApplyMeter):
                self.trace.meters.append(a.meter_id)  # rates are not simulated: it passes
                if not self.shadow:
                    meters = self.sw._meter_packets
                    meters[a.meter_id] = meters.get(a.meter_id, 0) + 1
            else:
                state = _apply_set(state, a)
        return state

    def check_larger(self, check: CheckPktLarger, rest: tuple[Action, ...], state: _State,
                     table: str, depth: int) -> _State:
        """Both outcomes are translated (and credited); the packet takes the one its length
        gives. Nothing follows: the branches hold the rest of the flow's actions."""
        larger = int(state.packet.length > check.length)
        other = _Walk(self.sw, Trace(state.packet), shadow=True)
        other.nat_src = self.nat_src
        other.actions(rest, _apply_set(state, LoadReg(check.field, 1 - larger)), table, depth)
        return self.actions(rest, _apply_set(state, LoadReg(check.field, larger)), table, depth)

    def group(self, group_id: int, state: _State, table: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise _TooDeep
        group = self.sw.group(group_id)
        if group is None:  # only a bucket can still name a deleted group
            raise FakeTableError(f"a bucket outputs to deleted group {group_id}")
        self.sw._group_packets[group_id] = self.sw._group_packets.get(group_id, 0) + 1
        self.trace.steps.append(Step(depth, table, group_id=group_id))
        if not group.buckets:
            self.trace.drops.append(f"group {group_id} has no buckets")
        for i, bucket in enumerate(group.buckets):
            self.trace.steps.append(Step(depth, table, group_id=group_id, bucket=i))
            # Each bucket starts from the state at the group action (a copy), as OVS does.
            self.actions(effective_bucket_actions(bucket), state, table, depth)

    def _as_sent(self, state: _State) -> Packet:
        p = state.packet
        return p if self.nat_src is None else p.replace(ipv4_src=self.nat_src)

    def output(self, port: int, state: _State, table: str) -> None:
        in_port = state.packet.in_port
        if port == OFPP_IN_PORT:
            port = in_port
        elif port == in_port:
            self.trace.suppressed.append(Delivery(port, self._as_sent(state)))
            return
        if port == OFPP_CONTROLLER:
            self.trace.packet_ins.append(Punt(b"", table, self._as_sent(state)))
            return
        if self.sw.ports is not None and port not in self.sw.ports:
            self.trace.drops.append(f"output to missing port {port}")
            return
        sent = self._as_sent(state).replace(tun_src=None)
        if port not in self.sw.tunnel_ports:  # tunnel metadata does not leave on a plain port
            self.trace.deliveries.append(Delivery(port, sent.replace(tun_dst=None, tunnel_id=None)))
        elif sent.tun_dst is None:
            self.trace.drops.append(f"tunnel output to {port} without tun_dst")
        else:
            self.trace.deliveries.append(Delivery(port, sent, sent.tun_dst))


def _apply_set(state: _State, action: Action) -> _State:
    if isinstance(action, LoadReg):
        f = action.field
        v, m = f.encode(action.value)
        regs = list(state.regs)
        regs[f.reg] = (regs[f.reg] & ~m) | v
        return dataclasses.replace(state, regs=tuple(regs))
    if isinstance(action, SetTunnelDst):
        return dataclasses.replace(state, packet=state.packet.replace(tun_dst=action.ip))
    if isinstance(action, SetField):
        name, value = action.name, action.value
        if name.startswith("reg"):
            regs = list(state.regs)
            regs[int(name[3:])] = int(value)
            return dataclasses.replace(state, regs=tuple(regs))
        attr = _PACKET_ATTRS.get(name, name)
        if attr == "eth_type":
            raise FakeTableError("eth_type cannot be set")
        return dataclasses.replace(state, packet=state.packet.replace(**{attr: value}))
    raise FakeTableError(f"unsupported action {action!r}")

