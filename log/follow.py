"""A follower of a live log (log/interface.py's LogFollower for local segments): what
a replica tails. It sees only records the current holder published as durable in
LEASE (log/lease.py), reads them incrementally (it keeps its file and offset, so a
tail costs what is new, not a rescan of the segment), and switches to the next
segment where one starts at the seq it wants next, so the bytes a deposed writer
left after a fence are never read (log/FORMAT.md, "Leases and fencing")."""

from __future__ import annotations

import os
import time
from typing import Iterator

from .errors import LogCorrupt, RecordsDropped
from .format import BadFrame, FrameReader
from .interface import LeaseState, Record
from .lease import LeaseFile
from .manifest import list_segments, load_manifest

WAIT_POLL_S = 0.001   # wait_durable's poll of the mmap'd LEASE


class Follower:
    """Durable records of the log at `path`, from any process, without a lock."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self._lease = LeaseFile(self.path)
        self._seen_durable = 0
        self._fd = -1
        self._reader: FrameReader | None = None
        self._seg_first = 0
        self._next_seq = 0        # the seq self._reader stands at (0: no position)

    def durable_seq(self) -> int:
        seq = self._lease.durable_seq()
        if seq > self._seen_durable:
            self._seen_durable = seq
        return self._seen_durable

    def lease(self) -> LeaseState:
        return self._lease.state()

    def wait_durable(self, after_seq: int, timeout_ms: int) -> int:
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            seq = self.durable_seq()
            if seq > after_seq or time.monotonic() >= deadline:
                return seq
            time.sleep(WAIT_POLL_S)

    def read(self, from_seq: int, through_seq: int) -> Iterator[Record]:
        if through_seq > self.durable_seq():
            raise ValueError(f"through_seq {through_seq} is past the durable seq {self._seen_durable}")
        if from_seq > through_seq:
            return
        segs = list_segments(self.path)
        if from_seq != self._next_seq or self._reader is None:
            self._position(from_seq, segs)
        seq = from_seq
        while seq <= through_seq:
            self._maybe_switch(seq, segs)
            assert self._reader is not None
            item = self._reader.next()
            if item is None or isinstance(item, BadFrame):
                # Its buffer may hold bytes read ahead while they were being written: read again.
                self._reader = FrameReader(self._fd, self._reader.pos)
                item = self._reader.next()
            if item is None or isinstance(item, BadFrame):
                where = "end of file" if item is None else item.reason
                raise LogCorrupt(self._segment_path(), self._reader.pos,
                                 f"durable seq {seq} missing ({where}); durable through {through_seq}")
            if item.seq != seq:
                raise LogCorrupt(self._segment_path(), item.offset,
                                 f"expected seq {seq}, found seq {item.seq}")
            self._next_seq = seq + 1
            yield item.seq, item.epoch, item.payload
            seq += 1

    def next_record_at(self, seq: int) -> tuple[int, int] | None:
        """(first seq of the segment, byte offset) where record `seq` starts, if this
        follower stands just before it (it read seq - 1 last); else None."""
        if self._reader is None or seq != self._next_seq:
            return None
        return self._seg_first, self._reader.pos

    def _segment_path(self) -> str:
        return os.path.join(self.path, f"{self._seg_first:020d}.seg")

    def _maybe_switch(self, seq: int, segs: list[tuple[int, str]]) -> None:
        """Move to the segment starting at `seq`, if there is one: the current one
        is sealed there (and may hold a deposed writer's bytes after it)."""
        for first, seg_path in segs:
            if first == seq and first != self._seg_first:
                self._open(first, seg_path, 0)
                return

    def _position(self, from_seq: int, segs: list[tuple[int, str]]) -> None:
        manifest = load_manifest(self.path)
        first_retained = manifest.first_seq if manifest is not None else 1
        candidates = [(first, p) for first, p in segs if first <= from_seq and first >= first_retained]
        if from_seq < first_retained or not candidates:
            raise RecordsDropped(f"records of {self.path} from seq {from_seq} were dropped "
                                 f"(the log starts at seq {first_retained})")
        first, seg_path = candidates[-1]
        try:
            self._open(first, seg_path, 0)
        except FileNotFoundError:
            raise RecordsDropped(f"segment {seg_path} was dropped while positioning") from None
        reader = self._reader
        assert reader is not None
        seq = first
        while seq < from_seq:
            item = reader.next()
            if item is None or isinstance(item, BadFrame) or item.seq != seq:
                raise LogCorrupt(seg_path, reader.pos, f"cannot reach seq {from_seq}: seq {seq} unreadable")
            seq += 1
        self._next_seq = from_seq

    def _open(self, first: int, seg_path: str, offset: int) -> None:
        fd = os.open(seg_path, os.O_RDONLY | os.O_CLOEXEC)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._seg_first = fd, first
        self._reader = FrameReader(fd, offset)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._reader = None
        self._lease.close()
