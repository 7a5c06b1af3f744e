"""maxmemory (shards/evict.py) and access tracking (shards/access.py): OBJECT
IDLETIME/FREQ, Redis' OOM errors (plain commands, scripts, EXEC) compared with
redis-server, eviction by each policy at a few MB, evictions as logged DEL effects
(notified, counted, gone after kill -9 and replay), and INFO memory's figures."""

from __future__ import annotations

import time

import pytest
import redis

from durakv.log import Log
from durakv.shards.evict import MemoryLimit
from durakv.shards.keyspace import Keyspace
from refserver import Pair

OOM = b"-OOM command not allowed when used memory > 'maxmemory'.\r\n"
VALUE = b"v" * 1000
MAXMEMORY_BYTES = 8 * 1024 * 1024  # for two shards: each shard's share is half
LOAD_KEYS = 12_000  # ~13 MB of keys and values, more than maxmemory
PIPELINE_KEYS = 1000
EVENT_WAIT_S = 10


def load(client: redis.Redis, count: int, prefix: str = "k", persistent_every: int = 0) -> None:
    """SET count keys; with persistent_every, all but every persistent_every-th get a
    long TTL. OOM errors are raised."""
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        if persistent_every and i % persistent_every:
            pipe.set(f"{prefix}:{i}", VALUE, ex=100_000)
        else:
            pipe.set(f"{prefix}:{i}", VALUE)
        if i % PIPELINE_KEYS == PIPELINE_KEYS - 1:
            pipe.execute()
    pipe.execute()


def set_both(pair: Pair, *args) -> None:
    assert pair.both("CONFIG", "SET", *args) == (b"+OK\r\n", b"+OK\r\n")


def test_object_freq_and_idletime_follow_the_policy_as_redis(pair):
    try:
        pair.same("SET", "foo", "bar")
        pair.same("OBJECT", "FREQ", "foo")  # not LFU: Redis' error
        set_both(pair, "maxmemory-policy", "allkeys-lfu")
        pair.same("SET", "fresh", "v")
        assert pair.same("OBJECT", "FREQ", "fresh") == 5  # LFU_INIT_VAL, untouched by OBJECT
        pair.same("GET", "fresh")
        assert pair.same("OBJECT", "FREQ", "fresh") == 6  # the first hit always counts
        pair.same("OBJECT", "IDLETIME", "fresh")  # LFU: Redis' error
        pair.same("OBJECT", "FREQ", "nosuchkey")
    finally:
        set_both(pair, "maxmemory-policy", "noeviction")


def test_reads_and_writes_stamp_access_but_ttl_type_exists_do_not(r):
    r.set("quiet", "v")
    r.set("touched", "v")
    r.set("read", "v")
    r.set("written", "v")
    time.sleep(2.1)
    r.ttl("quiet")
    r.type("quiet")
    r.exists("quiet")
    r.object("encoding", "quiet")
    r.touch("touched")
    r.get("read")
    r.append("written", "w")
    assert r.object("idletime", "quiet") >= 2
    assert r.object("idletime", "touched") < 2
    assert r.object("idletime", "read") < 2
    assert r.object("idletime", "written") < 2


def test_oom_errors_match_redis(pair, redis_ref, server):
    """maxmemory 1: every shard is over its share; denyoom commands, flagged scripts
    and EXEC of a transaction holding one answer as Redis does."""
    pair.same("SET", "x", "123")
    pair.same("FUNCTION", "LOAD", "REPLACE",
              "#!lua name=oomlib\nredis.register_function('writes', function(keys) "
              "return redis.call('set', keys[1], '1') end)\n"
              "redis.register_function{function_name='reads', callback=function() return 'hello' end, "
              "flags={'no-writes'}}")
    admin = Pair(server.port, redis_ref.port)  # CONFIG SET from another connection, as MULTI is open
    pair.same("MULTI")
    pair.same("SET", "x", "1")
    pair.same("GET", "x")
    try:
        set_both(admin, "maxmemory", "1")
        pair.same("EXEC")  # EXECABORT ... OOM, queued before the limit was hit
        ours, theirs = pair.both("SET", "x", "1")
        assert ours == theirs == OOM
        pair.same("GET", "x")
        pair.same("APPEND", "x", "1")
        pair.same("DEL", "nosuchkey")  # not denyoom
        pair.same("EVAL", "return redis.call('set', KEYS[1], 1)", "1", "x")
        pair.same("EVAL", "return redis.call('get', KEYS[1])", "1", "x")
        pair.same("EVAL", "local t = redis.pcall('set', KEYS[1], 'y') return t['err']", "1", "x")
        pair.same("EVAL", "#!lua flags=\nreturn 1", "0")
        pair.same("EVAL", "#!lua\nreturn 1", "0")
        pair.same("EVAL", "#!lua flags=allow-oom\nreturn redis.call('set', KEYS[1], 'allowed')", "1", "x")
        pair.same("EVAL", "#!lua flags=no-writes\nreturn redis.call('get', KEYS[1])", "1", "x")
        pair.same("FCALL", "writes", "1", "x")
        pair.same("FCALL", "reads", "1", "x")
        pair.same("FCALL_RO", "reads", "1", "x")
    finally:
        set_both(admin, "maxmemory", "0")
        admin.same("FUNCTION", "FLUSH")
        admin.close()
    pair.same("SET", "x", "1")


