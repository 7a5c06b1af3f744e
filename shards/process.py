"""The shard process: its listening socket for routers, one task per router
connection (frames in, one frame of replies out per turn), and run_shard, which
opens the shard and starts its background tasks."""

from __future__ import annotations

import logging
import os
import socket
import ssl
from typing import Any, Protocol

import trio

from durakv.log.layout import ensure_run_dir, shard_socket_path
from durakv.shards import failure, sdnotify
from durakv.shards.config import Config
from durakv.shards.busy import ROUTER_CONNS, serve_while_busy
from durakv.shards.framelink import FrameReceiver, Large, Outbox, send_all, send_batch, tune_socket
from durakv.shards.frames import (
    EVENTS_RID, LARGE_BYTES, SCRIPTS_EVICTED_CHANNEL, UNCOPIED_REPLY_BYTES, VERB_TRACKING, Reply, Request,
    encode_events, encode_frame,
    encode_frame_parts, large_reply,
    large_request_decoder, request_batch_decoder,
)
from durakv.shards.link_auth import LinkPort, LinkRefused, accept_link, tune_tcp_link
from durakv.shards.link_turn import READY, link_turn
from durakv.shards.link_tls import LinkTls, LinkTlsError, link_context, links_use_tls
from durakv.shards.log_backend import link_secret
from durakv.shards.luaenv import scripting_of
from durakv.shards.malloc_stats import release_free_heap
from durakv.shards.shard import Shard, SnapshotHooks
from durakv.shards.unixsock import bind_unix, peer_allowed

logger = logging.getLogger("durakv.shard")

ROUTER_CONNECTIONS_MAX = 64


class ClientPort(Protocol):
    """A shard's own port for Redis clients (server/node.py: the shard as a Redis
    Cluster node). Passed in by the process entry point, as SnapshotHooks is, so
    shards/ never imports server/. Started in the shard's nursery once the log is
    replayed; calls task_status.started() when it accepts clients."""

    async def __call__(self, shard: Shard, task_status: Any = ...) -> None: ...


class RouterConn:
    """One router's connection. Replies go out as one frame per send, written at
    once when nothing else is being written (no writer task woken); otherwise, and
    for a large reply (a large frame of its own), they queue in the outbox for the
    writer task, which also finishes a frame the socket did not take whole."""

    __slots__ = ("sock", "outbox", "receiver", "sending", "deferred", "_carry")
    takes_pieces = True  # a big bulk reply may come as frames.Pieces: send_batch writes its parts

    def __init__(self, sock: socket.socket, receiver: FrameReceiver) -> None:
        self.sock = sock
        self.outbox: Outbox[Reply] = Outbox()
        self.receiver = receiver
        self.sending = False  # a frame is partly written: nothing else may be written now
        # Internal requests that arrived while a script was busy (shards/busy.py): run after it.
        self.deferred: list[Request] = []
        self._carry: memoryview | None = None  # the unwritten end of a frame send() began

    def send(self, replies: list[Reply]) -> None:
        if not replies:
            return
        # A big value's reply (a Pieces) goes through the writer, which writes its buffers as they are.
        if self.sending or self.outbox.items or any(len(reply[1]) >= UNCOPIED_REPLY_BYTES for reply in replies):
            self.outbox.extend(replies)
            return
        data = encode_frame(replies)
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as e:
            if self.sock.fileno() != -1:  # closed: replies released after it went have no reader
                logger.warning("shard: router connection lost while replying: %s", e)
            return  # the reader sees the end of the connection and closes it
        if sent < len(data):
            self._carry = memoryview(data)[sent:]
            self.sending = True
            self.outbox.wake()

    async def writer(self) -> None:
        outbox = self.outbox
        while True:
            carry = self._carry
            if carry is not None:
                try:
                    await send_all(self.sock, carry)
                except OSError as e:
                    logger.warning("shard: router connection lost while replying: %s", e)
                    return
                self._carry = None
                self.sending = False
                continue
            if not outbox.items:
                await outbox.wait()
                continue
            batch = outbox.clear()
            large = [i for i, reply in enumerate(batch) if len(reply[1]) >= LARGE_BYTES]
            if large and len(batch) - large[0] > len(large):  # an ordinary reply after a large one
                batch, large = _small_first(batch, len(large))
            self.sending = True
            try:
                await send_batch(self.sock, batch, large, large_reply, between=self._between,
                                 frame_parts=encode_frame_parts)
            except OSError as e:
                logger.warning("shard: router connection lost while replying: %s", e)
                return  # the reader sees the end of the connection and closes it
            finally:
                self.sending = False
            del batch  # nothing may keep a sent reply (possibly 100 MB) while the writer waits


    def _between(self) -> list | None:
        """Between the pieces of a large reply: the ordinary replies queued meanwhile,
        as a frame that passes it (the router puts each client's replies in order).
        A large one waits for the next batch: one large message at a time."""
        outbox = self.outbox
        items = outbox.items
        if not items:
            return None
        small = [reply for reply in items if len(reply[1]) < LARGE_BYTES]
        if not small:
            return None
        large = [reply for reply in items if len(reply[1]) >= LARGE_BYTES] if len(small) < len(items) else []
        outbox.items = large
        return encode_frame_parts(small)


