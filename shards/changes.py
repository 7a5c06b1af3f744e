"""Redis' dirty counter for INFO's rdb_changes_since_last_save (issue 15).

redis-server adds to `server.dirty` what each command changed: a key for SET, INCR or
EXPIRE, each key MSET sets and DEL removes, each element LPUSH pushes or SADD adds, each
field HSET sets, every key FLUSHALL drops; nothing for a no-op, an expiry or an eviction.
A shard counts the same as its handlers record their effects (Keyspace.effect: the keys
an effect changes, or the `changes=` its handler gives where Redis counts elements or
one change for two keys), keeps the count cumulative in `Keyspace.changes`, and logs each
record's share of it (shards/records.py `changes`), so replay (a restarting shard, a
replica, the snapshotter) reaches the same count with no state of its own: `replayed`
below. A snapshot's manifest holds the count at its seq (snapshotter/manifest.py
`changes`), and INFO subtracts that (server/save_changes.py).

A cross-shard transaction (MULTI/EXEC, MSET or DEL over several shards, a keyless script
run across shards: shards/txn.py) is counted by the executor's scratch keyspace as its
commands run, not by the RESTORE/DEL effects of the final states each shard applies: the
decider logs the whole count with its decision record, the other participants' COMMIT
records add 0, and a FLUSHALL inside adds on each participant the keys it drops there
(plus, at the executor, the keys the commands before it created, less those they removed).
An `import-rdb` logs its records with a count of 0: loading an RDB leaves Redis' dirty at 0.

Compared with redis-server 7.0 (tests/test_save_changes.py), XTRIM and an XADD that
trims and FUNCTION changes included (every shard takes a FUNCTION change: shard 0 counts
it), cross-shard transactions too; commands not compared count one per key they change."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from durakv.shards.keyspace import Keyspace
    from durakv.shards.records import Record


def replayed(db: Keyspace, record: Record) -> None:
    """A record replayed into db (whose engine counts nothing while replaying): add what
    it logged, or one per effect for a record written before the count existed."""
    db.changes += record.change_count()