def test_eviction_policies_keep_a_shard_near_its_share(server_factory):
    srv = server_factory(shards=2)
    client = srv.client()
    for policy in ("allkeys-random", "allkeys-lru", "allkeys-lfu", "volatile-ttl", "volatile-random"):
        client.flushall()
        client.config_set("maxmemory-policy", policy)
        client.config_set("maxmemory", MAXMEMORY_BYTES)
        before = client.info("stats")["evicted_keys"]
        volatile = policy.startswith("volatile-")
        load(client, LOAD_KEYS, persistent_every=10 if volatile else 0)
        memory = client.info("memory")
        client.config_set("maxmemory", 0)  # the cron evicts no more while we count
        evicted = client.info("stats")["evicted_keys"] - before
        keys = client.dbsize()
        print(f"{policy}: {keys} keys left, {evicted} evicted, dataset {memory['used_memory_dataset']} B "
              f"({memory['mem_not_counted_for_evict']} B of log buffers left out) "
              f"for a share of {memory['maxmemory_per_shard']} B, shard: {memory['shard0_memory']}")
        assert evicted > 0 and keys + evicted == LOAD_KEYS
        assert memory["maxmemory_per_shard"] == MAXMEMORY_BYTES // 2
        if volatile:  # only keys with a TTL are candidates
            assert client.exists(*(f"k:{i}" for i in range(0, LOAD_KEYS, 10))) == LOAD_KEYS // 10
    client.config_set("maxmemory-policy", "volatile-lru")
    client.config_set("maxmemory", MAXMEMORY_BYTES)
    client.flushall()
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        load(client, LOAD_KEYS)  # nothing has a TTL: nothing to evict
    client.close()


def test_the_log_holds_its_records_in_memory_until_durable(tmp_path):
    """Log.buffered_bytes: the records appended and not yet written, which a slow fsync
    keeps alive (what maxmemory leaves out below)."""
    with Log.open(tmp_path / "log") as wal:
        lease = wal.take_lease("shard-0")
        assert wal.buffered_bytes == 0
        wal.append([b"x" * 100_000], 0, lease)
        wal.append([b"y" * 100_000], 1, lease)
        assert wal.buffered_bytes == wal.pending_bytes > 200_000
        wal.sync()
        assert wal.buffered_bytes == 0


def test_maxmemory_leaves_the_logs_buffers_out():
    """As Redis leaves its AOF buffer out of maxmemory, a shard leaves out what its log
    holds for records not yet durable: with 2 MB of them and a 1 MB share, the 200 KB
    of keys stay; counted, they would all be evicted for memory eviction cannot free."""
    held: list[bytes] = []
    limit = MemoryLimit(1, (0, 16383), lambda: sum(map(len, held)))
    db = Keyspace()
    for i in range(200):
        db.put(b"k:%d" % i, b"v" * 1000)
    limit.configure(1024 * 1024, "allkeys-random", 5)
    held.append(bytes(2 * 1024 * 1024))  # the log's pending records and a sync's joined copy
    limit.sample(db)
    assert limit.gauge.not_counted_bytes == 2 * 1024 * 1024
    assert limit.enforce(db) == 0 and not db.oom and len(db.data) == 200
    counted = MemoryLimit(1, (0, 16383))  # the same heap, nothing left out
    counted.gauge = limit.gauge
    counted.configure(1024 * 1024, "allkeys-random", 5)
    counted.sample(db)
    assert counted.enforce(db) > 0
    held.clear()


def test_evictions_are_notified_logged_and_stay_gone_after_a_crash(server_factory):
    srv = server_factory(shards=2)
    client = srv.client()
    client.config_set("notify-keyspace-events", "Ee")
    sub = client.pubsub()
    sub.psubscribe("__keyevent@0__:evicted")
    assert sub.get_message(timeout=5)["type"] == "psubscribe"
    client.config_set("maxmemory-policy", "allkeys-random")
    client.config_set("maxmemory", MAXMEMORY_BYTES)
    load(client, LOAD_KEYS)
    client.config_set("maxmemory", 0)  # no more evictions from here
    evicted = client.info("stats")["evicted_keys"]
    kept = set(client.keys("*"))
    assert evicted > 0 and len(kept) == LOAD_KEYS - evicted
    message = sub.get_message(timeout=EVENT_WAIT_S)
    assert message is not None and message["type"] == "pmessage", message
    assert message["data"].startswith(b"k:") and message["data"] not in kept
    sub.close()
    client.close()
    srv.kill9()
    srv.start()
    client = srv.client()
    assert set(client.keys("*")) == kept  # the DEL effects replayed
    client.close()