async def serve_router(shard: Shard, sock: socket.socket) -> None:
    tune_socket(sock)

    def on_frames(items: list[bytes | Large]) -> None:
        """Execute what one read completed; its replies leave as one frame. Then sync
        if nothing else is ready (shards/link_turn.py)."""
        link_turn(shard.idle_sync, run_frames, items)

    def run_frames(items: list[bytes | Large]) -> None:
        replies: list[Reply] = []
        for item in items:
            if type(item) is bytes:
                requests = request_batch_decoder.decode(item)
            else:
                assert type(item) is Large, f"frame receiver handed over a {type(item).__name__}"
                rid, cid, proto, argv, positions = large_request_decoder.decode(item.head)
                for position, blob in zip(positions, item.blobs, strict=True):
                    argv[position] = blob
                shard.big_values_pending = True  # its record keeps the blobs in their own buffers
                requests = [Request(rid, cid, proto, argv)]
            replies.extend(shard.execute_batch(conn, requests))
        conn.send(replies)
        for other in ROUTER_CONNS:  # what a busy script deferred, on any connection
            while other.deferred:
                deferred, other.deferred = other.deferred, []
                other.send(shard.execute_batch(other, deferred))

    receiver = FrameReceiver(sock, on_frames)
    conn = RouterConn(sock, receiver)

    def send_events(events: list[tuple[bytes, bytes]]) -> None:
        conn.send([(EVENTS_RID, encode_events(events))])

    shard.routers += 1
    ROUTER_CONNS.add(conn)
    link_fd = sock.fileno()
    READY.watch(link_fd, conn)
    shard.event_sinks[conn] = send_events
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.writer)
            try:
                await receiver.run()
            except (OSError, ValueError) as e:
                logger.warning("shard %d: router connection error: %s", shard.index, e)
            nursery.cancel_scope.cancel()
    finally:
        READY.forget(link_fd, conn)  # first: its descriptor may be reused once closed
        shard.txn.conn_closed(conn)
        scripting_of(shard.db).evicting.conn_closed(conn)
        del shard.event_sinks[conn]
        shard.set_tracking(conn, [VERB_TRACKING, b"0"])
        ROUTER_CONNS.discard(conn)
        shard.routers -= 1
        sock.close()


def _tell_routers_of_drops(shard: Shard) -> None:
    """A script the cache drops is told to every router connection, each of which answers
    on its link; the body stays runnable until then (shards/script_evict.py)."""
    evicting = scripting_of(shard.db).evicting
    evicting.shard_index = shard.index
    txn = shard.txn
    evicting.busy = lambda: bool(txn.deferred or txn.fence.fenced)  # an EVALSHA may wait there

    def tell(shas: list[bytes]) -> list[RouterConn]:
        event = [(EVENTS_RID, encode_events([(SCRIPTS_EVICTED_CHANNEL, sha) for sha in shas]))]
        conns = list(ROUTER_CONNS)
        for conn in conns:
            conn.send(event)
        return conns

    evicting.tell = tell
    evicting.soon = trio.lowlevel.current_trio_token().run_sync_soon


async def run_shard(config: Config, index: int, snapshots: SnapshotHooks | None = None,
                    client_port: ClientPort | None = None) -> None:
    shard = Shard(config, index, snapshots)
    os.makedirs(shard.dir, exist_ok=True)
    shard.open_log()  # holds the log lock from here: a socket file left at our path is stale
    async with trio.open_nursery() as nursery:
        await serve_primary(shard, nursery, client_port)


