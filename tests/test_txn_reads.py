"""Isolation of multi-key reads and deletes across shards (issue 16's isolation
rule): MGET, EXISTS, TOUCH, DEL and UNLINK whose keys live on several shards
never observe half a cross-shard MSET or MULTI, even with several writers and
several routers racing on the same keys (server/txn_read.py, shards/txn.py)."""

from __future__ import annotations

import threading

import pytest
import redis


from test_routers import wait_routers_listening
from test_txn import A, A2, B, B2, spread


def test_mget_never_sees_half_a_cross_shard_write(server_factory):
    """Writers of cross-shard MSETs, MULTIs and DELs over the same key pairs, readers
    MGETting and EXISTSing both keys of a pair, on two routers: every MGET sees one
    write's values on both keys, EXISTS 0 or 2 (the split MGET of old could see one
    writer's value on one shard and another writer's on the other)."""
    srv = server_factory(shards=2, extra_args=("--routers", "2"))
    wait_routers_listening(srv, 2)
    keys = spread(3)
    pairs = [(keys[n], keys[n + 1]) for n in range(0, len(keys), 2)]
    setup = srv.client()
    for x, y in pairs:
        setup.mset({x: "0", y: "0"})
    stop = threading.Event()
    errors: list[str] = []
    reads = [0]

    def reader() -> None:
        r = srv.client()
        while not stop.is_set():
            for x, y in pairs:
                a, b = r.mget(x, y)
                present = r.exists(x, y)
                reads[0] += 1
                if a != b:
                    errors.append(f"MGET {x}={a!r} {y}={b!r}")
                if present == 1:
                    errors.append(f"EXISTS {x} {y} = 1")

    def writer(name: str, rounds: int) -> None:
        w = srv.client()
        for i in range(rounds):
            x, y = pairs[i % len(pairs)]
            value = f"{name}{i}"
            if i % 5 == 4:
                w.delete(x, y)
            elif i % 3:
                w.mset({x: value, y: value})
            else:
                p = w.pipeline(transaction=True)
                p.set(x, value)
                p.set(y, value)
                p.execute()

    def pipelined_reader() -> None:
        """A pipeline's consecutive cross-shard reads go as one batch (server/txn_read.py)."""
        r = srv.client()
        while not stop.is_set():
            p = r.pipeline(transaction=False)
            for x, y in pairs:
                p.mget(x, y)
                p.exists(x, y)
            results = p.execute()
            reads[0] += len(pairs)
            for (x, y), (a, b), present in zip(pairs, results[::2], results[1::2]):
                if a != b:
                    errors.append(f"pipelined MGET {x}={a!r} {y}={b!r}")
                if present == 1:
                    errors.append(f"pipelined EXISTS {x} {y} = 1")

    readers = [threading.Thread(target=reader) for _ in range(3)]
    readers += [threading.Thread(target=pipelined_reader) for _ in range(2)]
    writers = [threading.Thread(target=writer, args=(name, 30)) for name in "wxyz"]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    print(f"{reads[0]} MGETs, {len(errors)} mixed")
    assert not errors, errors[:5]
    assert reads[0] > 0


@pytest.mark.parametrize("commands", [
    [("MSET", A, "1", B, "2"), ("MGET", A, B, A2, B2, A), ("EXISTS", A, B, A, B2), ("TOUCH", B, A, A2),
     ("DEL", A, B, A, A2), ("MGET", A, B), ("EXISTS", A, B)],
    [("RPUSH", A, "x"), ("SET", B, "y", "PX", "100000"), ("SADD", B2, "z"), ("UNLINK", A, B, B2, A2),
     ("EXISTS", A, B, B2), ("DEL", A, B), ("MGET", A, B2)],
    [("SET", A, "v", "EX", "100"), ("HSET", B, "f", "v"), ("MGET", A, B), ("UNLINK", B, A), ("TTL", A)],
])
def test_reads_and_deletes_across_shards_match_redis(pair, commands):
    for command in commands:
        pair.same(*command)


