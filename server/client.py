"""A client connection on the router: parse requests, dispatch them, and write
replies back strictly in the order the client sent the commands."""

from __future__ import annotations

import logging
import socket
import time
from collections import deque

import trio

from server.links import Pending
from shards.resp import ProtocolError, RequestParser, ReplyError, encode, encode_error
from shards.table import CURSOR, FANOUT, ROUTER, SPLIT_NONE, lookup
from shards.slots import key_slot

log = logging.getLogger("durakv.router")

RECV_BYTES = 64 * 1024
MAX_REPLIES_IN_FLIGHT = 16 * 1024
OUTPUT_BACKPRESSURE_BYTES = 4 * 1024 * 1024

ERR_CROSSSLOT = b"-CROSSSLOT Keys in request don't hash to the same slot\r\n"
ERR_NOAUTH = b"-NOAUTH Authentication required.\r\n"


class Client:
    __slots__ = (
        "router", "sock", "id", "proto", "name", "authed", "addr", "laddr", "fd", "created",
        "last_cmd_at", "last_cmd", "parser", "replies", "outbuf", "closing", "closed",
        "_writable", "_drained", "lib_name", "lib_ver", "in_ready_set", "kill_event",
    )

    def __init__(self, router, sock: socket.socket, client_id: int) -> None:
        self.router = router
        self.sock = sock
        self.id = client_id
        self.proto = 2
        self.name = b""
        self.lib_name = b""
        self.lib_ver = b""
        self.authed = not router.config.requirepass
        peer = sock.getpeername()
        local = sock.getsockname()
        self.addr = f"{peer[0]}:{peer[1]}"
        self.laddr = f"{local[0]}:{local[1]}"
        self.fd = sock.fileno()
        self.created = time.monotonic()
        self.last_cmd_at = self.created
        self.last_cmd = "NULL"
        self.parser = RequestParser(router.config.proto_max_bulk_len)
        self.parser.authed = self.authed
        self.replies: deque = deque()
        self.outbuf = bytearray()
        self.closing = False  # close once the queued replies are written
        self.closed = False
        self.in_ready_set = False
        self._writable = trio.Event()
        self._drained = trio.Event()
        self.kill_event = trio.Event()

    # --- reading and dispatch -------------------------------------------------

    async def serve(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer)
                nursery.start_soon(self._killer, nursery.cancel_scope)
                await self._reader()
                await self._finish_writes()
                nursery.cancel_scope.cancel()
        finally:
            self.closed = True
            self.sock.close()
            self.router.forget(self)

    async def _killer(self, cancel_scope: trio.CancelScope) -> None:
        await self.kill_event.wait()
        cancel_scope.cancel()

    async def _reader(self) -> None:
        sock = self.sock
        parser = self.parser
        limit = self.router.config.client_query_buffer_limit
        while not self.closing:
            if len(self.outbuf) > OUTPUT_BACKPRESSURE_BYTES or len(self.replies) > MAX_REPLIES_IN_FLIGHT:
                self._drained = trio.Event()
                await self._drained.wait()
                continue
            await trio.lowlevel.wait_readable(sock)
            try:
                data = sock.recv(RECV_BYTES)
            except BlockingIOError:
                continue
            except OSError:
                return
            if not data:
                return
            parser.feed(data)
            try:
                requests = parser.requests()
            except ProtocolError as e:
                self.router.stats_protocol_errors += 1
                self.push(encode_error(b"ERR Protocol error: " + e.args[0]))
                self.closing = True
                self.flush()
                return
            if parser.buffered_bytes() > limit:
                log.warning("router: client %s closed: query buffer over %d bytes", self.addr, limit)
                return
            if requests:
                self.last_cmd_at = time.monotonic()
                dispatch = self.dispatch
                for argv in requests:
                    dispatch(argv)
                    if self.closing:
                        break
                self.flush()

    def dispatch(self, argv: list[bytes]) -> None:
        router = self.router
        router.stats_commands += 1
        try:
            cmd = lookup(argv)
        except ReplyError as e:
            self.push(encode_error(e.message))
            router.stats_rejected += 1
            return
        self.last_cmd = cmd.fullname
        if not self.authed and "no_auth" not in cmd.flags:
            self.push(ERR_NOAUTH)
            return
        where = cmd.where
        try:
            if where == ROUTER:
                reply = cmd.handler(self, argv)
                if type(reply) is not Pending:
                    self.push(encode(reply, self.proto))
                return
            if where == FANOUT:
                router.fanout(self, argv, cmd.name)
                return
            if where == CURSOR:
                router.route_cursor(self, argv)
                return
            if cmd.keys_fn is None and cmd.first_key == 1 and cmd.last_key == 1:
                link = router.links[router.slot_owner[key_slot(argv[1])]]
                self.replies.append(link.submit(self, self.proto, argv))
                return
            indexes = cmd.key_indexes(argv)
            if not indexes:
                self.replies.append(router.links[0].submit(self, self.proto, argv))
                return
            owner = router.slot_owner
            shards = {owner[key_slot(argv[i])] for i in indexes}
            if len(shards) == 1:
                link = router.links[shards.pop()]
                self.replies.append(link.submit(self, self.proto, argv))
            elif cmd.split != SPLIT_NONE:
                router.split(self, argv, cmd, indexes)
            else:
                self.push(ERR_CROSSSLOT)
        except ReplyError as e:
            self.push(encode_error(e.message))

    # --- replies ----------------------------------------------------------------

    def push(self, data: bytes) -> None:
        """Queue an already-complete reply behind everything sent before it."""
        self.replies.append(data)

    def reply_ready(self) -> None:
        if not self.in_ready_set:
            self.in_ready_set = True
            self.router.client_ready(self)

    def flush(self) -> None:
        """Write every reply at the head of the queue that is complete."""
        replies = self.replies
        chunks = []
        while replies:
            head = replies[0]
            if type(head) is bytes:
                chunks.append(head)
            else:
                data = head.data
                if data is None:
                    break
                chunks.append(data)
            replies.popleft()
        if chunks:
            self.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if not self._drained.is_set() and (
            not replies if self.closing else len(replies) <= MAX_REPLIES_IN_FLIGHT // 2
        ):
            self._drained.set()

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        if self.outbuf:
            self.outbuf += data
            return
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.kill_event.set()
            return
        if sent < len(data):
            self.outbuf += data[sent:]
            self._writable.set()

    async def _writer(self) -> None:
        sock = self.sock
        while True:
            await self._writable.wait()
            self._writable = trio.Event()
            while self.outbuf:
                await trio.lowlevel.wait_writable(sock)
                try:
                    sent = sock.send(self.outbuf)
                except BlockingIOError:
                    continue
                except OSError:
                    self.kill_event.set()
                    return
                del self.outbuf[:sent]
            if len(self.outbuf) <= OUTPUT_BACKPRESSURE_BYTES:
                self._drained.set()

    async def _finish_writes(self) -> None:
        """After QUIT or a protocol error: wait for the replies queued before it,
        then drain the socket. (On EOF, like Redis, queued replies are dropped.)"""
        if not self.closing:
            return
        while self.replies and not self.kill_event.is_set():
            self._drained = trio.Event()
            self.flush()
            if self.replies:
                await self._drained.wait()
        sock = self.sock
        while self.outbuf and not self.kill_event.is_set():
            await trio.lowlevel.wait_writable(sock)
            try:
                sent = sock.send(self.outbuf)
            except BlockingIOError:
                continue
            except OSError:
                return
            del self.outbuf[:sent]
