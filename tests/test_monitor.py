"""MONITOR: its lines compared with redis-server's (time and client address
masked), and a monitor on any router or shard port seeing every other
router's and shard port's clients and the commands scripts run on any shard."""

from __future__ import annotations

import re
import time

import pytest
from refserver import RawConn, decode

from durakv.server.monitor import redacted, repr_arg
from durakv.shards.slots import key_slot, slot_owner_table

WAIT_S = 10.0
QUIET_S = 0.3
LINE = re.compile(rb"^\+(\d+)\.(\d{6}) \[0 ([^\]]+)\] (.*)\r\n$", re.S)

# Each command alone, in order: its reply, then the lines a monitor got for it.
SEQUENCE = [
    ("SET", "k{1}", "v"),
    ("set", "a\x01\n\"b\\ \t\xff", "1"),  # sdscatrepr escapes
    ("GET", "k{1}"),
    ("AUTH", "pw"),  # redacted
    ("AUTH", "user", "pw"),
    ("AUTH", "a", "b", "c"),  # a syntax error: not redacted
    ("HELLO", "2", "AUTH", "default", "pw", "SETNAME", "x"),
    ("CONFIG", "GET", "maxmemory"),  # admin: not shown
    ("NOSUCHCOMMAND",),  # refused before it runs: not shown
    ("GET",),
    ("EVAL", "redis.call('ping'); redis.call('set', KEYS[1], 'x'); return redis.call('get', KEYS[1])", "1", "k{1}"),
    ("MULTI",),
    ("SET", "k{1}", "v2"),
    ("EXEC",),
    ("MULTI",),
    ("SET", "k{1}"),  # wrong arity: EXEC aborts, and only MULTI and EXEC are shown
    ("EXEC",),
    ("CLIENT", "INFO"),
]


def masked(line: bytes) -> tuple[bytes, bytes]:
    """A monitor line without its time, and its source as CLIENT or lua."""
    m = LINE.match(line)
    assert m is not None, line
    seconds = int(m[1])
    assert abs(seconds - time.time()) < 60, line
    return (b"lua" if m[3] == b"lua" else b"CLIENT"), m[4]


def read_lines(conn: RawConn, count: int | None) -> list[bytes]:
    """`count` lines (None: whatever comes until the line goes quiet)."""
    lines: list[bytes] = []
    deadline = time.monotonic() + (WAIT_S if count is not None else QUIET_S)
    conn.sock.settimeout(0.05)
    try:
        while (count is None or len(lines) < count) and time.monotonic() < deadline:
            try:
                lines.append(conn.read_reply())
            except TimeoutError:
                continue
    finally:
        conn.sock.settimeout(30)
    return lines


def run_sequence(port: int, expected_counts: list[int] | None) -> tuple[list[bytes], list[list]]:
    monitor = RawConn(port)
    assert monitor.call("MONITOR") == b"+OK\r\n"
    client = RawConn(port)
    replies, lines = [], []
    for n, args in enumerate(SEQUENCE):
        if args[0] in ("CLIENT", "HELLO"):
            replies.append(None)  # the client id, address and fd differ
            client.call(*args)
        else:
            replies.append(client.call(*args))
        got = read_lines(monitor, None if expected_counts is None else expected_counts[n])
        lines.append([masked(line) for line in got])
    assert read_lines(monitor, None) == []
    monitor.close()
    client.close()
    return replies, lines


@pytest.mark.parametrize("shards", [1, 2])
def test_monitor_lines_match_redis(server_factory, redis_ref, shards):
    theirs_replies, theirs_lines = run_sequence(redis_ref.port, None)
    srv = server_factory(shards=shards)
    ours_replies, ours_lines = run_sequence(srv.port, [len(x) for x in theirs_lines])
    for args, ours, theirs in zip(SEQUENCE, ours_replies, theirs_replies):
        assert ours == theirs, (args, ours, theirs)
    for args, ours, theirs in zip(SEQUENCE, ours_lines, theirs_lines):
        assert ours == theirs, (args, ours, theirs)
    assert theirs_lines[10][1][0] == b"lua"  # the comparison covered script lines


