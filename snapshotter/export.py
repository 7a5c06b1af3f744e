"""`durakv export-rdb`: one RDB (database 0) holding every shard's keys, as
redis-server 7.0 can load it.

From a data directory the state is each shard's newest local snapshot plus its
durable log after it (what the shard would load at start); from S3 it is each
shard's newest published snapshot, checked (sha256 and state digest) on the way;
with the logs on etcd (`--config`) it is each shard's snapshot (the data dir's
cache, else the store's) plus every record on etcd after it.
The function libraries are shard 0's (every shard holds the same set).
"""

from __future__ import annotations

import os
import tempfile
import time

from durakv.log.errors import LogCorrupt, RecordsDropped
from durakv.log.layout import log_dir_of
from durakv.shards.keyspace import Keyspace
from durakv.shards.slots import slot_ranges
from durakv.shards.t_function import library_codes
from durakv.snapshotter.local import load_snapshot, newest_local, shard_dir_of
from durakv.snapshotter.logtail import durable_tail
from durakv.log.durable_file import rename_durably
from durakv.shards.rdb.file import RdbWriter, default_aux
from durakv.snapshotter.base import ensure_base
from durakv.snapshotter.logsource import EtcdLogSource
from durakv.snapshotter.replay import CHAIN_START, new_context, replay_log, replay_records
from durakv.snapshotter.restore import choose_snapshot, shards_in_store
from durakv.snapshotter.runner import shard_count
from durakv.snapshotter.store import Store

ETCD_READ_ATTEMPTS = 3


def shard_state_from_dir(data_dir: str, shard: int, shards: int) -> Keyspace:
    shard_dir = shard_dir_of(data_dir, shard)
    ctx = new_context(slot_range=slot_ranges(shards)[shard])
    base = newest_local(shard_dir)
    if base is not None:
        load_snapshot(base, ctx.db)
    log_dir = log_dir_of(shard_dir)
    base_seq = base.manifest.seq if base else 0
    if os.path.isdir(log_dir):
        replay_log(ctx, log_dir, base_seq, durable_tail(log_dir), base.manifest.chain if base else CHAIN_START)
    return ctx.db


def shard_state_from_store(store: Store, shard: int) -> Keyspace:
    remote = choose_snapshot(store.list_snapshots(shard), None, None)
    db = Keyspace()
    if remote is None:
        return db
    with tempfile.TemporaryDirectory() as scratch:
        local = store.download_snapshot(remote, scratch)
        load_snapshot(local, db, check_digest=True)
    return db


def shard_state_from_etcd(source: EtcdLogSource, store: Store, data_dir: str, shard: int, shards: int) -> Keyspace:
    """The newest state of a shard whose log is on etcd: the data dir's cached snapshot
    (or the store's newest, when etcd no longer holds the records before it) plus
    every record on etcd after it. A drop that races the read (the shard truncated
    meanwhile) is retried with the new first seq."""
    for attempt in range(ETCD_READ_ATTEMPTS):
        ctx = new_context(slot_range=slot_ranges(shards)[shard])
        first, tail = source.first_seq(shard), source.durable_tail(shard)
        with tempfile.TemporaryDirectory() as scratch:
            mark = source.restore_mark(shard)
            base = ensure_base(store, shard, shard_dir_of(data_dir, shard), first, tail, source.name(shard),
                               download_dir=scratch, mark=mark)
            if base is None:
                cached = newest_local(shard_dir_of(data_dir, shard))
                base = cached if cached is not None and cached.manifest.seq <= tail and not (
                    mark is not None and mark.discarded(cached.manifest.seq, cached.manifest.epoch)) else None
            if base is not None:
                load_snapshot(base, ctx.db, check_digest=True)
        base_seq = base.manifest.seq if base else 0
        try:
            result = replay_records(ctx, source.read(shard, base_seq + 1, tail), base_seq,
                                    base.manifest.chain if base else CHAIN_START)
        except RecordsDropped:
            if attempt + 1 == ETCD_READ_ATTEMPTS:
                raise
            continue
        if result.last_seq != tail:
            raise LogCorrupt(source.name(shard), 0, f"log ends at seq {result.last_seq}, expected {tail}")
        return ctx.db
    raise AssertionError("unreachable: the last attempt returns or raises")


def export_rdb(out_path: str, *, data_dir: str | None = None, store: Store | None = None,
               etcd: EtcdLogSource | None = None) -> int:
    """Write the whole dataset to out_path; returns the number of keys. With etcd (the
    logs on etcd): data_dir's snapshot cache and the store fill in what etcd dropped."""
    if etcd is not None:
        if data_dir is None or store is None:
            raise ValueError("export from etcd needs the data directory and the snapshot store")
        shards = etcd.shards()
        states = [shard_state_from_etcd(etcd, store, data_dir, s, shards) for s in range(shards)]
        return _write(out_path, states)
    if (data_dir is None) == (store is None):
        raise ValueError("export from exactly one of a data directory or a snapshot store")
    if data_dir is not None:
        shards = shard_count(data_dir)
        states = [shard_state_from_dir(data_dir, s, shards) for s in range(shards)]
    else:
        shards = shards_in_store(store)
        states = [shard_state_from_store(store, s) for s in range(shards)]
    return _write(out_path, states)


def _write(out_path: str, states: list[Keyspace]) -> int:
    keys = sum(len(db.data) for db in states)
    tmp = out_path + ".tmp"
    with open(tmp, "wb") as f:
        writer = RdbWriter(f, default_aux(int(time.time())), library_codes(states[0]) if states else ())
        writer.select_db(0, keys, sum(len(db.expires) for db in states))
        for db in states:
            for key, value in db.data.items():
                writer.write_key(key, value, db.expires.get(key))
        writer.finish()
        f.flush()
        os.fsync(f.fileno())
    rename_durably(tmp, out_path)
    return keys
