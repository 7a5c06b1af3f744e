"""Building one shard's snapshot from its log, off the serving path.

    previous snapshot (local cache) + log records (seq + 1 .. tail) --replay-->
    keyspace --write--> <tail>.rdb --re-read, load, digest--> verified --> <tail>.json

The tail is fixed when the build starts (snapshotter.logtail.durable_tail), so
a build covers an exact prefix of the log however fast the shard keeps writing.
Replay is the shards' own engine, so the snapshot is the state a shard
restarting from the log would have (DESIGN invariant 3). The RDB is verified
before the manifest exists (invariant 5): it is read back from disk, loaded
into a scratch keyspace, and its state digest must equal the replay's.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from typing import BinaryIO, Callable

import durakv.log as wal
from durakv.log import OS_DISK
from durakv.log.durable_file import rename_durably, replace_file
from durakv.log.layout import log_dir_of
from durakv.shards.keyspace import Keyspace
from durakv.shards.t_function import library_codes
from durakv.shards.rdb.file import RdbReader, default_aux, keyspace_entries, settle_keyspace, write_keyspace
from durakv.shards.slots import slot_ranges
from durakv.shards.faults import hold_here
from durakv.shards.txn import snapshot_cut
from durakv.snapshotter.digest import ordered_digest, state_digest, with_libraries
from durakv.snapshotter.local import (
    LocalSnapshot,
    load_snapshot,
    newest_local,
    prune_local,
    snapshot_dir,
)
from durakv.snapshotter.logtail import durable_tail
from durakv.snapshotter.manifest import (
    SnapshotManifest,
    encode_manifest,
    snapshot_stem,
)
from durakv.snapshotter.pace import unpaced
from durakv.snapshotter.logsource import EtcdLogSource
from durakv.snapshotter.replay import CHAIN_START, new_context, replay_log, replay_records
from durakv.snapshotter.errors import SnapshotterError

logger = logging.getLogger("durakv.snapshotter")


class SnapshotVerifyFailed(SnapshotterError):
    """The RDB just written does not reproduce the replayed state; nothing is published."""


class _HashingWriter:
    """A file wrapper that hashes what passes through it."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        return self._f.write(data)


@dataclass
class BuildResult:
    snapshot: LocalSnapshot
    replay_ms: int
    write_ms: int  # writing the RDB, reading it back and verifying it


# Fault injection for tests (DURAKV_TXN_HOLD=PATH naming this step): a build waits with its RDB
# written to the .tmp file and no manifest yet, so a test can kill or pause the snapshotter mid-build.
BUILD_HOLD_STEP = "snapshot-mid-build"


def write_snapshot(db: Keyspace, shard_dir: str, fields: dict, digest: str,
                   started: float | None = None, pace: Callable[[], None] = unpaced) -> LocalSnapshot:
    """Write db as a verified local snapshot (RDB, then manifest). `fields` holds
    the SnapshotManifest fields that describe the log position (shard, shards,
    slot_ranges, seq, epoch, chain, parent_seq, parent_chain, records_replayed,
    tail_fixed_at_ms, last_record_at_ms); `started` (monotonic) is when the build began."""
    started = time.monotonic() if started is None else started
    directory = snapshot_dir(shard_dir)
    OS_DISK.makedirs(directory)  # the cache directory itself must survive a power cut
    seq = fields["seq"]
    stem = snapshot_stem(seq)
    rdb_path = os.path.join(directory, stem + ".rdb")
    tmp_path = rdb_path + ".tmp"
    aux = default_aux(int(time.time()), {
        "durakv-shard": fields["shard"], "durakv-seq": seq, "durakv-chain": fields["chain"],
    })
    keys, expires = len(db.data), len(db.expires)
    with open(tmp_path, "wb") as f:
        hashing = _HashingWriter(f)
        # In key order: verify_rdb_file then digests the file as it reads it.
        writer = write_keyspace(hashing, db.data, db.expires, aux, pace, sorted(db.data), library_codes(db))
        f.flush()
        os.fsync(f.fileno())
    hold_here(BUILD_HOLD_STEP, "build")
    rdb_sha256 = hashing.sha256.hexdigest()
    verify_rdb_file(tmp_path, rdb_sha256, digest, pace)
    rename_durably(tmp_path, rdb_path)
    manifest = SnapshotManifest(
        **fields, rdb_name=stem + ".rdb", rdb_bytes=writer.bytes_written, rdb_sha256=rdb_sha256,
        state_digest=digest, keys=keys, expires=expires, created_at_ms=time.time_ns() // 1_000_000,
        build_ms=int((time.monotonic() - started) * 1000), changes=db.changes)
    manifest_path = os.path.join(directory, stem + ".json")
    replace_file(manifest_path, encode_manifest(manifest))
    return LocalSnapshot(manifest, rdb_path, manifest_path)


