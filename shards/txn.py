"""Cross-shard transactions, the shard's side (ARCHITECTURE.md "Transactions
across shards"): key locks, the executor's overlay, PREPARE / decision / COMMIT
/ ABORT records, and the decider's table of recent decisions.

A router coordinates (server/txn.py). Each participant locks the keys it owns
(TXLOCK; a request touching a locked key waits here, in arrival order, and so
does every later request of the same client), answers their serialized values
(DUMP payload + absolute expiry, or absent) once they are durable; one shard,
the executor, runs the command or the whole MULTI over a scratch keyspace
holding every key of the transaction (TXRUN) and answers the reply and the
final state of each key it changed. Each writing participant but the decider
appends a PREPARE record carrying its effects (RESTORE/DEL of the final
states) and answers once it is durable; the decider (the lowest writing
shard) then appends its own effects together with the COMMIT decision, in one
record, and answers once that is durable: that is the commit point. The
others then apply their effects in a record marked COMMIT (need not be synced
before the client's reply: the decision is durable). A decider asked to
resolve a transaction it has not decided records ABORT first (presumed abort:
a later decision attempt fails).

Replay: a PREPARE's effects are never applied by itself; a COMMIT record
carries the effects, so the snapshotter and replicas apply committed
transactions only, as ordinary records. A shard that restarts with a PREPARE
not followed by its COMMIT or ABORT keeps its keys locked (in doubt) until a
router resolves it with the decider (TXINDOUBT, TXRESOLVE, TXCOMMIT/TXABORT).
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from durakv.shards.faults import CRASH_ENV, HOLD_ENV, HOLD_POLL_S, MAX_HOLD_POLLS, crash_armed
from durakv.shards.acl import MAX_SCRIPT_DENIALS, user_from_rules, with_denials
from durakv.shards.blocking import Block, Waiter, parse_timeout_ms
from durakv.shards.command_stats import CommandStats
from durakv.shards.context import Ctx
from durakv.shards.frames import (
    INTERNAL_PREFIX, VERB_AS_USER, VERB_EXEC, VERB_LITERAL, VERB_TXABORT, VERB_TXCOMMIT, VERB_TXDECIDE, VERB_TXINDOUBT,
    VERB_TXLOCK, VERB_TXPREPARE, VERB_TXREAD, VERB_TXRESOLVE, VERB_TXRUN, VERB_TXWAIT, Request, encode_internal,
)
from durakv.shards.hazards import ReplySink
from durakv.shards.engine import run_command
from durakv.shards.keyspace import Keyspace
from durakv.shards.rdb.codec import RdbError, dump_payload, load_payload, verify_payload
from durakv.shards.resp import NULL_ARRAY, ReplyError, encode, encode_error
from durakv.shards.script_effects import HeldLogs, held_publishes
from durakv.shards.script_fence import ScriptFence
from durakv.shards.script_undo import MAX_HELD_CALLS
from durakv.shards.t_list import ListValue
from durakv.shards.t_zset import ZSetValue
from durakv.shards.slots import SLOT_COUNT
from durakv.shards.t_multi import Watches, unpack_transaction
from durakv.shards.table import find, lookup

if TYPE_CHECKING:
    from durakv.shards.shard import Shard

logger = logging.getLogger("durakv.shard")

# Record markers (log/FORMAT.md): the third element of a record's payload.
MARK_PREPARE = 1  # [1, txid, decider, participants, effects]: effects not applied until COMMIT
MARK_COMMIT = 2  # [2, txid]: this record's effects include the transaction's (participant)
MARK_ABORT = 3  # [3, txid]: the prepared transaction's effects are dropped (participant)
MARK_DECIDE_COMMIT = 4  # [4, txid]: decided (decider); this record holds the decider's effects
MARK_DECIDE_ABORT = 5  # [5, txid]: presumed abort recorded (decider): a later decision fails

CRASH_EXIT_STATUS = 137  # as if killed by SIGKILL
MAX_DECISIONS = 100_000  # recent decisions a decider answers from memory
MAX_DEFERRED_REQUESTS = 1_000_000  # requests waiting for locks (a client's backlog bounds its share)
MAX_LOCKS = 1_000_000
MAX_DECOMPRESSED_BYTES = 512 * 1024 * 1024
# A command an executor's run ran: (argv, whether it failed, µs); failed None: a script's
# redis.call, whose commandstats are counted apart (ScratchShard.call_stats).
RunCall = tuple[list[bytes], bool | None, int]
TXN_VERBS = frozenset({VERB_TXLOCK, VERB_TXRUN, VERB_TXPREPARE, VERB_TXDECIDE, VERB_TXCOMMIT, VERB_TXABORT,
                       VERB_TXRESOLVE, VERB_TXINDOUBT, VERB_TXREAD, VERB_TXWAIT})
WAITING_VERBS = (VERB_EXEC, VERB_TXLOCK, VERB_TXREAD)  # internal requests that wait for locks
# Commands over the whole keyspace that a cross-shard MULTI runs with every shard locked whole.
WHOLE_KEYSPACE = frozenset({"keys", "dbsize", "randomkey", "scan", "flushall", "flushdb"})
FLUSHES = frozenset({b"flushall", b"flushdb"})
WHOLE_KEYSPACE_VERBS = frozenset(name.encode() for name in WHOLE_KEYSPACE)
# TXLOCK modes that lock the shard whole: a MULTI reading the whole keyspace ("all"),
# one that flushes it first ("wide"), a command (a script) reading it ("every": no WATCHes).
WHOLE_MODES = (b"all", b"wide", b"every")
WITH_ALL_VALUES = (b"all", b"every")  # the executor gets every key's value
WHOLE_RUN = b"whole"  # TXRUN's flag: every key's value is in the scratch keyspace
OOM_RUN = b"oom"  # TXRUN's flag: a participant is over maxmemory (a script's denyoom calls answer OOM)
# TXRUN's flag: answer the commands' Redis dirty count (shards/changes.py) too, a seventh element
# (a router of an older version neither sends it nor expects one).
COUNT_RUN = b"count"
# TXPREPARE's flag: the decider logs the transaction's dirty count, this participant's COMMIT adds
# none (without it, from an older router, the effects count as they apply, as they did there).
COUNTED = b"counted"
MAX_WHOLE_KEYS = 100_000  # per shard: values a whole-keyspace read inside a cross-shard MULTI moves
TXBUSY = b"TXBUSY a key is locked"  # a b"try" TXREAD's or b"more" TXLOCK's answer: the router retries waiting
NEVER_WAIT = (b"try", b"more")
BATCH_RUN = b"batch"  # TXRUN of a client's pipelined cross-shard writes: [[in_multi, packed queue], ...]
READ_LOCK = b"read"  # TXLOCK's mode for a participant whose keys a command only reads: locked SHARED
SHARED = -1  # TxnState.locks' holder of a key that cross-shard reads hold together (txids are positive)
RETRY = b"retry"  # TXABORT of a transaction that locks again at once: the client's WATCHes stay

_pack = msgspec.msgpack.Encoder().encode
_values_decoder = msgspec.msgpack.Decoder(list[tuple[bytes, Any, int]])
_effects_decoder = msgspec.msgpack.Decoder(list[list[bytes]])
_ints_decoder = msgspec.msgpack.Decoder(list[int])
_batch_decoder = msgspec.msgpack.Decoder(list[tuple[bool, bytes]])


def pack(value: object) -> bytes:
    return _pack(value)


def unpack_values(data: bytes) -> list[tuple[bytes, bytes | None, int]]:
    return _values_decoder.decode(data)


def unpack_effects(data: bytes) -> list[list[bytes]]:
    return _effects_decoder.decode(data)


def run_changes(answer: list) -> int:
    """A TXRUN answer's Redis dirty count (COUNT_RUN); -1 from an executor of an older
    version, which answers none (the shards then count the effects they apply)."""
    return int(answer[6]) if len(answer) > 6 else -1


def unpack_ints(data: bytes) -> list[int]:
    return _ints_decoder.decode(data)


def state_effects(states: list[tuple[bytes, bytes | None, int]]) -> list[list[bytes]]:
    """Final key states as the deterministic commands that set them."""
    out = []
    for key, payload, when_ms in states:
        if payload is None:
            out.append([b"DEL", key])
        else:
            out.append([b"RESTORE", key, b"%d" % when_ms, payload, b"REPLACE", b"ABSTTL"])
    return out


class Txn:
    """One transaction's state on this shard."""

    __slots__ = ("txid", "keys", "conn", "effects", "decider", "in_doubt", "whole", "watcher", "shared", "counted")

    def __init__(self, txid: int, keys: list[bytes], conn: ReplySink | None) -> None:
        self.txid = txid
        self.keys = keys
        self.conn = conn  # the coordinator's connection (None: restored from the log)
        self.effects: list[list[bytes]] | None = None  # prepared effects
        self.decider = -1
        self.in_doubt = False
        self.whole = False  # the whole shard is locked, not only its keys
        self.watcher = 0  # an EXEC's client: its WATCHes here go when the transaction ends, not before
        self.shared = False  # a cross-shard read: its keys are locked SHARED (TxnState.readers counts them)
        # The decider counts the transaction's changes (COUNTED; assumed of one in doubt in the log).
        self.counted = True


