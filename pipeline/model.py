"""Frozen descriptions of what goes into an OpenFlow switch: matches, actions, flows, groups.

Everything here is plain data. Builders return these objects; the renderer turns them into
ovs-ofctl text, the fake table executes them, and the agent's os-ken adaptor turns them into
OpenFlow messages. Match field names are OXM names as os-ken spells them (``in_port``,
``eth_type``, ``ip_proto``, ``ipv4_dst``, ``reg0`` ...), so the adaptor needs no name table.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from pipeline.registers import RegField

# Special port numbers (OpenFlow 1.3 ofp_port_no).
OFPP_IN_PORT = 0xFFFFFFF8
OFPP_TABLE = 0xFFFFFFF9
OFPP_LOCAL = 0xFFFFFFFE
OFPP_CONTROLLER = 0xFFFFFFFD
OFPP_ANY = 0xFFFFFFFF

ETH_TYPE_IP = 0x0800
IP_PROTO_IGMP = 2
IP_PROTO_UDP = 17

# Fields a Match may carry, with the width of their value in bits ("ip" = dotted IPv4, "mac").
FIELD_KINDS: Mapping[str, str] = MappingProxyType({
    "in_port": "32",
    "eth_type": "16",
    "eth_src": "mac",
    "eth_dst": "mac",
    "ip_proto": "8",
    "ipv4_src": "ip",
    "ipv4_dst": "ip",
    "udp_dst": "16",
    "tunnel_id": "64",
    "tun_ipv4_src": "ip",
    "tun_ipv4_dst": "ip",
    **{f"reg{i}": "32" for i in range(8)},
    # Set only while OVS looks a table up again for a completed conjunction (see Conjunction).
    "conj_id": "32",
})


class MatchError(ValueError):
    """A match names an unknown field or carries a value that does not fit it."""


@dataclass(frozen=True, order=True)
class FieldMatch:
    """One match field: value and optional mask (None = exact)."""

    name: str
    value: int | str
    mask: int | str | None = None


def _normalise(name: str, value: int | str, mask: int | str | None) -> FieldMatch:
    kind = FIELD_KINDS.get(name)
    if kind is None:
        raise MatchError(f"unknown match field {name!r}")
    if kind == "ip":
        if isinstance(value, str) and "/" in value:
            net = ipaddress.IPv4Network(value, strict=True)
            if net.prefixlen == 32:
                return FieldMatch(name, str(net.network_address))
            return FieldMatch(name, str(net.network_address), str(net.netmask))
        return FieldMatch(name, str(ipaddress.IPv4Address(value)), mask)
    if kind == "mac":
        return FieldMatch(name, str(value).lower(), mask)
    if not isinstance(value, int) or value < 0 or value >= (1 << int(kind)):
        raise MatchError(f"{name}={value!r} does not fit {kind} bits")
    if mask is not None:
        if not isinstance(mask, int) or value & ~mask:
            raise MatchError(f"{name}: value {value:#x} has bits outside mask {mask!r}")
        if mask == (1 << int(kind)) - 1:
            mask = None
    return FieldMatch(name, value, mask)


@dataclass(frozen=True)
class Match:
    """A set of field matches, kept sorted so equal matches compare and hash equal."""

    fields: tuple[FieldMatch, ...] = ()

    def __hash__(self) -> int:
        # Worked out once per match: flows are looked up by (table, priority, match) all
        # through a reconcile (indexes, owners, merges), and a tuple of dataclasses would
        # hash every field again each time. Kept beside the fields: eq ignores it.
        cached: int | None = self.__dict__.get("_hash")
        if cached is None:
            cached = hash(self.fields)
            object.__setattr__(self, "_hash", cached)
        return cached

    @classmethod
    def of(cls, *regs: tuple[RegField, int], **kw: int | str) -> Match:
        """Build a match: ``Match.of((IN_CLASS, POD), in_port=3, ipv4_dst="224.0.0.0/4")``.

        Register fields are given as (RegField, value) pairs; fields sharing a register merge.
        """
        by_name: dict[str, FieldMatch] = {}
        for name, value in kw.items():
            by_name[name] = _normalise(name, value, None)
        reg_parts: dict[str, tuple[int, int]] = {}
        for reg, value in regs:
            v, m = reg.encode(value)
            old_v, old_m = reg_parts.get(reg.oxm, (0, 0))
            if old_m & m:
                raise MatchError(f"register field {reg.name} overlaps another field in this match")
            reg_parts[reg.oxm] = (old_v | v, old_m | m)
        for oxm, (v, m) in reg_parts.items():
            if oxm in by_name:
                raise MatchError(f"{oxm} given both raw and as a register field")
            by_name[oxm] = _normalise(oxm, v, m)
        return cls(tuple(sorted(by_name.values())))

    def get(self, name: str) -> FieldMatch | None:
        for f in self.fields:
            if f.name == name:
                return f
        return None

    def names(self) -> frozenset[str]:
        return frozenset(f.name for f in self.fields)


class FlowError(ValueError):
    """A flow, group or meter description is inconsistent."""


# --- actions: a closed set -------------------------------------------------------------------


@dataclass(frozen=True)
class Output:
    port: int


@dataclass(frozen=True)
class OutputReg:
    """Output to the port number held in a register field."""

    field: RegField


@dataclass(frozen=True)
class GroupAction:
    group_id: int


@dataclass(frozen=True)
class Controller:
    """Send to the controller; userdata carries the punt reason (NXT_PACKET_IN2)."""

    userdata: bytes
    max_len: int = 0xFFFF


@dataclass(frozen=True)
class SetField:
    """Rewrite a header field (eth_src, eth_dst, ipv4_src ...)."""

    name: str
    value: int | str

    def __post_init__(self) -> None:
        _normalise(self.name, self.value, None)


@dataclass(frozen=True)
class LoadReg:
    """Load a value into a named register field."""

    field: RegField
    value: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", int(self.value))  # marks are IntEnums; store plain
        self.field.encode(self.value)


@dataclass(frozen=True)
class SetTunnelDst:
    """Set the tunnel destination for a flow-based tunnel port."""

    ip: str

    def __post_init__(self) -> None:
        ipaddress.IPv4Address(self.ip)


@dataclass(frozen=True)
class Resubmit:
    """Run the named table and come back (used in group buckets)."""

    table: str


@dataclass(frozen=True)
class GotoTable:
    """Continue in a later table; must be the last action of a flow."""

    table: str


@dataclass(frozen=True)
class Ct:
    """Send through conntrack: commit in a zone, optionally source-NAT to an address."""

    zone: int
    commit: bool = True
    nat_src: str | None = None


@dataclass(frozen=True)
class Drop:
    """Explicit drop (no other action may accompany it)."""


@dataclass(frozen=True)
class ApplyMeter:
    """Pass the packet through a meter (OpenFlow 1.5 meter action): over its rate, dropped.

    OVS takes it only as the first action of a flow, and never in a group bucket.
    """

    meter_id: int


MAX_CHECKED_LENGTH = 0xFFFF


@dataclass(frozen=True)
class CheckPktLarger:
    """Set a 1-bit register field to 1 if the frame is longer than ``length`` bytes, else 0.

    OVS's ``check_pkt_larger`` (NXAST_CHECK_PKT_LARGER, OVS >= 2.12). The length counted is
    the Ethernet frame, header included, without a VLAN tag, FCS or Ethernet padding. OVS
    translates every action after it (and every table those reach) once per outcome and lets
    the datapath pick the branch per packet, so the check costs one comparison per packet; but
    it also credits the flows and groups of *both* branches with every packet. What only one
    outcome must count is counted by a meter (meter statistics are kept in the datapath).
    """

    length: int
    field: RegField

    def __post_init__(self) -> None:
        if not 0 <= self.length <= MAX_CHECKED_LENGTH:
            raise ValueError(f"check_pkt_larger({self.length}): length is 16 bits")
        if self.field.width != 1:
            raise ValueError(f"check_pkt_larger stores one bit, not {self.field.name}")


MAX_CONJUNCTION_CLAUSES = 64
"""OVS refuses a conjunction of more clauses (and of fewer than 2)."""


@dataclass(frozen=True)
class Conjunction:
    """This flow is clause ``clause`` (1-based) of ``n_clauses`` of conjunctive match
    ``conj_id`` (OVS's ``conjunction(ID,K/N)``, NXAST_CONJUNCTION).

    Such a flow does nothing itself. When, at one priority of a table, flows matching a packet
    carry every clause 1..N of an id, OVS looks the table up again with the packet's
    ``conj_id`` set to that id (conjunctive flows left out) and runs the flow it finds: the one
    matching ``conj_id=ID``, unless a plain flow that matches anyway has a higher priority. If
    no id completes, the lookup goes on at lower priorities. A flow with a conjunction may hold
    only conjunctions (OVS: "may be used along with note but not any other kind of action").
    """

    conj_id: int
    clause: int
    n_clauses: int

    def __post_init__(self) -> None:
        if not 0 <= self.conj_id < (1 << 32):
            raise FlowError(f"conjunction id {self.conj_id} is not 32 bits")
        if not 2 <= self.n_clauses <= MAX_CONJUNCTION_CLAUSES:
            raise FlowError(f"conjunction({self.conj_id}): {self.n_clauses} clauses, OVS takes "
                            f"2..{MAX_CONJUNCTION_CLAUSES}")
        if not 1 <= self.clause <= self.n_clauses:
            raise FlowError(f"conjunction({self.conj_id}): clause {self.clause} is not in "
                            f"1..{self.n_clauses}")


Action = (
    Output | OutputReg | GroupAction | Controller | SetField | LoadReg | SetTunnelDst | Resubmit
    | GotoTable | Ct | Drop | ApplyMeter | CheckPktLarger | Conjunction
)


def _check_actions(actions: tuple[Action, ...], where: str, in_flow: bool) -> None:
    """Rules OVS holds action lists to; a bucket (``in_flow`` False) takes no goto, meter or
    conjunction."""
    conjunctions = sum(isinstance(a, Conjunction) for a in actions)
    if conjunctions and not in_flow:
        raise FlowError(f"{where}: a conjunction belongs in a flow, not here")
    if conjunctions and conjunctions != len(actions):
        raise FlowError(f"{where}: conjunction cannot be combined with other actions (OVS "
                        f"refuses them)")
    for i, a in enumerate(actions):
        if isinstance(a, Drop) and len(actions) != 1:
            raise FlowError(f"{where}: drop cannot be combined with other actions")
        if isinstance(a, ApplyMeter) and (i != 0 or not in_flow):
            raise FlowError(f"{where}: a meter must be a flow's first action (OVS)")
        if isinstance(a, GotoTable):
            if not in_flow:
                raise FlowError(f"{where}: goto_table is not allowed here")
            if i != len(actions) - 1:
                raise FlowError(f"{where}: goto_table must be the last action")


@dataclass(frozen=True)
class Flow:
    """One flow entry. Its identity on the switch is (table, priority, match)."""

    table: str
    priority: int
    match: Match
    actions: tuple[Action, ...]
    cookie: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.priority <= 0xFFFF:
            raise FlowError(f"priority {self.priority} out of range")
        if not self.actions:
            raise FlowError(f"flow in {self.table} has no actions (use Drop())")
        _check_actions(self.actions, f"flow in {self.table}", in_flow=True)

    @property
    def key(self) -> tuple[str, int, Match]:
        return (self.table, self.priority, self.match)


class GroupType(StrEnum):
    ALL = "all"
    SELECT = "select"
    INDIRECT = "indirect"


@dataclass(frozen=True)
class Bucket:
    actions: tuple[Action, ...]

    def __post_init__(self) -> None:
        _check_actions(self.actions, "bucket", in_flow=False)


@dataclass(frozen=True)
class Group:
    group_id: int
    buckets: tuple[Bucket, ...]
    type: GroupType = GroupType.ALL

    def __post_init__(self) -> None:
        if not 0 < self.group_id < 0xFFFFFF00:
            raise FlowError(f"group id {self.group_id} out of range")


@dataclass(frozen=True)
class Meter:
    """A packet-rate meter (drop band), e.g. to bound packet-ins."""

    meter_id: int
    rate_pps: int
    burst: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.meter_id <= 0xFFFF0000 or self.rate_pps <= 0:
            raise FlowError(f"meter {self.meter_id}: bad id or rate")


@dataclass(frozen=True)
class SwitchState:
    """Everything one feature wants on the switch."""

    flows: tuple[Flow, ...] = ()
    groups: tuple[Group, ...] = ()
    meters: tuple[Meter, ...] = field(default=())
