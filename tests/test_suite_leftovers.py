"""Leftovers of Redis' own suite (issue 12): expiry frozen during CLIENT PAUSE,
PUBLISH and may-replicate commands from scripts, compared with redis-server."""

from __future__ import annotations

import re
import time

from refserver import RawConn, decode

WAIT_S = 10.0


def _expired_keys(r) -> int:
    return int(r.info("stats")["expired_keys"])


def test_client_pause_keeps_expired_keys_until_unpause(server_factory):
    """Redis keeps the dataset constant while clients are paused: expired keys read
    as missing, but neither lazy nor active expiry deletes them until the pause ends."""
    srv = server_factory(shards=2)
    r = srv.client()
    before = _expired_keys(r)
    pipe = r.pipeline(transaction=True)
    pipe.set("foo{t}", "bar", px=10)
    pipe.set("bar{t}", "foo", px=10)
    pipe.execute_command("CLIENT", "PAUSE", "50000", "WRITE")
    pipe.execute()
    deadline = time.monotonic() + WAIT_S
    while (r.get("foo{t}"), r.get("bar{t}")) != (None, None):
        assert time.monotonic() < deadline, "the keys never read as expired"
        time.sleep(0.02)
    time.sleep(0.3)  # several active expiry cycles (hz 10)
    assert _expired_keys(r) == before
    assert r.execute_command("CLIENT", "UNPAUSE") == b"OK"
    assert (r.get("foo{t}"), r.get("bar{t}")) == (None, None)
    assert _expired_keys(r) == before + 2
    # A pause that timed out stops freezing expiry too.
    r.set("baz{t}", "x", px=10)
    r.execute_command("CLIENT", "PAUSE", "100", "WRITE")
    time.sleep(0.3)
    assert r.get("baz{t}") is None
    assert _expired_keys(r) == before + 3
    r.close()


def test_publish_and_may_replicate_from_scripts_match_redis(pair):
    for script in ("return redis.call('publish', 'ch', 'msg')",
                   "#!lua flags=no-writes\nreturn redis.pcall('publish', 'ch', 'msg')",
                   "#!lua flags=no-writes\nreturn redis.pcall('set', 'k', 'v')"):
        pair.same("EVAL", script, 0)
    pair.same("EVAL_RO", "return redis.pcall('publish', 'ch', 'msg')", 0)


def test_publish_from_a_script_reaches_every_router_and_shard_port(server_factory):
    srv = server_factory(shards=2)
    subscribers = [RawConn(srv.port), RawConn(srv.shard_port(0)), RawConn(srv.shard_port(1))]
    for conn in subscribers:
        assert decode(conn.call("SUBSCRIBE", "ch"))[0] == [b"subscribe", b"ch", 1]
    r = srv.client()
    # Run on shard 1 (its key): its process counts its own port's subscriber.
    key = next(f"k{n}" for n in range(100) if r.cluster("keyslot", f"k{n}") >= 8192)
    assert r.eval("return redis.call('publish', 'ch', KEYS[1])", 1, key) == 1
    for conn in subscribers:
        assert decode(conn.read_reply())[0] == [b"message", b"ch", key.encode()]
        conn.close()
    r.close()


def _exchange(conn: RawConn, data: bytes, replies: int) -> list[bytes]:
    conn.send_raw(data)
    return [conn.read_reply() for _ in range(replies)]


def test_subscribe_inside_multi_matches_redis(server, redis_ref):
    """Redis 7.0 lets SUBSCRIBE/PSUBSCRIBE/UNSUBSCRIBE be queued: at EXEC each
    channel's confirmation takes the command's place in the reply (so EXEC's array
    holds more replies than its count says); SSUBSCRIBE fails inside EXEC."""
    resp2 = (b"MULTI\r\nSUBSCRIBE a b\r\nPSUBSCRIBE p*\r\nPING\r\nUNSUBSCRIBE a\r\nEXEC\r\nPING\r\n", 8)
    sharded = (b"MULTI\r\nSSUBSCRIBE a\r\nSUNSUBSCRIBE\r\nEXEC\r\n", 4)
    resp3 = (b"MULTI\r\nSUBSCRIBE a\r\nGET x\r\nEXEC\r\n", 4)
    outputs = []
    for port in (server.port, redis_ref.port):
        out = []
        for (data, replies), proto in ((resp2, 2), (sharded, 2), (resp3, 3)):
            conn = RawConn(port, proto)
            out.append(b"".join(_exchange(conn, data, replies)))
            conn.close()
        outputs.append(out)
    ours, theirs = outputs
    assert ours == theirs