class ScratchKeyspace(Keyspace):
    """The executor's keyspace: notes the keys a command looks up beyond those the
    transaction locked (SORT BY/GET patterns, a script's undeclared keys), so the
    router can lock them too and run it again."""

    __slots__ = ("declared", "undeclared", "loaded")

    def __init__(self) -> None:
        super().__init__()
        self.declared: set[bytes] | None = set()  # None after a flush: every other key is gone for real
        self.undeclared: dict[bytes, None] = {}
        self.loaded: set[bytes] = set()  # the keys the participants had (a value when locked)

    def get(self, key: bytes) -> object | None:
        declared = self.declared
        if declared is not None and key not in declared:
            self.undeclared[key] = None
        return super().get(key)

    def peek(self, key: bytes) -> object | None:
        declared = self.declared
        if declared is not None and key not in declared:
            self.undeclared[key] = None
        return super().peek(key)

    def flush(self) -> None:
        """A FLUSHALL/FLUSHDB inside the transaction. Redis counts the keys present then;
        the scratch keyspace may hold only the transaction's, so every participant counts
        the keys it drops itself (TxnState._apply: those it had when locked) and the first
        flush here counts what the commands before it changed of that: the keys they
        created, less those they removed. A later flush finds every key here."""
        if self.declared is None:
            super().flush()
            return
        data, loaded = self.data, self.loaded
        created = sum(1 for key in data if key not in loaded) - sum(1 for key in loaded if key not in data)
        changes = self.changes + created
        super().flush()
        self.changes = changes


class ScratchShard:
    """The ShardView of the executor's scratch keyspace: the shard's settings,
    every slot (the keys of all participants are here), its WATCH registry."""

    def __init__(self, settings: Mapping[str, int], watches: Watches, calls: list[RunCall],
                 log_at_once: Callable[[Any, list[bytes], int], None]) -> None:
        self.settings = settings
        self.slot_range = (0, SLOT_COUNT - 1)
        self.watches = watches
        self.call_stats: dict[Any, CommandStats] = {}  # a script's redis.calls: the shard's once the run counts
        self.calls = calls  # the run's commands in order (_run_queue): its scripts' redis.calls go in too
        self.log_at_once = log_at_once  # the shard's log_script_call, past MAX_HELD_CALLS

    def script_call_stat(self, cmd: Any) -> CommandStats:
        stat = self.call_stats.get(cmd)
        if stat is None:
            stat = self.call_stats[cmd] = CommandStats()
        return stat

    def log_script_call(self, cmd: Any, argv: list[bytes], duration_us: int) -> None:
        """A script's redis.call, for SLOWLOG and LATENCY once the run counts (before its
        script's own entry, as on one shard); its commandstats are in call_stats. Past
        MAX_HELD_CALLS logged at once (then a run thrown away leaves its later calls logged)."""
        if len(self.calls) >= MAX_HELD_CALLS:
            self.log_at_once(cmd, argv, duration_us)
            return
        self.calls.append((argv, None, duration_us))




