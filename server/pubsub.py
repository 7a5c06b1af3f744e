"""Pub/Sub: SUBSCRIBE and friends, PUBLISH, SPUBLISH and PUBSUB, answered by the
router (or a shard's client port) the client is connected to.

Subscriptions live in the process that holds the connection. A PUBLISH is
delivered to the local subscribers at once and forwarded to every other router
and shard or replica node over the peer mesh of server/settings_sync.py (their control
sockets DIR/run/router-NNN.sock, node-NNN.sock, replica-NNN-M.sock): one long-lived stream per
peer, opened on first use, every request of a turn sent as one message. Each
peer answers every request in order (its receiver count, or its part of a PUBSUB
query), and the publisher's reply waits for those answers, bounded by
PEER_REPLY_TIMEOUT_MS, so PUBLISH counts receivers across all processes as
Redis counts them on its one node. Nothing here is logged, as in Redis.

A message is queued behind the replies its client is already owed (a push
after the replies to the commands it sent before), as Redis writes it to the
output buffer after those replies."""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict, deque
from typing import Any, Callable

import msgspec
import trio

from durakv.server.client import Client
from durakv.server.links import Pending
from durakv.shards.glob import glob_match
from durakv.shards.resp import Push, Simple, encode
from durakv.shards.frames import VERB_LITERAL
from durakv.shards.table import MULTI_RUN_NOW, ROUTER, KeySpec, command, container, subcommand_syntax_error
from durakv.shards.tracking import MARK as TRACKING_MARK
from durakv.shards.unixsock import reachable_path

logger = logging.getLogger("durakv.router")

STREAM_HELLO = b"pubsub-stream"  # the first message of a peer's pub/sub stream (a settings notice is JSON)
PEER_REPLY_TIMEOUT_MS = 1000  # a peer that does not answer by then counts as no receivers
# After a failed connect, requests to that peer are answered "absent" this long (longer in a test, to miss one).
PEER_RETRY_PAUSE_MS = int(os.environ.get("DURAKV_TEST_PEER_RETRY_PAUSE_MS", "500"))
MAX_PEER_QUEUE_REQUESTS = 64 * 1024  # requests waiting to go to one peer; beyond, they are not forwarded
MAX_STREAM_MESSAGE_BYTES = 1024 * 1024 * 1024  # one batch; a message is at most proto-max-bulk-len (512 MB)
MAX_BATCH_BYTES = 1024 * 1024  # a batch is cut once its payloads reach this
SWEEP_INTERVAL_MS = 50
MAX_QUEUED_MESSAGES = 64 * 1024  # a subscriber's messages waiting behind a pending reply
LENGTH_BYTES = 4
ERR_SSUBSCRIBE_IN_MULTI = b"-ERR SSUBSCRIBE isn't allowed for a DENY BLOCKING client\r\n"

# Requests between peers: [op, args...]; the answer is that process's part.
OP_PUBLISH = "p"  # channel, message -> receivers (channel + pattern subscribers)
OP_SPUBLISH = "s"  # channel, message -> receivers (shard channel subscribers)
OP_CHANNELS = "c"  # pattern or None -> active channels
OP_NUMSUB = "n"  # channels -> subscriber count of each
OP_PATTERNS = "P"  # -> patterns subscribed to (NUMPAT counts the union)
OP_SHARDCHANNELS = "C"  # pattern or None -> active shard channels
OP_SHARDNUMSUB = "S"  # channels -> shard subscriber count of each

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()


class Subscriptions:
    """One client's subscriptions (Client.pubsub; None while it has none)."""

    __slots__ = ("channels", "patterns", "shard_channels")

    def __init__(self) -> None:
        self.channels: dict[bytes, None] = {}
        self.patterns: dict[bytes, None] = {}
        self.shard_channels: dict[bytes, None] = {}

    def count(self) -> int:
        """Redis' clientSubscriptionsCount: channels and patterns."""
        return len(self.channels) + len(self.patterns)

    def empty(self) -> bool:
        return not (self.channels or self.patterns or self.shard_channels)


