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
from durakv.shards.framelink import FrameReceiver, Large, Outbox, send_batch, tune_socket
from durakv.shards.frames import (
    LARGE_BYTES, Reply, Request, large_reply, large_request_decoder, request_batch_decoder,
)
from durakv.shards.shard import Shard, SnapshotHooks
from durakv.shards.unixsock import bind_unix, peer_allowed

logger = logging.getLogger("durakv.shard")

ROUTER_CONNECTIONS_MAX = 64


class RouterConn:
    """One router's connection: replies queue in its outbox and leave as one frame
    per turn (a large reply as a large frame of its own)."""

    __slots__ = ("sock", "outbox")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.outbox: Outbox[Reply] = Outbox()

    def send(self, replies: list[Reply]) -> None:
        self.outbox.extend(replies)

    async def writer(self) -> None:
        outbox = self.outbox
        while True:
            batch = await outbox.take()
            large = [i for i, reply in enumerate(batch) if len(reply[1]) >= LARGE_BYTES]
            try:
                await send_batch(self.sock, batch, large, large_reply)
            except OSError as e:
                logger.warning("shard: router connection lost while replying: %s", e)
                return  # the reader sees the end of the connection and closes it


async def serve_router(shard: Shard, sock: socket.socket) -> None:
    conn = RouterConn(sock)
    tune_socket(sock)

    def on_frames(items: list[bytes | Large]) -> None:
        """Execute what one read completed; its replies leave as one frame."""
        replies: list[Reply] = []
        for item in items:
            if type(item) is bytes:
                requests = request_batch_decoder.decode(item)
            else:
                assert type(item) is Large, f"frame receiver handed over a {type(item).__name__}"
                rid, cid, proto, argv, positions = large_request_decoder.decode(item.head)
                for position, blob in zip(positions, item.blobs, strict=True):
                    argv[position] = bytes(blob)  # keys and values are bytes in the keyspace
                requests = [Request(rid, cid, proto, argv)]
            replies.extend(shard.execute_batch(conn, requests))
        conn.send(replies)

    shard.routers += 1
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.writer)
            try:
                await FrameReceiver(sock, on_frames).run()
            except (OSError, ValueError) as e:
                logger.warning("shard %d: router connection error: %s", shard.index, e)
            nursery.cancel_scope.cancel()
    finally:
        shard.routers -= 1
        sock.close()


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
