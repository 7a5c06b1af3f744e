"""Server commands (COMMAND, CONFIG, INFO, DBSIZE, FLUSHALL, TIME, LASTSAVE,
DEBUG, FUNCTION FLUSH) against durakv and a real redis-server 7.0."""

from __future__ import annotations

import time

import pytest

from refserver import Err, Pair, RawConn, decode
from durakv.shards.slots import key_slot

ISSUE_COMMANDS = (
    "get set setnx setex psetex getset getdel getex mget mset msetnx append strlen incr decr incrby "
    "decrby incrbyfloat getrange setrange substr lcs del unlink exists touch type expire pexpire "
    "expireat pexpireat ttl pttl expiretime pexpiretime persist rename renamenx copy keys scan "
    "randomkey object|encoding object|freq object|idletime object|refcount object|help dbsize "
    "flushall flushdb ping echo hello auth select quit reset client|id client|setname client|getname "
    "client|list client|info client|kill client|no-evict client|help command|count command|info "
    "command|docs command|list command|getkeys command|getkeysandflags command|help config|get "
    "config|set config|resetstat config|rewrite config|help info time lastsave debug function|flush "
    "cluster|slots cluster|shards cluster|nodes cluster|info cluster|myid cluster|keyslot "
    "cluster|countkeysinslot cluster|getkeysinslot readonly readwrite asking dump restore"
).split()
# Containers whose subcommand list is a subset of Redis' (Redis has more).
PARTIAL_CONTAINERS = {"client", "config", "cluster", "function", "command", "memory"}


def run_same(pair, script: list[tuple]) -> list:
    return [pair.same(*cmd) for cmd in script]


@pytest.mark.parametrize("name", ISSUE_COMMANDS)
def test_command_info_matches_redis(pair, name):
    """Arity, flags, key positions, ACL categories, tips and key specs."""
    pair.same("COMMAND", "INFO", name)


def test_command_info_of_containers(pair):
    for name in sorted(PARTIAL_CONTAINERS - {"memory"} | {"object"}):
        ours, theirs = (decode(c.call("COMMAND", "INFO", name))[0][0] for c in (pair.ours, pair.theirs))
        assert ours[:9] == theirs[:9], name
        our_subs = {sub[0]: sub for sub in ours[9]}
        their_subs = {sub[0]: sub for sub in theirs[9]}
        shared = set(our_subs) & set(their_subs)
        assert shared and all(our_subs[s] == their_subs[s] for s in shared), name


def test_command_info_unknown_names(pair):
    run_same(pair, [
        ("COMMAND", "INFO", "nosuch"), ("COMMAND", "INFO", "get|key"), ("COMMAND", "INFO", "config|get|key"),
        ("COMMAND", "INFO", "get", "nosuch", "GET"), ("COMMAND", "INFO", "CONFIG|GET"),
    ])


def test_command_count_and_list_agree(server):
    conn = RawConn(server.port)
    names = conn.value("COMMAND", "LIST")
    top_level = [n for n in names if b"|" not in n]
    assert conn.value("COMMAND", "COUNT") == len(top_level)
    assert len(names) == len(set(names))
    assert {b"get", b"config|get", b"client|kill", b"object|encoding"} <= set(names)


def test_bare_command_lists_every_command(server):
    conn = RawConn(server.port)
    infos = conn.value("COMMAND")
    assert len(infos) == conn.value("COMMAND", "COUNT")