class Ask:
    """A reply gathered from this process and its peers."""

    __slots__ = ("pending", "parts", "left", "finish", "deadline")

    def __init__(self, pending: Pending, local: Any, peers: int, finish: Callable[[list[Any]], bytes]) -> None:
        self.pending = pending
        self.parts = [local]
        self.left = peers
        self.finish = finish
        self.deadline = time.monotonic() + PEER_REPLY_TIMEOUT_MS / 1000

    def complete(self) -> None:
        if self.pending.data is None:
            self.pending.fill(self.finish(self.parts))


class PubSub:
    """A process's subscribers, and its streams to every peer."""

    def __init__(self, front: Any) -> None:
        self.front = front
        self.channels: dict[bytes, dict[Client, None]] = {}
        self.patterns: dict[bytes, dict[Client, None]] = {}
        self.shard_channels: dict[bytes, dict[Client, None]] = {}
        self.peers: list[PeerStream] = []
        self.asks: OrderedDict[int, Ask] = OrderedDict()  # by sequence number, so also by deadline
        self._asks_waiting = trio.Event()  # set when asks go from none to some: the sweeper wakes
        self._seq = 0
        self._overflowed: list[Client] = []  # subscribers to close after the delivery in progress
        # Other users of the mesh (server/monitor.py): op -> handler(op, args) giving this process's part.
        self.extra_ops: dict[str, Callable[[str, list[Any]], Any]] = {}

    def start(self, nursery: trio.Nursery, peer_paths: list[str]) -> None:
        self.peers = [PeerStream(self, path) for path in peer_paths]
        for peer in self.peers:
            nursery.start_soon(peer.run)
        nursery.start_soon(self._sweep)

    # --- subscribing ----------------------------------------------------------------

    def subscribe(self, client: Client, table: dict[bytes, dict[Client, None]], kind: str,
                  names: list[bytes], reply: bytes) -> None:
        _pushes_are_not_replies(client)
        subs = client.pubsub
        if subs is None:
            subs = client.pubsub = Subscriptions()
        own = getattr(subs, kind)
        for name in names:
            if name not in own:
                own[name] = None
                table.setdefault(name, {})[client] = None
            count = len(own) if kind == "shard_channels" else subs.count()
            client.push(encode(Push([reply, name, count]), client.proto))

    def unsubscribe(self, client: Client, table: dict[bytes, dict[Client, None]], kind: str,
                    names: list[bytes], reply: bytes | None) -> None:
        """Drop `names` (all when empty); `reply` None: quietly (RESET, a closed connection)."""
        if reply is not None:
            _pushes_are_not_replies(client)
        subs = client.pubsub
        own: dict[bytes, None] = getattr(subs, kind) if subs is not None else {}
        if not names:
            names = list(own)
            if not names and reply is not None:
                count = 0 if subs is None else len(own) if kind == "shard_channels" else subs.count()
                client.push(encode(Push([reply, None, count]), client.proto))
        for name in names:
            if name in own:
                del own[name]
                members = table[name]
                del members[client]
                if not members:
                    del table[name]
            if reply is not None:
                assert subs is not None or not own, "no subscriptions, nothing to remove"
                count = 0 if subs is None else len(own) if kind == "shard_channels" else subs.count()
                client.push(encode(Push([reply, name, count]), client.proto))
        if subs is not None and subs.empty():
            client.pubsub = None

    def forget(self, client: Client) -> None:
        """The client closed or was RESET: every subscription goes, without replies."""
        self.unsubscribe(client, self.channels, "channels", [], None)
        self.unsubscribe(client, self.patterns, "patterns", [], None)
        self.unsubscribe(client, self.shard_channels, "shard_channels", [], None)

    # --- local answers ----------------------------------------------------------------

    def local(self, op: str, args: list[Any]) -> Any:
        """This process's part of a request (its own or a peer's)."""
        if op == OP_PUBLISH:
            return self._deliver(args[0], args[1])
        if op == OP_SPUBLISH:
            return self._deliver_shard(args[0], args[1])
        if op == OP_CHANNELS or op == OP_SHARDCHANNELS:
            table = self.channels if op == OP_CHANNELS else self.shard_channels
            pattern = args[0]
            return [c for c in table if pattern is None or glob_match(pattern, c)]
        if op == OP_NUMSUB or op == OP_SHARDNUMSUB:
            table = self.channels if op == OP_NUMSUB else self.shard_channels
            return [len(table.get(c, ())) for c in args[0]]
        if op == OP_PATTERNS:
            return list(self.patterns)
        handler = self.extra_ops.get(op)
        if handler is not None:
            return handler(op, args)
        raise ValueError(f"unknown pub/sub request {op!r}")

    def _deliver(self, channel: bytes, message: bytes) -> int:
        receivers = self._deliver_to_subscribers(channel, message)
        if self._overflowed:
            self._close_overflowed()
        return receivers

    def _deliver_to_subscribers(self, channel: bytes, message: bytes) -> int:
        receivers = 0
        for client in self.channels.get(channel, ()):
            self._send(client, [b"message", channel, message])
            receivers += 1
        for pattern, clients in self.patterns.items():
            if glob_match(pattern, channel):
                for client in clients:
                    self._send(client, [b"pmessage", pattern, channel, message])
                    receivers += 1
        return receivers

    def keyspace_events(self, events: list[tuple[bytes, bytes]]) -> None:
        """Keyspace notifications from a shard (shards/notify.py): published here
        only, since every router has a link to every shard, and a node hears its own.
        Those on a NUL channel are changed keys for client-side caching (server/tracking.py)."""
        tracked = None
        for channel, message in events:
            if channel[:1] == TRACKING_MARK:
                if tracked is None:
                    tracked = []
                tracked.append((channel, message))
                continue
            self._deliver(channel, message)
        if tracked is not None:
            self.front.tracking.invalidate(tracked)

    def _deliver_shard(self, channel: bytes, message: bytes) -> int:
        receivers = 0
        for client in self.shard_channels.get(channel, ()):
            self._send(client, [b"smessage", channel, message])
            receivers += 1
        if self._overflowed:
            self._close_overflowed()
        return receivers

    def _send(self, client: Client, items: list) -> None:
        """Queue a message behind the client's replies. Messages wait there (not in
        the output buffer the output limits watch) while an earlier reply is still
        pending, e.g. a RESP3 subscriber's blocked BLPOP: past MAX_QUEUED_MESSAGES
        the client is closed, once the delivery in progress is over."""
        if len(client.replies) >= MAX_QUEUED_MESSAGES:
            if client not in self._overflowed:
                logger.warning("router %d: closing subscriber %s: %d messages queued behind a pending reply",
                               self.front.index, client.addr, len(client.replies))
                self._overflowed.append(client)
            return
        client.push(encode(Push(items), client.proto))
        client.reply_ready()

    def _close_overflowed(self) -> None:
        overflowed, self._overflowed = self._overflowed, []
        for client in overflowed:
            client.kill()  # forgets its subscriptions: never while a delivery walks them

    def receivers_here(self, channel: bytes) -> int:
        """The subscribers in this process a PUBLISH on channel reaches (a script's
        PUBLISH answers this at once and is delivered once durable, shards/script_effects.py)."""
        receivers = len(self.channels.get(channel, ()))
        for pattern, clients in self.patterns.items():
            if glob_match(pattern, channel):
                receivers += len(clients)
        return receivers

    def publish_here_and_forward(self, channel: bytes, message: bytes) -> int:
        """PUBLISH from a script (the shard cannot wait for its peers' counts while
        the script runs): delivered everywhere, the receivers here counted."""
        receivers = self._deliver(channel, message)
        for peer in self.peers:
            peer.send(0, [0, OP_PUBLISH, channel, message])
        return receivers

    # --- asking every process ---------------------------------------------------------

    def ask_all(self, client: Client, op: str, args: list[Any], finish: Callable[[list[Any]], bytes]) -> Pending:
        """Answer here, forward to every peer, and reply with `finish` of every
        part that came back within PEER_REPLY_TIMEOUT_MS (a peer that is down or
        silent is no part)."""
        local = self.local(op, args)  # first: a message to the publisher itself precedes the reply, as in Redis
        pending = Pending(client)
        client.replies.append(pending)
        self._ask(pending, local, op, args, finish)
        return pending

    def ask_peers(self, op: str, args: list[Any], done: Callable[[list[Any]], None]) -> None:
        """ask_all for no client's reply: `done` gets the peers' parts that came back
        within PEER_REPLY_TIMEOUT_MS (server/tracking.py's redirects to other fronts)."""
        def finish(parts: list[Any]) -> bytes:
            done(parts[1:])
            return b""
        self._ask(Pending(None, on_fill=_drop_fill), None, op, args, finish)

    def _ask(self, pending: Pending, local: Any, op: str, args: list[Any],
             finish: Callable[[list[Any]], bytes]) -> None:
        self._seq += 1
        seq = self._seq
        ask = Ask(pending, local, 0, finish)
        request = [seq, op, *args]
        for peer in self.peers:
            if peer.send(seq, request):
                ask.left += 1
        if ask.left == 0:
            ask.complete()
        else:
            if not self.asks:
                self._asks_waiting.set()
            self.asks[seq] = ask

    def answered(self, seq: int, value: Any) -> None:
        """A peer's part (None: that peer had none to give)."""
        ask = self.asks.get(seq)
        if ask is None:
            return  # timed out already
        if value is not None:
            ask.parts.append(value)
        ask.left -= 1
        if ask.left == 0:
            del self.asks[seq]
            ask.complete()

    async def _sweep(self) -> None:
        """Reply to asks whose peers were silent past the deadline with what came."""
        while True:
            if not self.asks:
                self._asks_waiting = trio.Event()
                await self._asks_waiting.wait()
            await trio.sleep(SWEEP_INTERVAL_MS / 1000)
            now = time.monotonic()
            asks = self.asks
            while asks:
                seq, ask = next(iter(asks.items()))
                if ask.deadline > now:
                    break
                del asks[seq]
                logger.warning("router %d: %d peers did not answer a pub/sub request within %d ms",
                               self.front.index, ask.left, PEER_REPLY_TIMEOUT_MS)
                ask.complete()

    # --- serving a peer -----------------------------------------------------------------

    async def serve_peer(self, stream: trio.SocketStream, reader: MessageReader) -> None:
        """A peer's stream (after its hello): answer each batch, in order."""
        while True:
            message = await reader.receive()
            if message is None:
                return
            answers = []
            for request in _decoder.decode(message):
                seq, op, *args = request
                try:
                    value = self.local(op, args)
                except (ValueError, TypeError, IndexError) as e:
                    logger.error("router %d: bad pub/sub request from a peer: %s", self.front.index, e)
                    value = None
                if isinstance(value, Later):  # its answer, and the requests after it, wait for it
                    with trio.move_on_after(PEER_REPLY_TIMEOUT_MS / 1000):
                        await value.ready.wait()
                    value = value.value
                answers.append([seq, value])
            await send_message(stream, _encoder.encode(answers))


