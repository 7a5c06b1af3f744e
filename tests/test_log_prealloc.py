"""Preallocated log segments (log/FORMAT.md, "Preallocation"): the active segment holds
zeros written ahead of its records, so a sync changes no file size; the zeros are the
end of the log for recovery and readers, and a sealed segment loses them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from durakv.log import Log, read, verify
from durakv.log.writer import ZERO_AHEAD_BYTES


def payload(seq: int) -> bytes:
    return f"record {seq} ".encode() * 5


def test_records_are_written_over_zeros_and_a_roll_seals_without_them(tmp_path):
    size_bytes = 3 * ZERO_AHEAD_BYTES // 2
    with Log.open(tmp_path, segment_size_bytes=size_bytes, preallocate=True) as lg:
        lease = lg.take_lease("t")
        lg.append([payload(1)], 0, lease)
        lg.sync()
        (first,) = lg.segments()
        assert os.path.getsize(first.path) == ZERO_AHEAD_BYTES   # zeroed ahead, not appended
        big = bytes(range(256)) * 1024   # 256 KiB records: a few fill a segment
        seq = 1
        while lg.segment_count < 3:
            seq = lg.append([big], seq, lease)
            lg.sync()
        segs = lg.segments()
        for seg in segs[:-1]:   # sealed: cut back to their records
            assert os.path.getsize(seg.path) <= size_bytes
            assert bytes(memoryview(open(seg.path, "rb").read())[-4:]) != bytes(4)
        assert os.path.getsize(segs[-1].path) > lg._active_size   # the active one has zeros
        assert verify(tmp_path).ok and verify(tmp_path).torn_tail is None
        assert [s for s, _, _ in read(tmp_path)] == list(range(1, seq + 1))
    with Log.open(tmp_path, segment_size_bytes=size_bytes, preallocate=True) as lg:
        assert lg.tail_seq == seq and lg.recovery.truncated_bytes == 0


_WRITER = textwrap.dedent("""
    import sys
    from durakv.log import Log
    lg = Log.open(sys.argv[1], preallocate=True)
    lease = lg.take_lease("t")
    seq = 0
    while True:
        seq = lg.append([b"x" * 100, b"y" * 50], seq, lease)
        lg.sync()
        if seq == 40:
            print("ready", flush=True)
""")


def test_a_killed_writer_leaves_a_zero_tail_that_is_the_end(tmp_path):
    path = str(tmp_path / "log")
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, path], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"ready\n"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    (seg,) = [os.path.join(path, n) for n in os.listdir(path) if n.endswith(".seg")]
    with Log.open(path, preallocate=True) as lg:
        last = lg.tail_seq
        assert last >= 40 and lg.recovery.truncated_bytes == 0   # zeros: nothing torn
        end = lg._active_size
        assert os.path.getsize(seg) > end
        lg.append([b"after"], last, lg.take_lease("t"))
        lg.sync()
    with Log.open(path, preallocate=True) as lg:
        assert lg.tail_seq == last + 1
        assert list(read(path, last + 1))[0][2] == b"after"
        assert lg._active_size > end


def test_a_torn_record_before_the_zeros_is_cut(tmp_path):
    with Log.open(tmp_path, preallocate=True) as lg:
        lease = lg.take_lease("t")
        lg.append([payload(1), payload(2)], 0, lease)
        lg.sync()
        seg = lg.segments()[0].path
        end = lg._active_size
    with open(seg, "r+b") as f:   # half a record, as a write torn by a power cut leaves
        f.seek(end)
        f.write(b"DKVR" + os.urandom(20))
    with Log.open(tmp_path, preallocate=True) as lg:
        assert lg.tail_seq == 2 and lg.recovery.truncated_offset_bytes == end
        lg.append([payload(3)], 2, lg.take_lease("t"))
        lg.sync()
    assert [p for _, _, p in read(tmp_path)] == [payload(1), payload(2), payload(3)]


def test_a_reader_stops_at_the_zeros_and_picks_up_later_records(tmp_path):
    with Log.open(tmp_path, preallocate=True) as lg:
        lease = lg.take_lease("t")
        lg.append([payload(1)], 0, lease)
        lg.sync()
        assert [s for s, _, _ in read(tmp_path)] == [1]
        report = verify(tmp_path)
        assert report.ok and report.torn_tail is None and report.last_seq == 1
        lg.append([payload(2), payload(3)], 1, lease)
        lg.sync()
        assert [s for s, _, _ in read(tmp_path)] == [1, 2, 3]
        assert [s for s, _, _ in read(tmp_path, 3)] == [3]
