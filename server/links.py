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
import time
from typing import TYPE_CHECKING, Callable

import msgspec
import trio

from durakv.log.layout import shard_log_dir, shard_socket_path
from durakv.log.lease import LeaseFile
from durakv.shards import lazyfree
from durakv.shards.framelink import (
    SOCKET_BUFFER_BYTES, FrameReceiver, Large, Outbox, Sink, send_all, send_batch, tune_socket,
)
from durakv.shards.frames import (
    EVENTS_RID, LARGE_BYTES, PROTO_INTERNAL, SCRIPTS_EVICTED_CHANNEL, VERB_SCRIPTS_EVICTED_SEEN, RequestTuple,
    encode_frame, events_decoder, internal_reply_decoder, large_reply_decoder, large_request, reply_batch_decoder,
)
from durakv.shards.link_auth import LinkRefused
from durakv.shards.unixsock import connect_unix, peer_allowed, peer_credentials

if TYPE_CHECKING:
    from durakv.server.node_links import NodeDirectory

logger = logging.getLogger("durakv.router")

RECONNECT_BACKOFF_MIN_S = 0.005
RECONNECT_BACKOFF_MAX_S = 0.05

ERR_SHARD_DOWN = b"-CLUSTERDOWN The cluster is down\r\n"
SCRIPT_NONE, SCRIPT_EVAL, SCRIPT_FUNCTION = 0, 1, 2
# The outcome of a request is unknown: it was handed to a shard that died before
# replying. Compared by identity; the text only matters if a callback forgets to
# check, and then it still reads as an error rather than a value.
# A large reply this big or bigger is streamed to its client (ShardLink._stream_reply);
# a smaller one is about what the link's socket buffer holds, so it comes in a read or
# two anyway, and collecting it first measured faster (GET of 1 MiB).
STREAM_MIN_BYTES = SOCKET_BUFFER_BYTES
LOST = b"-ERR the shard died with this command in flight; its outcome is unknown\r\n"


class Pending:
    """A reply not in yet: a place in a client's ordered reply queue, filled when a
    shard (or a timer, or a merge) completes it. (A hash slot is a `slot`; a
    reply waited for is a `pending`.)"""

    __slots__ = ("data", "client", "on_fill")

    def __init__(self, client, on_fill: Callable | None = None) -> None:
        self.data: bytes | bytearray | None = None  # bytearray: a large reply, read in place
        self.client = client
        self.on_fill = on_fill

    def fill(self, data: bytes | bytearray) -> None:
        if self.on_fill is not None:
            self.on_fill(self, data)
        else:
            self.data = data
            self.client.reply_ready()


class Propagating(Pending):
    """The reply of a change made here that is acknowledged once every process has it
    (CONFIG SET, an ACL change: server/settings_sync.py): `reply` is what it will
    answer, which EXEC, not waiting for the propagation, gives at once."""

    __slots__ = ("reply",)

    def __init__(self, client, reply: bytes) -> None:
        super().__init__(client)
        self.reply = reply


class Countdown:
    """Runs `then` once `tick` has been called `count` times (count >= 1): the replies
    of one request sent to every shard, awaited together. `tick` fits a Pending's
    on_fill."""

    __slots__ = ("left", "then")

    def __init__(self, count: int, then: Callable[[], None]) -> None:
        assert count >= 1, "a countdown of nothing never runs"
        self.left = count
        self.then = then

    def tick(self, *_filled: object) -> None:
        self.left -= 1
        if self.left == 0:
            self.then()


