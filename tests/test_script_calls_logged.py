"""A script's own redis.calls in SLOWLOG, INFO commandstats/errorstats and LATENCY
HISTOGRAM, side by side with redis-server 7.0, whose scriptCall runs them through
call() with CMD_CALL_SLOWLOG|CMD_CALL_STATS: each inner command is an entry of its
own (client `?:0`, no name, logged before the script's entry), counts its calls,
failures and refusals, and its latency. Through the router on two shards (a script
on one shard, one across shards, one put back and run again), and on a shard port;
for EVAL, EVALSHA and FCALL."""

from __future__ import annotations

from time import time_ns
from typing import Callable

import pytest
import redis

from durakv.shards import script_undo
from durakv.shards.slots import key_slot, slot_owner_table
from test_script_undeclared import REACH, same_shard_keys
from test_txn import A, B

# Inner commands of every kind: a write with a long argument (trimmed at 128 bytes), one
# with more than 32 arguments (trimmed), a failing one (WRONGTYPE, caught), refused ones
# (arity, noscript), the router's PING/SELECT/PUBLISH (one failing), a read.
BODY = ("redis.call('SET', KEYS[1], ARGV[1]) "
        "redis.pcall('LPUSH', KEYS[1], 'x') "
        "redis.call('RPUSH', KEYS[2], 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, "
        "21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35) "
        "redis.pcall('GET') redis.pcall('CONFIG', 'GET', 'maxmemory') redis.pcall('PING', 'a', 'b') "
        "redis.call('PING') redis.call('SELECT', 0) redis.call('PUBLISH', 'logged-ch', 'm') "
        "return redis.call('GET', KEYS[1])")
INNER = ("set", "lpush", "rpush", "get", "ping", "select", "publish", "config|get")
LONG_VALUE = "v" * 200
ONE_SLOT = ("{logged}str", "{logged}list")
LIBRARY = ("#!lua name=logged_lib_{tag}\n"
           "redis.register_function('logged_{tag}', function(KEYS, ARGV) " + BODY + " end)")


def _observe(client: redis.Redis, verb: str, run: Callable[[redis.Redis], object]) -> tuple:
    """What SLOWLOG, commandstats, errorstats and LATENCY HISTOGRAM show of `run`:
    the script's entries and its inner commands' (oldest first), with ids checked to
    grow in that order."""
    client.config_set("slowlog-log-slower-than", 0)
    try:
        client.slowlog_reset()
        client.config_resetstat()
        run(client)
        entries = client.slowlog_get(-1)
    finally:
        client.config_set("slowlog-log-slower-than", 10000)
    kept = [e for e in reversed(entries)
            if e["client_address"] == b"?:0" or e["command"].lower().startswith(verb.encode())]
    ids = [e["id"] for e in kept]
    assert ids == sorted(ids), f"ids do not grow in the order the commands ran: {kept}"
    shapes = [(e["command"], e["client_address"] if e["client_address"] == b"?:0" else b"client",
               e["client_name"]) for e in kept]
    stats = client.info("commandstats")
    counts = {name: {k: v for k, v in stat.items() if k in ("calls", "failed_calls", "rejected_calls")}
              for name, stat in stats.items() if name.removeprefix("cmdstat_") in (*INNER, verb)}
    histogram = client.execute_command("LATENCY", "HISTOGRAM", *INNER, verb)
    calls = {name: value[b"calls"] for name, value in histogram.items()}
    return shapes, counts, client.info("errorstats"), calls


def _both(server_client: redis.Redis, redis_ref, verb: str, run: Callable[[redis.Redis], object]) -> None:
    theirs = redis.Redis(port=redis_ref.port)
    try:
        seen = [_observe(client, verb, run) for client in (server_client, theirs)]
    finally:
        theirs.close()
    ours, expected = seen
    assert expected[0] and any(entry[1] == b"?:0" for entry in expected[0]), expected
    assert ours == expected, f"durakv {ours!r}\n!= redis {expected!r}"


