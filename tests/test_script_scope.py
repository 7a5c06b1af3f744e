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
]
REACHES = [
    "return redis.call('GET', ARGV[1])",  # a key from ARGV
    "return redis.call('GET', KEYS[1] .. ':x')",  # a computed key
    "return redis.call('GET', 'literal')",
    "return redis.call('MSET', KEYS[1], 'v', ARGV[1], 'w')",  # keys past the first argument
    "return redis.call('RENAME', KEYS[1], KEYS[2])",
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