class Later:
    """A peer's request answered once something this process started is done (a shard
    restoring another shard's libraries, durable, server/script_cache.py): that peer's
    later requests wait behind it, at most PEER_REPLY_TIMEOUT_MS (then it answers None)."""

    __slots__ = ("value", "ready")

    def __init__(self) -> None:
        self.value: Any = None
        self.ready = trio.Event()

    def set(self, value: Any) -> None:
        self.value = value
        self.ready.set()


def _drop_fill(pending: Pending, data: bytes) -> None:
    """The fill of an ask no client waits for (ask_peers: its `done` had the parts)."""


class MessageReader:
    """Length-prefixed messages from a stream, several per read kept for the next."""

    def __init__(self, stream: trio.SocketStream, limit_bytes: int) -> None:
        self.stream = stream
        self.limit_bytes = limit_bytes
        self.buf = bytearray()

    async def receive(self) -> bytes | None:
        buf = self.buf
        while True:
            if len(buf) >= LENGTH_BYTES:
                length = int.from_bytes(buf[:LENGTH_BYTES], "big")
                if length > self.limit_bytes:
                    raise ValueError(f"message of {length} bytes over the {self.limit_bytes} limit")
                end = LENGTH_BYTES + length
                if len(buf) >= end:
                    message = bytes(buf[LENGTH_BYTES:end])
                    del buf[:end]
                    return message
            chunk = await self.stream.receive_some(256 * 1024)
            if not chunk:
                return None
            buf += chunk


