"""Lua scripting (EVAL/EVALSHA/SCRIPT) and functions (FUNCTION/FCALL): reply bytes
compared with redis-server 7.0 in RESP2 and RESP3, routing through the 2-shard
router (CROSSSLOT, EVALSHA wherever the keys route), a script's writes logged as
their effects (replay equals live) and durable across kill -9."""

from __future__ import annotations

import time

import pytest
import redis
from refserver import RawConn, decode, keys_on_different_shards, same_all
from engine_util import call, new_ctx, run_and_replay

import durakv.shards.commands  # noqa: F401
from durakv.shards.engine import replay, state_of
from durakv.shards.luaenv import sha1hex

CONVERSIONS = [
    "return 'hello'",
    "return 42",
    "return 3.99",
    "return -3.99",
    "return true",
    "return false",
    "return nil",
    "return {1,2,3,'ciao',{1,2}}",
    "return {1,2,false,4}",
    "return {1,2,nil,4}",
    "return {ok='fine'}",
    "return {err='My Error'}",
    "return {err='oneword'}",
    "return redis.error_reply('My Error')",
    "return redis.error_reply('-NOPE no')",
    "return redis.status_reply('FINE')",
    "return {double=3.5}",
    "return {big_number='123456789012345678901234567890'}",
    "return {map={a=1}}",
    "return {set={a=true}}",
    "return {verbatim_string={format='txt', string='hi'}}",
    "return redis.sha1hex('')",
    "return redis.sha1hex('Pizza & Mandolino')",
    "return {1, {2, {3, {4}}}}",
    "return tostring(1e20)",
    "return 1e20",
    "return redis.call('ping')",
    "return redis.call('ping', 'x')",
    "return redis.REDIS_VERSION_NUM >= 0x070000",
    "return redis.LOG_WARNING",
    "return redis.REPL_ALL",
    "redis.set_repl(redis.REPL_ALL) return 1",
    "return redis.replicate_commands()",
    "return type(KEYS)",
]

ERRORS = [
    "return a",
    "a = 5",
    "syntax error here",
    "error('boom')",
    "error({err='boom'})",
    "return redis.call('nosuch')",
    "return redis.pcall('nosuch')",
    "return redis.call()",
    "return redis.call({})",
    "return redis.call('get')",
    "return redis.call('eval', 'return 1', 0)",
    "return redis.call('incr', 'str')",
    "return redis.pcall('incr', 'str')",
    "local ok, e = pcall(function() return redis.call('nosuch') end) return e",
    "setmetatable(_G, {})",
    "local g = getmetatable(_G) g.__index = {}",
    "redis = function() return 1 end",
    "_G = {}",
    "redis.call = function() return 1 end",
    "string.x = 1",
    "print('x')",
    "loadfile('x')",
    "dofile('x')",
    "return loadstring(string.dump(function() return 1 end))()",
    "redis.setresp(4)",
    "redis.log(10, 'x')",
    "redis.log(redis.LOG_WARNING)",
    "redis.set_repl(17)",
    "return redis.sha1hex()",
    "#!lua\nreturn a",
    "#!lua flags=bad\nreturn 1",
    "#!luax\nreturn 1",
    "#!lua x=1\nreturn 1",
]


def test_eval_return_conversions_match_redis(pair, pair3):
    for p in (pair, pair3):
        for script in CONVERSIONS:
            p.same("EVAL", script, 0)
            p.same("EVAL", "redis.setresp(3) " + script if not script.startswith("#!") else script, 0)


def test_eval_errors_match_redis(pair):
    pair.same("SET", "str", "abc")
    for script in ERRORS:
        pair.same("EVAL", script, 0)


