"""A replica of a shard: a process with its own keyspace that follows the shard's
durable log (log/follow.py) and, when the supervisor promotes it (SIGUSR1), becomes
the shard's primary.

- Start: the newest local snapshot, then the log after it up to the durable tail the
  primary published, through the shard's own replay (Shard.replay_record), so a
  replica is never behind what it showed before a restart: it serves only once it
  applied everything durable when it started. When the log no longer reaches back to
  the newest local snapshot (segments dropped while it was behind, or the local
  cache gone), it starts from the snapshot store's newest snapshot and archived log
  instead (snapshotter/shard_hooks.py load_replica_start).
- Follow: every REPLICA_POLL_S it applies the records made durable since; it never
  sees a record the primary could still lose (the primary publishes durable_seq after
  its fsync). It publishes its applied seq on the shard's replica board
  (shards/replica_board.py) for WAIT and INFO replication. What it applies is
  notified to its own port's keyspace subscribers (as a Redis replica notifies of the
  commands its primary sends it): a replica generates no event of its own.
- Serve: its own client port as a Redis Cluster replica node (server/node.py): reads
  of READONLY connections, MOVED for the rest. Writes are refused by the executor with
  Redis' READONLY error (write_error) should one get through; an expired key reads
  as missing but is not deleted (the primary's DEL comes through the log).
- Promote: open the log as its writer, fencing the old primary if it still runs once
  its lease expired (log/FORMAT.md), apply the rest of the log, take the lease, then
  serve as a primary (shards/process.py serve_primary) on the shard's own socket and
  client port.

With `log-backend = "etcd"` the same steps read the log on etcd (shards/etcd_replica.py):
the start and the promotion read records through log/etcd_follower.py's EtcdFollower,
and following is a watch from the last applied seq (a thread), whose records are only
ever what etcd committed; promotion campaigns for the shard's leader key (at once if
its holder was a process of this machine that is gone, else once its lease expired).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import TYPE_CHECKING, Any, Awaitable, NamedTuple

import trio

from durakv.log import LeaseLost, LogLocked, RecordsDropped
from durakv.log.errors import EtcdUnavailable
from durakv.log.follow import Follower
from durakv.log.layout import log_dir_of, replica_bootstrap_dir
from durakv.log.manifest import MANIFEST_NAME, load_manifest
from durakv.shards import sdnotify
from durakv.shards.config import Config, replica_port
from durakv.shards.exit_codes import EXIT_NOT_PROMOTED
from durakv.shards.malloc_stats import release_free_heap
from durakv.shards.hazards import HazardTracker
from durakv.shards.log_backend import uses_etcd
from durakv.shards.process import ClientPort, serve_primary
from durakv.shards.replica_board import STATE_LOADING, STATE_ONLINE, ReplicaBoard
from durakv.shards.shard import Shard, SnapshotHooks

if TYPE_CHECKING:
    from durakv.shards.etcd_replica import EtcdFollow

logger = logging.getLogger("durakv.replica")

REPLICA_POLL_S = 0.001
LOG_WAIT_POLL_S = 0.01
READONLY_ERROR = b"READONLY You can't write against a read only replica."
# How long a promoted replica waits for a live (paused) primary's lease to run out,
# in lease durations: past it the promotion fails loudly rather than hang.
TAKEOVER_WAIT_LEASES = 5
NEVER_MS = 1 << 62


class ReplicaWal:
    """What the executor reads of a log on a replica: the applied seq as tail and
    durable seq (so nothing is ever held), and an append that logs nothing."""

    __slots__ = ("tail_seq", "durable_seq")
    # The log's stats INFO persistence shows: a replica writes no log.
    fsync_count = last_fsync_latency_us = bytes_written = segment_count = size_bytes = buffered_bytes = 0

    def __init__(self, seq: int) -> None:
        self.tail_seq = self.durable_seq = seq

    def append(self, payloads: Any, after_seq: int, lease: Any) -> int:
        return self.tail_seq   # effects a read made here (lazy expiry) are the primary's to log

    def close(self) -> None:
        pass


class _Recovery(NamedTuple):
    first_seq: int


class _StartView(NamedTuple):
    """What load_replica_start reads of a Log: where the log starts and ends (and its
    path, for the message when no snapshot covers its start)."""
    recovery: _Recovery
    tail_seq: int
    path: str


class Replica:
    def __init__(self, shard: Shard, number: int) -> None:
        self.shard = shard
        self.number = number
        self.config = shard.config
        self.port = replica_port(shard.config, shard.index, number)
        self.log_dir = log_dir_of(shard.dir)
        # On etcd: the follower and the watch that feeds this replica (shards/etcd_replica.py).
        self.etcd: EtcdFollow | None = None
        if uses_etcd(shard.config):
            from durakv.shards.etcd_replica import EtcdFollow

            self.etcd = EtcdFollow(shard.config, shard.index)
        self.follower = self.etcd.follower if self.etcd is not None else Follower(self.log_dir)
        self.board = ReplicaBoard(shard.config.data_dir, shard.index)
        self.applied_seq = 0
        self.wal = ReplicaWal(0)
        self.promoted = False

    def boot(self) -> None:
        """The newest local snapshot plus the durable log after it."""
        shard = self.shard
        self.board.publish(self.number, os.getpid(), 0, self.port, STATE_LOADING)
        started = time.monotonic()
        durable = self.follower.durable_seq()
        base = 0
        if shard.snapshots is not None:
            if self.etcd is not None:
                first = self.etcd.first_seq()
            else:
                manifest = load_manifest(self.log_dir)
                first = manifest.first_seq if manifest else 1
            view = _StartView(_Recovery(first), durable,
                              self.etcd.prefix if self.etcd is not None else self.log_dir)
            config = self.config
            base = shard.snapshots.load_replica_start(
                shard.dir, shard.db, view, shard.index, config.shards, config.snapshot_url,  # type: ignore[arg-type]
                config.data_dir, replica_bootstrap_dir(shard.dir, self.number))
        self.applied_seq = base
        count = self._apply_through(durable)
        shard.db.effects.clear()
        shard.wal = self.wal  # type: ignore[assignment]
        shard.hazards = HazardTracker(self.applied_seq)
        shard.write_error = READONLY_ERROR
        # As a Redis replica: an expired key reads as missing but stays until the
        # primary's DEL arrives, so the keyspace never runs ahead of the log.
        shard.db.expiry_paused_until_ms = NEVER_MS
        # From here on, what it applies is notified to its own port's subscribers (as a
        # Redis replica's are of the commands it receives; it generates none itself).
        shard.db.events.clear()
        shard.db.replay_notifies = True
        self.board.publish(self.number, os.getpid(), self.applied_seq, self.port, STATE_ONLINE)
        logger.info("shard %d replica %d: loaded through seq %d (%d records after the snapshot at seq %d) "
                    "in %.3f s, %d keys", shard.index, self.number, self.applied_seq, count, base,
                    time.monotonic() - started, len(shard.db.data))

    def _apply_through(self, durable: int) -> int:
        if durable <= self.applied_seq:
            return 0
        shard = self.shard
        count = 0
        for seq, _epoch, payload in self.follower.read(self.applied_seq + 1, durable):
            shard.replay_record(seq, payload)
            self.applied_seq = seq
            count += 1
        shard.db.effects.clear()
        return count

    def catch_up(self) -> None:
        """Apply what became durable since the last look; publish how far we are."""
        if self._apply_through(self.follower.durable_seq()):
            wal = self.wal
            wal.tail_seq = wal.durable_seq = self.applied_seq
            self.shard.hazards.advance(self.applied_seq)
            db = self.shard.db
            if db.events:   # durable already: no wait
                events, db.events = db.events, []
                self.shard.publish_events(events)
        self.board.publish(self.number, os.getpid(), self.applied_seq, self.port, STATE_ONLINE)

    def heard(self) -> int:
        """The applied seq, for the position in etcd, published on the board again with
        the time: an idle replica on etcd applies nothing, yet looks at the log (CLUSTER
        NODES and min-replicas-max-lag judge a replica by how lately it did)."""
        if not self.promoted:
            self.board.publish(self.number, os.getpid(), self.applied_seq, self.port, STATE_ONLINE)
        return self.applied_seq

    def apply_followed(self, seq: int, payload: bytes) -> None:
        """One record the etcd watch delivered (in the trio loop): applied if it is the
        next one; a repeat is skipped; nothing is applied once promotion began."""
        if self.promoted or seq != self.applied_seq + 1:
            assert self.promoted or seq <= self.applied_seq, "the etcd tail delivers records in order"
            return
        self.shard.replay_record(seq, payload)
        self.shard.db.effects.clear()
        self.applied_seq = seq
        wal = self.wal
        wal.tail_seq = wal.durable_seq = seq
        self.shard.hazards.advance(seq)
        self.board.publish(self.number, os.getpid(), seq, self.port, STATE_ONLINE)

    async def follow(self) -> None:
        if self.etcd is not None:
            try:
                await self.etcd.follow(self.applied_seq + 1, self.apply_followed)
            except RecordsDropped as e:
                logger.error("shard %d replica %d fell behind the log on etcd (%s); restarting from the newest "
                             "snapshot", self.shard.index, self.number, e)
                raise SystemExit(1) from None
            return
        while True:
            try:
                self.catch_up()
            except RecordsDropped as e:
                # Too far behind: the records were dropped under a newer snapshot.
                # Start again (the supervisor restarts us) from that snapshot, local
                # or in the store.
                logger.error("shard %d replica %d fell behind the log (%s); restarting from the newest "
                             "snapshot", self.shard.index, self.number, e)
                raise SystemExit(1) from None
            await trio.sleep(REPLICA_POLL_S)

    def promote(self) -> None:
        """Become the primary: take the log (fencing a live old primary once its
        lease ran out), apply the rest of it, take the lease."""
        shard = self.shard
        started = time.monotonic()
        if self.etcd is not None:
            self.etcd.stop()
            self.etcd.withdraw_position()
        self.catch_up()
        shard.write_error = None
        shard.db.expiry_paused_until_ms = 0
        shard.db.replay_notifies = False
        shard.wal = None
        follower = self.follower
        shard.open_log(base_seq=self.applied_seq,
                       takeover_wait_ms=self.config.lease_duration_ms * TAKEOVER_WAIT_LEASES,
                       next_record_at=(follower.next_record_at(self.applied_seq + 1)
                                       if isinstance(follower, Follower) else None))
        self.promoted = True
        self.follower.close()
        self.board.publish(self.number, 0, 0, 0, 0)   # this slot is free for the replacement replica
        logger.warning("shard %d replica %d (pid %d) promoted to primary in %.3f s: applied through seq %d "
                       "before, log tail seq %d", shard.index, self.number, os.getpid(),
                       time.monotonic() - started, self.applied_seq, self.tail_seq())

    def tail_seq(self) -> int:
        wal = self.shard.wal
        return wal.tail_seq if wal is not None else self.applied_seq


async def _then_cancel(awaitable: Awaitable[None], scope: trio.CancelScope) -> None:
    await awaitable
    logger.warning("replica pid %d: its shard's leader key is free; campaigning to lead the shard", os.getpid())
    scope.cancel()


async def run_replica(config: Config, index: int, number: int, snapshots: SnapshotHooks | None,
                      replica_client_port: ClientPort | None, primary_client_port: ClientPort | None) -> None:
    """A replica process: follow the log until SIGUSR1, then serve as the primary."""
    shard = Shard(config, index, snapshots)
    manifest_path = os.path.join(log_dir_of(shard.dir), MANIFEST_NAME)
    while not uses_etcd(config) and not os.path.exists(manifest_path):
        await trio.sleep(LOG_WAIT_POLL_S)   # the primary creates the log; a replica only reads it
    replica = Replica(shard, number)
    shard.replica = replica
    # The replica's port is this replica number's until a promotion: then the supervisor
    # starts a replacement with the same number, port and control socket.
    replica_port_scope = trio.CancelScope()

    async def serve_replica_port(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        assert replica_client_port is not None
        with replica_port_scope:
            await replica_client_port(shard, task_status=task_status)

    with trio.open_signal_receiver(signal.SIGUSR1) as promote_signals:
        replica.boot()
        async with trio.open_nursery() as nursery:
            if replica_client_port is not None:
                await nursery.start(serve_replica_port)
            sdnotify.notify(b"READY=1")
            release_free_heap()  # what the start (snapshot load, log replay) freed
            async with trio.open_nursery() as following:
                following.start_soon(replica.follow)
                if replica.etcd is not None:   # what it still needs, for drops on any node
                    following.start_soon(replica.etcd.publish_position, number, replica.heard)
                if replica.etcd is not None and config.node_role == "replica":
                    # A replica node's replicas campaign on their own: no primary runs beside them.
                    following.start_soon(_then_cancel, replica.etcd.watch_leader(True), following.cancel_scope)
                elif replica.etcd is not None:
                    following.start_soon(replica.etcd.watch_leader, False)   # where MOVED sends clients
                async for _ in promote_signals:
                    break
                following.cancel_scope.cancel()
            try:
                replica.promote()
            except (LogLocked, LeaseLost, EtcdUnavailable) as e:
                # The primary was slow, not gone (it renewed its lease meanwhile), or etcd is out of
                # reach (nobody can lead now): the supervisor gives the primary its place back.
                logger.error("shard %d replica %d: not promoted: %s", index, number, e)
                logging.shutdown()
                os._exit(EXIT_NOT_PROMOTED)
            shard.replica = None
            shard.configure_memory()   # maxmemory holds from here (a replica ignores it)
            replica_port_scope.cancel()
            await serve_primary(shard, nursery, primary_client_port)
