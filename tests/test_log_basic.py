"""The log's writer API on real files: round trips across segment rolls, leases,
sequence checks, the directory lock, segment dropping, limits. Failures and
power loss: test_log_faults.py."""

from __future__ import annotations

import json
import mmap
import os
import subprocess
import sys
import threading

import pytest

import durakv.log.writer
from durakv.log import (HEADER_BYTES, Disk, LeaseLost, Log, LogClosed, LogCorrupt, LogLocked,
                 PendingFull, RecordsDropped, RecordTooLarge, SequenceMismatch, dump, read,
                 verify)


def payload(seq: int) -> bytes:
    return b"record-%d-" % seq + bytes([seq % 251]) * (seq % 37)


def fill(lg: Log, lease, batches: int, batch_size: int) -> None:
    for _ in range(batches):
        first = lg.tail_seq + 1
        lg.append([payload(s) for s in range(first, first + batch_size)], lg.tail_seq, lease)
        lg.sync()


def test_round_trip_across_segment_rolls(tmp_path):
    path = tmp_path / "log"
    with Log.open(path, segment_size_bytes=600) as lg:
        assert (lg.tail_seq, lg.durable_seq) == (0, 0)
        lease = lg.take_lease("shard-0")
        fill(lg, lease, batches=40, batch_size=3)
        assert lg.tail_seq == lg.durable_seq == 120
        assert lg.fsync_count == 40
        assert lg.pending_records == 0
        segs = lg.segments()
        assert len(segs) > 5
        assert [s.sealed for s in segs] == [True] * (len(segs) - 1) + [False]
        assert segs[0].first_seq == 1
        assert all(os.path.getsize(s.path) <= 600 for s in segs)
        assert lg.bytes_written == lg.size_bytes == sum(os.path.getsize(s.path) for s in segs)
    with Log.open(path, segment_size_bytes=600) as lg:
        assert lg.tail_seq == lg.durable_seq == 120
        assert lg.recovery.truncated_bytes == 0
        assert lg.recovery.records == 120
        assert [(s, e, p) for s, e, p in lg.read()] == [(s, 1, payload(s)) for s in range(1, 121)]
        assert [s for s, _, _ in lg.read(57)] == list(range(57, 121))
        lease = lg.take_lease("shard-0")
        lg.append([b"more"], 120, lease)
        lg.sync()
    records = list(read(path))
    assert records[-1] == (121, 2, b"more")
    assert [s for s, _, _ in records] == list(range(1, 122))


def test_append_is_pending_until_sync(tmp_path):
    with Log.open(tmp_path / "log") as lg:
        lease = lg.take_lease("a")
        assert lg.append([b"a", b"b"], 0, lease) == 2
        assert lg.append([], 2, lease) == 2
        assert (lg.tail_seq, lg.durable_seq, lg.pending_records) == (2, 0, 2)
        assert lg.bytes_written == 0
        assert list(lg.read()) == []
        assert lg.sync() == 2
        assert lg.sync() == 2
        assert lg.fsync_count == 1
        assert lg.bytes_written == 2 * HEADER_BYTES + 2
        assert list(lg.read()) == [(1, 1, b"a"), (2, 1, b"b")]


def test_sequence_mismatch(tmp_path):
    with Log.open(tmp_path / "log") as lg:
        lease = lg.take_lease("a")
        lg.append([b"x"], 0, lease)
        for wrong in (0, 2, -1):
            with pytest.raises(SequenceMismatch) as info:
                lg.append([b"y"], wrong, lease)
            assert (info.value.after_seq, info.value.tail_seq) == (wrong, 1)
        assert lg.tail_seq == 1
        lg.sync()
    with Log.open(tmp_path / "log") as lg:
        with pytest.raises(SequenceMismatch):
            lg.append([b"y"], 0, lg.take_lease("b"))


def test_lease_lost_after_newer_lease(tmp_path):
    with Log.open(tmp_path / "log") as lg:
        old = lg.take_lease("old")
        lg.append([b"1"], 0, old)
        new = lg.take_lease("new")
        assert new.epoch == old.epoch + 1
        with pytest.raises(LeaseLost, match="not current"):
            lg.append([b"2"], 1, old)
        lg.append([b"2"], 1, new)
        lg.sync()
        assert [(s, e) for s, e, _ in lg.read()] == [(1, old.epoch), (2, new.epoch)]
        with Log.open(tmp_path / "other") as other:
            with pytest.raises(LeaseLost):
                lg.append([b"3"], 2, other.take_lease("x"))
    with open(tmp_path / "log" / "MANIFEST.json") as f:
        assert json.load(f)["epoch"] == new.epoch
    with Log.open(tmp_path / "log") as lg:
        assert lg.epoch == new.epoch
        with pytest.raises(LeaseLost):
            lg.append([b"3"], 2, new)          # leases do not survive the Log object
        assert lg.take_lease("again").epoch == new.epoch + 1