def test_redis_call_replies_converted_like_redis(pair, pair3):
    """Replies of many commands as a script sees them, in both RESP modes (the keys
    share a hash tag: a script's keys live on the shard it runs on)."""
    setup = [
        ("SET", "{t}s", "v"), ("RPUSH", "{t}l", "a", "b", "c"), ("HSET", "{t}h", "f", "1", "g", "2"),
        ("SADD", "{t}st", "m"), ("ZADD", "{t}z", "1.5", "a", "2", "b"), ("SET", "{t}n", "10"),
    ]
    calls = [
        "return redis.call('get', '{t}s')",
        "return redis.call('get', '{t}missing')",
        "return redis.call('lrange', '{t}l', 0, -1)",
        "return redis.call('hgetall', '{t}h')",
        "return redis.call('smembers', '{t}st')",
        "return redis.call('zrange', '{t}z', 0, -1, 'withscores')",
        "return redis.call('zscore', '{t}z', 'a')",
        "return redis.call('incrbyfloat', '{t}n', 1.5)",
        "return redis.call('incrby', '{t}n', 2.0)",
        "return redis.call('type', '{t}l')",
        "return redis.call('set', '{t}x', 'y')",
        "return redis.call('exists', '{t}s', '{t}l', '{t}nope')",
        "return redis.call('hmget', '{t}h', 'f', '{t}nope')",
        "return redis.call('lpop', '{t}missing')",
        "return redis.call('blpop', '{t}missing', 0)",
        "return redis.call('zrank', '{t}z', 'b')",
        "local t = redis.call('hgetall', '{t}h') return type(t)",
        "return redis.pcall('lpush', '{t}s', '{t}x')",
        "return redis.call('object', 'encoding', '{t}l')",
    ]
    for p in (pair, pair3):
        same_all(p, setup)
        for script in calls:
            p.same("EVAL", script, 1, "{t}")
            p.same("EVAL", "redis.setresp(3) " + script, 1, "{t}")


def test_time_and_echo_from_a_script_answer_as_redis(pair, pair3):
    """TIME and ECHO are the router's commands, yet a script may call them (a rate
    limiter reads the clock with redis.call('TIME')): the shard answers them itself."""
    shapes = [
        "return redis.call('echo', 'hello')",
        "return redis.pcall('echo')",
        "return redis.pcall('time', 'x')",
        "local t = redis.call('time') return {type(t), #t, type(t[1]), type(t[2])}",
        "local t = redis.call('time') return tonumber(t[2]) < 1000000 and tonumber(t[1]) > 1700000000",
    ]
    for p in (pair, pair3):
        for script in shapes:
            p.same("EVAL", script, 0)
            p.same("EVAL", "redis.setresp(3) " + script, 0)
    seconds = decode(pair.ours.call("EVAL", "return redis.call('time')[1]", 0))[0]
    assert abs(int(seconds) - time.time()) < 60, seconds


def test_keys_argv_and_numkeys_errors(pair):
    same_all(pair, [
        ("EVAL", "return {KEYS[1], KEYS[2], ARGV[1], ARGV[2], #KEYS, #ARGV}", 2, "{t}a", "{t}b", "x", "y"),
        ("EVAL", "return redis.call('set', KEYS[1], ARGV[1])", 1, "k", "v"),
        ("EVAL", "return redis.call('get', KEYS[1])", 1, "k"),
        ("EVAL", "return 1", -1),
        ("EVAL", "return 1", 2, "a"),
        ("EVAL", "return 1", "x"),
        ("EVAL", "return 1"),
        ("EVAL_RO", "return redis.call('get', KEYS[1])", 1, "k"),
        ("EVAL_RO", "return redis.call('set', KEYS[1], 'z')", 1, "k"),
        ("EVAL", "#!lua flags=no-writes\nreturn redis.call('set', KEYS[1], 'z')", 1, "k"),
        ("EVAL", "#!lua\nreturn redis.call('set', KEYS[1], 'z')", 1, "k"),
    ])


