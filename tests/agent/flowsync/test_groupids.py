"""Group id allocation: stable per key, lowest freed id reused, exhaustion is an error."""

from __future__ import annotations

import pytest

from agent.flowsync.groupids import GroupIdAllocator, GroupIdsExhausted


def test_ids_are_stable_and_reused_lowest_first() -> None:
    a = GroupIdAllocator()
    assert [a.allocate(g) for g in ("a", "b", "c", "a")] == [1, 2, 3, 1]
    a.release("b")
    a.release("a")
    assert a.allocate("d") == 1 and a.allocate("e") == 2 and a.allocate("f") == 4
    assert a.get("b") is None and a.items() == {"c": 3, "d": 1, "e": 2, "f": 4}
    a.release("unknown")  # no-op


def test_exhaustion() -> None:
    a = GroupIdAllocator(first=1, last=2)
    a.allocate("a")
    a.allocate("b")
    with pytest.raises(GroupIdsExhausted, match="c"):
        a.allocate("c")
