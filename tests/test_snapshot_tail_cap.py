"""The snapshotter reads a live shard log only up to the durable seq the holder
published in LEASE (snapshotter/logtail.py), as a replica's follower does: records a
writer wrote but never made durable, and a deposed writer's bytes written while a new
holder fences the log (log/FORMAT.md, "Leases and fencing"), reach neither a snapshot
nor the log archive."""

from __future__ import annotations

import errno
import os
import time

import pytest

from durakv.log import Disk, LeaseLost, Log, LogWriteFailed
from durakv.log.layout import log_dir_of, shard_dir
from durakv.log.follow import Follower
from durakv.log.lease import LeaseFile
from durakv.shards.records import encode_record
from durakv.snapshotter.build import build_snapshot
from durakv.snapshotter.filestore import open_store
from durakv.snapshotter.logtail import durable_tail
from durakv.snapshotter.tailship import TailArchiver


class WriteButNoSyncDisk(Disk):
    """Once armed, a sync's bytes reach the segment (the page cache) and the
    fdatasync fails: the records are in the file, never durable, never published."""

    armed = False

    def fdatasync(self, fd: int) -> None:
        if self.armed:
            raise OSError(errno.EIO, "Input/output error (WriteButNoSyncDisk)")
        super().fdatasync(fd)


def _set(n: int) -> bytes:
    return encode_record(time.time_ns() // 1_000_000, [[b"SET", f"k{n}".encode(), f"v{n}".encode()]])


def _write(log: Log, lease, first: int, count: int) -> None:
    log.append([_set(n) for n in range(first, first + count)], log.tail_seq, lease)
    log.sync()


def _archived_seq(data_dir: str, tmp_path) -> int:
    seen: list[int] = []
    archiver = TailArchiver(data_dir, 1, open_store(f"file://{tmp_path / 'store'}"),
                            on_progress=lambda _shard, seq, _at, error: seen.append(seq))
    archiver.ship(0)
    return seen[-1]


def _assert_only_durable_records_read(data_dir: str, tmp_path) -> None:
    sdir = shard_dir(data_dir, 0)
    assert durable_tail(log_dir_of(sdir)) == 3
    built = build_snapshot(sdir, 0, 1)
    assert built is not None
    assert built.snapshot.manifest.seq == 3 and built.snapshot.manifest.keys == 3
    assert _archived_seq(data_dir, tmp_path) == 3


def test_a_snapshot_never_covers_records_written_but_not_durable(tmp_path):
    data_dir = str(tmp_path / "data")
    disk = WriteButNoSyncDisk()
    log = Log.open(log_dir_of(shard_dir(data_dir, 0)), holder="shard 0", disk=disk)
    try:
        lease = log.take_lease("shard 0")
        _write(log, lease, 1, 3)
        disk.armed = True
        with pytest.raises(LogWriteFailed):
            _write(log, lease, 4, 2)
        assert log.durable_seq == 3 and log.tail_seq == 5
        _assert_only_durable_records_read(data_dir, tmp_path)
    finally:
        log.close()


def test_a_snapshot_never_covers_a_deposed_writers_bytes_during_a_fence(tmp_path):
    data_dir = str(tmp_path / "data")
    log_dir = log_dir_of(shard_dir(data_dir, 0))
    log = Log.open(log_dir, holder="shard 0")
    try:
        lease = log.take_lease("shard 0")
        _write(log, lease, 1, 3)
        # A new holder's first fencing step (the LEASE epoch moves on); its fence
        # segment does not exist yet, so the deposed writer's next bytes lie in the
        # segment every reader of the log reads.
        lease_file = LeaseFile(log_dir)
        try:
            with lease_file.locked():
                lease_file.set_holder(lease_file.epoch + 1, os.getpid(), time.monotonic_ns() + 10**9)
        finally:
            lease_file.close()
        with pytest.raises(LeaseLost):
            _write(log, lease, 4, 2)
        assert log.durable_seq == 3
        _assert_only_durable_records_read(data_dir, tmp_path)
    finally:
        log.close()


def test_records_rewritten_by_a_retry_are_published_to_readers(tmp_path):
    """retry_failed() makes the failed write durable: followers and the snapshotter
    must see it without waiting for another write."""
    data_dir = str(tmp_path / "data")
    log_dir = log_dir_of(shard_dir(data_dir, 0))
    disk = WriteButNoSyncDisk()
    log = Log.open(log_dir, holder="shard 0", disk=disk)
    try:
        lease = log.take_lease("shard 0")
        _write(log, lease, 1, 3)
        disk.armed = True
        with pytest.raises(LogWriteFailed):
            _write(log, lease, 4, 2)
        disk.armed = False
        assert log.retry_failed() == 5
        follower = Follower(log_dir)
        try:
            assert follower.durable_seq() == 5
        finally:
            follower.close()
        assert durable_tail(log_dir) == 5
    finally:
        log.close()