def test_script_cache_commands(pair):
    body = "return redis.call('incr', KEYS[1])"
    sha = pair.same("SCRIPT", "LOAD", body)
    same_all(pair, [
        ("SCRIPT", "FLUSH"),
        ("SCRIPT", "EXISTS", sha, "ffffffffffffffffffffffffffffffffffffffff"),
        ("EVALSHA", sha, 1, "c"),
        ("SCRIPT", "LOAD", body),
        ("SCRIPT", "EXISTS", sha, sha.decode().upper(), "abc"),
        ("EVALSHA", sha, 1, "c"),
        ("EVALSHA", sha.decode().upper(), 1, "c"),
        ("EVALSHA_RO", sha, 1, "c"),
        ("EVALSHA", "abc", 0),
        ("SCRIPT", "LOAD", "syntax error"),
        ("SCRIPT", "FLUSH", "ASYNC"),
        ("SCRIPT", "FLUSH", "SYNC"),
        ("SCRIPT", "FLUSH", "BAD"),
        ("SCRIPT", "EXISTS", sha),
        ("SCRIPT", "KILL"),
        ("EVAL", "return 7", 0),
        ("SCRIPT", "EXISTS", "ad0ff1f5b16b6ca4d0479f6c1f3bd2a7d8b4e6b1"),
    ])


def test_evalsha_found_on_whichever_shard_the_keys_route_to(server):
    """SCRIPT LOAD reaches every shard; EVAL caches where it ran and EXISTS sees it."""
    r = server.client()
    r.flushall()
    r.script_flush()
    a, b = keys_on_different_shards(2)
    sha = r.script_load("return redis.call('incr', KEYS[1])")
    assert r.evalsha(sha, 1, a) == 1
    assert r.evalsha(sha, 1, b) == 1
    r.script_flush()
    body = "return 'cached-by-eval'"
    assert r.eval(body, 1, a) == b"cached-by-eval"
    sha2 = sha1hex(body.encode()).decode()
    assert r.script_exists(sha2) == [True]
    assert r.evalsha(sha2, 1, a) == b"cached-by-eval"


def test_keys_on_two_shards_run_atomically_across_them(server):
    """A script whose KEYS live on two shards runs as one cross-shard transaction
    (server/txn.py), and so does one that reaches an undeclared key on another shard."""
    r = server.client()
    a, b = keys_on_different_shards(2)
    assert r.eval("return 1", 2, a, b) == 1
    assert r.eval("redis.call('set', KEYS[1], ARGV[1]) redis.call('set', KEYS[2], ARGV[1]) "
                  "return redis.call('mget', KEYS[1], KEYS[2])", 2, a, b, "both") == [b"both", b"both"]
    assert r.mget(a, b) == [b"both", b"both"]
    r.function_load("#!lua name=xshard\nredis.register_function('swap', function(keys) "
                    "local x = redis.call('get', keys[1]) redis.call('set', keys[1], redis.call('get', keys[2])) "
                    "redis.call('set', keys[2], x) return x end)", replace=True)
    r.set(a, "A")
    assert r.fcall("swap", 2, a, b) == b"A"
    assert r.mget(a, b) == [b"both", b"A"]
    # An undeclared key on another shard is found and the script runs again across shards
    # (tests/test_script_undeclared.py), as on one Redis.
    assert r.eval("return redis.call('get', ARGV[1])", 1, a, b) == b"A"
    assert r.eval("return redis.call('set', KEYS[1], 'x')", 1, a) == b"OK"


# --- effects: replay equals live -------------------------------------------------------


