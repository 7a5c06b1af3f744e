"""Redis' dirty counter for INFO's rdb_changes_since_last_save (issue 15).

redis-server adds to `server.dirty` what each command changed: a key for SET, INCR or
EXPIRE, each key MSET sets and DEL removes, each element LPUSH pushes, each field HSET
sets, every key FLUSHALL drops; nothing for a no-op, an expiry or an eviction. A shard
counts the same as its handlers record their effects (Keyspace.effect: the keys an effect
changes, or the elements below for the commands that count them), keeps the count
cumulative in `Keyspace.changes`, and logs each record's share of it
(shards/records.py `changes`), so replay (a restarting shard, a replica, the snapshotter)
reaches the same count with no clock or state of its own; a snapshot's manifest holds it
at its seq (snapshotter/manifest.py `changes`), and INFO subtracts that.

SADD, SREM, ZREM, PFADD, SPOP of a whole set and ZREMRANGEBY* give their count (Keyspace.effect's
`changes`: their effect is the client's command, with members that may not have counted).
Compared with redis-server 7.0 (tests/test_save_changes.py): XADD with a trim counts 2
(Redis: 1), FUNCTION LOAD/DELETE/FLUSH nothing (Redis: one); other commands count one
per key they change, which is Redis' count for those compared."""

from __future__ import annotations


def _elements(argv: list[bytes]) -> int:
    return len(argv) - 2


def _field_pairs(argv: list[bytes]) -> int:
    return (len(argv) - 2) // 2


def _popped(argv: list[bytes]) -> int:
    return int(argv[2])  # LPOP/ZPOPMIN & co. log the number they popped


def _one(argv: list[bytes]) -> int:
    return 1


# Effects whose Redis dirty count is a number of elements, not of keys: their effect
# argv holds exactly the elements Redis counts (t_list.py push, t_hash.py hset/hdel).
_ELEMENT_COUNTS = {
    b"LPUSH": _elements, b"RPUSH": _elements, b"LPUSHX": _elements, b"RPUSHX": _elements,
    b"HDEL": _elements, b"HSET": _field_pairs, b"ZADD": _field_pairs,  # t_zset.py zadd: only what changed
    b"SREM": _elements,  # SPOP's effect (t_set.py): the members it took
    b"LPOP": _popped, b"RPOP": _popped, b"ZPOPMIN": _popped, b"ZPOPMAX": _popped,
    b"RENAME": _one, b"LMOVE": _one,  # two keys changed, one change for Redis
}
_ELEMENT_COUNTS.update({verb.lower(): count for verb, count in _ELEMENT_COUNTS.items()})  # a script's redis.call


def effect_changes(argv: list[bytes], keys: tuple[bytes, ...]) -> int:
    """What one effect adds to the dirty count: the keys it changes, or its elements."""
    count = _ELEMENT_COUNTS.get(argv[0])
    if count is not None:
        return count(argv)
    return len(keys)
