"""Seeding a new durakv data directory from a Redis RDB file.

Keys are split to shards by hash slot and written as ordinary log records of
deterministic effects (SET, RPUSH, HSET, SADD, ZADD, then PEXPIREAT), the same
records a client writing those keys would have produced. Chosen over writing
local snapshots because the log is durakv's truth: the imported data is then
archived, snapshotted and restorable like any other write, a shard needs no
special start path, and each value gets the encoding durakv (like Redis when
it loads an RDB) derives from the current thresholds. Keys already expired
are skipped, as a Redis master skips them when it loads an RDB. The RDB's
function libraries are compiled first (a library durakv cannot load fails the
import) and written to every shard as FUNCTION LOAD REPLACE effects, as
FUNCTION LOAD itself logs them on every shard.

After writing, every shard's log is replayed into a scratch keyspace with the
shards' own engine and its state digest must equal the digest of the values
read from the RDB: an import either reproduces the file exactly or fails.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator

from durakv.log.layout import log_dir_of, shard_log_dir
from durakv.log import Log
from durakv.log.lock import exclusive_data_dir
from durakv.shards.keyspace import Keyspace
from durakv.shards.records import RecordClock, encode_record
from durakv.shards.resp import ReplyError, format_double
from durakv.shards.slots import key_slot, slot_owner_table, slot_ranges
from durakv.shards.t_hash import HashValue
from durakv.shards.t_list import ListValue
from durakv.shards.t_set import SetValue
from durakv.shards.t_function import restore_libraries
from durakv.shards.t_stream import StreamValue
from durakv.shards.t_zset import ZSetValue
from durakv.snapshotter.digest import state_digest, with_libraries
from durakv.snapshotter.local import shard_dir_of
from durakv.shards.rdb.codec import RdbError, Unsupported, dump_payload
from durakv.shards.rdb.file import RdbReader
from durakv.snapshotter.replay import CHAIN_START, new_context, replay_log

LIST_FILL_UNUSED = -2  # dump_payload's list fill, which a stream payload does not use
ARGS_PER_EFFECT = 1024          # elements per RPUSH/HSET/SADD/ZADD effect
RECORD_MAX_BYTES = 1 << 20      # effects are grouped into records of about this size
SYNC_EVERY_BYTES = 64 << 20     # fsync the logs at least this often


class RdbImportError(Exception):
    """The RDB cannot be imported as asked (unsupported values, non-empty target)."""


@dataclass
class ImportReport:
    shards: int
    keys: int = 0
    expired_skipped: int = 0
    unsupported_skipped: list[str] = field(default_factory=list)
    per_shard_keys: list[int] = field(default_factory=list)
    records: int = 0
    libraries: int = 0


def value_effects(key: bytes, value: object, expire_ms: int | None) -> Iterator[list[bytes]]:
    """Effects that recreate value at key (on a shard where key does not exist)."""
    t = type(value)
    if t is bytes or t is bytearray:
        yield [b"SET", key, bytes(value)] + ([b"PXAT", b"%d" % expire_ms] if expire_ms is not None else [])
        return
    if t is ListValue:
        items = list(value)
        for i in range(0, len(items), ARGS_PER_EFFECT):
            yield [b"RPUSH", key, *items[i:i + ARGS_PER_EFFECT]]
    elif t is HashValue:
        pairs = list(value.items())
        for i in range(0, len(pairs), ARGS_PER_EFFECT):
            yield [b"HSET", key, *(x for pair in pairs[i:i + ARGS_PER_EFFECT] for x in pair)]
    elif t is SetValue:
        members = list(value)
        for i in range(0, len(members), ARGS_PER_EFFECT):
            yield [b"SADD", key, *members[i:i + ARGS_PER_EFFECT]]
    elif t is ZSetValue:
        pairs = [(format_double(score), member) for score, member in value.order]
        for i in range(0, len(pairs), ARGS_PER_EFFECT):
            yield [b"ZADD", key, *(x for pair in pairs[i:i + ARGS_PER_EFFECT] for x in pair)]
    elif t is StreamValue:
        # A stream's groups, PELs and counters have no plain-command form short of
        # the log's own effects; its RESTORE payload (the same RDB object) is exact.
        yield [b"RESTORE", key, b"0", dump_payload(value, LIST_FILL_UNUSED), b"REPLACE"]
    else:
        raise RdbImportError(f"key {key[:64]!r}: cannot import a {t.__name__}")
    if expire_ms is not None:
        yield [b"PEXPIREAT", key, b"%d" % expire_ms]


class _ShardWriter:
    def __init__(self, shard_dir: str, shard: int) -> None:
        log_dir = log_dir_of(shard_dir)
        self.log = Log.open(log_dir, holder="durakv import-rdb")
        if self.log.tail_seq != 0:
            self.log.close()
            raise RdbImportError(f"{log_dir} already holds records; import-rdb seeds empty data directories only")
        self.lease = self.log.take_lease(f"import-rdb shard-{shard} pid {os.getpid()}")
        self.effects: list[list[bytes]] = []
        self.pending_bytes = 0
        self.unsynced_bytes = 0
        self.records = 0
        self.clock = RecordClock()

    def add(self, effect: list[bytes]) -> None:
        self.effects.append(effect)
        self.pending_bytes += sum(map(len, effect)) + 4 * len(effect)
        if self.pending_bytes >= RECORD_MAX_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.effects:
            # changes=0: loading an RDB leaves Redis' dirty counter at 0 (shards/changes.py)
            payload = encode_record(self.clock.now_ms(), self.effects, changes=0)
            self.log.append([payload], self.log.tail_seq, self.lease)
            self.records += 1
            self.unsynced_bytes += len(payload)
            self.effects, self.pending_bytes = [], 0
        if self.unsynced_bytes >= SYNC_EVERY_BYTES:
            self.log.sync()
            self.unsynced_bytes = 0

    def close(self) -> int:
        self.flush()
        self.log.sync()
        tail = self.log.tail_seq
        self.log.close()
        return tail


def import_rdb(f: BinaryIO, data_dir: str, shards: int, skip_unsupported: bool = False,
               now_ms: int | None = None) -> ImportReport:
    """Import the RDB read from f into data_dir's shard logs (which must be empty)."""
    now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    os.makedirs(data_dir, exist_ok=True)
    # The data-dir lock, as `durakv serve` holds it; each _ShardWriter's Log takes its
    # shard's log lock. Either held: LockHeld naming the pid, before anything is written.
    with exclusive_data_dir(data_dir, "durakv import-rdb", shard_logs=False):
        return _import_locked(f, data_dir, shards, skip_unsupported, now_ms)


