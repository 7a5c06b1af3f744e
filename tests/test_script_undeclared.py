"""Scripts whose declared keys are all on one shard but that touch a key of another
shard, through the router on two shards: they run as on one Redis (the shard puts
back what the script did, shards/script_undo.py, and the router runs it again across
shards, server/script_retry.py); on a shard port Redis Cluster's error stays."""

from __future__ import annotations

import hashlib
import threading
from time import time_ns

import pytest
import redis

from durakv.shards.slots import key_slot, slot_owner_table
from test_txn import A, B, B2

# Declares KEYS[1] (shard of A), writes it and a list there, then reaches ARGV[1] (another shard).
REACH = ("redis.call('SET', KEYS[1], 'v1') redis.call('INCR', KEYS[2]) redis.call('RPUSH', KEYS[3], 'a', 'b') "
         "local other = redis.call('GET', ARGV[1]) redis.call('SET', ARGV[1], 'from-script') "
         "return {other, redis.call('GET', KEYS[1]), redis.call('LLEN', KEYS[3])}")


def same_shard_keys(like: str, count: int) -> list[str]:
    """`count` key names on the shard that owns `like` (2-shard server)."""
    owner = slot_owner_table(2)
    shard = owner[key_slot(like.encode())]
    names = [like]
    i = 0
    while len(names) < count:
        name = f"{like}-same-{i}"
        if owner[key_slot(name.encode())] == shard:
            names.append(name)
        i += 1
    return names


def test_keys_used_here_are_where_the_test_needs_them():
    owner = slot_owner_table(2)
    k1, k2, k3 = same_shard_keys(A, 3)
    assert {owner[key_slot(k.encode())] for k in (k1, k2, k3)} == {owner[key_slot(A.encode())]}
    assert owner[key_slot(A.encode())] != owner[key_slot(B.encode())]


def test_a_one_shard_script_that_reaches_another_shard_runs_as_on_one_redis(pair):
    k1, k2, k3 = same_shard_keys(A, 3)
    pair.same("SET", k2, "41")
    pair.same("RPUSH", k3, "old")
    pair.same("SET", B, "other-shard")
    pair.same("EVAL", REACH, "3", k1, k2, k3, B)
    pair.same("MGET", k1, k2, B)
    pair.same("LRANGE", k3, "0", "-1")
    # Again by sha, a read-only one, and a function: the same.
    sha = pair.same("SCRIPT", "LOAD", REACH)
    pair.same("EVALSHA", sha, "3", k1, k2, k3, B2)
    pair.same("MGET", k1, k2, B2)
    pair.same("EVAL_RO", "return {redis.call('GET', KEYS[1]), redis.call('GET', ARGV[1])}", "1", k1, B)
    # A pcall of the other shard's key goes on as in Redis (the key is there on one node).
    pair.same("SET", B, "not-a-number")
    pair.same("EVAL", "redis.call('SET', KEYS[1], 'p') local r = redis.pcall('INCR', ARGV[1]) "
              "redis.call('SET', KEYS[1], 'q') return r", "1", k1, B)
    pair.same("MGET", k1, B)
    # An error after reaching the other shard: the writes before it stay, as in Redis.
    pair.same("EVAL", "redis.call('SET', KEYS[1], 'before') redis.call('SET', ARGV[1], 'b2') "
              "redis.call('INCR', KEYS[2]) return 1", "2", k1, k3, B)
    pair.same("MGET", k1, B)


def test_a_one_shard_function_that_reaches_another_shard_runs_as_on_one_redis(pair):
    k1, _k2, _k3 = same_shard_keys(A, 3)
    library = ("#!lua name=reachlib\n"
               "redis.register_function('reach', function(keys, args) "
               "redis.call('RPUSH', keys[1], 'x') redis.call('RPUSH', args[1], 'y') "
               "return redis.call('LLEN', keys[1]) + redis.call('LLEN', args[1]) end)")
    pair.same("FUNCTION", "LOAD", "REPLACE", library)
    try:
        pair.same("FCALL", "reach", "1", k1, B)
        pair.same("FCALL", "reach", "1", k1, B)
        pair.same("LRANGE", k1, "0", "-1")
        pair.same("LRANGE", B, "0", "-1")
    finally:
        pair.same("FUNCTION", "DELETE", "reachlib")