def test_command_list_filters(pair):
    for args in (("FILTERBY", "PATTERN", "get*"), ("FILTERBY", "PATTERN", "CONFIG*"),
                 ("FILTERBY", "PATTERN", "*|getname"), ("FILTERBY", "ACLCAT", "string"),
                 ("FILTERBY", "ACLCAT", "dangerous"), ("FILTERBY", "ACLCAT", "connection")):
        ours = set(decode(pair.ours.call("COMMAND", "LIST", *args))[0])
        theirs = set(decode(pair.theirs.call("COMMAND", "LIST", *args))[0])
        issue = {n.encode() for n in ISSUE_COMMANDS}
        assert ours & issue == theirs & issue, args
    run_same(pair, [
        ("COMMAND", "LIST", "FILTERBY", "ACLCAT", "nosuchcat"),
        ("COMMAND", "LIST", "FILTERBY", "ACLCAT", "@read"),
        ("COMMAND", "LIST", "FILTERBY", "MODULE", "nosuchmodule"),
        ("COMMAND", "LIST", "FILTERBY", "PATTERN", "nosuch*"),
        ("COMMAND", "LIST", "FILTERBY"), ("COMMAND", "LIST", "FILTERBY", "PATTERN"),
        ("COMMAND", "LIST", "FILTERBY", "FOO", "x"), ("COMMAND", "LIST", "x"),
        ("COMMAND", "LIST", "FILTERBY", "PATTERN", "get", "x"),
        ("COMMAND", "COUNT", "x"), ("COMMAND", "FOO"), ("COMMAND", "HELP"), ("COMMAND", "HELP", "x"),
    ])


GETKEYS = [
    ("get", "k"), ("set", "k", "v"), ("set", "k", "v", "GET"), ("mset", "a", "1", "b", "2"),
    ("mget", "a", "b", "c"), ("del", "a", "b"), ("rename", "a", "b"), ("renamenx", "a", "b"),
    ("copy", "a", "b", "REPLACE"), ("lcs", "a", "b", "LEN"), ("object", "encoding", "k"),
    ("expire", "k", "10"), ("getex", "k", "PERSIST"), ("touch", "a"), ("setrange", "k", "0", "x"),
    ("echo", "x"), ("ping",), ("get",), ("get", "a", "b"), ("mset", "a"), ("object", "foo", "k"),
    ("object", "encoding"), ("nosuch", "k"), ("config", "get", "x"), ("keys", "*"), ("scan", "0"),
]


@pytest.mark.parametrize("target", GETKEYS, ids=[" ".join(t) for t in GETKEYS])
def test_command_getkeys_and_flags(pair, target):
    pair.same("COMMAND", "GETKEYS", *target)
    pair.same("COMMAND", "GETKEYSANDFLAGS", *target)


def test_command_getkeys_arity(pair):
    run_same(pair, [("COMMAND", "GETKEYS"), ("COMMAND", "GETKEYS", "get"), ("COMMAND", "GETKEYSANDFLAGS")])


def test_command_docs_shape(pair):
    run_same(pair, [("COMMAND", "DOCS", "nosuch"), ("COMMAND", "DOCS", "get|key")])
    for name in ("get", "del", "config", "client", "cluster"):
        reply = decode(pair.ours.call("COMMAND", "DOCS", name))[0]
        theirs = decode(pair.theirs.call("COMMAND", "DOCS", name))[0]
        assert reply[0] == theirs[0] == name.encode()
        ours = dict(zip(reply[1][::2], reply[1][1::2]))
        theirs_doc = dict(zip(theirs[1][::2], theirs[1][1::2]))
        assert ours[b"group"] == theirs_doc[b"group"], name
        if b"subcommands" in ours:
            our_subs = set(ours[b"subcommands"][::2]) - {b"client|setinfo", b"client|no-touch"}
            assert our_subs <= set(theirs_doc[b"subcommands"][::2])


# --- CONFIG -----------------------------------------------------------------------

CONFIG_VALUES = [
    "abc", "-1", "0", "1", "yes", "no", "YES", "1mb", "1gb", "", "99999999999999999999", "2147483648",
    "4294967296", "-9223372036854775808", "100000", "1.5", "1k", "1KB", "1b", " 1", "01", "+1", "1 2",
    "100  1", "normal 1 2 3", "replica 1mb 2 1", "master 1 2 3", "normal 1 2 -1", "KEA", "xyz", "Ex",
    "noeviction", "allkeys-LRU", "debug", "everysec", "99999999999gb", "1" * 130,
]
# Parameters durakv cannot change at run time, or whose value reflects durakv itself.
CONFIG_SKIP = {"port", "tls-port", "bind", "dir", "requirepass", "maxclients", "daemonize", "appendonly", "appendfsync",
               "cluster-enabled", "databases", "enable-debug-command", "activedefrag", "io-threads",
               "maxmemory-clients"}  # durakv refuses a client memory limit it would not enforce


