"""Register fields and marks of the multicast pipeline, declared once by name.

Builders refer to ``IN_CLASS``/``OUT_KIND``/``OUT_PORT``/``OVERSIZE`` and the marks below,
never to bare register numbers or bit offsets. ``declare`` refuses overlapping fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


@dataclass(frozen=True, order=True)
class RegField:
    """Bits [start..end] (inclusive) of NXM register ``reg``."""

    name: str
    reg: int
    start: int
    end: int

    def __post_init__(self) -> None:
        if not (0 <= self.reg < 8 and 0 <= self.start <= self.end < 32):
            raise ValueError(f"register field {self.name}: bad reg/bits")

    @property
    def width(self) -> int:
        return self.end - self.start + 1

    @property
    def oxm(self) -> str:
        return f"reg{self.reg}"

    @property
    def mask(self) -> int:
        return ((1 << self.width) - 1) << self.start

    def encode(self, value: int) -> tuple[int, int]:
        """(shifted value, mask) for matching or loading ``value`` into this field."""
        if not 0 <= value < (1 << self.width):
            raise ValueError(f"{value} does not fit register field {self.name} ({self.width} bits)")
        return value << self.start, self.mask

    def decode(self, reg_value: int) -> int:
        return (reg_value & self.mask) >> self.start

    @property
    def nxm(self) -> str:
        """ovs-ofctl's subfield notation, e.g. ``NXM_NX_REG0[0..3]`` (``[]`` for the whole)."""
        if self.start == 0 and self.end == 31:
            return f"NXM_NX_REG{self.reg}[]"
        if self.start == self.end:  # OVS prints a single bit as [n], not [n..n]
            return f"NXM_NX_REG{self.reg}[{self.start}]"
        return f"NXM_NX_REG{self.reg}[{self.start}..{self.end}]"


def declare(*fields: RegField) -> tuple[RegField, ...]:
    """Check that no two fields share bits; return them."""
    for i, a in enumerate(fields):
        for b in fields[i + 1 :]:
            if a.reg == b.reg and a.mask & b.mask:
                raise ValueError(f"register fields {a.name} and {b.name} overlap")
    return fields


IN_CLASS = RegField("InClass", 0, 0, 3)
"""Where the packet entered the bridge (a PortClass)."""
OUT_KIND = RegField("OutKind", 0, 4, 7)
"""Which kind of copy a group bucket is making (an OutKind)."""
OUT_PORT = RegField("OutPort", 1, 0, 31)
"""Local pod port a copy is for."""
OVERSIZE = RegField("Oversize", 0, 8, 8)
"""1: the frame is longer than its source may send (pods) or pods may receive (tunnel, uplink);
set once per packet by the classifier's fork (``check_pkt_larger``)."""

REG_FIELDS = declare(IN_CLASS, OUT_KIND, OUT_PORT, OVERSIZE)


class PortClass(IntEnum):
    """Values of IN_CLASS."""

    POD = 1
    TUNNEL = 2
    UPLINK = 3


class OutKind(IntEnum):
    """Values of OUT_KIND."""

    LOCAL = 1
    REMOTE = 2
    EXTERNAL = 3
