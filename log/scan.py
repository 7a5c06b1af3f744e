"""Validation of a whole log directory: the one walk shared by recovery (Log.open),
verify(), read() and dump(), so that all four agree on what is a valid record,
what is a torn tail and what is corruption (rules in log/FORMAT.md)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Iterator

from .errors import LogCorrupt, RecordsDropped
from .format import ZERO_HEADER_REASON, BadFrame, Frame, FrameReader, find_later_write, nonzero_end
from .manifest import MANIFEST_NAME, Manifest, load_manifest


@dataclass(slots=True)
class SegmentStat:
    first_seq: int
    path: str
    size_bytes: int = 0
    records: int = 0
    valid_end_bytes: int = 0     # offset just past the last valid record


@dataclass(slots=True)
class TornTail:
    segment: str
    offset_bytes: int
    dropped_bytes: int
    reason: str


@dataclass(slots=True)
class WalkState:
    """Filled in while walking, so a caller that catches LogCorrupt still sees
    how far the walk got."""
    manifest: Manifest
    last_seq: int = 0
    last_epoch: int = 0
    last_write_index: int = 0
    records: int = 0
    segments: list[SegmentStat] = field(default_factory=list)
    torn: TornTail | None = None


def split_leftovers(path: str, manifest: Manifest, segs: list[tuple[int, str]]
                    ) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """Split segments into (retained, leftovers). Leftovers lie wholly below the
    manifest's first_seq: a drop was interrupted after the manifest was updated."""
    retained, leftovers = [], []
    for i, (first_seq, seg_path) in enumerate(segs):
        next_first = segs[i + 1][0] if i + 1 < len(segs) else None
        if next_first is not None and next_first <= manifest.first_seq:
            leftovers.append((first_seq, seg_path))
        else:
            retained.append((first_seq, seg_path))
    if retained and retained[0][0] != manifest.first_seq:
        raise LogCorrupt(retained[0][1], 0, f"first segment starts at seq {retained[0][0]} "
                         f"but the manifest says the log starts at seq {manifest.first_seq}")
    if not retained and manifest.first_seq != 1:
        raise LogCorrupt(os.path.join(path, MANIFEST_NAME), 0,
                         f"manifest says the log starts at seq {manifest.first_seq} "
                         "but there are no segments")
    return retained, leftovers


def walk(path: str, state: WalkState, retained: list[tuple[int, str]], *,
         from_seq: int = 1, through_seq: int | None = None, live: bool = False,
         start: tuple[int, int] | None = None) -> Iterator[tuple[str, Frame]]:
    """Validate the retained segments in order, yielding (segment path, frame) for
    records with from_seq <= seq <= through_seq. Segments wholly before from_seq
    are skipped unread. Raises LogCorrupt on damage before the tail; a torn tail
    ends the walk and is recorded in state.torn.

    start: (first seq of a segment, byte offset) where record from_seq begins in it,
    as a follower that read up to there knows: that segment is read from the offset,
    not validated from its start (the seq check still refuses a wrong offset).

    live=True: another process may be writing; a record epoch newer than the
    manifest read earlier is checked against a fresh manifest, and a missing
    segment means it was dropped meanwhile."""
    if live and len(retained) > 1:
        # A new holder stores its fence in the manifest before it creates the fence
        # segment: the manifest read before the segments were listed may predate it.
        # Only its fences are taken: the segment list matches the earlier first_seq.
        fresh = load_manifest(path)
        if fresh is not None and not set(fresh.fences) <= set(state.manifest.fences):
            state.manifest = dataclasses.replace(
                state.manifest, fences=tuple(sorted(set(state.manifest.fences) | set(fresh.fences))))
    expected = state.manifest.first_seq
    state.last_seq = expected - 1
    for i, (first_seq, seg_path) in enumerate(retained):
        is_last = i == len(retained) - 1
        if first_seq != expected:
            raise LogCorrupt(seg_path, 0, f"segment starts at seq {first_seq} but the "
                             f"previous segment ended at seq {expected - 1}")
        if not is_last and retained[i + 1][0] <= from_seq:
            expected = retained[i + 1][0]
            state.last_seq = expected - 1
            continue
        try:
            fd = os.open(seg_path, os.O_RDONLY)
        except FileNotFoundError:
            if live:
                raise RecordsDropped(f"segment {seg_path} was dropped while reading") from None
            raise
        try:
            stat = SegmentStat(first_seq, seg_path, os.fstat(fd).st_size)
            state.segments.append(stat)
            fenced_at = 0 if is_last or retained[i + 1][0] not in state.manifest.fences else retained[i + 1][0]
            offset = 0
            if start is not None and start[0] == first_seq and start[1] > 0:
                offset = stat.valid_end_bytes = start[1]
                state.last_seq = from_seq - 1
            for frame in _walk_segment(path, state, stat, fd, is_last, live, fenced_at, offset):
                if through_seq is not None and frame.seq > through_seq:
                    return
                if frame.seq >= from_seq:
                    yield seg_path, frame
        finally:
            os.close(fd)
        if stat.records == 0 and not is_last and not offset:
            raise LogCorrupt(seg_path, 0, "empty sealed segment")
        expected = state.last_seq + 1


