"""The router routes a plain client's run of plain-routed commands (GET, SET, INCR...:
`Command.routes_plain`) in one loop past dispatch's per-command checks
(server/client.py `_dispatch_plain`), judging the client's state once per run. Each
pipeline here is one send, so the run meets commands that change that state or need
dispatch (CLIENT REPLY, MULTI, SUBSCRIBE, wrong arity, unknown or mixed-case names)
inside one read: the replies must be redis-server's, byte for byte."""

from __future__ import annotations

import pytest
from refserver import RawConn, encode_command, pair  # noqa: F401 - pair is a fixture

END = (b"ECHO", b"end-of-pipeline")
END_REPLY = b"$15\r\nend-of-pipeline\r\n"

PIPELINES = {
    "reply-skip-and-off": [
        (b"SET", b"k1", b"v1"), (b"GET", b"k1"), (b"CLIENT", b"REPLY", b"SKIP"), (b"SET", b"k2", b"v2"),
        (b"GET", b"k2"), (b"CLIENT", b"REPLY", b"OFF"), (b"INCR", b"n"), (b"GET", b"k1"),
        (b"CLIENT", b"REPLY", b"ON"), (b"GET", b"n"), (b"APPEND", b"k1", b"x"), (b"GET", b"k1"),
    ],
    "multi-in-the-run": [
        (b"SET", b"k1", b"1"), (b"INCR", b"k1"), (b"MULTI",), (b"INCR", b"k1"), (b"GET", b"k1"),
        (b"GET", b"k1", b"extra"), (b"EXEC",), (b"MULTI",), (b"INCR", b"k1"), (b"EXEC",), (b"GET", b"k1"),
        (b"SET", b"k3", b"x"), (b"GET", b"k3"),
    ],
    "refused-and-odd-names": [
        (b"SET", b"k1", b"a"), (b"GET",), (b"GET", b"k1", b"k2"), (b"NOSUCH", b"k1"), (b"get", b"k1"),
        (b"gEt", b"k1"), (b"STRLEN", b"k1"), (b"set", b"k4", b"b"), (b"GET", b"k4"), (b"SET", b"k4"),
        (b"LPUSH", b"k4", b"x"), (b"TYPE", b"k4"), (b"DEL", b"k1"), (b"GET", b"k1"),
    ],
    "subscribed-in-the-run": [
        (b"SET", b"k1", b"a"), (b"SUBSCRIBE", b"chan"), (b"GET", b"k1"), (b"SET", b"k1", b"b"),
        (b"PING",), (b"UNSUBSCRIBE", b"chan"), (b"GET", b"k1"), (b"SET", b"k5", b"c"), (b"GET", b"k5"),
    ],
}


def run(conn: RawConn, commands: list[tuple]) -> list[bytes]:
    """Send the pipeline and END in one write; every reply before END's."""
    conn.send_raw(b"".join(encode_command(c) for c in [*commands, END]))
    replies = []
    while (reply := conn.read_reply()) != END_REPLY:
        replies.append(reply)
    return replies


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_a_pipeline_crossing_state_changes_matches_redis(pair, name):  # noqa: F811
    commands = PIPELINES[name]
    ours, theirs = run(pair.ours, commands), run(pair.theirs, commands)
    assert ours == theirs, f"{name}: durakv {ours!r} != redis {theirs!r}"