LOCK_PROBE = """
import sys
from durakv.log import Log, LogLocked
try:
    Log.open(sys.argv[1]).close()
except LogLocked as exc:
    print("LOCKED", exc)
    sys.exit(3)
print("OPENED")
"""


def test_second_opener_gets_log_locked(tmp_path):
    path = str(tmp_path / "log")
    probe = [sys.executable, "-c", LOCK_PROBE, path]
    with Log.open(path):
        result = subprocess.run(probe, capture_output=True, text=True, timeout=60)
        assert result.returncode == 3, result.stderr
        assert path in result.stdout and f"pid {os.getpid()}" in result.stdout
        with pytest.raises(LogLocked, match="locked"):
            Log.open(path)                      # a second Log in the same process too
    result = subprocess.run(probe, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "OPENED" in result.stdout, result.stderr


def test_concurrent_sync_is_refused_and_appends_overlap_an_fsync(tmp_path):
    entered, release = threading.Event(), threading.Event()

    class SlowDisk(Disk):
        def fdatasync(self, fd):
            entered.set()
            assert release.wait(30)
            super().fdatasync(fd)

    lg = Log.open(tmp_path / "log", disk=SlowDisk())
    lease = lg.take_lease("a")
    lg.append([b"1", b"2"], 0, lease)
    results = []
    worker = threading.Thread(target=lambda: results.append(lg.sync()))
    worker.start()
    assert entered.wait(30)
    with pytest.raises(RuntimeError, match="another sync"):
        lg.sync()
    assert lg.append([b"3"], 2, lease) == 3        # appends while the fsync is in flight
    assert (lg.durable_seq, lg.pending_records) == (0, 3)
    release.set()
    worker.join()
    assert results == [2] and lg.durable_seq == 2
    assert lg.sync() == 3
    lg.close()
    assert [p for _, _, p in read(tmp_path / "log")] == [b"1", b"2", b"3"]


def test_drop_segments_through(tmp_path):
    path = tmp_path / "log"
    lg = Log.open(path, segment_size_bytes=300)
    lease = lg.take_lease("a")
    fill(lg, lease, batches=30, batch_size=2)
    segs = lg.segments()
    assert len(segs) >= 6
    assert lg.drop_segments_through(segs[0].first_seq) == []   # seg 0 still has later records
    boundary = segs[3].first_seq - 1                            # last seq of segment 2
    dropped = lg.drop_segments_through(boundary)
    assert dropped == [s.path for s in segs[:3]]
    assert not any(os.path.exists(p) for p in dropped)
    assert lg.segments() == segs[3:]
    with pytest.raises(RecordsDropped):
        read(path, boundary)
    assert [s for s, _, _ in read(path, boundary + 1)] == list(range(boundary + 1, 61))
    everything = lg.drop_segments_through(10**9)
    assert lg.segments() == [segs[-1]._replace(sealed=False)]  # the active one survives
    assert len(everything) == len(segs) - 4
    lg.append([b"after"], 60, lease)
    lg.sync()
    lg.close()
    with Log.open(path, segment_size_bytes=300) as lg:
        assert lg.tail_seq == 61
        assert lg.recovery.first_seq == segs[-1].first_seq
        assert list(lg.read(61)) == [(61, 1, b"after")]


def test_interrupted_drop_leftover_is_removed(tmp_path):
    path = tmp_path / "log"
    lg = Log.open(path, segment_size_bytes=300)
    fill(lg, lg.take_lease("a"), batches=20, batch_size=2)
    first = lg.segments()[0]
    saved = open(first.path, "rb").read()
    lg.drop_segments_through(lg.segments()[1].first_seq - 1)
    lg.close()
    with open(first.path, "wb") as f:       # the unlink "did not happen"
        f.write(saved)
    assert verify(path).leftover_segments == [first.path]
    with Log.open(path) as lg:
        assert lg.recovery.removed_segments == (first.path,)
        assert not os.path.exists(first.path)
        assert lg.tail_seq == 40


def test_missing_first_segment_is_corruption(tmp_path):
    path = tmp_path / "log"
    lg = Log.open(path, segment_size_bytes=300)
    fill(lg, lg.take_lease("a"), batches=20, batch_size=2)
    segs = lg.segments()
    lg.close()
    os.unlink(segs[0].path)
    with pytest.raises(LogCorrupt, match="manifest says the log starts at seq 1"):
        Log.open(path)


def test_missing_middle_segment_is_a_gap(tmp_path):
    path = tmp_path / "log"
    lg = Log.open(path, segment_size_bytes=300)
    fill(lg, lg.take_lease("a"), batches=20, batch_size=2)
    segs = lg.segments()
    lg.close()
    os.unlink(segs[2].path)
    with pytest.raises(LogCorrupt) as info:
        Log.open(path)
    assert info.value.segment == segs[3].path and info.value.offset_bytes == 0
    assert "previous segment ended at seq" in str(info.value)
    assert not verify(path).ok


def test_missing_manifest_with_segments_is_corruption(tmp_path):
    path = tmp_path / "log"
    with Log.open(path) as lg:
        fill(lg, lg.take_lease("a"), batches=1, batch_size=1)
    os.unlink(path / "MANIFEST.json")
    with pytest.raises(LogCorrupt, match="manifest missing"):
        Log.open(path)


def test_record_epoch_newer_than_manifest_is_corruption(tmp_path):
    path = tmp_path / "log"
    with Log.open(path) as lg:
        lease = lg.take_lease("a")
        lease = lg.take_lease("a")
        fill(lg, lease, batches=1, batch_size=1)
    doc = json.loads((path / "MANIFEST.json").read_text())
    doc["epoch"] = 1
    (path / "MANIFEST.json").write_text(json.dumps(doc))
    with pytest.raises(LogCorrupt, match="newer than the manifest"):
        Log.open(path)


def test_limits(tmp_path):
    with Log.open(tmp_path / "log", max_pending_bytes=1000) as lg:
        lease = lg.take_lease("a")
        with mmap.mmap(-1, durakv.log.MAX_RECORD_BYTES + 1) as huge:   # virtual, never touched
            with pytest.raises(RecordTooLarge, match="exceeds"):
                lg.append([b"ok", memoryview(huge)], 0, lease)
        assert lg.tail_seq == 0                                 # all or nothing
        with pytest.raises(TypeError):
            lg.append(["text"], 0, lease)
        lg.append([b"x" * 500], 0, lease)
        with pytest.raises(PendingFull):
            lg.append([b"y" * 500], 1, lease)
        lg.sync()
        lg.append([b"y" * 500], 1, lease)
    for bad in (0, durakv.log.writer.MAX_SEGMENT_SIZE_BYTES + 1):
        with pytest.raises(ValueError):
            Log.open(tmp_path / "other", segment_size_bytes=bad)


def test_closed_log_refuses_work(tmp_path):
    lg = Log.open(tmp_path / "log")
    lease = lg.take_lease("a")
    lg.append([b"unsynced"], 0, lease)
    lg.close()
    lg.close()
    with pytest.raises(LogClosed):
        lg.append([b"x"], 1, lease)
    with pytest.raises(LogClosed):
        lg.sync()
    with Log.open(tmp_path / "log") as lg:
        assert lg.tail_seq == 0


def test_verify_and_dump(tmp_path):
    path = tmp_path / "log"
    with Log.open(path, segment_size_bytes=400) as lg:
        fill(lg, lg.take_lease("a"), batches=10, batch_size=3)
    report = verify(path)
    assert report.ok and report.records == 30
    assert (report.first_seq, report.last_seq, report.torn_tail_bytes) == (1, 30, 0)
    assert len(report.segments) == len(os.listdir(path)) - 3          # minus LOCK, MANIFEST, LEASE
    assert "records: 30 (seq 1..30)" in str(report) and str(report).endswith("OK")
    lines = [str(r) for r in dump(path, from_seq=28)]
    assert len(lines) == 3 and lines[0].startswith("seq=28 epoch=1 segment=")
    assert repr(payload(28)) in lines[0]
    assert [r.seq for r in dump(path, limit=4)] == [1, 2, 3, 4]
    assert list(dump(path, limit=0)) == []
    decoded = next(iter(dump(path, from_seq=5, decode=lambda p: p.upper())))
    assert repr(payload(5).upper()) in str(decoded)


def test_reader_started_before_a_drop_reports_records_dropped(tmp_path):
    path = tmp_path / "log"
    with Log.open(path, segment_size_bytes=300) as lg:
        fill(lg, lg.take_lease("a"), batches=20, batch_size=2)
        pending_read = read(path, 1)            # directory listing taken now
        lg.drop_segments_through(lg.segments()[2].first_seq - 1)
        with pytest.raises(RecordsDropped, match="dropped while reading"):
            list(pending_read)
        assert [s for s, _, _ in lg.read(lg.segments()[0].first_seq)][-1] == 40
