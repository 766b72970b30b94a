"""Bucket ids of OpenFlow 1.5 groups, and the group sizes OVS can still report.

OpenFlow 1.5 buckets carry ids, and INSERT_BUCKETS needs fresh ones. ADD/MODIFY number a
group's buckets 0..n-1; each INSERT_BUCKETS continues after the last id. The switch adaptor
keeps ``group id -> next bucket id`` (updated only when a bundle commits, and refreshed from
the group counters on every dump).
"""

from __future__ import annotations

from pipeline.ops import Command, GroupOp

DESC_SAFE_BUCKETS = 400
"""Groups up to this size are read back bucket by bucket (their description fits 64 KiB)."""
MAX_GROUP_BUCKETS = 4000
"""OVS reports a group's counters in one entry of 40 + 16 bytes per bucket, which must fit in
64 KiB; a bigger group could not even be counted without breaking the channel's framing."""


class BucketIdError(ValueError):
    """An INSERT_BUCKETS for a group whose bucket ids are unknown or would overflow."""


def next_bucket_id(op: GroupOp, buckets: dict[int, int]) -> int:
    """First bucket id for ``op``; updates ``buckets`` (group id -> next id) as if applied."""
    gid, n = op.group.group_id, len(op.group.buckets)
    if op.command is Command.DELETE:
        buckets.pop(gid, None)
        return 0
    first = 0
    if op.command is Command.INSERT_BUCKETS:
        if gid not in buckets:
            raise BucketIdError(f"group {gid:#x} is not known to exist (ADD it first)")
        first = buckets[gid]
    if first + n > MAX_GROUP_BUCKETS:
        raise BucketIdError(f"group {gid:#x} would have {first + n} buckets "
                            f"(at most {MAX_GROUP_BUCKETS})")
    buckets[gid] = first + n
    return first
