"""What held a loop during a big SET or LRANGE (issue 11 §4, session 9): each is
checked by counts and bytes, not times (scripts/large_values.py measures the stalls).

- a read into a big argument's buffer is bounded (bigbuf.FILL_READ_BYTES), where
  one recv of a 512 MiB space went on copying while the client kept sending;
- send_batch lets other tasks run after every piece of a large message, where it
  sent piece after piece in one turn while the socket took them;
- big values are freed by shards/lazyfree.py's reaper, off the loop, once nobody
  else holds them (INFO lazyfreed_objects), where a 512 MiB free held the GIL 40-60 ms;
- LRANGE of a big list reads the list a chunk per turn (chunked.DequeRange) where it
  copied it whole first (5M items: 55-130 ms), and a write to that list meanwhile
  changes a copy (copy-on-write), so the reply is still the list as the command saw it;
- (session 10) the log segments a snapshot released (a 512 MiB record's among them)
  are dropped in a worker thread, where the manifest's and directory's fsyncs and the
  unlink ran in the loop.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from types import SimpleNamespace

import redis
import trio

from durakv.shards import chunked, lazyfree
from durakv.shards import shard as shard_module
from durakv.shards.bigbuf import FILL_READ_BYTES, Filling
from durakv.shards.chunked import CHUNKED_MIN_ITEMS, ChunkedArray, DequeRange
from durakv.shards.context import Ctx
from durakv.shards.framelink import send_batch
from durakv.shards.frames import PIECE_BYTES, large_request
from durakv.shards.keyspace import Keyspace
from durakv.shards.process import RouterConn
from durakv.shards.resp import encode
from durakv.shards.t_list import ListValue, lrange, lset, rpush

MIB = 1024 * 1024
WAIT_S = 20.0  # generous bound for the reaper thread on a loaded machine


def until(predicate, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_a_read_into_a_big_argument_takes_at_most_fill_read_bytes():
    """6 MiB wait in the socket: one read takes FILL_READ_BYTES of them, the next the
    rest but the byte left for the parser."""
    a, b = socket.socketpair()
    try:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 * MIB)
        data = os.urandom(FILL_READ_BYTES + 2 * MIB)
        a.sendall(data)  # fits the socket's buffer: all of it is there to read at once
        fill = Filling(len(data))
        got = fill.recv(b)
        assert got == FILL_READ_BYTES
        fill.wrote(got)
        got = fill.recv(b, 1)
        assert got == len(data) - FILL_READ_BYTES - 1
        fill.wrote(got)
        fill.write(b.recv(1))
        assert fill.take() == data
    finally:
        a.close()
        b.close()


class Sink:
    """A socket that takes everything at once: a reader that always keeps up."""

    def __init__(self) -> None:
        self.sent = bytearray()

    def send(self, view) -> int:
        self.sent += view
        return len(view)


def test_send_batch_lets_other_tasks_run_between_pieces():
    """Even when the socket takes every piece at once, a task that counts its turns
    runs between the pieces of a large message."""
    value = os.urandom(6 * PIECE_BYTES)
    request = (1, 7, 2, [b"SET", b"k", value])
    turns_seen: list[int] = []

    async def main() -> None:
        turns = 0

        async def counter() -> None:
            nonlocal turns
            while True:
                turns += 1
                await trio.lowlevel.checkpoint()

        def between() -> None:
            turns_seen.append(turns)

        sink = Sink()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(counter)
            await trio.lowlevel.checkpoint()  # the counter runs once first
            await send_batch(sink, [request], [0], large_request, between=between)  # type: ignore[arg-type]
            nursery.cancel_scope.cancel()
        assert sink.sent.endswith(value[-PIECE_BYTES:])

    trio.run(main)
    assert len(turns_seen) == 6
    # One scheduling batch per piece, in each of which the counter runs once (before
    # or after the sender: trio shuffles a batch); all in one batch before the change.
    assert turns_seen[-1] - turns_seen[0] >= len(turns_seen) - 2, turns_seen


def test_reaper_frees_a_big_value_once_nobody_else_holds_it():
    value = os.urandom(MIB) * (lazyfree.LAZY_FREE_MIN_BYTES // MIB + 1)
    still_used = memoryview(value)  # as a reply streaming it would hold it
    freed = lazyfree.stats.freed
    lazyfree.drop(value)
    lazyfree.drop(os.urandom(1024))  # small: not the reaper's
    del value
    until(lambda: lazyfree.stats.held == 1, "the reaper to hold the value")
    time.sleep(5 * lazyfree.POLL_S)
    assert lazyfree.stats.freed == freed, "freed while a view still read it"
    assert still_used[-1] == still_used.obj[-1]
    still_used.release()
    del still_used
    until(lambda: lazyfree.stats.freed == freed + 1, "the reaper to free the value")
    assert lazyfree.stats.held == 0


def stats_field(r: redis.Redis, name: str) -> int:
    return int(r.info("all")[name])


def test_big_values_are_freed_off_the_loop_by_router_and_shard(server_factory):
    """A big SET through the router: the router's copy, once forwarded, and the
    shard's value, once overwritten and then deleted, go to the reaper."""
    srv = server_factory(shards=2)
    r = redis.Redis(port=srv.port)
    size = lazyfree.LAZY_FREE_MIN_BYTES + MIB
    first = os.urandom(MIB) * (size // MIB)
    assert r.set("big", first)
    until(lambda: stats_field(r, "lazyfreed_objects") == 1, "the router to free its forwarded copy")
    second = first[::-1]
    assert r.set("big", second)
    until(lambda: stats_field(r, "lazyfreed_objects") == 3, "router copy and shard's overwritten value")
    assert r.get("big") == second
    assert r.delete("big") == 1
    until(lambda: stats_field(r, "lazyfreed_objects") == 4, "the deleted value")
    assert stats_field(r, "lazyfree_pending_objects") == 0
    assert r.get("big") is None
    assert r.set("small", b"v") and r.get("small") == b"v"


# --- LRANGE of a big list: read from the list across turns, copy-on-write ------------------


def test_deque_range_reads_any_range_in_chunks(monkeypatch):
    """Forward, backward (near the tail) and middle ranges, with the skip to the
    start spread over several steps: the same bytes as the list's slice encoded at once."""
    monkeypatch.setattr(chunked, "SKIP_ITEMS", 7)
    monkeypatch.setattr(chunked, "CHUNK_ITEMS", 5)
    items = ListValue(b"e%d" % i for i in range(100))
    for first, count in ((0, 100), (3, 50), (60, 40), (90, 9), (45, 10), (0, 1), (99, 1)):
        span = DequeRange(items, first, count)
        assert chunked.being_read[id(items)] == 1
        got = chunked.encode_all(ChunkedArray(span, 2, b"*%d\r\n" % count))
        assert got == encode(list(items)[first : first + count], 2), (first, count)
        assert id(items) not in chunked.being_read, "closed once read"
    DequeRange(items, 1, 2)  # dropped unread: closed all the same
    assert id(items) not in chunked.being_read


def test_lrange_of_a_big_list_reads_it_lazily_and_writes_copy_it():
    """The handler returns a DequeRange of the list itself (no copy of its items);
    a write while it is open changes a copy put at the key, and the range still
    reads the list as it was."""
    db = Keyspace()
    original = [b"e%d" % i for i in range(CHUNKED_MIN_ITEMS + 10)]
    db.put(b"list", ListValue(original))
    db.set_expire(b"list", 2**62)
    ctx = Ctx(db, None)  # type: ignore[arg-type]  # the list commands here read no shard state
    ctx.proto = 2
    ctx.chunks = True
    span = lrange(ctx, [b"LRANGE", b"list", b"-%d" % CHUNKED_MIN_ITEMS, b"-1"])
    assert type(span) is DequeRange and span.deque is db.data[b"list"] and span.backwards
    lset(ctx, [b"LSET", b"list", b"-1", b"changed"])
    rpush(ctx, [b"RPUSH", b"list", b"more"])
    now = db.data[b"list"]
    assert now is not span.deque and list(now)[-2:] == [b"changed", b"more"]
    assert b"list" in db.expires, "the copy keeps the TTL"
    assert chunked.encode_all(ChunkedArray(span, 2, b"*%d\r\n" % len(span))) == encode(original[10:], 2)
    before = db.data[b"list"]
    rpush(ctx, [b"RPUSH", b"list", b"last"])
    assert db.data[b"list"] is before, "no copy once no reply reads it"
    ctx.chunks = False  # inside MULTI or a script: a list, at once, as before
    assert lrange(ctx, [b"LRANGE", b"list", b"0", b"-1"])[-3:] == [b"changed", b"more", b"last"]


def test_big_lrange_is_the_list_as_it_was_via_router_and_shard_port(server_factory):
    """Pipelined with writes of every kind that change the list (same batch on the
    shard: they run before the reply's first chunk is read), each big LRANGE is the
    list as it was; over the shard port the reply is joined across turns too."""
    srv = server_factory(shards=1)
    count = CHUNKED_MIN_ITEMS + 20_000
    elements = [b"element-with-some-padding-%09d" % i for i in range(count)]
    for client in (redis.Redis(port=srv.port), redis.Redis(port=srv.shard_port(0))):
        client.delete("list")
        pipe = client.pipeline(transaction=False)
        for first in range(0, count, 10_000):
            pipe.rpush("list", *elements[first : first + 10_000])
        pipe.execute()
        before = client.info("stats")["chunked_replies"]
        pipe = client.pipeline(transaction=False)
        pipe.lrange("list", 0, -1).ltrim("list", 1, -2).lrange("list", -CHUNKED_MIN_ITEMS - 3, -1)
        pipe.lrem("list", 0, elements[-3]).linsert("list", "BEFORE", elements[5], "x").lrange("list", 3, -3)
        pipe.lmove("list", "list", "LEFT", "RIGHT").lpop("list").lrange("list", 0, 2)
        full, _, tail, removed, inserted, middle, moved, popped, head = pipe.execute()
        assert full == elements
        assert tail == elements[-CHUNKED_MIN_ITEMS - 4 : -1]
        assert removed == 1 and inserted == count - 2
        now = elements[1:5] + [b"x"] + elements[5:-3] + elements[-2:-1]
        assert middle == now[3:-2]
        assert moved == elements[1] and popped == elements[2]
        assert head == now[2:5]
        assert client.info("stats")["chunked_replies"] - before == 3


def test_released_log_segments_are_dropped_off_the_loop(monkeypatch):
    """After a snapshot covers a 512 MiB record, the shard drops its segment: the
    release notice's read, the manifest's fsync, the unlink and the directory's fsync
    ran in the loop (a release_loop step of 25 ms wall with 0.4 ms CPU on the loaded
    machine, and as long as the disk takes for a big segment). They run in a worker
    thread now, with the segment list and the manifest under the log's locks."""
    monkeypatch.setattr(shard_module, "RELEASE_POLL_S", 0.001)
    called_from: list[int] = []

    class Hooks:
        def release_segments(self, shard_dir: str, wal: object) -> list[str]:
            called_from.append(threading.get_ident())
            return []

    shard = SimpleNamespace(write_error=None, config=SimpleNamespace(log_backend="local"), snapshots=Hooks(),
                            dir="unused", wal=None)

    async def main() -> int:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(shard_module.Shard.release_loop, shard)
            while not called_from:
                await trio.sleep(0.001)
            nursery.cancel_scope.cancel()
        return threading.get_ident()

    loop_thread = trio.run(main)
    assert called_from and called_from[0] != loop_thread


def _drained_socketpair() -> tuple[socket.socket, bytearray, threading.Thread]:
    """A socket whose peer a thread reads into `received` until the socket is closed."""
    a, b = socket.socketpair()
    received = bytearray()

    def drain() -> None:
        while data := b.recv(1 << 20):
            received.extend(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    return a, received, reader


def _write_until_drained(a: socket.socket, reader: threading.Thread, start_writer, busy) -> None:
    """Run the writer task `start_writer(nursery)` starts over `a` until `busy()` is
    false, then close `a` and wait for the drained peer to read everything."""
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            start_writer(nursery)
            while busy():
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()

    a.setblocking(False)
    trio.run(main)
    a.close()
    reader.join(WAIT_S)


def test_a_small_reply_queued_with_a_large_one_passes_it_on_the_link():
    """A shard's router link: a small reply queued in the same turn as a large reply,
    after it, is written before the large reply's last piece (it waited for all of
    them: a GET of the shard's other client stalled ~0.7 s behind a 512 MiB GET)."""
    marker = b"+passes-the-large-one\r\n"
    big = b"$%d\r\n" % (3 * PIECE_BYTES) + b"x" * (3 * PIECE_BYTES) + b"\r\n"
    a, received, reader = _drained_socketpair()
    conn = RouterConn(a, None)  # type: ignore[arg-type]  # the receiver is not used by the writer
    conn.send([(1, big), (2, marker)])
    _write_until_drained(a, reader, lambda nursery: nursery.start_soon(conn.writer),
                         lambda: conn.outbox.items or conn.sending)
    assert received.find(marker) >= 0
    assert received.find(marker) < len(received) - PIECE_BYTES, "the small reply waited for the large one's pieces"


def test_a_small_request_queued_with_a_large_one_passes_it_on_the_link():
    """The router's link to a shard: requests of other clients in the same batch as
    a large request, after it, are written before the large one's last piece (they
    waited for all of them: a same-shard GET stalled 146-379 ms at the end of a 512 MiB
    SET's upload), while the large one's own client and the router's own requests
    (client id 0) keep their place behind it."""
    from durakv.server.links import ShardLink

    router = SimpleNamespace(config=SimpleNamespace(replicas=0), large_requests=1,
                             poller=SimpleNamespace(in_turn=True), scripts_in_flight=0)
    link = ShardLink(router, 0, "/nonexistent")
    a, received, reader = _drained_socketpair()
    big = b"x" * (3 * PIECE_BYTES)
    link.up = True
    for cid, argv in ((1, [b"SET", b"big", big]), (2, [b"GET", b"other-client-passes"]),
                      (1, [b"GET", b"own-client-waits"]), (0, [b"UNWATCH-internal-waits"]),
                      (3, [b"GET", b"third-client-passes"])):
        link.submit(SimpleNamespace(id=cid) if cid else None, 2, argv)

    link.sock = a
    _write_until_drained(a, reader, lambda nursery: nursery.start_soon(link._sender, nursery.cancel_scope),
                         lambda: link._outbox.items or link._sending)
    big_end = received.rfind(b"x" * 64) + 64
    for passes in (b"other-client-passes", b"third-client-passes"):
        assert 0 <= received.find(passes) < big_end - PIECE_BYTES, f"{passes!r} waited for the large one's pieces"
    for waits in (b"own-client-waits", b"UNWATCH-internal-waits"):
        assert received.find(waits) > big_end, f"{waits!r} overtook the large request"
    assert received.find(b"own-client-waits") < received.find(b"UNWATCH-internal-waits")
