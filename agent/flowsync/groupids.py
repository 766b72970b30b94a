"""OpenFlow group id allocation: ids come from an allocator, never from hashing addresses.

Freed ids are reused lowest-first so the id space stays compact across churn; ids found on the
switch at start-up can be adopted so a restarted agent keeps the groups it finds.
"""

from __future__ import annotations

import heapq

from pipeline.multicast import QUERY_GROUP_ID


class GroupIdsExhausted(RuntimeError):
    pass


class GroupIdAllocator:
    def __init__(self, first: int = 1, last: int = QUERY_GROUP_ID - 1) -> None:
        self._next = first
        self._last = last
        self._free: list[int] = []
        self._by_key: dict[str, int] = {}

    def get(self, key: str) -> int | None:
        return self._by_key.get(key)

    def allocate(self, key: str) -> int:
        """The id of ``key``, allocating one if it has none."""
        if key in self._by_key:
            return self._by_key[key]
        if self._free:
            gid = heapq.heappop(self._free)
        elif self._next <= self._last:
            gid = self._next
            self._next += 1
        else:
            raise GroupIdsExhausted(f"no group id left for {key}")
        self._by_key[key] = gid
        return gid

    def adopt(self, key: str, gid: int) -> None:
        """Keep the id a previous run gave ``key`` (found on the switch at start-up)."""
        if key in self._by_key or gid in self._by_key.values():
            raise ValueError(f"group id {gid} or key {key} already taken")
        if gid >= self._next:
            self._free.extend(range(self._next, gid))
            heapq.heapify(self._free)
            self._next = gid + 1
        else:
            self._free.remove(gid)
            heapq.heapify(self._free)
        self._by_key[key] = gid

    def release(self, key: str) -> None:
        gid = self._by_key.pop(key, None)
        if gid is not None:
            heapq.heappush(self._free, gid)

    def items(self) -> dict[str, int]:
        return dict(self._by_key)
