"""A client's pipelined cross-shard writes commit together (server/txn_batch.py):
replies in order and as redis-server gives them, with single-shard commands and
cross-shard reads between them; readers never see half of one; kill -9 at each
step of a batched commit leaves every command all or nothing. Read locks are
shared: pipelined readers of the same keys, and the keys a cross-shard command
only reads."""

from __future__ import annotations

import random
import threading

import redis

from refserver import RawConn
from test_supervisor import wait_until
from test_txn import CRASH_STEPS, one_try, spread


def pipeline_commands(keys: list[str]) -> list[tuple]:
    """Cross-shard MSETs, MSETNX, RENAME, SMOVE and MULTIs back to back, then the
    same with a single-shard write, a one-shard read and a cross-shard MGET between."""
    a, b, c, d, e, f = keys[:6]
    writes = [
        ("MSET", a, "1", b, "2"),
        ("MSETNX", c, "3", d, "4"),
        ("MSETNX", a, "x", d, "y"),  # refused: a exists
        ("MULTI",), ("INCR", a), ("APPEND", b, "z"), ("GET", c), ("EXEC",),
        ("RENAME", c, f),
        ("SADD", e, "m1", "m2"),
        ("SMOVE", e, d + "s", "m1"),
        ("MULTI",), ("SET", a, "q"), ("INCR", a), ("SET", d, "w"), ("EXEC",),  # INCR fails inside: EXEC goes on
        ("MSET", e, "overwritten", b, "again"),
        ("MULTI",), ("LPUSH", f + "l", "1"), ("RPOPLPUSH", f + "l", e + "l"), ("EXEC",),
    ]
    mixed = [
        ("MSET", a, "m1", b, "m1"),
        ("GET", a),  # one shard
        ("MSET", c, "m2", d, "m2"),
        ("MGET", a, b, c, d),  # a cross-shard read
        ("MSET", a, "m3", d, "m3"),
        ("SET", b, "single"),  # a single-shard write between them
        ("MULTI",), ("GET", a), ("SET", c, "m4"), ("GET", b), ("EXEC",),
        ("MGET", a, b, c, d, e, f),
    ]
    return writes + mixed


def test_pipelined_cross_shard_writes_reply_in_order_as_redis(server, redis_ref):
    keys = spread(3)
    ours, theirs = RawConn(server.port), RawConn(redis_ref.port)
    for conn in (ours, theirs):
        conn.call("FLUSHALL")
    commands = pipeline_commands(keys)
    got, want = ours.pipeline(commands), theirs.pipeline(commands)
    for command, mine, ref in zip(commands, got, want):
        assert mine == ref, f"{command!r}: durakv {mine!r} != redis {ref!r}"
    # The same pipeline once more, over the values it left: the batches see each other's effects.
    got, want = ours.pipeline(commands), theirs.pipeline(commands)
    assert got == want
    info = server.client().info("persistence")
    print(f"batched {info['xshard_batched']} of {info['xshard_committed']} cross-shard writes")
    # Consecutive cross-shard writes committed as batches: at least the first run each time
    # (MSET, MSETNX, MSETNX, MULTI, RENAME; the one-shard SADD ends it).
    assert info["xshard_batched"] >= 2 * 5
    assert info["xshard_locked_keys"] == 0 and info["xshard_in_doubt"] == 0
    ours.sock.close()
    theirs.sock.close()


def test_a_reader_never_sees_half_of_a_pipelined_write(server):
    """Writers pipelining cross-shard MSETs and MULTIs over the same key pairs, readers
    of both keys of a pair (MGET across shards, and MULTI): every read sees one write's
    values on both keys, and each writer's values only move forward."""
    keys = spread(4)
    pairs = [(keys[n], keys[n + 1]) for n in range(0, len(keys), 2)]
    server.client().mset({k: "w-0" for k in keys})
    stop = threading.Event()
    errors: list[str] = []
    reads = [0]

    def reader() -> None:
        r = server.client()
        last: dict[tuple[str, str], int] = {}
        while not stop.is_set():
            for x, y in pairs:
                a, b = r.mget(x, y)
                p = r.pipeline(transaction=True)
                p.get(x)
                p.get(y)
                c, d = p.execute()
                reads[0] += 2
                if a != b or c != d:
                    errors.append(f"{x} {y}: MGET {a!r} {b!r}, MULTI {c!r} {d!r}")
                    continue
                seen = int(c.split(b"-")[1])
                if seen < last.get((x, y), 0):
                    errors.append(f"{x} {y}: went back from {last[(x, y)]} to {seen}")
                last[(x, y)] = seen

    def writer(name: str, rounds: int) -> None:
        w = server.client()
        for i in range(1, rounds + 1):
            p = w.pipeline(transaction=False)
            for n, (x, y) in enumerate(pairs):
                value = f"{name}-{i}"
                if n % 2:
                    p.mset({x: value, y: value})
                else:
                    p.execute_command("MULTI")
                    p.set(x, value)
                    p.set(y, value)
                    p.execute_command("EXEC")
            p.execute()

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for t in readers:
        t.start()
    writer("w", 60)  # one writer: its values only go up
    stop.set()
    for t in readers:
        t.join()
    print(f"{reads[0]} consistent reads")
    assert not errors, errors[:5]
    assert reads[0] > 0
    assert server.client().info("persistence")["xshard_batched"] > 0


