"""The tail a snapshot may cover, learned from the log directory alone.

The snapshotter never talks to a shard, and a live log may end in records
written but not yet fsync'd (log.read says so). So the snapshotter makes the
records it will cover durable itself: it reads up to the last complete valid
record L, then fdatasyncs the segment holding L through a read-only descriptor
(fdatasync flushes the file's pages whoever wrote them) and fsyncs the
directory. Every record <= L was in the page cache before that fdatasync, so
it is on stable storage afterwards, and the shard's own recovery keeps every
valid record before a torn tail: L can never be lost or renumbered.
"""

from __future__ import annotations

import os

import durakv.log as wal
from durakv.log.manifest import list_segments
from durakv.log.disk import OS_DISK


def durable_tail(log_dir: str) -> int:
    """The highest seq that is in the log and durable (0 for an empty log)."""
    segments = list_segments(log_dir)
    if not segments:
        return 0
    last_first_seq = segments[-1][0]
    last = last_first_seq - 1
    for seq, _epoch, _payload in wal.read(log_dir, last_first_seq):
        last = seq
    holder = None
    for first_seq, path in list_segments(log_dir):
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