def test_script_writes_are_logged_as_effects_and_replay_equals_live():
    live, replayed = run_and_replay([
        ("EVAL", "redis.call('set', KEYS[1], ARGV[1]) redis.call('rpush', KEYS[2], 'a', 'b')"
                 " redis.call('incrbyfloat', KEYS[3], '1.5') redis.call('expire', KEYS[1], 100)", 3,
         "k", "l", "f", "v"),
        ("EVAL", "for i = 1, 10 do redis.call('hset', 'h', 'f' .. i, i) end return 1", 0),
        ("EVAL", "redis.call('spop', 'nokey') return redis.call('del', 'l')", 0),
    ])
    assert state_of(live.db)
    effects = live.db.effects
    assert all(e[0].lower() not in (b"eval", b"evalsha") for e in effects), effects
    assert [b"rpush", b"l", b"a", b"b"] in effects


def test_script_error_midway_keeps_its_effects_so_far():
    """Redis' semantics: a script is not rolled back; the writes before the error stay."""
    live = new_ctx()
    reply = call(live, "EVAL", "redis.call('set', 'a', '1') redis.call('incr', 'b') "
                               "redis.call('lpush', 'a', 'x') redis.call('set', 'c', '3')", 0)
    assert b"WRONGTYPE" in getattr(reply, "message", b"")
    assert live.db.data[b"a"] == b"1" and live.db.data[b"b"] == b"1" and b"c" not in live.db.data
    replay_ctx = new_ctx()
    replay(replay_ctx, live.db.effects)
    assert state_of(replay_ctx.db) == state_of(live.db)


def test_a_script_that_fails_midway_on_the_router_keeps_effects(pair):
    same_all(pair, [
        ("EVAL", "redis.call('set', KEYS[1], '1') redis.call('lpush', KEYS[1], 'x')", 1, "k"),
        ("GET", "k"),
    ])


def test_script_writes_survive_kill9(server_factory):
    srv = server_factory(shards=2)
    r = srv.client()
    a, b = ("{%s}" % key for key in keys_on_different_shards(2))
    script = ("for i = 1, 50 do redis.call('rpush', KEYS[1], i) end "
              "redis.call('hset', KEYS[1] .. ':h', 'f', 'v') return redis.call('llen', KEYS[1])")
    assert r.eval(script, 1, a) == 50
    assert r.eval("redis.call('set', KEYS[1], 'x') redis.call('incrby', KEYS[1] .. 'n', 5)", 1, b) is None
    srv.kill9()
    srv.start()
    r = srv.client()
    assert r.llen(a) == 50
    assert r.lrange(a, 0, 2) == [b"1", b"2", b"3"]
    assert r.get(b) == b"x"
    assert r.get(b + "n") == b"5"
    assert r.hget(a + ":h", "f") == b"v"


# --- functions ---------------------------------------------------------------------------

LIB = "#!lua name=mylib\nredis.register_function('myfunc', function(keys, args) return redis.call('incr', keys[1]) end)"
LIB_RO = ("#!lua name=rolib\nredis.register_function{function_name='get_it', callback=function(keys, args) "
          "return redis.call('get', keys[1]) end, flags={'no-writes'}, description='reads'}")


def _lib(body: str, name: str = "test") -> str:
    return f"#!lua name={name}\n{body}"


FUNCTION_LOAD_ERRORS = [
    "return 1",
    "#!lua",
    "#!lua name=x",
    "#!lua name=x name=y\nreturn 1",
    "#!lua foo=bar\nreturn 1",
    "#!bad_engine name=x\nredis.register_function('f', function() return 1 end)",
    "#! name=x\nredis.register_function('f', function() return 1 end)",
    "#!lua name=bad-name\nredis.register_function('f', function() return 1 end)",
    _lib("bad script"),
    _lib("return 1"),
    _lib("return math.random()"),
    _lib("return redis.call('ping')"),
    _lib("return redis.setresp(3)"),
    _lib("return redis.set_repl(redis.REPL_NONE)"),
    _lib("mt = getmetatable(_G)"),
    _lib("redis.register_function('f', function() return 1 end) redis.register_function('f', function() end)"),
    _lib("redis.register_function('bad-name', function() return 1 end)"),
    _lib("redis.register_function()"),
    _lib("redis.register_function('a', 'b', 'c')"),
    _lib("redis.register_function({})"),
    _lib("redis.register_function('f')"),
    _lib("redis.register_function(1, 2)"),
    _lib("redis.register_function('f', 'x')"),
    _lib("redis.register_function{function_name='f', callback=function() return 1 end, flags={'unknown'}}"),
    _lib("redis.register_function{function_name='f', callback=function() return 1 end, flags='no-writes'}"),
    _lib("redis.register_function{function_name='f', callback=function() return 1 end, description=function() end}"),
    _lib("redis.register_function{function_name='f', callback='x'}"),
    _lib("redis.register_function{function_name='f'}"),
    _lib("redis.register_function{callback=function() return 1 end}"),
    _lib("redis.register_function{function_name='f', callback=function() return 1 end, foo='bar'}"),
    _lib("redis.register_function('single')"),
    _lib("error('boom')"),
]