class TxnState:
    """Locks, deferred requests, transactions and recent decisions of one shard."""

    def __init__(self, shard: Shard) -> None:
        self.shard = shard
        self.locks: dict[bytes, int] = {}  # key -> txid holding it, or SHARED (cross-shard reads)
        self.readers: dict[bytes, int] = {}  # key locked SHARED -> how many reads hold it
        self.whole_txid = 0  # a transaction holding the whole shard (every request waits)
        self.txns: dict[int, Txn] = {}
        self.deferred: deque[tuple[ReplySink, Request]] = deque()
        self.deferred_cids: dict[int, int] = {}  # client id -> its requests waiting
        self.deferred_others = 0  # deferred requests that are not cross-shard reads (writers, mostly)
        self.decisions: OrderedDict[int, tuple[bool, int]] = OrderedDict()  # txid -> (commit, seq)
        self.marks: list[list[Any]] = []  # markers for the next record
        self.wake = trio.Event()
        self.lock_waits = 0  # requests that ever waited for a lock (INFO)
        self.fence = ScriptFence()  # clients whose script went back to the router (shards/script_fence.py)

    # --- deferral (called for every request while shard.txn_busy) -------------------

    def busy(self) -> bool:
        return bool(self.locks or self.deferred or self.whole_txid or self.fence.fenced)

    def defer(self, conn: ReplySink, req: Request) -> bool:
        """Whether req must wait: it touches a locked key, or an earlier request of
        its client waits. Then it is queued, in arrival order. A client fenced behind
        its script's retry waits apart (shards/script_fence.py)."""
        if self.fence.fenced and self.fence.hold(conn, req):
            return True
        cid = req.cid
        argv = req.argv
        if (argv[0] == VERB_TXREAD or argv[0] == VERB_TXLOCK) and argv[2] in NEVER_WAIT:
            return False  # it answers TXBUSY rather than wait while holding locks elsewhere
        if not (cid and cid in self.deferred_cids):
            if argv[0][:1] == INTERNAL_PREFIX and argv[0] not in WAITING_VERBS:
                return False
            if not self.whole_txid:
                keys = self.request_keys(req)
                locks = self.locks
                if keys is not None and not self._held_back(argv, keys):
                    return False
                if keys is None and not locks:
                    return False
        assert len(self.deferred) < MAX_DEFERRED_REQUESTS, "deferred requests unbounded"
        self.deferred.append((conn, req))
        if cid:
            self.deferred_cids[cid] = self.deferred_cids.get(cid, 0) + 1
        if argv[0] != VERB_TXREAD:
            self.deferred_others += 1
        self.lock_waits += 1
        return True

    def _held_back(self, argv: list[bytes], keys: list[bytes]) -> bool:
        """Whether a key of the request is locked. A cross-shard read (TXREAD) shares a
        key other reads hold (SHARED), unless a request other than a read waits here:
        it may be a writer waiting for that key, which later readers must not starve; a
        batch of reads shares one txid (server/txn_read.py) and is not held back by its
        own locks."""
        locks = self.locks
        if argv[0] == VERB_TXREAD or (argv[0] == VERB_TXLOCK and argv[2] == READ_LOCK):
            txid = int(argv[1])
            # A batch holding locks here already does not queue behind a waiter: it may wait for them.
            deferred = self.deferred_others > 0 and txid not in self.txns
            for key in keys:
                holder = locks.get(key, txid)
                if holder != txid and (holder != SHARED or deferred):
                    return True
            return False
        return any(key in locks for key in keys)

    def request_keys(self, req: Request) -> list[bytes] | None:
        """The keys a request touches; None when it may touch any (a keyless write)."""
        argv = req.argv
        if argv[0] == VERB_TXREAD:
            return argv[4:]
        if argv[0] == VERB_TXLOCK:
            if argv[2] in WHOLE_MODES:
                return None  # it waits until no key is locked
            if argv[2] != b"exec":
                return argv[3:]
            return argv[3:] + sorted(self.shard.watches.by_client.get(req.cid, ()))
        if argv[0] == VERB_EXEC:
            keys: list[bytes] = []
            for queued in unpack_transaction(argv[1]):
                if queued[0] == VERB_LITERAL:
                    continue
                some = command_keys(queued)
                if some is None:
                    return None
                keys.extend(some)
            return keys
        return command_keys(argv)

    async def drain_loop(self) -> None:
        """Run the requests that waited for locks, once some were released: outside
        any batch (each one is a batch of its own, so its record and its held reply
        agree), in arrival order; those that still conflict wait again."""
        while True:
            await self.wake.wait()
            self.wake = trio.Event()
            waiting, self.deferred = self.deferred, deque()
            self.deferred_cids.clear()
            self.deferred_others = 0
            self.shard.txn_busy = self.busy()
            execute = self.shard.execute_batch
            for conn, req in waiting:
                replies = execute(conn, [req])
                if replies:
                    conn.send(replies)

    # --- the verbs ------------------------------------------------------------------

    def handle(self, conn: ReplySink, req: Request, next_seq: int) -> tuple[bytes | None, int]:
        """Run one transaction verb: (internal reply, seq it must wait for); None: parked (TXWAIT)."""
        verb = req.argv[0]
        if verb == VERB_TXWAIT:
            return self._wait(conn, req)
        try:
            if verb == VERB_TXLOCK:
                return self._lock(conn, req, next_seq)
            if verb == VERB_TXREAD:
                return self._read(conn, req, next_seq)
            if verb == VERB_TXRUN:
                return encode_internal(True, self._run(req)), 0
            if verb == VERB_TXPREPARE:
                return self._prepare(req, next_seq)
            if verb == VERB_TXDECIDE:
                return self._decide(req, next_seq)
            if verb == VERB_TXCOMMIT:
                return self._commit(int(req.argv[1]), next_seq)
            if verb == VERB_TXABORT:  # b"retry": the router locks again; the WATCHes stay
                return self._abort(int(req.argv[1]), next_seq, req.argv[2:] == [RETRY])
            if verb == VERB_TXRESOLVE:
                return self._resolve(int(req.argv[1]), next_seq)
            assert verb == VERB_TXINDOUBT, f"unknown transaction verb {verb!r}"
            return encode_internal(True, [[t.txid, t.decider] for t in self.txns.values() if t.in_doubt]), 0
        except ReplyError as e:
            return encode_internal(False, e.message), 0
        finally:
            self.shard.txn_busy = self.busy()

    def _lock(self, conn: ReplySink, req: Request, next_seq: int) -> tuple[bytes, int]:
        shard = self.shard
        txid = int(req.argv[1])
        mode = req.argv[2]
        keys = req.argv[3:]
        if mode == b"more":
            return self._lock_more(conn, txid, keys, next_seq)
        if mode == READ_LOCK:  # keys the command only reads (server/txn.py): shared, as a cross-shard read's
            txn = self.txns[txid] = Txn(txid, [], conn)
            txn.shared = True
            self._share(txn, keys)
            values, wait = self._values(keys, False, next_seq)
            return encode_internal(True, [False, pack(values), shard.db.oom]), wait
        watched: list[bytes] = []
        dirty = False
        db = shard.db
        whole = mode in WHOLE_MODES  # a MULTI with KEYS, DBSIZE, FLUSHDB...: every request waits
        if mode in WITH_ALL_VALUES:  # ... and it reads the whole keyspace: every value goes to the executor
            if len(db.data) > MAX_WHOLE_KEYS:
                raise ReplyError(b"ERR KEYS, DBSIZE, RANDOMKEY or SCAN in a transaction across shards reads at most "
                                 b"%d keys per shard" % MAX_WHOLE_KEYS)
            keys = keys + [key for key in db.data if key not in keys]
        txn = Txn(txid, [], conn)
        if (mode == b"exec" or mode == b"all" or mode == b"wide") and req.cid:  # EXEC checks the WATCHes
            # They stay (locked) until the transaction ends: one that restarts checks them again.
            watched = sorted(shard.watches.by_client.get(req.cid, ()))
            dirty = shard.watches.is_dirty(req.cid, shard.db)
            txn.watcher = req.cid
        txn.keys = list(dict.fromkeys(req.argv[3:] + watched))
        assert len(self.locks) + len(txn.keys) <= MAX_LOCKS, "too many locked keys"
        for key in txn.keys:
            self.locks[key] = txid
        if whole:
            assert not self.whole_txid, "two transactions hold a whole shard"
            txn.whole = True
            self.whole_txid = txid
        self.txns[txid] = txn
        values, wait = self._values(keys, mode == b"keys", next_seq)
        return encode_internal(True, [dirty, pack(values), db.oom]), wait

    def _lock_more(self, conn: ReplySink, txid: int, keys: list[bytes], next_seq: int) -> tuple[bytes, int]:
        """Keys a transaction's run found it reads beyond those it declared (SORT BY/GET
        patterns, a script's undeclared keys): locked if free, never waited for."""
        locks = self.locks
        if (self.whole_txid and self.whole_txid != txid) or any(locks.get(key, txid) != txid for key in keys):
            return encode_internal(False, TXBUSY), 0
        txn = self.txns.get(txid)
        if txn is None:
            txn = self.txns[txid] = Txn(txid, [], conn)
        assert len(locks) + len(keys) <= MAX_LOCKS, "too many locked keys"
        for key in keys:
            if key not in locks:
                locks[key] = txid
                txn.keys.append(key)
        values, wait = self._values(keys, False, next_seq)
        return encode_internal(True, [False, pack(values), self.shard.db.oom]), wait

    def _values(self, keys: list[bytes], presence_only: bool,
                next_seq: int) -> tuple[list[tuple[bytes, bytes | None, int]], int]:
        """Each key's DUMP payload and absolute expiry (None: absent; b"": present, when
        only presence is asked: DEL/UNLINK need not move the values), and the seq the
        answer must wait for (that of the values, or of an expiry logged on the way)."""
        shard = self.shard
        db = shard.db
        effects_before = len(db.effects)
        db.frozen_ms = time.time_ns() // 1_000_000
        values: list[tuple[bytes, bytes | None, int]] = []
        lps = shard.settings["list-max-listpack-size"]
        try:
            for key in dict.fromkeys(keys):
                value = db.get(key)  # an expired key is deleted (and logged) here
                if value is None:
                    values.append((key, None, 0))
                    continue
                if presence_only:
                    values.append((key, b"", 0))
                    continue
                try:
                    payload = dump_payload(value, lps)
                except RdbError as e:
                    raise ReplyError(b"ERR cannot move key across shards: %s" % str(e).encode()) from None
                values.append((key, payload, db.expires.get(key, 0)))
        finally:
            db.frozen_ms = 0
        if len(db.effects) > effects_before:
            return values, next_seq
        return values, shard.hazards.wait_seq(keys)

    def _read(self, conn: ReplySink, req: Request, next_seq: int) -> tuple[bytes, int]:
        """A cross-shard read (server/txn_read.py): lock its keys here and run it on
        them; the locks stay until the router's TXABORT, once every shard has read."""
        argv = req.argv
        keys = argv[4:]
        txid = int(argv[1])
        if argv[2] == b"try" and (self.whole_txid or self._held_back(argv, keys)
                                  or (req.cid and req.cid in self.deferred_cids)):
            return encode_internal(False, TXBUSY), 0
        txn = self.txns.get(txid)  # the reads of one batch share a txid and its locks
        if txn is None:
            txn = self.txns[txid] = Txn(txid, [], conn)
            txn.shared = True
        assert txn.shared, "a read under a writer's txid"
        self._share(txn, keys)
        shard = self.shard
        db = shard.db
        ctx = shard.ctx
        ctx.client_id = req.cid
        effects_before = len(db.effects)
        db.frozen_ms = time.time_ns() // 1_000_000
        db.count_reads = True
        try:
            reply = encode_internal(True, run_command(ctx, argv[3:]))
        finally:
            db.frozen_ms = 0
            db.count_reads = False
        if len(db.effects) > effects_before:  # a key expired here: its deletion is logged
            return reply, next_seq
        return reply, shard.hazards.wait_seq(keys)

    def _share(self, txn: Txn, keys: list[bytes]) -> None:
        """Lock keys SHARED for a read transaction: other reads may hold them too,
        writers wait until the last reader goes (counted in self.readers)."""
        locks = self.locks
        readers = self.readers
        held = txn.keys
        mine = set(held)  # a batch's earlier reads' keys
        assert len(locks) + len(keys) <= MAX_LOCKS, "too many locked keys"
        for key in dict.fromkeys(keys):
            if key in mine:
                continue
            holder = locks.get(key)
            if holder is None:
                locks[key] = SHARED
                readers[key] = 1
            else:
                assert holder == SHARED, "a read sharing a key a writer holds"  # _held_back let it in
                readers[key] += 1
            held.append(key)

    def _wait(self, conn: ReplySink, req: Request) -> tuple[bytes | None, int]:
        """BLMPOP/BZMPOP across shards (server/txn.py): wait as a blocked client does
        until one of this shard's keys holds something to pop, popping nothing; the
        router then pops as a cross-shard transaction."""
        argv = req.argv
        shard = self.shard
        kind = ListValue if argv[1] == b"list" else ZSetValue
        command = argv[3:]
        try:
            cmd = lookup(command)
            keys = [command[i] for i in cmd.key_indexes(command)]
            deadline_ms = parse_timeout_ms(argv[2], shard.db.now())
            if req.cid in shard.blocked.by_client:
                raise ReplyError(b"ERR the client is blocked already")
        except ReplyError as e:
            return encode_error(e.message), 0
        db = shard.db
        for key in keys:
            if type(db.peek(key)) is kind:
                return encode(key, req.proto), 0

        def serve(_ctx: object, key: bytes) -> bytes | None:
            return key if type(db.peek(key)) is kind else None

        shard.park_waiter(Waiter(conn, req.rid, req.cid, req.proto, command,
                                 Block(keys, deadline_ms, NULL_ARRAY, serve)))
        return None, 0

    def _run(self, req: Request) -> list:
        """The executor: run the commands over a scratch keyspace holding every key."""
        argv = req.argv
        proto = int(argv[2])
        multi = argv[3] == b"multi"
        every_value = WHOLE_RUN in argv[6:]
        counting = COUNT_RUN in argv[6:]
        batch = argv[3] == BATCH_RUN
        commands = [] if batch else unpack_transaction(argv[4])
        shard = self.shard
        scratch = ScratchKeyspace()
        from durakv.shards.luaenv import scripting_of  # the Lua runtime is made on first use
        scripting = scratch.scripting = scripting_of(shard.db)
        declared = scratch.declared
        assert declared is not None, "a fresh scratch keyspace"
        for key, payload, when_ms in unpack_values(argv[5]):
            declared.add(key)
            if payload is None:
                continue
            try:
                value = load_payload(payload, verify_payload(payload), shard.settings, MAX_DECOMPRESSED_BYTES)
            except RdbError as e:
                raise ReplyError(b"ERR bad value in a cross-shard transaction: %s" % str(e).encode()) from None
            scratch.put(key, value)
            scratch.loaded.add(key)
            if when_ms:
                scratch.set_expire(key, when_ms)
        changed: dict[bytes, None] = {}
        flushed = []
        scratch.on_modified = lambda key: changed.__setitem__(key, None)

        def on_flush() -> None:  # every participant flushes; the keys written later are restored
            flushed.append(True)
            changed.clear()
            scratch.declared = None
        scratch.on_flush = on_flush
        scratch.frozen_ms = time.time_ns() // 1_000_000
        scratch.oom = OOM_RUN in argv[6:] or shard.db.oom
        calls: list[RunCall] = []
        scratch_shard = ScratchShard(shard.settings, shard.watches, calls, shard.log_script_call)
        ctx = Ctx(scratch, scratch_shard)
        ctx.client_id = req.cid
        ctx.proto = proto
        ctx.in_multi = multi
        # A script's KEYS, DBSIZE, SCAN, RANDOMKEY or FLUSHALL needs every shard's keys:
        # without them here, the router runs it again with every shard locked whole.
        wants_all: list[bytes] = []
        denials: list[list] = []
        outer_on_call = scripting.on_call

        def on_call(call: list[bytes]) -> None:
            if not every_value and scratch.declared is not None and call[0].lower() in WHOLE_KEYSPACE_VERBS:
                wants_all.append(call[0])
            if outer_on_call is not None:
                outer_on_call(call)
        scripting.on_call = on_call
        held_logs = scripting.held_logs = HeldLogs()  # only the final run's redis.log lines are written
        errors_before = dict(scripting.error_counts)  # a run thrown away counts no errorstats
        try:
            reply: bytes | list[bytes]
            if batch:  # a client's pipelined cross-shard writes (server/txn_batch.py): a reply each
                reply = [_run_queue(ctx, unit, in_multi, proto, shard.index, calls, denials)
                         for in_multi, unit in _batch_units(ctx, argv[4])]
            else:
                reply = _run_queue(ctx, commands, multi, proto, shard.index, calls, denials)
        finally:
            scripting.on_call = outer_on_call
            scripting.held_logs = None
        missing = dict(scratch.undeclared)
        missing.update((key, None) for key in changed if key not in declared and not flushed)
        if wants_all or missing:  # thrown away: the router locks more and asks again
            scripting.error_counts.clear()
            scripting.error_counts.update(errors_before)
            return [b"", pack([]), False, [] if wants_all else list(missing), bool(wants_all), []] + [0] * counting
        held_logs.write()
        publishes = held_publishes(scratch.events)  # a script's PUBLISHes: sent once its decision is durable
        for argv_run, failed, usec in calls:  # the final run: counted and logged as on one shard
            cmd = find(argv_run)
            if cmd is None:
                continue
            if failed is None:  # a script's redis.call (counted with call_stats below)
                shard.log_script_call(cmd, argv_run, usec)
                continue
            stat = shard.script_call_stat(cmd)
            stat.calls += 1
            stat.usec += usec
            stat.failed += failed
            shard.log_slow(cmd, argv_run, usec, req.cid)
        for cmd, counted in scratch_shard.call_stats.items():  # its scripts' redis.calls, as on one shard
            stat = shard.script_call_stat(cmd)
            stat.calls += counted.calls
            stat.usec += counted.usec
            stat.failed += counted.failed
            stat.rejected += counted.rejected
        lps = shard.settings["list-max-listpack-size"]
        states: list[tuple[bytes, bytes | None, int]] = []
        for key in (scratch.data if flushed else changed):
            value = scratch.data.get(key)
            if value is None:
                states.append((key, None, 0))
            else:
                states.append((key, dump_payload(value, lps), scratch.expires.get(key, 0)))
        if denials and isinstance(reply, bytes):  # ahead of the reply, for the router's ACL LOG (as on one shard)
            reply = with_denials(reply, denials)
        if publishes and not (states or flushed):  # nothing to decide: they go once this batch is durable
            shard.db.events.extend(publishes)
            publishes = []
        # Else the router hands them to the decider (TXDECIDE), which sends them once its decision is durable.
        answer = [reply, pack(states), bool(flushed), [], False, [list(p) for p in publishes]]
        # scratch.changes: Redis' dirty count of the commands run (shards/changes.py), which the decider logs.
        return answer + [scratch.changes] * counting

    def _prepare(self, req: Request, next_seq: int) -> tuple[bytes, int]:
        argv = req.argv
        txid = int(argv[1])
        txn = self.txns.get(txid)
        if txn is None:
            raise ReplyError(b"ERR unknown transaction (its locks were released)")
        crash_point("participant-at-prepare")
        txn.decider = int(argv[2])
        txn.effects = unpack_effects(argv[4])
        txn.counted = COUNTED in argv[5:]
        self.marks.append([MARK_PREPARE, txid, txn.decider, unpack_ints(argv[3]), txn.effects])
        if crash_armed("participant-after-prepare"):  # prepared durably, never answered
            trio.lowlevel.spawn_system_task(self._crash_when_durable, next_seq, "participant-after-prepare")
            return encode_internal(True, True), 1 << 62
        return encode_internal(True, True), next_seq

    def _decide(self, req: Request, next_seq: int) -> tuple[bytes, int]:
        txid = int(req.argv[1])
        decided = self.decisions.get(txid)
        txn = self.txns.get(txid)
        if decided is not None and not decided[0] or txn is None:
            raise ReplyError(b"ERR transaction aborted")
        # [verb, txid, effects, publishes, changes]: the transaction's Redis dirty count, all of it the
        # decider's; an older router's [verb, txid, effects(, publishes)]: the effects count as they apply.
        argv = req.argv
        self._apply(unpack_effects(argv[2]), int(argv[4]) if len(argv) > 4 else -1)
        self.marks.append([MARK_DECIDE_COMMIT, txid])
        publishes = unpack_effects(argv[3]) if len(argv) > 3 else []
        if publishes:  # the script's PUBLISHes (shards/script_effects.py): out once this record is durable
            self._hold_publishes(publishes)
        self._remember(txid, True, next_seq)
        self._release(txid)
        if crash_armed("decider-after-decision"):
            trio.lowlevel.spawn_system_task(self._crash_when_durable, next_seq, "decider-after-decision")
            return encode_internal(True, True), 1 << 62  # never answered
        return encode_internal(True, True), next_seq

    async def _crash_when_durable(self, seq: int, step: str) -> None:
        while self.shard.hazards.durable_seq < seq:
            await trio.sleep(0.001)
        crash_point(step)

    def _commit(self, txid: int, next_seq: int) -> tuple[bytes, int]:
        txn = self.txns.get(txid)
        if txn is None or txn.effects is None:
            return encode_internal(True, False), 0  # resolved already
        crash_point("participant-before-commit")
        self._apply(txn.effects, 0 if txn.counted else -1)  # the decider counted the transaction's changes
        self.marks.append([MARK_COMMIT, txid])
        self._release(txid)
        return encode_internal(True, True), next_seq

    def _abort(self, txid: int, next_seq: int, retry: bool = False) -> tuple[bytes, int]:
        txn = self.txns.get(txid)
        if txn is None:
            return encode_internal(True, False), 0
        prepared = txn.effects is not None
        if prepared:
            self.marks.append([MARK_ABORT, txid])
        self._release(txid, keep_watches=retry)
        return encode_internal(True, True), next_seq if prepared else 0

    def _resolve(self, txid: int, next_seq: int) -> tuple[bytes, int]:
        """The decider: the decision, or (none yet) a durable presumed abort."""
        decided = self.decisions.get(txid)
        if decided is None:
            self.marks.append([MARK_DECIDE_ABORT, txid])
            self._remember(txid, False, next_seq)
            if txid in self.txns:
                self._release(txid)
            return encode_internal(True, b"abort"), next_seq
        commit, seq = decided
        wait = seq if seq > self.shard.hazards.durable_seq else 0
        return encode_internal(True, b"commit" if commit else b"abort"), wait

    # --- helpers --------------------------------------------------------------------

    def _apply(self, effects: list[list[bytes]], changes: int) -> None:
        """Apply a transaction's effects to the real keyspace (logged as they run). They
        add `changes` to Redis' dirty count (the commands', not the RESTOREs' and DELs'
        of their final states: shards/changes.py), and the keys a FLUSHALL drops here;
        `changes` -1 (an older router's transaction): what the effects count as they run."""
        shard = self.shard
        ctx = shard.ctx
        db = shard.db
        before = db.changes
        counted = changes >= 0
        changes += before + (len(db.data) if effects and effects[0] == [b"FLUSHALL"] else 0)
        db.frozen_ms = time.time_ns() // 1_000_000
        try:
            for argv in effects:
                run_command(ctx, argv)
        finally:
            db.frozen_ms = 0
        if counted:  # never less than before: a transaction that removes keys of other shards
            db.changes = max(changes, before)  # before a FLUSHALL can leave the decider's share so
        watches = shard.watches
        if watches.by_key:  # each key the transaction wrote, as Redis signals it, even one DEL finds absent
            for key in effect_keys(effects):
                if key in watches.by_key:
                    watches.touched(key)

    def _hold_publishes(self, publishes: list[list[bytes]]) -> None:
        """A cross-shard script's PUBLISHes, as its executor held them: with this batch's
        events, released once the decision record is durable (Shard.publish_events)."""
        from durakv.shards.luaenv import scripting_of  # the Lua runtime is made on first use
        scripting_of(self.shard.db).publishes_held = True
        self.shard.db.events.extend((channel, message) for channel, message in publishes)

    def _remember(self, txid: int, commit: bool, seq: int) -> None:
        decisions = self.decisions
        decisions[txid] = (commit, seq)
        while len(decisions) > MAX_DECISIONS:
            decisions.popitem(last=False)

    def _release(self, txid: int, keep_watches: bool = False) -> None:
        txn = self.txns.pop(txid)
        if txn.watcher and not keep_watches:  # EXEC ends: its client's WATCHes go, as in Redis
            self.shard.watches.unwatch(txn.watcher)
        if txn.whole:
            self.whole_txid = 0
        locks = self.locks
        if txn.shared:
            readers = self.readers
            for key in txn.keys:
                left = readers[key] - 1
                if left:
                    readers[key] = left
                else:
                    del readers[key]
                    del locks[key]
        else:
            for key in txn.keys:
                if locks.get(key) == txid:
                    del locks[key]
        if self.deferred:
            self.wake.set()

    def fence_client(self, cid: int, conn: ReplySink | None) -> None:
        """The client's script went back to the router: its later requests wait (shards/script_fence.py)."""
        self.fence.fence(cid, conn)
        self.shard.txn_busy = True

    def unfence_client(self, cid: int) -> int:
        """The router's retry of the client's script is done: what the client sent since
        runs now, in order, as requests that waited for a lock do; how many."""
        held = self.fence.unfence(cid)
        if held:
            assert len(self.deferred) + len(held) <= MAX_DEFERRED_REQUESTS, "deferred requests unbounded"
            self.deferred.extend(held)
            self.deferred_cids[cid] = self.deferred_cids.get(cid, 0) + len(held)
            self.deferred_others += len(held)
            self.wake.set()
        self.shard.txn_busy = self.busy()
        return len(held)

    def conn_closed(self, conn: ReplySink) -> None:
        """A coordinator's connection closed: its unprepared transactions are
        released; its prepared ones are in doubt until a router resolves them."""
        self.fence.conn_closed(conn)
        for txn in list(self.txns.values()):
            if txn.conn is conn:
                if txn.effects is None:
                    self._release(txn.txid)
                else:
                    txn.in_doubt = True
                    txn.conn = None
        if any(waiting is conn for waiting, _req in self.deferred):  # nobody is left to answer
            self.deferred = deque(item for item in self.deferred if item[0] is not conn)
            self.deferred_cids.clear()
            self.deferred_others = sum(1 for _conn, req in self.deferred if req.argv[0] != VERB_TXREAD)
            for _conn, req in self.deferred:
                if req.cid:
                    self.deferred_cids[req.cid] = self.deferred_cids.get(req.cid, 0) + 1
            self.wake.set()
        self.shard.txn_busy = self.busy()

    # --- replay ---------------------------------------------------------------------

    def replayed(self, seq: int, marks: list[list[Any]]) -> None:
        """Markers of a record read at start: rebuild prepared transactions and decisions."""
        for mark in marks:
            kind, txid = mark[0], mark[1]
            if kind == MARK_PREPARE:
                effects = [[bytes(a) for a in argv] for argv in mark[4]]
                txn = Txn(txid, effect_keys(effects), None)
                txn.whole = any(argv[0] in (b"FLUSHALL", b"FLUSHDB") for argv in effects)
                txn.effects = effects
                txn.decider = mark[2]
                txn.in_doubt = True
                self.txns[txid] = txn
            elif kind in (MARK_COMMIT, MARK_ABORT):
                self.txns.pop(txid, None)
            elif kind == MARK_DECIDE_COMMIT:
                self._remember(txid, True, seq)
            else:
                assert kind == MARK_DECIDE_ABORT, f"unknown transaction marker {kind}"
                self._remember(txid, False, seq)

    def lock_in_doubt(self) -> None:
        """After replay: the keys of transactions in doubt stay locked until resolved."""
        for txn in self.txns.values():
            for key in txn.keys:
                self.locks[key] = txn.txid
            if txn.whole:
                self.whole_txid = txn.txid
        if self.txns:
            logger.warning("shard %d: %d cross-shard transactions in doubt; their keys wait for the decision",
                           self.shard.index, len(self.txns))
        self.shard.txn_busy = self.busy()


