"""server/script_scope.py: which scripts' text shows they keep to their declared keys
(their followers for other shards need not wait for them, server/script_retry.py)."""

from __future__ import annotations

import os
import signal
import time

import pytest

import durakv.shards.commands  # noqa: F401  (registers the commands the verdicts look up)
from durakv.server.script_scope import MAX_LIBRARY_BYTES, ScriptScopes, function_verdicts, keeps_to_its_keys
from durakv.shards.luaenv import sha1hex
from refserver import RawConn, encode_command
from test_pubsub import WAIT_S, _one_per_router
from test_txn import A, B

KEEPS = [
    "return redis.call('SET', KEYS[1], ARGV[1])",
    'local v = redis.call("GET", KEYS[1]) if v == false then return redis.pcall("INCR", KEYS[2]) end return v',
    "redis.call('HSET', KEYS[1], 'f', ARGV[1]) redis.call('PUBLISH', ARGV[2], 'x') return redis.status_reply('OK')",
    "redis.log(redis.LOG_WARNING, 'k') return redis.call ( 'expire' , KEYS[ 2 ] , 10 )",
    "if KEYS[1] == ARGV[1] then return 1 end return redis.call('LPUSH', KEYS[1], 'a', 'b')",
    # multi-key commands whose every key position is a declared key
    "return redis.call('RENAME', KEYS[1], KEYS[2])",
    "redis.call('DEL', KEYS[1], KEYS[2], KEYS[3]) return redis.call('MSET', KEYS[1], ARGV[1], KEYS[2], ARGV[2])",
    "return redis.call('DEL', unpack(KEYS))",
    "return redis.call('HSET', KEYS[1], unpack(ARGV, 4))",  # a tail past the only key position
    "return redis.call('SMOVE', KEYS[1], KEYS[2], ARGV[1])",
    # locals bound once to KEYS entries at the top level, used after
    "local key = KEYS[1] local v = redis.call('GET', key) return redis.call('SET', key, v .. ARGV[1])",
    "local k1, k2 = KEYS[1], KEYS[2]; local n = redis.call('LLEN', k1) return redis.call('RPOPLPUSH', k1, k2)",
    "local key = KEYS[1]\nlocal function bump(by) return redis.call('INCRBY', key, by) end\nreturn bump(ARGV[1])",
    "local key = KEYS[1] -- key = ARGV[1] in a comment is no assignment\nreturn redis.call('GET', key)",
    "local k = KEYS[1] if redis.call('GET', k) == ARGV[1] then return redis.call('DEL', k) end return 0",
    "local k = KEYS[1] local x = {} x[k] = ARGV[1] while true do redis.call('DEL', k) break end return x[k]",
    # loops over KEYS
    "for i, k in ipairs(KEYS) do redis.call('DEL', k) end return #KEYS",
    "for _, k in ipairs(KEYS) do redis.call('SET', k, ARGV[1]) end",
    "for i = 1, #KEYS do redis.call('HSET', KEYS[i], 'f', ARGV[i]) end",
    "local n = 0 for i in ipairs(KEYS) do n = n + redis.call('EXISTS', KEYS[i]) end return n",
    # RQ 3.0's unique enqueue (rq/scripts.py), abridged
    """if redis.call("EXISTS", KEYS[1]) == 1 then return 0 end
    if #ARGV > 3 then redis.call("HSET", KEYS[1], unpack(ARGV, 4)) end
    local ttl = tonumber(ARGV[3])
    if ttl and ttl > 0 then redis.call("EXPIRE", KEYS[1], ttl) end
    if ARGV[2] == "L" then redis.call("LPUSH", KEYS[2], ARGV[1])
    elseif ARGV[2] == "R" then redis.call("RPUSH", KEYS[2], ARGV[1]) end
    return 1""",
    # a fixed-window rate limiter and a token bucket
    """local key = KEYS[1]
    local limit = tonumber(ARGV[1])
    local current = tonumber(redis.call('GET', key) or '0')
    if current + 1 > limit then return 0 end
    redis.call('INCRBY', key, 1)
    redis.call('EXPIRE', key, ARGV[2])
    return 1""",
    """local tokens_key, timestamp_key = KEYS[1], KEYS[2]
    local rate, capacity, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
    local last_tokens = tonumber(redis.call("get", tokens_key)) or capacity
    local last_refreshed = tonumber(redis.call("get", timestamp_key)) or 0
    local filled = math.min(capacity, last_tokens + math.max(0, now - last_refreshed) * rate)
    local allowed = filled >= 1
    if allowed then filled = filled - 1 end
    redis.call("setex", tokens_key, 60, filled)
    redis.call("setex", timestamp_key, 60, now)
    return { allowed and 1 or 0, filled }""",
]
REACHES = [
    "return redis.call('GET', ARGV[1])",  # a key from ARGV
    "return redis.call('GET', KEYS[1] .. ':x')",  # a computed key
    "return redis.call('GET', 'literal')",
    "return redis.call('MSET', KEYS[1], 'v', ARGV[1], 'w')",  # a key from ARGV past the first argument
    "return redis.call('SORT', KEYS[1], 'BY', 'w_*')",  # reads keys by pattern
    "return redis.call('KEYS', '*')",  # the whole keyspace
    "return redis.call('DBSIZE')",
    "return redis.call('OBJECT', 'ENCODING', KEYS[1])",
    "local c = redis.call return c('GET', ARGV[1])",  # a call through a variable
    "local r = redis return r.call('GET', ARGV[1])",
    "return redis['call']('GET', ARGV[1])",
    "local cmd = ARGV[1] return redis.call(cmd, KEYS[1])",  # a command chosen at run time
    "KEYS[1] = ARGV[1] return redis.call('GET', KEYS[1])",  # KEYS rewritten
    "local k = KEYS k[1] = ARGV[1] return redis.call('GET', KEYS[1])",
    "return _G['redis'].call('GET', ARGV[1])",
    "return rawget(_G, 'redis').call('GET', ARGV[1])",
    "return loadstring('return 1')()",
    "return redis.call('XREAD', 'STREAMS', KEYS[1], '0')",
    "return redis.call('DEL', KEYS[1], ARGV[1])",  # a multi-key command with one key from ARGV
    "return redis.call('DEL', KEYS[1], unpack(ARGV))",  # keys from a tail of any length
    "return redis.call('MSET', unpack(ARGV))",
    "return redis.call('RENAME', KEYS[1], ...)",
    "return redis.call('ZUNIONSTORE', KEYS[1], 1, KEYS[2])",  # movable keys
    # a local reassigned, shadowed, or bound to something computed
    "local k = KEYS[1] k = ARGV[1] return redis.call('GET', k)",
    "local k = KEYS[1] local a a, k = 1, ARGV[1] return redis.call('GET', k)",
    "local k = KEYS[1] if ARGV[1] then k = ARGV[2] end return redis.call('GET', k)",
    "local k = KEYS[1] local function f() k = ARGV[1] end f() return redis.call('GET', k)",
    "local k = KEYS[1] local k = ARGV[1] return redis.call('GET', k)",
    "local k = KEYS[1] local function f(k) return redis.call('GET', k) end return f(ARGV[1])",
    "local k = KEYS[1] for _, k in ipairs(ARGV) do redis.call('DEL', k) end",
    "local k = KEYS[1] for k = 1, 3 do redis.call('DEL', k) end",
    "local k = KEYS[1] local function k() end return redis.call('GET', k)",
    "local k = KEYS[1] .. ':x' return redis.call('GET', k)",  # string concatenation into a key
    "local k = KEYS[1]..ARGV[1] return redis.call('GET', k)",
    "local k = ARGV[1] return redis.call('GET', k)",
    "local k1, k2 = KEYS[1] return redis.call('RENAME', k1, k2)",
    "local k = KEYS[1] .. '' local j = k return redis.call('GET', j)",
    "local k = KEYS[1]\n(print)('x') return redis.call('GET', k)",  # Lua reads KEYS[1](print)('x')
    "local k = KEYS[1] local v = 'x' v, k = k, v return redis.call('GET', k)",  # swapped
    "local k = KEYS[1] return redis.call('SET', k, redis.call('GET', ARGV[1]))",
    "for i, k in ipairs(KEYS) do redis.call('GET', i) end",  # the index, not the key
    "for _, k in ipairs(KEYS) do redis.call('GET', KEYS[k]) end",
    "return redis.call('GET', k) local k = KEYS[1]",  # used before its binding: a global
    "if ARGV[1] then local k = KEYS[1] end return redis.call('GET', k)",  # used out of its block
    "local k = KEYS k = ARGV return redis.call('GET', k[1])",
    # loops whose variables are not KEYS' entries
    "for i, k in ipairs(ARGV) do redis.call('DEL', k) end",
    "for i, k in pairs(KEYS) do redis.call('DEL', k) end",
    "for i = 1, #KEYS do redis.call('DEL', KEYS[i + 1]) end",  # KEYS[i] with a computed index
    "for i = 1, #KEYS do i = i + 1 redis.call('DEL', KEYS[i]) end",
    "for i = 1, #ARGV do redis.call('DEL', KEYS[i]) end",
    "local i = 5 return redis.call('GET', KEYS[i])",
    "for i, k in ipairs(KEYS) do end return redis.call('DEL', k)",  # out of the loop
    "for _, k in ipairs(KEYS) do local k = ARGV[1] redis.call('DEL', k) end",
    "for _, k in ipairs(KEYS) do k = ARGV[1] redis.call('DEL', k) end",
    "local function ipairs(t) return pairs(ARGV) end for _, k in ipairs(KEYS) do redis.call('DEL', k) end",
    "unpack = function() return ARGV[1] end return redis.call('DEL', unpack(KEYS))",
    "table.insert(KEYS, ARGV[1]) return redis.call('DEL', unpack(KEYS))",  # KEYS grown
    "KEYS[1], KEYS[2] = ARGV[1], ARGV[2] return redis.call('RENAME', KEYS[1], KEYS[2])",
    "local t = {KEYS = ARGV} return redis.call('GET', t.KEYS[1])",
    "return redis.call(\"GET\", KEYS[1] .. ARGV[1])",
    "return redis.call('GET', KEYS[1]:sub(2))",
    "return redis.call('GET', [[K]])",
    "return redis.call('SET', KEYS[1], 'v', 'EX', 5, redis)",  # `redis` passed on
]