async def send_message(stream: trio.SocketStream, payload: bytes) -> None:
    await stream.send_all(len(payload).to_bytes(LENGTH_BYTES, "big") + payload)


class PeerStream:
    """The stream to one peer: requests queue here and go out once per turn;
    answers come back in order."""

    def __init__(self, pubsub: PubSub, path: str) -> None:
        self.pubsub = pubsub
        self.path = path
        self.queue: deque[list[Any]] = deque()
        self.in_flight: deque[int] = deque()  # sequence numbers sent, not yet answered
        self.wake = trio.Event()
        self.down_until = 0.0

    def send(self, seq: int, request: list[Any]) -> bool:
        """Queue a request; False when this peer will not get it (down, or too much queued)."""
        if time.monotonic() < self.down_until:
            return False
        if len(self.queue) + len(self.in_flight) >= MAX_PEER_QUEUE_REQUESTS:
            logger.warning("router %d: pub/sub requests to %s over %d queued; not forwarded",
                           self.pubsub.front.index, self.path, MAX_PEER_QUEUE_REQUESTS)
            return False
        self.queue.append(request)
        self.wake.set()
        return True

    def _fail_all(self) -> None:
        """The stream broke: every request sent or queued gets no part from this peer."""
        seqs = [*self.in_flight, *(request[0] for request in self.queue)]
        self.in_flight.clear()
        self.queue.clear()
        for seq in seqs:
            self.pubsub.answered(seq, None)

    async def run(self) -> None:
        while True:
            await self.wake.wait()
            try:
                with reachable_path(self.path) as address:
                    stream = await trio.open_unix_socket(address)
            except OSError as e:
                logger.debug("router %d: pub/sub peer %s unreachable: %s", self.pubsub.front.index, self.path, e)
                self.down_until = time.monotonic() + PEER_RETRY_PAUSE_MS / 1000
                self._fail_all()
                self.wake = trio.Event()
                continue
            try:
                async with stream, trio.open_nursery() as nursery:
                    await send_message(stream, STREAM_HELLO)
                    nursery.start_soon(self._read_answers, stream, nursery.cancel_scope)
                    await self._write_requests(stream)
            except* (OSError, trio.BrokenResourceError, trio.ClosedResourceError, ValueError) as broke:
                # except*: the stream's nursery raises a group (a peer killed by -9 crashed this process)
                logger.warning("router %d: pub/sub stream to %s broke: %s", self.pubsub.front.index, self.path,
                               broke.exceptions[0])
            self._fail_all()
            self.wake = trio.Event()

    async def _write_requests(self, stream: trio.SocketStream) -> None:
        while True:
            await self.wake.wait()
            self.wake = trio.Event()
            while self.queue:
                batch: list[list[Any]] = []
                size = 0
                queue = self.queue
                while queue and size < MAX_BATCH_BYTES:
                    request = queue.popleft()
                    batch.append(request)
                    size += sum(len(a) for a in request[2:] if isinstance(a, bytes))
                    self.in_flight.append(request[0])
                await send_message(stream, _encoder.encode(batch))

    async def _read_answers(self, stream: trio.SocketStream, scope: trio.CancelScope) -> None:
        reader = MessageReader(stream, MAX_STREAM_MESSAGE_BYTES)
        try:
            while True:
                message = await reader.receive()
                if message is None:
                    raise trio.BrokenResourceError("peer closed the pub/sub stream")
                for seq, value in _decoder.decode(message):
                    if self.in_flight and self.in_flight[0] == seq:
                        self.in_flight.popleft()
                    self.pubsub.answered(seq, value)
        finally:
            scope.cancel()


