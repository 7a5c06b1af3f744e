"""The tail a snapshot (or an archive piece) may cover, learned from the log
directory alone: the snapshotter never talks to a shard.

While a writer of this boot holds the log, that tail is the durable seq the holder
published in LEASE after its last fsync (log/lease.py), as a replica's follower
sees it: the segment may already hold records written but not yet fsync'd, or a
deposed writer's bytes during the few milliseconds of a fence (log/FORMAT.md,
"Leases and fencing"), and neither may reach a snapshot.

When no holder of this boot published anything (LEASE missing or from before a
reboot: every writer of that boot is gone), the snapshotter makes the records it
will cover durable itself: it reads up to the last complete valid record L (fences
as the log's own walk honours them), fdatasyncs the
segment holding L through a read-only descriptor (fdatasync flushes the file's
pages whoever wrote them) and fsyncs the directory. Every record <= L was in the
page cache before that fdatasync, so it is on stable storage afterwards, and the
shard's own recovery keeps every valid record before a torn tail: L can never be
lost or renumbered.
"""

from __future__ import annotations

import os
import durakv.log as wal
from durakv.log.disk import OS_DISK
from durakv.log.lease import published_durable_seq
from durakv.log.manifest import list_segments


def tail_limit(log_dir: str) -> int | None:
    """The last seq a reader of the live log may take: the durable seq the holder
    published, or None (no holder of this boot: read to the last valid record and
    make it durable)."""
    return published_durable_seq(log_dir)


def durable_tail(log_dir: str) -> int:
    """The highest seq that is in the log and durable (0 for an empty log)."""
    segments = list_segments(log_dir)
    if not segments:
        return 0
    limit = tail_limit(log_dir)
    start = segments[-1][0]
    if limit is not None and limit < start - 1:
        start = max([first for first, _ in segments if first <= limit] or [segments[0][0]])
    last = start - 1
    for seq, _epoch, _payload in wal.read(log_dir, start, through_seq=limit):
        last = seq
    if limit is not None:
        return last
    holder = None
    for first_seq, path in segments:
        if first_seq <= last:
            holder = path
    if holder is not None:
        fd = os.open(holder, os.O_RDONLY)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)
        OS_DISK.fsync_dir(log_dir)
    return last


def log_first_seq(log_dir: str) -> int:
    """The first seq still retained in the log directory."""
    segments = list_segments(log_dir)
    return segments[0][0] if segments else 1
