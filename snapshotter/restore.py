"""Rebuilding a data directory from the store (S3 or file://) alone.

For each shard: the newest published snapshot at or before the target (by seq,
or by the wall-clock time its tail was fixed), checked three ways (the RDB's
sha256, the state digest of what it loads, and the log chain wherever a later
snapshot names one), then the archived log after it up to the target (sealed
segments and the tail pieces of the active one), each sha256-checked, replayed
with the shards' engine. The result is written as a fresh local snapshot at the
target seq plus an empty log that continues at target + 1, so `durakv serve
--data-dir DIR` starts from exactly that state.

Point in time: `seq` is exact, and so is `at_ms` to the record: every record
carries the time its shard wrote it (shards.records), never decreasing along
a log. Each shard starts from the newest snapshot whose last record was written
at or before at_ms and replays archived records up to the last one written at
or before at_ms, downloading segment by segment until it meets a later record.
The shards then agree on one time only if every shard's archive covers at_ms:
it holds a record written after at_ms, or the shard's archive marker says
everything the shard had made durable by some time >= at_ms is archived (an
idle shard). Otherwise restore fails naming the shard and where its archive
ends, unless allow_partial. The data dir is built in a staging directory next
to it and moved into place only when every shard succeeded, so a failed
restore leaves the target as it found it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, UTC

from durakv.log import Log, LogError
from durakv.log.layout import LOCK_FILE, log_dir_of
from durakv.log.lock import exclusive_data_dir
from durakv.log.manifest import Manifest, segment_name, store_manifest
from durakv.shards.rdb.file import settle_keyspace
from durakv.shards.slots import slot_ranges
from durakv.snapshotter.build import write_snapshot
from durakv.snapshotter.digest import state_digest
from durakv.snapshotter.local import SnapshotInvalid, load_snapshot, shard_dir_of
from durakv.log.disk import OS_DISK
from durakv.snapshotter.progress import Progress
from durakv.snapshotter.replay import CHAIN_START, ChainMismatch, new_context, replay_log
from durakv.snapshotter.store import RemoteSegment, RemoteSnapshot, Store
from durakv.snapshotter.errors import SnapshotterError

# Epoch written into the scratch log directory used to read archived segments:
# above any real epoch, so the reader's "epoch <= manifest epoch" rule holds.
_SCRATCH_EPOCH = 1 << 62


class RestoreError(SnapshotterError):
    """Restore cannot produce the requested state; the message says why."""


@dataclass
class ShardRestore:
    shard: int
    snapshot_seq: int
    seq: int
    records_replayed: int
    keys: int
    state_digest: str
    last_record_at_ms: int = 0     # written_at_ms of record `seq` (0: unknown, seq 0)
    covers_at: bool = True         # with at_ms: the archive reaches past at_ms (see the module doc)


def choose_snapshot(snapshots: list[RemoteSnapshot], seq: int | None, at_ms: int | None) -> RemoteSnapshot | None:
    usable = [s for s in snapshots if s.complete]
    if seq is not None:
        usable = [s for s in usable if s.manifest.seq <= seq]
    if at_ms is not None:
        usable = [s for s in usable if s.manifest.last_record_at_ms <= at_ms]
    return usable[-1] if usable else None


def _segments_after(store: Store, shard: int, base_seq: int, seq: int | None,
                    at_ms: int | None) -> tuple[list[RemoteSegment], int]:
    """The contiguous archived segments after base_seq, and the seq they reach."""
    chosen: list[RemoteSegment] = []
    end = base_seq
    for segment in store.list_segments(shard):
        if segment.last_seq <= base_seq:
            continue
        if seq is not None and end >= seq:
            break
        if segment.first_seq > end + 1:
            if seq is None and at_ms is None:
                raise RestoreError(f"shard {shard}: the archived log has a gap after seq {end} "
                                   f"(next segment starts at {segment.first_seq})")
            break
        chosen.append(segment)
        end = segment.last_seq
    if seq is not None:
        if end < seq:
            raise RestoreError(f"shard {shard}: the archived log reaches seq {end}, not the requested "
                               f"seq {seq}")
        end = seq
    return chosen, end


def _download(store: Store, segments: list[RemoteSegment], directory: str, progress: Progress) -> None:
    """Add segments to a scratch log directory (made on the first call)."""
    if not os.path.isdir(directory):
        os.makedirs(directory)
        store_manifest(directory, Manifest(epoch=_SCRATCH_EPOCH, first_seq=segments[0].first_seq))
    shard = segments[0].shard
    progress.step(f"shard {shard}: downloading {len(segments)} log segment(s), seq {segments[0].first_seq}-"
                  f"{segments[-1].last_seq}, {sum(s.size for s in segments)} bytes")
    with progress.bar(f"shard {shard} log", sum(s.size for s in segments), "B") as bar:
        for segment in segments:
            store.download_segment(segment, os.path.join(directory, segment_name(segment.first_seq)), bar.update)


def init_log_dir(log_dir: str, next_seq: int, epoch: int) -> None:
    """An empty shard log whose first record will be next_seq."""
    os.makedirs(log_dir, exist_ok=True)
    store_manifest(log_dir, Manifest(epoch=epoch, first_seq=next_seq))
    fd = os.open(os.path.join(log_dir, segment_name(next_seq)), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    with Log.open(log_dir) as wal:  # proves the directory is a valid log
        if wal.tail_seq != next_seq - 1:
            raise RestoreError(f"{log_dir}: new log ends at seq {wal.tail_seq}, expected {next_seq - 1}")


def restore_shard(store: Store, shard: int, shards: int, shard_dir: str, *,
                  seq: int | None = None, at_ms: int | None = None,
                  progress: Progress | None = None) -> ShardRestore:
    """Restore one shard into shard_dir (which must hold no log yet)."""
    progress = progress or Progress()
    snapshots = store.list_snapshots(shard)
    base = choose_snapshot(snapshots, seq, at_ms)
    later_chains = {s.manifest.seq: s.manifest.chain for s in snapshots}
    ctx = new_context(slot_range=slot_ranges(shards)[shard])
    base_seq, chain, epoch = 0, CHAIN_START, 0
    if base is not None:
        m = base.manifest
        if m.shards != shards:
            raise RestoreError(f"shard {shard}: snapshot at seq {m.seq} belongs to a {m.shards}-shard "
                               f"cluster, not {shards}")
        progress.step(f"shard {shard}: downloading snapshot seq {m.seq} ({m.rdb_bytes} bytes)")
        try:
            with progress.bar(f"shard {shard} snapshot", m.rdb_bytes, "B") as bar:
                local = store.download_snapshot(base, shard_dir, bar.update)
            progress.step(f"shard {shard}: loading and verifying snapshot seq {m.seq} ({m.keys} keys)")
            load_snapshot(local, ctx.db, check_digest=True)
        except SnapshotInvalid as e:
            raise RestoreError(f"shard {shard}: snapshot at seq {m.seq} does not verify: {e}") from None
        base_seq, chain, epoch = m.seq, m.chain, m.epoch
    segments, end = _segments_after(store, shard, base_seq, seq, at_ms)
    if base is None and not segments:
        raise RestoreError(f"shard {shard}: no snapshot and no archived log at or before the target "
                           f"in {store.url}")
    replayed, last_at_ms = 0, base.manifest.last_record_at_ms if base else 0
    met_later_record = False
    if end > base_seq:
        # With at_ms: one segment at a time, until a record written after at_ms shows up.
        batches = [segments] if at_ms is None else [[segment] for segment in segments]
        last = base_seq
        with tempfile.TemporaryDirectory(dir=shard_dir, prefix="restore-") as scratch:
            scratch_log = os.path.join(scratch, "log")
            for batch in batches:
                _download(store, batch, scratch_log, progress)
                through = min(batch[-1].last_seq, end)
                progress.step(f"shard {shard}: replaying seq {last + 1}-{through}")
                try:
                    with progress.bar(f"shard {shard} replay", through - last, " records") as bar:
                        result = replay_log(ctx, scratch_log, last, through, chain, lambda _seq: bar.update(),
                                            checkpoints={s: c for s, c in later_chains.items()
                                                         if last < s <= through},
                                            until_ms=at_ms)
                except (ChainMismatch, LogError) as e:
                    raise RestoreError(f"shard {shard}: archived log does not continue snapshot seq "
                                       f"{base_seq}: {e}") from None
                replayed += result.records
                chain, epoch, last = result.chain, max(epoch, result.last_epoch), result.last_seq
                last_at_ms = result.last_record_at_ms if result.records else last_at_ms
                if result.last_seq < through:
                    met_later_record = True
                    break
        end = last
    covers = at_ms is None or met_later_record or _marker_covers(store, shard, end, at_ms)
    if at_ms is not None and not covers:
        progress.step(f"shard {shard}: the archive ends at seq {end} (written at {last_at_ms} ms), before "
                      f"the target {at_ms} ms")
    if end > base_seq:
        settle_keyspace(ctx.db, ctx.shard.settings)  # the state the snapshot loads to
        digest = state_digest(ctx.db)
        write_snapshot(ctx.db, shard_dir, dict(
            shard=shard, shards=shards, slot_ranges=[slot_ranges(shards)[shard]], seq=end, epoch=epoch,
            chain=chain, parent_seq=base_seq, parent_chain=base.manifest.chain if base else CHAIN_START,
            records_replayed=replayed, tail_fixed_at_ms=0, last_record_at_ms=last_at_ms), digest)
    elif base is not None:
        digest = base.manifest.state_digest
    else:
        raise RestoreError(f"shard {shard}: no snapshot and no archived record at or before the target "
                           f"in {store.url}")
    init_log_dir(log_dir_of(shard_dir), end + 1, epoch)
    progress.step(f"shard {shard}: restored to seq {end} ({len(ctx.db.data)} keys)")
    return ShardRestore(shard, base_seq, end, replayed, len(ctx.db.data), digest, last_at_ms, covers)


def _marker_covers(store: Store, shard: int, end: int, at_ms: int) -> bool:
    """An archive that ends at seq `end` still covers at_ms if the archiver saw,
    at a time >= at_ms, that the shard had nothing durable after `end`."""
    marker = store.read_marker(shard) if store.archives_log else None
    return marker is not None and marker.at_ms >= at_ms and marker.through_seq <= end


def _gap_message(gaps: list[ShardRestore], at_ms: int) -> str:
    parts = [f"shard {g.shard}'s archive ends at seq {g.seq} (last record written at "
             f"{_utc(g.last_record_at_ms)}) < {_utc(at_ms)}" for g in gaps]
    return ("; ".join(parts) + ": the shards cannot be restored to one consistent time (wait for the archive "
            "to catch up, pick an earlier --at, or pass --allow-partial)")


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def shards_in_store(store: Store) -> int:
    """The cluster's shard count, from its published manifests."""
    snapshots = store.list_snapshots()
    counts = {s.manifest.shards for s in snapshots}
    if not counts:
        raise RestoreError(f"no snapshot found in {store.url}")
    if len(counts) > 1:
        raise RestoreError(f"{store.url} holds snapshots of clusters with {sorted(counts)} shards")
    return counts.pop()


