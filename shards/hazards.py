"""Read hazards and held replies: which replies may leave before the log record
they depend on is durable (DESIGN invariants 1 and 2).

Every key changed by a record that is not yet durable is "dirty" with that
record's sequence number. A reply must wait for the sequence number of the
record holding its own effects, or of the newest pending record that touched a
key it read. Keyless reads wait for everything pending. The bookkeeping holds
only keys of records in flight, so it is bounded by the unsynced window.
"""

from __future__ import annotations

from typing import Protocol


class HazardTracker:
    """Dirty keys and the seq each waits for. One dict store per changed key: a
    key is dropped when its record is durable, by clearing the dict when
    everything pending is durable (the usual case: one fsync covers every record
    appended before it began) or else by one pass over the keys still dirty, each
    of which is visited at most once per fsync while it is pending."""

    __slots__ = ("dirty", "durable_seq", "newest_seq", "all_dirty_seq")

    def __init__(self, durable_seq: int) -> None:
        self.dirty: dict[bytes, int] = {}
        self.all_dirty_seq = 0  # a pending record changed every key (FLUSHALL)
        self.durable_seq = durable_seq
        self.newest_seq = durable_seq  # newest seq any dirty key or pending record carries

    def mark(self, key: bytes, seq: int) -> None:
        """key changed by the record that will get `seq`."""
        self.dirty[key] = seq
        if seq > self.newest_seq:
            self.newest_seq = seq

    def mark_all(self, seq: int) -> None:
        """Every key changed by the record that will get `seq`."""
        self.all_dirty_seq = seq
        if seq > self.newest_seq:
            self.newest_seq = seq

    def wait_seq(self, keys: list[bytes] | tuple[bytes, ...]) -> int:
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
        dirty = self.dirty
        if not dirty:
            return
        if durable_seq >= self.newest_seq:
            dirty.clear()
        else:
            self.dirty = {key: seq for key, seq in dirty.items() if seq > durable_seq}

    def pending_keys(self) -> int:
        return len(self.dirty)


class ReplySink(Protocol):
    """Where a shard's replies go: a router connection (shards/process.py), or a
    test's stand-in. Held replies keep it until their record is durable."""

    def send(self, replies: list[tuple[int, bytes]]) -> None: ...


class HeldReplies:
    """Replies waiting for a sequence number to become durable: per seq, per
    connection, a list ready to send. Released in seq order, one list per
    connection (the common case, every reply of one fsync for one router, passes
    its list through untouched)."""

    __slots__ = ("_by_seq", "count")

    def __init__(self) -> None:
        self._by_seq: dict[int, dict[ReplySink, list[tuple[int, bytes]]]] = {}
        self.count = 0

    def hold(self, seq: int, conn: ReplySink, rid: int, data: bytes) -> None:
        self.hold_many(seq, conn, [(rid, data)])

    def hold_many(self, seq: int, conn: ReplySink, replies: list[tuple[int, bytes]]) -> None:
        """Hold `replies` (in order) for conn until seq is durable; the list is kept."""
        by_conn = self._by_seq.get(seq)
        if by_conn is None:
            self._by_seq[seq] = {conn: replies}
        else:
            held = by_conn.get(conn)
            if held is None:
                by_conn[conn] = replies
            else:
                held.extend(replies)
        self.count += len(replies)

    def release_through(self, durable_seq: int) -> list[tuple[ReplySink, list[tuple[int, bytes]]]]:
        """Every connection's replies held for seqs <= durable_seq, in seq order."""
        by_seq = self._by_seq
        ready = [seq for seq in by_seq if seq <= durable_seq]
        if not ready:
            return []
        if len(ready) == 1:
            merged = by_seq.pop(ready[0])
        else:
            ready.sort()
            merged = {}
            for seq in ready:
                for conn, replies in by_seq.pop(seq).items():
                    out = merged.get(conn)
                    if out is None:
                        merged[conn] = replies
                    else:
                        out.extend(replies)
        for replies in merged.values():
            self.count -= len(replies)
        return list(merged.items())