def test_kill9_during_a_batched_commit_is_all_or_nothing(server_factory, tmp_path):
    """DURAKV_TXN_CRASH at each step of the two-phase commit, through a pipeline of
    cross-shard MSETs (one batch): each MSET is all or nothing, acknowledged ones are
    present, and a later kill -9 of the whole tree changes nothing."""
    marker = tmp_path / "crash-step"
    srv = server_factory(env={"DURAKV_TXN_CRASH": str(marker)})
    per_batch = 4
    keys = spread(per_batch * len(CRASH_STEPS))
    outcomes: dict[tuple[str, str], bytes] = {}
    for n, (step, expect) in enumerate(CRASH_STEPS):
        pairs = [(keys[2 * m], keys[2 * m + 1]) for m in range(n * per_batch, (n + 1) * per_batch)]
        r = srv.client()
        r.mset({k: "old" for pair in pairs for k in pair})
        assert r.mget(*[k for pair in pairs for k in pair]) == [b"old"] * 2 * per_batch
        marker.write_text(step)
        p = one_try(srv.port).pipeline(transaction=False)
        for x, y in pairs:
            p.mset({x: "new", y: "new"})
        try:
            acked = p.execute() == [True] * per_batch
        except (redis.ConnectionError, redis.ResponseError):
            acked = False
        wait_until(lambda: not marker.exists(), f"the {step} hook to fire")

        def settled(pairs: list[tuple[str, str]] = pairs) -> bool:
            try:
                values = one_try(srv.port).mget(*[k for pair in pairs for k in pair])
            except redis.RedisError:
                return False
            return all(v in (b"old", b"new") for v in values) and one_try(srv.port).info(
                "persistence")["xshard_in_doubt"] == 0

        wait_until(settled, f"the batch to settle after {step}")
        r = srv.client()
        for x, y in pairs:
            got = r.mget(x, y)
            assert got[0] == got[1], f"{step}: half of an MSET: {x}={got[0]!r} {y}={got[1]!r}"
            if acked:
                assert got[0] == b"new", f"{step}: acknowledged, so it must be present"
            outcomes[(x, y)] = got[0]
        # The batch is one transaction: its MSETs share the outcome the step implies.
        assert {outcomes[pair] for pair in pairs} == {expect}, step
    srv.kill9()
    srv.start()
    r = srv.client()
    for (x, y), value in outcomes.items():
        assert r.mget(x, y) == [value, value]
    assert r.mset({k: "later" for pair in outcomes for k in pair}) is True


HOT_READERS = 6
HOT_ROUNDS = 100  # pipelines of 16 MGETs each


def test_pipelined_readers_of_the_same_keys_share_their_locks(server):
    """Clients pipelining cross-shard MGETs over the same few key pairs: each batch's
    reads lock their keys one read after another, so two batches whose reads met
    the pairs in different orders used to hold one key each and wait for the
    other's (exclusive read locks: a deadlock, every later request of theirs stuck);
    read locks are shared now, and every pipeline completes."""
    keys = spread(4)
    pairs = [(keys[n], keys[n + 1]) for n in range(0, len(keys), 2)]
    server.client().mset({k: k for k in keys})
    errors: list[str] = []
    done = [0]

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        conn = RawConn(server.port)  # a 30 s timeout: a stuck pipeline fails the test
        try:
            for _round in range(HOT_ROUNDS):
                order = [rng.choice(pairs) for _ in range(16)]
                commands = [("MGET", *(pair if rng.random() < 0.5 else pair[::-1])) for pair in order]
                for command, got in zip(commands, conn.pipeline(commands)):
                    if got != b"*2\r\n" + b"".join(b"$%d\r\n%s\r\n" % (len(k), k.encode()) for k in command[1:]):
                        errors.append(f"{command}: {got!r}")
                done[0] += 16
        except OSError as e:
            errors.append(f"reader {seed}: {e!r}")
        finally:
            conn.sock.close()

    threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(HOT_READERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    info = server.client().info("persistence")
    print(f"{done[0]} pipelined reads, {info['xshard_read_waits']} read batches waited for a lock")
    assert not errors, errors[:5]
    assert done[0] == HOT_READERS * HOT_ROUNDS * 16
    assert info["xshard_locked_keys"] == 0


def test_a_cross_shard_command_locks_the_keys_it_only_reads_shared(server_factory, tmp_path):
    """SUNIONSTORE dest src across shards, held before its run (DURAKV_TXN_HOLD) with its
    locks taken: src's shard locked it shared (TXLOCK read), so a cross-shard MGET of src
    answers meanwhile (it waited for the whole transaction when every lock was
    exclusive), while a write of src waits, and the union is the one of before."""
    from test_txn_restart import key_on_shard
    hold = tmp_path / "hold"
    srv = server_factory(env={"DURAKV_TXN_HOLD": str(hold)})
    dest, src, other = key_on_shard(0, 2, "dest"), key_on_shard(1, 2, "src"), key_on_shard(0, 2, "other")
    r = srv.client()
    r.sadd(src, "a", "b")
    r.set(other, "o")
    hold.write_text("router-before-run")
    outcome: list[object] = []
    union = threading.Thread(target=lambda: outcome.append(srv.client().sunionstore(dest, src)))
    union.start()
    wait_until(lambda: r.info("persistence")["xshard_locked_keys"] == 2, "SUNIONSTORE holding dest and src")
    # A cross-shard read of src (and a key of dest's shard) is answered under the held transaction.
    assert one_try(srv.port).execute_command("EXISTS", src, other) == 2
    waits_before = r.info("persistence")["xshard_lock_waits"]
    written: list[object] = []
    writer = threading.Thread(target=lambda: written.append(srv.client().sadd(src, "c")))
    writer.start()
    wait_until(lambda: r.info("persistence")["xshard_lock_waits"] > waits_before, "the write of src waiting")
    assert not written
    hold.unlink()
    union.join()
    writer.join()
    assert outcome == [2] and written == [1]
    assert r.smembers(dest) == {b"a", b"b"} and r.smembers(src) == {b"a", b"b", b"c"}
