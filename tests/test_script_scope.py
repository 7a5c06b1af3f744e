"""server/script_scope.py: which scripts' text shows they keep to their declared keys
(their followers for other shards need not wait for them, server/script_retry.py)."""

from __future__ import annotations

import pytest

import durakv.shards.commands  # noqa: F401  (registers the commands the verdicts look up)
from durakv.server.script_scope import ScriptScopes, keeps_to_its_keys
from durakv.shards.luaenv import sha1hex

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


def test_evalsha_is_judged_by_a_body_this_router_saw_and_fcall_never():
    scopes = ScriptScopes()
    body = KEEPS[0].encode()
    sha = sha1hex(body)
    assert not scopes.keeps([b"EVALSHA", sha, b"1", b"k", b"v"])  # never seen: may reach
    assert scopes.keeps([b"EVAL", body, b"1", b"k", b"v"])
    assert scopes.keeps([b"evalsha_ro", sha.upper(), b"1", b"k", b"v"])
    assert not scopes.keeps([b"FCALL", b"f", b"1", b"k"])


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