@pytest.mark.parametrize("body", KEEPS)
def test_scripts_that_keep_to_their_keys(body):
    assert keeps_to_its_keys(body.encode())


@pytest.mark.parametrize("body", REACHES)
def test_scripts_that_may_reach_other_keys(body):
    assert not keeps_to_its_keys(body.encode())


def test_evalsha_is_judged_by_a_body_this_router_saw_and_fcall_by_a_library_it_loaded():
    scopes = ScriptScopes()
    body = KEEPS[0].encode()
    sha = sha1hex(body)
    assert not scopes.keeps([b"EVALSHA", sha, b"1", b"k", b"v"])  # never seen: may reach
    assert scopes.keeps([b"EVAL", body, b"1", b"k", b"v"])
    assert scopes.keeps([b"evalsha_ro", sha.upper(), b"1", b"k", b"v"])
    assert not scopes.keeps([b"FCALL", b"f", b"1", b"k"])
    scopes.note_library(_library(KEEPS[0], "f") + b"\n" + _library(REACHES[0], "g", table=True).split(b"\n", 1)[1])
    assert scopes.keeps([b"FCALL", b"f", b"1", b"k"]) and scopes.keeps([b"fcall_ro", b"f", b"1", b"k"])
    assert not scopes.keeps([b"FCALL", b"F", b"1", b"k"])  # function names are case-sensitive
    assert not scopes.keeps([b"FCALL", b"g", b"1", b"k"])