# --- commands --------------------------------------------------------------------------


def _pubsub(client: Client) -> PubSub:
    return client.router.pubsub


def _shard_check(client: Client, argv: list[bytes], last: int) -> None:
    """Sharded channels (argv[1:last + 1]) follow Redis Cluster: one slot per
    command, and on a shard's client port that slot this node's (else MOVED)."""
    client.router.keys_shard(client, argv, list(range(1, last + 1)))


def _done() -> Pending:
    """The replies are queued already: tell dispatch there is nothing more to push."""
    return NO_REPLY


NO_REPLY = Pending(None)
NO_REPLY.data = b""


def _pushes_are_not_replies(client: Client) -> None:
    """(Un)subscribe confirmations, like messages, are pushed (Redis' CLIENT_PUSHING,
    in RESP2 too): CLIENT REPLY OFF|SKIP does not silence them."""
    client.unsilence_current()


@command("subscribe", -2, "pubsub noscript loading stale", group="pubsub", where=ROUTER)
def subscribe(client: Client, argv: list[bytes]):
    ps = _pubsub(client)
    ps.subscribe(client, ps.channels, "channels", argv[1:], b"subscribe")
    return _done()


@command("unsubscribe", -1, "pubsub noscript loading stale", group="pubsub", where=ROUTER)
def unsubscribe(client: Client, argv: list[bytes]):
    ps = _pubsub(client)
    ps.unsubscribe(client, ps.channels, "channels", argv[1:], b"unsubscribe")
    return _done()


