"""What held a loop during a big SET (issue 11 §4, session 9): each is checked by
counts, not times (scripts/large_values.py measures the stalls).

- a read into a big argument's buffer is bounded (bigbuf.FILL_READ_BYTES), where
  one recv of a 512 MiB space went on copying while the client kept sending;
- send_batch lets other tasks run after every piece of a large message, where it
  sent piece after piece in one turn while the socket took them;
- big values are freed by shards/lazyfree.py's reaper, off the loop, once nobody
  else holds them (INFO lazyfreed_objects), where a 512 MiB free held the GIL 40-60 ms.
"""

from __future__ import annotations

import os
import socket
import time

import redis
import trio

from durakv.shards import lazyfree
from durakv.shards.bigbuf import FILL_READ_BYTES, Filling
from durakv.shards.framelink import send_batch
from durakv.shards.frames import PIECE_BYTES, large_request

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
