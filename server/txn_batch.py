"""Pipelined cross-shard writes, the router's side (issue 16): a client's
consecutive cross-shard writes in one pipeline commit as one two-phase commit.

Alone, each cross-shard MSET or MULTI/EXEC costs its client a lock round per
shard, a run, a durable PREPARE and a durable decision, and the client's later
requests wait at the router meanwhile (server/txn.py), so a pipeline of them runs
one at a time. Here the first one's dispatch pulls the following ones out of the
client's backlog (through `Client.dispatch`, so ACL, MONITOR, tracking and the
counters see each; a MULTI and the commands it queues go with them), and the
run of them, a `WriteBatch`, executes as one atomic group: one txid locks the
union of their keys in ascending shard order, the executor runs them one after
the other over one scratch keyspace (`TXRUN batch`, shards/txn.py) answering a
reply each, and one PREPARE/decision makes all their effects durable at once.
No reply leaves before the decision is durable, and each command is all or
nothing because the group is. Executing them as one group keeps Redis' order
(they run in pipeline order, nothing of the client's runs in between) and
isolation (no other client sees any state inside the group).

Only plain commands and MULTIs join: a script, SORT with patterns, DEL/UNLINK,
a blocking command, a MULTI over the whole keyspace, with router-answered
commands queued or with WATCHed keys, and anything that is not a cross-shard
write ends the batch, and waits for it as it does today. When a participant is
over maxmemory and a unit would be refused for it, or the run reads keys it did
not declare, the batch's locks go and its units run one at a time instead.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from durakv.server.client import CROSS_SHARD, SCRIPT_COMMANDS
from durakv.server.links import LOST, Pending
from durakv.server.txn import DELETES, ERR_ABORTED, MAX_TXNS_IN_FLIGHT, Lost, _denies_oom
from durakv.shards.frames import VERB_LITERAL, VERB_ROUTER_IN_MULTI, VERB_TXLOCK, VERB_TXRUN
from durakv.shards.resp import ReplyError, encode_error
from durakv.shards.slots import key_slot
from durakv.shards.t_multi import pack_transaction
from durakv.shards.table import SHARD, SPLIT_NONE, lookup
from durakv.shards.txn import BATCH_RUN, COUNT_RUN, WHOLE_KEYSPACE, pack, run_changes, unpack_values

if TYPE_CHECKING:
    from durakv.server.client import Client
    from durakv.server.txn import Coordinator

logger = logging.getLogger("durakv.router")

MAX_BATCH_UNITS = 64  # cross-shard writes (commands or EXECs) one batch commits
MAX_PULLED_REQUESTS = 512  # requests a batch pulls from a pipeline (its units and the MULTIs, queued commands)
ERR_BATCH = b"ERR internal error in a cross-shard transaction"


def start_write(coordinator: Coordinator, client: Client, commands: list[list[bytes]], multi: bool) -> Pending:
    """A cross-shard write (a command or a MULTI's queue): joins the batch its client's
    pipeline is forming, or starts one when the next request of the pipeline joins
    it; otherwise it runs alone (Coordinator.start)."""
    forming = coordinator.forming_write
    if forming is not None and forming.client is client:
        return forming.add(commands, multi)  # dispatched by the batch's first unit, below
    if (not client.backlog or (multi and client.watch_shards) or not batchable(commands, multi)
            or coordinator.in_flight >= MAX_TXNS_IN_FLIGHT or not _joins(coordinator, client, client.backlog[0])):
        return coordinator.start(client, commands, multi)
    batch = WriteBatch(coordinator, client)
    pending = batch.add(commands, multi)
    coordinator.forming_write = batch
    try:
        backlog = client.backlog
        pulled = 0
        while (backlog and pulled < MAX_PULLED_REQUESTS and len(batch.units) < MAX_BATCH_UNITS
               and _joins(coordinator, client, backlog[0])):
            client.dispatch(backlog.popleft())
            pulled += 1
    finally:
        coordinator.forming_write = None
    last = batch.units[-1].pending
    client.blocked_pending = last  # filled last: the batch's units are filled in order
    client.blocked_shard = -1
    coordinator.in_flight += 1
    assert coordinator.router.nursery is not None, "a transaction before the router serves"
    coordinator.router.nursery.start_soon(batch.run)
    return pending


def batchable(commands: list[list[bytes]], multi: bool) -> bool:
    """Whether a cross-shard write may run in a batch: no script, SORT (its patterns
    may name keys on any shard), DEL/UNLINK (their locks move no values) or command
    over the whole keyspace; a router-answered command's reply (VERB_LITERAL) is fine."""
    for argv in commands:
        if argv[0][:1] == b"\x00":
            if argv[0] == VERB_LITERAL:
                continue
            return False  # an ACL user's script
        cmd = lookup(argv)
        if cmd.name in WHOLE_KEYSPACE or cmd.name in SCRIPT_COMMANDS or cmd.reads_undeclared_keys is not None:
            return False
        if not multi and argv[0].lower() in DELETES:
            return False
    return True


def _joins(coordinator: Coordinator, client: Client, argv: list[bytes]) -> bool:
    """Whether the client's next request may be dispatched while the batch forms: a
    cross-shard write that joins it, a MULTI, a command a MULTI queues (nothing
    runs) or the EXEC of a batchable cross-shard MULTI. Anything that would run on a
    shard by itself ends the batch: it must not overtake the batch's writes."""
    router = coordinator.router
    if client.pubsub is not None or router.pause.mode or not client.can_dispatch() or client.closing:
        return False
    try:
        cmd = lookup(argv)
    except ReplyError:
        return False
    queued = client.multi
    if queued is not None:
        if cmd.name == "exec":
            return (client.multi_error or client.multi_shard == CROSS_SHARD and not client.watch_shards
                    and not any(q[0] == VERB_ROUTER_IN_MULTI for q in queued) and batchable(queued, True))
        return not cmd.runs_in_multi  # queued, or refused with an error in its place
    if cmd.name == "multi":
        return True
    if (cmd.where != SHARD or cmd.is_blocking or cmd.name in SCRIPT_COMMANDS or cmd.split != SPLIT_NONE
            or cmd.reads_undeclared_keys is not None or not cmd.is_write):
        return False
    try:
        indexes = cmd.key_indexes(argv)
    except ReplyError:
        return False
    if len(indexes) < 2:
        return False
    owner = router.slot_owner
    first = owner[key_slot(argv[indexes[0]])]
    return any(owner[key_slot(argv[i])] != first for i in indexes)


class WriteUnit:
    """One cross-shard write of a batch: its place in the client's replies and what it runs."""

    __slots__ = ("pending", "commands", "multi", "keys")

    def __init__(self, pending: Pending, commands: list[list[bytes]], multi: bool,
                 keys: dict[int, list[bytes]]) -> None:
        self.pending = pending
        self.commands = commands
        self.multi = multi
        self.keys = keys  # shard -> its keys, as Coordinator.start groups them


class WriteBatch:
    """A client's consecutive cross-shard writes, committed together under one txid."""

    __slots__ = ("coordinator", "client", "units", "keys", "filled")

    def __init__(self, coordinator: Coordinator, client: Client) -> None:
        self.coordinator = coordinator
        self.client = client
        self.units: list[WriteUnit] = []
        self.keys: dict[int, dict[bytes, None]] = {}  # every key the batch locks, by shard
        self.filled = 0  # units answered, in order

    def add(self, commands: list[list[bytes]], multi: bool) -> Pending:
        assert len(self.units) < MAX_BATCH_UNITS, "a write batch past its bound"
        assert batchable(commands, multi), "a write that cannot be batched joined a batch"
        pending = Pending(self.client)
        self.client.replies.append(pending)
        owner = self.coordinator.router.slot_owner
        keys: dict[int, list[bytes]] = {}
        for argv in commands:
            if argv[0][:1] == b"\x00":
                continue
            for i in lookup(argv).key_indexes(argv):
                key = argv[i]
                shard = owner[key_slot(key)]
                keys.setdefault(shard, []).append(key)
                self.keys.setdefault(shard, {})[key] = None
        self.units.append(WriteUnit(pending, commands, multi, keys))
        return pending

    async def run(self) -> None:
        """Commit the batch, or (see `_commit`) its units one at a time; every unit gets a reply."""
        coordinator = self.coordinator
        try:
            replies = await self._commit()
            if replies is not None:
                for reply in replies:
                    self._fill(reply)
            else:
                for unit in self.units:
                    self._fill(await coordinator._transact(self.client, unit.commands, unit.multi, unit.keys,
                                                           sorted(unit.keys)))
        except Lost:
            while self.filled < len(self.units):
                self._fill(LOST)
        except Exception:
            logger.exception("router: a batch of %d cross-shard writes failed", len(self.units))
            while self.filled < len(self.units):
                self._fill(encode_error(ERR_BATCH))
        finally:
            coordinator.in_flight -= 1

    def _fill(self, reply: bytes) -> None:
        unit = self.units[self.filled]
        self.filled += 1
        unit.pending.fill(reply)

    async def _commit(self) -> list[bytes] | None:
        """Lock every key in ascending shard order, run every unit on the executor (the
        lowest shard), commit the final states (Coordinator.commit_states): each unit's
        reply. None (nothing held): a participant is over maxmemory and a unit would
        be refused for it, or the run found keys it did not declare; the units then run
        one at a time, each as it would alone."""
        coordinator = self.coordinator
        client = self.client
        units = self.units
        txid = coordinator.new_txid()
        tag = b"%d" % txid
        participants = sorted(self.keys)
        locked: list[int] = []
        values: list[Any] = []
        oom = False
        try:
            for shard in participants:  # ascending: no deadlock between coordinators
                _dirty, packed, shard_oom = await coordinator._ask(
                    shard, [VERB_TXLOCK, tag, b"one", *self.keys[shard]], client)
                locked.append(shard)
                oom = oom or shard_oom
                values.extend(unpack_values(packed))
            if oom and any(_denies_oom(unit.commands) for unit in units):
                coordinator.release(txid, locked)
                return None
            run = [VERB_TXRUN, tag, b"%d" % client.proto, BATCH_RUN,
                   pack([[unit.multi, pack_transaction(unit.commands)] for unit in units]),
                   pack([list(v) for v in values]), COUNT_RUN]
            answer = await coordinator._ask(participants[0], run)
            replies, packed_states, flushed, missing = answer[:4]
            changes = run_changes(answer)
            if missing:
                coordinator.release(txid, locked)
                return None
        except (ReplyError, Lost) as e:
            coordinator.release(txid, locked)
            if isinstance(e, Lost):  # no decision was asked: nothing of the batch can commit
                coordinator.aborted += 1
                return [ERR_ABORTED] * len(units)
            return [encode_error(e.message)] * len(units)
        assert len(replies) == len(units), "the executor answered a batch with the wrong number of replies"
        committed = coordinator.committed
        failed = await coordinator.commit_states(txid, locked, participants, packed_states, flushed, changes)
        if failed is not None:
            return [failed] * len(units)
        if coordinator.committed > committed:
            coordinator.committed += len(units) - 1  # xshard_committed counts transactions: each unit is one
            coordinator.batched += len(units)
        return replies