def test_debug_reload_rechooses_encodings_like_redis(pair):
    """DEBUG RELOAD (every value through the RDB codec and back) undoes sticky
    conversions as Redis' save and reload does."""
    for args in [("HSET", "h", "f", "v", "big", "x" * 100), ("HDEL", "h", "big"), ("OBJECT", "ENCODING", "h"),
                 ("SADD", "s", "1", "2", "a"), ("SREM", "s", "a"), ("OBJECT", "ENCODING", "s"),
                 ("ZADD", "z", "1", "m", "2", "y" * 100), ("ZREM", "z", "y" * 100), ("OBJECT", "ENCODING", "z"),
                 ("SET", "n", "12"), ("APPEND", "n", "3"), ("OBJECT", "ENCODING", "n"),
                 ("DEBUG", "RELOAD"),
                 ("OBJECT", "ENCODING", "h"), ("OBJECT", "ENCODING", "s"), ("OBJECT", "ENCODING", "z"),
                 ("OBJECT", "ENCODING", "n"), ("HGETALL", "h"), ("SMEMBERS", "s"), ("ZRANGE", "z", "0", "-1"),
                 ("GET", "n"), ("DEBUG", "RELOAD", "NOSAVE"), ("DEBUG", "RELOAD", "BAD"),
                 ("DEBUG", "SET-ACTIVE-EXPIRE", "1"), ("DEBUG", "CHANGE-REPL-ID"), ("DEBUG", "JMAP"),
                 ("DEBUG", "QUICKLIST-PACKED-THRESHOLD", "100"), ("DEBUG", "ERROR", "MYERR custom")]:
        pair.same(*args)


def test_debug_set_active_expire_stops_background_expiry(server_factory):
    srv = server_factory(shards=2)
    r = srv.client()
    before = _expired_keys(r)
    assert r.execute_command("DEBUG", "SET-ACTIVE-EXPIRE", "0") == b"OK"
    for n in range(20):
        r.set(f"k{n}", "v", px=5)
    time.sleep(0.5)  # five active expiry cycles at hz 10
    assert _expired_keys(r) == before
    assert r.execute_command("DEBUG", "SET-ACTIVE-EXPIRE", "1") == b"OK"
    deadline = time.monotonic() + WAIT_S
    while _expired_keys(r) < before + 20:
        assert time.monotonic() < deadline, "active expiry did not resume"
        time.sleep(0.05)
    r.close()


def test_cluster_help_is_listed_with_its_siblings(server, redis_ref):
    ours, theirs = RawConn(server.port), RawConn(redis_ref.port)
    for conn in (ours, theirs):  # Redis' table has it too (its CLUSTER HELP needs cluster mode to answer)
        commands = decode(conn.call("COMMAND", "LIST", "FILTERBY", "PATTERN", "cl*help"))[0]
        assert b"cluster|help" in commands and b"client|help" in commands
    lines = decode(ours.call("CLUSTER", "HELP"))[0]
    assert lines[0] == b"CLUSTER <subcommand> [<arg> [value] [opt] ...]. Subcommands are:"
    assert lines[-2:] == [b"HELP", b"    Prints this help."]
    ours.close()
    theirs.close()


def _cmdstat(r, name: str) -> dict:
    return r.info("commandstats").get(f"cmdstat_{name}", {})


