"""Redis 7.0's small rest (issue 12): INFO errorstats and commandstats' rejected and
failed calls, CLIENT REPLY, CLIENT PAUSE, SHUTDOWN and SAVE; compared with a real
redis-server 7.0 where the reply is deterministic."""

from __future__ import annotations

import re
import time

import pytest
from refserver import Pair, RawConn, encode_command, same_all

from durakv.shards.slots import key_slot, slot_owner_table
from durakv.snapshotter.runner import read_status

PAUSE_WAIT_S = 10
PAUSE_ALL_MS = 300
STOP_WAIT_S = 30
NO_WRITES_LIBRARY = ("#!lua name=pauselib\nredis.register_function{function_name='ro9', "
                     "callback=function() return 9 end, flags={'no-writes'}}")


@pytest.fixture(params=["pair", "pair3"])
def anyproto(request) -> Pair:
    """The same test in RESP2 and in RESP3."""
    return request.getfixturevalue(request.param)


def _info(conn: RawConn, section: str) -> dict[str, str]:
    text = conn.value("INFO", section)
    assert isinstance(text, bytes)
    return dict(line.split(":", 1) for line in text.decode().split("\r\n") if ":" in line)


def _counts(stats: dict[str, str], name: str) -> str:
    """A cmdstat line without its timings (calls, rejected_calls, failed_calls)."""
    line = stats.get(f"cmdstat_{name}", "")
    return re.sub(r"usec=\d+,usec_per_call=[\d.]+,", "", line)


def test_errorstats_and_rejected_failed_calls_as_redis(pair: Pair):
    same_all(pair, [("CONFIG", "RESETSTAT"), ("SCRIPT", "FLUSH")])
    for conn in (pair.ours, pair.theirs):
        conn.call("SET", "k")  # wrong arity: rejected
        conn.call("ASDF")  # unknown: an error, no command stats
        conn.call("SET", "a", "b")
        conn.call("LPUSH", "a", "x")  # WRONGTYPE: failed
        conn.call("EVALSHA", "0" * 40, "0")  # NOSCRIPT: failed
        conn.call("CONFIG", "GET")  # arity of a subcommand: rejected
        conn.call("CONFIG", "NOSUCH")  # unknown subcommand: no command stats
        conn.call("SCRIPT", "LOAD", "return 1")
        conn.call("SCRIPT", "LOAD", "return 2")
    ours, theirs = pair.both("INFO", "errorstats")
    assert ours == theirs
    assert b"errorstat_ERR:count=4" in ours and b"errorstat_WRONGTYPE:count=1" in ours
    for section, fields in (("stats", ["total_error_replies"]), ("memory", ["number_of_cached_scripts"])):
        a, b = _info(pair.ours, section), _info(pair.theirs, section)
        assert [a[f] for f in fields] == [b[f] for f in fields], section
    a, b = _info(pair.ours, "commandstats"), _info(pair.theirs, "commandstats")
    for name in ("set", "lpush", "evalsha", "config|get"):
        assert _counts(a, name) == _counts(b, name), name
    assert _counts(a, "set") == "calls=1,rejected_calls=1,failed_calls=0"
    same_all(pair, [("CONFIG", "RESETSTAT"), ("INFO", "errorstats")])
    assert _info(pair.ours, "stats")["total_error_replies"] == "0"
    same_all(pair, [("SCRIPT", "FLUSH")])


def _replies_until(conn: RawConn, commands: list[tuple], marker: bytes) -> list[bytes]:
    """Send commands in one write, then ECHO marker; every reply before the marker's."""
    conn.send_raw(b"".join(encode_command(c) for c in [*commands, ("ECHO", marker)]))
    out = []
    while (reply := conn.read_reply()) != b"$%d\r\n%s\r\n" % (len(marker), marker):
        out.append(reply)
    return out


REPLY_MODES = [
    ("SET", "a", "1"),
    ("CLIENT", "REPLY", "OFF"),
    ("SET", "a", "2"), ("GET", "a"), ("NOSUCH",), ("SET", "k"), ("CLIENT", "REPLY", "SKIP"),
    ("CLIENT", "REPLY", "ON"),
    ("GET", "a"),
    ("CLIENT", "REPLY", "SKIP"), ("GET", "a"), ("LPUSH", "a", "x"), ("CLIENT", "REPLY", "BAD"),
    ("CLIENT", "REPLY", "SKIP"), ("CLIENT", "REPLY", "SKIP"), ("GET", "a"), ("INCR", "n"),
    ("CLIENT", "REPLY", "SKIP"), ("CLIENT", "REPLY", "ON"), ("INCR", "n"),
    ("CLIENT", "REPLY", "OFF"), ("BLPOP", "nolist", "0.01"), ("RESET",), ("GET", "a"),
]