PIPELINE = [("SET", A, "1"), ("MGET", A, B), ("SET", A2, "x"), ("MGET", A, B), ("GET", A2), ("MGET", A2, B),
            ("INCR", B2), ("DEL", A2), ("MGET", A2, B2, A), ("LPUSH", A2, "l"), ("MGET", A2, B),
            ("SET", B, "2"), ("MGET", A, B), ("MGET", B, A, A2),
            ("EXISTS", A, B, B2), ("TOUCH", A, B), ("MSET", A, "3", B, "4"), ("MGET", A, B), ("MGET", A, B, B2),
            ("DEL", A, B2), ("MGET", A, B), ("EXISTS", A, B), ("INCR", B), ("MGET", A, B), ("MGET", A2, B),
            ("MULTI",), ("MGET", A, B), ("SET", A, "9"), ("EXEC",), ("MGET", B, A), ("GET", A), ("EXISTS", B, A),
            ("UNLINK", A2, B2)]


def test_pipelined_reads_among_writes_reply_in_order_as_redis(pair):
    """Consecutive cross-shard reads of a pipeline run as one batch; the writes between
    them are not overtaken: every reply is the one redis-server gives, in order."""
    assert pair.ours.pipeline(PIPELINE) == pair.theirs.pipeline(PIPELINE)


def test_a_cross_shard_delete_is_one_transaction(server):
    """DEL over keys on both shards is all-or-nothing to a reader, and touches WATCHers."""
    r = server.client()
    r.mset({A: "1", B: "2"})
    r.execute_command("WATCH", B)
    committed = r.info("persistence")["xshard_committed"]
    assert server.client().delete(A, B, A2) == 2
    assert r.info("persistence")["xshard_committed"] == committed + 1
    r.execute_command("MULTI")
    r.execute_command("PING")
    assert r.execute_command("EXEC") is None
    assert r.exists(A, B) == 0
    info = r.info("persistence")
    assert info["xshard_locked_keys"] == 0 and info["xshard_waiting_requests"] == 0


def test_a_refused_read_inside_a_batch_of_pipelined_reads_answers_in_its_place(pair):
    """Each read a batch pulls from the pipeline goes through the full dispatch: an ACL
    refusal in the middle of cross-shard reads is answered in its place, as by redis-server."""
    from refserver import RawConn
    pair.same("MSET", A, "1", B, "2", B2, "3")
    pair.same("ACL", "SETUSER", "batchreader", "on", ">pw", f"~{A}", f"~{B}", "+mget", "+exists", "+get")
    commands = [("MGET", A, B), ("MGET", A, B2), ("EXISTS", B, A), ("SET", A, "x"), ("MGET", B, A),
                ("GET", B2), ("MGET", A, B)]
    try:
        replies = []
        for port in (pair.ours.sock.getpeername()[1], pair.theirs.sock.getpeername()[1]):
            conn = RawConn(port)
            assert conn.call("AUTH", "batchreader", "pw") == b"+OK\r\n"
            replies.append(conn.pipeline(commands))
            conn.close()
        assert replies[0] == replies[1]
        assert replies[0][1].startswith(b"-NOPERM")
    finally:
        pair.same("ACL", "DELUSER", "batchreader")


def test_a_shard_lost_under_a_batch_of_reads_closes_the_client_and_frees_the_other_shard(server_factory, tmp_path):
    """kill -9 of a shard while a pipeline's batch of cross-shard reads waits there (its
    part on a key whose write is not durable yet): the reads' outcome is unknown, so
    the client's connection closes with no reply; the other shard's read locks go, so
    the keys serve again once the shard is back."""
    import os
    import signal
    import time

    from refserver import RawConn, encode_command
    from test_durability import write_config
    from test_fsync_gates import wait_held

    gate = tmp_path / "gate"
    gate.touch()
    srv = server_factory(shards=2, extra_args=("--config", write_config(tmp_path, test_fsync_gate_path=str(gate))))
    r = srv.client()
    r.mset({A: "1", B: "2"})
    gate.unlink()
    writer = RawConn(srv.port)
    writer.send_raw(encode_command(("SET", B, "new")))
    wait_held(r, 1)
    reader = RawConn(srv.port)
    reader.send_raw(b"".join(encode_command(("MGET", A, B)) for _ in range(4)))
    wait_held(r, 5)
    os.kill(srv.child_pid("shard", 1), signal.SIGKILL)
    assert reader.read_until_closed() == b""
    gate.touch()
    after = redis.Redis(port=srv.port, socket_timeout=5)  # stuck behind a leaked lock: fails, not hangs
    deadline = time.monotonic() + 30
    while True:
        try:
            values = after.mget(A, B)
            break
        except Exception:
            assert time.monotonic() < deadline, "the keys never served again"
            time.sleep(0.1)
    assert values[0] == b"1" and values[1] in (b"2", b"new")
    assert after.info("persistence")["xshard_locked_keys"] == 0
