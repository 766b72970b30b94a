"""pipeline.cookies: round | feature | object layout."""

from __future__ import annotations

import pytest

from pipeline.cookies import (
    FEATURE_MASK,
    OBJECT_MASK,
    ROUND_MASK,
    Cookie,
    Feature,
    round_cookie_mask,
    round_of,
)


@pytest.mark.parametrize(
    "cookie",
    [
        Cookie(0, Feature.PIPELINE),
        Cookie(1, Feature.GROUP, 0xEF010101),
        Cookie(0xFFFF, Feature.POLICY, OBJECT_MASK),
        *(Cookie(7, c, 42) for c in Feature),
    ],
)
def test_pack_unpack_round_trip(cookie: Cookie) -> None:
    packed = cookie.pack()
    assert 0 <= packed < 1 << 64
    assert Cookie.unpack(packed) == cookie


def test_layout() -> None:
    assert Cookie(3, Feature.GROUP, 0xEF010101).pack() == 0x30400EF010101


def test_masks_are_disjoint_and_cover_64_bits() -> None:
    assert ROUND_MASK & FEATURE_MASK == 0
    assert (ROUND_MASK | FEATURE_MASK) & OBJECT_MASK == 0
    assert ROUND_MASK | FEATURE_MASK | OBJECT_MASK == (1 << 64) - 1


def test_round_mask_selects_one_round() -> None:
    value, mask = round_cookie_mask(5)
    assert Cookie(5, Feature.POD, 9).pack() & mask == value
    assert Cookie(6, Feature.POD, 9).pack() & mask != value
    assert round_of(Cookie(5, Feature.NODE, 1).pack()) == 5


@pytest.mark.parametrize(("rnd", "obj"), [(-1, 0), (1 << 16, 0), (0, -1), (0, 1 << 40)])
def test_out_of_range(rnd: int, obj: int) -> None:
    with pytest.raises(ValueError):
        Cookie(rnd, Feature.POD, obj)


def test_unknown_feature_is_refused() -> None:
    with pytest.raises(ValueError):
        Cookie.unpack(0xFF << 40)
