"""Cookie layout: round | feature | object id, with pack/unpack; the ``Feature`` enum.

The round changes each time an agent starts (it is kept in OVSDB external_ids), so a new agent
installs its flows under the new round and then deletes everything of older rounds: no gap.
The feature says who owns a flow; the object id which pod, group or node.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

ROUND_BITS = 16
FEATURE_BITS = 8
OBJECT_BITS = 40

ROUND_SHIFT = FEATURE_BITS + OBJECT_BITS
FEATURE_SHIFT = OBJECT_BITS
ROUND_MASK = ((1 << ROUND_BITS) - 1) << ROUND_SHIFT
FEATURE_MASK = ((1 << FEATURE_BITS) - 1) << FEATURE_SHIFT
OBJECT_MASK = (1 << OBJECT_BITS) - 1


class Feature(IntEnum):
    """Who owns a flow or group: one name for one idea, used everywhere it appears.

    It is the cookie's middle field, the first half of every reconciler key in the agent, and
    the route of a packet-in (a punt flow's cookie names the feature whose handler gets it).
    """

    PIPELINE = 1  # table-miss and fixed flows
    IGMP = 2  # punts of IGMP from pods, tunnel, uplink; query flood
    POD = 3  # per-pod classifier and metric flows
    GROUP = 4  # per multicast group route flows and groups
    NODE = 5  # per remote node flows (duplicate suppression of their SNATed traffic)
    EXTERNAL = 6  # default-to-external and SNAT
    POLICY = 7  # multicast NetworkPolicy rules
    OVERSIZE = 8  # multicast too big for where it goes: its drop counters and punts


@dataclass(frozen=True)
class Cookie:
    round: int
    feature: Feature
    object_id: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.round < (1 << ROUND_BITS):
            raise ValueError(f"cookie round {self.round} out of range")
        if not 0 <= self.object_id <= OBJECT_MASK:
            raise ValueError(f"cookie object id {self.object_id} out of range")

    def pack(self) -> int:
        return (
            (self.round << ROUND_SHIFT)
            | (int(self.feature) << FEATURE_SHIFT)
            | self.object_id
        )

    @classmethod
    def unpack(cls, value: int) -> Cookie:
        return cls(
            round=(value & ROUND_MASK) >> ROUND_SHIFT,
            feature=Feature((value & FEATURE_MASK) >> FEATURE_SHIFT),
            object_id=value & OBJECT_MASK,
        )


def round_of(cookie: int) -> int:
    return (cookie & ROUND_MASK) >> ROUND_SHIFT


def round_cookie_mask(round_: int) -> tuple[int, int]:
    """(cookie, mask) selecting every flow of one round, for a delete by cookie."""
    return round_ << ROUND_SHIFT, ROUND_MASK


def feature_cookie_mask(feature: Feature) -> tuple[int, int]:
    """(cookie, mask) selecting every flow of one feature, whatever its round and object."""
    return int(feature) << FEATURE_SHIFT, FEATURE_MASK


def feature_of(cookie: int) -> Feature | None:
    """The feature a cookie names (None: not one of ours)."""
    try:
        return Feature((cookie & FEATURE_MASK) >> FEATURE_SHIFT)
    except ValueError:
        return None