def test_blocked_commands_count_in_commandstats_when_they_end(server_factory):
    """Redis' updateStatsOnUnblock: one call when served, timed out or unblocked with
    an error (a failed call then), none when it blocked."""
    srv = server_factory(shards=1)
    r = srv.client()
    r.execute_command("CONFIG", "RESETSTAT")
    r.xgroup_create("s", "g", "$", mkstream=True)
    blocked = RawConn(srv.port)
    blocked.send_raw(b"XREADGROUP GROUP g Alice BLOCK 0 STREAMS s >\r\n")
    deadline = time.monotonic() + WAIT_S
    while r.info("clients")["blocked_clients"] != 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert _cmdstat(r, "xreadgroup") == {}
    r.xgroup_destroy("s", "g")
    assert blocked.read_reply().startswith(b"-NOGROUP")
    stat = _cmdstat(r, "xreadgroup")
    assert (stat["calls"], stat["failed_calls"], stat["rejected_calls"]) == (1, 1, 0)
    assert r.info("errorstats")["errorstat_NOGROUP"]["count"] == 1
    assert blocked.call("BLPOP", "nolist", "0.01") == b"*-1\r\n"
    assert blocked.call("BLPOP", "nolist", "0.01") == b"*-1\r\n"
    assert (_cmdstat(r, "blpop")["calls"], _cmdstat(r, "blpop")["failed_calls"]) == (2, 0)
    blocked.close()
    r.close()


def test_config_set_of_an_immutable_parameter_to_its_value_is_accepted(server):
    """Redis can rebind at run time; durakv cannot, but setting `bind` or `port` to
    what it is changes nothing (Redis' CONFIG sanity test sets every parameter so)."""
    conn = RawConn(server.port)
    try:
        for name in (b"bind", b"port"):
            _, value = decode(conn.call("CONFIG", "GET", name))[0]
            assert conn.call("CONFIG", "SET", name, value) == b"+OK\r\n"
        assert conn.call("CONFIG", "SET", "port", str(server.port + 1000)).startswith(
            b"-ERR CONFIG SET failed (possibly related to argument 'port') - Unable to listen on this port")
        assert conn.call("CONFIG", "SET", "bind", "0.0.0.0").startswith(b"-ERR CONFIG SET failed")
    finally:
        conn.close()


MASSIVE_UNPACK = """local a = {}
for i = 1, 7999 do a[i] = 1 end
return redis.%s('rpush', KEYS[1], unpack(a))"""


def test_scripts_pass_8001_arguments_to_redis_call_like_redis(pair):
    """Redis' 'Script check unpack with massive arguments': more arguments than lupa
    hands a Python callable reach redis.call and redis.pcall."""
    pair.same("DEL", "massive{u}")
    assert pair.same("EVAL", MASSIVE_UNPACK % "call", 1, "massive{u}") == 7999
    assert pair.same("EVAL", MASSIVE_UNPACK % "pcall", 1, "massive{u}") == 7999 * 2
    pair.same("EVAL", "local a = {} for i = 1, 7999 do a[i] = 1 end a[5000] = {}\n"
              "return redis.pcall('rpush', KEYS[1], unpack(a))", 1, "massive{u}")
    pair.same("FUNCTION", "LOAD", "REPLACE", "#!lua name=massive\nredis.register_function('massive', "
              "function(keys) local a = {} for i = 1, 7999 do a[i] = 1 end\n"
              "return redis.call('rpush', keys[1], unpack(a)) end)")
    assert pair.same("FCALL", "massive", 1, "massive{u}") == 7999 * 3
    pair.same("FUNCTION", "DELETE", "massive")


def test_errors_of_a_returned_redis_call_name_the_script_line_like_redis(pair):
    """redis.call is a Lua function in the sandbox; scripts compile without tail calls,
    so `return redis.call(...)` failing still names the script's line, as in Redis."""
    pair.same("SET", "str{u}", "x")
    pair.same("EVAL", "local x = 1\n\nreturn redis.call('lpush', KEYS[1], 'a')", 1, "str{u}")
    pair.same("EVAL", "local function f() return redis.call('nosuchcommand') end\nreturn f()", 0)
    pair.same("EVAL", "return redis.pcall('lpush', KEYS[1], 'a')", 1, "str{u}")
    pair.same("EVAL", "local function sum(n, acc) if n == 0 then return acc end return sum(n - 1, acc + n) end\n"
              "return sum(100, 0)", 0)