def test_a_function_change_through_this_router_forgets_what_it_may_change():
    """A LOAD forgets the verdicts on the functions of the library it names (REPLACE
    replaces them all), before its shards answer; another library's stay; any other
    change forgets every verdict."""
    scopes = ScriptScopes()
    first, other = _library(KEEPS[0], "f"), _library(KEEPS[1], "g")
    scopes.note_library(first)
    scopes.note_library(other)
    scopes.forget_library(_library(REACHES[0], "h").replace(b"lib_h", b"lib_f"))  # REPLACE of lib_f
    assert not scopes.keeps([b"FCALL", b"f", b"1", b"k"]) and scopes.keeps([b"FCALL", b"g", b"1", b"k"])
    scopes.forget_library(b"no metadata")  # refused by every shard: nothing changes
    assert scopes.keeps([b"FCALL", b"g", b"1", b"k"])
    scopes.note_library(first)
    scopes.forget_library(None)  # FUNCTION DELETE, FLUSH, RESTORE
    assert not scopes.keeps([b"FCALL", b"f", b"1", b"k"]) and not scopes.keeps([b"FCALL", b"g", b"1", b"k"])


def _library(body: str, name: str = "f", table: bool = False, keys: str = "keys", args: str = "args") -> bytes:
    """A library registering one function whose callback is the script `body` with
    KEYS and ARGV as its parameters `keys` and `args`."""
    callback = f"function({keys}, {args})\n{body.replace('KEYS', keys).replace('ARGV', args)}\nend"
    if table:
        call = (f"redis.register_function{{function_name='{name}', callback={callback}, "
                "flags={'no-writes'}, description='d'}")
    else:
        call = f"redis.register_function('{name}', {callback})"
    return f"#!lua name=lib_{name}\n{call}\n".encode()


