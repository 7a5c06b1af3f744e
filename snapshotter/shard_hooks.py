"""What a shard process calls so snapshots shorten its start and its log.

At start, before opening its log (a shard whose data dir is empty and a
snapshot URL is configured bootstraps from S3):

    base_seq = shard_hooks.prepare_shard_dir(shard_dir, index, shards, snapshot_url)
    log = Log.open(shard_dir/log)
    base_seq = shard_hooks.load_start_snapshot(shard_dir, db, log)
    for seq, epoch, payload in log.read(base_seq + 1): replay(...)

With the log on etcd (nothing of it in the data dir) the shard opens the log first, then
fetch_start_snapshot(shard_dir, index, log, snapshot_url, data_dir) makes sure the
local cache holds a snapshot the log can continue, before load_start_snapshot.

Periodically (every few seconds) while serving:

    dropped = shard_hooks.release_segments(shard_dir, log)
"""

from __future__ import annotations

import logging
import os
import shutil

from durakv.log.layout import log_dir_of
from durakv.log import Log
from durakv.shards.keyspace import Keyspace
from durakv.snapshotter.local import SnapshotInvalid, list_local, load_snapshot, newest_local
from durakv.snapshotter.runner import read_release
from durakv.snapshotter.errors import SnapshotterError
from durakv.snapshotter.store import StoreError

logger = logging.getLogger("durakv.shard")


class StartError(SnapshotterError):
    """The snapshot cache and the log do not fit together; the shard must not start."""


def prepare_shard_dir(shard_dir: str, shard: int, shards: int, snapshot_url: str = "") -> bool:
    """Bootstrap an empty shard directory from S3 (newest snapshot plus the
    archived log after it) when a snapshot URL is configured. Returns True if
    it restored something. A directory that already has a log is left alone."""
    log_dir = log_dir_of(shard_dir)
    if not snapshot_url or (os.path.isdir(log_dir) and os.listdir(log_dir)):
        return False
    from durakv.snapshotter.progress import Progress
    from durakv.snapshotter.restore import RestoreError, restore_shard
    from durakv.snapshotter.filestore import open_store

    store = open_store(snapshot_url)
    if not store.list_snapshots(shard) and not store.list_segments(shard):
        return False
    os.makedirs(shard_dir, exist_ok=True)
    try:
        progress = Progress(lambda m: logger.info("%s", m), bars=False)
        restored = restore_shard(store, shard, shards, shard_dir, progress=progress)
    except RestoreError as e:
        raise StartError(str(e)) from None
    logger.info("shard %d: bootstrapped from %s at seq %d", shard, snapshot_url, restored.seq)
    return True


def fetch_start_snapshot(shard_dir: str, shard: int, wal: Log, snapshot_url: str, data_dir: str) -> None:
    """The log on etcd: when it no longer starts at seq 1 and the local cache has no
    snapshot it can continue (a new machine, or a data dir that was away while the
    records were dropped), fetch the newest one through its first seq - 1 from the
    snapshot store (S3, file://, or the embedded one under the data dir). StartError
    naming the fix when the store has none. Local snapshots of a history `durakv
    restore` discarded (P/restored) are deleted first."""
    from durakv.log.etcd_log import EtcdLog
    from durakv.log.etcd_records import restore_mark
    from durakv.snapshotter.base import NoCoveringSnapshot, drop_discarded, ensure_base
    from durakv.snapshotter.filestore import open_store

    mark = restore_mark(wal.client, wal.prefix) if isinstance(wal, EtcdLog) else None
    first = wal.recovery.first_seq if wal.recovery is not None else 1
    if first <= 1:
        if mark is not None:
            drop_discarded(shard_dir, mark)
        return
    try:
        ensure_base(open_store(snapshot_url, data_dir), shard, shard_dir, first, wal.tail_seq, wal.path, mark=mark)
    except (NoCoveringSnapshot, StoreError) as e:
        raise StartError(str(e)) from None


def load_start_snapshot(shard_dir: str, db: Keyspace, wal: Log) -> int:
    """Load the newest usable local snapshot into the (empty) keyspace; returns
    its seq (0 without one), from which the log must be replayed (seq + 1).

    A snapshot whose RDB fails its sha256 is skipped for the previous one, as
    long as the log still holds every record after that older one."""
    first_retained = wal.recovery.first_seq
    for snapshot in reversed(list_local(shard_dir)):
        seq = snapshot.manifest.seq
        if seq > wal.tail_seq:
            raise StartError(f"{snapshot.manifest_path} covers seq {seq} but the log ends at seq "
                             f"{wal.tail_seq}: the log lost records the snapshot holds")
        if seq + 1 < first_retained:
            raise StartError(f"{snapshot.manifest_path} ends at seq {seq} but the log starts at seq "
                             f"{first_retained}: records in between are gone")
        try:
            load_snapshot(snapshot, db)
        except SnapshotInvalid as e:
            logger.error("%s; trying an older snapshot", e)
            db.flush()
            continue
        logger.info("loaded snapshot seq %d (%d keys) from %s", seq, len(db.data), snapshot.rdb_path)
        return seq
    if first_retained > 1:
        raise StartError(f"the log at {wal.path} starts at seq {first_retained} and no local snapshot "
                         "covers the records before it")
    return 0