def test_function_load_errors_match_redis(pair):
    pair.same("FUNCTION", "FLUSH")
    for code in FUNCTION_LOAD_ERRORS:
        pair.same("FUNCTION", "LOAD", code)
    pair.same("FUNCTION", "LOAD", "BADOPTION", LIB)
    pair.same("FUNCTION", "LIST")


def test_function_commands_match_redis(pair, pair3):
    for p in (pair, pair3):
        same_all(p, [
            ("FUNCTION", "FLUSH"),
            ("FUNCTION", "LOAD", LIB),
            ("FUNCTION", "LOAD", LIB),
            ("FUNCTION", "LOAD", "REPLACE", LIB),
            ("FUNCTION", "LOAD", LIB_RO),
            ("FUNCTION", "LOAD", _lib("redis.register_function('myfunc', function() return 1 end)", "other")),
            ("FCALL", "myfunc", 1, "{t}c"),
            ("FCALL", "myfunc", 1, "{t}c"),
            ("FCALL_RO", "myfunc", 1, "{t}c"),
            ("FCALL_RO", "get_it", 1, "{t}c"),
            ("FCALL", "get_it", 1, "{t}c"),
            ("FCALL", "nosuch", 0),
            ("FCALL", "myfunc", "bad"),
            ("FCALL", "myfunc", -1),
            ("FCALL", "myfunc", 3, "a"),
            ("FUNCTION", "LIST", "LIBRARYNAME", "my*"),
            ("FUNCTION", "LIST", "LIBRARYNAME", "rolib", "WITHCODE"),
            ("FUNCTION", "LIST", "WITHCODE", "LIBRARYNAME", "my*"),
            ("FUNCTION", "LIST", "LIBRARYNAME"),
            ("FUNCTION", "LIST", "BAD"),
            ("FUNCTION", "STATS"),
            ("FUNCTION", "DELETE", "rolib"),
            ("FUNCTION", "DELETE", "rolib"),
            ("FUNCTION", "LIST"),
            ("FUNCTION", "KILL"),
            ("FUNCTION", "FLUSH", "BAD"),
            ("FUNCTION", "RESTORE", "bad payload"),
            ("FUNCTION", "RESTORE", "x", "BADPOLICY"),
            ("FUNCTION", "FLUSH", "SYNC"),
            ("FUNCTION", "LIST"),
        ])
        p.same("FUNCTION", "LOAD", _lib("""
            redis.register_function('f1', function(keys, args) redis.setresp(3) return {map={a=1}} end)
            redis.register_function('f2', function(keys, args) return redis.call('set', keys[1], args[1]) end)
            redis.register_function('f3', function(keys, args) return redis.register_function end)
            redis.register_function('f4', function(keys, args) return a end)
            redis.register_function('f5', function(keys, args) return redis.call('nosuch') end)
        """))
        same_all(p, [
            ("FCALL", "f1", 0), ("FCALL", "f2", 1, "{t}k", "v"), ("FCALL", "f3", 0), ("FCALL", "f4", 0),
            ("FCALL", "f5", 0), ("FUNCTION", "FLUSH"),
        ])