@pytest.mark.parametrize("table", [False, True])
@pytest.mark.parametrize("body", KEEPS)
def test_functions_that_keep_to_their_keys(body, table):
    assert function_verdicts(_library(body, table=table)) == {b"f": True}
    assert function_verdicts(_library(body, table=table, keys="kk", args="aa")) == {b"f": True}


@pytest.mark.parametrize("body", REACHES)
def test_functions_that_may_reach_other_keys(body):
    assert not function_verdicts(_library(body)).get(b"f")


LIBRARIES_NOT_JUDGED = [
    # a helper, a local or any other statement at the top level: a body may call or read it
    "local function get(k) return redis.call('GET', ARGV[1]) end\n"
    "redis.register_function('f', function(keys, args) return get(keys[1]) end)",
    "local x = 1\nredis.register_function('f', function(keys) return redis.call('GET', keys[1]) end)",
    "redis.register_function('f', function(keys) return redis.call('GET', keys[1]) end)\nprint('x')",
    "local function f(keys) return redis.call('GET', keys[1]) end\nredis.register_function('f', f)",
    "redis.register_function{function_name='f', callback=function(keys) return redis.call('GET', keys[1]) end, "
    "other=1}",
    "redis.register_function{['function_name']='f', callback=function(keys) return 1 end}",
    "_G.redis.register_function('f', function(keys) return redis.call('GET', keys[1]) end)",
    "redis.register_function('f', function(keys) return redis.call('GET', keys[1]) end",  # does not compile
]
FUNCTIONS_THAT_MAY_REACH = [
    "redis.register_function('f', function(keys, args) return redis.call('GET', KEYS[1]) end)",  # a global KEYS
    "redis.register_function('f', function(keys, args) return redis.call('GET', ARGV[1]) end)",
    "redis.register_function('f', function(redis, keys) return redis.call('GET', keys[1]) end)",
    "redis.register_function('f', function(keys, keys) return redis.call('GET', keys[1]) end)",
    "redis.register_function('f', function(a, keys) return redis.call('GET', keys[1]) end)",  # keys is ARGV
    "redis.register_function('f', function(keys, args, c) return redis.call('GET', keys[1]) end)",
    "redis.register_function('f', function(...) return redis.call('GET', ...) end)",
    "redis.register_function('f', function() return redis.call('GET', 'k') end)",
    "redis.register_function('f', function(keys) keys = {'x'} return redis.call('GET', keys[1]) end)",
    "redis.register_function('f', function(keys) local keys = {'x'} return redis.call('GET', keys[1]) end)",
    "redis.register_function('f', function(keys) return redis.call('GET', keys[1] .. 'x') end)",
    "redis.register_function('f', function(keys) redis.register_function('g', print) end)",
    "redis.register_function('f', function(keys) return redis.call('FCALL', 'g', 1, keys[1]) end)",
]


@pytest.mark.parametrize("text", LIBRARIES_NOT_JUDGED)
def test_libraries_of_another_shape_are_not_judged(text):
    assert function_verdicts(b"#!lua name=lib\n" + text.encode()) == {}


@pytest.mark.parametrize("text", FUNCTIONS_THAT_MAY_REACH)
def test_functions_whose_parameters_are_not_read_as_keys_may_reach(text):
    assert function_verdicts(b"#!lua name=lib\n" + text.encode()) in ({}, {b"f": False})


def test_every_function_of_a_library_is_judged_and_metadata_is_required():
    text = ("redis.register_function('a', function(keys) return redis.call('GET', keys[1]) end);\n"
            "redis.register_function{callback=function(keys, args) return redis.call('GET', args[1]) end, "
            "function_name='b'}\n"
            "redis.register_function('c', function(k, a) for _, key in ipairs(k) do redis.call('DEL', key) end end)")
    assert function_verdicts(b"#!lua name=lib\n" + text.encode()) == {b"a": True, b"b": False, b"c": True}
    assert function_verdicts(text.encode()) == {}  # no shebang: FUNCTION LOAD refuses it
    assert function_verdicts(b"#!lua name=lib\n" + b" " * MAX_LIBRARY_BYTES + text.encode()) == {}


def test_reading_is_bounded():
    """A body past MAX_BODY_BYTES is not read, and a list of assignment targets past
    MAX_TARGET_TOKENS is taken for one: both only cost a wait."""
    from durakv.server.script_scope import MAX_BODY_BYTES, MAX_TARGET_TOKENS
    keeps = b"local k = KEYS[1] return redis.call('GET', k)"
    assert keeps_to_its_keys(keeps)
    assert not keeps_to_its_keys(keeps + b" " * (MAX_BODY_BYTES + 1 - len(keeps)))
    targets = b", ".join(b"t%d" % i for i in range(MAX_TARGET_TOKENS))
    assert not keeps_to_its_keys(b"local k = KEYS[1] local " + targets + b" k, " + targets + b" = ARGV[1] "
                                 b"return redis.call('GET', k)")


