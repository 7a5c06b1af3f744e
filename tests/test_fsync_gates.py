"""The reply-after-fsync contract on every read path (DESIGN invariants 1 and 2).

Segment fdatasyncs wait for a gate file (test-fsync-gate-path). With the gate
closed, a write's record is pending; every reply that depends on it must be held
(INFO log_held_replies counts it, and nothing reaches the client) and must leave,
with the new data, once the gate opens. Replies that depend only on durable data
leave at once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
from refserver import RawConn, decode, keys_on_different_shards
from test_durability import write_config

from durakv.shards.slots import key_slot, slot_owner_table

HELD_TIMEOUT_S = 20
BARRIER_KEYS = ("barrier-0", "barrier-2")  # one on each of the 2 shards (test_barrier_keys_are_on_both_shards)
NOTHING_SENT_S = 0.2


class Gate:
    def __init__(self, path: Path) -> None:
        self.path = path

    def close(self) -> None:
        self.path.unlink(missing_ok=True)

    def open(self) -> None:
        self.path.touch()


@pytest.fixture(scope="module")
def gated_server(tmp_path_factory):
    from conftest import DurakvServer
    tmp = tmp_path_factory.mktemp("gated")
    gate = Gate(tmp / "gate")
    gate.open()
    config = write_config(tmp, test_fsync_gate_path=str(gate.path))
    srv = DurakvServer(tmp / "data", shards=2, extra_args=("--config", config)).start()
    yield srv, gate
    gate.open()
    srv.discard()


@pytest.fixture
def gated(gated_server):
    srv, gate = gated_server
    gate.open()
    client = srv.client()
    client.flushall()
    yield srv, gate, client
    gate.open()
    client.close()


def held_replies(client: redis.Redis) -> int:
    return client.info("persistence")["log_held_replies"]


def wait_held(client: redis.Redis, count: int) -> None:
    deadline = time.monotonic() + HELD_TIMEOUT_S
    while (held := held_replies(client)) < count:
        assert time.monotonic() < deadline, f"{held} replies held, expected {count}"
        time.sleep(0.01)


def send(srv, *args) -> RawConn:
    conn = RawConn(srv.port)
    conn.send_raw(_encode(args))
    return conn


def _encode(args: tuple) -> bytes:
    from refserver import encode_command
    return encode_command(args)


def assert_nothing_sent(*conns: RawConn) -> None:
    for conn in conns:
        assert not conn.buf, conn.buf
        conn.sock.settimeout(NOTHING_SENT_S)
        try:
            data = conn.sock.recv(65536)
        except TimeoutError:
            continue
        finally:
            conn.sock.settimeout(30)
        raise AssertionError(f"a reply left before the record it depends on was durable: {data!r}")


def mset_across_shards(client: redis.Redis, values: dict[str, str]) -> None:
    """A cross-shard MSET, then a write on each shard: the MSET's reply leaves once its
    decision is durable, but the other participant's COMMIT record may still wait for
    its fsync (shards/txn.py); closed, the gate would hold that record's reply, and
    wait_held would count it as the held reply of the test's next write. Each shard's
    SET is sent behind the COMMIT on the router's link and answered once durable, so
    once both replied nothing of the MSET is left in flight."""
    client.mset(values)
    for key in BARRIER_KEYS:
        client.set(key, "barrier")


def dirty_write(srv, client, gate, *args, held_before: int = 0) -> RawConn:
    """Close the gate and send a write; return its connection once its reply is held."""
    gate.close()
    conn = send(srv, *args)
    wait_held(client, held_before + 1)
    return conn


def check_held_then_released(client, gate, writer: RawConn, readers: list[RawConn],
                             expected: list, *, held: int | None = None) -> None:
    wait_held(client, 1 + len(readers) if held is None else held)
    assert_nothing_sent(writer, *readers)
    gate.open()
    writer.read_reply()
    assert [decode(r.read_reply())[0] for r in readers] == expected


def test_barrier_keys_are_on_both_shards():
    owner = slot_owner_table(2)
    assert sorted(owner[key_slot(key.encode())] for key in BARRIER_KEYS) == [0, 1]


def test_mget_waits_for_a_dirty_key_after_the_first(gated):
    srv, gate, client = gated
    first, other_shard = keys_on_different_shards(2)
    client.mset({"{m}a": "1", "{m}b": "2"})
    client.set(first, "f")
    writer = dirty_write(srv, client, gate, "SET", "{m}b", "new")
    same_shard = send(srv, "MGET", "{m}a", "{m}b")
    writer2 = send(srv, "SET", other_shard, "o")
    wait_held(client, 3)
    # Clean keys are answered at once. Asked before the split MGET below: that read holds
    # its keys' locks on both shards until its part on the dirty key is durable (it is a
    # cross-shard read, server/txn_read.py), so a read of the same keys sent after it
    # waits for the gate, and which of two connections the router reads first is a race.
    assert client.mget(["{m}a", first]) == [b"1", b"f"]
    split = send(srv, "MGET", first, "{m}a", other_shard)   # one part per shard, under their key locks
    # Held: the writers, the same-shard MGET, and the split MGET's part on the dirty key's shard.
    check_held_then_released(client, gate, writer, [same_shard, split],
                             [[b"1", b"new"], [b"f", b"1", b"o"]], held=4)
    assert writer2.read_reply() == b"+OK\r\n"


def test_pipelined_cross_shard_reads_are_in_flight_together_and_held_until_durable(gated):
    """A pipeline's consecutive cross-shard reads go to the shards as one batch
    (server/txn_read.py): each one's part on the dirty key is held there, none
    reaches the client before the write it shows is durable, and all arrive in order."""
    srv, gate, client = gated
    first, other_shard = keys_on_different_shards(2)
    mset_across_shards(client, {first: "f", other_shard: "o"})
    writer = dirty_write(srv, client, gate, "SET", other_shard, "new")
    reads = 8
    reader = RawConn(srv.port)
    reader.send_raw(b"".join(_encode(("MGET", first, other_shard)) for _ in range(reads))
                    + _encode(("EXISTS", other_shard, first, "{g}absent")))
    wait_held(client, 1 + reads + 1)   # one at a time, only the first read's part would be held
    assert_nothing_sent(writer, reader)
    gate.open()
    assert writer.read_reply() == b"+OK\r\n"
    assert [decode(reader.read_reply())[0] for _ in range(reads + 1)] == [[b"f", b"new"]] * reads + [2]


def test_writes_between_pipelined_cross_shard_reads_go_with_them_when_their_keys_differ(gated):
    """A one-shard command between a pipeline's cross-shard reads that touches none of
    their keys is sent with them (server/txn_read.py): every reply is held until the
    records it shows are durable, and later reads see the writes before them."""
    srv, gate, client = gated
    first, other_shard = keys_on_different_shards(2)
    mset_across_shards(client, {first: "f", other_shard: "o"})
    writer = dirty_write(srv, client, gate, "SET", other_shard, "new")
    reader = RawConn(srv.port)
    pipeline = [("MGET", first, other_shard), ("SET", "{g}x", "1"), ("MGET", other_shard, first),
                ("INCR", "{h}n"), ("MGET", first, other_shard, "{g}x"), ("SET", "{h}n", "7"),
                ("MGET", "{h}n", first, other_shard)]
    reader.send_raw(b"".join(_encode(command) for command in pipeline))
    # The writer, four reads' parts on the dirty key's shard, three writes: all sent at once.
    # (Waiting behind each read, the writes and later reads would not be in yet.)
    wait_held(client, 1 + 4 + 3)
    assert_nothing_sent(writer, reader)
    gate.open()
    assert writer.read_reply() == b"+OK\r\n"
    assert [decode(reader.read_reply())[0] for _ in pipeline] == [
        [b"f", b"new"], b"OK", [b"new", b"f"], 1, [b"f", b"new", b"1"], b"OK", [b"7", b"f", b"new"]]


def test_pipelined_cross_shard_reads_wait_for_a_cross_shard_write_they_find_locked(gated):
    """A batch of reads that finds a key locked by a cross-shard MSET (its records wait
    for the gate) locks shard after shard instead; every read then sees the whole MSET,
    once it is durable, never half of it."""
    srv, gate, client = gated
    first, other_shard = keys_on_different_shards(2)
    mset_across_shards(client, {first: "f", other_shard: "o"})
    waits = client.info("persistence")["xshard_read_waits"]
    gate.close()
    writer = send(srv, "MSET", first, "f2", other_shard, "o2")
    wait_held(client, 1)   # its PREPARE (or decision) record waits for the gate
    assert client.info("persistence")["xshard_locked_keys"] == 2  # its keys locked on both shards
    reader = RawConn(srv.port)
    reader.send_raw(b"".join(_encode(("MGET", other_shard, first)) for _ in range(4)))
    deadline = time.monotonic() + HELD_TIMEOUT_S
    while client.info("persistence")["xshard_read_waits"] == waits:
        assert time.monotonic() < deadline, "the reads never found the MSET's locks"
        time.sleep(0.01)
    assert_nothing_sent(writer, reader)
    gate.open()
    assert writer.read_reply() == b"+OK\r\n"
    assert [decode(reader.read_reply())[0] for _ in range(4)] == [[b"o2", b"f2"]] * 4


def test_exists_and_sunion_wait_for_a_dirty_key(gated):
    srv, gate, client = gated
    client.sadd("{s}a", "x")
    client.set("{s}k", "v")
    writer = dirty_write(srv, client, gate, "SADD", "{s}b", "x")
    exists = send(srv, "EXISTS", "{s}k", "{s}b")
    sunion = send(srv, "SUNION", "{s}a", "{s}b")
    check_held_then_released(client, gate, writer, [exists, sunion], [2, [b"x"]])


def test_exec_reply_waits_for_its_record_and_for_dirty_reads(gated):
    srv, gate, client = gated
    client.set("{x}clean", "c")
    writer = dirty_write(srv, client, gate, "SET", "{x}dirty", "d")
    reads = RawConn(srv.port)
    assert reads.call("MULTI") == b"+OK\r\n"
    assert reads.call("GET", "{x}clean") == b"+QUEUED\r\n"
    assert reads.call("GET", "{x}dirty") == b"+QUEUED\r\n"
    reads.send_raw(_encode(("EXEC",)))
    writes = RawConn(srv.port)
    assert writes.call("MULTI") == b"+OK\r\n"
    assert writes.call("INCR", "{x}n") == b"+QUEUED\r\n"
    writes.send_raw(_encode(("EXEC",)))
    check_held_then_released(client, gate, writer, [reads, writes], [[b"c", b"d"], [1]])


def test_blpop_served_by_a_pending_push_waits_for_it(gated):
    srv, gate, client = gated
    popper = send(srv, "BLPOP", "{b}list", "0")
    deadline = time.monotonic() + HELD_TIMEOUT_S
    while client.info("clients")["blocked_clients"] < 1:
        assert time.monotonic() < deadline, "BLPOP never blocked"
        time.sleep(0.01)
    pusher = dirty_write(srv, client, gate, "RPUSH", "{b}list", "item")
    check_held_then_released(client, gate, pusher, [popper], [[b"{b}list", b"item"]])


def test_sort_by_and_get_patterns_wait_for_dirty_keys(gated):
    srv, gate, client = gated
    client.rpush("{o}ids", "1", "2")
    client.mset({"{o}w_1": "2", "{o}w_2": "1", "{o}v_1": "a", "{o}v_2": "b"})
    writer = dirty_write(srv, client, gate, "SET", "{o}w_1", "0")
    by = send(srv, "SORT", "{o}ids", "BY", "{o}w_*")
    # SORT with patterns runs as a cross-shard transaction through the router (its pattern
    # keys may live anywhere): once the first holds its keys' locks (its lock on the dirty
    # key answers once that is durable: held), the second waits for them, so the writer's
    # and the first SORT's replies are the ones held. (Sent before the first is in, the
    # second could run first, on clean keys only, and answer at once.)
    wait_held(client, 2)
    get = send(srv, "SORT_RO", "{o}ids", "GET", "{o}v_*")
    check_held_then_released(client, gate, writer, [by, get], [[b"1", b"2"], [b"a", b"b"]], held=2)


def test_keyless_reads_wait_for_everything_pending(gated):
    srv, gate, client = gated
    key = "{k}only"
    slot = client.execute_command("CLUSTER", "KEYSLOT", key)
    writer = dirty_write(srv, client, gate, "SET", key, "v")
    readers = [send(srv, "DBSIZE"), send(srv, "KEYS", "*"), send(srv, "SCAN", "0"),
               send(srv, "RANDOMKEY"), send(srv, "CLUSTER", "COUNTKEYSINSLOT", slot),
               send(srv, "CLUSTER", "GETKEYSINSLOT", slot, "10")]
    check_held_then_released(client, gate, writer, readers,
                             [1, [key.encode()], [b"0", [key.encode()]], key.encode(), 1,
                              [key.encode()]])


def test_async_mode_holds_writes_once_the_unsynced_window_is_exceeded(server_factory, tmp_path):
    gate = Gate(tmp_path / "gate")
    max_unsynced_ms = 300
    config = write_config(tmp_path, durability="async", max_unsynced_ms=max_unsynced_ms,
                          test_fsync_gate_path=str(gate.path))
    srv = server_factory(shards=1, extra_args=("--config", config))
    client = srv.client()
    gate.close()
    first = RawConn(srv.port)
    assert first.call("SET", "a", "1") == b"+OK\r\n"   # inside the window: acknowledged at once
    time.sleep(2 * max_unsynced_ms / 1000)
    late = send(srv, "SET", "b", "2")
    wait_held(client, 1)
    assert_nothing_sent(late)
    gate.open()
    assert late.read_reply() == b"+OK\r\n"
    assert client.mget(["a", "b"]) == [b"1", b"2"]



def test_info_keyspace_waits_for_everything_pending(gated):
    """INFO keyspace counts keys, a keyless read like DBSIZE: held while any record is
    pending. INFO persistence (what wait_held reads) still answers at once."""
    srv, gate, client = gated
    writer = dirty_write(srv, client, gate, "SET", "{i}only", "v")
    readers = [send(srv, "INFO", "keyspace"), send(srv, "INFO"), send(srv, "INFO", "everything")]
    wait_held(client, 1 + len(readers))
    assert_nothing_sent(writer, *readers)
    gate.open()
    assert writer.read_reply() == b"+OK\r\n"
    for reader in readers:
        text = decode(reader.read_reply())[0]
        assert b"db0:keys=1,expires=0" in text, text


def test_xread_served_by_a_pending_xadd_waits_for_it(gated):
    """A blocked XREAD writes nothing when served, but its reply carries the XADD
    that woke it: it leaves only once that XADD is durable."""
    srv, gate, client = gated
    client.xadd("{x}s", {"f": "old"}, id="1-0")
    reader = send(srv, "XREAD", "BLOCK", "0", "STREAMS", "{x}s", "$")
    deadline = time.monotonic() + HELD_TIMEOUT_S
    while client.info("clients")["blocked_clients"] < 1:
        assert time.monotonic() < deadline, "XREAD never blocked"
        time.sleep(0.01)
    writer = dirty_write(srv, client, gate, "XADD", "{x}s", "2-0", "f", "new")
    check_held_then_released(client, gate, writer, [reader], [[[b"{x}s", [[b"2-0", [b"f", b"new"]]]]]])


def test_keyspace_notification_waits_for_the_write_to_be_durable(gated):
    """A notification shows a write as a read would: it must not reach a subscriber
    before the record holding the write is durable (it then arrives before the
    write's reply, as in Redis)."""
    srv, gate, client = gated
    client.config_set("notify-keyspace-events", "KEA")
    try:
        subscriber = RawConn(srv.port)
        assert decode(subscriber.call("SUBSCRIBE", "__keyspace@0__:{n}k"))[0] == [
            b"subscribe", b"__keyspace@0__:{n}k", 1]
        writer = dirty_write(srv, client, gate, "SET", "{n}k", "v")
        assert_nothing_sent(writer, subscriber)
        gate.open()
        assert decode(subscriber.read_reply())[0] == [b"message", b"__keyspace@0__:{n}k", b"set"]
        assert writer.read_reply() == b"+OK\r\n"
    finally:
        client.config_set("notify-keyspace-events", "")
