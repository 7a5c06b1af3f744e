"""The shard process: its listening socket for routers, one task per router
connection (frames in, one frame of replies out per turn), and run_shard, which
opens the shard and starts its background tasks."""

from __future__ import annotations

import logging
import os
import socket

import trio

from durakv.log.layout import ensure_run_dir, shard_socket_path
from durakv.shards import failure, sdnotify
from durakv.shards.config import Config
from durakv.shards.frames import encode_frame, request_batch_decoder, split_frames
from durakv.shards.shard import Shard, SnapshotHooks
from durakv.shards.unixsock import bind_unix, peer_allowed

logger = logging.getLogger("durakv.shard")

RECV_BYTES = 1024 * 1024
ROUTER_CONNECTIONS_MAX = 64


class RouterConn:
    """One router's connection: replies queue here and leave as one frame per turn."""

    __slots__ = ("sock", "outbox", "wake")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.outbox: list[tuple[int, bytes]] = []
        self.wake = trio.Event()

    def send(self, replies: list[tuple[int, bytes]]) -> None:
        if not self.outbox:
            self.wake.set()
        self.outbox.extend(replies)

    async def writer(self) -> None:
        while True:
            await self.wake.wait()
            self.wake = trio.Event()
            if self.outbox:
                # No name may hold the batch or its frame while this task waits for
                # the next wake: a 100 MB reply would stay resident until then.
                frame = encode_frame(self.outbox)
                self.outbox = []
                try:
                    await send_all(self.sock, frame)
                except OSError as e:
                    logger.warning("shard: router connection lost while replying: %s", e)
                    return  # the reader sees the end of the connection and closes it
                del frame


async def serve_router(shard: Shard, sock: socket.socket) -> None:
    buf = bytearray()
    chunk = bytearray(RECV_BYTES)  # reused: a fresh 1 MiB bytes per recv costs an mmap
    view = memoryview(chunk)
    conn = RouterConn(sock)
    shard.routers += 1
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.writer)
            while True:
                await trio.lowlevel.wait_readable(sock)
                try:
                    size = sock.recv_into(chunk)
                except BlockingIOError:
                    continue
                except OSError as e:
                    logger.warning("shard %d: router connection error: %s", shard.index, e)
                    break
                if not size:
                    break
                buf += view[:size]
                _execute_frames(shard, conn, buf)
            nursery.cancel_scope.cancel()
    finally:
        shard.routers -= 1
        sock.close()


def _execute_frames(shard: Shard, conn: RouterConn, buf: bytearray) -> None:
    """Execute every complete frame in buf and queue the replies. A function of
    its own so that its locals (the last frame, the replies) are gone while the
    reader waits for more input, rather than keeping a big reply resident."""
    replies = []
    for frame in split_frames(buf):
        replies.extend(shard.execute_batch(conn, request_batch_decoder.decode(frame)))
    if replies:
        conn.send(replies)


async def send_all(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            sent = 0
        view = view[sent:]
        if view:
            await trio.lowlevel.wait_writable(sock)


async def run_shard(config: Config, index: int, snapshots: SnapshotHooks | None = None) -> None:
    shard = Shard(config, index, snapshots)
    os.makedirs(shard.dir, exist_ok=True)
    shard.open_log()  # holds the log lock from here: a socket file left at our path is stale
    ensure_run_dir(config.data_dir)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bind_unix(listener, shard_socket_path(config.data_dir, index))
    listener.listen(ROUTER_CONNECTIONS_MAX)
    listener.setblocking(False)
    failure.clear(config.data_dir, index)  # serving again: the router stops reporting a failure
    first, last = shard.slot_range
    logger.info("shard %d ready: slots %d-%d, %d keys, durability %s, pid %d",
             index, first, last, len(shard.db.data), config.durability, os.getpid())
    sdnotify.notify(b"READY=1")
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(shard.committer)
            nursery.start_soon(shard.active_expire_loop)
            nursery.start_soon(shard.blocked_timeouts)
            if snapshots is not None:
                nursery.start_soon(shard.release_loop)
            while True:
                await trio.lowlevel.wait_readable(listener)
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    continue
                if not peer_allowed(conn, f"shard {index}"):
                    conn.close()
                    continue
                conn.setblocking(False)
                nursery.start_soon(serve_router, shard, conn)
    finally:
        listener.close()
        shard.wal.close()