def test_config_set_and_get_every_parameter_like_redis(pair):
    names = [n.decode() for n in decode(pair.ours.call("CONFIG", "GET", "*"))[0][::2]]
    checked = 0
    for name in sorted(set(names) - CONFIG_SKIP):
        original = decode(pair.theirs.call("CONFIG", "GET", name))[0]
        assert original, f"redis has no parameter {name}"
        pair.same("CONFIG", "GET", name)
        for value in CONFIG_VALUES:
            refused = isinstance(pair.same("CONFIG", "SET", name, value), Err)
            pair.same("CONFIG", "GET", name)  # a refused value left the parameter as it was
            if not refused:  # each accepted CONFIG SET is stored durably (fsync): only those are undone
                pair.same("CONFIG", "SET", name, original[1])
        checked += 1
    assert checked >= 40


def test_config_set_errors_and_multiple_parameters(pair):
    try:
        run_same(pair, [
            ("CONFIG", "SET", "maxmemory"),
            ("CONFIG", "SET", "maxmemory", "1", "hz"),
            ("CONFIG", "SET", "nosuch", "1"),
            ("CONFIG", "SET", "nosuch", "1", "daemonize", "yes"),
            ("CONFIG", "SET", "daemonize", "yes", "nosuch", "1"),
            ("CONFIG", "SET", "hz", "5", "HZ", "6"),
            ("CONFIG", "SET", "hash-max-ziplist-entries", "1", "hash-max-listpack-entries", "2"),
            ("CONFIG", "GET", "hash-max-ziplist-entries"),
            ("CONFIG", "SET", "hash-max-ziplist-entries", "abc"),
            ("CONFIG", "SET", "maxmemory", "10mb", "hz", "abc"),
            ("CONFIG", "GET", "maxmemory"),
            ("CONFIG", "SET", "maxmemory", "10mb", "hz", "20"),
            ("CONFIG", "GET", "maxmemory"),
            ("CONFIG", "GET", "hz"),
            ("CONFIG", "SET", "HZ", "1000"),
            ("CONFIG", "GET", "HZ"),
            ("CONFIG", "GET", "hz", "HZ", "Hz"),
            ("CONFIG", "GET", "maxmemory", "maxmemory"),
            ("CONFIG", "GET", "nosuch"),
            ("CONFIG", "GET", "lua-time-limit"),
            ("CONFIG", "GET", "slave-read-only"),
            ("CONFIG", "SET", "lua-time-limit", "100"),
            ("CONFIG", "GET", "busy-reply-threshold"),
            ("CONFIG", "GET",),
            ("CONFIG",),
            ("CONFIG", "FOO"),
            ("CONFIG", "HELP"),
            ("CONFIG", "RESETSTAT", "x"),
            ("CONFIG", "REWRITE", "x"),
        ])
    finally:
        for conn in (pair.ours, pair.theirs):
            conn.call("CONFIG", "SET", "maxmemory", "0", "hz", "10", "busy-reply-threshold", "5000",
                      "hash-max-listpack-entries", "512")


def test_config_get_patterns_match_redis(pair):
    ours_names = {n for n in decode(pair.ours.call("CONFIG", "GET", "*"))[0][::2]}
    for pattern in ("*ziplist*", "*listpack*", "max*", "Hz*", "[hz]*", "*-expire*", "lua-*", "slave*"):
        ours = dict(zip(*[iter(decode(pair.ours.call("CONFIG", "GET", pattern))[0])] * 2))
        theirs = dict(zip(*[iter(decode(pair.theirs.call("CONFIG", "GET", pattern))[0])] * 2))
        for name in ours_names - {n.encode() for n in CONFIG_SKIP}:
            assert ours.get(name) == theirs.get(name), (pattern, name)
    pair.same("CONFIG", "GET", "nosuch*")


def test_config_set_reaches_the_shards(r):
    """Encoding thresholds are forwarded: both shards convert at the new size."""
    low = next(f"h{i}" for i in range(100) if key_slot(f"h{i}".encode()) < 8192)
    high = next(f"h{i}" for i in range(100) if key_slot(f"h{i}".encode()) >= 8192)
    try:
        assert r.config_set("hash-max-listpack-entries", 2)
        for key in (low, high):
            r.hset(key, mapping={"a": 1, "b": 2})
            assert r.object("encoding", key) == b"listpack"
            r.hset(key, "c", 3)
            assert r.object("encoding", key) == b"hashtable"
    finally:
        r.config_set("hash-max-listpack-entries", 512)