def test_sort_by_constant_of_a_set_is_ordered_inside_scripts_like_redis(pair):
    """sort.c forces ALPHA when a script sorts a set BY a constant, so the reply does
    not depend on the set's internal order (outside scripts it still does)."""
    members = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "l", "m", "n", "o", "p", "q", "r", "s",
               "t", "u", "v", "z", "aa", "aaa", "azz", "10", "9", "-1"]
    pair.same("DEL", "sortset{u}")
    pair.same("SADD", "sortset{u}", *members)
    pair.same("EVAL", "return redis.call('sort', KEYS[1], 'by', '_')", 1, "sortset{u}")
    pair.same("EVAL", "return redis.call('sort', KEYS[1], 'by', '_', 'desc', 'limit', 2, 5)", 1, "sortset{u}")
    pair.same("EVAL", "return redis.call('sort', KEYS[1], 'by', '_', 'get', '#', 'get', '_:*')", 1, "sortset{u}")
    pair.same("EVAL", "return redis.call('sort_ro', KEYS[1], 'by', '_')", 1, "sortset{u}")
    pair.same("DEL", "sortlist{u}")
    pair.same("RPUSH", "sortlist{u}", "c", "a", "b")
    pair.same("EVAL", "return redis.call('sort', KEYS[1], 'by', '_')", 1, "sortlist{u}")


def test_config_parameters_redis_configurations_set_match_redis(pair):
    """repl-backlog-size, maxmemory-clients and replicaof/slaveof exist with Redis'
    syntax and errors (unit/introspection's CONFIG SET with multiple args, rollback on
    set error, CONFIG GET multiple args)."""
    pair.same("CONFIG", "GET", "repl-backlog-size")
    pair.same("CONFIG", "GET", "maxmemory-clients")
    pair.same("CONFIG", "GET", "replicaof")
    pair.same("CONFIG", "GET", "slaveof")
    for value in ("-1", "abc", "0"):
        pair.same("CONFIG", "SET", "repl-backlog-size", value)
    for value in ("200%", "101%", "-5%", "x%", "%", "lots"):
        pair.same("CONFIG", "SET", "maxmemory-clients", value)
    pair.same("CONFIG", "SET", "maxmemory-clients", "0")
    pair.same("CONFIG", "SET", "replicaof", "no one")
    before = pair.same("CONFIG", "GET", "maxmemory")
    pair.same("CONFIG", "SET", "repl-backlog-size", "10000002", "save", "3000 5")
    pair.same("CONFIG", "GET", "repl-backlog-size")
    pair.same("CONFIG", "SET", "maxmemory", "10000001", "maxmemory-clients", "200%",
              "client-query-buffer-limit", "invalid")
    assert pair.same("CONFIG", "GET", "maxmemory") == before  # nothing applied
    pair.same("CONFIG", "SET", "repl-backlog-size", "1mb", "save", "")
    ours, theirs = (decode(reply)[0] for reply in pair.both("CONFIG", "GET", "*of"))
    assert dict(zip(ours[::2], ours[1::2])) == dict(zip(theirs[::2], theirs[1::2])) == \
        {b"slaveof": b"", b"replicaof": b""}, (ours, theirs)
    # Client eviction is not implemented: a limit is refused rather than ignored.
    assert pair.ours.call("CONFIG", "SET", "maxmemory-clients", "10%").startswith(
        b"-ERR CONFIG SET failed (possibly related to argument 'maxmemory-clients') - durakv does not evict")


def test_config_set_of_a_port_fails_at_apply_after_every_check(pair):
    """Redis checks every value before it rebinds: a bad value after `port` is the error;
    durakv then answers a changed port as Redis' failed listen (and applies nothing)."""
    port = pair.ours.value("CONFIG", "GET", "port")[1]
    ours = pair.ours.call("CONFIG", "SET", "port", str(int(port) + 1000), "maxmemory-clients", "200%")
    theirs = pair.theirs.call("CONFIG", "SET", "port", "1", "maxmemory-clients", "200%")
    assert ours == theirs, (ours, theirs)
    ours = pair.ours.call("CONFIG", "SET", "maxmemory", "10000001", "port", str(int(port) + 1000))
    assert ours.startswith(b"-ERR CONFIG SET failed (possibly related to argument 'port') - "
                           b"Unable to listen on this port"), ours
    assert pair.ours.value("CONFIG", "GET", "maxmemory") == [b"maxmemory", b"0"]


