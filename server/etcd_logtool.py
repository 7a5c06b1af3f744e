"""`durakv log verify|dump|truncate --config FILE` when the config says log-backend =
"etcd": the shard logs on etcd. verify and dump only read (nothing is written, no
lease taken). Every record etcd shows is committed on a quorum, so what verify
checks is the log's shape: no gap between the first retained seq and the last, each
record's header and parts, epochs that never go back, and a payload that decodes as
a record. truncate drops the records a snapshot in the store covers, as a primary
does after each snapshot, but never one a live replica on any node still needs."""

from __future__ import annotations

import sys
from typing import Callable

import msgspec

from durakv.log.errors import LogError
from durakv.log.etcd_client import EtcdClient
from durakv.log.etcd_client import unb64
from durakv.log.etcd_positions import droppable_through
from durakv.log.etcd_records import (Keys, drop_ops, first_and_guard, kvs_of, log_ends, no_logs_message, read,
                                     recorded_shard_count, restore_mark, revision_of, shard_prefix)
from durakv.log.etcd_upkeep import compact_to_floor, floor_prefixes
from durakv.log.reader import MAX_DUMP_PAYLOAD_CHARS
from durakv.shards.config import Config
from durakv.shards.log_backend import etcd_client
from durakv.shards.records import decode_record


def _shard_count(client: EtcdClient, config: Config) -> int:
    count = recorded_shard_count(client, config.etcd_prefix)
    if not count:
        print(f"durakv: {no_logs_message(config.etcd_prefix)}", file=sys.stderr)
    return count


def _leader(client: EtcdClient, prefix: str) -> str:
    kvs = kvs_of(client.range(Keys(prefix.encode()).leader))
    return unb64(kvs[0]["value"]).decode(errors="replace") if kvs else "none"


def verify_etcd_logs(config: Config) -> int:
    """Exit status 0 if every shard log on etcd verifies, 1 otherwise."""
    client = etcd_client(config)
    shards = _shard_count(client, config)
    if not shards:
        return 1
    status = 0
    for shard in range(shards):
        prefix = shard_prefix(config.etcd_prefix, shard)
        first, last = log_ends(client, Keys(prefix.encode()))
        records, epoch, problem = 0, 0, ""
        try:
            for seq, record_epoch, payload in read(client, prefix, first):
                if record_epoch < epoch:
                    problem = f"seq {seq} has epoch {record_epoch}, below the {epoch} of the record before it"
                    break
                epoch = record_epoch
                try:
                    decode_record(payload)
                except msgspec.DecodeError as e:
                    problem = f"seq {seq}: its payload is not a record ({e})"
                    break
                records += 1
        except LogError as e:
            problem = str(e)
        span = f"seq {first}..{last}" if last >= first else f"empty, next seq {first}"
        verdict = f"CORRUPT: {problem}" if problem else "ok"
        print(f"etcd:{prefix}: {records} records, {span}, last epoch {epoch}, leader {_leader(client, prefix)}: "
              f"{verdict}")
        if problem or records != last - first + 1:
            status = 1
    return status


def _shard_log_prefix(client: EtcdClient, config: Config, shard: int) -> str | None:
    """Shard `shard`'s log prefix on etcd; None (the reason printed) when etcd holds no
    shard logs there or the shard is out of their range."""
    shards = _shard_count(client, config)
    if not shards:
        return None
    if not 0 <= shard < shards:
        print(f"durakv: --shard {shard} is out of range: etcd-prefix {config.etcd_prefix!r} holds {shards} "
              "shard logs", file=sys.stderr)
        return None
    return shard_prefix(config.etcd_prefix, shard)


def dump_etcd_log(config: Config, shard: int, from_seq: int, limit: int | None,
                  render: Callable[[bytes], str]) -> int:
    """Print records from from_seq (or the first retained) on, as `durakv log dump`
    prints a local log's, the etcd key in place of segment and offset."""
    client = etcd_client(config)
    prefix = _shard_log_prefix(client, config, shard)
    if prefix is None:
        return 1
    keys = Keys(prefix.encode())
    printed = 0
    try:
        start = max(from_seq, log_ends(client, keys)[0])
        for seq, epoch, payload in read(client, prefix, start):
            if limit is not None and printed >= limit:
                break
            shown = repr(render(payload))
            if len(shown) > MAX_DUMP_PAYLOAD_CHARS:
                shown = shown[:MAX_DUMP_PAYLOAD_CHARS] + f"...({len(shown)} chars)"
            print(f"seq={seq} epoch={epoch} key={keys.record(seq).decode()} bytes={len(payload)} payload={shown}")
            printed += 1
    except LogError as e:
        print(f"durakv: {e}", file=sys.stderr)
        return 1
    return 0


def truncate_etcd_log(config: Config, shard: int, yes: bool) -> int:
    """Drop shard `shard`'s records on etcd through the newest snapshot in the store
    (snapshot-url, else the embedded store under data-dir), but not past the lowest
    applied seq any live replica published (log/etcd_positions.py). Prints what goes
    and what holds the rest back; without `yes` a dry run. Safe beside a running
    primary: the drop is one transaction that holds only while nobody else moved the
    log's first seq. Exit status 0 done (or nothing to drop), 1 refused."""
    from durakv.snapshotter.errors import SnapshotterError
    from durakv.snapshotter.filestore import open_store

    client = etcd_client(config)
    prefix = _shard_log_prefix(client, config, shard)
    if prefix is None:
        return 1
    keys = Keys(prefix.encode())
    mark = restore_mark(client, prefix)
    try:
        store = open_store(config.snapshot_url, config.data_dir)
        covered = max((s.manifest.seq for s in store.list_snapshots(shard)
                       if s.complete and (mark is None or not mark.discarded(s.manifest.seq, s.manifest.epoch))),
                      default=0)
    except SnapshotterError as e:
        print(f"durakv: cannot list the snapshots that would cover the records: {e}", file=sys.stderr)
        return 1
    first, unmoved = first_and_guard(client, keys)
    last = log_ends(client, keys)[1]
    through, positions = droppable_through(client, keys, min(covered, last))
    held = ", ".join(f"{name} at seq {seq}" for name, seq in sorted(positions.items())) or "none"
    print(f"etcd:{prefix}: records {first}..{last}; newest snapshot in {store.url}: seq {covered}; "
          f"replicas: {held}")
    if through < first:
        print("nothing to drop: no record before the first retained one is both covered by a snapshot and "
              "applied by every live replica")
        return 0
    print(f"drop: seqs {first}..{through} ({through - first + 1} records)")
    if not yes:
        print("dry run: nothing changed; run again with --yes to drop them")
        return 0
    reply = client.txn([unmoved], drop_ops(keys, first, through), [])
    if not reply.get("succeeded"):
        print(f"durakv: etcd:{prefix}: the log's first seq moved meanwhile (its primary dropped records); "
              "run the command again", file=sys.stderr)
        return 1
    try:
        compact_to_floor(client, floor_prefixes(client, prefix), revision_of(reply))
    except LogError as e:
        print(f"durakv: records dropped, but compacting etcd's history failed ({e}): the etcd user needs "
              "etcd's root role, or run etcdctl compact", file=sys.stderr)
    print(f"dropped: etcd:{prefix} now starts at seq {through + 1}")
    return 0
