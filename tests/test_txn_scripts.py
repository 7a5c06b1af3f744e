"""Scripts and functions that declare no keys, through the router on several shards:
they see and write every key as on one Redis (server/txn.py runs them as a
cross-shard transaction whose keys are found as the script runs: shards/txn.py's
scratch keyspace notes them, the router locks them and runs it again)."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from test_txn import A, A2, B, B2

BOTH = ("redis.call('SET', ARGV[1], 'a') redis.call('SET', ARGV[2], 'b') "
        "redis.call('INCR', ARGV[3]) return redis.call('MGET', ARGV[1], ARGV[2], ARGV[3], ARGV[4])")


def test_keyless_scripts_read_and_write_keys_on_every_shard(pair):
    pair.same("SET", B2, "41")
    pair.same("EVAL", BOTH, "0", A, B, B2, A2)
    pair.same("MGET", A, B, B2, A2)
    pair.same("EVAL_RO", "return {redis.call('GET', ARGV[1]), redis.call('GET', ARGV[2])}", "0", A, B)
    pair.same("EVAL_RO", "return redis.call('SET', ARGV[1], 'x')", "0", B)  # refused as in Redis
    # An error half way: the writes before it stay, as in Redis.
    pair.same("EVAL", "redis.call('SET', ARGV[1], 'before') redis.call('INCR', ARGV[2]) return 1", "0", A2, B)
    pair.same("MGET", A2, B)
    # A script that touches no key at all.
    pair.same("EVAL", "return {1, 'two', redis.call('PING')}", "0")
    sha = pair.same("SCRIPT", "LOAD", "return redis.call('DEL', ARGV[1], ARGV[2])")
    pair.same("EVALSHA", sha, "0", A, B)
    pair.same("EXISTS", A, B)


def test_keyless_functions_on_every_shard(pair):
    library = ("#!lua name=xlib\n"
               "redis.register_function('both', function(keys, args) "
               "redis.call('RPUSH', args[1], 'x') redis.call('RPUSH', args[2], 'y') "
               "return redis.call('LLEN', args[1]) + redis.call('LLEN', args[2]) end)\n"
               "redis.register_function{function_name='peek', callback=function(keys, args) "
               "return redis.call('LRANGE', args[1], 0, -1) end, flags={'no-writes'}}")
    pair.same("FUNCTION", "LOAD", "REPLACE", library)
    try:
        pair.same("FCALL", "both", "0", A, B)
        pair.same("FCALL", "both", "0", A, B)
        pair.same("FCALL_RO", "peek", "0", B)
        pair.same("LRANGE", A, "0", "-1")
    finally:
        pair.same("FUNCTION", "DELETE", "xlib")


def test_keyless_scripts_over_the_whole_keyspace(pair):
    pair.same("MSET", A, "1", B, "2", A2, "3")
    pair.same("EVAL", "return redis.call('DBSIZE')", "0")
    ours, theirs = pair.both("EVAL", "return redis.call('KEYS', '*')", "0")
    assert sorted(ours.split(b"\r\n")) == sorted(theirs.split(b"\r\n"))
    pair.same("EVAL", "redis.call('SET', ARGV[1], 'x') return redis.call('DBSIZE')", "0", B2)
    pair.same("EVAL", "redis.call('FLUSHALL') redis.call('SET', ARGV[1], 'y') return redis.call('DBSIZE')",
              "0", B)
    pair.same("MGET", A, B, A2, B2)
    pair.same("DBSIZE")


def test_pipelined_requests_after_a_keyless_script_see_its_writes(server):
    r = server.client()
    pipe = r.pipeline(transaction=False)
    for i in range(20):
        pipe.eval("redis.call('SET', ARGV[1], ARGV[3]) redis.call('SET', ARGV[2], ARGV[3]) return 1", 0, A, B, i)
        pipe.mget(A, B)
    replies = pipe.execute()
    for i in range(20):
        assert replies[2 * i:2 * i + 2] == [1, [str(i).encode()] * 2]


def test_a_keyless_script_is_atomic_for_a_reader(server):
    """A reader of both keys never sees half of a keyless script's writes to two shards."""
    writer = server.client()
    reader = server.client()
    writer.mset({A: "0", B: "0"})
    stop = threading.Event()
    seen: list[list] = []

    def read() -> None:
        while not stop.is_set():
            seen.append(reader.mget(A, B))

    t = threading.Thread(target=read)
    t.start()
    try:
        for i in range(1, 60):
            writer.eval("redis.call('SET', ARGV[1], ARGV[3]) redis.call('SET', ARGV[2], ARGV[3])", 0, A, B, i)
    finally:
        stop.set()
        t.join()
    assert seen and all(a == b for a, b in seen)


