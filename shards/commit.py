"""Group commit: a shard's appended records become durable, held replies leave,
and a failed log write is retried.

The executor (shards/shard.py) turns each batch's effects into one log record
(append_effects) and wakes the commit thread, a long-lived thread that writes and
fsyncs everything pending (Log.sync) while the loop executes the next batch, and
reports each durable sequence number back to the loop (an eventfd). When the
loop has nothing else to run it syncs itself instead (shards/idle_sync.py): no
thread handoff at all for the common low-pipelining case. Why a
thread of its own: trio.to_thread.run_sync per batch cost a thread handoff, an
Event, a task switch and trio's bookkeeping on every fsync, a large part of a
durable write's CPU at a few writes per batch. Replies that depend on a record
not yet durable were held (shards/hazards.py); they are released, one send per
router connection, when the fsync covering them returns.

A failed log write or fsync (a full disk, an I/O error) parks the commit thread
and makes the shard refuse writes with MISCONF while the committer task retries,
with a capped backoff, to rewrite the records not yet durable from memory into a
fresh segment (Log.retry_failed). Replies held for those records stay held until
the rewrite is durable; then MISCONF clears and the commit thread resumes. The
shard never gives up on its own: a disk that never recovers keeps it read-only.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from typing import Callable

import trio

from durakv.log import LeaseLost, Log, LogWriteFailed
from durakv.log.format import PayloadPieces
from durakv.shards.config import Config
from durakv.shards.hazards import HazardTracker, HeldReplies, ReplySink
from durakv.shards.idle_sync import IdleSync
from durakv.shards.keyspace import Keyspace
from durakv.shards.latency import EVENT_FSYNC, LATENCY_TS_LEN, LatencyMonitor
from durakv.shards.min_replicas import MinReplicas
from durakv.shards.records import RecordClock, encode_record, encode_record_pieces
from durakv.shards.script_effects import release_publishes
from durakv.shards.tracking import plain_events
from durakv.shards.txn import TxnState

logger = logging.getLogger("durakv.shard")

WRITE_RETRY_FIRST_MS = 10
WRITE_RETRY_MAX_MS = 1000
WRITE_RETRY_LOG_EVERY = 30  # after the first few, log one failed retry in this many
COMMIT_THREAD_JOIN_TIMEOUT_S = 30.0


class CommitThread:
    """Runs Log.sync whenever records are pending, in one long-lived thread.

    The loop calls wake() after appending (one C call when the thread is busy or
    already woken). After each durable sync the thread bumps an eventfd the loop
    waits on (durable_fd), so a burst of syncs costs the loop one wakeup and no
    trio machinery; the loop reads the durable seq from the log. Why an eventfd and
    not run_sync_soon: it measured 34 µs of loop CPU per wakeup against 51-61 µs
    (and 95-108 µs for to_thread.run_sync). A failure goes to on_failed, run in the
    loop (run_sync_soon, rare): LogWriteFailed, or any other exception (a bug that
    ended the thread). After a LogWriteFailed the thread parks, touching the log no
    more, until resume() (the loop retried the log meanwhile: Log.retry_failed runs
    where sync runs, never concurrently)."""

    def __init__(self, wal: Log, token: trio.lowlevel.TrioToken, name: str,
                 on_failed: Callable[[BaseException], None], latency: LatencyMonitor | None = None) -> None:
        self._wal = wal
        # LATENCY's aof-fsync-always: the thread notes each sync at or past the threshold
        # (deque appends are thread-safe); the loop moves them into the monitor.
        self._latency = latency
        self.slow_syncs: deque[tuple[int, int]] = deque(maxlen=LATENCY_TS_LEN)  # (unix s, ms)
        self._token = token
        self._on_failed = on_failed
        self.durable_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        # Locks used as binary signals: locked means "nothing to do"; only the loop
        # releases them (so checking locked() first never races) and only the thread
        # acquires them.
        self._wake = threading.Lock()
        self._wake.acquire()
        self._resume = threading.Lock()
        self._resume.acquire()
        # Held by whoever runs Log.sync: this thread, or the loop when it syncs while
        # idle (sync_in_loop; shards/idle_sync.py). Log.sync must never run twice at once.
        self._syncing = threading.Lock()
        # After a LogWriteFailed (here or in the loop) nobody syncs until resume().
        self.parked = False
        self._thread_parked = False  # the thread waits on _resume (set before on_failed runs)
        self.syncs_in_loop = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Records were appended: sync them (at once, or after the sync under way)."""
        if self._wake.locked():
            self._wake.release()

    def resume(self) -> None:
        """The log was retried successfully: sync again."""
        self.parked = False
        if self._thread_parked:
            self._thread_parked = False
            self._resume.release()

    def sync_in_loop(self) -> bool:
        """From the loop, when it has nothing else to run: sync here, without waking
        the thread (no GIL handoffs). Returns whether it synced; False when the thread
        is woken or syncing (it covers these records too) or the log failed (the
        committer retries it). A failure goes to on_failed as the thread's does: a
        LogWriteFailed is retried, anything else (a bug) ends the committer."""
        if self.parked or not self._wake.locked() or not self._syncing.acquire(blocking=False):
            return False
        try:
            self._wal.sync()
        except Exception as e:
            self.parked = True
            self._on_failed(e)
            return False
        finally:
            self._syncing.release()
        self.syncs_in_loop += 1
        self._note_latency()
        return True

    def _note_latency(self) -> None:
        latency = self._latency
        if latency is not None and latency.threshold_ms \
                and self._wal.last_fsync_latency_us >= latency.threshold_ms * 1000:
            self.slow_syncs.append((int(time.time()), self._wal.last_fsync_latency_us // 1000))

    def stop(self) -> None:
        """Let a sync under way finish, then end the thread. The loop must no longer
        wait on durable_fd."""
        self._stopping = True
        self.wake()
        self.resume()
        self._thread.join(COMMIT_THREAD_JOIN_TIMEOUT_S)
        if self._thread.is_alive():
            logger.error("%s: still inside a log sync after %.0f s; leaving it", self._thread.name,
                         COMMIT_THREAD_JOIN_TIMEOUT_S)
            return
        os.close(self.durable_fd)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        wal = self._wal
        durable_fd = self.durable_fd
        syncing = self._syncing
        try:
            while True:
                self._wake.acquire()
                while not self._stopping and not self.parked and wal.durable_seq < wal.tail_seq:
                    with syncing:
                        before = wal.durable_seq
                        try:
                            wal.sync()
                        except LogWriteFailed as e:
                            self.parked = self._thread_parked = True  # before the loop can resume()
                            self._token.run_sync_soon(self._on_failed, e)
                            failed = True
                        else:
                            failed = False
                    if failed:
                        self._resume.acquire()
                        continue
                    if wal.durable_seq == before:
                        continue  # the loop synced these meanwhile (sync_in_loop) and took the news
                    self._note_latency()
                    os.eventfd_write(durable_fd, 1)
                if self._stopping:
                    return
        except trio.RunFinishedError:
            return  # the shard's loop ended under us: nobody is left to tell
        except BaseException as e:  # a bug: the committer task raises it, which ends the shard
            try:
                self._token.run_sync_soon(self._on_failed, e)
            except trio.RunFinishedError:
                logger.critical("%s failed after the shard's loop ended", self._thread.name, exc_info=True)


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
    latency: LatencyMonitor
    _unsynced_since: deque[tuple[int, float]]
    held_events: deque[tuple[int, list[tuple[bytes, bytes]]]]
    event_sinks: dict[ReplySink, Callable[[list[tuple[bytes, bytes]]], None]]
    tracking_fronts: set[ReplySink]
    _commit_thread: CommitThread | None
    min_replicas: MinReplicas | None
    idle_sync: IdleSync | None
    _commit_failed: trio.Event | None
    _commit_error: BaseException | None
    txn: TxnState

    # Set by whoever passes execute_batch a big argument (shards/process.py, server/node.py):
    # the next record is built with big values left in their own buffers.
    big_values_pending = False
    # db.changes (shards/changes.py) through the last record appended: the next one logs the rest.
    changes_logged = 0

    def append_effects(self) -> None:
        """Turn the effects recorded since the last call into one log record."""
        effects = self.db.effects
        marks = self.txn.marks
        if not effects and not marks:
            return
        payload: bytes | PayloadPieces
        changes = self.db.changes
        record_changes = changes - self.changes_logged
        self.changes_logged = changes
        if self.big_values_pending:
            self.big_values_pending = False
            payload = encode_record_pieces(self.record_clock.now_ms(), effects, marks, record_changes)
        else:
            payload = encode_record(self.record_clock.now_ms(), effects, marks, record_changes)
        self.effects_appended += len(effects)
        effects.clear()
        if marks:
            self.txn.marks = []
        seq = self.wal.append((payload,), self.wal.tail_seq, self.lease)
        self.records_appended += 1
        if self.async_mode:
            self._unsynced_since.append((seq, time.monotonic()))
        thread = self._commit_thread
        if thread is not None:
            idle = self.idle_sync
            if idle is not None:
                idle.appended()
            else:
                thread.wake()

    def _async_window_exceeded(self) -> bool:
        pending = self._unsynced_since
        if not pending:
            return False
        return (time.monotonic() - pending[0][1]) * 1000 > self.config.max_unsynced_ms

    async def committer(self) -> None:
        """Group commit: run the commit thread (one write + one fdatasync for
        everything pending, while the loop executes the next batch), release what
        each sync made durable and, when a log write fails, retry. Stops the thread
        when cancelled."""
        assert self._commit_thread is None, "one committer per shard"
        self._commit_failed = trio.Event()
        thread = self._commit_thread = CommitThread(
            self.wal, trio.lowlevel.current_trio_token(), f"shard {self.index} commit",
            self._on_commit_failed, self.latency)
        thread.start()
        try:
            if self.wal.durable_seq < self.wal.tail_seq:
                thread.wake()  # appended before the thread existed
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._retry_failed_writes, thread)
                if not self.async_mode and isinstance(self.wal, Log) and self.wal.durable_write_in_one_call:
                    self.idle_sync = IdleSync(self.wal, thread, lambda: self._durable(thread))
                    nursery.start_soon(self.idle_sync.run)
                durable_fd = thread.durable_fd
                while True:
                    await trio.lowlevel.wait_readable(durable_fd)
                    try:
                        os.eventfd_read(durable_fd)
                    except BlockingIOError:
                        continue  # catch_up_durable took it
                    self._durable(thread)
        finally:
            self._commit_thread = self.idle_sync = None
            trio.lowlevel.notify_closing(thread.durable_fd)  # stop() closes it
            thread.stop()

    def sync_places(self) -> dict[str, int]:
        """Where this shard's syncs ran (INFO persistence): in the loop (at the end of a
        client poller's turn, or once trio found it idle), the rest in the commit thread."""
        thread, idle = self._commit_thread, self.idle_sync
        return {"fsyncs_in_loop": thread.syncs_in_loop if thread is not None else 0,
                "fsyncs_at_turn_end": idle.synced_at_turn_end if idle is not None else 0}

    def _durable(self, thread: CommitThread) -> None:
        self._on_durable(self.wal.durable_seq)
        slow = thread.slow_syncs
        while slow:
            at_s, ms = slow.popleft()
            self.latency.add_sample(EVENT_FSYNC, ms, at_s)

    def catch_up_durable(self) -> None:
        """Before a batch: if a sync finished while the loop was busy, take its news
        now (the eventfd too, so the committer task is not woken for it): held
        replies leave a turn sooner and this batch's reads of those keys need not
        wait. Records of an earlier batch still pending mean the loop was not idle
        since: the commit thread syncs them now (shards/idle_sync.py). Costs two
        attribute comparisons when nothing is pending."""
        thread = self._commit_thread
        if thread is None:
            return
        if self.wal.tail_seq > self.wal.durable_seq and self.idle_sync is not None:
            self.idle_sync.before_batch()
        if self.wal.durable_seq <= self.hazards.durable_seq:
            return
        try:
            os.eventfd_read(thread.durable_fd)
        except BlockingIOError:
            pass  # the thread advanced durable_seq and has not bumped the eventfd yet
        self._durable(thread)

    async def _retry_failed_writes(self, thread: CommitThread) -> None:
        while True:
            await self._commit_failed.wait()
            self._commit_failed = trio.Event()
            error = self._commit_error
            if isinstance(error, LeaseLost):
                raise error  # deposed (the log on etcd): the shard stops; nothing unsynced was acknowledged
            if not isinstance(error, LogWriteFailed):
                raise RuntimeError(f"shard {self.index}: the commit thread failed") from error
            self._on_durable(await self._recover_writes(error))
            thread.resume()

    def _on_commit_failed(self, error: BaseException) -> None:
        """From the commit thread (in the loop): it parked; the committer retries."""
        self._commit_error = error
        self._commit_failed.set()

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

    def publish_events(self, events: list[tuple[bytes, bytes]]) -> None:
        """Keyspace notifications whose writes are durable, to every router and the node;
        the changed keys for CLIENT TRACKING only to those that asked (shards/tracking.py)."""
        if self.db.scripting is not None:  # scripts' PUBLISHes wait here until durable (shards/script_effects.py)
            events = release_publishes(self.db.scripting, events)
            if not events:
                return
        tracking = self.tracking_fronts
        if not tracking:
            for sink in self.event_sinks.values():
                sink(events)
            return
        plain = None
        for conn, sink in self.event_sinks.items():
            if conn in tracking:
                sink(events)
                continue
            if plain is None:
                plain = plain_events(events)
            if plain:
                sink(plain)

    def _on_durable(self, durable_seq: int) -> None:
        """Records through durable_seq are on stable storage: their keys are clean and
        the replies held for them leave, one send per connection."""
        self.fsyncs = self.wal.fsync_count
        self.hazards.advance(durable_seq)
        pending = self._unsynced_since
        while pending and pending[0][0] <= durable_seq:
            pending.popleft()
        held_events = self.held_events
        while held_events and held_events[0][0] <= durable_seq:  # before the replies, as Redis does
            self.publish_events(held_events.popleft()[1])
        if self.held.count:
            self.release_held(durable_seq)

    def release_held(self, durable_seq: int) -> None:
        """Send the replies held for records through durable_seq (durable, and the
        loop has handed out their events), or only as far as min-replicas-to-write
        lets them go (shards/min_replicas.py)."""
        if self.min_replicas is not None:
            durable_seq = self.min_replicas.release_seq(durable_seq)
        for conn, replies in self.held.release_through(durable_seq):
            conn.send(replies)
