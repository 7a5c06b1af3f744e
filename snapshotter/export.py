"""`durakv export-rdb`: one RDB (database 0) holding every shard's keys, as
redis-server 7.0 can load it.

From a data directory the state is each shard's newest local snapshot plus its
durable log after it (what the shard would load at start); from S3 it is each
shard's newest published snapshot, checked (sha256 and state digest) on the way.
The function libraries are shard 0's (every shard holds the same set).
"""

from __future__ import annotations

import os
import tempfile
import time

from durakv.log.layout import log_dir_of
from durakv.shards.keyspace import Keyspace
from durakv.shards.slots import slot_ranges
from durakv.shards.t_function import library_codes
from durakv.snapshotter.local import load_snapshot, newest_local, shard_dir_of
from durakv.snapshotter.logtail import durable_tail
from durakv.log.durable_file import rename_durably
from durakv.shards.rdb.file import RdbWriter, default_aux
from durakv.snapshotter.replay import CHAIN_START, new_context, replay_log
from durakv.snapshotter.restore import choose_snapshot, shards_in_store
from durakv.snapshotter.runner import shard_count
from durakv.snapshotter.store import Store


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


def export_rdb(out_path: str, *, data_dir: str | None = None, store: Store | None = None) -> int:
    """Write the whole dataset to out_path; returns the number of keys."""
    if (data_dir is None) == (store is None):
        raise ValueError("export from exactly one of a data directory or a snapshot store")
    if data_dir is not None:
        shards = shard_count(data_dir)
        states = [shard_state_from_dir(data_dir, s, shards) for s in range(shards)]
    else:
        shards = shards_in_store(store)
        states = [shard_state_from_store(store, s) for s in range(shards)]
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
