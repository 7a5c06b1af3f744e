"""shards/script_evict.py: a script a shard drops from its full cache stays runnable
there until every router knows, so an EVALSHA a router sent under the old belief never
meets NOSCRIPT behind its followers (issue 16)."""

from __future__ import annotations

import os
import signal
import time

from durakv.shards.luaenv import sha1hex
from durakv.shards.script_evict import ANSWER_TIMEOUT_MS, MAX_EVICTING_SCRIPTS, Evicting
from durakv.shards.slots import key_slot, slot_owner_table
from refserver import RawConn, encode_command
from test_pubsub import WAIT_S
from test_script_scope import evalsha_then_set_with_a_shard_stopped

CACHE_BOUND = 4  # DURAKV_TEST_MAX_CACHED_SCRIPTS of these servers


def _key_per_shard(shards: int) -> list[str]:
    owner = slot_owner_table(shards)
    keys: dict[int, str] = {}
    for i in range(1000):
        keys.setdefault(owner[key_slot(f"key-{i}".encode())], f"key-{i}")
    return [keys[shard] for shard in range(shards)]


def test_an_evalsha_pipelined_behind_the_eval_that_drops_its_script_runs_before_its_follower(
        server_factory, redis_ref):
    """SCRIPT LOAD puts X on every shard; EVALs of other scripts on A's shard fill its
    cache (a bound of 4 here), and the next one, pipelined with EVALSHA X on A and a SET
    of B (another shard), drops X there. The router sent all three in one turn, still
    taking X for cached on A's shard, so it did not hold the SET. Before, that shard
    answered the EVALSHA NOSCRIPT; X was found on another shard (its lookup waiting for
    a stopped third shard's answer) and run again after the SET: a reader saw B set and A
    not incremented. Now the dropped X still runs there, ahead of the SET as on Redis
    (whose replies are compared)."""
    a, b, _ = _key_per_shard(3)
    srv = server_factory(shards=3, env={"DURAKV_TEST_MAX_CACHED_SCRIPTS": str(CACHE_BOUND)})
    ours, reader, theirs = RawConn(srv.port), RawConn(srv.port), RawConn(redis_ref.port)
    stopped = srv.child_pid("shard", 2)
    body = "return redis.call('INCR', KEYS[1])"
    try:
        for conn in (ours, theirs):
            conn.call("FLUSHALL")
            conn.call("SCRIPT", "FLUSH")
        expected = []
        for conn in (ours, theirs):
            sha = conn.value("SCRIPT", "LOAD", body)
            for filler in range(CACHE_BOUND - 1):  # X and these fill A's shard's cache
                assert conn.call("EVAL", f"return {filler}", "1", a) == b":%d\r\n" % filler
            assert conn.pipeline([("GET", a), ("GET", b)]) == [b"$-1\r\n", b"$-1\r\n"]
            if conn is ours:
                os.kill(stopped, signal.SIGSTOP)
            try:
                conn.send_raw(encode_command(("EVAL", "return 'drops X'", "1", a))
                              + encode_command(("EVALSHA", sha, "1", a)) + encode_command(("SET", b, "v")))
                if conn is ours:
                    deadline = time.monotonic() + WAIT_S
                    while reader.call("GET", b) != b"$1\r\nv\r\n":
                        assert time.monotonic() < deadline, "the SET never ran"
                        time.sleep(0.005)
                    assert reader.call("GET", a) == b"$1\r\n1\r\n", "B was set before the EVALSHA of A ran"
            finally:
                if conn is ours:
                    os.kill(stopped, signal.SIGCONT)
            expected.append([conn.read_reply() for _ in range(3)])
        assert expected[0] == expected[1] == [b"$7\r\ndrops X\r\n", b":1\r\n", b"+OK\r\n"]
        # The shard kept X because it was wanted again; the routers learn when it goes again.
        assert ours.call("EVALSHA", sha, "1", a) == b":2\r\n"
    finally:
        for conn in (ours, reader, theirs):
            conn.close()


