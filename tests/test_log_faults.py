"""Disk faults and power loss, injected through the Log's Disk seam (log/disk.py):
a failed fdatasync or a full disk is recovered by rewriting from memory into a fresh
segment, never by trusting the failed segment's page cache; and a simulated power
loss (files cut back to what the journal says each sync made durable) keeps every
record a sync returned for."""

from __future__ import annotations

import errno
import os

import pytest

from durakv.log import JournalingDisk, Log, LogWriteFailed, read, simulate_power_loss, verify


class FaultDisk(JournalingDisk):
    """Journals like the real thing; fails the next `fail_fdatasyncs` fdatasyncs
    (dropping the unsynced bytes, as a kernel may after a failed writeback: they read
    back as zeros) and makes the next `enospc_writes` writes stop half way."""

    def __init__(self, journal_path: str) -> None:
        super().__init__(journal_path)
        self.fail_fdatasyncs = 0
        self.enospc_writes = 0
        self.synced_size: dict[int, int] = {}

    def fdatasync(self, fd: int) -> None:
        st = os.fstat(fd)
        if self.fail_fdatasyncs:
            self.fail_fdatasyncs -= 1
            durable = self.synced_size.get(st.st_ino, 0)
            os.pwrite(fd, bytes(st.st_size - durable), durable)
            raise OSError(errno.EIO, "Input/output error (FaultDisk)")
        super().fdatasync(fd)
        self.synced_size[st.st_ino] = st.st_size

    def fsync(self, fd: int) -> None:
        st = os.fstat(fd)
        super().fsync(fd)
        self.synced_size[st.st_ino] = st.st_size

    def pwrite(self, fd: int, data, offset: int) -> int:
        if self.enospc_writes and len(data) > 1:
            self.enospc_writes -= 1
            os.pwrite(fd, data[: len(data) // 2], offset)
            raise OSError(errno.ENOSPC, "No space left on device (FaultDisk)")
        return super().pwrite(fd, data, offset)


def payloads(first: int, count: int) -> list[bytes]:
    return [b"rec-%d-" % s + b"x" * (s % 29) for s in range(first, first + count)]


def open_faulty(tmp_path, segment_size_bytes: int = 1 << 20) -> tuple[Log, FaultDisk]:
    disk = FaultDisk(str(tmp_path / "journal.jsonl"))
    return Log.open(tmp_path / "log", segment_size_bytes=segment_size_bytes, disk=disk), disk


def reopened_payloads(tmp_path) -> list[bytes]:
    """Power loss, then what a fresh open finds."""
    simulate_power_loss(str(tmp_path / "journal.jsonl"))
    assert verify(tmp_path / "log").ok
    with Log.open(tmp_path / "log") as lg:
        return [p for _, _, p in lg.read()]


def test_failed_fdatasync_is_rewritten_from_memory_into_a_fresh_segment(tmp_path):
    lg, disk = open_faulty(tmp_path)
    lease = lg.take_lease("a")
    lg.append(payloads(1, 3), 0, lease)
    assert lg.sync() == 3
    first_segment = lg.segments()[-1].path
    durable_bytes = os.path.getsize(first_segment)
    lg.append(payloads(4, 2), 3, lease)
    disk.fail_fdatasyncs = 2
    with pytest.raises(LogWriteFailed, match="Input/output error"):
        lg.sync()
    assert lg.failed and lg.durable_seq == 3
    with pytest.raises(LogWriteFailed):
        lg.sync()                               # no sync until a retry has worked
    assert lg.append(payloads(6, 1), 5, lease) == 6   # appends wait for the retry
    with pytest.raises(LogWriteFailed):
        lg.retry_failed()                       # the disk still fails: still failed
    assert lg.failed and lg.durable_seq == 3
    assert lg.retry_failed() == 5
    assert not lg.failed
    assert lg.sync() == 6
    segments = [s.path for s in lg.segments()]
    assert segments[0] == first_segment and len(segments) == 2
    assert os.path.getsize(first_segment) == durable_bytes   # cut back, not trusted
    lg.close()
    assert reopened_payloads(tmp_path) == payloads(1, 6)


def test_full_disk_write_is_retried_into_a_fresh_segment(tmp_path):
    lg, disk = open_faulty(tmp_path)
    lease = lg.take_lease("a")
    lg.append(payloads(1, 4), 0, lease)
    lg.sync()
    lg.append(payloads(5, 4), 4, lease)
    disk.enospc_writes = 2                      # the sync's write and the first retry's
    with pytest.raises(LogWriteFailed, match="No space left"):
        lg.sync()
    with pytest.raises(LogWriteFailed, match="No space left"):
        lg.retry_failed()
    assert lg.retry_failed() == 8
    lg.append(payloads(9, 1), 8, lease)
    assert lg.sync() == 9
    lg.close()
    assert reopened_payloads(tmp_path) == payloads(1, 9)


def test_failure_in_the_first_write_of_a_rolled_segment(tmp_path):
    """The failed segment holds nothing durable: it is removed and made afresh."""
    lg, disk = open_faulty(tmp_path, segment_size_bytes=200)
    lease = lg.take_lease("a")
    lg.append(payloads(1, 5), 0, lease)
    lg.sync()
    lg.append(payloads(6, 5), 5, lease)
    disk.fail_fdatasyncs = 1
    with pytest.raises(LogWriteFailed):
        lg.sync()                               # rolled to a new segment, then failed
    assert lg.retry_failed() == 10
    assert [s.path for s in lg.segments()] == sorted(p.path for p in os.scandir(tmp_path / "log")
                                                      if p.name.endswith(".seg"))
    lg.close()
    assert reopened_payloads(tmp_path) == payloads(1, 10)


def test_power_loss_keeps_every_synced_record(tmp_path):
    """Small segments (many rolls, each a new file + directory fsync) and a drop:
    after the simulated power loss every record a sync() returned for is there.
    Without the segment fdatasync, with the fdatasync before the write, or without
    the directory fsync of a new segment, records are lost here."""
    disk = JournalingDisk(str(tmp_path / "journal.jsonl"))
    lg = Log.open(tmp_path / "log", segment_size_bytes=400, disk=disk)
    lease = lg.take_lease("a")
    expected: list[bytes] = []
    for batch in range(40):
        fresh = payloads(len(expected) + 1, 1 + batch % 4)
        lg.append(fresh, len(expected), lease)
        expected += fresh
        assert lg.sync() == len(expected)
        if batch == 20:
            lg.drop_segments_through(3)
    first_seq = lg.segments()[0].first_seq
    assert lg.segment_count > 5
    lg.append([b"never-synced"], len(expected), lease)
    lg.close()
    report = simulate_power_loss(str(tmp_path / "journal.jsonl"))
    assert not report.replaced_kept
    with Log.open(tmp_path / "log") as reopened:
        assert [p for _, _, p in reopened.read()] == expected[first_seq - 1:]
    assert [p for _, _, p in read(tmp_path / "log")] == expected[first_seq - 1:]


def test_power_loss_cuts_what_was_never_synced(tmp_path):
    """The simulation itself: unsynced bytes and never-fsync'd directory entries go."""
    disk = JournalingDisk(str(tmp_path / "journal.jsonl"))
    lg = Log.open(tmp_path / "log", disk=disk)
    lease = lg.take_lease("a")
    lg.append([b"synced"], 0, lease)
    lg.sync()
    segment = lg.segments()[-1].path
    synced_bytes = os.path.getsize(segment)
    with open(segment, "ab") as f:
        f.write(b"page cache only")
    (tmp_path / "log" / "stray").write_bytes(b"never in a fsync'd directory")
    lg.close()
    report = simulate_power_loss(str(tmp_path / "journal.jsonl"))
    assert report.truncated[segment] == (synced_bytes + len(b"page cache only"), synced_bytes)
    assert str(tmp_path / "log" / "stray") in report.removed
    assert [p for _, _, p in read(tmp_path / "log")] == [b"synced"]
