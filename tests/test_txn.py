"""Cross-shard transactions through the router (issue 16): multi-key commands
and MULTI/EXEC whose keys live on different shards run atomically and durably
(server/txn.py coordinates, shards/txn.py is the shard's side), with Redis'
single-node replies; WATCH across shards; survival of kill -9 at each step of
the two-phase commit."""

from __future__ import annotations

import threading
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from refserver import keys_on_different_shards
from test_supervisor import wait_until

A, B = keys_on_different_shards()
A2, B2 = (k + "x" for k in keys_on_different_shards())


def spread(count: int) -> list[str]:
    """Keys alternating between the two shards."""
    from durakv.shards.slots import key_slot
    low, high = [], []
    i = 0
    while len(low) < count or len(high) < count:
        key = f"k{i}"
        (low if key_slot(key.encode()) < 8192 else high).append(key)
        i += 1
    out = []
    for x, y in zip(low[:count], high[:count]):
        out += [x, y]
    return out


def test_keys_are_on_two_shards():
    from durakv.shards.slots import key_slot, slot_owner_table
    owner = slot_owner_table(2)
    assert owner[key_slot(A.encode())] != owner[key_slot(B.encode())]
    assert owner[key_slot(A2.encode())] != owner[key_slot(B2.encode())]


@pytest.mark.parametrize("commands", [
    [("MSET", A, "1", B, "2"), ("MGET", A, B)],
    [("SET", A, "x"), ("MSETNX", A, "1", B, "2"), ("MSETNX", A2, "1", B2, "2"), ("MGET", A, B, A2, B2)],
    [("SET", A, "v"), ("PEXPIRE", A, "100000"), ("RENAME", A, B), ("GET", B), ("EXISTS", A),
     ("RENAMENX", B, A), ("RENAMENX", A, B), ("RENAME", A2, B2)],
    [("RPUSH", A, "a", "b", "c"), ("COPY", A, B), ("LRANGE", B, "0", "-1"), ("COPY", A, B),
     ("COPY", A, B, "REPLACE"), ("LMOVE", A, B, "LEFT", "RIGHT"), ("RPOPLPUSH", B, A),
     ("LRANGE", A, "0", "-1"), ("LRANGE", B, "0", "-1")],
    [("SADD", A, "x", "y"), ("SADD", B, "y", "z"), ("SMOVE", A, B, "x"), ("SINTERSTORE", A2, A, B),
     ("SUNIONSTORE", B2, A, B), ("SDIFFSTORE", A2, B, A), ("SORT", A2, "ALPHA"), ("SCARD", B2)],
    [("ZADD", A, "1", "a", "2", "b"), ("ZADD", B, "3", "b", "4", "c"), ("ZUNIONSTORE", A2, "2", A, B),
     ("ZINTERSTORE", B2, "2", A, B, "WEIGHTS", "2", "3"), ("ZDIFFSTORE", A2, "2", B, A),
     ("ZRANGESTORE", B2, A, "0", "-1"), ("ZRANGE", A2, "0", "-1", "WITHSCORES"),
     ("ZRANGE", B2, "0", "-1", "WITHSCORES")],
    [("SET", A, "abc"), ("SET", B, "a c"), ("BITOP", "XOR", A2, A, B), ("GET", A2),
     ("PFADD", A, "x") if False else ("PFADD", B2, "1", "2"), ("PFADD", A2 + "h", "3"),
     ("PFMERGE", A2 + "h", B2), ("PFCOUNT", A2 + "h")],
    [("RPUSH", A, "3", "1", "2"), ("SORT", A, "STORE", B), ("LRANGE", B, "0", "-1"),
     ("GEOADD", A2, "13.361389", "38.115556", "Palermo"),
     ("GEOSEARCHSTORE", B2, A2, "FROMMEMBER", "Palermo", "BYRADIUS", "1", "km"), ("ZCARD", B2),
     ("LMPOP", "2", B2 + "none", B, "LEFT")],
    [("SET", A, "1"), ("DEL", A2), ("RENAME", A2, B), ("SMOVE", A, B, "x"), ("LMOVE", A, B, "LEFT", "LEFT"),
     ("GET", B)],
])
def test_multi_key_commands_across_shards_match_redis(pair, commands):
    for command in commands:
        pair.same(*command)


def test_multi_exec_across_shards_matches_redis(pair):
    for commands in (
        [("SET", A, "1"), ("INCR", B), ("GET", A), ("LPUSH", A, "x"), ("RENAME", B, A2), ("MGET", A2, B2)],
        [("SET", A, "v"), ("EXPIRE", B, "10"), ("GETDEL", A), ("SET", B, "w", "PX", "100000"), ("PTTL", A)],
    ):
        pair.same("MULTI")
        for command in commands:
            pair.same(*command)
        pair.same("EXEC")
        pair.same("MGET", A, B, A2, B2)
    # A command refused at queue time aborts the whole transaction, as in Redis.
    pair.same("MULTI")
    pair.same("SET", A, "no")
    pair.same("SET", B)
    pair.same("EXEC")
    pair.same("GET", A)


