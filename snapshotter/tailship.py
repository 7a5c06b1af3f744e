"""Continuous log archive: each shard's durable log reaches the store about a
second after it is written, not only when a 64 MiB segment seals, so losing
the machine loses at most `log-archive-interval-ms` of acknowledged writes.

One pass over a shard (under its lock, shared by the archiver thread and the
snapshot builds that need the sealed segments archived before a release):

1. every sealed local segment not in the store is uploaded whole, and the
   tail pieces it supersedes are deleted (snapshotter.store's layout);
2. the records of the active segment after the last piece are read up to the
   tail snapshotter.logtail allows (the durable seq the holder published, or with
   no holder of this boot the last complete valid record, then made durable with
   fdatasync through a read-only descriptor), at most MAX_PIECE_BYTES per piece,
   and uploaded as one piece;
3. the shard's ARCHIVED.json marker records "at at_ms, everything durable was
   archived through seq S" (after new pieces, or every MARKER_IDLE_MS when idle),
   which restore --at uses to tell an idle shard from one whose archive is behind.

The time is taken before the segments are listed and the tail limit read, so any
record made durable (published) before it is in a segment the pass sees and is read.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from durakv.log.format import BadFrame, FrameReader
from durakv.log.manifest import list_segments, segment_name
from durakv.log.reader import DataEnds
from durakv.log.layout import shard_log_dir
from durakv.log.disk import OS_DISK
from durakv.shards.config import DEFAULTS
from durakv.snapshotter.logtail import tail_limit
from durakv.snapshotter.store import ArchiveMarker, Store, StoreError, TailPiece

logger = logging.getLogger("durakv.snapshotter")

ARCHIVE_INTERVAL_MS_DEFAULT = DEFAULTS.log_archive_interval_ms
ARCHIVE_BYTES_DEFAULT = DEFAULTS.log_archive_bytes
MAX_PIECE_BYTES = 16 * 1024 * 1024
MARKER_IDLE_MS = 10_000
TICK_MS_MAX = 100


@dataclass
class _ShardTail:
    loaded: bool = False
    sealed: set[tuple[int, int]] = field(default_factory=set)
    sealed_through: int = 0
    pieces: dict[int, list[TailPiece]] = field(default_factory=dict)  # by segment first seq
    segment_first: int = 0
    offset: int = 0
    archived_seq: int = 0
    last_pass_ms: int = 0
    marker_ms: int = 0
    caught_up_at_ms: int = 0


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class TailArchiver:
    def __init__(self, data_dir: str, shards: int, store: Store,
                 interval_ms: int = ARCHIVE_INTERVAL_MS_DEFAULT, bytes_threshold: int = ARCHIVE_BYTES_DEFAULT,
                 on_progress: Callable[[int, int, int, str], None] | None = None) -> None:
        """on_progress(shard, archived_seq, caught_up_at_ms, error) after every pass."""
        assert store.archives_log
        self.data_dir = data_dir
        self.shards = shards
        self.store = store
        self.interval_ms = interval_ms
        self.bytes_threshold = bytes_threshold
        self._data_ends = DataEnds()
        self.on_progress = on_progress
        self._tails = [_ShardTail() for _ in range(shards)]
        self._locks = [threading.Lock() for _ in range(shards)]

    # --- one shard ------------------------------------------------------------------

    def ship(self, shard: int) -> int:
        """One pass over a shard (see the module doc); returns the last seq of the
        newest sealed segment archived (what a release may rely on)."""
        with self._locks[shard]:
            tail = self._tails[shard]
            try:
                self._pass(shard, tail)
            except Exception as e:
                tail.loaded = False  # list the store again next time
                if self.on_progress is not None:
                    self.on_progress(shard, tail.archived_seq, tail.caught_up_at_ms, f"{type(e).__name__}: {e}")
                raise
            if self.on_progress is not None:
                self.on_progress(shard, tail.archived_seq, tail.caught_up_at_ms, "")
            return tail.sealed_through

    def _load(self, shard: int, tail: _ShardTail) -> None:
        sealed = self.store.list_sealed(shard)
        tail.sealed = {(s.first_seq, s.last_seq) for s in sealed}
        tail.sealed_through = max((s.last_seq for s in sealed), default=0)
        tail.pieces = {}
        for piece in self.store.list_pieces(shard):
            tail.pieces.setdefault(piece.segment_first_seq, []).append(piece)
        tail.segment_first = 0
        tail.archived_seq = max([tail.sealed_through] + [p[-1].last_seq for p in tail.pieces.values()])
        tail.loaded = True

    def _pass(self, shard: int, tail: _ShardTail) -> None:
        if not tail.loaded:
            self._load(shard, tail)
        sample_ms = _now_ms()
        tail.last_pass_ms = sample_ms
        log_dir = shard_log_dir(self.data_dir, shard)
        segments = list_segments(log_dir) if os.path.isdir(log_dir) else []
        if not segments:
            return
        for (first_seq, path), (next_first, _) in zip(segments, segments[1:]):
            last_seq = next_first - 1
            if (first_seq, last_seq) not in tail.sealed:
                self.store.archive_segment(shard, first_seq, last_seq, path, os.stat(path).st_mtime_ns // 1_000_000)
                tail.sealed.add((first_seq, last_seq))
            tail.sealed_through = max(tail.sealed_through, last_seq)
        for first_seq in [f for f in tail.pieces if f in {s for s, _ in tail.sealed}]:
            self.store.delete_pieces(tail.pieces.pop(first_seq))
        tail.archived_seq = max(tail.archived_seq, tail.sealed_through)
        active_first, active_path = segments[-1]
        if tail.segment_first != active_first:
            pieces = tail.pieces.get(active_first, [])
            tail.segment_first = active_first
            tail.offset = sum(p.size for p in pieces)
            if pieces:
                tail.archived_seq = max(tail.archived_seq, pieces[-1].last_seq)
        limit = tail_limit(log_dir)   # read after sample_ms: covers what was durable then
        shipped = self._ship_active(shard, tail, log_dir, active_path, sample_ms, limit)
        tail.caught_up_at_ms = sample_ms
        if shipped or sample_ms - tail.marker_ms >= MARKER_IDLE_MS:
            self.store.write_marker(shard, ArchiveMarker(tail.archived_seq, sample_ms))
            tail.marker_ms = sample_ms

    def _ship_active(self, shard: int, tail: _ShardTail, log_dir: str, path: str, sample_ms: int,
                     limit: int | None) -> bool:
        """Upload the active segment's new durable records as pieces; True if any."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False  # dropped or rolled meanwhile: the next pass sees the new layout
        shipped = False
        try:
            while True:
                reader = FrameReader(fd, tail.offset)
                first = last = None
                end = tail.offset
                full = False
                while not full:
                    frame = reader.next()
                    if frame is None or isinstance(frame, BadFrame):
                        break  # the end of what the shard has written so far (or a torn tail)
                    if limit is not None and frame.seq > limit:
                        break  # not durable yet, or a deposed writer's bytes at a fence
                    expected = (last if last is not None else tail.segment_first - 1 if tail.offset == 0
                                else tail.archived_seq) + 1
                    if frame.seq != expected:
                        raise StoreError(f"{path} offset {frame.offset}: seq {frame.seq} where the archive "
                                         f"expects seq {expected}; the store does not match this log")
                    first = frame.seq if first is None else first
                    last, end = frame.seq, frame.end
                    full = end - tail.offset >= MAX_PIECE_BYTES
                if last is None:
                    return shipped
                if limit is None:
                    os.fdatasync(fd)
                    OS_DISK.fsync_dir(log_dir)
                data = os.pread(fd, end - tail.offset, tail.offset)
                piece = self.store.archive_piece(shard, tail.segment_first, first, last, data, sample_ms)
                tail.pieces.setdefault(tail.segment_first, []).append(piece)
                tail.offset, tail.archived_seq = end, last
                shipped = True
                if not full:
                    return shipped
        finally:
            os.close(fd)

    # --- all shards -----------------------------------------------------------------

    def due(self, shard: int) -> bool:
        tail = self._tails[shard]
        if _now_ms() - tail.last_pass_ms >= self.interval_ms:
            return True
        if not tail.segment_first:
            return False
        try:
            # the active segment's file may be preallocated: where its records end
            size = self._data_ends.of(os.path.join(shard_log_dir(self.data_dir, shard),
                                                   segment_name(tail.segment_first)))
        except FileNotFoundError:
            return True  # rolled or dropped: a pass sees the new segment
        return size - tail.offset >= self.bytes_threshold

    def run(self, stop: threading.Event) -> None:
        """Ship every shard's tail each interval (or sooner by bytes) until stop is set."""
        tick_s = min(self.interval_ms, TICK_MS_MAX) / 1000
        while not stop.is_set():
            for shard in range(self.shards):
                if stop.is_set() or not self.due(shard):
                    continue
                try:
                    self.ship(shard)
                except Exception:  # noqa: BLE001 - reported in status.json and the log, retried next interval
                    logger.exception("shard %d: log archive pass failed", shard)
            stop.wait(tick_s)