@command("psubscribe", -2, "pubsub noscript loading stale", group="pubsub", where=ROUTER)
def psubscribe(client: Client, argv: list[bytes]):
    ps = _pubsub(client)
    ps.subscribe(client, ps.patterns, "patterns", argv[1:], b"psubscribe")
    return _done()


@command("punsubscribe", -1, "pubsub noscript loading stale", group="pubsub", where=ROUTER)
def punsubscribe(client: Client, argv: list[bytes]):
    ps = _pubsub(client)
    ps.unsubscribe(client, ps.patterns, "patterns", argv[1:], b"punsubscribe")
    return _done()


@command("ssubscribe", -2, "pubsub noscript loading stale", keys=(1, -1, 1), group="pubsub", where=ROUTER,
         multi=MULTI_RUN_NOW,
         key_specs=(KeySpec("not_key", 1, -1, 1),))
def ssubscribe(client: Client, argv: list[bytes]):
    if client.multi is not None:
        # Queued, and refused when EXEC runs it (Redis allows only SUBSCRIBE/PSUBSCRIBE there).
        client.multi.append([VERB_LITERAL, ERR_SSUBSCRIBE_IN_MULTI])
        client.push(b"+QUEUED\r\n")
        return _done()
    _shard_check(client, argv, len(argv) - 1)
    ps = _pubsub(client)
    ps.subscribe(client, ps.shard_channels, "shard_channels", argv[1:], b"ssubscribe")
    return _done()


@command("sunsubscribe", -1, "pubsub noscript loading stale", keys=(1, -1, 1), group="pubsub", where=ROUTER,
         key_specs=(KeySpec("not_key", 1, -1, 1),))
def sunsubscribe(client: Client, argv: list[bytes]):
    if len(argv) > 1:
        _shard_check(client, argv, len(argv) - 1)
    ps = _pubsub(client)
    ps.unsubscribe(client, ps.shard_channels, "shard_channels", argv[1:], b"sunsubscribe")
    return _done()


def _sum(parts: list[Any]) -> bytes:
    return b":%d\r\n" % sum(parts)