async def serve_primary(shard: Shard, nursery: trio.Nursery, client_port: ClientPort | None = None) -> None:
    """Serve as the shard's primary once its log is open (at start, or when a replica
    is promoted, shards/replica.py): the routers' socket, the client port (if given),
    the background tasks. Returns only by cancellation; closes the log then."""
    config, index = shard.config, shard.index
    scripting_of(shard.db).on_busy = serve_while_busy
    _tell_routers_of_drops(shard)
    ensure_run_dir(config.data_dir)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bind_unix(listener, shard_socket_path(config.data_dir, index))
    listener.listen(ROUTER_CONNECTIONS_MAX)
    listener.setblocking(False)
    failure.clear(config.data_dir, index)  # serving again: the router stops reporting a failure
    shard.oom_flags.set(index, False)  # the flag of this shard's previous process no longer holds
    first, last = shard.slot_range
    try:
        if shard.lease_guard is not None:  # first: starting the client port may take a while
            nursery.start_soon(shard.lease_guard.renew_loop)
        if client_port is not None:
            await nursery.start(client_port, shard)
        logger.info("shard %d ready: slots %d-%d, %d keys, durability %s, pid %d",
                    index, first, last, len(shard.db.data), config.durability, os.getpid())
        sdnotify.notify(b"READY=1")
        release_free_heap()  # what the start (snapshot load, log replay) freed
        nursery.start_soon(shard.committer)
        if shard.min_replicas is not None:
            nursery.start_soon(shard.min_replicas.run)
        nursery.start_soon(shard.active_expire_loop)
        nursery.start_soon(shard.memory_loop)
        nursery.start_soon(shard.blocked_timeouts)
        nursery.start_soon(shard.txn.drain_loop)
        if shard.snapshots is not None:
            nursery.start_soon(shard.release_loop)
        if config.node_id:
            nursery.start_soon(serve_link_port, shard, nursery)
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


async def serve_link_port(shard: Shard, nursery: trio.Nursery) -> None:
    """On a node (node-id set): routers of other nodes over TCP, once each proved it
    knows the deployment's link secret (shards/link_auth.py)."""
    port = LinkPort.bound()
    assert port is not None, "a shard on a node serves with its link port bound (shards/log_backend.py)"
    secret = await trio.to_thread.run_sync(link_secret, shard.config)
    tls = link_context(shard.config, server_side=True) if links_use_tls(shard.config) else None
    port.sock.listen(ROUTER_CONNECTIONS_MAX)
    logger.info("shard %d: accepting other nodes' routers on %s%s", shard.index, port.address,
                " over TLS" if tls is not None else "")
    handshakes = trio.CapacityLimiter(ROUTER_CONNECTIONS_MAX)  # unauthenticated peers waiting at once
    while True:
        await trio.lowlevel.wait_readable(port.sock)
        try:
            conn, peer = port.sock.accept()
        except BlockingIOError:
            continue
        if handshakes.available_tokens == 0:
            logger.warning("shard %d: refused an internal link from %s: %d handshakes already under way",
                           shard.index, peer, ROUTER_CONNECTIONS_MAX)
            conn.close()
            continue
        tune_tcp_link(conn)
        nursery.start_soon(_serve_remote_router, shard, conn, peer, secret, handshakes, tls)


async def _serve_remote_router(shard: Shard, conn: Any, peer: object, secret: bytes,
                               handshakes: trio.CapacityLimiter, tls: ssl.SSLContext | None) -> None:
    try:
        async with handshakes:
            if tls is not None:
                conn = LinkTls(conn, tls)
                await conn.handshake()
            await accept_link(conn, secret)
    except (LinkRefused, LinkTlsError, OSError) as e:
        logger.warning("shard %d: refused an internal link from %s: %s", shard.index, peer, e)
        conn.close()
        return
    await serve_router(shard, conn)


def _small_first(batch: list[Reply], large_count: int) -> tuple[list[Reply], list[int]]:
    """The batch with its ordinary replies before its large ones, and the large ones'
    indexes: a reply queued in the same turn as a 512 MiB GET's, after it, waited for
    all its pieces (~0.7 s on the link) where one queued a turn later passes them
    (_between); the router puts each client's replies in order."""
    small = [reply for reply in batch if len(reply[1]) < LARGE_BYTES]
    return small + [reply for reply in batch if len(reply[1]) >= LARGE_BYTES], \
        list(range(len(small), len(small) + large_count))