def test_watch_across_shards(server):
    r = server.client()
    other = server.client()
    r.mset({A: "1"})
    r.set(B, "2")
    # Untouched: the transaction runs.
    r.execute_command("WATCH", A, B)
    r.execute_command("MULTI")
    r.execute_command("SET", A, "3")
    r.execute_command("SET", B, "4")
    assert r.execute_command("EXEC") == [b"OK", b"OK"]
    # A watched key on one shard touched by another client: EXEC answers nil, nothing applied.
    r.execute_command("WATCH", A, B)
    other.set(B, "changed")
    r.execute_command("MULTI")
    r.execute_command("SET", A, "5")
    r.execute_command("SET", B, "6")
    assert r.execute_command("EXEC") is None
    assert r.mget(A, B) == [b"3", b"changed"]
    # WATCH on one shard, the transaction on the other.
    r.execute_command("WATCH", A)
    other.set(A, "touched")
    r.execute_command("MULTI")
    r.execute_command("SET", B, "7")
    assert r.execute_command("EXEC") is None
    assert r.get(B) == b"changed"


def test_pipelined_requests_do_not_overtake_a_cross_shard_command(server):
    r = server.client()
    pipe = r.pipeline(transaction=False)
    for i in range(50):
        pipe.mset({A: str(i), B: str(i)})
        pipe.get(A)
        pipe.get(B)
    replies = pipe.execute()
    for i in range(50):
        assert replies[3 * i:3 * i + 3] == [True, str(i).encode(), str(i).encode()]
    info = r.info("persistence")
    assert info["xshard_committed"] >= 50 and info["xshard_locked_keys"] == 0 and info["xshard_in_doubt"] == 0


def test_acknowledged_cross_shard_writes_survive_kill9(server_factory):
    srv = server_factory()
    r = srv.client()
    keys = spread(20)
    for n in range(0, len(keys), 2):
        r.mset({keys[n]: f"v{n}", keys[n + 1]: f"v{n}"})
    p = r.pipeline(transaction=True)
    p.rename(keys[0], "renamed-" + keys[1])
    p.incr("counter")
    p.execute()
    srv.kill9()
    srv.start()
    r = srv.client()
    for n in range(2, len(keys), 2):
        assert r.mget(keys[n], keys[n + 1]) == [f"v{n}".encode()] * 2
    assert r.get("renamed-" + keys[1]) == b"v0" and r.get(keys[0]) is None
    assert r.get("counter") == b"1"


def test_a_reader_never_sees_half_a_transaction(server):
    """A writer of cross-shard MSETs and MULTIs, a reader of both keys in MULTI/EXEC
    (atomic across shards too): every read sees one transaction's values on both."""
    keys = spread(4)
    pairs = [(keys[0], keys[1]), (keys[2], keys[3])]
    setup = server.client()
    for x, y in pairs:
        setup.mset({x: "0", y: "0"})
    stop = threading.Event()
    errors: list[str] = []
    reads = [0]

    def reader() -> None:
        r = server.client()
        while not stop.is_set():
            for x, y in pairs:
                p = r.pipeline(transaction=True)
                p.get(x)
                p.get(y)
                a, b = p.execute()
                reads[0] += 1
                if a != b:
                    errors.append(f"{x}={a!r} {y}={b!r}")

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    w = server.client()
    for i in range(1, 150):
        x, y = pairs[i % 2]
        if i % 3:
            w.mset({x: str(i), y: str(i)})
        else:
            p = w.pipeline(transaction=True)
            p.set(x, str(i))
            p.set(y, str(i))
            p.execute()
    stop.set()
    for t in threads:
        t.join()
    print(f"{reads[0]} consistent reads")
    assert not errors, errors[:5]
    assert reads[0] > 0


# --- kill -9 at each step of the two-phase commit ----------------------------------------

# The step at which a process of the tree exits, and the outcome every key must show.
CRASH_STEPS = [
    ("router-after-prepare", b"old"),  # prepared, never decided: presumed abort
    ("router-after-decision", b"new"),  # decided, commits never sent: resolved as committed
    ("participant-before-commit", b"new"),  # acknowledged; the participant restarts in doubt
    ("decider-after-decision", b"new"),  # decision durable, the decider died before answering
]


def one_try(port: int) -> redis.Redis:
    return redis.Redis(port=port, socket_timeout=30, retry=Retry(NoBackoff(), 0))