def test_a_dropped_body_waits_for_every_connection_told():
    """Evicting: a body stays until each connection told has answered or closed, not while
    requests wait (one may be an EVALSHA of it), and goes past its deadline or the table's
    bound; an EVALSHA takes it back; SCRIPT FLUSH forgets it."""
    evicting = Evicting()
    conns = ["router-0", "router-1"]
    told: list[bytes] = []
    evicting.tell = lambda shas: told.extend(shas) or conns
    busy = [False]
    evicting.busy = lambda: busy[0]
    evicting.dropped(b"x", b"return 1", "fx")
    assert told == [b"x"] and evicting.answered("router-0", [b"x"]) == 1
    assert evicting.answered("router-0", [b"x"]) == 0 and b"x" in evicting.entries  # router-1 has not answered
    busy[0] = True
    evicting.conn_closed("router-1")
    evicting.sweep()
    assert b"x" in evicting.entries  # a request waits: it may be an EVALSHA the answers passed
    busy[0] = False
    evicting.sweep()
    assert not evicting.entries
    evicting.dropped(b"y", b"return 2", "fy")
    assert evicting.take(b"y") == (b"return 2", "fy") and evicting.take(b"y") is None
    evicting.dropped(b"z", b"return 3", "fz")
    evicting.entries[b"z"].deadline = time.monotonic() - ANSWER_TIMEOUT_MS / 1000
    evicting.sweep()
    assert not evicting.entries  # nobody answered in time: forgotten anyway
    for i in range(MAX_EVICTING_SCRIPTS + 1):
        evicting.dropped(b"%d" % i, b"", None)
    assert len(evicting.entries) == MAX_EVICTING_SCRIPTS and b"0" not in evicting.entries
    evicting.clear()
    assert not evicting.entries
    evicting.tell = lambda shas: []
    evicting.dropped(b"w", b"return 4", "fw")
    assert not evicting.entries  # nobody to wait for
    evicting.tell = lambda shas: told.extend(shas) or conns
    later: list = []
    evicting.soon = later.append  # told once the batch is over, together
    told.clear()
    for sha in (b"p", b"q", b"r"):
        evicting.dropped(sha, b"", None)
    assert evicting.take(b"q") is not None  # cached again before the telling: nothing to tell
    evicting.sweep()
    assert len(later) == 1 and set(evicting.entries) == {b"p", b"r"} and not told  # untold: kept
    later.pop()()
    assert told == [b"p", b"r"] and all(entry.waiting == set(conns) for entry in evicting.entries.values())


def test_a_drop_told_before_an_evalsha_reply_is_not_undone_by_that_reply(server_factory):
    """An EVALSHA the router does not take for cached (X was EVALed on two shards, not
    loaded) runs on A's shard, whose reply waits for its write's sync; another client's
    EVAL in the same turn drops X, and the shard tells the router at once, ahead of that
    reply. The reply must not teach the router that the shard has X: before, it did, so
    the next EVALSHA X went unheld, met NOSCRIPT once the shard forgot X, was found on B's
    shard (the lookup waiting for a stopped third shard) and ran after the SET of B
    pipelined behind it. Three rounds, each must hold."""
    a, b, _ = _key_per_shard(3)
    srv = server_factory(shards=3, env={"DURAKV_TEST_MAX_CACHED_SCRIPTS": str(CACHE_BOUND)})
    ours, other, reader = RawConn(srv.port), RawConn(srv.port), RawConn(srv.port)
    stopped = srv.child_pid("shard", 2)
    try:
        for round_ in range(3):
            body = f"return redis.call('INCR', KEYS[1]) -- {round_}"
            sha = sha1hex(body.encode()).decode()
            assert ours.call("EVAL", body, "1", b) == b":1\r\n"  # B's shard has X too
            assert ours.call("DEL", b) == b":1\r\n"
            assert ours.call("EVAL", body, "1", a) == b":1\r\n"
            for filler in range(CACHE_BOUND - 1):
                assert ours.call("EVAL", f"return {filler} -- {round_}", "1", a) == b":%d\r\n" % filler
            ours.send_raw(encode_command(("EVALSHA", sha, "1", a)))  # held: not known cached
            other.send_raw(encode_command(("EVAL", f"return 'drops X' -- {round_}", "1", a)))
            assert ours.read_reply() == b":2\r\n"
            assert other.read_reply() == b"$7\r\ndrops X\r\n"
            assert ours.call("PING") == b"+PONG\r\n"
            replies, seen = evalsha_then_set_with_a_shard_stopped(ours, reader, stopped, sha, a, b)
            assert replies == [b":3\r\n", b"+OK\r\n"]
            assert seen == b"$1\r\n3\r\n", f"round {round_}: B was set before the EVALSHA of A ran"
            assert ours.call("DEL", a, b) == b":2\r\n"
    finally:
        for conn in (ours, other, reader):
            conn.close()
