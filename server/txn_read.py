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

DEL and UNLINK across shards are writes: they run as a cross-shard transaction
(server/txn.py), whose locks only report whether each key is present.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from durakv.server.front import decode_internal
from durakv.server.links import LOST, Pending
from durakv.server.txn import MAX_TXNS_IN_FLIGHT
from durakv.shards.frames import PROTO_INTERNAL, VERB_TXREAD
from durakv.shards.resp import ReplyError, encode, encode_error
from durakv.shards.slots import key_slot
from durakv.shards.table import SPLIT_MGET, Command, merge_sum
from durakv.shards.txn import TXBUSY

if TYPE_CHECKING:
    from durakv.server.client import Client
    from durakv.server.txn import Coordinator

logger = logging.getLogger("durakv.router")


def start_read(coordinator: Coordinator, client: Client, argv: list[bytes], cmd: Command,
               indexes: list[int]) -> Pending:
    """Run a read whose keys live on several shards; the client's further requests
    wait until its reply is in. The first attempt is sent at once, from here."""
    owner = coordinator.router.slot_owner
    by_shard: dict[int, list[int]] = {}
    for i in indexes:
        by_shard.setdefault(owner[key_slot(argv[i])], []).append(i)
    pending = Pending(client)
    client.replies.append(pending)
    if coordinator.in_flight >= MAX_TXNS_IN_FLIGHT:
        pending.fill(b"-ERR too many cross-shard transactions in flight, retry later\r\n")
        return pending
    shards = sorted(by_shard)
    read = CrossRead(coordinator, client, pending, shards,
                     {s: [argv[0], *(argv[i] for i in by_shard[s])] for s in shards},
                     _merger(cmd, indexes, by_shard, shards, client.proto))
    client.blocked_pending = pending
    client.blocked_shard = -1
    coordinator.in_flight += 1
    read.attempt()
    return pending


class CrossRead:
    """One cross-shard read in flight."""

    __slots__ = ("coordinator", "client", "pending", "shards", "requests", "merge", "txid", "answers", "left")

    def __init__(self, coordinator: Coordinator, client: Client, pending: Pending, shards: list[int],
                 requests: dict[int, list[bytes]], merge) -> None:
        self.coordinator = coordinator
        self.client = client
        self.pending = pending
        self.shards = shards
        self.requests = requests
        self.merge = merge
        self.txid = coordinator.new_txid()
        self.answers: list = [None] * len(shards)
        self.left = len(shards)

    def attempt(self) -> None:
        """`TXREAD try` on every shard at once."""
        tag = b"%d" % self.txid
        links = self.coordinator.router.links
        for n, shard in enumerate(self.shards):
            links[shard].submit(self.client, PROTO_INTERNAL, [VERB_TXREAD, tag, b"try", *self.requests[shard]],
                                Pending(self.client, on_fill=self._answer(n)))

    def _answer(self, n: int):
        def on_fill(_part: Pending, data: bytes) -> None:
            self.answers[n] = data
            self.left -= 1
            if self.left == 0:
                self._attempted()
        return on_fill

    def _attempted(self) -> None:
        answers = self.answers
        locked = [s for s, data in zip(self.shards, answers) if data is not LOST and not _busy(data)]
        coordinator = self.coordinator
        coordinator.release(self.txid, locked)
        if any(data is LOST for data in answers):
            self._finish(LOST)
        elif len(locked) == len(self.shards):
            self._finish_parts(answers)
        else:
            coordinator.read_waits += 1
            assert coordinator.router.nursery is not None, "a read before the router serves"
            coordinator.router.nursery.start_soon(self._wait_in_order)

    async def _wait_in_order(self) -> None:
        """Some key was locked: lock shard after shard, ascending, as writers do (no deadlock)."""
        coordinator = self.coordinator
        txid = coordinator.new_txid()
        tag = b"%d" % txid
        answers = []
        locked: list[int] = []
        try:
            for shard in self.shards:
                [data] = await coordinator.ask_raw_all([(shard, [VERB_TXREAD, tag, b"wait", *self.requests[shard]])],
                                                       self.client)
                if data is LOST:
                    self._finish(LOST)
                    return
                locked.append(shard)
                answers.append(data)
        except Exception:
            logger.exception("router: cross-shard read failed")
            self._finish(encode_error(b"ERR internal error in a cross-shard read"))
            return
        finally:
            coordinator.release(txid, locked)
        self._finish_parts(answers)

    def _finish_parts(self, answers: list) -> None:
        try:
            reply = self.merge([decode_internal(data) for data in answers])
        except ReplyError as e:
            reply = encode_error(e.message)
        except Exception:
            logger.exception("router: merging a cross-shard read failed")
            reply = encode_error(b"ERR internal error in a cross-shard read")
        self._finish(reply)

    def _finish(self, reply: bytes) -> None:
        self.coordinator.in_flight -= 1
        self.pending.fill(reply)


def _busy(data: bytes) -> bool:
    """Whether a shard answered TXBUSY (its keys were locked; it locked nothing)."""
    try:
        decode_internal(data)
    except ReplyError as e:
        return e.message == TXBUSY
    return False


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