def _walk_segment(path: str, state: WalkState, stat: SegmentStat, fd: int,
                  is_last: bool, live: bool, fenced_at: int = 0, offset: int = 0) -> Iterator[Frame]:
    """fenced_at: the next segment is a fence (log/FORMAT.md): this one is valid up
    to seq fenced_at - 1 and what a deposed writer left after that is not read.
    offset: where to start (a record boundary; 0: the segment's start)."""
    reader = FrameReader(fd, offset)
    while True:
        if fenced_at and state.last_seq == fenced_at - 1:
            return
        item = reader.next()
        if item is None:
            stat.size_bytes = max(stat.size_bytes, reader.pos)
            return
        expected = state.last_seq + 1
        if isinstance(item, BadFrame):
            if not is_last:
                raise LogCorrupt(stat.path, item.offset, f"{item.reason} (expected seq "
                                 f"{expected}) in a sealed segment")
            if item.reason == ZERO_HEADER_REASON and (live or nonzero_end(fd, item.offset) == item.offset):
                # The preallocated rest of the active segment: the end, not a torn tail. A
                # live reader does not scan it (it is the usual state of a live log's end);
                # recovery checked it is all zeros.
                stat.size_bytes = item.offset
                return
            later = find_later_write(fd, item.offset, expected)
            if later is not None:
                # A live writer may have completed the record after we read it: read
                # it again (these bytes are read after the later write was seen).
                if isinstance(FrameReader(fd, item.offset).next(), Frame):
                    reader = FrameReader(fd, item.offset)
                    continue
                raise LogCorrupt(stat.path, item.offset, f"{item.reason} (expected seq "
                                 f"{expected}); a later write holds seq {later.seq} at "
                                 f"offset {later.offset}, so this is not a torn tail")
            size = os.fstat(fd).st_size
            stat.size_bytes = size
            state.torn = TornTail(stat.path, item.offset, size - item.offset, item.reason)
            return
        _check_frame(path, state, stat, item, expected, live)
        state.last_seq = item.seq
        state.last_epoch = item.epoch
        state.last_write_index = item.write_index
        state.records += 1
        stat.records += 1
        stat.valid_end_bytes = item.end
        yield item


def _check_frame(path: str, state: WalkState, stat: SegmentStat, frame: Frame,
                 expected: int, live: bool) -> None:
    # A walk started at an offset (walk's start) may begin inside a write: its first
    # record continues records read before, which the caller validated.
    started_inside = stat.records == 0 and stat.valid_end_bytes > 0
    if frame.write_index != 0 and not started_inside and (stat.records == 0 or
                                                          frame.write_index != state.last_write_index + 1):
        raise LogCorrupt(stat.path, frame.offset, f"seq {frame.seq} has write_index "
                         f"{frame.write_index}, which does not continue a write")
    if frame.seq != expected:
        raise LogCorrupt(stat.path, frame.offset,
                         f"sequence gap: expected seq {expected}, found seq {frame.seq}")
    if frame.epoch < state.last_epoch:
        raise LogCorrupt(stat.path, frame.offset, f"seq {frame.seq} has epoch {frame.epoch}, "
                         f"older than the previous record's epoch {state.last_epoch}")
    if frame.epoch > state.manifest.epoch and live:
        fresh = load_manifest(path)
        if fresh is not None:
            state.manifest = fresh
    if frame.epoch > state.manifest.epoch:
        raise LogCorrupt(stat.path, frame.offset, f"seq {frame.seq} has epoch {frame.epoch}, "
                         f"newer than the manifest's epoch {state.manifest.epoch}")