def test_the_shards_known_to_have_a_script_are_bounded_and_forgotten_on_flush():
    """`homes`: an EVALSHA sent to a shard not known to have its script holds every later
    request of its client (it may be sent again), so a forgotten home only costs a wait."""
    from durakv.server.script_scope import MAX_VERDICTS
    scopes = ScriptScopes()
    sha = sha1hex(b"return 1")
    assert not scopes.cached_on(sha, 0)
    scopes.note_cached(sha.upper(), 1 << 1)
    assert scopes.cached_on(sha, 1) and not scopes.cached_on(sha, 0)
    scopes.note_loaded(b"return 1", 2)
    assert scopes.cached_on(sha.upper(), 0) and scopes.cached_on(sha, 1)
    for i in range(MAX_VERDICTS):
        scopes.note_cached(b"%040d" % i, 1)
    assert len(scopes.homes) <= MAX_VERDICTS and not scopes.cached_on(sha, 0)


KEEPING_LIBRARY = ("#!lua name=scoped\nredis.register_function('bump', function(keys, args) "
                   "return redis.call('INCR', keys[1]) end)")
REACHING_LIBRARY = ("#!lua name=scoped\nredis.register_function('bump', function(keys, args) "
                    "redis.call('INCR', keys[1]) redis.call('SET', args[1], 'reached') return 0 end)")


def test_a_function_replaced_through_another_router_is_judged_again(server_factory, redis_ref):
    """Router 0 judged `bump` to keep to its keys (its FUNCTION LOAD); router 1 replaces
    it with one reaching another shard's key: router 0 has forgotten its verdict by the
    time router 1 replies, so a GET pipelined after the FCALL for that other shard waits
    for it and sees what it wrote, as on redis-server (sent at once, it would not)."""
    srv = server_factory(shards=2, extra_args=("--routers", "2"))
    by_router, spare = _one_per_router(srv.port)
    theirs = RawConn(redis_ref.port)
    pipeline = [("FCALL", "bump", "1", A, B), ("GET", B), ("GET", A)]
    try:
        theirs.pipeline([("FLUSHALL",), ("FUNCTION", "FLUSH"), ("FUNCTION", "LOAD", REACHING_LIBRARY)])
        expected = theirs.pipeline(pipeline)
        assert by_router[0].call("FUNCTION", "LOAD", KEEPING_LIBRARY) == b"$6\r\nscoped\r\n"
        assert by_router[0].call("FCALL", "bump", "1", A) == b":1\r\n"
        assert by_router[1].call("FUNCTION", "LOAD", "REPLACE", REACHING_LIBRARY) == b"$6\r\nscoped\r\n"
        by_router[0].call("DEL", A)
        got = by_router[0].pipeline(pipeline)
        assert got == expected, f"durakv {got!r} != redis {expected!r}"
    finally:
        theirs.call("FUNCTION", "FLUSH")
        for conn in [*by_router.values(), *spare, theirs]:
            conn.close()


def _shard_of(key: str) -> int:
    from durakv.shards.slots import key_slot, slot_owner_table
    return slot_owner_table(2)[key_slot(key.encode())]


def _follower_not_held(srv, ours: RawConn, reader: RawConn) -> None:
    """With the shard of A stopped, `ours` pipelines FCALL bump (on A) and a SET of B:
    the SET is not held behind the FCALL (its function was judged to keep to its keys),
    so `reader` sees it before the FCALL's reply."""
    stopped = srv.child_pid("shard", _shard_of(A))
    os.kill(stopped, signal.SIGSTOP)
    try:
        ours.send_raw(encode_command(("FCALL", "bump", "1", A)) + encode_command(("SET", B, "follower")))
        deadline = time.monotonic() + WAIT_S
        while reader.call("GET", B) != b"$8\r\nfollower\r\n":
            assert time.monotonic() < deadline, "the SET waited for the FCALL on the stopped shard"
            time.sleep(0.05)
    finally:
        os.kill(stopped, signal.SIGCONT)
    assert [ours.read_reply(), ours.read_reply()] == [b":1\r\n", b"+OK\r\n"]