@command("publish", 3, "pubsub loading stale fast may_replicate", group="pubsub", where=ROUTER)
def publish(client: Client, argv: list[bytes]):
    return _pubsub(client).ask_all(client, OP_PUBLISH, [argv[1], argv[2]], _sum)


@command("spublish", 3, "pubsub loading stale fast may_replicate", keys=(1, 1, 1), group="pubsub", where=ROUTER,
         key_specs=(KeySpec("not_key", 1, 0, 1),))
def spublish(client: Client, argv: list[bytes]):
    _shard_check(client, argv, 1)
    return _pubsub(client).ask_all(client, OP_SPUBLISH, [argv[1], argv[2]], _sum)


container("pubsub", "pubsub", where=ROUTER)


def _union(proto: int) -> Callable[[list[Any]], bytes]:
    def finish(parts: list[Any]) -> bytes:
        return encode(list(dict.fromkeys(name for part in parts for name in part)), proto)
    return finish


def _numsub(channels: list[bytes], proto: int) -> Callable[[list[Any]], bytes]:
    def finish(parts: list[Any]) -> bytes:
        flat: list[Any] = []
        for i, channel in enumerate(channels):
            flat += [channel, sum(part[i] for part in parts)]
        return encode(flat, proto)
    return finish


def _pattern_arg(argv: list[bytes]) -> bytes | None:
    if len(argv) > 3:
        raise subcommand_syntax_error(argv)
    return argv[2] if len(argv) == 3 else None


@command("pubsub|channels", -2, "pubsub loading stale", group="pubsub", where=ROUTER)
def pubsub_channels(client: Client, argv: list[bytes]):
    return _pubsub(client).ask_all(client, OP_CHANNELS, [_pattern_arg(argv)], _union(client.proto))


@command("pubsub|shardchannels", -2, "pubsub loading stale", group="pubsub", where=ROUTER)
def pubsub_shardchannels(client: Client, argv: list[bytes]):
    return _pubsub(client).ask_all(client, OP_SHARDCHANNELS, [_pattern_arg(argv)], _union(client.proto))


@command("pubsub|numsub", -2, "pubsub loading stale", group="pubsub", where=ROUTER)
def pubsub_numsub(client: Client, argv: list[bytes]):
    channels = argv[2:]
    return _pubsub(client).ask_all(client, OP_NUMSUB, [channels], _numsub(channels, client.proto))


@command("pubsub|shardnumsub", -2, "pubsub loading stale", group="pubsub", where=ROUTER)
def pubsub_shardnumsub(client: Client, argv: list[bytes]):
    channels = argv[2:]
    return _pubsub(client).ask_all(client, OP_SHARDNUMSUB, [channels], _numsub(channels, client.proto))


@command("pubsub|numpat", 2, "pubsub loading stale", group="pubsub", where=ROUTER)
def pubsub_numpat(client: Client, argv: list[bytes]):
    def finish(parts: list[Any]) -> bytes:
        return b":%d\r\n" % len({p for part in parts for p in part})
    return _pubsub(client).ask_all(client, OP_PATTERNS, [], finish)


PUBSUB_HELP = [
    b"PUBSUB <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    b"CHANNELS [<pattern>]",
    b"    Return the currently active channels matching a <pattern> (default: '*').",
    b"NUMPAT",
    b"    Return number of subscriptions to patterns.",
    b"NUMSUB [<channel> ...]",
    b"    Return the number of subscribers for the specified channels, excluding",
    b"    pattern subscriptions(default: no channels).",
    b"SHARDCHANNELS [<pattern>]",
    b"    Return the currently active shard level channels matching a <pattern> (default: '*').",
    b"SHARDNUMSUB [<shardchannel> ...]",
    b"    Return the number of subscribers for the specified shard level channel(s)",
    b"HELP",
    b"    Prints this help.",
]


@command("pubsub|help", 2, "loading stale", group="pubsub", where=ROUTER)
def pubsub_help(client: Client, argv: list[bytes]):
    return [Simple(line) for line in PUBSUB_HELP]

