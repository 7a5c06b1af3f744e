"""`durakv log verify|dump|truncate`: shard logs offline. verify and dump only read
(no lock taken, nothing changed); truncate repairs a corrupt log by dropping the
damaged record and everything after it, under the data-dir and shard log locks."""

from __future__ import annotations

import os
import sys

import durakv.log as wal
from durakv.log.format import MAGIC, Frame, FrameReader
from durakv.log.layout import shard_dir, shard_log_dir, shard_log_dirs
from durakv.log.lock import exclusive_data_dir
from durakv.log.disk import OS_DISK
from durakv.log.manifest import list_segments
from durakv.shards.records import decode_record


def verify_logs(data_dir: str) -> int:
    """Exit status 0 if every shard log verifies, 1 otherwise (torn tails are
    reported but are not damage: recovery truncates them)."""
    dirs = shard_log_dirs(data_dir)
    if not dirs:
        print(f"no shard logs under {data_dir}", file=sys.stderr)
        return 1
    status = 0
    for path in dirs:
        report = wal.verify(path)
        print(f"{path}: {report}")
        if not report.ok:
            status = 1
    return status


def render_record(payload: bytes) -> str:
    record = decode_record(payload)
    return f"@{record.written_at_ms} " + " | ".join(" ".join(repr(arg)[2:-1] for arg in argv)
                                                    for argv in record.effects)


def dump_log(data_dir: str, shard: int, from_seq: int, limit: int | None) -> int:
    path = shard_log_dir(data_dir, shard)
    if not os.path.isdir(path):
        print(f"no log at {path}", file=sys.stderr)
        return 1
    try:
        for record in wal.dump(path, from_seq=from_seq, limit=limit, decode=render_record):
            print(record)
    except wal.LogCorrupt as e:
        print(str(e), file=sys.stderr)
        return 1
    return 0


class _Drop:
    """One file region truncate removes: a segment from `offset_bytes` to its end."""

    def __init__(self, segment: str, offset_bytes: int, delete: bool) -> None:
        self.segment = segment
        self.offset_bytes = offset_bytes
        self.delete = delete  # the whole file goes (else it is cut at offset_bytes)
        self.size_bytes = os.path.getsize(segment) - offset_bytes
        self.seqs = _valid_seqs_from(segment, offset_bytes)


def _valid_seqs_from(segment: str, offset_bytes: int) -> list[int]:
    """Seqs of the intact records at or after offset_bytes (found by their magic),
    so the report can say how many records beyond the damaged one are dropped."""
    seqs = []
    fd = os.open(segment, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pos = offset_bytes
        while pos < size:
            frame = FrameReader(fd, pos).next()
            if isinstance(frame, Frame):
                seqs.append(frame.seq)
                pos = frame.end
                continue
            data = os.pread(fd, min(size - pos, 1 << 20), pos + 1)
            hit = data.find(MAGIC)
            if hit < 0:
                pos += 1 + max(len(data) - len(MAGIC) + 1, 0)
            else:
                pos += 1 + hit
    finally:
        os.close(fd)
    return seqs


def truncate_log(data_dir: str, shard: int, yes: bool) -> int:
    """Drop a corrupt shard log's damaged record and every record after it, so the
    shard starts with the records before the damage. Prints exactly what goes;
    without `yes` it is a dry run. Exit status: 0 done (or nothing to do), 1 refused."""
    path = shard_log_dir(data_dir, shard)
    if not os.path.isdir(path):
        print(f"durakv: no log at {path}", file=sys.stderr)
        return 1
    try:
        with exclusive_data_dir(data_dir, "durakv log truncate"):
            return _truncate_locked(path, data_dir, shard, yes)
    except wal.LockHeld as e:
        print(f"durakv: {e}", file=sys.stderr)
        return 1


def _truncate_locked(path: str, data_dir: str, shard: int, yes: bool) -> int:
    from durakv.snapshotter.local import list_local

    report = wal.verify(path)
    if report.ok:
        print(f"shard {shard}: log {path} verifies ({report.records} records, last seq "
              f"{report.last_seq}); nothing to truncate")
        return 0
    bad = report.corruption
    segments = [seg_path for _, seg_path in list_segments(path)]
    if bad.segment not in segments:
        print(f"durakv: shard {shard}: {bad}; this is not damage inside a segment, so truncating "
              "cannot repair it: restore the data dir from S3 (durakv restore)", file=sys.stderr)
        return 1
    last_good = report.last_seq
    covering = [s.manifest.seq for s in list_local(shard_dir(data_dir, shard)) if s.manifest.seq > last_good]
    if covering:
        print(f"durakv: shard {shard}: a local snapshot holds seq {max(covering)}, past the last good "
              f"record (seq {last_good}); truncating would leave the log behind it: restore the data "
              "dir from S3 (durakv restore) instead", file=sys.stderr)
        return 1
    at = segments.index(bad.segment)
    first = _Drop(bad.segment, bad.offset_bytes, delete=bad.offset_bytes == 0 and at > 0)
    drops = [first] + [_Drop(seg, 0, delete=True) for seg in segments[at + 1:]]
    later = sorted(seq for d in drops for seq in d.seqs if seq > last_good)
    print(f"shard {shard}: {bad}")
    print(f"last good record: seq {last_good}; kept: {report.records} records")
    for d in drops:
        what = "delete the whole segment" if d.delete else f"cut at offset {d.offset_bytes}"
        print(f"drop: {d.segment}: {what} ({d.size_bytes} bytes)")
    intact = f" and {len(later)} intact records after it (seq {later[0]}..{later[-1]})" if later else ""
    print(f"records dropped: {1 + len(later)}: the damaged record (seq {last_good + 1}){intact}")
    if not yes:
        print("dry run: nothing changed; run again with --yes to drop them")
        return 0
    for d in reversed(drops):  # later segments first: a crash midway leaves a valid prefix
        if d.delete:
            os.unlink(d.segment)
        else:
            fd = os.open(d.segment, os.O_WRONLY)
            try:
                os.ftruncate(fd, d.offset_bytes)
                os.fsync(fd)
            finally:
                os.close(fd)
    OS_DISK.fsync_dir(path)
    after = wal.verify(path)
    if not after.ok:
        print(f"durakv: shard {shard}: still corrupt after truncating: {after.corruption}; restore the "
              "data dir from S3 (durakv restore)", file=sys.stderr)
        return 1
    print(f"truncated: shard {shard} log now ends at seq {after.last_seq} ({after.records} records)")
    return 0