def test_every_router_judges_the_libraries_the_shards_have(server_factory):
    """Router 0 loads a library whose function keeps to its keys; router 1 judges it too
    (it asks the shards for their libraries once the change is done on every shard, ahead
    of its clients' later requests). So with the FCALL's shard stopped, a SET pipelined
    after the FCALL through router 1 for the other shard is not held behind it: another
    client reads it. (Before, only router 0 judged its library: router 1 held the SET.)"""
    srv = server_factory(shards=2, extra_args=("--routers", "2"))
    by_router, spare = _one_per_router(srv.port)
    assert _shard_of(A) != _shard_of(B)
    try:
        assert by_router[0].call("FUNCTION", "LOAD", KEEPING_LIBRARY) == b"$6\r\nscoped\r\n"
        assert by_router[1].pipeline([("GET", A), ("GET", B)]) == [b"$-1\r\n", b"$-1\r\n"]
        _follower_not_held(srv, by_router[1], by_router[0])
    finally:
        for conn in [*by_router.values(), *spare]:
            conn.close()


def test_a_restarted_router_judges_the_libraries_the_shards_have(server_factory):
    """A router killed after its FUNCTION LOAD comes back without its verdicts; it asks
    the shards for their libraries once its links are all up, so its FCALLs of a function
    that keeps to its keys do not hold their client's other requests."""
    srv = server_factory(shards=2, extra_args=("--routers", "2"))
    by_router, spare = _one_per_router(srv.port)
    old = srv.child_pid("router", 0)
    try:
        assert by_router[0].call("FUNCTION", "LOAD", KEEPING_LIBRARY) == b"$6\r\nscoped\r\n"
    finally:
        for conn in [*by_router.values(), *spare]:
            conn.close()
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + WAIT_S
    while srv.child_pid("router", 0) == old:
        assert time.monotonic() < deadline, "router 0 was not started again"
        time.sleep(0.05)
    while True:
        by_router, spare = _one_per_router(srv.port)
        # A pair answered after a pair answered goes out once every link is up: after its FUNCTION LIST.
        answers = [by_router[0].pipeline([("GET", A), ("GET", B)]) for _ in range(2)]
        if answers == [[b"$-1\r\n", b"$-1\r\n"]] * 2:
            break
        for conn in [*by_router.values(), *spare]:
            conn.close()
        assert time.monotonic() < deadline, f"router 0 did not answer after its restart: {answers!r}"
        time.sleep(0.1)
    try:
        _follower_not_held(srv, by_router[0], by_router[1])
    finally:
        for conn in [*by_router.values(), *spare]:
            conn.close()


def test_the_shards_libraries_are_judged_only_when_current_and_alike():
    """judge_shards_libraries: libraries asked for before a FUNCTION change seen since are
    not judged (they may be older than it), nor libraries that differ between shards (a
    change under way), nor more than MAX_JUDGED_LIBRARIES (every FCALL then waits)."""
    from durakv.server.script_scope import MAX_JUDGED_LIBRARIES
    scopes = ScriptScopes()
    keeping, reaching = KEEPING_LIBRARY.encode(), REACHING_LIBRARY.encode()
    fcall = [b"FCALL", b"bump", b"1", b"k"]
    asked = scopes.functions_generation
    scopes.forget_library(None)  # a change seen after asking
    assert not scopes.judge_shards_libraries(asked, [[keeping], [keeping]]) and not scopes.keeps(fcall)
    asked = scopes.functions_generation
    assert not scopes.judge_shards_libraries(asked, [[keeping], [reaching]]) and not scopes.keeps(fcall)
    assert scopes.judge_shards_libraries(asked, [[keeping], [keeping]]) and scopes.keeps(fcall)
    assert scopes.judge_shards_libraries(asked, [[reaching], [reaching]]) and not scopes.keeps(fcall)
    many = [keeping] + [b"#!lua name=l%d\nredis.register_function('f%d', function(k) return 1 end)" % (i, i)
                        for i in range(MAX_JUDGED_LIBRARIES)]
    assert scopes.judge_shards_libraries(asked, [many, many]) and not scopes.keeps(fcall)


def test_a_settled_notice_told_again_is_judged_once_and_the_ids_are_bounded():
    """first_settled: a change's settled notice, told again to whoever did not answer, makes
    a router judge the shards' libraries the first time only; the ids kept are bounded."""
    from durakv.server.script_scope import MAX_SETTLED_SEEN
    scopes = ScriptScopes()
    assert scopes.first_settled(b"change-1") and not scopes.first_settled(b"change-1")
    for i in range(MAX_SETTLED_SEEN):
        assert scopes.first_settled(b"other-%d" % i)
    assert len(scopes.settled) == MAX_SETTLED_SEEN and scopes.first_settled(b"change-1")