def test_function_dump_restore_round_trip_matches_redis(pair):
    pair.same("FUNCTION", "FLUSH")
    pair.same("FUNCTION", "LOAD", LIB)
    pair.same("FUNCTION", "LOAD", LIB_RO)
    ours, theirs = pair.both("FUNCTION", "DUMP")
    # Library order is the server's dict order; each payload restores on the other server.
    for policy in ("FLUSH", "APPEND", "REPLACE"):
        for payload in (ours, theirs):
            blob = payload.split(b"\r\n", 1)[1][:-2]
            if policy == "APPEND":  # which existing library is named first is dict order
                assert all(reply.startswith(b"-ERR Library ") for reply in pair.both("FUNCTION", "RESTORE", blob))
                continue
            pair.same("FUNCTION", "RESTORE", blob, policy)
            pair.same("FUNCTION", "LIST", "LIBRARYNAME", "mylib", "WITHCODE")
    pair.same("FUNCTION", "FLUSH")
    pair.same("FUNCTION", "RESTORE", theirs.split(b"\r\n", 1)[1][:-2])
    pair.same("FCALL", "myfunc", 1, "x")


def test_function_libraries_are_on_every_shard(r):
    """FUNCTION LOAD / DELETE reach every shard. Starts from an empty keyspace (the
    `r` fixture): the module's server is shared, and an earlier test on the same
    worker (test_keys_on_two_shards_get_crossslot) leaves a string in key-0."""
    r.function_flush()
    a, b = keys_on_different_shards(2)
    assert r.function_load(LIB) == b"mylib"
    assert r.fcall("myfunc", 1, a) == 1
    assert r.fcall("myfunc", 1, b) == 1
    r.function_delete("mylib")
    for key in (a, b):
        with pytest.raises(redis.ResponseError, match="Function not found"):
            r.fcall("myfunc", 1, key)


def test_functions_replay_equals_live():
    live, replayed = run_and_replay([
        ("FUNCTION", "LOAD", LIB),
        ("FUNCTION", "LOAD", LIB_RO),
        ("FCALL", "myfunc", 1, "c"),
        ("FUNCTION", "DELETE", "rolib"),
        ("FCALL", "myfunc", 1, "c"),
    ])
    assert set(live.db.scripting.libraries) == set(replayed.db.scripting.libraries) == {b"mylib"}
    assert [b"FUNCTION", b"LOAD", b"REPLACE", LIB.encode()] in live.db.effects


def test_functions_survive_kill9(server_factory):
    srv = server_factory(shards=2)
    r = srv.client()
    r.function_load(LIB)
    r.function_load(LIB_RO)
    r.function_delete("rolib")
    a, b = keys_on_different_shards(2)
    assert r.fcall("myfunc", 1, a) == 1
    srv.kill9()
    srv.start()
    r = srv.client()
    assert [lib[1] for lib in r.function_list()] == [b"mylib"]
    assert r.fcall("myfunc", 1, a) == 2
    assert r.fcall("myfunc", 1, b) == 1


# --- busy scripts -------------------------------------------------------------------------


def _wait_busy(r, deadline_s: float = 10.0) -> str:
    """PING until the router answers BUSY (the script passed busy-reply-threshold)."""
    import time
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            r.ping()
        except redis.ResponseError as e:
            return str(e)
        time.sleep(0.02)
    raise AssertionError("no BUSY reply while a script loops")