def _run_queue(ctx: Ctx, commands: list[list[bytes]], multi: bool, proto: int, shard_index: int,
               calls: list[RunCall], denials: list[list]) -> bytes:
    """The executor's run of a command or a MULTI's queue: the reply as the client gets
    it; each command run goes to `calls` (argv, whether it failed, µs) for commandstats,
    the redis.calls an ACL user's scripts were refused to `denials` (for ACL LOG)."""
    parts = [b"*%d\r\n" % len(commands)] if multi else []
    for queued in commands:
        if queued[0] == VERB_LITERAL:
            parts.append(queued[1])
            continue
        if queued[0] == VERB_AS_USER:  # an ACL user's script: its redis.calls obey the user's rules
            ctx.acl_user = user_from_rules(queued[1])
            queued = queued[2:]
        start_ns = time.perf_counter_ns()
        try:
            result = run_command(ctx, queued)
            if type(result) is Block:  # a blocking pop with nothing to take answers at once (the router waits)
                result = result.timeout_reply
            parts.append(encode(result, proto))
        except ReplyError as e:
            parts.append(encode_error(e.message))
        except Exception:
            logger.exception("shard %d: command %r failed in a cross-shard transaction", shard_index, queued[:3])
            parts.append(encode_error(b"ERR internal error executing '%s'" % queued[0][:64]))
        finally:
            ctx.acl_user = None
            denials.extend(ctx.acl_denials[:MAX_SCRIPT_DENIALS - len(denials)])
            ctx.acl_denials = []
        calls.append((queued, parts[-1][:1] == b"-", (time.perf_counter_ns() - start_ns) // 1000))
    return b"".join(parts)


def _batch_units(ctx: Ctx, packed: bytes) -> Iterator[tuple[bool, list[list[bytes]]]]:
    """A batch's units in order, each a command or a MULTI's queue; ctx.in_multi set for each."""
    for in_multi, unit in _batch_decoder.decode(packed):
        ctx.in_multi = in_multi
        yield in_multi, unpack_transaction(unit)


def crash_point(step: str) -> None:
    """Exit (as kill -9 would leave the process) at STEP if it is armed, disarming it
    first, so the restarted process runs on."""
    if not crash_armed(step):
        return
    os.unlink(os.environ[CRASH_ENV])
    logger.critical("%s: exiting at step %s", CRASH_ENV, step)
    logging.shutdown()
    os._exit(CRASH_EXIT_STATUS)


async def hold_point(step: str) -> None:
    """Fault injection for tests: with DURAKV_TXN_HOLD=PATH, a coordinator waits at
    STEP while the file PATH names it (at most a minute), so a test can order another
    client's requests around that moment."""
    for _poll in range(MAX_HOLD_POLLS):
        if not crash_armed(step, HOLD_ENV):
            return
        await trio.sleep(HOLD_POLL_S)
    logger.warning("%s: step %s held for %.0f s; going on", HOLD_ENV, step, MAX_HOLD_POLLS * HOLD_POLL_S)


def effect_keys(effects: list[list[bytes]]) -> list[bytes]:
    return [argv[1] for argv in effects if len(argv) > 1]  # FLUSHALL has none


def command_keys(argv: list[bytes]) -> list[bytes] | None:
    """The keys a command touches; None for a keyless write (it may touch any)."""
    try:
        cmd = lookup(argv)
    except ReplyError:
        return []  # it errors without touching anything
    if cmd.single_key:
        return [argv[1]]
    try:
        indexes = cmd.key_indexes(argv)
    except ReplyError:
        return []
    if not indexes:
        return None if cmd.is_write else []
    return [argv[i] for i in indexes]


# --- where a snapshot may stop ------------------------------------------------------------

# A decider answers in-doubt participants from the decisions in its log after its
# snapshot: a snapshot keeps this much of the newest decisions' history in the log.
DECISION_RETENTION_MS = 10 * 60 * 1000


class _MarkView(msgspec.Struct, array_like=True):
    """A record with its effects left undecoded: only time and transaction markers."""

    written_at_ms: int
    effects: msgspec.Raw
    txns: list[list[Any]] = msgspec.field(default_factory=list)


_mark_view_decoder = msgspec.msgpack.Decoder(_MarkView)


def snapshot_cut(records: Iterable[tuple[int, int, bytes]], base_seq: int, tail_seq: int) -> int:
    """The last seq in (base_seq, tail_seq] a snapshot may cover without losing a
    transaction: before the first PREPARE not resolved by tail_seq (replay applies
    only COMMIT records, so a snapshot past an open PREPARE would drop it for the
    shard that restarts from it) and before the first decision younger than
    DECISION_RETENTION_MS at tail_seq's time (a restarted decider rebuilds its
    decisions from the log after its snapshot)."""
    open_prepares: dict[int, int] = {}
    decisions: list[tuple[int, int]] = []  # (seq, written_at_ms)
    last_ms = 0
    for seq, _epoch, payload in records:
        view = _mark_view_decoder.decode(payload)
        last_ms = view.written_at_ms
        for mark in view.txns:
            kind, txid = mark[0], mark[1]
            if kind == MARK_PREPARE:
                open_prepares[txid] = seq
            elif kind in (MARK_COMMIT, MARK_ABORT):
                open_prepares.pop(txid, None)
            else:
                decisions.append((seq, view.written_at_ms))
    cut = tail_seq
    if open_prepares:
        cut = min(cut, min(open_prepares.values()) - 1)
    for seq, written_at_ms in decisions:
        if last_ms - written_at_ms < DECISION_RETENTION_MS:
            cut = min(cut, seq - 1)
            break
    return max(cut, base_seq)