# --- INFO, DBSIZE, FLUSHALL ----------------------------------------------------------


def info_sections(text: bytes) -> list[str]:
    return [line[2:] for line in text.decode().split("\r\n") if line.startswith("# ")]


def test_info_sections(server, r):
    raw = RawConn(server.port)
    default = raw.value("INFO")
    assert info_sections(default) == ["Server", "Clients", "Memory", "Persistence", "Stats", "Replication",
                                      "CPU", "Modules", "Errorstats", "Cluster", "Keyspace"]
    everything = raw.value("INFO", "everything")
    assert "Commandstats" in info_sections(everything) and "Keyspace" in info_sections(everything)
    assert info_sections(raw.value("INFO", "server", "CLIENTS")) == ["Server", "Clients"]
    assert raw.value("INFO", "nosuchsection") == b""
    fields = r.info("server")
    assert fields["redis_version"] == "7.0.15" and fields["redis_mode"] == "cluster"
    assert len(str(fields["run_id"])) == 40 and fields["configured_hz"] == fields["hz"] == 10
    assert fields["tcp_port"] == r.connection_pool.connection_kwargs["port"]
    assert r.info("cluster")["cluster_enabled"] == 1
    assert r.info("memory")["mem_allocator"] == "libc"  # Redis' test suite reads it


def test_info_keyspace_and_stats_aggregate_both_shards(r):
    keys = [f"info:{i}" for i in range(40)]
    assert {key_slot(k.encode()) < 8192 for k in keys} == {True, False}
    for i, key in enumerate(keys):
        r.set(key, "v", ex=1000 if i % 2 else None)
    assert r.info("keyspace")["db0"] == {"keys": 40, "expires": 20, "avg_ttl": 0}
    r.config_resetstat()
    r.get(keys[0])
    r.get("info:missing")
    commandstats = r.info("commandstats")
    assert commandstats["cmdstat_get"]["calls"] == 2


def test_info_keyspace_hits_and_misses(r):
    r.set("hit", "v")
    r.config_resetstat()
    r.get("hit")
    r.get("miss")
    stats = r.info("stats")
    assert (stats["keyspace_hits"], stats["keyspace_misses"]) == (1, 1)


def test_dbsize_and_flush_across_shards(pair):
    keys = [f"db:{i}" for i in range(50)]
    for conn in (pair.ours, pair.theirs):
        conn.pipeline([("SET", key, "v") for key in keys])
    pair.same("DBSIZE")
    run_same(pair, [
        ("FLUSHDB", "FOO"), ("FLUSHALL", "SYNC", "ASYNC"), ("FLUSHALL", "x", "y"), ("DBSIZE", "x"),
        ("FLUSHALL", "ASYNC"), ("DBSIZE",), ("SET", "a", "1"), ("FLUSHDB", "sync"), ("DBSIZE",),
        ("SET", "a", "1"), ("FLUSHALL",), ("DBSIZE",), ("SET", "a", "1"), ("FLUSHDB",), ("KEYS", "*"),
    ])


def test_dbsize_counts_keys_on_both_shards(r):
    keys = [f"size:{i}" for i in range(30)]
    assert {key_slot(k.encode()) < 8192 for k in keys} == {True, False}
    for key in keys:
        r.set(key, "v")
    assert r.dbsize() == 30


# --- TIME, LASTSAVE, DEBUG, FUNCTION --------------------------------------------------


def test_time_and_lastsave(pair, r):
    seconds, micros = r.execute_command("TIME")
    assert abs(int(seconds) - time.time()) < 3600 and 0 <= int(micros) < 1_000_000
    assert int(r.lastsave().timestamp()) <= time.time()
    run_same(pair, [("TIME", "x"), ("LASTSAVE", "x")])
    for conn in (pair.ours, pair.theirs):
        reply = decode(conn.call("TIME"))[0]
        assert len(reply) == 2 and all(part.isdigit() for part in reply)