def test_busy_script_answers_busy_and_script_kill_stops_it(server):
    import threading
    r = server.client()
    r.config_set("busy-reply-threshold", 100)
    a, b = keys_on_different_shards(2)
    runner = server.client()
    outcome: list = []
    thread = threading.Thread(target=lambda: outcome.append(_capture(runner.eval, "while true do end", 1, a)))
    thread.start()
    try:
        assert _wait_busy(r).startswith("BUSY Redis is busy running a script. You can only call SCRIPT KILL")
        with pytest.raises(redis.ResponseError, match="^BUSY Redis is busy running a script"):
            r.get(a)  # the script's shard answers from the script's hook
        assert r.set(b, "other shard") is True  # the other shard is not busy
        with pytest.raises(redis.ResponseError, match="^BUSY Redis is busy running a script. You can only call SCRIPT"):
            r.function_kill()
        conn = RawConn(server.port)
        assert conn.call("MULTI") == b"+OK\r\n"
        assert conn.call("INCR", b).startswith(b"-BUSY ")  # queued by the router: answered there
        assert conn.call("EXEC").startswith(b"-EXECABORT Transaction discarded because of: BUSY ")
        conn.close()
        assert r.script_kill() is True
    finally:
        thread.join(30)
        r.config_set("busy-reply-threshold", 5000)
    assert "Script killed by user with SCRIPT KILL..." in str(outcome[0])
    assert r.ping() is True
    with pytest.raises(redis.ResponseError, match="NOTBUSY"):
        r.script_kill()


def test_busy_script_that_wrote_is_unkillable(server):
    import threading
    r = server.client()
    r.config_set("busy-reply-threshold", 50)
    a, _ = keys_on_different_shards(2)
    runner = server.client()
    outcome: list = []
    script = "redis.call('set', KEYS[1], 'written') for i = 1, 3e8 do end return 'done'"
    thread = threading.Thread(target=lambda: outcome.append(_capture(runner.eval, script, 1, a)))
    thread.start()
    try:
        _wait_busy(r)
        with pytest.raises(redis.ResponseError, match="^UNKILLABLE Sorry the script already executed write commands"):
            r.script_kill()
    finally:
        thread.join(120)
        r.config_set("busy-reply-threshold", 5000)
    assert outcome == [b"done"]
    assert r.get(a) == b"written"


def _capture(fn, *args):
    try:
        return fn(*args)
    except redis.ResponseError as e:
        return e


def test_function_load_that_never_ends_times_out_like_redis(pair):
    same_all(pair, [
        ("FUNCTION", "LOAD", "#!lua name=lib\nlocal a = 1\nwhile 1 do a = a + 1 end"),
        ("FUNCTION", "LOAD", "#!lua name=lib\na = 1"),
        ("FUNCTION", "LOAD", "REPLACE", "#!lua name=\"foo\"\nredis.register_function('foo', function() return 1 end)"),
        ("FUNCTION", "LOAD", "#!lua name=\"unterminated\nredis.register_function('x', function() return 1 end)"),
        ("FUNCTION", "FLUSH"),
    ])


def test_scripts_cannot_block_in_xread_like_redis(pair):
    pair.same("XGROUP", "CREATE", "s", "g", "$", "MKSTREAM")
    for script in ("return redis.pcall('xread','STREAMS','s','$')",
                   "return redis.pcall('xread','BLOCK',0,'STREAMS','s','$')",
                   "return redis.pcall('xread','COUNT',1,'BLOCK','x','STREAMS','s','$')",
                   "return redis.pcall('xreadgroup','group','g','c','STREAMS','s','>')",
                   "return redis.pcall('xreadgroup','group','g','c','BLOCK',0,'STREAMS','s','>')"):
        pair.same("EVAL", script, 1, "s")


def test_noscript_router_commands_are_not_allowed_from_scripts(pair):
    """Redis checks noscript before anything runs: CLUSTER RESET is "not allowed", not unknown."""
    for script in ("return redis.pcall('cluster', 'reset', 'hard')", "redis.call('cluster', 'reset', 'hard')",
                   "return redis.pcall('monitor')", "return redis.pcall('nosuch')", "return redis.pcall('cluster')"):
        pair.same("EVAL", script, 0)