def test_client_reply_on_off_skip_as_redis(pair: Pair):
    for proto in (2, 3):
        conns = (RawConn(pair.ours.sock.getpeername()[1], proto), RawConn(pair.theirs.sock.getpeername()[1], proto))
        try:
            ours, theirs = (_replies_until(c, REPLY_MODES, b"END") for c in conns)
            assert ours == theirs
            assert ours  # some replies did come back
        finally:
            for c in conns:
                c.close()
    # errors whose replies were dropped still count in errorstats, as in Redis
    same_all(pair, [("CONFIG", "RESETSTAT")])
    for conn in (pair.ours, pair.theirs):
        _replies_until(conn, [("CLIENT", "REPLY", "OFF"), ("NOSUCH",), ("CLIENT", "REPLY", "ON")], b"END")
    pair.same("INFO", "errorstats")


def _blocked_clients(conn: RawConn) -> int:
    return int(_info(conn, "clients")["blocked_clients"])


def _wait_blocked(conn: RawConn, count: int) -> None:
    deadline = time.monotonic() + PAUSE_WAIT_S
    while _blocked_clients(conn) != count:
        assert time.monotonic() < deadline, f"blocked_clients never reached {count}"
        time.sleep(0.01)


@pytest.mark.parametrize("port_kind", ["router", "shard_port"])
def test_client_pause_write_holds_writes_until_unpause(server, port_kind):
    port = server.port if port_kind == "router" else server.shard_port(0)
    key = next(f"k{i}" for i in range(1000) if slot_owner_table(2)[key_slot(f"k{i}".encode())] == 0)
    admin, writer, reader = RawConn(port), RawConn(port), RawConn(port)
    try:
        admin.call("DEL", key + "n")
        assert admin.call("SET", key, "old") == b"+OK\r\n"
        assert writer.call("MULTI") == b"+OK\r\n"
        assert writer.call("INCR", key + "n") == b"+QUEUED\r\n"
        sha = admin.value("SCRIPT", "LOAD", "#!lua flags=no-writes\nreturn 8")
        assert admin.call("FUNCTION", "LOAD", "REPLACE", NO_WRITES_LIBRARY).startswith(b"$")
        assert admin.call("CLIENT", "PAUSE", "60000", "WRITE") == b"+OK\r\n"
        writer.send_raw(encode_command(("EXEC",)) + encode_command(("SET", key, "new")))
        _wait_blocked(admin, 1)
        # reads, read-only transactions and refused commands are answered during the pause
        assert reader.pipeline([("GET", key), ("PING",), ("SET", key), ("MULTI",), ("GET", key), ("EXEC",),
                                ("EVAL", "#!lua flags=no-writes\nreturn 7", "0"), ("EVALSHA", sha, "0"),
                                ("FCALL", "ro9", "0")]) == [
            b"$3\r\nold\r\n", b"+PONG\r\n", b"-ERR wrong number of arguments for 'set' command\r\n",
            b"+OK\r\n", b"+QUEUED\r\n", b"*1\r\n$3\r\nold\r\n", b":7\r\n", b":8\r\n", b":9\r\n"]
        assert _blocked_clients(admin) == 1
        assert admin.call("CLIENT", "UNPAUSE") == b"+OK\r\n"
        assert writer.read_reply() == b"*1\r\n:1\r\n"
        assert writer.read_reply() == b"+OK\r\n"
        assert reader.call("GET", key) == b"$3\r\nnew\r\n"
        assert _blocked_clients(admin) == 0
    finally:
        admin.call("CLIENT", "UNPAUSE")  # a failure above must not leave the module's server paused
        for conn in (admin, writer, reader):
            conn.close()


def test_client_pause_all_ends_at_its_timeout(server):
    admin, other = RawConn(server.port), RawConn(server.port)
    try:
        started = time.monotonic()
        assert admin.call("CLIENT", "PAUSE", str(PAUSE_ALL_MS), "ALL") == b"+OK\r\n"
        assert other.call("PING") == b"+PONG\r\n"
        held_s = time.monotonic() - started
        print(f"PING held {held_s * 1000:.0f} ms by CLIENT PAUSE {PAUSE_ALL_MS} ALL")
        assert held_s >= PAUSE_ALL_MS / 1000  # it cannot be answered before the pause ends
        assert other.call("NOSUCH").startswith(b"-ERR unknown command")
    finally:
        admin.close()
        other.close()