def test_nothing_of_the_thrown_away_attempt_is_seen(server):
    """A reader of the declared key and the other shard's key never sees the declared
    key written alone, and no keyspace notification of the attempt put back is sent."""
    writer = server.client()
    reader = server.client()
    writer.flushall()
    writer.mset({A: "0", B: "0"})
    writer.config_set("notify-keyspace-events", "KA")
    sub = server.client().pubsub()
    sub.subscribe(f"__keyspace@0__:{A}")
    assert sub.get_message(timeout=5)["type"] == "subscribe"
    stop = threading.Event()
    seen: list[list] = []

    def read() -> None:
        while not stop.is_set():
            seen.append(reader.mget(A, B))

    t = threading.Thread(target=read)
    t.start()
    rounds = 40
    try:
        for i in range(1, rounds + 1):
            assert writer.eval("redis.call('SET', KEYS[1], ARGV[2]) redis.call('SET', ARGV[1], ARGV[2]) return 1",
                               1, A, B, i) == 1
    finally:
        stop.set()
        t.join()
        writer.config_set("notify-keyspace-events", "")
    assert seen and all(a == b for a, b in seen), [s for s in seen if s[0] != s[1]][:5]
    assert writer.mget(A, B) == [str(rounds).encode()] * 2
    events = []
    while (message := sub.get_message(timeout=0.5)) is not None:
        events.append(message["data"])
    sub.close()
    # One notification per committed run (a cross-shard write notifies its RESTORE, ARCHITECTURE.md),
    # none of the attempt put back (that one would be a `set`).
    assert b"set" not in events and len(events) == rounds, events


def test_on_a_shard_port_a_non_local_key_keeps_redis_clusters_error(server):
    owner = slot_owner_table(2)
    node = server.shard_client(owner[key_slot(A.encode())])
    server.client().delete(A, B)
    with pytest.raises(redis.ResponseError, match="non local key"):
        node.eval("redis.call('SET', KEYS[1], 'x') return redis.call('GET', ARGV[1])", 1, A, B)
    assert node.get(A) == b"x"  # as in Redis Cluster, the write before the error stays


def test_the_shard_puts_back_what_the_script_did_and_the_log_replays_to_it():
    """In process: a router's script on a shard owning half the slots writes three keys
    (one new, one string with a TTL, one hash) and then reaches a key of the other
    half: the shard answers TXNONLOCAL, the keyspace is as before, no notification
    is left, and the logged effects (the script's writes, then their undo) replay
    to the same state."""
    import durakv.shards.commands  # noqa: F401  (registers EVAL)
    from durakv.shards.engine import state_of
    from durakv.shards.resp import ReplyError
    from durakv.shards.script_undo import NONLOCAL_RETRY
    from engine_util import assert_replay_equals_live, call, new_ctx

    ctx = new_ctx()
    ctx.shard.slot_range = (0, 8191)
    ctx.shard.scripts_undo = True
    local = [k for k in (f"u{i}" for i in range(100)) if key_slot(k.encode()) <= 8191][:3]
    other = next(k for k in (f"o{i}" for i in range(100)) if key_slot(k.encode()) > 8191)
    s, h, new = local
    call(ctx, "SET", s, "old")
    call(ctx, "PEXPIREAT", s, "99999999999999")
    call(ctx, "HSET", h, "f", "1")
    ctx.db.notify_flags = 0xFFFF
    before = state_of(ctx.db)
    script = ("redis.call('SET', KEYS[1], 'new') redis.call('HSET', KEYS[2], 'g', '2') "
              "redis.call('RPUSH', KEYS[3], 'x') redis.call('PERSIST', KEYS[1]) "
              "local ok = redis.pcall('GET', ARGV[1]) redis.call('DEL', KEYS[2]) return 1")
    reply = call(ctx, "EVAL", script, "3", s, h, new, other)
    assert isinstance(reply, ReplyError) and reply.message == NONLOCAL_RETRY, reply
    assert state_of(ctx.db) == before
    assert ctx.db.expires[s.encode()] == 99999999999999
    assert ctx.db.events == []
    assert_replay_equals_live(ctx)
    ctx.shard.scripts_undo = False  # a shard port: Redis Cluster's error, the writes before it stay
    call(ctx, "EVAL", script, "3", s, h, new, other)
    assert call(ctx, "GET", s) == b"new" and call(ctx, "EXISTS", h) == 0