class ShardLink:
    def __init__(self, router, index: int, data_dir: str) -> None:
        self.router = router
        self.index = index
        self.address = shard_socket_path(data_dir, index)
        # With replicas: the shard's log lease, to leave a primary a replica took over from
        # (paused, its socket still open) for the new one (log/FORMAT.md, "Leases and fencing").
        self.lease_watch = LeaseWatch(shard_log_dir(data_dir, index)) if router.config.replicas else None
        # On a node (node-id set): where the shard's primary is, on this node or another one.
        self.directory: NodeDirectory | None = None
        self.sock: socket.socket | None = None
        self.up = False
        self.ever_up = trio.Event()
        self._outbox: Outbox[RequestTuple] = Outbox()
        self._pending: dict[int, Pending] = {}
        # The batch the sender took from the queue, until its first byte is written.
        self._unsent: list[RequestTuple] = []
        self._next_rid = 1
        self._large_requests_seen = 0
        # The end of a frame that send_now could not write at once: the sender writes
        # it before anything else. While it is set or the sender writes, send_now
        # leaves the turn's batch to the sender (frames never interleave).
        self._carry: memoryview | None = None
        self._sending = False
        self.frames_sent = 0
        self.requests_sent = 0
        self._held_cids: set[int] = set()  # clients whose requests may not pass the large one in transit
        # Scripts (EVAL*, FCALL*) in flight: rid -> (monotonic start, is EVAL), so the
        # router can answer its own commands BUSY while a shard runs a long script.
        self.scripts: dict[int, tuple[float, bool]] = {}
        # Drops of scripts from the shard's cache told on this link (_events): an EVALSHA's reply
        # does not teach that the shard has its script if one came since it was sent (script_retry.py).
        self.scripts_dropped = 0

    def submit(self, client, proto: int, argv: list[bytes], pending: Pending | None = None,
               script: int = SCRIPT_NONE) -> Pending:
        """Queue a request for this shard; returns the pending reply it will fill.
        `script` (SCRIPT_EVAL, SCRIPT_FUNCTION) marks a script the router times."""
        if pending is None:
            pending = Pending(client)
        if not self.up:
            pending.fill(ERR_SHARD_DOWN)
            return pending
        rid = self._next_rid
        self._next_rid = rid + 1
        self._pending[rid] = pending
        if script:
            self.scripts[rid] = (time.monotonic(), script == SCRIPT_EVAL)
            self.router.scripts_in_flight += 1
        queued = self._outbox.items  # Outbox.put, inlined: once per command
        queued.append((rid, client.id if client is not None else 0, proto, argv))
        if len(queued) == 1 and not self.router.poller.in_turn:
            self._outbox.wake()  # in the poller's turn, Router.end_turn sends it (send_now)
        return pending

    def send_now(self) -> None:
        """At the end of the poller's turn: write the turn's requests as one frame from
        here, without waking the sender task, unless the sender is busy, a large
        request may be among them, or the socket does not take the whole frame (the
        sender then writes the rest)."""
        outbox = self._outbox
        sock = self.sock
        if not outbox.items:
            return
        if (sock is None or self._sending or self._carry is not None
                or self._large_requests_seen != self.router.large_requests):
            outbox.wake()
            return
        batch = outbox.clear()
        self.frames_sent += 1
        self.requests_sent += len(batch)
        data = encode_frame(batch)
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as e:
            # The receiver sees the link end too; until then the batch is unsent.
            logger.warning("router: shard %d link error while sending: %s", self.index, e)
            sent = 0
        if sent == len(data):
            return
        self._unsent = batch if sent == 0 else []
        self._carry = memoryview(data)[sent:]
        outbox.wake()

    async def run(self) -> None:
        """Connect, serve, and on failure fail everything in flight and retry."""
        backoff_s = RECONNECT_BACKOFF_MIN_S
        directory = self.directory
        refused = ""
        while True:
            remote = directory.remote(self.index) if directory is not None else None
            where = f" on {directory.holder(self.index)} at {remote[0]}:{remote[1]}" if directory and remote else ""
            try:
                if directory is not None and remote is not None:
                    sock = await directory.connect(remote)
                else:
                    sock = self._connect_local()
            except (OSError, LinkRefused) as e:
                if where and str(e) != refused:
                    refused = str(e)
                    logger.warning("router: no link to shard %d's primary%s: %s", self.index, where, e)
                await trio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, RECONNECT_BACKOFF_MAX_S)
                continue
            backoff_s, refused = RECONNECT_BACKOFF_MIN_S, ""
            self.sock = sock
            self.up = True
            self.ever_up.set()
            self.router.script_scopes.forget_shard(self.index)  # its script cache may be empty (script_scope.py)
            logger.info("router: connected to shard %d%s", self.index, where)
            self.router.on_link_change()
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._sender, nursery.cancel_scope)
                    if directory is not None:
                        nursery.start_soon(directory.wait_moved, self.index, remote, nursery.cancel_scope)
                    if self.lease_watch is not None and remote is None:
                        nursery.start_soon(self.lease_watch.run, self.index, peer_credentials(sock)[0],
                                           nursery.cancel_scope)
                    await self._receiver()
                    nursery.cancel_scope.cancel()
            finally:
                self.up = False
                self.sock = None
                sock.close()
                self._fail_in_flight()
                self.router.on_link_change()
            logger.warning("router: lost shard %d; answering its slots with CLUSTERDOWN", self.index)

    def _connect_local(self) -> socket.socket:
        """The link to the shard's primary on this machine, over its Unix socket."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            connect_unix(sock, self.address)
            if not peer_allowed(sock, f"router link to shard {self.index}"):
                raise PermissionError(f"{self.address} is served by another user")
            if self.lease_watch is not None and self.lease_watch.deposed(peer_credentials(sock)[0]):
                raise ConnectionRefusedError(f"{self.address} is still the deposed primary's")
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        tune_socket(sock)
        return sock

    def busy_script(self, threshold_ms: int) -> bool | None:
        """None, or whether the script running past threshold_ms is an EVAL (not a function)."""
        if not self.scripts or threshold_ms <= 0:
            return None
        started, is_eval = min(self.scripts.values())
        if (time.monotonic() - started) * 1000 < threshold_ms:
            return None
        return is_eval

    def _fail_in_flight(self) -> None:
        """The shard is gone: a definite error for what never reached its socket,
        LOST for what did (see the module docstring)."""
        in_flight = self._pending
        never_sent = {request[0] for request in self._outbox.clear()}
        never_sent.update(request[0] for request in self._unsent)
        self._pending = {}
        self.router.scripts_in_flight -= len(self.scripts)
        self.scripts.clear()
        self._unsent = []
        self._carry = None
        self._sending = False
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

    def _sent_first_byte(self) -> None:
        self._unsent = []

    async def _sender(self, cancel_scope: trio.CancelScope) -> None:
        sock = self.sock
        assert sock is not None, "sender started before the link connected"
        outbox = self._outbox
        while True:
            carry = self._carry
            if carry is not None:  # the rest of a frame send_now began
                self._sending = True
                try:
                    await send_all(sock, carry, self._sent_first_byte if self._unsent else None)
                except OSError as e:
                    logger.warning("router: shard %d link error while sending: %s", self.index, e)
                    cancel_scope.cancel()
                    return
                self._carry = None
                self._unsent = []
                self._sending = False
                continue
            if not outbox.items:
                await outbox.wait()
                continue
            batch = outbox.clear()
            self._sending = True
            self._unsent = batch
            self.frames_sent += 1
            self.requests_sent += len(batch)
            # Looking at every request's arguments would cost more than encoding
            # them: only after a client read completed a big argument. (One parsed
            # earlier and held in its client's backlog past that look goes in an
            # ordinary frame: copied, still correct.)
            large: list[int] = []
            if self._large_requests_seen != self.router.large_requests:
                self._large_requests_seen = self.router.large_requests
                large = _large_requests(batch)
            if large:
                batch, large, self._held_cids = _passing_first(batch, large)
            try:
                await send_batch(sock, batch, large, large_request, self._sent_first_byte,
                                 self._between if large else None)
            except OSError as e:
                logger.warning("router: shard %d link error while sending: %s", self.index, e)
                cancel_scope.cancel()
                return
            self._sending = False
            for index in large:  # their big values are freed off the loop (shards/lazyfree.py)
                lazyfree.drop_each(batch[index][3])
            del batch  # nothing may keep a sent request (possibly 100 MB) while the sender waits

    def _between(self) -> bytearray | None:
        """Between the pieces of a large request: the requests queued meanwhile that
        may pass it, as one frame. A client with a request in the batch being sent
        (or one held here) waits, so that each client's requests run in order; a
        large request waits too (one at a time), and its client's later ones."""
        outbox = self._outbox
        items = outbox.items
        if not items:
            return None
        held = self._held_cids
        scan = self._large_requests_seen != self.router.large_requests
        take: list[RequestTuple] = []
        keep: list[RequestTuple] = []
        for request in items:
            if request[1] in held or (scan and max(map(len, request[3])) >= LARGE_BYTES):
                held.add(request[1])
                keep.append(request)
            else:
                take.append(request)
        if not take:
            return None
        outbox.items = keep
        self.frames_sent += 1
        self.requests_sent += len(take)
        return encode_frame(take)

    async def _receiver(self) -> None:
        sock = self.sock
        assert sock is not None, "receiver started before the link connected"
        try:
            await FrameReceiver(sock, self._on_frames, self._stream_reply, views=True).run()
        except (OSError, ValueError) as e:
            logger.warning("router: shard %d link error: %s", self.index, e)

    def _on_frames(self, items: list[bytes | Large]) -> None:
        """Fill the pending replies a read completed, then write the clients whose
        replies are all in (at once: waiting for the flusher's turn costs latency);
        the flusher writes those still waiting for another shard's reply."""
        in_flight = self._pending
        router = self.router
        ready = router.ready_clients
        scripts = self.scripts
        for item in items:
            if not isinstance(item, Large):  # a frame: bytes, or a view into the receive buffer
                for rid, reply in reply_batch_decoder.decode(item):
                    if rid == EVENTS_RID:
                        self._events(events_decoder.decode(reply))
                        continue
                    pending = in_flight.pop(rid)
                    if scripts and scripts.pop(rid, None) is not None:
                        router.scripts_in_flight -= 1
                    if pending.on_fill is None:  # Pending.fill, inlined: the common case
                        pending.data = reply
                        client = pending.client
                        if not client.in_ready_set:
                            client.in_ready_set = True
                            ready.append(client)
                    else:
                        pending.fill(reply)
            else:
                rid = large_reply_decoder.decode(item.head)
                if rid == EVENTS_RID:
                    self._events(events_decoder.decode(item.blobs[0]))
                    continue
                if scripts and scripts.pop(rid, None) is not None:
                    router.scripts_in_flight -= 1
                pending = in_flight.pop(rid)
                if item.blobs:
                    pending.fill(item.blobs[0])
                else:  # streamed to its client as it came (_stream_reply)
                    pending.client.end_stream(pending)
        router.flush_complete_clients()

    def _events(self, events: list[tuple[bytes, bytes]]) -> None:
        """Keyspace notifications, or the shard's drop of a script from its cache
        (shards/script_evict.py): this router no longer takes it for cached there, and
        answers behind every request it sent the shard so far (its EVALSHAs of it under
        the old belief run first, from the body the shard keeps until every router answered)."""
        if events[0][0] != SCRIPTS_EVICTED_CHANNEL:
            self.router.pubsub.keyspace_events(events)
            return
        shas = [sha for _channel, sha in events]
        self.scripts_dropped += 1
        scopes = self.router.script_scopes
        if scopes is not None and not self.router.cluster_node:
            scopes.forget_evicted(self.index, shas)
        self.submit(None, PROTO_INTERNAL, [VERB_SCRIPTS_EVICTED_SEEN, *shas], Pending(None, on_fill=_answer_refused))

    def _stream_reply(self, head: msgspec.Raw, sizes: list[int]) -> Sink | None:
        """FrameReceiver's stream: a large reply whose client waits for nothing before
        it is written to that client piece by piece as the shard sends it, so the
        router neither holds it whole (512 MiB for a GET of a 512 MiB string) nor
        starts writing only once the shard has finished (issue 11 §4). A reply below
        STREAM_MIN_BYTES, one that something else completes (a merge, an EXEC) and one
        that waits behind earlier replies are collected as before."""
        if sizes[0] < STREAM_MIN_BYTES:
            return None
        rid = large_reply_decoder.decode(head)
        if rid == EVENTS_RID:
            return None
        pending = self._pending.get(rid)
        if pending is None or type(pending) is not Pending or pending.on_fill is not None:
            return None
        client = pending.client
        if client.closed or not client.replies or client.replies[0] is not pending:
            return None
        return client.write_piece