def _eval(keys: list[str]) -> Callable[[redis.Redis], object]:
    body = f"-- {time_ns()}\n" + BODY
    return lambda client: client.eval(body, len(keys), *keys, LONG_VALUE)


@pytest.mark.parametrize("where", ["one shard", "across shards"])
def test_a_scripts_commands_are_logged_and_counted_as_redis_does(server, redis_ref, where):
    """Through the router: a script on one shard, and one whose declared keys are on
    two shards (a cross-shard transaction: the executor's final run logs them)."""
    keys = same_shard_keys(A, 2) if where == "one shard" else [A, B]
    for client in (server.client(), redis.Redis(port=redis_ref.port)):
        client.delete(*keys)
        client.close()
    with server.client() as ours:
        _both(ours, redis_ref, "eval", _eval(keys))


def test_evalsha_and_fcall_log_their_commands_as_redis_does(server, redis_ref):
    keys = same_shard_keys(A, 2)
    body = f"-- sha {time_ns()}\n" + BODY
    tag = str(time_ns())
    for client in (server.client(), redis.Redis(port=redis_ref.port)):
        client.delete(*keys)
        sha = client.script_load(body)
        client.function_load(LIBRARY.format(tag=tag))
        client.close()
    with server.client() as ours:
        _both(ours, redis_ref, "evalsha", lambda client: client.evalsha(sha, 2, *keys, LONG_VALUE))
        _both(ours, redis_ref, "fcall", lambda client: client.fcall(f"logged_{tag}", 2, *keys, LONG_VALUE))
    for client in (server.client(), redis.Redis(port=redis_ref.port)):
        client.function_delete(f"logged_lib_{tag}")
        client.close()


def test_on_a_shard_port_a_scripts_commands_are_logged_as_redis_does(server, redis_ref):
    keys = list(ONE_SLOT)  # a cluster client's keys: one slot
    shard = slot_owner_table(2)[key_slot(keys[0].encode())]
    for client in (server.client(), redis.Redis(port=redis_ref.port)):
        client.delete(*keys)
        client.close()
    with server.shard_client(shard) as ours:
        _both(ours, redis_ref, "eval", _eval(keys))


def test_a_run_put_back_logs_nothing_and_the_run_across_shards_logs_its_commands(server, redis_ref):
    """A script whose declared keys are on one shard reaches another shard's key: its
    first run is put back (nothing of it logged or counted) and it runs again across
    shards, logged once with its commands, as redis-server's one run; run again, it goes
    across shards at once, where the executor's runs thrown away log nothing either."""
    k1, k2, k3 = same_shard_keys(A, 3)
    body = f"-- reach {time_ns()}\nredis.pcall('LPUSH', KEYS[2], 'x') " + REACH

    def run(client: redis.Redis) -> None:  # twice: the second goes across shards at once
        for _ in range(2):
            client.delete(k1, k3, B)
            client.set(k2, "41")
            client.eval(body, 3, k1, k2, k3, B)

    with server.client() as ours:
        _both(ours, redis_ref, "eval", run)


def test_the_redis_calls_a_run_holds_are_bounded(monkeypatch):
    """A run that may be put back holds its redis.calls until it counts, at most
    MAX_HELD_CALLS of them: later ones are logged at once."""
    monkeypatch.setattr(script_undo, "MAX_HELD_CALLS", 2)
    logged = []

    class Shard:
        def log_script_call(self, cmd, argv, duration_us):
            logged.append((cmd, argv, duration_us))

    undo = script_undo.Undo(0)
    for i in range(3):
        undo.hold_call(Shard(), "get", [b"GET", b"k%d" % i], i)
    assert [argv for _cmd, argv, _us in undo.held_calls] == [[b"GET", b"k0"], [b"GET", b"k1"]]
    assert logged == [("get", [b"GET", b"k2"], 2)]