def test_monitor_refusals_match_redis(server_factory, redis_ref):
    """MONITOR queued in MULTI fails in EXEC; a monitor may not touch the keyspace;
    a second MONITOR is ignored; RESET ends monitoring."""
    srv = server_factory(shards=1)
    outputs = []
    for port in (srv.port, redis_ref.port):
        c = RawConn(port)
        out = [c.call("MULTI"), c.call("MONITOR"), c.call("EXEC"), c.call("MONITOR")]
        c.send_raw(b"MONITOR\r\nGET k\r\nPUBLISH ch m\r\nRESET\r\n")
        out += [c.read_reply() for _ in range(3)]
        other = RawConn(port)
        other.call("SET", "after-reset", "1")
        out.append(c.call("PING"))  # no line for the SET: not a monitor any more
        outputs.append(out)
        c.close()
        other.close()
    ours, theirs = outputs
    assert ours == theirs


def _router_of(conn: RawConn) -> int:
    return (decode(conn.call("CLIENT", "ID"))[0] - 1) % 2


def _one_per_router(port: int) -> tuple[dict[int, RawConn], list[RawConn]]:
    by_router: dict[int, RawConn] = {}
    spare: list[RawConn] = []
    deadline = time.monotonic() + WAIT_S
    while len(by_router) < 2 and time.monotonic() < deadline:
        conn = RawConn(port)
        router = _router_of(conn)
        if router in by_router:
            spare.append(conn)
        else:
            by_router[router] = conn
    assert len(by_router) == 2, "both routers must take a connection"
    return by_router, spare


def test_monitor_sees_every_router_shard_port_and_script(server_factory):
    srv = server_factory(shards=2, extra_args=("--routers", "2"))
    by_router, spare = _one_per_router(srv.port)
    monitors = [by_router[0], RawConn(srv.shard_port(1))]
    for m in monitors:
        assert m.call("MONITOR") == b"+OK\r\n"
    writers = [by_router[1], RawConn(srv.shard_port(0)), RawConn(srv.shard_port(1))]
    owner = slot_owner_table(2)
    keys = {}
    for shard in range(2):
        keys[shard] = next(f"k{n}" for n in range(100) if owner[key_slot(f"k{n}".encode())] == shard)
    expected = []
    for i, (writer, key) in enumerate(zip(writers, [keys[0], keys[0], keys[1]])):
        assert writer.call("SET", key, str(i)) == b"+OK\r\n"
        expected.append((b"CLIENT", b'"SET" "%s" "%d"' % (key.encode(), i)))
    # A script on shard 1, sent through router 1: its commands come from that shard's process.
    script = "return redis.call('get', KEYS[1])"
    assert writers[0].call("EVAL", script, "1", keys[1]) == b"$1\r\n2\r\n"
    expected.append((b"CLIENT", b'"EVAL" "%s" "1" "%s"' % (script.encode(), keys[1].encode())))
    expected.append((b"lua", b'"get" "%s"' % keys[1].encode()))
    for m in monitors:
        got = [masked(line) for line in read_lines(m, len(expected))]
        # Lines made in different processes arrive in no set order (the script's line
        # comes from shard 1's process, the EVAL's from router 1).
        assert sorted(got) == sorted(expected)
    for m in monitors:
        m.close()
    for conn in [*writers, *spare]:
        conn.close()


def test_repr_and_redaction_helpers():
    assert repr_arg(b'a"\\\n\r\t\x07\x08\x00\x7f\xff z') == b'"a\\"\\\\\\n\\r\\t\\a\\b\\x00\\x7f\\xff z"'
    assert redacted([b"MIGRATE", b"h", b"1", b"k", b"0", b"5", b"AUTH", b"pw"])[-1] == b"(redacted)"
    assert redacted([b"migrate", b"h", b"1", b"", b"0", b"5", b"AUTH2", b"u", b"p", b"KEYS", b"a"]) == [
        b"migrate", b"h", b"1", b"", b"0", b"5", b"AUTH2", b"(redacted)", b"(redacted)", b"KEYS", b"a"]
