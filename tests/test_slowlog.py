"""SLOWLOG (issue 13): entries where commands execute (shards for the commands they
run, the router for those it answers), merged newest first by the router, with
redis-server 7.0's entry shape, argv truncation and redaction, errors and help."""

from __future__ import annotations

import threading
import time

from refserver import Pair, decode, pair, redis_ref  # noqa: F401  (fixtures)

from durakv.shards.slots import key_slot, slot_owner_table

BLOCK_WAIT_S = 10


def both(pair: Pair, *args) -> None:
    """A command whose reply may differ (durakv's own checks happen elsewhere)."""
    pair.both(*args)


def entries(conn, *count) -> list:
    return decode(conn.call("SLOWLOG", "GET", *count))[0]


def start_logging_everything(pair: Pair) -> None:
    for conn in (pair.ours, pair.theirs):
        conn.call("CONFIG", "SET", "slowlog-max-len", "128")
        conn.call("CONFIG", "SET", "slowlog-log-slower-than", "0")
        conn.call("SLOWLOG", "RESET")


def put_back_defaults(client) -> None:
    """The module's server is shared: a test's slowlog settings must not reach the next test."""
    client.config_set("slowlog-max-len", 128)
    client.config_set("slowlog-log-slower-than", 10000)


def argvs(conn, *count) -> list:
    return [entry[3] for entry in entries(conn, *count)]


def test_help_errors_and_command_info_match_redis(pair):
    pair.same("SLOWLOG", "HELP")
    for count in ("-2", "-222", "x", "1.5"):
        pair.same("SLOWLOG", "GET", count)
    pair.same("SLOWLOG", "GET", "1", "2")
    pair.same("SLOWLOG", "LEN", "x")
    pair.same("SLOWLOG", "RESET", "x")
    pair.same("SLOWLOG", "NOPE")
    pair.same("SLOWLOG")
    ours, theirs = (decode(c.call("COMMAND", "INFO", "slowlog"))[0][0] for c in (pair.ours, pair.theirs))
    assert ours[:9] == theirs[:9]
    assert sorted(ours[9]) == sorted(theirs[9])  # subcommands: Redis lists them in dict order


def test_entries_match_redis_argv_truncation_and_redaction(pair):
    start_logging_everything(pair)
    script = [
        ("CLIENT", "SETNAME", "slowpoke"),
        ("SADD", "set", *[str(i) for i in range(3, 34)]),  # 33 arguments: trimmed to 32
        ("SADD", "set", *[str(i) for i in range(100, 131)]),  # exactly 32: kept
        ("SADD", "set", "foo", "A" * 129),
        ("SET", "k", "B" * 128),
        ("AUTH", "secret"),
        ("AUTH", "user", "secret"),
        ("HELLO", "2", "AUTH", "user", "secret", "SETNAME", "slowpoke"),
        ("CONFIG", "SET", "masterauth", "hidden", "slowlog-max-len", "128"),
        ("MULTI",),
        ("INCR", "counter"),
        ("SET", "k", "v"),
        ("EXEC",),  # skip_slowlog: only the commands it ran are logged
    ]
    for command in script:
        both(pair, *command)
    ours, theirs = entries(pair.ours, "-1"), entries(pair.theirs, "-1")
    assert [e[3] for e in ours] == [e[3] for e in theirs]
    assert [e[5] for e in ours] == [b"slowpoke"] * (len(ours) - 1) + [b""]  # the first is SLOWLOG RESET
    host, port = pair.ours.sock.getsockname()
    assert {e[4] for e in ours} == {f"{host}:{port}".encode()}
    assert all(len(e) == 6 and isinstance(e[0], int) and isinstance(e[2], int) for e in ours)
    assert len({e[0] for e in ours}) == len(ours), "ids are unique across the router and the shards"
    assert sorted((e[1] for e in ours), reverse=True) == [e[1] for e in ours]
    pair.same("SLOWLOG", "GET", "0")


def test_threshold_max_len_and_reset_across_shards(server):
    client = server.client()
    client.config_set("slowlog-max-len", 3)
    client.config_set("slowlog-log-slower-than", 0)
    try:
        client.slowlog_reset()
        owners = slot_owner_table(2)
        keys = [k for k in (f"key{i}" for i in range(100)) if owners[key_slot(k.encode())] == 0][:2]
        keys += [k for k in (f"key{i}" for i in range(100)) if owners[key_slot(k.encode())] == 1][:2]
        for key in keys:  # two on each shard
            client.set(key, "v")
        assert client.slowlog_len() == 3
        newest = client.execute_command("SLOWLOG", "GET", "-1")
        assert [e[3] for e in newest] == [[b"SLOWLOG", b"LEN"], [b"SET", keys[3].encode(), b"v"],
                                          [b"SET", keys[2].encode(), b"v"]]
        assert len(client.execute_command("SLOWLOG", "GET", "0")) == 0
        assert len(client.execute_command("SLOWLOG", "GET", "1")) == 1
        client.config_set("slowlog-max-len", 128)
        client.config_set("slowlog-log-slower-than", -1)
        client.slowlog_reset()
        for key in keys:
            client.get(key)
        assert client.slowlog_len() == 0
        client.config_set("slowlog-log-slower-than", 0)
        client.get(keys[0])
        client.slowlog_reset()
        assert client.slowlog_len() == 1  # SLOWLOG RESET itself, logged after it ran
    finally:
        put_back_defaults(client)


def test_config_set_reaches_the_shards(server):
    """A router's CONFIG SET changes what each shard logs: the shard's own port answers
    from its shard's log, without the router."""
    router = server.client()
    owners = slot_owner_table(2)
    key = next(k for k in (f"cfg{i}" for i in range(100)) if owners[key_slot(k.encode())] == 1)
    node = server.shard_client(1)
    try:
        router.config_set("slowlog-log-slower-than", 0)
        node.slowlog_reset()
        router.set(key, "v")  # through the router: executed and logged on shard 1
        logged = [e[3] for e in node.execute_command("SLOWLOG", "GET", "-1")]
        assert [b"SET", key.encode(), b"v"] in logged
        router.config_set("slowlog-log-slower-than", -1)
        node.slowlog_reset()
        router.set(key, "w")
        assert node.slowlog_len() == 0
        router.config_set("slowlog-max-len", 1)
        router.config_set("slowlog-log-slower-than", 0)
        for _ in range(3):
            router.get(key)
        assert node.slowlog_len() == 1
        router.config_set("slowlog-max-len", 128)
    finally:
        put_back_defaults(router)


def test_served_blocked_command_is_logged_as_itself(server):
    client = server.client()
    client.config_set("slowlog-log-slower-than", 0)
    try:
        client.delete("blocked-list")
        waiter = server.client()
        result: list = []
        thread = threading.Thread(target=lambda: result.append(waiter.blpop(["blocked-list"], 0)))
        thread.start()
        deadline = time.monotonic() + BLOCK_WAIT_S
        while client.info("clients")["blocked_clients"] < 1:
            assert time.monotonic() < deadline, "BLPOP never blocked"
            time.sleep(0.01)
        client.slowlog_reset()
        client.lpush("blocked-list", "foo")
        thread.join(10)
        assert result == [(b"blocked-list", b"foo")]
        logged = [e[3] for e in client.execute_command("SLOWLOG", "GET")]
        assert logged[0] == [b"BLPOP", b"blocked-list", b"0"]
        assert [b"LPUSH", b"blocked-list", b"foo"] in logged
    finally:
        put_back_defaults(client)
