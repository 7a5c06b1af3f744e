"""A shard: owns a range of hash slots and their keyspace, executes frames of
commands from the routers, and makes every acknowledged write durable in its log
before the reply leaves.

A frame is executed as one batch; the batch's effects become one log record,
which the group commit (shards/commit.py) makes durable while the loop executes
the next batch. Replies that depend on a record not yet durable (its own writes,
or reads of keys it dirtied) are held until the fsync covering it returns. The
process around it (sockets, background tasks) is shards/process.py.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections import deque
from typing import TYPE_CHECKING, Callable, Protocol, cast

import trio

import durakv.shards.commands  # noqa: F401  (registers every shard command)
from durakv.log import Log
from durakv.log.layout import shard_dir
from durakv.shards import internal
from durakv.shards.acl import MAX_SCRIPT_DENIALS, user_from_rules, with_denials
from durakv.shards.changes import replayed
from durakv.shards.command_stats import CommandStats
from durakv.shards.commit import GroupCommit
from durakv.shards.config import Config
from durakv.shards.disk_hooks import HookedDisk, shard_disk
from durakv.shards.context import Ctx
from durakv.shards.engine import replay
from durakv.shards.evict import EXECABORT_OOM, OOM_MESSAGE, MemoryLimit
from durakv.shards.oom_flags import OomFlags
from durakv.shards.frames import (
    INTERNAL_PREFIX, UNCOPIED_REPLY_BYTES, VERB_AS_USER, VERB_EXEC, VERB_LITERAL, Pieces, encode_internal,
)
from durakv.shards.hazards import HazardTracker, HeldReplies, ReplySink
from durakv.shards.blocking import Block, BlockedClients, Waiter
from durakv.shards.chunked import CHUNKABLE, ChunkedArray, ChunkStats, as_chunked, send_chunked
from durakv.shards.access import Lfu
from durakv.shards.keyspace import Keyspace, now_ms
from durakv.shards.log_backend import etcd_upkeep, is_etcd_log, open_shard_log, take_shard_lease, uses_etcd
from durakv.shards.records import RecordClock, decode_record
from durakv.shards.resp import NULL_ARRAY, Raw, ReplyError, encode, encode_error
from durakv.shards.script_undo import NONLOCAL_RETRY
from durakv.shards.shard_settings import SHARD_DEFAULTS
from durakv.shards.slots import slot_ranges
from durakv.shards.latency import FAST_INDEX_US, INDEX_BY_US, LatencyMonitor
from durakv.shards.lease_guard import EtcdLeaseGuard, LeaseGuard, refuse_batch
from durakv.shards.min_replicas import EXECABORT_NOREPLICAS, MinReplicas, transaction_writes
from durakv.shards.slowlog import SCRIPT_CLIENT_ADDR, SlowLog
from durakv.shards.t_multi import Watches, unpack_transaction
from durakv.shards.tracking import flush_event, invalidation, set_front
from durakv.shards.txn import TXN_VERBS, TxnState
from durakv.shards.table import BY_NAME, Command, find, lookup, merge_arrays

if TYPE_CHECKING:
    from durakv.shards.replica import Replica

logger = logging.getLogger("durakv.shard")

REPLAY_PROGRESS_INTERVAL_S = 1.0
RELEASE_POLL_S = 1.0
# Batches of keyspace notifications waiting for their record's fsync: one per batch
# executed meanwhile, so far more than a loop runs between two fsyncs.
MAX_HELD_EVENT_BATCHES = 1_000_000


class SnapshotHooks(Protocol):
    """What the snapshot layer offers a shard (snapshotter/shard_hooks.py). It is
    passed in by the process entry point, so shards/ never imports snapshotter/
    (which builds on shards/)."""

    def prepare_shard_dir(self, shard_dir: str, shard: int, shards: int, snapshot_url: str) -> bool: ...

    def fetch_start_snapshot(self, shard_dir: str, shard: int, wal: Log, snapshot_url: str, data_dir: str) -> None: ...

    def load_start_snapshot(self, shard_dir: str, db: Keyspace, wal: Log) -> int: ...

    def load_replica_start(self, shard_dir: str, db: Keyspace, wal: Log, shard: int, shards: int,
                           snapshot_url: str, data_dir: str, scratch_dir: str) -> int: ...

    def release_segments(self, shard_dir: str, wal: Log, snapshot_url: str = "") -> list[str]: ...


class Shard(GroupCommit):
    def __init__(self, config: Config, index: int, snapshots: SnapshotHooks | None = None) -> None:
        self.config = config
        self.snapshots = snapshots
        self.index = index
        self.slot_range = slot_ranges(config.shards)[index]
        self.dir = shard_dir(config.data_dir, index)
        self.db = Keyspace()
        self.ctx = Ctx(self.db, self)
        # maxmemory (shards/evict.py): measured from here, an empty shard; enforced
        # (memory_limit set) only while maxmemory is configured: the routers give a
        # shard the config file's maxmemory and policy with CONFIG SET's changes.
        self.memory = MemoryLimit(config.shards, self.slot_range, self._log_buffered_bytes)
        self.oom_flags = OomFlags(config.data_dir)
        self.published_oom = False
        self.memory_limit: MemoryLimit | None = None
        # Who hears this shard's keyspace notifications: each router connection, its node
        # (by the connection its requests come on).
        self.event_sinks: dict[ReplySink, Callable[[list[tuple[bytes, bytes]]], None]] = {}
        self.held_events: deque[tuple[int, list[tuple[bytes, bytes]]]] = deque()  # (seq, events) until durable
        self.tracking_fronts: set[ReplySink] = set()  # fronts with CLIENT TRACKING clients (shards/tracking.py)
        self.settings = dict(SHARD_DEFAULTS)
        # Shards take slowlog id slots 0..S-1, routers S..S+R-1 (shards/slowlog.py).
        self.slowlog = SlowLog(index, config.shards + config.routers)
        self.configure_slowlog()
        self.latency = LatencyMonitor()  # LATENCY events and histograms (shards/latency.py)
        self.stats: dict[str, CommandStats] = {}
        self.started_at = time.time()
        self.total_commands = 0
        self.chunk_stats = ChunkStats()  # big array replies encoded across turns (shards/chunked.py)
        self.routers = 0
        self.wal: Log | None = None
        self.lease = None
        # With replicas or on etcd: the log lease, renewed in the background and checked before
        # a batch runs, so a primary past its lease answers nothing (shards/lease_guard.py).
        self.lease_guard: LeaseGuard | EtcdLeaseGuard | None = None
        self.replica: Replica | None = None  # while this process is a replica (shards/replica.py)
        self.hazards = HazardTracker(0)
        self.held = HeldReplies()
        self.async_mode = config.durability == "async"
        self._unsynced_since: deque[tuple[int, float]] = deque()  # (seq, monotonic time appended)
        self._commit_thread = None
        self.idle_sync = None
        self._commit_failed = None
        self._commit_error = None
        self.write_error: bytes | None = None
        # min-replicas-to-write (shards/min_replicas.py): NOREPLICAS while writes are refused.
        self.noreplicas: bytes | None = None
        self.min_replicas: MinReplicas | None = None
        self.fsyncs = 0
        self.records_appended = 0
        self.record_clock = RecordClock()
        self.effects_appended = 0
        self.replayed_records = 0
        self.watches = Watches()
        self.blocked = BlockedClients()
        self._blocked_wake = trio.Event()
        self.txn = TxnState(self)
        self.txn_busy = False  # keys are locked or requests wait for locks (shards/txn.py)
        # The batch running is a router's and this shard does not own every slot: its scripts
        # keep an undo record, to run again across shards if they reach another shard's key.
        self.scripts_undo = False
        self.batch_conn: ReplySink | None = None

    # --- startup ----------------------------------------------------------------

    def replay_record(self, seq: int, payload: bytes) -> None:
        """Apply one log record's effects (startup replay, and a replica following the log)."""
        record = decode_record(payload)
        replay(self.ctx, record.effects)
        replayed(self.db, record)
        if record.txns:
            self.txn.replayed(seq, record.txns)
        self.record_clock.last_ms = record.written_at_ms

    def open_log(self, base_seq: int | None = None, takeover_wait_ms: int = 0,
                 next_record_at: tuple[int, int] | None = None) -> None:
        """Open the log (exclusively), rebuild the keyspace from the newest local
        snapshot plus the log after it, take the lease. base_seq: the keyspace already
        holds the log through it (a replica being promoted); takeover_wait_ms: fence a
        primary that still runs once its lease expired (log/FORMAT.md)."""
        snapshots = self.snapshots
        if snapshots is not None and base_seq is None and not uses_etcd(self.config):
            snapshots.prepare_shard_dir(self.dir, self.index, self.config.shards, self.config.snapshot_url)
        disk = shard_disk(self.config, self.index)
        # run_shard made DIR/shard-NNN (the journaling test disk lives in it): it counts only
        # once the data dir is fsync'd; every start does it, in case a crash came between.
        disk.fsync_dir(self.config.data_dir)
        self.wal = open_shard_log(self.config, self.index, self.dir, disk, takeover_wait_ms=takeover_wait_ms,
                                  read_through_seq=base_seq or 0, next_record_at=next_record_at)
        holder = f"shard-{self.index} pid {os.getpid()}"
        if is_etcd_log(self.wal):   # campaign first: then the log read below is all of it
            self.lease = take_shard_lease(self.config, self.wal, holder)
        truncated = self.wal.recovery.truncated_bytes
        if truncated:
            logger.warning("shard %d: torn log tail: truncated %d bytes", self.index, truncated)
        started = time.monotonic()
        last_report = started
        count = 0
        if base_seq is None and snapshots is not None and uses_etcd(self.config):
            snapshots.fetch_start_snapshot(self.dir, self.index, self.wal, self.config.snapshot_url,
                                           self.config.data_dir)
        if base_seq is None:
            base_seq = snapshots.load_start_snapshot(self.dir, self.db, self.wal) if snapshots is not None else 0
        for _seq, _epoch, payload in self.wal.read(base_seq + 1):
            self.replay_record(_seq, payload)
            count += 1
            now = time.monotonic()
            if now - last_report >= REPLAY_PROGRESS_INTERVAL_S:
                logger.info("shard %d: replaying log: %d records (%.0f records/s)",
                         self.index, count, count / (now - started))
                last_report = now
        elapsed = max(time.monotonic() - started, 1e-9)
        self.replayed_records = count
        self.db.effects.clear()
        self.changes_logged = self.db.changes
        self.txn.lock_in_doubt()
        tail = self.wal.tail_seq
        self.hazards = HazardTracker(tail)
        if is_etcd_log(self.wal):
            self.lease_guard = EtcdLeaseGuard(self.wal, self.config.etcd_lease_margin_ms)
        else:
            self.lease = take_shard_lease(self.config, self.wal, holder)
            if self.config.replicas:
                self.lease_guard = LeaseGuard(self.wal, self.lease, self.config.lease_duration_ms)
        self.min_replicas = MinReplicas(self)
        self.db.on_modified = self._mark_dirty
        self.db.on_flush = self._on_flush
        if isinstance(disk, HookedDisk):
            disk.armed = True
        logger.info("shard %d: replayed %d records in %.3f s (%.0f records/s), %d keys, log tail seq %d",
                 self.index, count, elapsed, count / elapsed, len(self.db.data), tail)

    def _mark_dirty(self, key: bytes) -> None:
        # HazardTracker.mark, inlined (per written key)
        hazards = self.hazards
        seq = self.wal.tail_seq + 1
        hazards.dirty[key] = seq
        if seq > hazards.newest_seq:
            hazards.newest_seq = seq
        if key in self.watches.by_key:
            self.watches.touched(key)
        if key in self.blocked.by_key:
            self.blocked.ready_keys[key] = None
        if self.tracking_fronts:
            db = self.db
            db.events.append(invalidation(key, 0 if db.expiring else self.ctx.client_id))

    def set_tracking(self, conn: ReplySink, argv: list[bytes]) -> bool:
        done = set_front(self.tracking_fronts, conn, argv)
        self.db.tracking = bool(self.tracking_fronts)
        return done

    def _on_flush(self) -> None:
        self.hazards.mark_all(self.wal.tail_seq + 1)
        if self.tracking_fronts:
            self.db.events.append(flush_event(self.ctx.client_id))
        self.watches.touched_existing(self.db.data)
        # Every waiter's key may be gone: XREADGROUP answers that it no longer exists.
        for key in self.blocked.by_key:
            self.blocked.ready_keys[key] = None

    # --- execution ----------------------------------------------------------------

    def execute_batch(self, conn: ReplySink, requests: list) -> list[tuple[int, bytes]]:
        """Run a frame's requests in order; returns the replies that may leave now
        and holds the rest until their record is durable."""
        db = self.db
        if self.chunk_stats.in_progress:  # a big reply is being encoded: these run between its pieces
            self.chunk_stats.commands_between += len(requests)
        if self.lease_guard is not None and time.monotonic_ns() > self.lease_guard.deadline_ns \
                and not self.lease_guard.check():   # renews, or ends a deposed primary (shards/lease_guard.py)
            return refuse_batch(self, conn, requests)
        if self.memory_limit is not None:
            self.enforce_memory()
        self.catch_up_durable()
        next_seq = self.wal.tail_seq + 1
        hold_writes = not self.async_mode or self._async_window_exceeded()
        durable_seq = self.hazards.durable_seq
        pieces = getattr(conn, "takes_pieces", False)  # a router link: big bulk replies uncopied (frames.Pieces)
        self.scripts_undo = pieces and self.config.shards > 1  # shards/script_undo.py
        self.batch_conn = conn  # a script sent back fences its client on it (shards/script_fence.py)
        now_out = []
        held_out = []  # replies waiting for this batch's own record, held as one list
        for req in requests:
            if self.txn_busy and self.txn.defer(conn, req):
                continue
            argv = req.argv
            if argv[0][:1] == INTERNAL_PREFIX:
                if argv[0] in TXN_VERBS:
                    data, wait = self.txn.handle(conn, req, next_seq)
                    if data is None:  # parked: a cross-shard BLMPOP's wait (shards/txn.py)
                        continue
                elif argv[0] == VERB_AS_USER:
                    data, wait = self._execute_as_user(argv, req.cid, req.proto, next_seq, hold_writes)
                elif argv[0] != VERB_EXEC:
                    data = internal.run(self, argv, conn)
                    wait = self.hazards.wait_all() if internal.reads_keyspace(argv) else 0
                    if wait > durable_seq:
                        self.held.hold(wait, conn, req.rid, data)
                    else:
                        now_out.append((req.rid, data))
                    continue
                else:
                    data, wait = self._exec_transaction(argv, req.cid, req.proto, next_seq, hold_writes)
            else:
                db.frozen_ms = time.time_ns() // 1_000_000
                data, wait = self._execute(argv, req.cid, req.proto, next_seq, hold_writes, pieces, True)
                if type(data) is Block:
                    self._park(Waiter(conn, req.rid, req.cid, req.proto, argv, data))
                    continue
                if type(data) is ChunkedArray:
                    self._reply_chunked(conn, req.rid, data, wait, pieces)
                    continue
            if wait <= durable_seq:
                now_out.append((req.rid, data))
            elif wait == next_seq:
                held_out.append((req.rid, data))
            else:
                self.held.hold(wait, conn, req.rid, data)
            if self.blocked.ready_keys:
                self._serve_ready(next_seq, hold_writes)
        db.frozen_ms = 0
        self.total_commands += len(requests)
        self.append_effects()
        self.hand_out_events()
        if held_out:
            self.held.hold_many(next_seq, conn, held_out)
        return now_out

    def fence_client(self, cid: int) -> None:
        """A script of the batch running went back to the router: the client's later
        requests wait for its retry (shards/script_fence.py)."""
        self.txn.fence_client(cid, self.batch_conn)

    def hand_out_events(self) -> None:
        """Give the keyspace notifications generated since the last call to every
        router connection and this shard's node (shards/notify.py). A notification
        shows a write, so, like a read of it, it waits until the record holding the
        write is durable (then it leaves before the write's reply, as in Redis);
        with durability async, replies do not wait and neither do events."""
        events = self.db.events
        if events:
            self.db.events = []
            seq = self.wal.tail_seq
            if seq > self.hazards.durable_seq and not self.async_mode:
                assert len(self.held_events) < MAX_HELD_EVENT_BATCHES, "held events not released"
                self.held_events.append((seq, events))
            else:
                self.publish_events(events)

    def _reply_chunked(self, conn: ReplySink, rid: int, chunked: ChunkedArray, wait: int, pieces: bool) -> None:
        """A big array reply, encoded across loop turns (shards/chunked.py), then sent
        as any reply: at once if what it waits for is durable by then, else held."""

        def deliver(data: bytes) -> None:
            if wait <= self.hazards.durable_seq:
                conn.send([(rid, data)])
            else:
                self.held.hold(wait, conn, rid, data)

        send_chunked(chunked, self.chunk_stats, pieces, deliver)

    def _execute(self, argv: list[bytes], cid: int, proto: int, next_seq: int,
                 hold_writes: bool, pieces: bool = False, chunks: bool = False) -> tuple[bytes, int]:
        """Run one command: its encoded reply and the seq the reply must wait for.
        With `chunks` (a command of a batch, not of a transaction), a big array reply
        is returned as a ChunkedArray for execute_batch to encode across turns."""
        ctx = self.ctx
        effects = self.db.effects
        ctx.client_id = cid
        ctx.proto = proto
        ctx.chunks = chunks
        cmd: Command | None = None
        effects_before = len(effects)
        start = time.perf_counter_ns()
        refused = False
        try:
            cmd = BY_NAME.get(argv[0])  # lookup's exact-name case inlined (per command)
            if cmd is None or cmd.subcommands or (len(argv) != cmd.arity if cmd.arity >= 0
                                                  else len(argv) < -cmd.arity):
                cmd = lookup(argv)
            if self.write_error is not None and cmd.is_write:
                refused = True
                raise ReplyError(self.write_error)
            if self.noreplicas is not None and cmd.is_write:
                refused = True
                raise ReplyError(self.noreplicas)
            if self.db.oom and "denyoom" in cmd.flags:
                refused = True
                raise ReplyError(OOM_MESSAGE)
            self.db.count_reads = cmd.is_readonly
            result = cmd.handler(ctx, argv)
            kind = type(result)
            if kind is Raw and proto:  # encode's commonest cases inlined (per command): +OK and the like
                data = result.data
            elif kind is bytes and proto and not (pieces and len(result) >= UNCOPIED_REPLY_BYTES):
                data = b"$%d\r\n%b\r\n" % (len(result), result)
            elif kind is Block:
                return result, 0
            elif pieces and type(result) is bytes and len(result) >= UNCOPIED_REPLY_BYTES and proto:
                data = cast(bytes, Pieces(result))  # goes where replies go, to a router link only
            elif chunks and type(result) in CHUNKABLE and (proto or cmd.merge is merge_arrays) \
                    and (big := as_chunked(result, proto)) is not None:  # internal: KEYS' RESP array, as Raw
                data = cast(bytes, big)
            else:
                data = encode(result, proto) if proto else encode_internal(True, result)
        except ReplyError as e:
            data = encode_error(e.message) if proto else encode_internal(False, e.message)
            if refused:
                self._stat(cmd).rejected += 1
                return data, 0
            if e.message is NONLOCAL_RETRY:  # a run put back: no stats, SLOWLOG or LATENCY (shards/script_undo.py)
                self.db.count_reads = False
                return data, self.hazards.wait_all()
            self._stat(cmd).failed += 1
        except Exception:
            logger.exception("shard %d: command %r failed", self.index, argv[:3])
            message = b"ERR internal error executing '%s'" % argv[0][:64]
            data = encode_error(message) if proto else encode_internal(False, message)
        self.db.count_reads = False
        duration_us = (time.perf_counter_ns() - start) // 1000
        stat = self.stats.get(cmd.fullname) if cmd is not None else None  # _stat, inlined: per command
        if stat is None:
            stat = self._stat(cmd)
        stat.calls += 1
        stat.usec += duration_us
        if duration_us >= self.slowlog.threshold_us and cmd is not None and not refused \
                and "skip_slowlog" not in cmd.flags:
            self.slowlog.push(argv, duration_us, cid)
        latency = self.latency
        if cmd is not None:
            # LatencyMonitor.observe's common case inlined (per command): a histogram that
            # exists, a fast command, no event threshold.
            counts = latency.histograms.get(cmd.fullname) if latency.tracking else None
            if counts is not None and duration_us < FAST_INDEX_US and not latency.threshold_ms:
                index = INDEX_BY_US[duration_us]
                counts[index] = counts.get(index, 0) + 1
            elif latency.tracking or latency.threshold_ms:
                latency.observe(cmd, duration_us)
        if len(effects) > effects_before:
            return data, (next_seq if hold_writes else 0)
        if cmd is None or refused:
            return data, 0
        hazards = self.hazards
        if cmd.waits_for_all or (cmd.reads_undeclared_keys is not None and cmd.reads_undeclared_keys(argv)):
            return data, hazards.wait_all()
        if cmd.single_key:
            # HazardTracker.wait_seq of one key, inlined (per read): nothing dirty is the common case.
            dirty = hazards.dirty
            seq = dirty.get(argv[1], 0) if dirty else 0
            everything = hazards.all_dirty_seq
            return data, (everything if everything > seq and everything > hazards.durable_seq else seq)
        try:
            return data, hazards.wait_seq([argv[i] for i in cmd.key_indexes(argv)])
        except ReplyError:
            return data, 0

    # --- blocked clients -------------------------------------------------------------

    def park_waiter(self, waiter: Waiter) -> None:
        """Park a waiter made outside a command handler (a cross-shard BLMPOP's wait, shards/txn.py)."""
        self._park(waiter)

    def _park(self, waiter: Waiter) -> None:
        try:
            self.blocked.park(waiter)
        except ReplyError as e:
            waiter.conn.send([(waiter.rid, encode_error(e.message))])
            return
        if waiter.deadline_ms:
            self._blocked_wake.set()

    def _serve_ready(self, next_seq: int, hold_writes: bool) -> None:
        """Serve, in blocking order, the waiters of every key changed since the last call."""
        blocked = self.blocked
        durable_seq = self.hazards.durable_seq
        while blocked.ready_keys:
            key = next(iter(blocked.ready_keys))
            del blocked.ready_keys[key]
            queue = blocked.by_key.get(key)
            while queue:
                waiter = queue[0]
                served = self._serve_waiter(waiter, key, next_seq, hold_writes)
                if served is None:
                    break
                data, wait = served
                blocked.remove(waiter)
                if wait > durable_seq:
                    self.held.hold(wait, waiter.conn, waiter.rid, data)
                else:
                    waiter.conn.send([(waiter.rid, data)])
                queue = blocked.by_key.get(key)

    def _serve_waiter(self, waiter: Waiter, key: bytes, next_seq: int,
                      hold_writes: bool) -> tuple[bytes, int] | None:
        ctx = self.ctx
        ctx.client_id = waiter.cid
        ctx.proto = waiter.proto
        effects = self.db.effects
        effects_before = len(effects)
        start = time.perf_counter_ns()
        failed = False
        try:
            result = waiter.serve(ctx, key)
            if result is None:
                return None
            data = encode(result, waiter.proto)
        except ReplyError as e:
            data = encode_error(e.message)
            failed = True
        # As Redis, a blocked command is logged when served, with its own argv (BLPOP, not LPOP).
        duration_us = (time.perf_counter_ns() - start) // 1000
        self._count_unblocked(waiter, failed, duration_us)
        if duration_us >= self.slowlog.threshold_us:
            self.slowlog.push(waiter.argv, duration_us, waiter.cid)
        if len(effects) > effects_before:
            return data, (next_seq if hold_writes else 0)
        # A served read (XREAD) wrote nothing but returns what the write that woke
        # it added: its reply waits until that write is durable, like any read.
        return data, self.hazards.wait_seq((key,))

    def unblock(self, cid: int, mode: bytes) -> bool:
        """CLIENT UNBLOCK (mode timeout|error) or the client went away (drop)."""
        waiter = self.blocked.by_client.get(cid)
        if waiter is None:
            return False
        self.blocked.remove(waiter)
        if mode == b"error":
            data = encode_error(b"UNBLOCKED client unblocked via CLIENT UNBLOCK")
            self._count_unblocked(waiter, True, 0)
        elif mode == b"timeout":
            data = encode(waiter.timeout_reply, waiter.proto)
            self._count_unblocked(waiter, False, 0)
        else:
            data = encode_error(b"ERR client disconnected")
        waiter.conn.send([(waiter.rid, data)])
        return True

    async def blocked_timeouts(self) -> None:
        while True:
            deadline_ms = self.blocked.next_deadline_ms()
            if deadline_ms == 0:
                await self._blocked_wake.wait()
                self._blocked_wake = trio.Event()
                continue
            delay_s = (deadline_ms - now_ms()) / 1000
            if delay_s > 0:
                with trio.move_on_after(delay_s):
                    await self._blocked_wake.wait()
                    self._blocked_wake = trio.Event()
                continue
            for waiter in self.blocked.expired(now_ms()):
                self._count_unblocked(waiter, False, 0)
                waiter.conn.send([(waiter.rid, encode(waiter.timeout_reply, waiter.proto))])

    def _exec_transaction(self, argv: list[bytes], cid: int, proto: int, next_seq: int,
                          hold_writes: bool) -> tuple[bytes, int]:
        """EXEC: every queued command, atomically, in this batch (one log record)."""
        db = self.db
        watches = self.watches
        if watches.is_dirty(cid, db):
            watches.unwatch(cid)
            return encode(NULL_ARRAY, proto), 0
        watches.unwatch(cid)
        commands = unpack_transaction(argv[1])
        if db.oom and any(queued[0] != VERB_LITERAL and "denyoom" in lookup(queued).flags for queued in commands):
            return encode_error(EXECABORT_OOM), 0
        if self.noreplicas is not None and transaction_writes(commands):
            return encode_error(EXECABORT_NOREPLICAS), 0
        parts = [b"*%d\r\n" % len(commands)]
        wait = 0
        denials: list[list] = []  # its scripts' ACL denials, ahead of EXEC's reply for the router's ACL LOG
        db.frozen_ms = time.time_ns() // 1_000_000
        self.ctx.in_multi = True
        try:
            for queued in commands:
                if queued[0] == VERB_LITERAL:
                    parts.append(queued[1])
                    continue
                if queued[0] == VERB_AS_USER:
                    data, seq = self._execute_as_user(queued, cid, proto, next_seq, hold_writes, denials)
                else:
                    data, seq = self._execute(queued, cid, proto, next_seq, hold_writes)
                parts.append(data)
                if seq > wait:
                    wait = seq
        finally:
            self.ctx.in_multi = False
        data = b"".join(parts)
        return (with_denials(data, denials) if denials else data), wait

    def configure_memory(self, policy: str | None = None) -> None:
        """Apply maxmemory, maxmemory-policy (when given), maxmemory-samples and the
        LFU parameters as CONFIG SET left them."""
        settings = self.settings
        memory = self.memory
        memory.configure(settings["maxmemory"], policy or memory.policy, settings["maxmemory-samples"])
        # A replica evicts nothing and publishes no OOM flag (Redis' replica-ignore-maxmemory):
        # its keyspace changes only by the log; promote() configures it again.
        self.memory_limit = memory if memory.share_bytes and self.replica is None else None
        db = self.db
        if self.memory_limit is not None:
            memory.sample(db)  # measured now, not at the next cron tick: the next batch enforces it
        if memory.policy.endswith("-lfu"):
            db.lfu = Lfu(settings["lfu-log-factor"], settings["lfu-decay-time"], now_ms())
        else:
            db.lfu = None
        if self.memory_limit is None:
            db.oom = False
        self.published_oom = db.oom
        if self.replica is None:
            self.oom_flags.set(self.index, db.oom)

    def _log_buffered_bytes(self) -> int:
        """What maxmemory leaves out of this shard's heap: the log's buffers (shards/evict.py)."""
        wal = self.wal
        return wal.buffered_bytes if wal is not None else 0

    def enforce_memory(self) -> None:
        """Evict (or refuse denyoom commands) while over this shard's share of
        maxmemory; the evictions' DEL effects go in the next record. A change of
        the OOM state is published for the routers' MULTI (shards/oom_flags.py)."""
        if self.write_error is None:
            self.memory.enforce(self.db)
        if self.db.oom != self.published_oom:
            self.published_oom = self.db.oom
            self.oom_flags.set(self.index, self.published_oom)
    def _execute_as_user(self, argv: list[bytes], cid: int, proto: int, next_seq: int,
                         hold_writes: bool, denials: list[list] | None = None) -> tuple[bytes, int]:
        """A script of an ACL user: its redis.calls are checked against the user's rules,
        and the denials travel ahead of the reply to the router's ACL LOG (or, in EXEC,
        join `denials`, which go ahead of EXEC's reply)."""
        ctx = self.ctx
        ctx.acl_user = user_from_rules(argv[1])
        try:
            data, wait = self._execute(argv[2:], cid, proto, next_seq, hold_writes)
        finally:
            ctx.acl_user = None
        if ctx.acl_denials:
            if denials is None:
                data = with_denials(data, ctx.acl_denials)
            else:
                denials.extend(ctx.acl_denials[:MAX_SCRIPT_DENIALS - len(denials)])
            ctx.acl_denials = []
        return data, wait

    def configure_slowlog(self) -> None:
        settings = self.settings
        self.slowlog.configure(settings["slowlog-log-slower-than"], settings["slowlog-max-len"])

    def _count_unblocked(self, waiter: Waiter, failed: bool, duration_us: int) -> None:
        """Redis' updateStatsOnUnblock: a blocked command counts one call (failed if
        it ended in an error) when served, timed out or unblocked, not when it blocked."""
        stat = self._stat(find(waiter.argv))
        stat.calls += 1
        stat.usec += duration_us
        if failed:
            stat.failed += 1

    def log_slow(self, cmd: Command, argv: list[bytes], duration_us: int, cid: int, addr: bytes = b"") -> None:
        """SLOWLOG and LATENCY of a command run outside `_execute` (which inlines this,
        per command): a cross-shard run's, once its run is final (shards/txn.py), and
        a script's redis.calls (log_script_call)."""
        if duration_us >= self.slowlog.threshold_us and "skip_slowlog" not in cmd.flags:
            self.slowlog.push(argv, duration_us, cid, addr)
        latency = self.latency
        if latency.tracking or latency.threshold_ms:
            latency.observe(cmd, duration_us)

    def script_call_stat(self, cmd: Command) -> CommandStats:
        """The commandstats of a command a script runs (shards/luaenv.py counts it)."""
        return self._stat(cmd)

    def log_script_call(self, cmd: Command, argv: list[bytes], duration_us: int) -> None:
        """SLOWLOG and LATENCY of a command a script ran, as Redis' scriptCall runs it
        through call() with CMD_CALL_SLOWLOG: logged as its Lua client (`?:0`, no name:
        the router fills in no client)."""
        self.log_slow(cmd, argv, duration_us, 0, SCRIPT_CLIENT_ADDR)

    def _stat(self, cmd: Command | None) -> CommandStats:
        name = cmd.fullname if cmd is not None else "unknown"
        stat = self.stats.get(name)
        if stat is None:
            stat = self.stats[name] = CommandStats()
        return stat

    async def release_loop(self) -> None:
        """Drop the log segments the snapshotter archived and a snapshot covers, in a
        worker thread (on etcd with its reading of etcd's size): reading the release
        notice, the manifest's fsync, unlinking a segment of a 512 MiB record and the
        directory's fsync held the loop for as long as a loaded disk took."""
        while True:
            await trio.sleep(RELEASE_POLL_S)
            if self.write_error is None and uses_etcd(self.config):
                release = functools.partial(self.snapshots.release_segments, snapshot_url=self.config.snapshot_url)
                await trio.to_thread.run_sync(etcd_upkeep, self.dir, self.wal, release)
            elif self.write_error is None:
                await trio.to_thread.run_sync(self.snapshots.release_segments, self.dir, self.wal)

    async def memory_loop(self) -> None:
        """At hz, as Redis' cron: move the access clocks on and, under maxmemory,
        measure the heap afresh and evict (the eviction's effects are one record)."""
        period_s = 1.0 / max(self.config.hz, 1)
        while True:
            await trio.sleep(period_s)
            self.db.tick_clock(now_ms())
            if self.memory_limit is not None:
                self.memory.sample(self.db)
                if self.write_error is None and self.memory.enforce(self.db):
                    self.append_effects()
                    self.hand_out_events()

    async def active_expire_loop(self) -> None:
        period_s = 1.0 / max(self.config.hz, 1)
        while True:
            await trio.sleep(period_s)
            if self.db.expires and self.write_error is None and self.db.active_expire():
                self.append_effects()
                self.hand_out_events()