def _import_locked(f: BinaryIO, data_dir: str, shards: int, skip_unsupported: bool,
                   now_ms: int) -> ImportReport:
    owners = slot_owner_table(shards)
    report = ImportReport(shards, per_shard_keys=[0] * shards)
    expected = [Keyspace() for _ in range(shards)]
    writers: list[_ShardWriter] = []
    try:
        for shard in range(shards):
            shard_dir = shard_dir_of(data_dir, shard)
            os.makedirs(shard_dir, exist_ok=True)
            writers.append(_ShardWriter(shard_dir, shard))
        reader = RdbReader(f)
        codes = reader.info.functions  # filled as the reader passes them, before the keys in Redis' files
        checked = 0
        for entry in reader.entries():
            if len(codes) > checked:  # refuse a library before any key is written
                _check_libraries(codes)
                checked = len(codes)
            if entry.db != 0:
                raise RdbImportError(f"key {entry.key[:64]!r} is in database {entry.db}; durakv has database 0 "
                                   "only")
            if type(entry.value) is Unsupported:
                if not skip_unsupported:
                    raise RdbImportError(f"key {entry.key[:64]!r} is a {entry.value.kind}, which durakv cannot "
                                       "hold (--skip-unsupported imports the rest)")
                report.unsupported_skipped.append(f"{entry.key[:64]!r} ({entry.value.kind})")
                continue
            if entry.expire_ms is not None and entry.expire_ms <= now_ms:
                report.expired_skipped += 1
                continue
            shard = owners[key_slot(entry.key)]
            db = expected[shard]
            if entry.key in db.data:
                raise RdbError(f"key {entry.key[:64]!r} appears twice in the RDB")
            db.put(entry.key, entry.value)
            if entry.expire_ms is not None:
                db.set_expire(entry.key, entry.expire_ms)
            for effect in value_effects(entry.key, entry.value, entry.expire_ms):
                writers[shard].add(effect)
            report.keys += 1
            report.per_shard_keys[shard] += 1
        report.unsupported_skipped.extend(reader.info.skipped)
        if len(codes) > checked:
            _check_libraries(codes)
        for writer in writers:
            for code in codes:
                writer.add([b"FUNCTION", b"LOAD", b"REPLACE", code])
        report.libraries = len(codes)
        tails = [w.close() for w in writers]
        writers = []
    finally:
        for w in writers:
            w.log.close()
    report.records = sum(tails)
    for shard in range(shards):
        _verify_shard(data_dir, shard, shards, tails[shard], expected[shard], codes)
    return report


def _check_libraries(codes: list[bytes]) -> None:
    """The libraries load together in durakv's Lua, as a shard replaying them will."""
    try:
        restore_libraries(Keyspace(), codes)
    except ReplyError as e:
        raise RdbImportError(f"function library: {e.message.decode(errors='replace')}") from None


def _verify_shard(data_dir: str, shard: int, shards: int, tail: int, expected: Keyspace,
                  codes: list[bytes]) -> None:
    ctx = new_context(slot_range=slot_ranges(shards)[shard])
    replay_log(ctx, shard_log_dir(data_dir, shard), 0, tail, CHAIN_START)
    got, want = state_digest(ctx.db), with_libraries(state_digest(expected), codes)
    if got != want:
        raise RdbImportError(f"shard {shard}: replaying the imported log gives state digest {got}, the RDB "
                           f"holds {want}")
