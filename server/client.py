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
MAX_QUEUED_IN_MULTI = 1024 * 1024

# Run at once even inside MULTI (Redis' processCommand exceptions).
IMMEDIATE_IN_MULTI = frozenset({"exec", "discard", "multi", "watch", "quit", "reset"})
# Router-answered commands inside MULTI get their reply computed at queue time,
# except these, whose replies depend on the shards and arrive later.
ASYNC_ROUTER_COMMANDS = frozenset({
    "info", "debug", "config|resetstat", "cluster|countkeysinslot", "cluster|getkeysinslot",
    "client|unblock",
})


class Client:
    __slots__ = (
        "router", "sock", "id", "proto", "name", "authed", "addr", "laddr", "fd", "created",
        "last_cmd_at", "last_cmd", "parser", "replies", "outbuf", "closing", "closed",
        "_writable", "_drained", "lib_name", "lib_ver", "in_ready_set", "kill_event",
        "multi", "multi_error", "multi_shard", "watch_shards", "blocked_slot", "blocked_shard", "backlog",
    )

    def __init__(self, router, sock: socket.socket, client_id: int) -> None:
        self.router = router
        self.sock = sock
        self.id = client_id
        self.proto = 2
        self.name = b""
        self.lib_name = b""
        self.lib_ver = b""
        self.authed = not router.settings.requirepass
        peer = sock.getpeername()
        local = sock.getsockname()
        self.addr = f"{peer[0]}:{peer[1]}"
        self.laddr = f"{local[0]}:{local[1]}"
        self.fd = sock.fileno()
        self.created = time.monotonic()
        self.last_cmd_at = self.created
        self.last_cmd = "NULL"
        self.parser = RequestParser(int(router.settings.values["proto-max-bulk-len"]))
        self.parser.authed = self.authed
        self.replies: deque = deque()
        self.outbuf = bytearray()
        self.closing = False  # close once the queued replies are written
        self.closed = False
        self.in_ready_set = False
        self._writable = trio.Event()
        self._drained = trio.Event()
        self.kill_event = trio.Event()
        self.multi: list[list[bytes]] | None = None  # queued commands after MULTI
        self.multi_error = False  # a queued command was rejected: EXEC aborts
        self.multi_shard: int | None = None  # the one shard the transaction runs on
        self.watch_shards: set[int] = set()
        # While a blocking command waits, later requests queue here, as Redis
        # stops processing a blocked client's input.
        self.blocked_slot: Pending | None = None
        self.blocked_shard = -1
        self.backlog: deque[list[bytes]] = deque()

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
        limit = int(self.router.settings.values["client-query-buffer-limit"])
        while not self.closing:
            if (len(self.outbuf) > OUTPUT_BACKPRESSURE_BYTES or len(self.replies) > MAX_REPLIES_IN_FLIGHT
                    or len(self.backlog) > MAX_REPLIES_IN_FLIGHT):
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
                self.backlog.extend(e.requests)
                self.run_backlog()
                self.backlog.clear()
                self.push(encode_error(b"ERR Protocol error: " + e.args[0]))
                self.closing = True
                self.flush()
                return
            if parser.buffered_bytes() > limit:
                log.warning("router: client %s closed: query buffer over %d bytes", self.addr, limit)
                return
            if requests:
                self.last_cmd_at = time.monotonic()
                self.backlog.extend(requests)
                self.run_backlog()
                self.flush()

    def run_backlog(self) -> None:
        """Dispatch queued requests until one blocks or the client is closing."""
        backlog = self.backlog
        dispatch = self.dispatch
        while backlog and self.blocked_slot is None and not self.closing:
            dispatch(backlog.popleft())

    def dispatch(self, argv: list[bytes]) -> None:
        router = self.router
        router.stats_commands += 1
        try:
            cmd = lookup(argv)
        except ReplyError as e:
            self.push(encode_error(e.message))
            router.stats_rejected += 1
            if self.multi is not None:
                self.multi_error = True
            return
        self.last_cmd = cmd.fullname
        if not self.authed and "no_auth" not in cmd.flags:
            self.push(ERR_NOAUTH)
            return
        if self.multi is not None and cmd.name not in IMMEDIATE_IN_MULTI:
            self._queue_in_multi(cmd, argv)
            return
        if cmd.name == "watch":
            if self.multi is not None:
                self.push(b"-ERR WATCH inside MULTI is not allowed\r\n")
                return
            shards = {router.slot_owner[key_slot(key)] for key in argv[1:]}
            if len(shards) > 1:
                self.push(ERR_CROSSSLOT)
                return
            self.watch_shards |= shards
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
                shard = router.slot_owner[key_slot(argv[1])]
                slot = router.links[shard].submit(self, self.proto, argv)
                self.replies.append(slot)
                if cmd.is_blocking and slot.data is None:
                    self.blocked_slot = slot
                    self.blocked_shard = shard
                return
            indexes = cmd.key_indexes(argv)
            if not indexes:
                self.replies.append(router.links[0].submit(self, self.proto, argv))
                return
            owner = router.slot_owner
            shards = {owner[key_slot(argv[i])] for i in indexes}
            if len(shards) == 1:
                shard = shards.pop()
                slot = router.links[shard].submit(self, self.proto, argv)
                self.replies.append(slot)
                if cmd.is_blocking and slot.data is None:
                    self.blocked_slot = slot
                    self.blocked_shard = shard
            elif cmd.split != SPLIT_NONE:
                router.split(self, argv, cmd, indexes)
            else:
                self.push(ERR_CROSSSLOT)
        except ReplyError as e:
            self.push(encode_error(e.message))

    # --- transactions -------------------------------------------------------------

    def _queue_in_multi(self, cmd, argv: list[bytes]) -> None:
        """Check a command issued after MULTI and queue it (or flag the transaction)."""
        router = self.router
        try:
            shard = self._transaction_shard(cmd, argv)
            if cmd.where == ROUTER:
                if cmd.fullname in ASYNC_ROUTER_COMMANDS:
                    raise ReplyError(b"ERR Command not allowed inside a transaction")
                argv = [b"\x00literal", encode(cmd.handler(self, argv), self.proto)]
        except ReplyError as e:
            self.multi_error = True
            self.push(encode_error(e.message))
            return
        if shard is not None:
            if self.multi_shard is not None and shard != self.multi_shard:
                self.multi_error = True
                self.push(ERR_CROSSSLOT)
                return
            self.multi_shard = shard
        if len(self.multi) >= MAX_QUEUED_IN_MULTI:
            self.multi_error = True
            self.push(b"-ERR transaction too long (more than %d queued commands)\r\n" % MAX_QUEUED_IN_MULTI)
            return
        self.multi.append(argv)
        self.push(b"+QUEUED\r\n")

    def _transaction_shard(self, cmd, argv: list[bytes]) -> int | None:
        """The shard a queued command must run on (None: any)."""
        router = self.router
        if cmd.where == ROUTER:
            return None
        if cmd.where == FANOUT:
            if len(router.links) > 1:
                raise ReplyError(b"CROSSSLOT Keys in request don't hash to the same slot")
            return 0
        if cmd.where == CURSOR:
            return router.cursor_shard(argv[1])
        indexes = cmd.key_indexes(argv)
        if not indexes:
            return None
        shards = {router.slot_owner[key_slot(argv[i])] for i in indexes}
        if len(shards) > 1:
            raise ReplyError(b"CROSSSLOT Keys in request don't hash to the same slot")
        return shards.pop()

    def unwatch_all(self) -> None:
        """Drop this client's WATCHes on every shard that holds some."""
        if self.watch_shards:
            self.router.unwatch(self.id, self.watch_shards)
            self.watch_shards = set()

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
        blocked = self.blocked_slot
        if blocked is not None and blocked.data is not None:
            self.blocked_slot = None
            self.blocked_shard = -1
            if self.backlog:
                self.run_backlog()
                self.flush()
                return
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
