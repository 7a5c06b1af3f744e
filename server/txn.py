"""Cross-shard transactions, the router's side: the coordinator of a two-phase
commit between the participant shards' logs (the shard's side and the record
kinds are shards/txn.py; the design is in ARCHITECTURE.md).

A multi-key command whose keys live on several shards (MSET, RENAME, SMOVE,
SUNIONSTORE, ...) or a MULTI/EXEC over several shards runs here: lock every
participant in ascending shard order (several routers coordinate at once; one
order means no deadlock), run the commands on the executor over the values
the locks returned, prepare every writing participant but the decider, let the
decider record the decision with its own effects, then commit the others. The
client's reply leaves once the decision is durable. The client's later
requests wait meanwhile (as behind a blocking command), so none overtakes it.

A shard that died or lost its coordinator with a transaction prepared asks
nothing by itself: every router, whenever a shard link comes up, lists the
shards' transactions in doubt and resolves each with its decider (which
records a presumed abort if it never decided). So a shard lost before the decision
is a known abort, answered as one; only a lost TXDECIDE leaves the outcome unknown
(the client's connection then closes, as for any request a dying shard took).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable, Iterator

import hiredis
import trio

from durakv.server.front import decode_internal
from durakv.server.links import LOST, SCRIPT_EVAL, SCRIPT_FUNCTION, SCRIPT_NONE, Pending
from durakv.shards.blocking import parse_timeout_ms
from durakv.shards.frames import (
    PROTO_INTERNAL, VERB_AS_USER, VERB_TXABORT, VERB_TXCOMMIT, VERB_TXDECIDE, VERB_TXINDOUBT, VERB_TXLOCK,
    VERB_TXPREPARE, VERB_TXRESOLVE, VERB_TXRUN, VERB_TXWAIT, VERB_UNBLOCK,
)
from durakv.shards.evict import EXECABORT_OOM, OOM_MESSAGE
from durakv.shards.resp import NULL_ARRAY, ReplyError, encode, encode_error
from durakv.shards.slots import key_slot
from durakv.shards.t_multi import pack_transaction
from durakv.shards.table import keys_and_flags, lookup
from durakv.shards.txn import (
    COUNT_RUN, COUNTED, FLUSHES, OOM_RUN, READ_LOCK, RETRY, TXBUSY, WHOLE_KEYSPACE, WHOLE_RUN, crash_point, hold_point,
    pack, run_changes, state_effects, unpack_values,
)

if TYPE_CHECKING:
    from durakv.server.client import Client
    from durakv.server.router import Router

logger = logging.getLogger("durakv.router")

MAX_TXNS_IN_FLIGHT = 10_000  # per router; a client has at most one
RESOLVE_RETRY_S = 0.05
RESOLVE_ATTEMPTS = 200  # then the next link change tries again
MAX_BLOCKING_MOVE_ATTEMPTS = 1_000_000  # wakeups of a cross-shard BLMOVE that found the source emptied
SETTLE_ATTEMPTS = 12_000  # 10 minutes for a dead decider to serve again
DELETES = frozenset({b"del", b"unlink"})  # their locks report presence only, no values
# A run that reads keys it did not declare (SORT BY/GET patterns, a script's keys) locks them and runs again.
MAX_DISCOVERY_ROUNDS = 16
MAX_DISCOVERY_RESTARTS = 8  # when one was locked by another transaction: start over, waiting in order
KEY_POPS = frozenset({b"blpop", b"brpop", b"bzpopmin", b"bzpopmax"})  # across shards: start_key_pop
ERR_UNDECLARED = b"-ERR cross-shard transaction aborted: the keys it reads kept changing; nothing was applied\r\n"
ERR_ABORTED = b"-ERR cross-shard transaction aborted: a participant failed; nothing was applied\r\n"


class Lost(Exception):
    """A shard died with the request in flight: its outcome is unknown."""


class LostDecision(Lost):
    """The decider died with TXDECIDE in flight: the transaction may have committed, so
    its client cannot be told either way (a Lost before it means a known abort)."""


class Coordinator:
    """The router's cross-shard transactions."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.in_flight = 0
        self._last_us = 0
        self.committed = 0
        self.aborted = 0
        self.read_waits = 0  # cross-shard reads that found a key locked and waited (server/txn_read.py)
        self.forming_read: Any = None  # the ReadBatch a client's pipelined reads join (server/txn_read.py)
        self.forming_write: Any = None  # the WriteBatch a client's pipelined writes join (server/txn_batch.py)
        self.batched = 0  # cross-shard writes committed in a batch of a client's pipelined ones (txn_batch.py)

    def new_txid(self) -> int:
        """Unique across routers and restarts: microseconds since the epoch, times 64, plus the router index."""
        now_us = time.time_ns() // 1000
        self._last_us = max(self._last_us + 1, now_us)
        return self._last_us * 64 + self.router.index % 64

    def start(self, client: Client, commands: list[list[bytes]], multi: bool) -> Pending:
        """Run `commands` (one command, or a MULTI's queue) across shards; the client's
        further requests wait until the reply is in."""
        router = self.router
        keys: dict[int, list[bytes]] = {}
        owner = router.slot_owner
        for argv in commands:  # checked when dispatched or queued: lookup and key_indexes succeed
            if argv[0] == VERB_AS_USER:  # an ACL user's script: [verb, rules, *argv]
                argv = argv[2:]
            elif argv[0][:1] == b"\x00":
                continue
            cmd = lookup(argv)
            for i in cmd.key_indexes(argv):
                keys.setdefault(owner[key_slot(argv[i])], []).append(argv[i])
        # An ACL user's scripts: the redis.calls they were refused come ahead of the reply, for ACL LOG.
        scripts = any(argv[0] == VERB_AS_USER for argv in commands)
        pending = Pending(client, on_fill=router.acl.script_reply) if scripts else Pending(client)
        client.replies.append(pending)
        if self.in_flight >= MAX_TXNS_IN_FLIGHT:
            pending.fill(b"-ERR too many cross-shard transactions in flight, retry later\r\n")
            return pending
        if multi and any(argv[0][:1] != b"\x00" and lookup(argv).name in WHOLE_KEYSPACE for argv in commands):
            participants = list(range(len(router.links)))  # KEYS, FLUSHDB...: every shard, locked whole
            client.watch_shards = set()
        elif multi:
            participants = sorted(set(keys) | client.watch_shards)
            client.watch_shards = set()  # TXLOCK clears the watches on each participant
        else:
            participants = sorted(keys) or [router.home_shard]  # a script without declared keys runs there
        client.blocked_pending = pending
        client.blocked_shard = -1
        self.in_flight += 1
        assert router.nursery is not None, "transaction before the router serves"
        router.nursery.start_soon(self._run, client, pending, commands, multi, keys, participants)
        return pending

    def start_in(self, client: Client, pending: Pending, commands: list[list[bytes]], keys: list[bytes]) -> None:
        """Run a script again across shards, its reply filling `pending`, a place already
        in the client's queue (server/script_retry.py: it reached another shard's key)."""
        if self.in_flight >= MAX_TXNS_IN_FLIGHT:
            pending.fill(b"-ERR too many cross-shard transactions in flight, retry later\r\n")
            return
        by_shard = self._by_shard(keys)
        if client.blocked_pending is None:  # its requests not yet sent wait for this reply
            client.blocked_pending = pending
            client.blocked_shard = -1
        self.in_flight += 1
        assert self.router.nursery is not None, "transaction before the router serves"
        self.router.nursery.start_soon(self._run, client, pending, commands, False, by_shard,
                                       sorted(by_shard) or [self.router.home_shard])

    def start_blocking_move(self, client: Client, argv: list[bytes]) -> Pending:
        """BLMOVE/BRPOPLPUSH with source and destination on different shards: wait
        on the source shard as a blocked client does (a BLMOVE of the source onto
        itself, RIGHT to RIGHT, which leaves the list as it was), then move one
        element as a cross-shard LMOVE; if another client emptied the source
        meanwhile, wait again."""
        if argv[0].lower() in (b"blmpop", b"bzmpop"):
            return self.start_blocking_pop(client, argv)
        if argv[0].lower() in KEY_POPS:
            return self.start_key_pop(client, argv)
        if argv[0].lower() == b"brpoplpush":
            source, destination, wherefrom, whereto, timeout = argv[1], argv[2], b"RIGHT", b"LEFT", argv[3]
        else:
            source, destination, wherefrom, whereto, timeout = argv[1], argv[2], argv[3], argv[4], argv[5]
        router = self.router
        pending = Pending(client)
        client.replies.append(pending)
        if wherefrom.upper() not in (b"LEFT", b"RIGHT") or whereto.upper() not in (b"LEFT", b"RIGHT"):
            pending.fill(b"-ERR syntax error\r\n")
            return pending
        owner = router.slot_owner
        shards = {owner[key_slot(source)], owner[key_slot(destination)]}
        self._start_blocked(client, pending, owner[key_slot(source)], self._blocking_move,
                            [b"LMOVE", source, destination, wherefrom, whereto], timeout, sorted(shards))
        return pending

    async def _blocking_move(self, client: Client, pending: Pending, move: list[bytes], timeout: bytes,
                             participants: list[int]) -> None:
        source = move[1]
        source_shard = self.router.slot_owner[key_slot(source)]
        keys = self._by_shard(move[1:3])
        deadline = None
        try:
            seconds = float(timeout)
        except ValueError:
            seconds = -1.0
        if seconds > 0:
            deadline = time.monotonic() + seconds
        with self._settling(pending, "blocking move"):
            for _attempt in range(MAX_BLOCKING_MOVE_ATTEMPTS):
                remaining = timeout
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        pending.fill(encode(None, client.proto))
                        return
                    remaining = b"%.3f" % max(left, 0.001)
                client.blocked_shard = source_shard
                woke = await self._ask_raw(source_shard, [b"BLMOVE", source, source, b"RIGHT", b"RIGHT", remaining],
                                           client)
                client.blocked_shard = -1
                if woke[:1] in (b"-", b"*", b"_") or woke == b"$-1\r\n":  # an error, a timeout or an unblock
                    pending.fill(woke)
                    return
                reply = await self._transact(client, [move], False, keys, participants)
                if reply not in (b"$-1\r\n", b"_\r\n"):
                    pending.fill(reply)
                    return
            pending.fill(b"-ERR the source list was emptied by others %d times; giving up\r\n"
                         % MAX_BLOCKING_MOVE_ATTEMPTS)

    def start_blocking_pop(self, client: Client, argv: list[bytes]) -> Pending:
        """BLMPOP/BZMPOP with keys on several shards: pop as a cross-shard LMPOP/ZMPOP;
        if every key is empty, wait on every shard at once (TXWAIT: a blocked client
        that pops nothing) until one of the keys has something, then pop again."""
        pending = Pending(client)
        client.replies.append(pending)
        pop = [b"LMPOP" if argv[0].lower() == b"blmpop" else b"ZMPOP", *argv[2:]]
        try:
            deadline_ms = parse_timeout_ms(argv[1], time.time_ns() // 1_000_000)
            indexes = lookup(pop).key_indexes(pop)
        except ReplyError as e:
            pending.fill(encode_error(e.message))
            return pending
        self._start_blocked(client, pending, -1, self._blocking_pop, pop, deadline_ms,
                            self._by_shard(pop[i] for i in indexes))
        return pending

    async def _blocking_pop(self, client: Client, pending: Pending, pop: list[bytes], deadline_ms: int,
                            keys: dict[int, list[bytes]]) -> None:
        kind = b"list" if pop[0] == b"LMPOP" else b"zset"
        with self._settling(pending, "blocking pop"):
            for _attempt in range(MAX_BLOCKING_MOVE_ATTEMPTS):
                reply = await self._transact(client, [pop], False, keys, sorted(keys))
                if reply not in (b"*-1\r\n", b"_\r\n") or client.closed:
                    pending.fill(reply)
                    return
                remaining = _remaining_timeout(deadline_ms)
                if remaining is None:
                    pending.fill(reply)
                    return
                woke = await self._wait_any(client, [(s, [VERB_TXWAIT, kind, remaining, *pop]) for s in sorted(keys)])
                if woke[:1] in (b"-", b"*", b"_"):  # an error, a timeout or an unblock
                    pending.fill(woke)
                    return
            pending.fill(b"-ERR the keys were emptied by others %d times; giving up\r\n" % MAX_BLOCKING_MOVE_ATTEMPTS)

    def start_key_pop(self, client: Client, argv: list[bytes]) -> Pending:
        """BLPOP/BRPOP/BZPOPMIN/BZPOPMAX with keys on several shards: pop from the first
        key in argument order that has something (a cross-shard transaction, whose
        executor answers nil at once when every key is empty); else block on every
        shard at once with the same command over that shard's keys, so each shard
        serves its waiters in arrival order per key, as Redis does, and the first
        answer (an element, a timeout, CLIENT UNBLOCK) is the reply."""
        pending = Pending(client)
        client.replies.append(pending)
        try:
            deadline_ms = parse_timeout_ms(argv[-1], time.time_ns() // 1_000_000)
        except ReplyError as e:
            pending.fill(encode_error(e.message))
            return pending
        self._start_blocked(client, pending, -1, self._key_pop, argv, deadline_ms, self._by_shard(argv[1:-1]))
        return pending

    def _start_blocked(self, client: Client, pending: Pending, blocked_shard: int,
                       run: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run a cross-shard blocking command as a task of the router; the client is
        blocked on `pending` (CLIENT UNBLOCK reaches blocked_shard, -1: every shard waited on)."""
        client.blocked_pending = pending
        client.blocked_shard = blocked_shard
        self.in_flight += 1
        assert self.router.nursery is not None, "transaction before the router serves"
        self.router.nursery.start_soon(run, client, pending, *args)

    def _by_shard(self, keys: Iterable[bytes],
                  grouped: dict[int, list[bytes]] | None = None) -> dict[int, list[bytes]]:
        """keys grouped by the shard that owns them, in their order (added to `grouped` if given)."""
        grouped = {} if grouped is None else grouped
        owner = self.router.slot_owner
        for key in keys:
            grouped.setdefault(owner[key_slot(key)], []).append(key)
        return grouped

    async def _key_pop(self, client: Client, pending: Pending, argv: list[bytes], deadline_ms: int,
                       keys: dict[int, list[bytes]]) -> None:
        with self._settling(pending, "blocking pop"):
            reply = await self._transact(client, [argv], False, keys, sorted(keys))
            if reply not in (b"*-1\r\n", b"_\r\n") or client.closed:
                pending.fill(reply)
                return
            remaining = _remaining_timeout(deadline_ms)
            if remaining is None:
                pending.fill(reply)
                return
            waits = [(shard, [argv[0], *shard_keys, remaining]) for shard, shard_keys in sorted(keys.items())]
            pending.fill(await self._wait_any(client, waits, give_back=_give_back_verb(argv[0])))

    async def _wait_any(self, client: Client, waits: list[tuple[int, list[bytes]]],
                        give_back: bytes | None = None) -> bytes:
        """Wait on several shards at once (TXWAIT, or a blocking pop over each shard's
        keys); the first answer (in the client's protocol). The others are ended (as if
        the client went away); a pop one of them made meanwhile goes back (give_back:
        the command that returns it). CLIENT UNBLOCK reaches the lowest shard's wait."""
        done = trio.Event()
        first: list[bytes] = []
        answered: set[int] = set()

        def filler(shard: int):
            def on_fill(_pending: Pending, data: bytes) -> None:
                answered.add(shard)
                if not first:
                    first.append(data)
                    done.set()
                elif give_back is not None and data is not LOST and data[:1] == b"*" and data[:3] != b"*-1":
                    self._give_back(shard, give_back, data)
            return on_fill

        links = self.router.links
        shards = [shard for shard, _argv in waits]
        client.blocked_shard = shards[0]
        for shard, argv in waits:
            links[shard].submit(client, client.proto, argv, Pending(client, on_fill=filler(shard)))
        await done.wait()
        client.blocked_shard = -1
        for shard in shards:
            if shard not in answered:
                self._tell(shard, [VERB_UNBLOCK, b"%d" % client.id, b"drop"])
        if first[0] is LOST:
            raise Lost()
        return first[0]

    def _give_back(self, shard: int, verb: bytes, data: bytes) -> None:
        """A pop another shard made for a client already served elsewhere: put the
        element back where it was taken from (LPUSH, RPUSH, ZADD)."""
        reader = hiredis.Reader()
        reader.feed(data)
        popped = reader.gets()
        if not isinstance(popped, list) or len(popped) < 2:
            logger.error("router: cannot give back a cross-shard blocking pop's reply %r", data[:200])
            return
        key, member = popped[0], popped[1]
        if verb == b"ZADD":
            score = popped[2] if isinstance(popped[2], bytes) else b"%.17g" % popped[2]
            argv = [verb, key, score, member]
        else:
            argv = [verb, key, member]
        logger.info("router: a cross-shard %s waiter was served twice; %r goes back to shard %d",
                    verb.decode(), key[:64], shard)
        self._tell(shard, argv)

    async def _ask_raw(self, shard: int, argv: list[bytes], client: Client) -> bytes:
        """One request in the client's protocol; its reply as the client would get it."""
        done = trio.Event()
        box: list[bytes] = []

        def on_fill(_pending: Pending, data: bytes) -> None:
            box.append(data)
            done.set()

        self.router.links[shard].submit(client, client.proto, argv, Pending(client, on_fill=on_fill))
        await done.wait()
        if box[0] is LOST:
            raise Lost()
        return box[0]

    @contextlib.contextmanager
    def _settling(self, pending: Pending, what: str) -> Iterator[None]:
        """Whatever ends a cross-shard run, its client gets a reply and it stops counting as in flight."""
        try:
            yield
        except Lost:
            pending.fill(LOST)
        except Exception:
            logger.exception("router: cross-shard %s failed", what)
            pending.fill(encode_error(b"ERR internal error in a cross-shard transaction"))
        finally:
            self.in_flight -= 1

    async def _run(self, client: Client, pending: Pending, commands: list[list[bytes]], multi: bool,
                   keys: dict[int, list[bytes]], participants: list[int]) -> None:
        with self._settling(pending, "transaction"):
            pending.fill(await self._transact(client, commands, multi, keys, participants))

    async def _transact(self, client: Client, commands: list[list[bytes]], multi: bool,
                        keys: dict[int, list[bytes]], participants: list[int], attempt: int = 0,
                        whole: bool = False) -> bytes:
        """One attempt (see the module's docstring); `whole`: a script in it reads or
        flushes the whole keyspace, so every shard is locked whole with every value moved."""
        txid = self.new_txid()
        proto = client.proto
        locked: list[int] = []
        values: list[Any] = []
        watch_failed = False
        oom = False
        publishes: list = []  # a script's PUBLISHes, held by the executor for the decision
        deletes = not multi and commands[0][0].lower() in DELETES
        mode = (b"all" if multi else b"every") if whole else _lock_mode(commands, multi, deletes)
        # A script that declares no keys locks nothing first: only the keys it is found to touch.
        lock_first = participants if keys or multi or whole else []
        read_only = _read_only_shards(commands[0], keys) if mode == b"one" else ()
        try:
            for shard in lock_first:  # ascending: no deadlock between coordinators
                dirty, packed, shard_oom = await self._ask(shard, [VERB_TXLOCK, b"%d" % txid,
                                                                   READ_LOCK if shard in read_only else mode,
                                                                   *keys.get(shard, [])], client)
                locked.append(shard)
                watch_failed = watch_failed or dirty
                oom = oom or shard_oom
                values.extend(unpack_values(packed))
            if watch_failed:
                self.release(txid, locked)
                return encode(NULL_ARRAY, proto)
            if oom and _denies_oom(commands):  # a participant is over maxmemory (noeviction)
                self.release(txid, locked)
                return encode_error(EXECABORT_OOM if multi else OOM_MESSAGE)
            flushed = False
            if deletes:  # the reply and the effects follow from which keys are present
                present = [(key, None, 0) for key, payload, _when_ms in values if payload is not None]
                reply, packed_states = encode(len(present), proto), pack(present)
                changes = len(present)  # Redis' dirty count: a key each DEL/UNLINK removes
            else:
                executor = min(keys) if keys else participants[0]
                await hold_point("router-before-run")
                script = _script_kind(commands)  # timed by the router, as a script on one shard (BUSY)
                run = [VERB_TXRUN, b"%d" % txid, b"%d" % proto, b"multi" if multi else b"one",
                       pack_transaction(commands)]
                flags = [COUNT_RUN] + [WHOLE_RUN] * whole + [OOM_RUN] * oom
                for _round in range(MAX_DISCOVERY_ROUNDS):
                    answer = await self._ask(executor, [*run, pack([list(v) for v in values]), *flags],
                                             script=script)
                    reply, packed_states, flushed, missing, wants_all, publishes = answer[:6]
                    changes = run_changes(answer)
                    if wants_all:  # a script's KEYS, DBSIZE...: again, with every shard locked whole
                        self.release(txid, locked, retry=True)
                        every = list(range(len(self.router.links)))
                        return await self._transact(client, commands, multi, keys, every, attempt, True)
                    if not missing:
                        break
                    more = await self._lock_more(client, txid, missing, locked)
                    if more is None:  # one is locked by another transaction: again, waiting in order
                        if attempt >= MAX_DISCOVERY_RESTARTS:
                            self.release(txid, locked)
                            return ERR_UNDECLARED
                        self.release(txid, locked, retry=True)  # the next attempt checks the WATCHes again
                        self._by_shard(missing, keys)
                        participants = sorted(set(participants) | set(keys))
                        return await self._transact(client, commands, multi, keys, participants, attempt + 1, whole)
                    values.extend(more)
                else:
                    self.release(txid, locked)
                    return ERR_UNDECLARED
        except LostDecision:
            raise  # from an attempt made again above: its outcome is unknown
        except (ReplyError, Lost) as e:
            self.release(txid, locked)
            never_locked = set(participants) - set(locked)
            if never_locked and multi:
                self.router.unwatch(client.id, never_locked)  # EXEC drops every WATCH, as in Redis
            if isinstance(e, Lost):
                # A shard died with a lock or the run in flight: no decision was asked, so
                # nothing can commit (the outcome is known, unlike a lost TXDECIDE).
                self.aborted += 1
                return ERR_ABORTED
            return encode_error(e.message)
        await hold_point("router-after-run")
        failed = await self.commit_states(txid, locked, participants, packed_states, flushed, changes, publishes)
        return reply if failed is None else failed

    async def commit_states(self, txid: int, locked: list[int], participants: list[int], packed_states: bytes,
                            flushed: bool, changes: int, publishes: list | None = None) -> bytes | None:
        """Steps 3 to 5 for the executor's final key states: prepare the writing participants
        but the decider, decide, commit the others; the other locked shards are released.
        `changes`: the commands' Redis dirty count (shards/changes.py), the decider's to log
        (-1, from an executor of an older version: each shard counts the effects it applies).
        None once the decision is durable (or nothing was written), else the error to answer."""
        states: dict[int, list] = {}
        owner = self.router.slot_owner
        for state in unpack_values(packed_states):
            states.setdefault(owner[key_slot(state[0])], []).append(state)
        # A FLUSHALL/FLUSHDB inside: every shard flushes, then restores the keys written after it.
        effects = {s: ([[b"FLUSHALL"]] if flushed else []) + state_effects(states.get(s, []))
                   for s in (participants if flushed else states)}
        writers = sorted(effects)
        self.release(txid, [s for s in locked if s not in effects])
        if not writers:
            return None
        decider = writers[0]
        others = writers[1:]
        try:
            counted = [COUNTED] if changes >= 0 else []
            await self._ask_all([(s, [VERB_TXPREPARE, b"%d" % txid, b"%d" % decider, pack(writers),
                                      pack(effects[s]), *counted]) for s in others])
        except (ReplyError, Lost):
            # The decider was never asked to decide: presumed abort, even where a participant
            # died with its prepare in flight (it restarts in doubt and asks the decider).
            self.release(txid, writers)
            self.aborted += 1
            return ERR_ABORTED
        crash_point("router-after-prepare")
        try:
            # A script's PUBLISHes go with the decision: sent once it is durable, never on an abort.
            decide = [VERB_TXDECIDE, b"%d" % txid, pack(effects[decider])]
            if changes >= 0:
                decide += [pack(publishes or []), b"%d" % changes]
            elif publishes:
                decide.append(pack(publishes))
            await self._ask(decider, decide)
        except ReplyError:
            self.release(txid, writers)
            self.aborted += 1
            return ERR_ABORTED
        except Lost:
            # The decision may be durable: the others stay prepared until the decider answers again.
            assert self.router.nursery is not None, "transaction before the router serves"
            self.router.nursery.start_soon(self._settle, txid, decider, others)
            raise LostDecision() from None
        crash_point("router-after-decision")
        self.committed += 1
        for shard in others:
            self._tell(shard, [VERB_TXCOMMIT, b"%d" % txid])
        return None

    async def _lock_more(self, client: Client, txid: int, missing: list[bytes],
                         locked: list[int]) -> list[Any] | None:
        """Lock the keys the executor found the transaction reads beyond those it
        declared, where they are free (waiting now could deadlock); their values, or
        None if one is locked (nothing more is then held). Adds the shards to locked."""
        by_shard: dict[int, list[bytes]] = {}
        owner = self.router.slot_owner
        for key in missing:
            by_shard.setdefault(owner[key_slot(key)], []).append(key)
        shards = sorted(by_shard)
        answers = await self.ask_raw_all([(s, [VERB_TXLOCK, b"%d" % txid, b"more", *by_shard[s]]) for s in shards],
                                         client)
        locked.extend(s for s in shards if s not in locked)  # a busy or lost one locked nothing: releasing is harmless
        if any(data is LOST for data in answers):
            raise Lost()
        values: list[Any] = []
        for data in answers:
            try:
                _dirty, packed, _oom = decode_internal(data)
            except ReplyError as e:
                if e.message == TXBUSY:
                    return None
                raise
            values.extend(unpack_values(packed))
        return values

    # --- talking to shards ---------------------------------------------------------

    def release(self, txid: int, shards: list[int], retry: bool = False) -> None:
        """Drop the transaction's locks (and prepared effects) on those shards, not
        waiting; with the client's WATCHes there, unless it is to lock again (retry)."""
        for shard in shards:
            self._tell(shard, [VERB_TXABORT, b"%d" % txid, RETRY] if retry else [VERB_TXABORT, b"%d" % txid])

    def _tell(self, shard: int, argv: list[bytes]) -> None:
        """A request whose reply nobody waits for (a lost one is resolved later)."""
        self.router.links[shard].submit(None, PROTO_INTERNAL, argv, Pending(None, on_fill=_log_failure))

    async def _ask(self, shard: int, argv: list[bytes], client: Client | None = None,
                   script: int = SCRIPT_NONE) -> Any:
        return (await self._ask_all([(shard, argv)], client, script))[0]

    async def _ask_all(self, requests: list[tuple[int, list[bytes]]], client: Client | None = None,
                       script: int = SCRIPT_NONE) -> list:
        """Send requests to shards at once and wait for every reply (decoded);
        raises Lost or the first ReplyError once all are in."""
        replies = await self.ask_raw_all(requests, client, script)
        if any(data is LOST for data in replies):
            raise Lost()
        return [decode_internal(data) for data in replies]

    async def ask_raw_all(self, requests: list[tuple[int, list[bytes]]], client: Client | None = None,
                          script: int = SCRIPT_NONE) -> list:
        """Send internal requests to shards at once; every reply as the shard sent it (or LOST);
        `script` marks a run of a script the router times (server/links.py)."""
        done = trio.Event()
        replies: list[Any] = [None] * len(requests)
        left = len(requests)

        def filler(n: int):
            def on_fill(_pending: Pending, data: bytes) -> None:
                nonlocal left
                replies[n] = data
                left -= 1
                if left == 0:
                    done.set()
            return on_fill

        for n, (shard, argv) in enumerate(requests):
            self.router.links[shard].submit(client, PROTO_INTERNAL, argv, Pending(client, on_fill=filler(n)), script)
        if left:
            await done.wait()
        return replies

    # --- transactions in doubt -------------------------------------------------------

    async def _settle(self, txid: int, decider: int, others: list[int]) -> None:
        """The decider died with the decision asked: once it serves again, ask it
        (it recorded the decision, or records a presumed abort) and tell the others."""
        link = self.router.links[decider]
        for _attempt in range(SETTLE_ATTEMPTS):
            await trio.sleep(RESOLVE_RETRY_S)
            if not link.up:
                continue
            try:
                outcome = await self._ask(decider, [VERB_TXRESOLVE, b"%d" % txid])
            except (ReplyError, Lost):
                continue
            logger.warning("router: transaction %d settled after its decider restarted: %s", txid, outcome.decode())
            verb = VERB_TXCOMMIT if outcome == b"commit" else VERB_TXABORT
            for shard in others:
                self._tell(shard, [verb, b"%d" % txid])
            return
        logger.error("router: transaction %d: decider shard %d did not come back in %.0f s; its participants "
                     "stay locked until a router restarts", txid, decider, SETTLE_ATTEMPTS * RESOLVE_RETRY_S)

    async def resolve_in_doubt(self) -> None:
        """Ask every shard for its transactions in doubt and settle each with its decider."""
        links = self.router.links
        for _attempt in range(RESOLVE_ATTEMPTS):
            unresolved = 0
            for link in links:
                if not link.up:
                    continue
                try:
                    doubtful = await self._ask(link.index, [VERB_TXINDOUBT])
                except (ReplyError, Lost):
                    unresolved += 1
                    continue
                for txid, decider in doubtful:
                    if not links[decider].up:
                        unresolved += 1
                        continue
                    try:
                        outcome = await self._ask(decider, [VERB_TXRESOLVE, b"%d" % txid])
                    except (ReplyError, Lost):
                        unresolved += 1
                        continue
                    verb = VERB_TXCOMMIT if outcome == b"commit" else VERB_TXABORT
                    logger.warning("router: shard %d resolves transaction %d in doubt: %s (decider shard %d)",
                                   link.index, txid, outcome.decode(), decider)
                    try:
                        await self._ask(link.index, [verb, b"%d" % txid])
                    except (ReplyError, Lost):
                        unresolved += 1
            if not unresolved:
                return
            await trio.sleep(RESOLVE_RETRY_S)


def _remaining_timeout(deadline_ms: int) -> bytes | None:
    """A blocking command's timeout argument for the time left until deadline_ms (b"0":
    none), or None once it passed."""
    if not deadline_ms:
        return b"0"
    left_ms = deadline_ms - time.time_ns() // 1_000_000
    if left_ms <= 0:
        return None
    return b"%.3f" % (max(left_ms, 1) / 1000)  # "0.000" would wait forever


def _give_back_verb(verb: bytes) -> bytes:
    """The command that returns what a blocking pop took."""
    return {b"blpop": b"LPUSH", b"brpop": b"RPUSH"}.get(verb.lower(), b"ZADD")


def _script_kind(commands: list[list[bytes]]) -> int:
    """SCRIPT_EVAL or SCRIPT_FUNCTION when a command of the run is a script, else SCRIPT_NONE."""
    for argv in commands:
        if argv[0] == VERB_AS_USER:
            argv = argv[2:]
        name = argv[0].lower()
        if name.startswith(b"eval"):
            return SCRIPT_EVAL
        if name.startswith(b"fcall"):
            return SCRIPT_FUNCTION
    return SCRIPT_NONE


def _read_only_shards(argv: list[bytes], keys: dict[int, list[bytes]]) -> frozenset[int]:
    """The participants of a command (not a script, no keys found as it runs) whose keys
    it only reads (Redis' key specs: RO), e.g. SUNIONSTORE's sources: they lock their keys
    shared (TXLOCK read), so cross-shard reads of them go on meanwhile."""
    if argv[0][:1] == b"\x00":
        return frozenset()
    cmd = lookup(argv)
    if cmd.reads_undeclared_keys is not None or _script_kind([argv]) != SCRIPT_NONE:
        return frozenset()
    found = keys_and_flags(cmd, argv)
    if not found:
        return frozenset()
    read = {argv[i] for i, flags in found if "RO" in flags.split()}
    read.difference_update(argv[i] for i, flags in found if "RO" not in flags.split())
    return frozenset(shard for shard, shard_keys in keys.items() if all(key in read for key in shard_keys))


def _denies_oom(commands: list[list[bytes]]) -> bool:
    """Whether a command of the transaction is refused over maxmemory (Redis' denyoom)."""
    return any(argv[0][:1] != b"\x00" and "denyoom" in lookup(argv).flags for argv in commands)


def _lock_mode(commands: list[list[bytes]], multi: bool, deletes: bool) -> bytes:
    """TXLOCK's mode: b"all" for a MULTI reading the whole keyspace (KEYS, DBSIZE,
    RANDOMKEY, SCAN) before any flush, b"wide" for one that only flushes it first,
    b"exec" for any other MULTI, b"keys" for DEL/UNLINK, b"one" for a command."""
    if not multi:
        return b"keys" if deletes else b"one"
    for argv in commands:
        if argv[0][:1] == b"\x00":
            continue
        name = argv[0].lower()
        if name in FLUSHES:
            return b"wide"
        if lookup(argv).name in WHOLE_KEYSPACE:
            return b"all"
    return b"exec"


def _log_failure(pending: Pending, data: bytes) -> None:
    if data[:1] == b"-" and data is not LOST:
        logger.warning("router: shard refused a transaction request: %r", data[:200])
