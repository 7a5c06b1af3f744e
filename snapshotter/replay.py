"""Rebuilding a shard's keyspace off the serving path: the shards' own engine
(shards.engine.replay, the code path a shard uses at start) applied to log
records read lock-free from the shard's log directory."""

from __future__ import annotations

import hashlib
import os
from typing import Callable, Iterator

import durakv.log as wal
import durakv.shards.commands  # noqa: F401  (registers every command the effects may name)
from durakv.shards.changes import replayed
from durakv.shards.context import Ctx
from durakv.shards.engine import replay
from durakv.shards.keyspace import Keyspace
from durakv.shards.records import decode_record
from durakv.shards.shard_settings import SHARD_DEFAULTS
from durakv.shards.slots import SLOT_COUNT
from durakv.snapshotter.pace import unpaced
from durakv.snapshotter.errors import SnapshotterError

# The log-chain checksum starts from 32 zero bytes at seq 0.
CHAIN_START = "0" * 64


class ChainMismatch(SnapshotterError):
    """Records that do not continue the history a snapshot recorded."""


class ReplayShard:
    """What command handlers read from ctx.shard while replaying: the encoding
    settings (Redis 7.0 defaults, as a starting shard has) and the slot range."""

    def __init__(self, slot_range: tuple[int, int] = (0, SLOT_COUNT - 1)) -> None:
        self.settings = dict(SHARD_DEFAULTS)
        self.slot_range = slot_range


def new_context(db: Keyspace | None = None, slot_range: tuple[int, int] = (0, SLOT_COUNT - 1)) -> Ctx:
    return Ctx(Keyspace() if db is None else db, ReplayShard(slot_range))


def chain_step(chain: str, seq: int, payload: bytes) -> str:
    """The log-chain checksum after record `seq`: sha256(previous chain || seq ||
    payload). Two snapshots agree on the chain at seq N only if they were built
    from the same records 1..N, so a snapshot built on the wrong parent, or a
    restore fed a foreign log segment, is detected."""
    h = hashlib.sha256(bytes.fromhex(chain))
    h.update(seq.to_bytes(8, "little"))
    h.update(payload)
    return h.hexdigest()


class ReplayResult:
    __slots__ = ("last_seq", "last_epoch", "last_record_at_ms", "records", "effects", "chain")

    def __init__(self, seq: int, chain: str) -> None:
        self.last_seq = seq
        self.last_epoch = 0
        self.last_record_at_ms = 0
        self.records = 0
        self.effects = 0
        self.chain = chain


def replay_records(ctx: Ctx, records: Iterator[tuple[int, int, bytes]], after_seq: int, chain: str,
                   progress: Callable[[int], None] | None = None,
                   checkpoints: dict[int, str] | None = None, until_ms: int | None = None,
                   pace: Callable[[], None] = unpaced) -> ReplayResult:
    """Apply (seq, epoch, payload) records that must follow after_seq with no gap,
    stopping before the first record written after until_ms (point in time).
    checkpoints maps seqs to the log-chain checksum other snapshots recorded
    there; a different chain means these records are not the ones those
    snapshots were built from (ChainMismatch)."""
    result = ReplayResult(after_seq, chain)
    for seq, epoch, payload in records:
        pace()
        if seq != result.last_seq + 1:
            raise wal.LogCorrupt("<records>", 0, f"log records jump from seq {result.last_seq} to {seq}")
        record = decode_record(payload)
        if until_ms is not None and record.written_at_ms > until_ms:
            break
        effects = record.effects
        replay(ctx, effects)
        replayed(ctx.db, record)
        result.chain = chain_step(result.chain, seq, payload)
        if checkpoints and seq in checkpoints and checkpoints[seq] != result.chain:
            raise ChainMismatch(f"log-chain checksum at seq {seq} is {result.chain}, the snapshot at "
                                f"that seq recorded {checkpoints[seq]}")
        result.last_seq = seq
        result.last_epoch = epoch
        result.last_record_at_ms = record.written_at_ms
        result.records += 1
        result.effects += len(effects)
        if progress is not None:
            progress(seq)
    ctx.db.effects.clear()
    return result


def replay_log(ctx: Ctx, log_dir: str, after_seq: int, through_seq: int, chain: str,
               progress: Callable[[int], None] | None = None,
               checkpoints: dict[int, str] | None = None, until_ms: int | None = None,
               pace: Callable[[], None] = unpaced) -> ReplayResult:
    """Replay the shard log at log_dir from after_seq + 1 through through_seq,
    or up to the last record written at or before until_ms if that comes first."""
    if through_seq <= after_seq:
        return ReplayResult(after_seq, chain)
    result = replay_records(ctx, wal.read(os.fspath(log_dir), after_seq + 1, through_seq=through_seq),
                            after_seq, chain, progress, checkpoints, until_ms, pace)
    if result.last_seq != through_seq and until_ms is None:
        raise wal.LogCorrupt(log_dir, 0, f"log ends at seq {result.last_seq}, expected {through_seq}")
    return result