def test_a_long_keyless_script_answers_busy_and_is_killed(server):
    r = server.client()
    r.config_set("busy-reply-threshold", 50)
    try:
        runner = server.client()
        got: list[object] = []

        def run() -> None:
            try:
                runner.eval("local i = 0 while true do i = i + 1 end", 0)
            except redis.ResponseError as e:
                got.append(str(e))

        t = threading.Thread(target=run)
        t.start()
        time.sleep(0.3)  # past the threshold (if not yet, PING below waits for BUSY)
        for _attempt in range(100):
            try:
                r.ping()
            except redis.exceptions.BusyLoadingError:
                break
            except redis.ResponseError as e:
                assert "BUSY" in str(e)
                break
            time.sleep(0.05)
        else:
            pytest.fail("no BUSY while a keyless script ran past busy-reply-threshold")
        assert r.script_kill() is True
        t.join()
        assert got and "killed" in got[0]
    finally:
        r.config_set("busy-reply-threshold", 5000)


def test_a_keyless_script_over_maxmemory_is_refused_as_in_redis(pair, server, redis_ref):
    """Redis' 'reject script do not cause a Lua stack leak': a shebang script without
    flags is refused with OOM over maxmemory; a no-writes one runs."""
    from refserver import Pair
    from test_maxmemory import set_both

    admin = Pair(server.port, redis_ref.port)
    try:
        set_both(admin, "maxmemory", "1")
        pair.same("EVAL", "#!lua\nreturn 1", "0")
        pair.same("EVAL", "#!lua flags=no-writes\nreturn redis.call('GET', ARGV[1])", "0", A)
        pair.same("EVAL", "return redis.call('SET', ARGV[1], 'x')", "0", B)
    finally:
        set_both(admin, "maxmemory", "0")
        admin.close()
    pair.same("EVAL", "#!lua\nreturn 1", "0")


def test_a_cross_shard_scripts_acl_denials_are_in_acl_log(server, r):
    """The redis.calls an ACL user's script is refused, run across shards (keys on two
    shards, or none declared), are in ACL LOG with context lua, as on one shard. (`r`
    empties the shared server: a key another test left as a list would answer WRONGTYPE
    to the GET before the SET is refused.)"""
    admin = r
    admin.execute_command("ACL", "SETUSER", "xlogger", "on", ">pw", "+eval", "+get", f"~{A}", f"~{B}")
    admin.execute_command("ACL", "LOG", "RESET")
    user = server.client(username="xlogger", password="pw")
    try:
        for numkeys, keys in ((2, [A, B]), (0, [])):
            with pytest.raises(redis.ResponseError, match="can't run this command or subcommand"):
                user.eval(f"redis.call('get', '{A}') return redis.call('set', '{B}', 'x')", numkeys, *keys)
        entries = [e for e in admin.acl_log() if e["context"] != "toplevel"]  # redis-py's CLIENT SETINFO
        assert [(e["context"], e["object"], e["username"]) for e in entries] == [("lua", "set", "xlogger")]
        assert entries[0]["count"] == 2
    finally:
        admin.execute_command("ACL", "DELUSER", "xlogger")
