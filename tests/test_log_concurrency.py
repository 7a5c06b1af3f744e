"""Group commit under concurrency: sync() in a worker thread while the main thread
appends, and a reader in another process while the writer appends and syncs."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time

import pytest

import durakv.log.writer
from durakv.log import Log, dump, read

READER_SCRIPT = """
import sys, time
from durakv.log import read
path, final = sys.argv[1], int(sys.argv[2])

def payload(seq):
    return b"rec-%d-" % seq + bytes([seq % 256]) * (seq % 97)

last, reads = 0, 0
deadline = time.monotonic() + 240
while last < final:
    seqs = []
    for seq, epoch, data in read(path):
        assert data == payload(seq), (seq, data)
        assert epoch == 1, epoch
        seqs.append(seq)
    assert seqs == list(range(1, len(seqs) + 1)), "not a contiguous prefix"
    assert len(seqs) >= last, (len(seqs), last)
    last, reads = len(seqs), reads + 1
    if time.monotonic() > deadline:
        sys.exit(f"gave up at seq {last}")
partial = [s for s, _, _ in read(path, final - 5, through_seq=final - 2)]
assert partial == [final - 5, final - 4, final - 3, final - 2], partial
print("OK", reads)
"""


def payload(seq: int) -> bytes:
    return b"rec-%d-" % seq + bytes([seq % 256]) * (seq % 97)


def test_reader_process_on_a_live_log(tmp_path):
    path = str(tmp_path / "log")
    rng = random.Random(7)
    lg = Log.open(path, segment_size_bytes=64 * 1024)
    lease = lg.take_lease("writer")
    sizes = [rng.randint(1, 40) for _ in range(1500)]
    final = sum(sizes)
    reader = subprocess.Popen([sys.executable, "-c", READER_SCRIPT, path, str(final)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for size in sizes:
            first = lg.tail_seq + 1
            lg.append([payload(s) for s in range(first, first + size)], lg.tail_seq, lease)
            lg.sync()
        out, err = reader.communicate(timeout=300)
    finally:
        reader.kill()
        lg.close()
    assert reader.returncode == 0, err
    assert out.startswith("OK")
    assert len(os.listdir(path)) > 10                     # it read across segment rolls


class RecordingDisk(durakv.log.Disk):
    """Records each segment write_all (one per sync): (file, offset, bytes)."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, int, int]] = []

    def write_all(self, fd: int, data: bytes, offset: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if path.endswith(".seg"):
            self.writes.append((path, offset, len(data)))
        super().write_all(fd, data, offset)


def test_sync_in_worker_thread_while_main_thread_appends(tmp_path):
    """Every record exactly once, in order; each write(2) is exactly one write as
    the write_index fields say (what torn-tail detection relies on)."""
    path = tmp_path / "log"
    disk = RecordingDisk()
    writes = disk.writes
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)                          # interleave the threads finely
    rng = random.Random(11)
    lg = Log.open(path, segment_size_bytes=128 * 1024, disk=disk)
    lease = lg.take_lease("main")
    stop = threading.Event()
    durable_seen: list[int] = []
    errors: list[BaseException] = []

    def syncer() -> None:
        try:
            while not stop.is_set():
                durable_seen.append(lg.sync())
        except BaseException as exc:   # reported by the main thread
            errors.append(exc)

    worker = threading.Thread(target=syncer)
    worker.start()
    expected: list[bytes] = []
    checkpoint = 0
    try:
        for i in range(1, 4001):
            batch = [rng.randbytes(rng.randint(0, 120)) for _ in range(rng.randint(1, 8))]
            assert lg.append(batch, len(expected), lease) == len(expected) + len(batch)
            expected += batch
            if i % 50 == 0:    # keep the worker busy: wait for the previous checkpoint
                while lg.durable_seq < checkpoint and worker.is_alive():
                    time.sleep(0.0002)
                checkpoint = len(expected)
    finally:
        stop.set()
        worker.join()
        sys.setswitchinterval(old_interval)
    assert not errors, errors
    assert lg.sync() == len(expected)
    lg.close()
    assert durable_seen == sorted(durable_seen)

    with Log.open(path) as reopened:
        assert reopened.recovery.truncated_bytes == 0
        assert [p for _, _, p in reopened.read()] == expected
        assert [s for s, _, _ in reopened.read()] == list(range(1, len(expected) + 1))
    write_index_at = {(os.path.realpath(r.segment), r.offset_bytes): (r.seq, index)
                      for r, index in _with_write_index(path)}
    next_seq = 1
    for segment, offset, size in writes:
        end, index = offset + size, 0
        while offset < end:
            seq, found_index = write_index_at.pop((os.path.realpath(segment), offset))
            assert (seq, found_index) == (next_seq, index), (segment, offset)
            offset += durakv.log.HEADER_BYTES + len(expected[seq - 1])
            next_seq, index = next_seq + 1, index + 1
        assert offset == end
    assert not write_index_at and next_seq == len(expected) + 1


def _with_write_index(path):
    """Each dumped record with the write_index field read from its header."""
    for record in dump(path):
        with open(record.segment, "rb") as f:
            f.seek(record.offset_bytes + 12)
            yield record, int.from_bytes(f.read(4), "little")


@pytest.mark.parametrize("batch", [1, 64])
def test_reader_in_process_sees_only_durable_records(tmp_path, batch):
    with Log.open(tmp_path / "log") as lg:
        lease = lg.take_lease("a")
        lg.append([b"a"] * batch, 0, lease)
        lg.sync()
        lg.append([b"b"] * batch, batch, lease)
        assert len(list(lg.read())) == batch
        lg.sync()
        assert len(list(lg.read())) == 2 * batch
        assert len(list(read(tmp_path / "log", batch + 1))) == batch
