"""Recovery on real files: torn tails are truncated and reported, damage before
the tail is refused with the segment and offset named, and (property) reopening
after any tear of the last write keeps at least every synced record."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from durakv.log import HEADER_BYTES, Log, LogCorrupt, dump, read, verify
from durakv.log.format import encode_records


def payload(seq: int) -> bytes:
    return b"payload-%d-" % seq + b"z" * (seq % 23)


def build(path, batches: int, batch_size: int, segment_size_bytes: int) -> dict[int, tuple]:
    """Write `batches` synced writes; return seq -> (segment path, offset, frame bytes)."""
    with Log.open(path, segment_size_bytes=segment_size_bytes) as lg:
        lease = lg.take_lease("test")
        for _ in range(batches):
            first = lg.tail_seq + 1
            lg.append([payload(s) for s in range(first, first + batch_size)], lg.tail_seq, lease)
            lg.sync()
    return {r.seq: (r.segment, r.offset_bytes, HEADER_BYTES + len(r.payload))
            for r in dump(path)}


def damaged_copy(src, dst, segment: str, edit) -> str:
    shutil.copytree(src, dst)
    seg = os.path.join(dst, os.path.basename(segment))
    with open(seg, "r+b") as f:
        data = bytearray(f.read())
        data = edit(data)
        f.seek(0)
        f.truncate()
        f.write(data)
    return seg


def flip(pos: int):
    def edit(data: bytearray) -> bytearray:
        data[pos] ^= 0xFF
        return data
    return edit


def cut(size: int):
    return lambda data: data[:size]


def file_bytes(path) -> dict[str, bytes]:
    return {name: open(os.path.join(path, name), "rb").read() for name in sorted(os.listdir(path))}


def test_truncated_last_record_at_every_offset(tmp_path):
    records = build(tmp_path / "src", batches=12, batch_size=3, segment_size_bytes=500)
    last = max(records)
    segment, offset, size = records[last]
    assert os.path.getsize(segment) == offset + size
    for length in range(offset, offset + size):
        dst = tmp_path / f"cut{length}"
        seg = damaged_copy(tmp_path / "src", dst, segment, cut(length))
        report = verify(dst)
        assert report.ok and report.torn_tail_bytes == length - offset
        assert [s for s, _, _ in read(dst)] == list(range(1, last))
        with Log.open(dst) as lg:
            assert lg.tail_seq == lg.durable_seq == last - 1
            assert lg.recovery.truncated_bytes == length - offset
            assert os.path.getsize(seg) == offset
            lg.append([b"next"], last - 1, lg.take_lease("again"))
            lg.sync()
        assert list(read(dst, last)) == [(last, 2, b"next")]
        shutil.rmtree(dst)


def test_flipped_byte_in_last_record(tmp_path, caplog):
    records = build(tmp_path / "src", batches=12, batch_size=3, segment_size_bytes=500)
    last = max(records)
    segment, offset, size = records[last]
    for pos in range(offset, offset + size):
        dst = tmp_path / f"flip{pos}"
        seg = damaged_copy(tmp_path / "src", dst, segment, flip(pos))
        caplog.clear()
        with Log.open(dst) as lg:
            assert lg.tail_seq == last - 1
            assert lg.recovery.truncated_bytes == size
            assert lg.recovery.truncated_offset_bytes == offset
            assert os.path.getsize(seg) == offset
        assert any(f"truncated {size} bytes" in m for m in caplog.messages)
        shutil.rmtree(dst)


def test_damage_anywhere_in_the_last_write_is_a_torn_tail(tmp_path):
    """Pages of an unsynced write may persist out of order: a hole in its first
    record with intact records after it is still a torn tail."""
    build(tmp_path / "src", batches=8, batch_size=4, segment_size_bytes=10_000)
    with Log.open(tmp_path / "src", segment_size_bytes=10_000) as lg:   # one write, 3 appends
        lease = lg.take_lease("test")
        for _ in range(3):
            lg.append([payload(lg.tail_seq + 1), payload(lg.tail_seq + 2)], lg.tail_seq, lease)
        lg.sync()
    records = {r.seq: (r.segment, r.offset_bytes) for r in dump(tmp_path / "src")}
    first_of_write = max(records) - 5
    segment, offset = records[first_of_write]
    end = os.path.getsize(segment)

    def zero_first_record(data: bytearray) -> bytearray:
        data[offset:offset + 8] = bytes(8)
        return data

    damaged_copy(tmp_path / "src", tmp_path / "hole", segment, zero_first_record)
    with Log.open(tmp_path / "hole") as lg:
        assert lg.tail_seq == first_of_write - 1
        assert lg.recovery.truncated_bytes == end - offset


def test_garbage_after_the_tail_is_torn_and_zeros_are_the_end(tmp_path):
    """Zeros after the last record are a preallocated segment's unwritten space
    (FORMAT.md, "Preallocation"): the end, kept; anything else there is a torn tail."""
    records = build(tmp_path / "src", batches=5, batch_size=2, segment_size_bytes=10_000)
    segment = records[10][0]
    for name, junk in (("garbage", os.urandom(777)), ("header", b"DKVR" + bytes(20)),
                       ("zeros then garbage", bytes(4096) + b"x")):
        damaged_copy(tmp_path / "src", tmp_path / name, segment, lambda d, junk=junk: d + junk)
        with Log.open(tmp_path / name) as lg:
            assert lg.tail_seq == 10 and lg.recovery.truncated_bytes == len(junk)
    damaged_copy(tmp_path / "src", tmp_path / "zeros", segment, lambda d: d + bytes(4096))
    end = os.path.getsize(segment)
    with Log.open(tmp_path / "zeros") as lg:
        assert lg.tail_seq == 10 and lg.recovery.truncated_bytes == 0
        lg.append([b"after the zeros"], 10, lg.take_lease("t"))
        lg.sync()
    copied = os.path.join(tmp_path / "zeros", os.path.basename(segment))
    assert os.path.getsize(copied) == end + 4096      # written in place, at the first zero
    assert [p for s, _, p in read(tmp_path / "zeros") if s == 11] == [b"after the zeros"]


def test_corruption_in_a_sealed_segment(tmp_path):
    records = build(tmp_path / "src", batches=12, batch_size=3, segment_size_bytes=500)
    segment, offset, size = records[2]
    assert os.path.basename(segment) == "00000000000000000001.seg"
    for pos in range(offset, offset + size):
        dst = tmp_path / f"flip{pos}"
        damaged_copy(tmp_path / "src", dst, segment, flip(pos))
        before = file_bytes(dst)
        report = verify(dst)
        assert not report.ok
        assert (report.corruption.segment, report.corruption.offset_bytes) == (
            os.path.join(dst, os.path.basename(segment)), offset)
        with pytest.raises(LogCorrupt) as info:
            list(read(dst))
        assert info.value.offset_bytes == offset
        with pytest.raises(LogCorrupt) as info:
            Log.open(dst)
        message = str(info.value)
        assert os.path.basename(segment) in message and f"offset {offset}" in message
        assert "sealed segment" in message
        assert file_bytes(dst) == before        # nothing repaired or truncated
        shutil.rmtree(dst)


def test_corruption_in_the_active_segment_before_the_tail(tmp_path):
    records = build(tmp_path / "src", batches=15, batch_size=3, segment_size_bytes=1500)
    last = max(records)
    active = records[last][0]
    in_active = sorted(s for s, (seg, _, _) in records.items() if seg == active)
    victim = in_active[0]
    assert last - victim >= 6          # at least two later writes in the same segment
    _, offset, size = records[victim]
    for pos in range(offset, offset + size):
        dst = tmp_path / f"flip{pos}"
        damaged_copy(tmp_path / "src", dst, active, flip(pos))
        with pytest.raises(LogCorrupt) as info:
            Log.open(dst)
        assert info.value.segment == os.path.join(dst, os.path.basename(active))
        assert info.value.offset_bytes == offset
        assert "not a torn tail" in info.value.reason
        report = verify(dst)
        assert report.corruption.offset_bytes == offset
        shutil.rmtree(dst)


def test_valid_record_with_wrong_seq_is_a_gap(tmp_path):
    records = build(tmp_path / "src", batches=3, batch_size=2, segment_size_bytes=10_000)
    segment, offset, size = records[6]
    stray = encode_records([b"stray"], 8, 1, 0)
    damaged_copy(tmp_path / "src", tmp_path / "gap", segment, lambda d: d + stray)
    with pytest.raises(LogCorrupt, match="sequence gap: expected seq 7, found seq 8") as info:
        Log.open(tmp_path / "gap")
    assert info.value.offset_bytes == offset + size


def test_write_index_must_continue_a_write(tmp_path):
    records = build(tmp_path / "src", batches=3, batch_size=2, segment_size_bytes=10_000)
    segment = records[6][0]
    stray = encode_records([b"stray"], 7, 1, 5)
    damaged_copy(tmp_path / "src", tmp_path / "widx", segment, lambda d: d + stray)
    with pytest.raises(LogCorrupt, match="write_index"):
        Log.open(tmp_path / "widx")


def test_empty_sealed_segment_and_bad_names_are_corruption(tmp_path):
    records = build(tmp_path / "src", batches=6, batch_size=2, segment_size_bytes=200)
    first_segment = records[1][0]
    damaged_copy(tmp_path / "src", tmp_path / "empty", first_segment, cut(0))
    with pytest.raises(LogCorrupt, match="empty sealed segment|incomplete"):
        Log.open(tmp_path / "empty")
    shutil.copytree(tmp_path / "src", tmp_path / "names")
    (tmp_path / "names" / "12.seg").write_bytes(b"")
    with pytest.raises(LogCorrupt, match="malformed segment file name"):
        Log.open(tmp_path / "names")


# ---- property: any tear of the last write keeps at least the synced prefix ----

batches_strategy = st.lists(
    st.tuples(st.lists(st.integers(0, 300), min_size=1, max_size=6), st.booleans()),
    min_size=1, max_size=25)
tear_strategy = st.tuples(st.sampled_from(["cut", "flip", "zero", "append"]),
                          st.integers(0, 10**9), st.integers(1, 64))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=batches_strategy, segment_size_bytes=st.integers(64, 2048),
       tear=tear_strategy, data=st.data())
def test_reopen_keeps_at_least_the_synced_prefix(batches, segment_size_bytes, tear, data):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "log")
        appended: list[bytes] = []
        lg = Log.open(path, segment_size_bytes=segment_size_bytes)
        lease = lg.take_lease("prop")
        for sizes, sync_now in batches:
            fresh = [data.draw(st.binary(min_size=n, max_size=n)) for n in sizes]
            lg.append(fresh, len(appended), lease)
            appended += fresh
            if sync_now:
                lg.sync()
        synced = lg.durable_seq
        last_write = [data.draw(st.binary(min_size=n, max_size=n))
                      for n in data.draw(st.lists(st.integers(0, 300), min_size=1, max_size=4))]
        lg.append(last_write, len(appended), lease)
        appended += last_write
        active_before = lg.segments()[-1]
        start = os.path.getsize(active_before.path)
        lg.sync()                               # the last write: the one that gets torn
        active = lg.segments()[-1].path
        if active != active_before.path:
            start = 0
        end = os.path.getsize(active)
        unsynced = data.draw(st.integers(0, 3))
        lg.append([b"never-synced"] * unsynced, lg.tail_seq, lease)
        lg.close()
        assert end > start, "the last write is never empty"
        _tear(active, start, end, tear)

        with Log.open(path, segment_size_bytes=segment_size_bytes) as lg:
            got = [p for _, _, p in lg.read()]
            assert synced <= len(got) <= len(appended)
            if tear[0] == "append":             # garbage after the tail: truncated, all kept
                # a whole header of zeros or more is preallocation's end, kept (FORMAT.md)
                zero_tail = tear[1] % 256 == 0 and tear[2] >= HEADER_BYTES
                assert lg.recovery.truncated_bytes == (0 if zero_tail else tear[2])
                assert len(got) == len(appended)
            else:                               # the torn record and any after it are gone
                assert len(got) < len(appended)
            assert got == appended[:len(got)]
            assert lg.tail_seq == lg.durable_seq == len(got)
            lg.append([b"after-recovery"], lg.tail_seq, lg.take_lease("again"))
            lg.sync()
        assert [p for _, _, p in read(path)] == got + [b"after-recovery"]


def _tear(segment: str, start: int, end: int, tear: tuple[str, int, int]) -> None:
    """Damage the last write, bytes start..end of the segment; every mode changes it."""
    mode, where, width = tear
    with open(segment, "r+b") as f:
        if mode == "append":
            f.seek(end)
            f.write(bytes([where % 256]) * width)
            return
        pos = start + where % (end - start)
        if mode == "cut":
            f.truncate(start + 1 + where % (end - start - 1) if end - start > 1 else start)
        elif mode == "flip":
            f.seek(pos)
            byte = f.read(1)[0]
            f.seek(pos)
            f.write(bytes([byte ^ (1 + where % 255)]))
        else:
            f.seek(pos)
            old = f.read(min(width, end - pos))
            f.seek(pos)
            f.write(bytes(len(old)) if any(old) else b"\xff" * len(old))
