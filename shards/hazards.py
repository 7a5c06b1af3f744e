"""Read hazards and held replies: which replies may leave before the log record
they depend on is durable (DESIGN invariants 1 and 2).

Every key changed by a record that is not yet durable is "dirty" with that
record's sequence number. A reply must wait for the sequence number of the
record holding its own effects, or of the newest pending record that touched a
key it read. Keyless reads wait for everything pending. The bookkeeping holds
only keys of records in flight, so it is bounded by the unsynced window.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol


class HazardTracker:
    __slots__ = ("dirty", "_by_seq", "durable_seq", "newest_seq", "all_dirty_seq")

    def __init__(self, durable_seq: int) -> None:
        self.dirty: dict[bytes, int] = {}
        self.all_dirty_seq = 0  # a pending record changed every key (FLUSHALL)
        self._by_seq: deque[tuple[int, list[bytes]]] = deque()
        self.durable_seq = durable_seq
        self.newest_seq = durable_seq  # newest seq any dirty key or pending record carries

    def mark(self, key: bytes, seq: int) -> None:
        """key changed by the record that will get `seq`."""
        dirty = self.dirty
        if dirty.get(key) != seq:
            dirty[key] = seq
            by_seq = self._by_seq
            if by_seq and by_seq[-1][0] == seq:
                by_seq[-1][1].append(key)
            else:
                assert not by_seq or by_seq[-1][0] < seq, "records must be marked in sequence order"
                by_seq.append((seq, [key]))
        if seq > self.newest_seq:
            self.newest_seq = seq

    def mark_all(self, seq: int) -> None:
        """Every key changed by the record that will get `seq`."""
        self.all_dirty_seq = seq
        if seq > self.newest_seq:
            self.newest_seq = seq

    def wait_seq(self, keys: list[bytes]) -> int:
        """The seq a reply that read `keys` must wait for (0: none)."""
        dirty = self.dirty
        worst = self.all_dirty_seq if self.all_dirty_seq > self.durable_seq else 0
        if not dirty:
            return worst
        for key in keys:
            seq = dirty.get(key, 0)
            if seq > worst:
                worst = seq
        return worst

    def wait_all(self) -> int:
        """The seq a keyless read must wait for: everything pending."""
        return self.newest_seq if self.newest_seq > self.durable_seq else 0

    def advance(self, durable_seq: int) -> None:
        """Records up to durable_seq are on stable storage: their keys are clean."""
        assert durable_seq >= self.durable_seq, "durable sequence number went backwards"
        self.durable_seq = durable_seq
        by_seq = self._by_seq
        dirty = self.dirty
        while by_seq and by_seq[0][0] <= durable_seq:
            seq, keys = by_seq.popleft()
            for key in keys:
                if dirty.get(key) == seq:
                    del dirty[key]

    def pending_keys(self) -> int:
        return len(self.dirty)


class ReplySink(Protocol):
    """Where a shard's replies go: a router connection (shards/process.py), or a
    test's stand-in. Held replies keep it until their record is durable."""

    def send(self, replies: list[tuple[int, bytes]]) -> None: ...


class HeldReplies:
    """Replies waiting for a sequence number to become durable, released in
    batches (one frame per router connection)."""

    __slots__ = ("_by_seq", "count")

    def __init__(self) -> None:
        self._by_seq: dict[int, list[tuple[object, int, bytes]]] = {}
        self.count = 0

    def hold(self, seq: int, conn: object, rid: int, data: bytes) -> None:
        bucket = self._by_seq.get(seq)
        if bucket is None:
            bucket = self._by_seq[seq] = []
        bucket.append((conn, rid, data))
        self.count += 1

    def release_through(self, durable_seq: int) -> list[tuple[object, int, bytes]]:
        ready_seqs = [seq for seq in self._by_seq if seq <= durable_seq]
        out: list[tuple[object, int, bytes]] = []
        for seq in sorted(ready_seqs):
            out.extend(self._by_seq.pop(seq))
        self.count -= len(out)
        return out