class LeaseWatch:
    """Whether the process at the other end of a shard link still holds the shard's log
    lease: once a promoted replica holds it, the link is dropped (what was in flight is
    LOST: its outcome is unknown) and reconnected, to the new primary's socket."""

    POLL_S = 0.01

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir
        self.lease: LeaseFile | None = None

    def deposed(self, peer_pid: int) -> bool:
        if self.lease is None:
            try:
                self.lease = LeaseFile(self.log_dir)
            except FileNotFoundError:
                return False   # no log yet: nobody was deposed
        lease = self.lease
        return lease.holder_pid not in (0, peer_pid) and lease.valid_until_ns > time.monotonic_ns()

    async def run(self, shard: int, peer_pid: int, cancel_scope: trio.CancelScope) -> None:
        while not self.deposed(peer_pid):
            await trio.sleep(self.POLL_S)
        logger.warning("router: shard %d's primary pid %d lost its log lease to pid %d; leaving it", shard,
                       peer_pid, self.lease.holder_pid if self.lease is not None else 0)
        cancel_scope.cancel()


def _large_requests(batch: list[RequestTuple]) -> list[int]:
    """Indexes of the requests to send as large frames."""
    return [i for i, request in enumerate(batch) if max(map(len, request[3])) >= LARGE_BYTES]