def _messages(sub, wait_s: float) -> list:
    got = []
    while (message := sub.get_message(timeout=wait_s)) is not None:
        if message["type"] == "message":
            got.append(message["data"])
    return got


@pytest.mark.parametrize("numkeys", [0, 1])
def test_a_script_run_again_publishes_and_logs_once(server, redis_ref, numkeys):
    """A keyless script that finds keys on both shards (run several times by the
    executor), and a one-shard script that reaches the other shard (put back and run
    again): their PUBLISH reaches a subscriber once, as on redis-server, and their
    redis.log line is written once."""
    marker = f"logged-once-{numkeys}-{time_ns()}"
    script = (f"redis.log(redis.LOG_WARNING, '{marker}') redis.call('PUBLISH', 'xchan', 'hello') "
              "redis.call('SET', ARGV[1], 'a') redis.call('SET', ARGV[2], 'b') return 1")
    keys = [A] if numkeys else []
    counts = []
    for port in (server.port, redis_ref.port):
        client = redis.Redis(port=port, socket_timeout=30)
        client.delete(A, B)
        sub = client.pubsub()
        sub.subscribe("xchan")
        assert sub.get_message(timeout=5)["type"] == "subscribe"
        assert client.eval(script, numkeys, *keys, A, B) == 1
        assert client.mget(A, B) == [b"a", b"b"]
        counts.append(_messages(sub, 0.5))
        sub.close()
    assert counts[0] == counts[1] == [b"hello"]
    assert server.log().count(marker) == 1, server.log()[-2000:]


def test_an_acl_users_script_that_reaches_another_shard_runs_again_under_its_rules(server):
    """A restricted user's one-shard script reaching another shard's key runs again
    across shards with the user's rules: a refused redis.call is in ACL LOG once."""
    admin = server.client()
    admin.delete(A, B)
    admin.execute_command("ACL", "SETUSER", "reacher", "on", ">pw", "+eval", "+set", "+get", "~*")
    admin.execute_command("ACL", "LOG", "RESET")
    user = server.client(username="reacher", password="pw")
    try:
        assert user.eval("redis.call('SET', KEYS[1], 'a') redis.call('SET', ARGV[1], 'b') "
                         "return redis.call('GET', ARGV[1])", 1, A, B) == b"b"
        assert admin.mget(A, B) == [b"a", b"b"]
        with pytest.raises(redis.ResponseError, match="can't run this command"):
            user.eval("redis.call('SET', KEYS[1], 'c') redis.call('GET', ARGV[1]) "
                      "return redis.call('DEL', KEYS[1])", 1, A, B)
        assert admin.mget(A, B) == [b"c", b"b"]  # the write before the refused call stays, as in Redis
        entries = [e for e in admin.acl_log() if e["context"] == "lua"]
        assert [(e["object"], e["count"]) for e in entries] == [("del", 1)], entries
    finally:
        admin.execute_command("ACL", "DELUSER", "reacher")


def _same_pipeline(pair, commands: list[tuple]) -> None:
    """The commands pipelined in one write to each server: the same reply bytes, in order."""
    ours, theirs = pair.ours.pipeline(commands), pair.theirs.pipeline(commands)
    assert ours == theirs, f"durakv {ours!r} != redis {theirs!r}"


def test_a_script_that_reached_another_shard_keeps_a_pipeline_in_order(pair, server):
    """Once a script has reached another shard's key, the router sends it across shards
    at once (server/script_retry.py Reaching), so the requests pipelined after it wait
    for it and see what it did, as on one Redis (sent to the script's shard first, they
    would run before its retry)."""
    k1, k2, k3 = same_shard_keys(A, 3)
    pair.same("SET", k2, "41")
    pair.same("SET", B, "other-shard")
    before = server.client().info("persistence")["xshard_committed"]
    pair.same("EVAL", REACH, "3", k1, k2, k3, B)  # reaches B: put back, run again, remembered
    _same_pipeline(pair, [("EVAL", REACH, "3", k1, k2, k3, B), ("GET", B), ("MGET", k1, k2),
                          ("LRANGE", k3, "0", "-1"), ("SET", B, "after"), ("INCR", k2),
                          ("EVAL", REACH, "3", k1, k2, k3, B2), ("GET", B2), ("GET", B)])
    assert server.client().info("persistence")["xshard_committed"] >= before + 3


