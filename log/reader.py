"""Lock-free access to a log directory, usable from any process while a writer
is appending: read(), verify() and dump(). Nothing here modifies the directory."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Iterator

from .errors import LogCorrupt, RecordsDropped
from .format import Frame, FrameReader
from .manifest import Manifest, list_segments, load_manifest
from .scan import SegmentStat, TornTail, WalkState, split_leftovers, walk

MAX_DUMP_PAYLOAD_CHARS = 400
MAX_DATA_ENDS = 64   # segments a DataEnds remembers; past it, it starts over
_SNAPSHOT_ATTEMPTS = 3


class DataEnds:
    """Where a segment's records end: its size, less the zeros of a preallocated
    active segment (log/FORMAT.md, "Preallocation"), which the file size counts. It
    remembers where each file's records ended last time and reads on from there, so
    a caller polling the active segment reads what was written since, not the file."""

    def __init__(self) -> None:
        self._ends: dict[str, tuple[int, int]] = {}   # path: (inode, end offset)

    def of(self, path: str) -> int:
        """Byte offset just past the last complete record (FileNotFoundError if gone)."""
        fd = os.open(path, os.O_RDONLY)
        try:
            stat = os.fstat(fd)
            inode, offset = self._ends.get(path, (stat.st_ino, 0))
            if inode != stat.st_ino or offset > stat.st_size:
                offset = 0
            reader = FrameReader(fd, offset)
            while isinstance(reader.next(), Frame):
                pass
        finally:
            os.close(fd)
        if len(self._ends) >= MAX_DATA_ENDS and path not in self._ends:
            self._ends.clear()
        self._ends[path] = (stat.st_ino, reader.pos)
        return reader.pos


def _snapshot(path: str) -> tuple[Manifest, list[tuple[int, str]], list[tuple[int, str]]]:
    """Manifest plus (retained, leftover) segments, consistent with each other even
    if the writer drops segments meanwhile (it updates the manifest first)."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no log directory at {path}")
    for attempt in range(_SNAPSHOT_ATTEMPTS):
        manifest = load_manifest(path)
        segs = list_segments(path)
        if manifest is None:
            if segs:
                raise LogCorrupt(os.path.join(path, "MANIFEST.json"), 0,
                                 "manifest missing but segments exist")
            return Manifest(), [], []
        try:
            retained, leftovers = split_leftovers(path, manifest, segs)
        except LogCorrupt:
            if attempt + 1 == _SNAPSHOT_ATTEMPTS or load_manifest(path) == manifest:
                raise
            continue
        return manifest, retained, leftovers
    raise AssertionError("unreachable")


def read(path: str | os.PathLike, from_seq: int = 1, *, through_seq: int | None = None,
         start: tuple[int, int] | None = None) -> Iterator[tuple[int, int, bytes]]:
    """Yield (seq, epoch, payload) for every record with from_seq <= seq (<= through_seq),
    in order, across segments. Safe on a live log from another process: opens files
    read-only, takes no lock, and stops cleanly at the last complete valid record.

    Without through_seq it may yield records a live writer has written but not yet
    fsync'd; a consumer that must only see durable records (the snapshotter) passes
    the durable seq it learned from the writer. Raises RecordsDropped if from_seq
    is below the first retained record, LogCorrupt on damage before the tail.
    start: where record from_seq begins (scan.walk), if the caller knows."""
    if from_seq < 1:
        raise ValueError(f"from_seq must be >= 1, got {from_seq}")
    path = os.fspath(path)
    manifest, retained, _ = _snapshot(path)
    if from_seq < manifest.first_seq:
        raise RecordsDropped(f"records of {path} before seq {manifest.first_seq} were dropped; "
                             f"cannot read from seq {from_seq}")
    return _read(path, manifest, retained, from_seq, through_seq, start)


def _read(path: str, manifest: Manifest, retained: list[tuple[int, str]], from_seq: int,
          through_seq: int | None, start: tuple[int, int] | None) -> Iterator[tuple[int, int, bytes]]:
    state = WalkState(manifest)
    for _, frame in walk(path, state, retained, from_seq=from_seq, through_seq=through_seq,
                         live=True, start=start):
        yield frame.seq, frame.epoch, frame.payload