def test_kill9_at_each_step_is_all_or_nothing(server_factory, tmp_path):
    """DURAKV_TXN_CRASH names a file holding the step at which a process exits (kill -9
    in effect); for each step, a cross-shard MSET through the crash is all or nothing,
    acknowledged means present, and a later kill -9 of the whole tree changes nothing."""
    marker = tmp_path / "crash-step"
    srv = server_factory(env={"DURAKV_TXN_CRASH": str(marker)})
    outcomes = {}
    for n, (step, expect) in enumerate(CRASH_STEPS):
        keys = spread(n + 2)[2 * n:2 * n + 2]
        r = srv.client()
        r.mset({k: "old" for k in keys})
        assert r.mget(*keys) == [b"old", b"old"]  # waits for every commit of the setup
        marker.write_text(step)
        try:
            assert one_try(srv.port).mset({k: "new" for k in keys}) is True
            acked = True
        except (redis.ConnectionError, redis.ResponseError):
            acked = False
        wait_until(lambda: not marker.exists(), f"the {step} hook to fire")  # a commit may follow the reply

        def settled(keys: list[str] = keys, expect: bytes = expect) -> bool:
            try:
                return set(one_try(srv.port).mget(*keys)) == {expect}
            except redis.RedisError:
                return False

        wait_until(settled, f"the transaction to settle after {step}")
        if acked:
            assert expect == b"new", f"{step}: acknowledged, so it must be present"
        outcomes[tuple(keys)] = expect
    # The outcomes are in the logs: a kill -9 of everything changes none of them.
    srv.kill9()
    srv.start()
    r = srv.client()
    for keys, expect in outcomes.items():
        assert r.mget(*keys) == [expect, expect]
    # Nothing stays locked.
    assert r.mset({k: "later" for keys in outcomes for k in keys}) is True


@pytest.mark.parametrize("step", ["participant-at-prepare", "participant-after-prepare"])
def test_a_participant_dying_with_its_prepare_in_flight_answers_aborted(server_factory, tmp_path, step):
    """The decider was never asked to decide, so the outcome is known (presumed abort):
    the client gets the aborted error on a connection that stays open, rather than the
    "outcome unknown" disconnect of a lost decision, and nothing was written, also
    once the participant is back (prepared durably or not) and after a kill -9."""
    marker = tmp_path / "crash-step"
    srv = server_factory(env={"DURAKV_TXN_CRASH": str(marker)})
    keys = spread(1)
    r = one_try(srv.port)
    r.mset({k: "old" for k in keys})
    assert r.mget(*keys) == [b"old", b"old"]
    marker.write_text(step)
    with pytest.raises(redis.ResponseError, match="cross-shard transaction aborted"):
        r.mset({k: "new" for k in keys})
    assert not marker.exists(), "the participant did not exit at the step"
    assert r.ping() is True  # the same connection

    def settled() -> bool:
        try:
            return one_try(srv.port).mget(*keys) == [b"old", b"old"]
        except redis.RedisError:
            return False

    wait_until(settled, "the participant back, the keys as they were")
    srv.kill9()
    srv.start()
    r = srv.client()
    assert r.mget(*keys) == [b"old", b"old"]
    assert r.mset({k: "later" for k in keys}) is True  # nothing stays locked or prepared


def test_blocking_move_from_one_shards_list_to_anothers(server):
    r = server.client()
    r.delete(A, B)
    assert r.blmove(A, B, 0.2, "LEFT", "RIGHT") is None  # times out
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(server.client().blmove(A, B, 20, "LEFT", "RIGHT")))
    waiter.start()
    time.sleep(0.3)  # let it block (if it did not, it still must get the element)
    r.rpush(A, "x", "y")
    waiter.join()
    assert got == [b"x"]
    assert r.lrange(A, 0, -1) == [b"y"] and r.lrange(B, 0, -1) == [b"x"]
    assert r.brpoplpush(A, B, 1) == b"y"
    assert r.lrange(B, 0, -1) == [b"y", b"x"] and r.exists(A) == 0
    r.set(A, "string")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        r.blmove(A, B, 1, "LEFT", "RIGHT")


def test_a_cross_shard_command_touches_watched_keys_and_keeps_the_watch(server):
    """Redis' 'EXEC fail on WATCHed key modified by SORT with STORE even if the result
    is empty', with the sorted list and the destination on different shards."""
    r = server.client()
    r.delete(A, B)
    r.lpush(B, "bar")
    r.execute_command("WATCH", B)
    r.execute_command("SORT", A, "STORE", B)  # A is empty: B is deleted
    r.execute_command("MULTI")
    r.execute_command("PING")
    assert r.execute_command("EXEC") is None
