"""The snapshot a shard's state starts from when its log no longer starts at seq 1.

A log whose records before seq F were dropped (they are in a snapshot) can only
be replayed on top of a snapshot through seq F-1 or later. The shard's local
cache holds one unless the data dir is new (another machine, a wiped disk) or
was away while the log moved on (the log on etcd is shared by every machine);
then the newest such snapshot published to the store is fetched into the cache.
One home for that rule: the shard at start (snapshotter/shard_hooks.py) and the
snapshotter before a build (snapshotter/runner.py) both call ensure_base()."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from durakv.snapshotter.errors import SnapshotterError
from durakv.snapshotter.local import LocalSnapshot, list_local
from durakv.snapshotter.store import Store

if TYPE_CHECKING:
    from durakv.log.etcd_records import RestoreMark

logger = logging.getLogger("durakv.snapshotter")


class NoCoveringSnapshot(SnapshotterError):
    """Neither the local cache nor the store holds a snapshot through first_seq - 1."""


def _delete_local(snapshot: LocalSnapshot) -> None:
    os.unlink(snapshot.manifest_path)  # first: without a manifest there is no snapshot
    if os.path.exists(snapshot.rdb_path):
        os.unlink(snapshot.rdb_path)


def drop_discarded(shard_dir: str, mark: RestoreMark) -> list[str]:
    """Delete the local snapshots of a history `durakv restore` discarded (on another
    machine): loading one would bring back writes the restore removed. Returns them."""
    gone = []
    for snapshot in list_local(shard_dir):
        m = snapshot.manifest
        if mark.discarded(m.seq, m.epoch):
            logger.warning("%s: seq %d at epoch %d is of the history restore discarded after seq %d; deleting it",
                           snapshot.manifest_path, m.seq, m.epoch, mark.seq)
            _delete_local(snapshot)
            gone.append(snapshot.manifest_path)
    return gone


def ensure_base(store: Store, shard: int, shard_dir: str, first_seq: int, last_seq: int, log_name: str,
                download_dir: str | None = None, mark: RestoreMark | None = None) -> LocalSnapshot | None:
    """Make sure the local cache holds a snapshot through first_seq - 1 that the log
    (ending at last_seq) can continue: the cache's newest usable one, else the newest
    complete one in the store, downloaded (sha256-checked) into shard_dir's cache, or
    download_dir's (a reader that must not change the data dir). None when the log
    starts at seq 1 (no snapshot is needed). NoCoveringSnapshot, one line naming the
    fix, when there is none. mark: where a restore cut the log; snapshots of the
    history it discarded are neither used nor kept."""
    if mark is not None:
        drop_discarded(shard_dir, mark)
    needed = first_seq - 1
    if needed <= 0:
        return None
    local = [s for s in list_local(shard_dir) if needed <= s.manifest.seq <= last_seq]
    if local:
        return local[-1]
    published = [s for s in store.list_snapshots(shard) if s.complete and s.manifest.seq <= last_seq
                 and (mark is None or not mark.discarded(s.manifest.seq, s.manifest.epoch))]
    covering = [s for s in published if s.manifest.seq >= needed]
    if not covering:
        newest = f"the newest is seq {published[-1].manifest.seq}" if published else "it holds none"
        raise NoCoveringSnapshot(
            f"the log at {log_name} starts at seq {first_seq} (the records before it were "
            f"dropped after a snapshot) and {store.url} holds no snapshot of shard {shard} through seq {needed} "
            f"({newest}); set snapshot-url to the store the snapshotter published to (`durakv snapshots list "
            "--from URL` shows what a store holds)")
    chosen = covering[-1]
    logger.info("shard %d: the log at %s starts at seq %d; fetching snapshot seq %d from %s", shard, log_name,
                first_seq, chosen.manifest.seq, store.url)
    return store.download_snapshot(chosen, download_dir or shard_dir)


def adopt_published(store: Store, shard: int, shard_dir: str, last_seq: int,
                    mark: RestoreMark | None = None) -> LocalSnapshot | None:
    """Bring the local cache level with the store when this snapshotter takes a shard's
    builds over from another node's (snapshotter/build_lock.py): that one published
    snapshots this cache lacks, and this cache may hold builds of its own the store never
    got. Local snapshots through the store's newest seq that the store does not hold (by
    sha256) are deleted, so none is published over one already there; the store's newest
    is fetched when it is newer than the cache's. Returns what was fetched (None: nothing)."""
    published = {s.manifest.seq: s for s in store.list_snapshots(shard) if s.complete and s.manifest.seq <= last_seq
                 and (mark is None or not mark.discarded(s.manifest.seq, s.manifest.epoch))}
    if not published:
        return None
    newest = max(published)
    for snapshot in list_local(shard_dir):
        m = snapshot.manifest
        there = published.get(m.seq)
        if m.seq <= newest and (there is None or there.manifest.rdb_sha256 != m.rdb_sha256):
            logger.info("shard %d: %s is not the store's snapshot of seq %d (built while another node's snapshotter "
                        "held the shard); deleting it", shard, snapshot.manifest_path, m.seq)
            _delete_local(snapshot)
    local = list_local(shard_dir)
    if local and local[-1].manifest.seq >= newest:
        return None
    logger.info("shard %d: fetching snapshot seq %d from %s (published by another node's snapshotter)", shard,
                newest, store.url)
    return store.download_snapshot(published[newest], shard_dir)
