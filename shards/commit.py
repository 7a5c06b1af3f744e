"""Group commit: a shard's appended records become durable, held replies leave,
and a failed log write is retried.

The executor (shards/shard.py) turns each batch's effects into one log record
(append_effects); a committer task writes and fsyncs everything pending in a
worker thread while the loop executes the next batch. Replies that depend on a
record not yet durable were held (shards/hazards.py); they are released, one
frame per router connection, when the fsync covering them returns.

A failed log write or fsync (a full disk, an I/O error) makes the shard refuse
writes with MISCONF while it retries, with a capped backoff, to rewrite the records
not yet durable from memory into a fresh segment (Log.retry_failed). Replies held
for those records stay held until the rewrite is durable; then MISCONF clears. The
shard never gives up on its own: a disk that never recovers keeps it read-only.
"""

from __future__ import annotations

import logging
import time
from collections import deque

import trio

from durakv.log import Log, LogWriteFailed
from durakv.shards.config import Config
from durakv.shards.hazards import HazardTracker, HeldReplies, ReplySink
from durakv.shards.keyspace import Keyspace
from durakv.shards.records import RecordClock, encode_record

logger = logging.getLogger("durakv.shard")

WRITE_RETRY_FIRST_MS = 10
WRITE_RETRY_MAX_MS = 1000
WRITE_RETRY_LOG_EVERY = 30  # after the first few, log one failed retry in this many


class GroupCommit:
    """The part of a Shard that makes its records durable. A base class of Shard
    rather than an object it calls: the executor reads write_error, hazards and
    held on every command, and attributes of one object keep that path as cheap
    as it was. The attributes below are set by Shard (__init__, open_log)."""

    index: int
    config: Config
    db: Keyspace
    wal: Log | None
    lease: object
    hazards: HazardTracker
    held: HeldReplies
    async_mode: bool
    write_error: bytes | None
    fsyncs: int
    records_appended: int
    effects_appended: int
    record_clock: RecordClock
    _unsynced_since: deque[tuple[int, float]]
    _commit_wanted: trio.Event

    def append_effects(self) -> None:
        """Turn the effects recorded since the last call into one log record."""
        effects = self.db.effects
        if not effects:
            return
        payload = encode_record(self.record_clock.now_ms(), effects)
        self.effects_appended += len(effects)
        effects.clear()
        seq = self.wal.append([payload], self.wal.tail_seq, self.lease)
        self.records_appended += 1
        if self.async_mode:
            self._unsynced_since.append((seq, time.monotonic()))
        self._commit_wanted.set()

    def _async_window_exceeded(self) -> bool:
        pending = self._unsynced_since
        if not pending:
            return False
        return (time.monotonic() - pending[0][1]) * 1000 > self.config.max_unsynced_ms

    async def committer(self) -> None:
        """Group commit: one write + one fdatasync (in a worker thread) for everything
        pending, while the loop executes the next batch."""
        wal = self.wal
        while True:
            await self._commit_wanted.wait()
            self._commit_wanted = trio.Event()
            while wal.durable_seq < wal.tail_seq:
                try:
                    durable = await trio.to_thread.run_sync(wal.sync)
                except LogWriteFailed as e:
                    durable = await self._recover_writes(e)
                self.fsyncs += 1
                self._on_durable(durable)

    async def _recover_writes(self, error: LogWriteFailed) -> int:
        """Refuse writes with MISCONF and retry the log (Log.retry_failed: the records
        not yet durable are rewritten from memory into a fresh segment) with a capped
        backoff until a retry is durable; then accept writes again. Held replies stay
        held meanwhile: they leave once their records are durable."""
        self._set_write_error(error)
        logger.critical("shard %d: log write failed, refusing writes while retrying: %s",
                     self.index, self._cause(error))
        delay_ms = WRITE_RETRY_FIRST_MS
        attempts = 0
        while True:
            await trio.sleep(delay_ms / 1000)
            attempts += 1
            try:
                durable = await trio.to_thread.run_sync(self.wal.retry_failed)
            except LogWriteFailed as e:
                self._set_write_error(e)
                if attempts < 5 or attempts % WRITE_RETRY_LOG_EVERY == 0:
                    logger.error("shard %d: log retry %d failed: %s", self.index, attempts, self._cause(e))
                delay_ms = min(delay_ms * 2, WRITE_RETRY_MAX_MS)
                continue
            logger.warning("shard %d: log writable again after %d retries; durable through seq %d; "
                        "accepting writes", self.index, attempts, durable)
            self.write_error = None
            return durable

    @staticmethod
    def _cause(error: LogWriteFailed) -> str:
        return str(error.__cause__ or error).replace("\r", " ").replace("\n", " ")

    def _set_write_error(self, error: LogWriteFailed) -> None:
        self.write_error = (b"MISCONF Errors writing to the durable log: " +
                            self._cause(error).encode()[:200] +
                            b". Writes are refused until the shard can write its log again (it "
                            b"retries); writes not yet confirmed are confirmed once it can.")

    def _on_durable(self, durable_seq: int) -> None:
        self.hazards.advance(durable_seq)
        pending = self._unsynced_since
        while pending and pending[0][0] <= durable_seq:
            pending.popleft()
        by_conn: dict[ReplySink, list[tuple[int, bytes]]] = {}
        for conn, rid, data in self.held.release_through(durable_seq):
            by_conn.setdefault(conn, []).append((rid, data))
        for conn, replies in by_conn.items():
            conn.send(replies)