def load_replica_start(shard_dir: str, db: Keyspace, wal: Log, shard: int, shards: int, snapshot_url: str,
                       data_dir: str, scratch_dir: str) -> int:
    """A replica's start (shards/replica.py): load_start_snapshot, unless the log's
    first retained record is past the newest local snapshot (the replica fell behind
    while the primary dropped segments, or the local cache is gone). Then it starts
    from the store (snapshot-url, or the embedded DIR/snapshots): its newest snapshot
    plus the archived log after it, rebuilt in `scratch_dir` as `durakv restore` does
    (sha256, state digest and log chain checked), which must reach the local log's
    first record. Returns the seq the keyspace holds; the log after it is local."""
    first_retained = wal.recovery.first_seq
    newest = newest_local(shard_dir)
    if first_retained <= 1 or (newest is not None and newest.manifest.seq + 1 >= first_retained):
        return load_start_snapshot(shard_dir, db, wal)
    from durakv.snapshotter.filestore import open_store
    from durakv.snapshotter.progress import Progress
    from durakv.snapshotter.restore import RestoreError, restore_shard

    store = open_store(snapshot_url, data_dir)
    logger.warning("shard %d: the log starts at seq %d and %s: a replica starts from %s", shard, first_retained,
                   f"the newest local snapshot is at seq {newest.manifest.seq}" if newest else "no local snapshot",
                   store.url)
    shutil.rmtree(scratch_dir, ignore_errors=True)   # a crashed earlier attempt's
    os.makedirs(scratch_dir)
    try:
        try:
            restored = restore_shard(store, shard, shards, scratch_dir,
                                     progress=Progress(lambda m: logger.info("%s", m), bars=False))
        except RestoreError as e:
            raise StartError(f"a replica cannot start from {store.url}: {e}") from None
        if restored.seq + 1 < first_retained:
            raise StartError(f"{store.url} reaches seq {restored.seq} but the log at {wal.path} starts at seq "
                             f"{first_retained}: records in between are gone")
        snapshot = newest_local(scratch_dir)
        assert snapshot is not None and snapshot.manifest.seq == restored.seq, "restore_shard leaves its snapshot"
        try:
            load_snapshot(snapshot, db)
        except SnapshotInvalid as e:
            raise StartError(f"a replica cannot load the snapshot it rebuilt: {e}") from None
    finally:
        shutil.rmtree(scratch_dir, ignore_errors=True)
    logger.info("shard %d: a replica loaded seq %d (%d keys) from %s", shard, restored.seq, len(db.data), store.url)
    return restored.seq


def release_segments(shard_dir: str, wal: Log, snapshot_url: str = "") -> list[str]:
    """Delete the sealed log segments the snapshotter released (archived to S3
    and covered by a published snapshot that is in the local cache). With the log on
    etcd and a shared store (snapshot_url), also the records covered by the snapshot
    any node's snapshotter last published there (P/published, log/etcd_records.py): a
    restart fetches it from the store (fetch_start_snapshot), so the local cache need
    not hold it, and drops go on while this node's snapshotter is stopped or hung."""
    through = read_release(shard_dir)
    if through > 0:
        local = list_local(shard_dir)
        if not local or local[-1].manifest.seq < through:
            through = 0
    through = max(through, _published_elsewhere(wal, snapshot_url))
    if through <= 0:
        return []
    dropped = wal.drop_segments_through(through)
    if dropped:
        logger.info("dropped %d archived log segments through seq %d", len(dropped), through)
    return dropped


def _published_elsewhere(wal: Log, snapshot_url: str) -> int:
    """The seq through which the shared store holds a snapshot, per P/published on etcd
    (0: none, the log not on etcd, no shared store, another store named, a snapshot of a
    history `durakv restore` discarded, or etcd out of reach: logged, tried next round)."""
    if not snapshot_url:
        return 0
    from durakv.log.errors import LogError
    from durakv.log.etcd_log import EtcdLog
    from durakv.log.etcd_records import read_published, restore_mark
    from durakv.snapshotter.filestore import shared_store_url

    if not isinstance(wal, EtcdLog):
        return 0
    try:
        url = shared_store_url(snapshot_url)
        published = read_published(wal.upkeep_client, wal.prefix)
        if published is None or published.store != url or published.seq < wal.first_seq:
            return 0
        mark = restore_mark(wal.upkeep_client, wal.prefix)
    except (LogError, StoreError) as e:
        logger.warning("etcd log %s: reading the snapshot other nodes published (P/published): %s", wal.prefix, e)
        return 0
    return 0 if mark is not None and mark.discarded(published.seq, published.epoch) else published.seq