def evalsha_then_set_with_a_shard_stopped(ours: RawConn, reader: RawConn, stopped: int, sha: str,
                                          a: str, b: str) -> tuple[list[bytes], bytes]:
    """EVALSHA of A's script and a SET of B pipelined behind it, with a third shard
    stopped (a NOSCRIPT retry's body lookup would wait for it): once B is set, what A
    holds. Returns both replies and that value of A."""
    os.kill(stopped, signal.SIGSTOP)
    try:
        ours.send_raw(encode_command(("EVALSHA", sha, "1", a)) + encode_command(("SET", b, "v")))
        deadline = time.monotonic() + WAIT_S
        while reader.call("GET", b) != b"$1\r\nv\r\n":
            assert time.monotonic() < deadline, "the SET never ran"
            time.sleep(0.005)
        seen = reader.call("GET", a)
    finally:
        os.kill(stopped, signal.SIGCONT)
    return [ours.read_reply(), ours.read_reply()], seen


def test_a_script_a_shard_drops_is_no_longer_taken_for_cached_there(server_factory):
    """SCRIPT LOAD puts a script on every shard; EVALs of other scripts on the shard of A
    push it out of that shard's cache (a bound of 4 here). The shard tells the routers,
    so an EVALSHA of it on A holds the SET of B pipelined after it: with a third shard
    stopped, the EVALSHA's retry (NOSCRIPT, its body asked of every process) waits for the
    mesh's timeout, and a reader never sees B set before A is incremented, as on Redis.
    (Before, the router took it for cached on A's shard and sent the SET at once.) An
    EVALSHA sent before the router heard of the drop runs from the body the shard keeps
    until every router answered (shards/script_evict.py): no retry either way."""
    from durakv.shards.slots import key_slot, slot_owner_table
    owner = slot_owner_table(3)
    keys: dict[int, str] = {}
    for i in range(1000):
        keys.setdefault(owner[key_slot(f"key-{i}".encode())], f"key-{i}")
    a, b, stopped_shard = keys[0], keys[1], 2
    srv = server_factory(shards=3, env={"DURAKV_TEST_MAX_CACHED_SCRIPTS": "4"})
    ours, reader = RawConn(srv.port), RawConn(srv.port)
    stopped = srv.child_pid("shard", stopped_shard)
    try:
        body = "return redis.call('INCR', KEYS[1])"
        sha = ours.value("SCRIPT", "LOAD", body)
        for filler in range(4):
            assert ours.call("EVAL", f"return {filler}", "1", a) == b":%d\r\n" % filler
        assert ours.pipeline([("GET", a), ("GET", b)]) == [b"$-1\r\n", b"$-1\r\n"]
        replies, seen = evalsha_then_set_with_a_shard_stopped(ours, reader, stopped, sha, a, b)
        assert replies == [b":1\r\n", b"+OK\r\n"]
        assert seen == b"$1\r\n1\r\n", "B was set before A's EVALSHA ran"
    finally:
        ours.close()
        reader.close()


def test_a_router_judges_the_libraries_left_after_a_delete_through_it(server_factory):
    """A FUNCTION DELETE of another library through a router forgets every verdict there;
    once every shard has deleted it, the router judges the libraries left, so an FCALL of
    `bump` (kept to its keys) does not hold the SET of another shard's key after it."""
    srv = server_factory(shards=2)
    ours, reader = RawConn(srv.port), RawConn(srv.port)
    other = "#!lua name=other\nredis.register_function('noop', function(keys, args) return 0 end)"
    try:
        assert ours.call("FUNCTION", "LOAD", KEEPING_LIBRARY) == b"$6\r\nscoped\r\n"
        assert ours.call("FUNCTION", "LOAD", other) == b"$5\r\nother\r\n"
        assert ours.call("FUNCTION", "DELETE", "other") == b"+OK\r\n"
        assert ours.pipeline([("GET", A), ("GET", B)]) == [b"$-1\r\n", b"$-1\r\n"]  # after its FUNCTION LIST
        _follower_not_held(srv, ours, reader)
    finally:
        ours.close()
        reader.close()


def test_a_function_loaded_on_a_shard_port_is_judged_by_the_router(server_factory):
    """A FUNCTION LOAD on a shard port runs on its shard, then every other primary
    restores its libraries; its reply waits until they have, and every router was told
    (OP_FUNCTIONS_SETTLED), so an FCALL through the router finds the function on any shard
    and is judged: with the FCALL's shard stopped, a SET pipelined after it for the other
    shard is not held. (Before, the routers asked the shards while they still differed and
    judged nothing: the SET waited for the FCALL.)"""
    srv = server_factory(shards=2)
    node = RawConn(srv.shard_port(1 - _shard_of(A)))
    ours, reader = RawConn(srv.port), RawConn(srv.port)
    try:
        assert node.call("FUNCTION", "LOAD", KEEPING_LIBRARY) == b"$6\r\nscoped\r\n"
        assert ours.pipeline([("GET", A), ("GET", B)]) == [b"$-1\r\n", b"$-1\r\n"]  # after its FUNCTION LIST
        _follower_not_held(srv, ours, reader)
    finally:
        for conn in (node, ours, reader):
            conn.close()