def test_config_set_maxmemory_evicts_at_once_with_an_event(server):
    client = server.client()
    client.flushall()
    client.config_set("notify-keyspace-events", "Ee")
    sub = client.pubsub()
    sub.psubscribe("*")
    assert sub.get_message(timeout=5)["type"] == "psubscribe"
    try:
        client.config_set("maxmemory-policy", "allkeys-lru")
        client.set("foo", "bar")
        client.config_set("maxmemory", 1)
        message = sub.get_message(timeout=EVENT_WAIT_S)
        assert message is not None and message["channel"] == b"__keyevent@0__:evicted", message
        assert message["data"] == b"foo"
    finally:
        client.config_set("maxmemory", 0)
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("notify-keyspace-events", "")
        sub.close()
        client.close()


def test_info_memory_is_measured_and_has_redis_fields(server, redis_ref):
    client = server.client()
    client.flushall()
    theirs = redis_ref.client().info("memory")
    empty = client.info("memory")
    for field in ("used_memory", "used_memory_rss", "used_memory_peak", "used_memory_peak_perc",
                  "used_memory_startup", "used_memory_dataset", "mem_fragmentation_ratio",
                  "total_system_memory", "maxmemory", "maxmemory_policy", "maxmemory_human"):
        assert field in theirs and field in empty, field
    load(client, LOAD_KEYS)
    full = client.info("memory")
    client.flushall()
    emptied = client.info("memory")
    print(f"used_memory: empty {empty['used_memory']}, {LOAD_KEYS} keys {full['used_memory']}, "
          f"flushed {emptied['used_memory']}; rss {full['used_memory_rss']}")
    assert full["used_memory"] - empty["used_memory"] > LOAD_KEYS * len(VALUE)
    assert emptied["used_memory"] < full["used_memory"] - LOAD_KEYS * len(VALUE) // 2  # a heap, not an RSS
    assert full["used_memory_peak"] >= full["used_memory"]
    assert full["total_system_memory"] == theirs["total_system_memory"]
    client.close()


def test_restore_idletime_and_freq_set_the_access_stamp(pair):
    pair.same("SET", "foo", "bar")
    payload = pair.ours.value("DUMP", "foo")
    pair.same("DEL", "foo")
    try:
        set_both(pair, "maxmemory-policy", "allkeys-lru")
        pair.ours.call("RESTORE", "foo", "0", payload, "IDLETIME", "1000")
        assert 1000 <= pair.ours.value("OBJECT", "IDLETIME", "foo") <= 1010
        set_both(pair, "maxmemory-policy", "allkeys-lfu")
        pair.ours.call("RESTORE", "bar", "0", payload, "FREQ", "100")
        assert pair.ours.value("OBJECT", "FREQ", "bar") == 100
    finally:
        set_both(pair, "maxmemory-policy", "noeviction")


def test_maxmemory_from_the_config_file_reaches_every_shard(server_factory, tmp_path):
    config = tmp_path / "durakv.toml"
    config.write_text('maxmemory = 1\nmaxmemory-policy = "volatile-ttl"\n')
    srv = server_factory(shards=2, extra_args=("--config", str(config)))
    client = srv.client()
    assert client.config_get("maxmemory*") == {"maxmemory": "1", "maxmemory-policy": "volatile-ttl",
                                               "maxmemory-samples": "5", "maxmemory-clients": "0"}
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        client.set("{a}k", "v")  # nothing has a TTL: nothing to evict
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        client.set("{b}k", "v")  # the other shard
    assert client.info("memory")["maxmemory_per_shard"] == 1
    client.close()


def test_commands_queued_in_multi_while_out_of_memory_are_refused_as_redis(pair, redis_ref, server):
    """Redis refuses every command queued in MULTI while out of memory (not only
    denyoom ones) and EXEC then aborts; the router knows a shard's state from its
    published flag (shards/oom_flags.py)."""
    admin = Pair(server.port, redis_ref.port)
    try:
        set_both(admin, "maxmemory", "1")
        for key in ("{a}k", "{b}k"):  # one on each shard: each finds itself out of memory
            ours, theirs = pair.both("SET", key, "1")
            assert ours == theirs == OOM
        pair.same("MULTI")
        pair.same("GET", "{a}k")
        pair.same("SET", "{b}k", "1")
        pair.same("PING")
        pair.same("EXEC")  # EXECABORT: previous errors
        pair.same("MULTI")
        pair.same("INCR", "{b}k")
        pair.same("DISCARD")
    finally:
        set_both(admin, "maxmemory", "0")
        admin.close()
    pair.same("SET", "{a}k", "1")  # a batch on each shard clears its flag
    pair.same("SET", "{b}k", "1")
    pair.same("MULTI")
    pair.same("GET", "{a}k")
    pair.same("INCR", "{b}k")
    pair.same("EXEC")