def data_dir_is_empty(data_dir: str) -> bool:
    return not os.path.exists(data_dir) or not set(os.listdir(data_dir)) - {LOCK_FILE}


def restore(store: Store, data_dir: str, *, seq: int | dict[int, int] | None = None,
            at_ms: int | None = None, force: bool = False, allow_partial: bool = False,
            progress: Progress | None = None) -> list[ShardRestore]:
    """Restore every shard into data_dir (empty, or replaced with force).
    seq: one target for every shard, or {shard: seq} (shards not named: newest).
    at_ms: one time for every shard; a shard whose archive does not cover it is
    an error naming the gap, unless allow_partial. On any failure data_dir is
    left as it was. The data-dir lock and every shard log's lock are held
    throughout, as a server holds them: refused (LockHeld naming the pid) while
    anything serves from data_dir, even with force."""
    target = os.path.abspath(data_dir)
    existed = os.path.exists(target)
    os.makedirs(target, exist_ok=True)
    try:
        with exclusive_data_dir(target, "durakv restore"):
            return _restore_locked(store, target, seq=seq, at_ms=at_ms, force=force,
                                   allow_partial=allow_partial, progress=progress)
    except BaseException:
        if not existed:
            shutil.rmtree(target, ignore_errors=True)
        raise


def _restore_locked(store: Store, target: str, *, seq: int | dict[int, int] | None, at_ms: int | None,
                    force: bool, allow_partial: bool, progress: Progress | None) -> list[ShardRestore]:
    """Build the restore in a staging dir beside target; move it in only when it is whole."""
    store.check_bucket()
    shards = shards_in_store(store)
    if not data_dir_is_empty(target) and not force:
        raise RestoreError(f"{target} is not empty; restore refuses to mix histories "
                           "(use --force to replace its contents)")
    parent = os.path.dirname(target)
    staging = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(target)}.restore-")
    try:
        out = []
        for shard in range(shards):
            shard_dir = shard_dir_of(staging, shard)
            os.makedirs(shard_dir)
            shard_seq = seq.get(shard) if isinstance(seq, dict) else seq
            out.append(restore_shard(store, shard, shards, shard_dir, seq=shard_seq, at_ms=at_ms,
                                     progress=progress))
        gaps = [r for r in out if not r.covers_at]
        if gaps and not allow_partial:
            raise RestoreError(_gap_message(gaps, at_ms))
        for name in os.listdir(target):
            if name == LOCK_FILE:
                continue
            path = os.path.join(target, name)
            shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.unlink(path)
        for name in os.listdir(staging):
            os.rename(os.path.join(staging, name), os.path.join(target, name))
        OS_DISK.fsync_dir(target)
        OS_DISK.fsync_dir(parent)
        return out
    finally:
        shutil.rmtree(staging)