def _held(srv, ours: RawConn, reader: RawConn) -> bool:
    """_follower_not_held as a question: with the shard of A stopped, is the SET of B
    pipelined after FCALL bump through `ours` still unseen by `reader` after a moment?"""
    stopped = srv.child_pid("shard", _shard_of(A))
    os.kill(stopped, signal.SIGSTOP)
    try:
        ours.send_raw(encode_command(("FCALL", "bump", "1", A)) + encode_command(("SET", B, "follower")))
        deadline = time.monotonic() + 0.5
        while reader.call("GET", B) != b"$8\r\nfollower\r\n":
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        else:
            return False
    finally:
        os.kill(stopped, signal.SIGCONT)
        assert ours.read_reply()[:1] == b":" and ours.read_reply() == b"+OK\r\n"
        reader.call("DEL", B)
    return True


def test_a_router_restarted_during_another_routers_change_judges_once_it_is_done(server_factory, tmp_path):
    """Router 1 is killed (kill -9, its supervisor stopped so it stays down) while router 0
    loads a library: the change reaches shard 0 only, held by a test-only hold point, and
    router 0's notices to router 1 fail (its stream to router 1 pauses after a failed
    connect, 2 s here). Router 1 comes back and asks the shards for their libraries: they differ, it
    judges nothing. Once the hold is released the change is done everywhere, and the
    settled notice goes out while router 0's stream to router 1 still pauses: router 0
    tells it again after the pause, so router 1 judges `bump` and a SET of another shard
    pipelined after an FCALL bump through it is no longer held. (Before, it was told once,
    missed it, and held every such SET until the next FUNCTION change.)"""
    hold = tmp_path / "release"
    srv = server_factory(shards=2, extra_args=("--routers", "2"),
                         env={"DURAKV_TEST_FUNCTION_CHANGE_HOLD": str(hold),
                              "DURAKV_TEST_PEER_RETRY_PAUSE_MS": "2000"})
    assert _shard_of(A) != _shard_of(B)
    by_router, spare = _one_per_router(srv.port)
    changer = by_router[0]
    for conn in [by_router[1], *spare]:
        conn.close()
    old = srv.child_pid("router", 1)
    shard0 = RawConn(srv.shard_port(0))
    os.kill(srv.proc.pid, signal.SIGSTOP)
    try:
        os.kill(old, signal.SIGKILL)
        # The first PUBLISH finds router 0's stream to router 1 broken, the second fails to connect:
        # router 0 sends nothing to router 1 for the next 2 s.
        assert [changer.call("PUBLISH", "c", "m") for _ in range(2)] == [b":0\r\n"] * 2
        changer.send_raw(encode_command(("FUNCTION", "LOAD", KEEPING_LIBRARY)))
        deadline = time.monotonic() + WAIT_S
        while b"scoped" not in shard0.call("FUNCTION", "LIST"):  # shard 0 has it; router 1 was not told
            assert time.monotonic() < deadline, "the change did not reach shard 0"
            time.sleep(0.02)
    finally:
        os.kill(srv.proc.pid, signal.SIGCONT)
    while True:  # router 1 again, its links up and its FUNCTION LIST answered (the shards differ)
        by_router, spare = _one_per_router(srv.port)
        answers = [by_router[1].pipeline([("GET", A), ("GET", B)]) for _ in range(2)]
        if srv.child_pid("router", 1) != old and answers == [[b"$-1\r\n", b"$-1\r\n"]] * 2:
            break
        for conn in [*by_router.values(), *spare]:
            conn.close()
        assert time.monotonic() < deadline, f"router 1 did not answer after its restart: {answers!r}"
        time.sleep(0.1)
    ours, reader = by_router[1], by_router[0]
    try:
        hold.touch()
        assert changer.read_reply() == b"$6\r\nscoped\r\n"
        assert _held(srv, ours, reader), "router 1 took the first settled notice: the test missed its case"
        deadline = time.monotonic() + WAIT_S
        while _held(srv, ours, reader):
            assert time.monotonic() < deadline, "router 1 never judged the library: it holds the SET"
    finally:
        for conn in [changer, shard0, *by_router.values(), *spare]:
            conn.close()
