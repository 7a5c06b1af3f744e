"""The shard process: its listening socket for routers, one task per router
connection (frames in, one frame of replies out per turn), and run_shard, which
opens the shard and starts its background tasks."""

from __future__ import annotations

import logging
import os
import select
import socket
from typing import Any, Protocol

import trio

from durakv.log.layout import ensure_run_dir, shard_socket_path
from durakv.shards import failure, sdnotify
from durakv.shards.config import Config
from durakv.shards.frames import (
    INTERNAL_PREFIX, PROTO_INTERNAL, Request, encode_frame, encode_internal, request_batch_decoder, split_frames,
)
from durakv.shards.luaenv import Run, scripting_of
from durakv.shards.resp import encode
from durakv.shards.t_function import stats
from durakv.shards.shard import Shard, SnapshotHooks
from durakv.shards.unixsock import bind_unix, peer_allowed

logger = logging.getLogger("durakv.shard")

RECV_BYTES = 1024 * 1024
BUSY_SEND_WAIT_S = 1.0
ROUTER_CONNECTIONS_MAX = 64


class ClientPort(Protocol):
    """A shard's own port for Redis clients (server/node.py: the shard as a Redis
    Cluster node). Passed in by the process entry point, as SnapshotHooks is, so
    shards/ never imports server/. Started in the shard's nursery once the log is
    replayed; calls task_status.started() when it accepts clients."""

    async def __call__(self, shard: Shard, task_status: Any = ...) -> None: ...


class RouterConn:
    """One router's connection: replies queue here and leave as one frame per turn."""

    __slots__ = ("sock", "outbox", "wake", "buf", "sending", "deferred")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.outbox: list[tuple[int, bytes]] = []
        self.wake = trio.Event()
        self.buf = bytearray()  # bytes received, not yet a complete frame
        self.sending = False  # a frame is partly written: nothing else may be written now
        # Internal requests that arrived while a script was busy: run after it.
        self.deferred: list[Request] = []

    def send(self, replies: list[tuple[int, bytes]]) -> None:
        if not self.outbox:
            self.wake.set()
        self.outbox.extend(replies)

    async def writer(self) -> None:
        while True:
            await self.wake.wait()
            self.wake = trio.Event()
            if self.outbox:
                batch = self.outbox
                self.outbox = []
                self.sending = True
                try:
                    await send_all(self.sock, encode_frame(batch))
                except OSError as e:
                    logger.warning("shard: router connection lost while replying: %s", e)
                    return  # the reader sees the end of the connection and closes it
                finally:
                    self.sending = False


async def serve_router(shard: Shard, sock: socket.socket) -> None:
    chunk = bytearray(RECV_BYTES)  # reused: a fresh 1 MiB bytes per recv costs an mmap
    view = memoryview(chunk)
    conn = RouterConn(sock)
    buf = conn.buf
    shard.routers += 1
    ROUTER_CONNS.add(conn)
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
                replies = []
                for frame in split_frames(buf):
                    replies.extend(shard.execute_batch(conn, request_batch_decoder.decode(frame)))
                while conn.deferred:
                    deferred, conn.deferred = conn.deferred, []
                    replies.extend(shard.execute_batch(conn, deferred))
                if replies:
                    conn.send(replies)
            nursery.cancel_scope.cancel()
    finally:
        ROUTER_CONNS.discard(conn)
        shard.routers -= 1
        sock.close()


# The open router connections of this shard process, for serve_while_busy.
ROUTER_CONNS: set[RouterConn] = set()
_BUSY_KILLS = {b"script": True, b"function": False}


def serve_while_busy(run: Run) -> None:
    """Called from a script's Lua hook once it runs past busy-reply-threshold (Redis'
    processEventsWhileBlocked): read what the routers sent since, act on SCRIPT KILL
    and FUNCTION KILL, answer every other command BUSY, and keep internal requests
    for after the script. The trio loop is blocked meanwhile, so this reads and
    writes the sockets directly (never in the middle of a frame the writer started)."""
    chunk = bytearray(RECV_BYTES)
    for conn in list(ROUTER_CONNS):
        while True:
            try:
                size = conn.sock.recv_into(chunk)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            if not size:
                break
            conn.buf += memoryview(chunk)[:size]
        replies = []
        for frame in split_frames(conn.buf):
            for req in request_batch_decoder.decode(frame):
                argv = req.argv
                if argv[0][:1] == INTERNAL_PREFIX:
                    conn.deferred.append(req)
                    continue
                replies.append((req.rid, _busy_reply(run, argv, req.proto)))
        if replies:
            if conn.sending:
                conn.send(replies)
            else:
                _send_now(conn.sock, bytes(encode_frame(replies)))


def _busy_reply(run: Run, argv: list[bytes], proto: int) -> bytes:
    """A request's reply while `run` is busy: KILL acts, FUNCTION STATS answers, the rest is BUSY."""
    if len(argv) == 2 and argv[0].lower() == b"function" and argv[1].lower() == b"stats":
        value = stats(scripting_of(run.ctx.db))
        return encode_internal(True, value) if proto == PROTO_INTERNAL else encode(value, proto)
    status = _busy_status(run, argv)
    is_kill = len(argv) == 2 and argv[0].lower() in _BUSY_KILLS and argv[1].lower() == b"kill"
    if proto != PROTO_INTERNAL:
        return status + b"\r\n"
    return encode_internal(True, status) if is_kill else encode_internal(False, status[1:])


def _busy_status(run: Run, argv: list[bytes]) -> bytes:
    """The RESP status line a request gets while `run` is busy."""
    name = argv[0].lower()
    if len(argv) == 2 and name in _BUSY_KILLS and argv[1].lower() == b"kill":
        if _BUSY_KILLS[name] != run.is_eval:
            return b"-" + run.busy_error()
        if run.wrote():
            return (b"-UNKILLABLE Sorry the script already executed write commands against the dataset. "
                    b"You can either wait the script termination or kill the server in a hard way using "
                    b"the SHUTDOWN NOSAVE command.")
        run.killed = True
        return b"+OK"
    return b"-" + run.busy_error()


def _send_now(sock: socket.socket, data: bytes) -> None:
    """Write a whole frame on a non-blocking socket from synchronous code."""
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view):]
        except BlockingIOError:
            select.select([], [sock], [], BUSY_SEND_WAIT_S)
        except OSError as e:
            logger.warning("shard: router connection lost while answering BUSY: %s", e)
            return


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


async def run_shard(config: Config, index: int, snapshots: SnapshotHooks | None = None,
                    client_port: ClientPort | None = None) -> None:
    shard = Shard(config, index, snapshots)
    os.makedirs(shard.dir, exist_ok=True)
    shard.open_log()  # holds the log lock from here: a socket file left at our path is stale
    scripting_of(shard.db).on_busy = serve_while_busy
    ensure_run_dir(config.data_dir)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bind_unix(listener, shard_socket_path(config.data_dir, index))
    listener.listen(ROUTER_CONNECTIONS_MAX)
    listener.setblocking(False)
    failure.clear(config.data_dir, index)  # serving again: the router stops reporting a failure
    first, last = shard.slot_range
    try:
        async with trio.open_nursery() as nursery:
            if client_port is not None:
                await nursery.start(client_port, shard)
            logger.info("shard %d ready: slots %d-%d, %d keys, durability %s, pid %d",
                        index, first, last, len(shard.db.data), config.durability, os.getpid())
            sdnotify.notify(b"READY=1")
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