def test_the_first_run_of_a_script_that_reaches_another_shard_keeps_a_pipeline_in_order(pair, server):
    """The first run of a script that reaches another shard's key (not yet remembered):
    requests pipelined after it, for its own shard (fenced there until its retry is done,
    shards/script_fence.py) and for the other shard (not sent while it is out), run after
    its retry, as on one Redis: the same reply bytes."""
    k1, k2, k3 = same_shard_keys(A, 3)
    b1, b2, b3 = same_shard_keys(B, 3)
    pair.same("SET", k2, "41")
    pair.same("SET", B, "other-shard")
    fresh = f"-- first run {time_ns()}\n"
    before = server.client().info("persistence")["xshard_committed"]
    _same_pipeline(pair, [("EVAL", fresh + REACH, "3", k1, k2, k3, B), ("GET", B), ("MGET", k1, k2),
                          ("LRANGE", k3, "0", "-1"), ("SET", B, "after"), ("INCR", k2), ("GET", B),
                          # one declared on B's shard that reaches A's: followers on both shards again
                          ("EVAL", fresh + "-- b\n" + REACH, "3", b1, b2, b3, k1), ("GET", k1), ("GET", b1),
                          ("EVAL", fresh + "-- ok\nreturn redis.call('INCR', KEYS[1])", "1", k2), ("GET", k2),
                          ("SET", k1, "last"), ("MGET", k1, B, b1)])
    assert server.client().info("persistence")["xshard_committed"] >= before + 2


def test_an_observer_never_sees_a_pipeline_run_out_of_order_around_a_first_run(server):
    """Each round pipelines a never-seen script declaring A that writes A and B (so it is
    sent back and run again across shards), then SET A and SET B. A reader of both keys
    (one cross-shard read) never sees a SET that ran before the script's retry: only
    (i, i), then either SET first (two pipelined commands for different shards run
    side by side, as without a script), then (after-i, after-i), which each round ends in."""
    writer = server.client()
    reader = server.client()
    writer.delete(A, B)
    stop = threading.Event()
    seen: list[list] = []

    def read() -> None:
        while not stop.is_set():
            seen.append(reader.mget(A, B))

    t = threading.Thread(target=read)
    t.start()
    rounds = 20
    tag = time_ns()
    try:
        for i in range(1, rounds + 1):
            pipe = writer.pipeline(transaction=False)
            pipe.eval(f"-- round {tag} {i}\nredis.call('SET', KEYS[1], ARGV[2]) redis.call('SET', ARGV[1], ARGV[2]) "
                      "return 1", 1, A, B, i)
            pipe.set(A, f"after-{i}")
            pipe.set(B, f"after-{i}")
            assert pipe.execute() == [1, True, True]
            assert writer.mget(A, B) == [f"after-{i}".encode()] * 2
    finally:
        stop.set()
        t.join()
    legal = {(None, None)}
    for i in range(1, rounds + 1):
        legal |= {(str(i), str(i)), (f"after-{i}", str(i)), (str(i), f"after-{i}"), (f"after-{i}", f"after-{i}")}
    states = [(a.decode() if a else None, b.decode() if b else None) for a, b in seen]
    assert seen and all(state in legal for state in states), [s for s in states if s not in legal][:5]
    assert writer.mget(A, B) == [f"after-{rounds}".encode()] * 2


def test_evalsha_queued_in_multi_finds_a_script_cached_on_another_shard(pair):
    """EVAL caches its script on the shard it ran on; EVALSHA queued in MULTI for a key of
    the other shard (alone, and with a key of the first) runs as on one Redis, whose
    cache has it; an unknown sha still fails inside EXEC with NOSCRIPT."""
    body = f"return {{KEYS[1], '{time_ns()}'}}"
    sha = hashlib.sha1(body.encode()).hexdigest()
    _same_pipeline(pair, [("EVAL", body, "1", A), ("MULTI",), ("EVALSHA", sha, "1", B), ("GET", B), ("EXEC",),
                          ("MULTI",), ("SET", A, "a"), ("EVALSHA", sha, "1", B2), ("EXEC",),
                          ("MULTI",), ("EVALSHA", "f" * 40, "0"), ("SET", B, "b"), ("EXEC",), ("GET", B)])