def _answer_refused(_pending: Pending, data: bytes) -> None:
    """The shard's reply to VERB_SCRIPTS_EVICTED_SEEN (a link that went down: the shard
    stops waiting for this connection, or its drops went with it)."""
    if data[:1] == b"-":
        return
    ok, value = internal_reply_decoder.decode(data)
    if not ok:
        logger.warning("router: a shard refused the answer to its scripts' drop: %r", value)


def _passing_first(batch: list[RequestTuple], large: list[int]) -> tuple[list[RequestTuple], list[int], set[int]]:
    """The batch reordered so that the ordinary requests queued after a large one
    go before it, in one frame, rather than after all its pieces (a same-shard GET
    waited 146-379 ms at the end of a 512 MiB SET's upload). Each client's order
    stays: a request whose client has a large request ahead of it in the batch
    waits behind it, and so do the router's own requests (client id 0: CONFIG,
    UNWATCH, a script's UNFENCE, a 2PC's decision), which may stand for a client's
    later command. Requests of different clients carry no order the shard relies
    on: each is concurrent with the large one, which has no reply yet (the same
    rule ShardLink._between applies to those queued meanwhile). Returns the new
    batch, its large requests' indexes and the clients held until it is sent."""
    first = large[0]
    passing = batch[:first]
    behind: list[RequestTuple] = []
    behind_large: list[int] = []
    held: set[int] = {0}  # the router's own requests queued while it is sent wait too (ShardLink._between)
    large_at = set(large)
    for index in range(first, len(batch)):
        request = batch[index]
        cid = request[1]
        if index in large_at:
            behind_large.append(len(behind))
        elif cid != 0 and cid not in held:
            passing.append(request)
            continue
        held.add(cid)
        behind.append(request)
    start = len(passing)
    return passing + behind, [start + i for i in behind_large], held