def verify_rdb_file(path: str, rdb_sha256: str, digest: str, pace: Callable[[], None] = unpaced) -> None:
    """Re-read the RDB from disk: its sha256 and the digest of the state it loads
    must be the ones the writer and the replay produced. The file is in key order
    (write_snapshot), so its digest is computed as it streams past: the
    snapshotter never holds a second copy of a shard's keyspace (issue 11 §4)."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        tee = _HashingReader(f, sha)
        reader = RdbReader(tee)
        entries = ((e.key, e.value, e.expire_ms) for e in keyspace_entries(reader))
        try:
            loaded = with_libraries(ordered_digest(entries, pace), reader.info.functions)
        except ValueError as e:
            raise SnapshotVerifyFailed(f"{path}: keys out of order: {e}") from e
        tee.read_rest()
    if sha.hexdigest() != rdb_sha256:
        raise SnapshotVerifyFailed(f"{path}: sha256 read back {sha.hexdigest()} differs from the "
                                   f"{rdb_sha256} written")
    if loaded != digest:
        raise SnapshotVerifyFailed(f"{path}: the RDB loads to state digest {loaded}, the replay "
                                   f"produced {digest}")


class _HashingReader:
    def __init__(self, f: BinaryIO, sha) -> None:
        self._f = f
        self._sha = sha

    def read(self, n: int) -> bytes:
        data = self._f.read(n)
        self._sha.update(data)
        return data

    def read_rest(self) -> None:
        while self.read(1 << 20):
            pass


def build_snapshot(shard_dir: str, shard: int, shards: int, through_seq: int | None = None,
                   min_records: int = 1, pace: Callable[[], None] = unpaced,
                   source: EtcdLogSource | None = None) -> BuildResult | None:
    """Build the next snapshot of one shard on top of its newest local snapshot.
    Returns None when fewer than min_records (at least 1) records follow it.
    pace() is called for every key and record handled (snapshotter.pace).
    The log is the shard's segment files, or `source` (the log on etcd)."""
    log_dir = log_dir_of(shard_dir)
    tail_fixed_at_ms = time.time_ns() // 1_000_000
    if through_seq is not None:
        tail = through_seq
    else:
        tail = durable_tail(log_dir) if source is None else source.durable_tail(shard)
    base = newest_local(shard_dir)
    base_seq = base.manifest.seq if base else 0
    if through_seq is None and tail > base_seq:
        records = (wal.read(log_dir, base_seq + 1, through_seq=tail) if source is None
                   else source.read(shard, base_seq + 1, tail))
        tail = snapshot_cut(records, base_seq, tail)
    if tail - base_seq < max(min_records, 1):
        return None
    started = time.monotonic()
    slot_range = slot_ranges(shards)[shard]
    ctx = new_context(slot_range=slot_range)
    if base is not None:
        load_snapshot(base, ctx.db, pace=pace)
    parent_chain = base.manifest.chain if base else CHAIN_START
    if source is None:
        result = replay_log(ctx, log_dir, base_seq, tail, parent_chain, pace=pace)
    else:
        result = replay_records(ctx, source.read(shard, base_seq + 1, tail), base_seq, parent_chain, pace=pace)
        if result.last_seq != tail:
            raise wal.LogCorrupt(source.prefix, 0, f"log ends at seq {result.last_seq}, expected {tail}")
    db = ctx.db
    settle_keyspace(db, ctx.shard.settings, pace)  # the state the snapshot loads to
    digest = state_digest(db, pace)
    replayed = time.monotonic()
    fields = dict(
        shard=shard, shards=shards, slot_ranges=[slot_range], seq=tail,
        epoch=result.last_epoch or (base.manifest.epoch if base else 0), chain=result.chain,
        parent_seq=base_seq, parent_chain=parent_chain, records_replayed=result.records,
        tail_fixed_at_ms=tail_fixed_at_ms,
        last_record_at_ms=result.last_record_at_ms or (base.manifest.last_record_at_ms if base else 0))
    snapshot = write_snapshot(db, shard_dir, fields, digest, started, pace)
    done = time.monotonic()
    prune_local(shard_dir)
    logger.info("shard %d: snapshot at seq %d (%d records replayed, %d keys, %d bytes) in %.3f s",
             shard, tail, result.records, snapshot.manifest.keys, snapshot.manifest.rdb_bytes,
             done - started)
    return BuildResult(snapshot, int((replayed - started) * 1000), int((done - replayed) * 1000))