def test_requests_pipelined_after_an_evalsha_found_on_another_shard_run_after_it(pair):
    """An EVALSHA whose script only the other shard has cached is answered NOSCRIPT by its
    shard, found, loaded and sent again (server/script_retry.py): the requests pipelined
    after it, for its own shard and for the other, run after it, as on one Redis."""
    k1, k2 = same_shard_keys(B, 2)
    body = f"-- {time_ns()}\nlocal v = redis.call('GET', KEYS[1]) redis.call('SET', KEYS[1], 'script') return v"
    sha = hashlib.sha1(body.encode()).hexdigest()
    pair.same("SET", k1, "before")
    pair.same("EVAL", body, "1", A)  # cached on A's shard only (on redis-server: cached)
    _same_pipeline(pair, [("EVALSHA", sha, "1", k1), ("GET", k1), ("SET", k1, "after"), ("APPEND", k2, "x"),
                          ("GET", A), ("EVALSHA", sha, "1", k1), ("GET", k1)])


def _stats(client) -> tuple[dict, dict]:
    commands = {name: {k: v for k, v in stat.items() if k != "usec" and k != "usec_per_call"}
                for name, stat in client.info("commandstats").items()
                if name not in ("cmdstat_info", "cmdstat_config|resetstat")}
    return commands, client.info("errorstats")


def test_the_run_put_back_counts_nothing_and_the_run_across_shards_counts_once(pair, server, redis_ref):
    """INFO commandstats and errorstats after a script's first run that reaches another
    shard's key (put back, run again across shards) are those of one run on redis-server:
    the put-back EVAL, its redis.calls and its refused call are not counted. A WATCHer of
    a key the script wrote and deleted again sees its EXEC fail, as in Redis."""
    k1, k2, k3 = same_shard_keys(A, 3)
    pair.same("SET", k2, "41")
    ours = server.client()
    theirs = redis.Redis(port=redis_ref.port)
    for client in (ours, theirs):
        client.config_resetstat()
    pair.same("EVAL", f"-- counted {time_ns()}\n" + REACH, "3", k1, k2, k3, B)
    assert _stats(ours) == _stats(theirs)
    fresh = f"-- watched {time_ns()}\n"
    for client in (ours, theirs):
        client.delete(A, B)
        watcher = client.pipeline()
        watcher.watch(A)
        assert client.eval(fresh + "redis.call('SET', KEYS[1], 't') redis.call('DEL', KEYS[1]) "
                           "return redis.call('GET', ARGV[1])", 1, A, B) is None
        watcher.multi()
        watcher.set(A, "w")
        with pytest.raises(redis.WatchError):
            watcher.execute()
    ours.close()
    theirs.close()


def _logged_runs(client, verb: bytes) -> tuple[list[bytes], int, dict]:
    """The SLOWLOG entries of `verb` and of scripts' commands, its LATENCY HISTOGRAM calls, INFO errorstats."""
    entries = [e["command"] for e in client.slowlog_get(128)
               if e["command"].upper().startswith(verb) or e["client_address"] == b"?:0"]
    histogram = client.execute_command("LATENCY", "HISTOGRAM", verb.decode())
    calls = histogram[verb.lower()][b"calls"] if histogram else 0
    return entries, calls, client.info("errorstats")


def test_only_the_real_run_of_a_script_is_logged_and_counts_its_errors(server, redis_ref):
    """SLOWLOG, LATENCY HISTOGRAM and INFO errorstats after a script that reaches another
    shard's key, run twice (first put back on its shard and run across shards, then
    straight across shards, whose executor also throws away the runs that found an
    undeclared key): one entry per EVAL and per redis.call of its real run, and each
    redis.pcall error once, as redis-server."""
    k1, k2, k3 = same_shard_keys(A, 3)
    body = f"-- logged {time_ns()}\nredis.pcall('LPUSH', KEYS[2], 'x') " + REACH
    ours = server.client()
    theirs = redis.Redis(port=redis_ref.port)
    seen = []
    try:
        for client in (ours, theirs):
            client.delete(k1, k3, B)
            client.set(k2, "41")
            client.config_set("slowlog-log-slower-than", 0)
            client.slowlog_reset()
            client.config_resetstat()
            client.execute_command("LATENCY", "RESET")
            for _ in range(2):
                client.eval(body, 3, k1, k2, k3, B)
            seen.append(_logged_runs(client, b"EVAL"))
    finally:
        for client in (ours, theirs):
            client.config_set("slowlog-log-slower-than", 10000)
            client.close()
    assert seen[0] == seen[1], f"durakv {seen[0]!r} != redis {seen[1]!r}"
