"""INFO rdb_changes_since_last_save restarts at a save (issue 15): before, it counted
every change since the shard processes started, whatever was saved since."""

from __future__ import annotations

import os
import signal

import redis
from etcd_support import until
from refserver import RedisRef, keys_on_different_shards
from snapshot_support import cli


def _changes(client) -> int:
    return client.info("persistence")["rdb_changes_since_last_save"]


def test_rdb_changes_since_last_save_restarts_at_save(server_factory):
    srv = server_factory(shards=2)
    client = srv.client()
    for k in range(5):
        client.set(f"key:{k}", "v")
    assert _changes(client) == 5
    assert client.save() is True
    assert _changes(client) == 0
    client.set("key:0", "w")
    client.delete("key:1", "nokey")
    assert _changes(client) == 2


SNAPSHOT_WAIT_S = 120.0  # the snapshotter runs at idle priority: tens of seconds on a loaded machine
# Snapshots only when asked: a scheduled one would restart the count mid-test.
RARELY = "snapshot-every-bytes = 1000000000\nsnapshot-every-percent = 0\nsnapshot-max-age-s = 3600\n"

# Commands whose change to Redis' dirty counter durakv must match (2 shards: the {x}
# keys on one, the others spread), each run on both servers in this order.
DIRTY_COMMANDS = [
    ("SET", "a", "1"),
    ("MSET", "{x}1", "1", "{x}2", "2", "{x}3", "3"),
    ("DEL", "{x}1", "{x}2"),
    ("INCR", "a"),
    ("DEL", "nokey"),
    ("EXPIRE", "a", "100"),
    ("EVAL", "redis.call('set', KEYS[1], '1'); redis.call('set', KEYS[2], '2'); return 1", "2", "{x}k1", "{x}k2"),
    ("LPUSH", "l", "a", "b", "c"),
    ("HSET", "h", "f1", "v1", "f2", "v2"),
    ("HSET", "h", "f1", "v1"),
    ("HDEL", "h", "f1", "nofield"),
    ("SADD", "s", "a", "b", "c"),
    ("SADD", "s", "a", "d"),
    ("SREM", "s", "a", "nomember"),
    ("ZADD", "z", "1", "a", "2", "b"),
    ("ZADD", "z", "1", "a", "3", "b"),
    ("ZREM", "z", "a", "nomember"),
    ("SETRANGE", "a", "0", ""),
    ("APPEND", "a", "x"),
    ("DEL", "a", "h"),
    ("MSET", "m1", "1", "m2", "2"),
    ("RENAME", "m1", "{m1}x"),
    ("RPUSH", "{q}1", "a", "b", "c"),
    ("RPOPLPUSH", "{q}1", "{q}2"),
    ("LPOP", "{q}1", "5"),
    ("SADD", "t", "a", "b", "c", "d"),
    ("SPOP", "t", "2"),
    ("SPOP", "t", "5"),
    ("PFADD", "hll", "a"),
    ("PFADD", "hll", "b", "c"),
    ("ZADD", "z3", "1", "a", "2", "b", "3", "c", "4", "d"),
    ("ZPOPMIN", "z3", "2"),
    ("ZREMRANGEBYRANK", "z3", "0", "-1"),
    ("GETDEL", "m2"),
    ("SETNX", "n", "1"),
    ("SETNX", "n", "1"),
    *[("XADD", "st", "*", "f", "v")] * 4,
    ("XTRIM", "st", "MAXLEN", "1"),
    ("XADD", "st", "MAXLEN", "1", "*", "f", "v"),
    ("FUNCTION", "LOAD", "#!lua name=dirtylib\nredis.register_function('dirtyf', function() return 1 end)"),
    ("FUNCTION", "DELETE", "dirtylib"),
    ("FUNCTION", "FLUSH"),
    ("FLUSHALL",),
]


def _config(tmp_path, text: str = RARELY) -> tuple[str, ...]:
    path = tmp_path / "changes.toml"
    path.write_text(text)
    return ("--config", str(path))


def test_changes_count_as_redis_dirty(server_factory, redis_ref, tmp_path):
    """Each command adds to rdb_changes_since_last_save what redis-server 7.0 adds (a key
    per MSET pair and key DEL removed, an element per LPUSH/HSET field/SADD member added,
    the keys FLUSHALL drops, nothing for a no-op). Before, durakv counted log effects:
    MSET of 3 keys or DEL of 2 counted 1."""
    srv = server_factory(shards=2, extra_args=_config(tmp_path))
    ours, theirs = srv.client(), redis_ref.client()
    theirs.flushall()
    seen = []
    before = (_changes(ours), _changes(theirs))
    for command in DIRTY_COMMANDS:
        ours.execute_command(*command)
        theirs.execute_command(*command)
        after = (_changes(ours), _changes(theirs))
        seen.append((command[0], after[0] - before[0], after[1] - before[1]))
        before = after
    print("command, durakv's change, redis-server's:", seen)
    assert [s[1] for s in seen] == [s[2] for s in seen], seen