def test_debug_and_function_flush(pair):
    run_same(pair, [
        ("DEBUG", "SLEEP", "0"), ("DEBUG", "SLEEP", "abc"), ("DEBUG", "SLEEP", "-1"), ("DEBUG", "sleep", "0.01"),
        ("DEBUG", "FOO"), ("debug", "foo", "bar"), ("DEBUG",), ("DEBUG", "SLEEP"),
        ("DEBUG", "OBJECT", "nope"),
        ("FUNCTION", "FLUSH"), ("FUNCTION", "FLUSH", "SYNC"), ("FUNCTION", "FLUSH", "async"),
        ("FUNCTION", "FLUSH", "FOO"), ("FUNCTION", "FLUSH", "SYNC", "ASYNC"), ("function", "flush", "a", "b"),
        ("FUNCTION", "NOSUCH"), ("FUNCTION",),
    ])


def test_debug_object_reports_the_encoding(r):
    r.set("n", "123")
    r.set("s", "x" * 50)
    assert b"encoding:int" in r.execute_command("DEBUG", "OBJECT", "n")
    assert b"encoding:raw" in r.execute_command("DEBUG", "OBJECT", "s")


def test_debug_sleep_delays_only_its_reply(server):
    sleeper = RawConn(server.port)
    other = RawConn(server.port)
    sleeper.send_raw(b"DEBUG SLEEP 0.3\r\nPING\r\n")
    assert other.call("PING") == b"+PONG\r\n"
    assert sleeper.read_reply() == b"+OK\r\n"
    assert sleeper.read_reply() == b"+PONG\r\n"
    sleeper.close()
    other.close()


def test_server_replies_in_resp3(pair3):
    run_same(pair3, [("CONFIG", "GET", "maxmemory"), ("COMMAND", "INFO", "get"), ("COMMAND", "DOCS", "nosuch"),
                     ("FUNCTION", "FLUSH"), ("DBSIZE",)])



GETKEYS_SAMPLES = [
    "get k", "set k v", "set k v GET", "set k v EX 10 GET", "mset a 1 b 2", "mget a b c", "del a b", "rename a b",
    "lmpop 2 a b LEFT", "blmpop 0 2 a b LEFT", "zunionstore d 2 a b", "sintercard 2 a b", "sort k",
    "sort k STORE dst", "object encoding k", "memory usage k", "bitop and d a b", "lcs a b", "blpop a b 0",
    "zdiffstore d 1 a", "copy a b", "getex k", "setnx k v", "pfcount a b", "touch a", "exists a b", "ping",
    "get", "nosuch a", "lmpop x a b LEFT", "zinterstore d 0",
]
# Commands that declare Redis' key specs in the table (key_specs=): their
# GETKEYSANDFLAGS flags match too. (The others get one range spec RW update /
# RO access from their key positions, which is not always Redis' flags.)
KEYSPEC_SAMPLES = [
    "get k", "set k v", "set k v GET", "set k v EX 10 GET", "mset a 1 b 2", "mget a b c", "del a b", "rename a b",
    "object encoding k", "lcs a b", "copy a b", "getex k", "setnx k v", "touch a", "exists a b",
]


@pytest.mark.parametrize("sample", GETKEYS_SAMPLES)
def test_command_getkeys_matches_redis(pair, sample):
    """Key positions (and the errors), from each command's declaration."""
    pair.same("COMMAND", "GETKEYS", *sample.split())


@pytest.mark.parametrize("sample", KEYSPEC_SAMPLES)
def test_command_getkeysandflags_matches_redis(pair, sample):
    """Key-spec flags, SET's variable flags resolved by its declared key_flags_fn."""
    pair.same("COMMAND", "GETKEYSANDFLAGS", *sample.split())


@pytest.mark.parametrize("proto", [2, 3])
def test_lolwut_and_role_match_redis(server, redis_ref, proto):
    """LOLWUT's version line (a verbatim string in RESP3) and ROLE's master with no replicas."""
    p = Pair(server.port, redis_ref.port, proto)
    try:
        run_same(p, [("LOLWUT",), ("lolwut", "VERSION", "7"), ("LOLWUT", "VERSION", "x"), ("LOLWUT", "VERSION"),
                     ("ROLE",), ("ROLE", "x")])
    finally:
        p.close()
