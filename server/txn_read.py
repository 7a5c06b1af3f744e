"""Cross-shard reads, the router's side: MGET, EXISTS and TOUCH whose keys live on
several shards, isolated from cross-shard writes (ARCHITECTURE.md "Transactions
across shards"): a reader never sees half of a cross-shard MSET or MULTI.

A read holds the shards' key locks (shards/txn.py) at one moment, so no
transaction changes any of its keys in between: it is serializable at that
moment (two-phase locking; no log record, nothing prepared). First every shard
is asked at once to lock and read (`TXREAD try`): a shard where a key is
locked answers TXBUSY without locking anything, so a read never waits while
holding locks, and with no cross-shard write on its keys the read costs one
round trip. Otherwise the locks taken are released and the read locks shard
after shard in ascending order (`TXREAD wait`), the order the writers use,
so no deadlock. The locks are released (TXABORT, not waited for) once every
shard has answered. The client's later requests wait at the router meanwhile,
so none overtakes the read.

A pipeline's consecutive cross-shard reads go as one batch (`ReadBatch`): the
first one's dispatch pulls the following ones out of the client's backlog
(through `Client.dispatch`, so ACL, MONITOR, tracking and the counters see each),
and they share one txid, one `TXREAD try` round and one release. Each read runs
under all its keys' locks, and the batch holds every lock until every shard has
answered (two-phase locking over the batch), so each read is isolated and the
batch is serializable in pipeline order; 16 pipelined reads cost the round trips
of one. A plain one-shard command between them that touches none of the batch's
keys goes at once too (`_goes_with`); anything else ends the batch and waits for it.

DEL and UNLINK across shards are writes: they run as a cross-shard transaction
(server/txn.py), whose locks only report whether each key is present.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from durakv.server.client import SCRIPT_COMMANDS
from durakv.server.front import decode_internal
from durakv.server.links import LOST, Pending
from durakv.server.txn import MAX_TXNS_IN_FLIGHT
from durakv.shards.frames import PROTO_INTERNAL, VERB_TXREAD, encode_internal
from durakv.shards.resp import ReplyError, encode, encode_error
from durakv.shards.slots import key_slot
from durakv.shards.table import SHARD, SPLIT_MGET, SPLIT_NONE, Command, lookup, merge_sum
from durakv.shards.txn import TXBUSY

if TYPE_CHECKING:
    from durakv.server.client import Client
    from durakv.server.txn import Coordinator

logger = logging.getLogger("durakv.router")


MAX_BATCHED_READS = 64  # requests a batch pulls from a pipeline (reads and the commands between them)
TXBUSY_ANSWER = encode_internal(False, TXBUSY)  # shards/txn.py's refusal of a `try`, as it travels


def start_read(coordinator: Coordinator, client: Client, argv: list[bytes], cmd: Command,
               indexes: list[int]) -> Pending:
    """Run a read whose keys live on several shards; the client's further requests
    wait until its reply is in. The reads that follow it in the client's backlog
    join it (`ReadBatch`); the first attempt is sent at once, from here."""
    owner = coordinator.router.slot_owner
    by_shard: dict[int, list[int]] = {}
    for i in indexes:
        by_shard.setdefault(owner[key_slot(argv[i])], []).append(i)
    pending = Pending(client)
    client.replies.append(pending)
    shards = sorted(by_shard)
    read = CrossRead(pending, {s: [argv[0], *(argv[i] for i in by_shard[s])] for s in shards},
                     _merger(cmd, indexes, by_shard, shards, client.proto))
    forming = coordinator.forming_read
    if forming is not None and forming.client is client:
        forming.add(read)  # dispatched by the batch's first read, below
        return pending
    if coordinator.in_flight >= MAX_TXNS_IN_FLIGHT:
        pending.fill(b"-ERR too many cross-shard transactions in flight, retry later\r\n")
        return pending
    batch = ReadBatch(coordinator, client)
    batch.add(read)
    coordinator.forming_read = batch
    try:
        backlog = client.backlog
        pulled = 1
        while backlog and pulled < MAX_BATCHED_READS and _goes_with(coordinator, client, backlog[0], batch):
            client.dispatch(backlog.popleft())
            pulled += 1
    finally:
        coordinator.forming_read = None
    client.blocked_pending = batch.reads[-1].pending  # filled last: the batch's reads are filled in order
    client.blocked_shard = -1
    coordinator.in_flight += 1
    batch.attempt()
    return pending


def _goes_with(coordinator: Coordinator, client: Client, argv: list[bytes], batch: ReadBatch) -> bool:
    """Whether the client's next request may be dispatched before the batch's replies
    are in: a cross-shard read (Client.dispatch hands it to start_read, and it joins
    the batch), or a plain command on one shard that touches none of the batch's keys
    (it runs on its shard after the batch's earlier reads there and before the later
    ones, as the link keeps their order; it commutes with the earlier ones, so even
    when the batch reads again in order, after a TXBUSY, its place is kept). Anything
    else ends the batch and waits for it."""
    router = coordinator.router
    if client.multi is not None or client.pubsub is not None or router.pause.mode or not client.can_dispatch():
        return False
    try:
        cmd = lookup(argv)
    except ReplyError:
        return False
    if (cmd.where != SHARD or cmd.is_blocking or cmd.name in SCRIPT_COMMANDS or cmd.name == "watch"
            or cmd.reads_undeclared_keys is not None):
        return False
    indexes = cmd.key_indexes(argv)
    if not indexes:
        return False  # keyless: it may read or flush the batch's keys
    owner = router.slot_owner
    first = owner[key_slot(argv[indexes[0]])]
    if any(owner[key_slot(argv[i])] != first for i in indexes):
        return cmd.split != SPLIT_NONE and not cmd.is_write
    keys = batch.keys
    return not any(argv[i] in keys for i in indexes)


class CrossRead:
    """One cross-shard read of a batch: its place in the client's replies, its
    request to each of its shards, and how the parts make its reply."""

    __slots__ = ("pending", "requests", "merge", "answers")

    def __init__(self, pending: Pending, requests: dict[int, list[bytes]], merge) -> None:
        self.pending = pending
        self.requests = requests
        self.merge = merge
        self.answers: dict[int, Any] = {}

    def reply(self) -> bytes:
        """The client's reply from every shard's part."""
        try:
            return self.merge([decode_internal(self.answers[shard]) for shard in sorted(self.requests)])
        except ReplyError as e:
            return encode_error(e.message)
        except Exception:
            logger.exception("router: merging a cross-shard read failed")
            return encode_error(b"ERR internal error in a cross-shard read")


class ReadBatch:
    """A client's consecutive cross-shard reads in flight together, under one txid."""

    __slots__ = ("coordinator", "client", "reads", "shards", "keys", "txid", "left")

    def __init__(self, coordinator: Coordinator, client: Client) -> None:
        self.coordinator = coordinator
        self.client = client
        self.reads: list[CrossRead] = []
        self.shards: list[int] = []  # every shard a read of the batch asks, ascending
        self.keys: set[bytes] = set()  # every key the batch reads (locks)
        self.txid = coordinator.new_txid()
        self.left = 0

    def add(self, read: CrossRead) -> None:
        assert len(self.reads) < MAX_BATCHED_READS, "a read batch past its bound"
        self.reads.append(read)
        self.shards = sorted(set(self.shards).union(read.requests))
        for request in read.requests.values():
            self.keys.update(request[1:])

    def attempt(self) -> None:
        """`TXREAD try` of every read on each of its shards, all at once."""
        tag = b"%d" % self.txid
        links = self.coordinator.router.links
        client = self.client
        for read in self.reads:
            for shard, request in read.requests.items():
                self.left += 1
                links[shard].submit(client, PROTO_INTERNAL, [VERB_TXREAD, tag, b"try", *request],
                                    Pending(client, on_fill=self._answer(read, shard)))

    def _answer(self, read: CrossRead, shard: int):
        def on_fill(_part: Pending, data: bytes) -> None:
            read.answers[shard] = data
            self.left -= 1
            if self.left == 0:
                self._attempted()
        return on_fill

    def _attempted(self) -> None:
        coordinator = self.coordinator
        locked: set[int] = set()
        lost: set[int] = set()  # a lost link's shard released the locks itself
        busy = False
        for read in self.reads:
            for shard, data in read.answers.items():
                if data is LOST:
                    lost.add(shard)
                elif _busy(data):
                    busy = True
                else:
                    locked.add(shard)
        coordinator.release(self.txid, sorted(locked - lost))
        if lost:
            self._finish_lost()
        elif not busy:
            self._finish()
        else:
            coordinator.read_waits += 1
            assert coordinator.router.nursery is not None, "a read before the router serves"
            coordinator.router.nursery.start_soon(self._wait_in_order)

    async def _wait_in_order(self) -> None:
        """Some key was locked: lock shard after shard, ascending, as writers do (no
        deadlock), each shard's reads at once."""
        coordinator = self.coordinator
        txid = coordinator.new_txid()
        tag = b"%d" % txid
        locked: list[int] = []
        try:
            for shard in self.shards:
                reads = [read for read in self.reads if shard in read.requests]
                answers = await coordinator.ask_raw_all(
                    [(shard, [VERB_TXREAD, tag, b"wait", *read.requests[shard]]) for read in reads], self.client)
                if any(data is LOST for data in answers):
                    self._finish_lost()
                    return
                locked.append(shard)
                for read, data in zip(reads, answers):
                    read.answers[shard] = data
        except Exception:
            logger.exception("router: cross-shard read failed")
            self._fill_all(encode_error(b"ERR internal error in a cross-shard read"))
            return
        finally:
            coordinator.release(txid, locked)
        self._finish()

    def _finish(self) -> None:
        self.coordinator.in_flight -= 1
        for read in self.reads:
            read.pending.fill(read.reply())

    def _finish_lost(self) -> None:
        self._fill_all(LOST)

    def _fill_all(self, reply) -> None:
        self.coordinator.in_flight -= 1
        for read in self.reads:
            read.pending.fill(reply)


def _busy(data: bytes) -> bool:
    """Whether a shard answered TXBUSY (its keys were locked; it locked nothing): one
    byte comparison, not a decode, since every answer of a batch is tested."""
    return data == TXBUSY_ANSWER


def _merger(cmd: Command, indexes: list[int], by_shard: dict[int, list[int]], shards: list[int], proto: int):
    """The client's reply from the shards' parts (in `shards` order): MGET's values
    back in key order, or the integer replies summed (EXISTS, TOUCH)."""
    if cmd.split == SPLIT_MGET:
        def finish(parts: list) -> bytes:
            values: list = [None] * len(indexes)
            position = {i: n for n, i in enumerate(indexes)}
            for shard, part in zip(shards, parts):
                for i, value in zip(by_shard[shard], part):
                    values[position[i]] = value
            return encode(values, proto)
    else:
        def finish(parts: list) -> bytes:
            return merge_sum(parts, proto)
    return finish