def _counts_of(conn: RawConn, name: str) -> str:
    info = conn.call("INFO", "commandstats").decode()
    line = next((line for line in info.split("\r\n") if line.startswith(f"cmdstat_{name}:")), "")
    return re.sub(r"usec=\d+,usec_per_call=[\d.]+,", "", line)


def test_commands_a_script_runs_count_in_commandstats_like_redis(pair):
    """Redis' call() counts a script's commands: calls, failed_calls when they answer
    an error, rejected_calls when the script layer refuses them (a write from a
    read-only script), so INFO commandstats shows what scripts do."""
    pair.same("SET", "str{u}", "x")
    for conn in (pair.ours, pair.theirs):
        conn.call("CONFIG", "RESETSTAT")
    pair.same("EVAL", "redis.call('incr', KEYS[1] .. 'n') return redis.call('get', KEYS[1])", 1, "str{u}")
    pair.same("EVAL", "return redis.pcall('lpush', KEYS[1], 'a')", 1, "str{u}")
    pair.same("EVAL_RO", "return redis.pcall('set', KEYS[1], 'y')", 1, "str{u}")
    pair.same("FCALL_RO", "nosuchfunction", 0)
    for name in ("incr", "get", "lpush", "set", "eval", "eval_ro"):
        ours, theirs = _counts_of(pair.ours, name), _counts_of(pair.theirs, name)
        assert ours == theirs and ours, (name, ours, theirs)


def test_select_from_a_script_follows_redis_cluster(pair):
    """redis.call('select', 0) is accepted (scripts written for several databases do
    it), another database is refused as durakv's SELECT refuses it: Redis Cluster's text."""
    pair.same("EVAL", "redis.call('select', 0) return redis.call('set', KEYS[1], 'v')", 1, "sel{u}")
    pair.same("EVAL", "return redis.pcall('select', 'x')", 1, "sel{u}")
    pair.same("EVAL", "return redis.pcall('select', 0, 1)", 1, "sel{u}")
    refused = pair.ours.call("EVAL", "return redis.pcall('select', 5)", 1, "sel{u}")
    assert refused == pair.ours.call("SELECT", "5") == b"-ERR SELECT is not allowed in cluster mode\r\n"


def _error_counts(conn: RawConn) -> list[str]:
    stats = conn.call("INFO", "stats").decode()
    total = next(line for line in stats.split("\r\n") if line.startswith("total_error_replies:"))
    errors = conn.call("INFO", "errorstats").decode()
    return [total] + [line for line in errors.split("\r\n") if line.startswith("errorstat_")]


def test_errors_inside_scripts_count_once_in_errorstats_like_redis(pair):
    """Redis counts a failed command's error when it fails inside a script, also when
    the script catches it (redis.pcall, Lua's pcall), and not again when the script's
    reply is that error; other script errors count as the reply they are."""
    pair.same("SET", "str{u}", "x")
    scripts = [("EVAL", "return redis.call('lpush', KEYS[1], 'a')"),
               ("EVAL", "local t = redis.pcall('lpush', KEYS[1], 'a') return 1"),
               ("EVAL", "return redis.pcall('lpush', KEYS[1], 'a')"),
               ("EVAL", "local ok = pcall(redis.call, 'lpush', KEYS[1], 'a') return 1"),
               ("EVAL_RO", "return redis.call('set', KEYS[1], 'y')"),
               ("EVAL_RO", "local t = redis.pcall('set', KEYS[1], 'y') return t['err']"),
               ("EVAL", "return redis.error_reply('MY_ERR custom')"),
               ("EVAL", "return nosuchglobal")]
    for command, script in scripts:
        for conn in (pair.ours, pair.theirs):
            conn.call("CONFIG", "RESETSTAT")
        pair.same(command, script, 1, "str{u}")
        ours, theirs = _error_counts(pair.ours), _error_counts(pair.theirs)
        assert ours == theirs, (script, ours, theirs)