def test_client_pause_errors_as_redis(pair: Pair):
    same_all(pair, [
        ("CLIENT", "PAUSE", "abc"), ("CLIENT", "PAUSE", "-1"), ("CLIENT", "PAUSE", "10", "READ"),
        ("CLIENT", "PAUSE", "10", "WRITE", "x"), ("CLIENT", "PAUSE"), ("CLIENT", "UNPAUSE", "x"),
        ("CLIENT", "PAUSE", "1", "write"), ("CLIENT", "UNPAUSE"),
        ("CLIENT", "NO-EVICT", "on"), ("CLIENT", "NO-EVICT", "maybe"), ("CLIENT", "REPLY"),
    ])


def test_shutdown_and_save_errors_as_redis(pair: Pair):
    same_all(pair, [
        ("SHUTDOWN", "ABORT"), ("SHUTDOWN", "BAD"), ("SHUTDOWN", "SAVE", "NOSAVE"), ("SHUTDOWN", "ABORT", "NOW"),
        ("SHUTDOWN", "NOW", "FORCE", "X"), ("SAVE", "x"),
        ("MULTI",), ("SHUTDOWN",), ("SAVE",), ("EXEC",),
    ])


def _wait_exit(srv) -> int:
    code = srv.proc.wait(STOP_WAIT_S)
    assert srv.pids() == [], "processes left after SHUTDOWN"
    return code


def test_shutdown_stops_the_tree_and_keeps_the_data(server_factory):
    srv = server_factory(shards=2)
    r = srv.client()
    for i in range(50):
        r.set(f"key{i}", i)
    pids = srv.pids()
    assert len(pids) >= 4  # supervisor, router, shards, snapshotter
    r.shutdown()  # redis-py: the connection closing is success, an error reply raises
    assert _wait_exit(srv) == 0
    assert "asked to stop the server (SHUTDOWN)" in srv.log()
    again = server_factory(shards=2, data_dir=srv.data_dir)
    assert again.client().mget([f"key{i}" for i in range(50)]) == [str(i).encode() for i in range(50)]


def test_save_and_shutdown_save_on_a_shard_port(server_factory):
    srv = server_factory(shards=2)
    r = srv.client()
    r.set("a", "1")
    assert read_status(str(srv.data_dir)).request_served == ""
    assert r.execute_command("SAVE") is True
    served = read_status(str(srv.data_dir)).request_served
    assert served and all(s.status == "ok" for s in read_status(str(srv.data_dir)).shards.values())
    r.set("b", "2")
    node = srv.shard_client(0)
    node.shutdown(save=True)
    assert _wait_exit(srv) == 0
    assert read_status(str(srv.data_dir)).request_served > served  # SHUTDOWN SAVE waited for a new snapshot
    again = server_factory(shards=2, data_dir=srv.data_dir)
    assert again.client().mget(["a", "b"]) == [b"1", b"2"]


def test_save_without_a_snapshotter_is_refused(server_factory, tmp_path):
    config = tmp_path / "durakv.toml"
    config.write_text("snapshotter = false\n")
    srv = server_factory(shards=1, extra_args=("--config", str(config)))
    conn = RawConn(srv.port)
    try:
        assert conn.call("SAVE").startswith(b"-ERR SAVE needs a snapshotter")
        assert conn.call("SHUTDOWN", "SAVE") == b"-ERR Errors trying to SHUTDOWN. Check logs.\r\n"
        assert conn.call("PING") == b"+PONG\r\n"
    finally:
        conn.close()


def _field_names(reply: object) -> list:
    """A MEMORY STATS reply's field names, nested maps' too (RESP2 pairs or a RESP3 map)."""
    items = _pairs(reply)
    return [(k, _field_names(v) if isinstance(v, (list, dict)) else None) for k, v in items]


def _pairs(reply) -> list:
    if isinstance(reply, dict):
        return list(reply.items())
    if reply and isinstance(reply[0], tuple):  # refserver's RESP3 map
        return list(reply)
    return list(zip(reply[::2], reply[1::2]))


def test_memory_subcommands_as_redis(anyproto: Pair):
    p = anyproto
    same_all(p, [
        ("MEMORY", "HELP"), ("MEMORY", "PURGE"), ("MEMORY", "DOCTOR"), ("MEMORY", "STATS", "x"),
        ("MEMORY", "DOCTOR", "x"), ("MEMORY", "MALLOC-STATS", "x"),
    ])
    assert _field_names(p.ours.value("MEMORY", "STATS")) == _field_names(p.theirs.value("MEMORY", "STATS"))
    p.same("SET", "k", "v")
    ours = p.ours.value("MEMORY", "STATS")
    assert _field_names(ours) == _field_names(p.theirs.value("MEMORY", "STATS"))
    stats = dict(_pairs(ours))
    assert stats[b"keys.count"] == 1 and stats[b"total.allocated"] > 0
    p.same("MEMORY", "DOCTOR")  # a key is still "empty" to the doctor (tests/test_malloc_stats.py)
