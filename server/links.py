"""The router's side of the router <-> shard frame protocol: one ShardLink per
shard, batching every request queued in a scheduling turn into one frame.

When a shard dies, each request waiting on it ends one of two ways. A request
that never reached the socket (still queued, or its frame not one byte written)
surely did not run: it gets the definite `-CLUSTERDOWN The cluster is down`. A
request whose frame was written, fully or partly, may have run and even been
made durable (a write is in the page cache before its fsync returns): its pending
reply is filled with LOST, and the client's connection is closed once every reply
before it has been sent (server/client.py), as a crashed Redis would. That holds
for reads too (one rule, no guess at which commands had effects), for EXEC, and
for a blocking pop parked on the shard (a push may have served it durably
before the crash). Requests with no client (UNWATCH, unblock) are dropped.
"""

from __future__ import annotations

import logging
import socket
from typing import Callable

import trio

from durakv.log.layout import shard_socket_path
from durakv.shards.frames import RequestTuple, encode_frame, reply_batch_decoder, split_frames
from durakv.shards.unixsock import connect_unix, peer_allowed

logger = logging.getLogger("durakv.router")

RECV_BYTES = 1024 * 1024
RECONNECT_BACKOFF_MIN_S = 0.005
RECONNECT_BACKOFF_MAX_S = 0.05

ERR_SHARD_DOWN = b"-CLUSTERDOWN The cluster is down\r\n"
# The outcome of a request is unknown: it was handed to a shard that died before
# replying. Compared by identity; the text only matters if a callback forgets to
# check, and then it still reads as an error rather than a value.
LOST = b"-ERR the shard died with this command in flight; its outcome is unknown\r\n"


class Pending:
    """A reply not in yet: a place in a client's ordered reply queue, filled when a
    shard (or a timer, or a merge) completes it. (A hash slot is a `slot`; a
    reply waited for is a `pending`.)"""

    __slots__ = ("data", "client", "on_fill")

    def __init__(self, client, on_fill: Callable | None = None) -> None:
        self.data: bytes | None = None
        self.client = client
        self.on_fill = on_fill

    def fill(self, data: bytes) -> None:
        if self.on_fill is not None:
            self.on_fill(self, data)
        else:
            self.data = data
            self.client.reply_ready()


def _deliver(frames: list[bytes], in_flight: dict[int, Pending]) -> None:
    """Fill the pending replies a shard's frames answer. A function of its own so
    that no local of the receiver keeps the last frame and reply (possibly 100 MB)
    alive while it waits for the next input."""
    for frame in frames:
        for rid, reply in reply_batch_decoder.decode(frame):
            in_flight.pop(rid).fill(reply)


class ShardLink:
    def __init__(self, router, index: int, data_dir: str) -> None:
        self.router = router
        self.index = index
        self.address = shard_socket_path(data_dir, index)
        self.sock: socket.socket | None = None
        self.up = False
        self.ever_up = trio.Event()
        self._queue: list[RequestTuple] = []
        self._pending: dict[int, Pending] = {}
        # The batch the sender took from the queue, until its first byte is written.
        self._unsent: list[RequestTuple] = []
        self._next_rid = 1
        self._wake = trio.Event()
        self.frames_sent = 0
        self.requests_sent = 0

    def submit(self, client, proto: int, argv: list[bytes], pending: Pending | None = None) -> Pending:
        """Queue a request for this shard; returns the pending reply it will fill."""
        if pending is None:
            pending = Pending(client)
        if not self.up:
            pending.fill(ERR_SHARD_DOWN)
            return pending
        rid = self._next_rid
        self._next_rid = rid + 1
        self._pending[rid] = pending
        self._queue.append((rid, client.id if client is not None else 0, proto, argv))
        if len(self._queue) == 1:
            self._wake.set()
        return pending

    async def run(self) -> None:
        """Connect, serve, and on failure fail everything in flight and retry."""
        backoff_s = RECONNECT_BACKOFF_MIN_S
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                connect_unix(sock, self.address)
                if not peer_allowed(sock, f"router link to shard {self.index}"):
                    raise PermissionError(f"{self.address} is served by another user")
            except OSError:
                sock.close()
                await trio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, RECONNECT_BACKOFF_MAX_S)
                continue
            backoff_s = RECONNECT_BACKOFF_MIN_S
            sock.setblocking(False)
            self.sock = sock
            self.up = True
            self.ever_up.set()
            logger.info("router: connected to shard %d", self.index)
            self.router.on_link_change()
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._sender, nursery.cancel_scope)
                    await self._receiver()
                    nursery.cancel_scope.cancel()
            finally:
                self.up = False
                self.sock = None
                sock.close()
                self._fail_in_flight()
                self.router.on_link_change()
            logger.warning("router: lost shard %d; answering its slots with CLUSTERDOWN", self.index)

    def _fail_in_flight(self) -> None:
        """The shard is gone: a definite error for what never reached its socket,
        LOST for what did (see the module docstring)."""
        in_flight = self._pending
        never_sent = {request[0] for request in self._queue}
        never_sent.update(request[0] for request in self._unsent)
        self._pending = {}
        self._queue = []
        self._unsent = []
        lost = 0
        for rid, pending in in_flight.items():
            if rid in never_sent:
                pending.fill(ERR_SHARD_DOWN)
            else:
                lost += 1
                pending.fill(LOST)
        if lost:
            logger.warning("router: shard %d died with %d requests in flight; their clients are disconnected "
                        "(outcome unknown), %d queued requests answered CLUSTERDOWN",
                        self.index, lost, len(never_sent))

    async def _sender(self, cancel_scope: trio.CancelScope) -> None:
        sock = self.sock
        assert sock is not None, "sender started before the link connected"
        while True:
            if not self._queue:
                await self._wake.wait()
                self._wake = trio.Event()
            batch = self._queue
            self._queue = []
            self._unsent = batch
            self.frames_sent += 1
            self.requests_sent += len(batch)
            view = memoryview(encode_frame(batch))
            while view:
                try:
                    sent = sock.send(view)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    cancel_scope.cancel()
                    return
                if sent:
                    self._unsent = []
                view = view[sent:]
                if view:
                    await trio.lowlevel.wait_writable(sock)

    async def _receiver(self) -> None:
        sock = self.sock
        assert sock is not None, "receiver started before the link connected"
        buf = bytearray()
        chunk = bytearray(RECV_BYTES)  # reused: a fresh 1 MiB bytes per recv costs an mmap
        view = memoryview(chunk)
        in_flight = self._pending
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                size = sock.recv_into(chunk)
            except BlockingIOError:
                continue
            except OSError as e:
                logger.warning("router: shard %d link error: %s", self.index, e)
                return
            if not size:
                return
            buf += view[:size]
            _deliver(split_frames(buf), in_flight)
            self.router.flush_ready_clients()
