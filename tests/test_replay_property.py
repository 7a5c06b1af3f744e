"""Property: state(replay(log)) == state(live shard) (DESIGN invariant 3).

Random command sequences of every data type run through a real Shard's serving
path (execute_batch: effects -> log records -> fsync), then a fresh Shard opens
the same log directory and replays it; the two keyspaces must be identical:
every key, type, value and absolute expiry."""

from __future__ import annotations

import tempfile
import time

from hypothesis import HealthCheck, given, settings, strategies as st

from durakv.shards.config import Config
from durakv.shards.engine import state_of
from durakv.shards.frames import VERB_EXEC, Request
from durakv.shards.shard import Shard
from durakv.shards.t_multi import pack_transaction

KEYS = [b"{t}a", b"{t}b", b"{t}c", b"{t}d"]
MEMBERS = [b"m1", b"m2", b"m3", b"7", b"-2"]

key = st.sampled_from(KEYS)
member = st.sampled_from(MEMBERS)
small_int = st.integers(-5, 20).map(lambda n: b"%d" % n)
score = st.sampled_from([b"1", b"2.5", b"-3", b"0", b"1e3", b"inf", b"-inf"])
ms = st.integers(1, 4).map(lambda n: b"%d" % n)

COMMANDS = st.one_of(
    st.tuples(st.just(b"SET"), key, small_int),
    st.tuples(st.just(b"SET"), key, member, st.just(b"PX"), ms),
    st.tuples(st.just(b"SET"), key, member, st.just(b"EX"), st.just(b"100"), st.just(b"GET")),
    st.tuples(st.just(b"INCRBY"), key, small_int),
    st.tuples(st.just(b"INCRBYFLOAT"), key, st.sampled_from([b"0.1", b"1.5", b"-2.25", b"3e2"])),
    st.tuples(st.just(b"APPEND"), key, member),
    st.tuples(st.just(b"SETRANGE"), key, st.integers(0, 6).map(lambda n: b"%d" % n), member),
    st.tuples(st.just(b"GETDEL"), key),
    st.tuples(st.just(b"GETEX"), key, st.just(b"PX"), ms),
    st.tuples(st.just(b"DEL"), key, key),
    st.tuples(st.just(b"PEXPIRE"), key, ms),
    st.tuples(st.just(b"EXPIRE"), key, st.just(b"100"), st.sampled_from([b"NX", b"XX", b"GT", b"LT"])),
    st.tuples(st.just(b"PERSIST"), key),
    st.tuples(st.just(b"RENAME"), key, key),
    st.tuples(st.just(b"COPY"), key, key, st.just(b"REPLACE")),
    st.tuples(st.just(b"GET"), key),
    st.tuples(st.just(b"RPUSH"), key, member, member),
    st.tuples(st.just(b"LPOP"), key, st.just(b"2")),
    st.tuples(st.just(b"LMOVE"), key, key, st.sampled_from([b"LEFT", b"RIGHT"]), st.just(b"LEFT")),
    st.tuples(st.just(b"LREM"), key, st.just(b"0"), member),
    st.tuples(st.just(b"BLPOP"), key, key, st.just(b"0.01")),
    st.tuples(st.just(b"HSET"), key, member, small_int),
    st.tuples(st.just(b"HINCRBYFLOAT"), key, member, st.sampled_from([b"0.5", b"-1.25"])),
    st.tuples(st.just(b"HDEL"), key, member),
    st.tuples(st.just(b"SADD"), key, member, member),
    st.tuples(st.just(b"SPOP"), key, st.just(b"2")),
    st.tuples(st.just(b"SMOVE"), key, key, member),
    st.tuples(st.just(b"SINTERSTORE"), key, key, key),
    st.tuples(st.just(b"ZADD"), key, score, member),
    st.tuples(st.just(b"ZINCRBY"), key, score, member),
    st.tuples(st.just(b"ZPOPMIN"), key),
    st.tuples(st.just(b"ZUNIONSTORE"), key, st.just(b"2"), key, key),
    st.tuples(st.just(b"SETBIT"), key, st.integers(0, 40).map(lambda n: b"%d" % n), st.just(b"1")),
    st.tuples(st.just(b"PFADD"), key, member, member),
    st.tuples(st.just(b"SORT"), key, st.just(b"ALPHA"), st.just(b"STORE"), key),
    st.just((b"FLUSHALL",)),
).map(list)

TRANSACTION = st.lists(COMMANDS, min_size=1, max_size=4).map(
    lambda cmds: [VERB_EXEC, pack_transaction(cmds)])
BATCHES = st.lists(st.lists(st.one_of(COMMANDS, COMMANDS, COMMANDS, TRANSACTION), min_size=1, max_size=6),
                   min_size=1, max_size=12)


class Conn:
    """Stands in for a router connection: collects replies."""

    def __init__(self) -> None:
        self.replies: list[tuple[int, bytes]] = []

    def send(self, replies: list[tuple[int, bytes]]) -> None:
        self.replies.extend(replies)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(BATCHES, st.booleans())
def test_replayed_log_equals_live_state(batches, sleep_between):
    with tempfile.TemporaryDirectory() as data_dir:
        config = Config(shards=1, data_dir=data_dir).resolved()
        live = Shard(config, 0)
        live.open_log()
        conn = Conn()
        rid = 0
        for batch in batches:
            requests = []
            for argv in batch:
                rid += 1
                # One client per request: the router lets a client block once.
                requests.append(Request(rid, rid, 2, argv))
            conn.replies.extend(live.execute_batch(conn, requests))
            live._on_durable(live.wal.sync())
            if sleep_between:
                time.sleep(0.002)  # let PX/PEXPIRE keys expire lazily between batches
        assert live.held.count == 0
        assert len(conn.replies) + len(live.blocked) == rid  # every request answered or still blocked
        expected = state_of(live.db)
        live.wal.close()

        replayed = Shard(config, 0)
        replayed.open_log()
        assert state_of(replayed.db) == expected
        replayed.wal.close()
