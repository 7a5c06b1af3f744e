"""Redis 7.0's small rest (issue 12): INFO errorstats and commandstats' rejected and
failed calls, CLIENT REPLY, CLIENT PAUSE, SHUTDOWN and SAVE; compared with a real
redis-server 7.0 where the reply is deterministic."""

from __future__ import annotations

import re

from refserver import Pair, RawConn, same_all


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