def test_changes_since_save_survive_a_crash(server_factory, tmp_path):
    """The count is the changes since the newest snapshot (BGSAVE, then SAVE), whoever
    asks and whenever: a shard killed with -9 (restarted by the supervisor) and then the
    whole tree killed and started again read the same count (before: 0, the shard
    processes counted from their start). The snapshotter runs at idle priority: on a
    loaded machine a BGSAVE's snapshots take tens of seconds."""
    srv = server_factory(shards=2, extra_args=_config(tmp_path))
    client = srv.client()
    for k in range(5):
        client.set(f"key:{k}", "v")
    assert client.bgsave()
    assert until(lambda: _changes_or_none(client) == 0, "the BGSAVE's snapshots", SNAPSHOT_WAIT_S) is True
    client.mset({"{m}1": "1", "{m}2": "2", "{m}3": "3"})
    # One shard's keys: a cross-shard write stays out of snapshots for 10 minutes
    # (log/FORMAT.md snapshot_cut), so it would still count as unsaved after the SAVE below.
    client.delete("{m}1", "{m}2", "{m}nokey")
    client.lpush("list", "a", "b")
    expected = 3 + 2 + 2
    assert _changes(client) == expected
    os.kill(srv.child_pid("shard", 0), signal.SIGKILL)
    os.kill(srv.child_pid("shard", 1), signal.SIGKILL)
    assert until(lambda: _changes_or_none(client) == expected, "the shards to come back", SNAPSHOT_WAIT_S) is True
    srv.kill9()
    again = server_factory(shards=2, extra_args=_config(tmp_path), data_dir=srv.data_dir)
    client = again.client()
    assert _changes(client) == expected
    client.set("key:2", "w")
    assert _changes(client) == expected + 1
    assert client.save() is True
    assert _changes(client) == 0


def _changes_or_none(client) -> int | None:
    try:
        return _changes(client)
    except redis.RedisError:  # a shard still restarting
        return None




A, B = keys_on_different_shards()
# Cross-shard writes (keys on both shards: A and B), each a list of commands run in one
# MULTI ("multi"), alone ("one") or pipelined (server/txn_batch.py may run them as one
# batch), on both servers in this order.
_KEYLESS_SCRIPT = "redis.call('set', ARGV[1], '1'); redis.call('incr', ARGV[1]); redis.call('set', ARGV[2], '2')"
CROSS_SHARD_STEPS = [
    ("multi", [("SET", A, "1"), ("INCR", A)]),
    ("multi", [("SET", A, "1"), ("INCR", A), ("SET", B, "1"), ("DEL", B), ("DEL", "nokey")]),
    ("one", [("MSET", A, "1", B, "2", A, "3")]),
    ("one", [("DEL", A, B, "nokey")]),
    ("multi", [("RPUSH", A, "a", "b", "c"), ("SADD", B, "a", "b", "c"), ("SADD", B, "a")]),
    ("one", [("EVAL", _KEYLESS_SCRIPT, "0", A, B)]),
    ("pipe", [("MSET", A, "1", B, "2", A, "3"), ("MSET", A, "4", B, "5"), ("DEL", A, B, A)]),
    ("multi", [("SET", A, "1"), ("FLUSHALL",), ("SET", B, "1"), ("SET", A, "1")]),
    ("multi", [("DEL", B), ("SET", "fresh1", "1"), ("SET", "fresh2", "1"), ("FLUSHALL",), ("SET", A, "1")]),
]


def test_cross_shard_writes_count_as_redis_dirty(server_factory, redis_ref, tmp_path):
    """A cross-shard MULTI/EXEC, MSET, DEL, pipeline or keyless script adds what
    redis-server 7.0 adds: each command's changes (MULTI; SET A 1; INCR A; SET B 1; DEL B;
    EXEC counts 4), and a restarted shard reads the same from the log. Before, each shard
    counted the keys it wrote (1 there), and a FLUSHALL the keys it found."""
    srv = server_factory(shards=2, extra_args=_config(tmp_path))
    ours, theirs = srv.client(), redis_ref.client()
    theirs.flushall()
    seen = []
    before = (_changes(ours), _changes(theirs))
    for how, step in CROSS_SHARD_STEPS:
        for client in (ours, theirs):
            if how == "one":
                client.execute_command(*step[0])
            else:
                pipe = client.pipeline(transaction=how == "multi")
                for command in step:
                    pipe.execute_command(*command)
                pipe.execute()
        after = (_changes(ours), _changes(theirs))
        seen.append((how, step[0][0], after[0] - before[0], after[1] - before[1]))
        before = after
    print("how, first command, durakv's change, redis-server's:", seen)
    assert [s[2] for s in seen] == [s[3] for s in seen], seen
    total = _changes(ours)
    srv.kill9()  # replay reaches the same count from the log
    assert _changes(server_factory(shards=2, extra_args=_config(tmp_path), data_dir=srv.data_dir).client()) == total


def test_import_rdb_leaves_no_changes(server_factory, tmp_path):
    """Loading an RDB leaves Redis' dirty counter at 0: so do import-rdb's keys (before:
    one change per imported key and expiry until the first snapshot)."""
    workdir = tmp_path / "redis"
    ref = RedisRef(workdir, ("--dbfilename", "dump.rdb"))
    try:
        rc = ref.client()
        rc.mset({f"key:{k}": "v" for k in range(20)})
        rc.set("expiring", "v", ex=1000)
        rc.save()
    finally:
        ref.stop()
    data_dir = tmp_path / "imported"
    cli("import-rdb", str(workdir / "dump.rdb"), "--data-dir", str(data_dir), "--shards", "2")
    client = server_factory(shards=2, extra_args=_config(tmp_path), data_dir=data_dir).client()
    assert client.dbsize() == 21
    assert _changes(client) == 0
    client.set("key:0", "w")
    assert _changes(client) == 1
