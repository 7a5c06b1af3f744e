"""Rebuilding a data directory from S3 alone.

For each shard: the newest published snapshot at or before the target (by seq,
or by the wall-clock time its tail was fixed), checked three ways (the RDB's
sha256, the state digest of what it loads, and the log chain wherever a later
snapshot names one), then the archived log segments after it up to the target,
each sha256-checked, replayed with the shards' engine. The result is written
as a fresh local snapshot at the target seq plus an empty log that continues at
target + 1, so `durakv serve --data-dir DIR` starts from exactly that state.

Point in time: `seq` is exact, and so is `at_ms` to the record: every record
carries the time its shard wrote it (shards.records), never decreasing along
a log. The restore starts from the newest snapshot whose last record was
written at or before at_ms and replays archived records up to the last one
written at or before at_ms. Records still only in a shard's active (not yet
archived) segment cannot be reached from S3; the restore then stops at the
end of the archive and says so.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass

from log import Log, LogError
from log.manifest import Manifest, segment_name, store_manifest
from shards.slots import slot_ranges
from snapshotter.build import write_snapshot
from snapshotter.digest import state_digest
from snapshotter.local import SnapshotInvalid, load_snapshot, shard_dir_of
from snapshotter.progress import Progress
from snapshotter.replay import CHAIN_START, ChainMismatch, new_context, replay_log
from snapshotter.store import META_LAST_WRITE_MS, RemoteSegment, RemoteSnapshot, Store

# Epoch written into the scratch log directory used to read archived segments:
# above any real epoch, so the reader's "epoch <= manifest epoch" rule holds.
_SCRATCH_EPOCH = 1 << 62


class RestoreError(Exception):
    """Restore cannot produce the requested state; the message says why."""


@dataclass
class ShardRestore:
    shard: int
    snapshot_seq: int
    seq: int
    records_replayed: int
    keys: int
    state_digest: str


def choose_snapshot(snapshots: list[RemoteSnapshot], seq: int | None, at_ms: int | None) -> RemoteSnapshot | None:
    usable = [s for s in snapshots if s.complete]
    if seq is not None:
        usable = [s for s in usable if s.manifest.seq <= seq]
    if at_ms is not None:
        usable = [s for s in usable if s.manifest.last_record_at_ms <= at_ms]
    return usable[-1] if usable else None


def _segments_after(store: Store, shard: int, base_seq: int, seq: int | None,
                    at_ms: int | None) -> tuple[list[RemoteSegment], int]:
    """The archived segments needed after base_seq, and the seq they reach. With
    at_ms, the segments through the first one last written after at_ms (it may
    still hold records written before)."""
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
        if at_ms is not None and int(store.segment_metadata(segment).get(META_LAST_WRITE_MS, "0")) > at_ms:
            break
    if seq is not None:
        if end < seq:
            raise RestoreError(f"shard {shard}: the archived log reaches seq {end}, not the requested "
                               f"seq {seq}")
        end = seq
    return chosen, end


def _scratch_log(store: Store, segments: list[RemoteSegment], directory: str,
                 progress: Progress) -> None:
    os.makedirs(directory)
    shard = segments[0].shard
    progress.step(f"shard {shard}: downloading {len(segments)} log segment(s), seq {segments[0].first_seq}-"
                  f"{segments[-1].last_seq}, {sum(s.size for s in segments)} bytes")
    with progress.bar(f"shard {shard} log", sum(s.size for s in segments), "B") as bar:
        for segment in segments:
            store.download_segment(segment, os.path.join(directory, segment_name(segment.first_seq)), bar.update)
    store_manifest(directory, Manifest(epoch=_SCRATCH_EPOCH, first_seq=segments[0].first_seq))


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
    replayed = 0
    archive_end = end
    if end > base_seq:
        with tempfile.TemporaryDirectory(dir=shard_dir, prefix="restore-") as scratch:
            scratch_log = os.path.join(scratch, "log")
            _scratch_log(store, segments, scratch_log, progress)
            progress.step(f"shard {shard}: replaying seq {base_seq + 1}-{end}")
            try:
                with progress.bar(f"shard {shard} replay", end - base_seq, " records") as bar:
                    result = replay_log(ctx, scratch_log, base_seq, end, chain, lambda _seq: bar.update(),
                                        checkpoints={s: c for s, c in later_chains.items() if base_seq < s <= end},
                                        until_ms=at_ms)
            except (ChainMismatch, LogError) as e:
                raise RestoreError(f"shard {shard}: archived log does not continue snapshot seq "
                                   f"{base_seq}: {e}") from None
        replayed, chain, epoch = result.records, result.chain, max(epoch, result.last_epoch)
        end = result.last_seq
        if at_ms is not None and end == archive_end:
            progress.step(f"shard {shard}: the archived log ends at seq {end} (written at "
                     f"{result.last_record_at_ms} ms); records after it are not in S3 yet")
    if end > base_seq:
        digest = state_digest(ctx.db)
        write_snapshot(ctx.db, shard_dir, dict(
            shard=shard, shards=shards, slot_ranges=[slot_ranges(shards)[shard]], seq=end, epoch=epoch,
            chain=chain, parent_seq=base_seq, parent_chain=base.manifest.chain if base else CHAIN_START,
            records_replayed=replayed, tail_fixed_at_ms=0, last_record_at_ms=result.last_record_at_ms), digest)
    elif base is not None:
        digest = base.manifest.state_digest
    else:
        raise RestoreError(f"shard {shard}: no snapshot and no archived record at or before the target "
                           f"in {store.url}")
    init_log_dir(os.path.join(shard_dir, "log"), end + 1, epoch)
    progress.step(f"shard {shard}: restored to seq {end} ({len(ctx.db.data)} keys)")
    return ShardRestore(shard, base_seq, end, replayed, len(ctx.db.data), digest)


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
    return not os.path.exists(data_dir) or not os.listdir(data_dir)


def restore(store: Store, data_dir: str, *, seq: int | dict[int, int] | None = None,
            at_ms: int | None = None, force: bool = False,
            progress: Progress | None = None) -> list[ShardRestore]:
    """Restore every shard into data_dir (empty, or emptied first with force).
    seq: one target for every shard, or {shard: seq} (shards not named: newest)."""
    store.check_bucket()
    shards = shards_in_store(store)
    if not data_dir_is_empty(data_dir):
        if not force:
            raise RestoreError(f"{data_dir} is not empty; restore refuses to mix histories "
                               "(use --force to replace its contents)")
        for name in os.listdir(data_dir):
            path = os.path.join(data_dir, name)
            shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.unlink(path)
    os.makedirs(data_dir, exist_ok=True)
    out = []
    for shard in range(shards):
        shard_dir = shard_dir_of(data_dir, shard)
        os.makedirs(shard_dir, exist_ok=True)
        target = seq.get(shard) if isinstance(seq, dict) else seq
        out.append(restore_shard(store, shard, shards, shard_dir, seq=target, at_ms=at_ms, progress=progress))
    return out
