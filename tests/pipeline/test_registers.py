"""pipeline.registers: named register fields."""

from __future__ import annotations

import pytest

from pipeline.registers import (
    IN_CLASS,
    OUT_KIND,
    OUT_PORT,
    REG_FIELDS,
    OutKind,
    RegField,
    declare,
)


def test_encode_shifts_into_place() -> None:
    assert IN_CLASS.encode(3) == (0x3, 0xF)
    assert OUT_KIND.encode(OutKind.EXTERNAL) == (0x30, 0xF0)
    assert OUT_PORT.encode(0xFFFFFFFF) == (0xFFFFFFFF, 0xFFFFFFFF)


def test_decode_is_the_inverse_of_encode() -> None:
    reg0 = IN_CLASS.encode(2)[0] | OUT_KIND.encode(3)[0] | 0xF00
    assert IN_CLASS.decode(reg0) == 2
    assert OUT_KIND.decode(reg0) == 3


def test_width_mask_oxm() -> None:
    assert (OUT_KIND.width, OUT_KIND.mask, OUT_KIND.oxm) == (4, 0xF0, "reg0")
    assert OUT_PORT.oxm == "reg1"


@pytest.mark.parametrize(
    ("field", "text"),
    [
        (IN_CLASS, "NXM_NX_REG0[0..3]"),
        (OUT_KIND, "NXM_NX_REG0[4..7]"),
        (OUT_PORT, "NXM_NX_REG1[]"),
        (RegField("bit", 2, 5, 5), "NXM_NX_REG2[5]"),  # as OVS prints a single bit
    ],
)
def test_nxm_notation(field: RegField, text: str) -> None:
    assert field.nxm == text


def test_value_must_fit() -> None:
    with pytest.raises(ValueError):
        IN_CLASS.encode(16)
    with pytest.raises(ValueError):
        IN_CLASS.encode(-1)


@pytest.mark.parametrize(("reg", "start", "end"), [(8, 0, 1), (0, 4, 3), (0, 0, 32), (-1, 0, 0)])
def test_bad_declarations(reg: int, start: int, end: int) -> None:
    with pytest.raises(ValueError):
        RegField("x", reg, start, end)


def test_declare_refuses_overlap() -> None:
    with pytest.raises(ValueError, match="overlap"):
        declare(IN_CLASS, RegField("other", 0, 3, 5))
    assert declare(IN_CLASS, RegField("other", 1, 0, 3))  # another register: fine


def test_declared_fields_are_disjoint() -> None:
    assert declare(*REG_FIELDS) == REG_FIELDS
