"""Clients blocked in BLPOP-style commands, waiting on keys without blocking
the shard (Redis' blocked.c).

A blocking handler that finds nothing to pop returns `Block`; the shard parks
the request as a Waiter on each of its keys. Any change to such a key makes it
ready; after the command that changed it, the shard retries the waiters of
each ready key in the order they blocked (FIFO per key), and a waiter served
on one key leaves the queues of all its keys. Timeouts, CLIENT UNBLOCK and the
client's disconnection also end a wait. When served, the command runs through
its handler like any other, so its effect is the non-blocking pop it performed.
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import Callable

from durakv.shards.numbers import parse_float
from durakv.shards.resp import ReplyError, fixed_error

MAX_BLOCKED_CLIENTS = 100_000
ERR_TIMEOUT_NOT_FLOAT = fixed_error(b"ERR timeout is not a float or out of range")
ERR_TIMEOUT_NEGATIVE = fixed_error(b"ERR timeout is negative")


class Block:
    """Returned by a blocking handler: park me on these keys until served, or
    reply `timeout_reply` when `deadline_ms` (0: never) passes.

    `serve(ctx, key)` runs when `key` changed: it returns the reply after taking
    from that very key, or None when the key does not (or no longer) hold(s)
    the type the command waits for, in which case the client keeps waiting."""

    __slots__ = ("keys", "deadline_ms", "timeout_reply", "serve")

    def __init__(self, keys: list[bytes], deadline_ms: int, timeout_reply: object,
                 serve: Callable[[object, bytes], object | None]) -> None:
        self.keys = keys
        self.deadline_ms = deadline_ms
        self.timeout_reply = timeout_reply
        self.serve = serve


def parse_timeout_ms(text: bytes, now_ms: int) -> int:
    """A blocking timeout in seconds (float) as an absolute deadline; 0 = forever."""
    seconds = parse_float(text)
    if seconds is None or seconds * 1000 > 2**63 - 1 - now_ms:
        raise ERR_TIMEOUT_NOT_FLOAT
    if seconds < 0:
        raise ERR_TIMEOUT_NEGATIVE
    if seconds == 0:
        return 0
    return now_ms + max(int(seconds * 1000), 1)


class Waiter:
    __slots__ = ("conn", "rid", "cid", "proto", "argv", "keys", "deadline_ms", "timeout_reply", "serve",
                 "active")

    def __init__(self, conn: object, rid: int, cid: int, proto: int, argv: list[bytes], block: Block) -> None:
        self.conn = conn
        self.rid = rid
        self.cid = cid
        self.proto = proto
        self.argv = argv
        self.keys = block.keys
        self.deadline_ms = block.deadline_ms
        self.timeout_reply = block.timeout_reply
        self.serve = block.serve
        self.active = True


class BlockedClients:
    __slots__ = ("by_key", "by_client", "ready_keys", "_deadlines", "_tiebreak")

    def __init__(self) -> None:
        self.by_key: dict[bytes, deque[Waiter]] = {}
        self.by_client: dict[int, Waiter] = {}
        self.ready_keys: dict[bytes, None] = {}  # insertion-ordered set
        self._deadlines: list[tuple[int, int, Waiter]] = []
        self._tiebreak = 0

    def __len__(self) -> int:
        return len(self.by_client)

    def park(self, waiter: Waiter) -> None:
        if len(self.by_client) >= MAX_BLOCKED_CLIENTS:
            raise ReplyError(b"ERR too many blocked clients")
        assert waiter.cid not in self.by_client, "a client blocks on one command at a time"
        self.by_client[waiter.cid] = waiter
        for key in waiter.keys:
            queue = self.by_key.get(key)
            if queue is None:
                queue = self.by_key[key] = deque()
            queue.append(waiter)
        if waiter.deadline_ms:
            self._tiebreak += 1
            heapq.heappush(self._deadlines, (waiter.deadline_ms, self._tiebreak, waiter))

    def remove(self, waiter: Waiter) -> None:
        waiter.active = False
        self.by_client.pop(waiter.cid, None)
        for key in waiter.keys:
            queue = self.by_key.get(key)
            if queue is None:
                continue
            try:
                queue.remove(waiter)
            except ValueError:
                continue
            if not queue:
                del self.by_key[key]

    def key_changed(self, key: bytes) -> None:
        if key in self.by_key:
            self.ready_keys[key] = None

    def next_deadline_ms(self) -> int:
        heap = self._deadlines
        while heap and not heap[0][2].active:
            heapq.heappop(heap)
        return heap[0][0] if heap else 0

    def expired(self, now_ms: int) -> list[Waiter]:
        out = []
        heap = self._deadlines
        while heap and heap[0][0] <= now_ms:
            _, _, waiter = heapq.heappop(heap)
            if waiter.active:
                self.remove(waiter)
                out.append(waiter)
        return out