@dataclass
class VerifyReport:
    """What verify() found. `ok` is False only for corruption; a torn tail is
    reported (torn_tail_bytes) but is what recovery repairs by design."""
    path: str
    epoch: int = 0
    first_seq: int = 1
    last_seq: int = 0
    records: int = 0
    segments: list[SegmentStat] = field(default_factory=list)
    leftover_segments: list[str] = field(default_factory=list)
    torn_tail: TornTail | None = None
    corruption: LogCorrupt | None = None

    @property
    def ok(self) -> bool:
        return self.corruption is None

    @property
    def torn_tail_bytes(self) -> int:
        return self.torn_tail.dropped_bytes if self.torn_tail else 0

    def lines(self) -> list[str]:
        out = [f"log {self.path}: manifest epoch {self.epoch}, first seq {self.first_seq}"]
        for seg in self.segments:
            out.append(f"  {os.path.basename(seg.path)}: {seg.records} records, "
                       f"{seg.size_bytes} bytes")
        for leftover in self.leftover_segments:
            out.append(f"  {os.path.basename(leftover)}: leftover below first seq "
                       "(recovery deletes it)")
        span = f"seq {self.first_seq}..{self.last_seq}" if self.records else "no records"
        out.append(f"records: {self.records} ({span})")
        if self.torn_tail:
            out.append(f"torn tail: {self.torn_tail.dropped_bytes} bytes at offset "
                       f"{self.torn_tail.offset_bytes} of {self.torn_tail.segment} "
                       f"({self.torn_tail.reason}); recovery truncates it")
        out.append(f"CORRUPT: {self.corruption}" if self.corruption else "OK")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


def verify(path: str | os.PathLike) -> VerifyReport:
    """Check every segment of the log at `path` without modifying anything (safe
    on a live log). Corruption is reported in the result, not raised."""
    path = os.fspath(path)
    report = VerifyReport(path)
    try:
        manifest, retained, leftovers = _snapshot(path)
    except LogCorrupt as exc:
        report.corruption = exc
        return report
    report.epoch, report.first_seq = manifest.epoch, manifest.first_seq
    report.last_seq = manifest.first_seq - 1
    report.leftover_segments = [seg_path for _, seg_path in leftovers]
    state = WalkState(manifest)
    try:
        for _ in walk(path, state, retained, live=True):
            pass
    except LogCorrupt as exc:
        report.corruption = exc
    report.epoch = state.manifest.epoch
    report.last_seq, report.records = state.last_seq, state.records
    report.segments, report.torn_tail = state.segments, state.torn
    return report


@dataclass(frozen=True, slots=True)
class DumpRecord:
    seq: int
    epoch: int
    segment: str
    offset_bytes: int
    payload: bytes
    shown: str

    def __str__(self) -> str:
        return (f"seq={self.seq} epoch={self.epoch} segment={os.path.basename(self.segment)} "
                f"offset={self.offset_bytes} bytes={len(self.payload)} payload={self.shown}")


def dump(path: str | os.PathLike, from_seq: int = 1, limit: int | None = None,
         decode: Callable[[bytes], object] | None = None) -> Iterator[DumpRecord]:
    """Yield printable records (str() gives one line) from from_seq on, at most
    `limit` of them. from_seq below the first retained record starts at the first
    retained one. `decode` turns a payload into something readable (the shard
    passes its msgpack decoder); the log itself treats payloads as opaque."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    path = os.fspath(path)
    manifest, retained, _ = _snapshot(path)
    state = WalkState(manifest)
    if limit == 0:
        return
    count = 0
    for seg_path, frame in walk(path, state, retained, from_seq=max(from_seq, manifest.first_seq),
                                live=True):
        shown = repr(decode(frame.payload) if decode else frame.payload)
        if len(shown) > MAX_DUMP_PAYLOAD_CHARS:
            shown = shown[:MAX_DUMP_PAYLOAD_CHARS] + f"...({len(shown)} chars)"
        yield DumpRecord(frame.seq, frame.epoch, seg_path, frame.offset, frame.payload, shown)
        count += 1
        if limit is not None and count >= limit:
            return
