"""Opening a log for promotion reads only from the promoted replica's applied seq
(Log.open read_through_seq): the time to take over does not grow with the retained
log. Shown by damaging a sealed segment the replica had already read: a full
recovery reports it, a promotion's open never reads it."""

from __future__ import annotations

import os

import pytest

from durakv.log import Log, LogCorrupt, read
from durakv.log.follow import Follower
from durakv.log.manifest import list_segments

LEASE_MS = 150
SEGMENT_BYTES = 256


def _filled(path, records: int) -> list[tuple[int, str]]:
    with Log.open(path, holder="old", segment_size_bytes=SEGMENT_BYTES, lease_duration_ms=LEASE_MS) as log:
        lease = log.take_lease("old")
        for n in range(1, records + 1):
            log.append([b"record %04d" % n], log.tail_seq, lease)
            log.sync()
    segments = list_segments(str(path))
    assert len(segments) >= 4
    return segments


def _damage(seg_path: str) -> None:
    with open(seg_path, "r+b") as f:
        f.seek(os.path.getsize(seg_path) // 2)
        f.write(b"\xff\xff\xff\xff")


def _check_opened(log: Log, segments: list[tuple[int, str]], records: int, applied: int | None = None) -> None:
    """The opened log's tail, segments and size; it takes a write; what follows the
    replica's applied seq reads back (from it, as the promoted shard replays the rest)."""
    assert log.tail_seq == log.durable_seq == records
    assert [s.first_seq for s in log.segments()][:len(segments)] == [first for first, _ in segments]
    assert log.size_bytes >= sum(os.path.getsize(p) for _, p in segments[:-1])
    lease = log.take_lease("new")
    log.append([b"after"], log.tail_seq, lease)
    assert log.sync() == records + 1
    applied = records - 1 if applied is None else applied
    assert [p for _, _, p in log.read(applied + 1)] == [b"record %04d" % n for n in range(applied + 1, records + 1)] \
        + [b"after"]


def test_promotion_open_reads_from_the_applied_seq_only(tmp_path):
    path = tmp_path / "log"
    segments = _filled(path, 60)
    _damage(segments[0][1])
    with pytest.raises(LogCorrupt):
        Log.open(path, holder="full recovery", segment_size_bytes=SEGMENT_BYTES).close()
    applied = segments[-2][0]   # the replica applied into the second-to-last segment
    with Log.open(path, holder="promoted", segment_size_bytes=SEGMENT_BYTES, lease_duration_ms=LEASE_MS,
                  read_through_seq=applied) as log:
        assert log.recovery.records < 60
        _check_opened(log, segments, 60)


def test_promotion_open_that_fences_a_live_holder_reads_from_the_applied_seq_only(tmp_path):
    path = tmp_path / "log"
    segments = _filled(path, 60)
    old = Log.open(path, holder="paused", segment_size_bytes=SEGMENT_BYTES, lease_duration_ms=LEASE_MS)
    try:
        old.take_lease("paused")
        _damage(segments[0][1])
        with Log.open(path, holder="promoted", segment_size_bytes=SEGMENT_BYTES, lease_duration_ms=LEASE_MS,
                      takeover_wait_ms=5000, read_through_seq=segments[-2][0]) as log:
            assert log.recovery.records < 60
            _check_opened(log, segments, 60)
        assert [p for _, _, p in read(path, segments[-1][0])][-1] == b"after"
    finally:
        old.close()


def test_promotion_open_refuses_a_log_that_ends_before_the_applied_seq(tmp_path):
    path = tmp_path / "log"
    _filled(path, 60)
    with pytest.raises(LogCorrupt, match="ends at seq 60, but its opener had already read it through seq 61"):
        Log.open(path, holder="promoted", segment_size_bytes=SEGMENT_BYTES, read_through_seq=61)


def _follower_position(path, through: int) -> tuple[int, int]:
    follower = Follower(str(path))
    try:
        for _ in follower.read(list_segments(str(path))[-1][0], through):
            pass
        position = follower.next_record_at(through + 1)
    finally:
        follower.close()
    assert position is not None
    return position


def test_promotion_open_starts_where_the_replicas_follower_stands(tmp_path):
    """With the byte offset its follower stands at, not even the active segment is
    read from its start: opening costs what was written after the replica's seq."""
    path = tmp_path / "log"
    segments = _filled(path, 60)
    applied = 58
    position = _follower_position(path, applied)
    assert position[0] == segments[-1][0] and position[1] > 0
    _damage_at(segments[-1][1], 0)   # the first record of the active segment, read by the replica already
    with pytest.raises(LogCorrupt):
        Log.open(path, holder="promoted", segment_size_bytes=SEGMENT_BYTES, read_through_seq=applied).close()
    with Log.open(path, holder="promoted", segment_size_bytes=SEGMENT_BYTES, lease_duration_ms=LEASE_MS,
                  read_through_seq=applied, next_record_at=position) as log:
        assert log.recovery.records == 2
        _check_opened(log, segments, 60, applied)


def test_a_wrong_offset_is_noticed_and_the_segment_read_from_its_start(tmp_path, caplog):
    path = tmp_path / "log"
    segments = _filled(path, 60)
    first, offset = _follower_position(path, 58)
    with Log.open(path, holder="promoted", segment_size_bytes=SEGMENT_BYTES, lease_duration_ms=LEASE_MS,
                  read_through_seq=58, next_record_at=(first, offset + 3)) as log:
        _check_opened(log, segments, 60)
    assert "seq 59 is not where its opener read it" in caplog.text


def _damage_at(seg_path: str, offset: int) -> None:
    with open(seg_path, "r+b") as f:
        f.seek(offset)
        f.write(b"\xff\xff\xff\xff")


def test_promotion_open_from_inside_a_write(tmp_path, caplog):
    """A fence can leave a follower inside a write (the deposed writer's last one, cut
    at its last valid record): the walk from its offset accepts a first record that
    continues a write."""
    path = tmp_path / "log"
    with Log.open(path, holder="old", lease_duration_ms=LEASE_MS) as log:
        lease = log.take_lease("old")
        log.append([b"record %04d" % n for n in range(1, 11)], 0, lease)   # one write, write_index 0..9
        log.sync()
    position = _follower_position(path, 6)
    with Log.open(path, holder="promoted", lease_duration_ms=LEASE_MS, read_through_seq=6,
                  next_record_at=position) as log:
        assert log.recovery.records == 4 and log.tail_seq == 10
        assert [p for _, _, p in log.read(7)] == [b"record %04d" % n for n in range(7, 11)]
    assert "is not where its opener read it" not in caplog.text
