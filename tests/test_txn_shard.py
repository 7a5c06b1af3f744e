"""The shard's side of cross-shard transactions (shards/txn.py), driven in-process
through Shard.execute_batch as a router would: locks defer the requests that touch
their keys (and a client's later requests) but not others; a PREPARE survives a
restart as a transaction in doubt whose keys stay locked until it is resolved; a
decider asked to resolve an undecided transaction records a presumed abort that
a later decision cannot override; replay and snapshots apply committed
transactions only."""

from __future__ import annotations

from pathlib import Path

import trio

from durakv.shards.config import Config
from durakv.shards.engine import state_of
from durakv.shards.frames import (
    Request, VERB_TXABORT, VERB_TXCOMMIT, VERB_TXDECIDE, VERB_TXINDOUBT, VERB_TXLOCK, VERB_TXPREPARE,
    VERB_TXREAD, VERB_TXRESOLVE, VERB_TXRUN, internal_reply_decoder,
)
from durakv.shards.records import encode_record
from durakv.shards.shard import Shard
from durakv.shards.t_multi import pack_transaction
from durakv.shards.txn import (
    COUNT_RUN, COUNTED, MARK_COMMIT, MARK_DECIDE_COMMIT, MARK_PREPARE, SHARED, TXBUSY, pack, snapshot_cut,
    state_effects, unpack_values,
)
from durakv.snapshotter.replay import new_context, replay_records
from test_commit_thread import Sink

WAIT_S = 20


def open_shard(data_dir: Path) -> Shard:
    shard = Shard(Config(data_dir=str(data_dir), shards=1).resolved(), 0)
    Path(shard.dir).mkdir(parents=True, exist_ok=True)
    shard.open_log()
    return shard


class Driver:
    """Requests into a shard, replies out, as a router link would see them."""

    def __init__(self, shard: Shard) -> None:
        self.shard = shard
        self.sink = Sink()
        self.rid = 0

    def submit(self, cid: int, *argv: bytes) -> int:
        self.rid += 1
        replies = self.shard.execute_batch(self.sink, [Request(self.rid, cid, 0 if argv[0][:1] == b"\x00" else 2,
                                                                list(argv))])
        if replies:
            self.sink.send(replies)
        return self.rid

    def answered(self, rid: int) -> bool:
        return rid in self.sink.replies()

    async def call(self, cid: int, *argv: bytes) -> object:
        data = await self.sink.wait_for(self.submit(cid, *argv))
        if argv[0][:1] != b"\x00":
            return data
        ok, value = internal_reply_decoder.decode(data)
        return value if ok else ("error", value)


async def serving(shard: Shard, body) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(shard.committer)
        nursery.start_soon(shard.txn.drain_loop)
        await body(Driver(shard))
        nursery.cancel_scope.cancel()
    shard.wal.close()


async def test_locks_defer_only_their_keys_and_a_prepare_survives_a_restart_in_doubt(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"

    async def first(d: Driver) -> None:
        assert await d.call(1, b"SET", b"k1", b"old") == b"+OK\r\n"
        assert await d.call(1, b"SET", b"k2", b"other") == b"+OK\r\n"
        dirty, packed, _oom = await d.call(100, VERB_TXLOCK, b"7", b"exec", b"k1")
        assert dirty is False
        [(key, payload, when)] = unpack_values(packed)
        assert key == b"k1" and payload is not None and when == 0
        waiting = d.submit(5, b"GET", b"k1")  # a locked key: waits
        behind = d.submit(5, b"GET", b"k2")  # the same client's next request waits behind it
        assert await d.call(6, b"GET", b"k2") == b"$5\r\nother\r\n"  # another client's, other key: at once
        assert not d.answered(waiting) and not d.answered(behind)
        # The executor runs over the values the locks returned, not the real keyspace.
        run = [VERB_TXRUN, b"7", b"2", b"one", pack_transaction([[b"APPEND", b"k1", b"!"]]), packed]
        reply, states, _flushed, _missing, _wants_all, _publishes = await d.call(0, *run)
        assert reply == b":4\r\n"
        assert unpack_values(states)[0][0] == b"k1"
        assert d.shard.db.data[b"k1"] == b"old"
        effects = state_effects([(b"k1", None, 0)])
        assert await d.call(0, VERB_TXPREPARE, b"7", b"1", pack([0, 1]), pack(effects)) is True
        assert d.shard.wal.durable_seq == d.shard.wal.tail_seq  # answered once durable
        assert not d.answered(waiting)

    await serving(open_shard(data_dir), first)
    shard = open_shard(data_dir)
    assert shard.db.data[b"k1"] == b"old"  # a PREPARE alone is never applied
    assert b"k1" in shard.txn.locks and shard.txn_busy

    async def second(d: Driver) -> None:
        assert await d.call(0, VERB_TXINDOUBT) == [[7, 1]]
        waiting = d.submit(5, b"GET", b"k1")
        assert await d.call(6, b"GET", b"k2") == b"$5\r\nother\r\n"
        assert not d.answered(waiting)
        assert await d.call(0, VERB_TXCOMMIT, b"7") is True
        assert await d.sink.wait_for(waiting) == b"$-1\r\n"  # ran after the commit, saw it
        assert await d.call(0, VERB_TXINDOUBT) == []

    await serving(shard, second)
    shard = open_shard(data_dir)
    assert b"k1" not in shard.db.data and not shard.txn.txns and not shard.txn_busy
    shard.wal.close()


async def test_the_decider_logs_a_transactions_dirty_count_and_older_routers_still_commit(tmp_path: Path) -> None:
    """Redis' dirty count of a cross-shard transaction (shards/changes.py): TXRUN asked with
    COUNT_RUN answers the commands' count (asked without, as an older router does, the six
    elements of before); the decider adds that count, not its RESTORE/DEL effects'; a COMMIT
    prepared with COUNTED adds none; from an older router (no count, no flag) the effects
    count as they apply. A restart replays the same count."""
    data_dir = tmp_path / "data"
    counts: list[int] = []

    async def body(d: Driver) -> None:
        await d.call(1, b"SET", b"a", b"1")
        _dirty, packed, _oom = await d.call(100, VERB_TXLOCK, b"7", b"one", b"a", b"l")
        run = [VERB_TXRUN, b"7", b"2", b"multi", pack_transaction([[b"INCR", b"a"], [b"INCR", b"a"],
                                                                    [b"RPUSH", b"l", b"x", b"y", b"z"]]), packed]
        assert len(await d.call(0, *run)) == 6
        answer = await d.call(0, *run, COUNT_RUN)
        assert answer[6] == 2 + 3
        effects = state_effects(unpack_values(answer[1]))
        assert len(effects) == 2  # a RESTORE each of a and l: 2 changes as they apply, the commands made 5
        before = d.shard.db.changes
        assert await d.call(0, VERB_TXDECIDE, b"7", pack(effects), pack([]), b"5") is True
        assert d.shard.db.changes == before + 5
        for txid, flags in ((b"8", [COUNTED]), (b"9", [])):  # a participant: with the flag, then an older router's
            await d.call(1, b"MSET", b"a", b"1", b"l", b"2")
            before = d.shard.db.changes
            await d.call(100, VERB_TXLOCK, txid, b"one", b"a", b"l")
            prepared = pack(state_effects([(b"a", None, 0), (b"l", None, 0)]))
            assert await d.call(0, VERB_TXPREPARE, txid, b"1", pack([0, 1]), prepared, *flags) is True
            assert await d.call(0, VERB_TXCOMMIT, txid) is True
            counts.append(d.shard.db.changes - before)
        counts.append(d.shard.db.changes)

    await serving(open_shard(data_dir), body)
    assert counts[:2] == [0, 2]  # the DELs of a and l: none with COUNTED, 2 as they apply without
    shard = open_shard(data_dir)
    assert shard.db.changes == counts[2]  # the log's records replayed, from the start
    shard.wal.close()


async def test_an_abort_drops_the_prepared_effects(tmp_path: Path) -> None:
    async def body(d: Driver) -> None:
        await d.call(1, b"SET", b"k", b"v")
        await d.call(100, VERB_TXLOCK, b"9", b"one", b"k")
        await d.call(0, VERB_TXPREPARE, b"9", b"1", pack([0, 1]), pack(state_effects([(b"k", None, 0)])))
        assert await d.call(0, VERB_TXABORT, b"9") is True
        assert await d.call(1, b"GET", b"k") == b"$1\r\nv\r\n"

    await serving(open_shard(tmp_path / "data"), body)
    shard = open_shard(tmp_path / "data")
    assert shard.db.data[b"k"] == b"v" and not shard.txn.txns
    shard.wal.close()


async def test_presumed_abort_outlives_a_restart_and_a_late_decision_fails(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"

    async def first(d: Driver) -> None:
        await d.call(100, VERB_TXLOCK, b"11", b"one", b"k")
        assert await d.call(0, VERB_TXRESOLVE, b"11") == b"abort"  # undecided: presumed abort, recorded
        assert not d.shard.txn.locks  # the resolver's abort released its locks too
        decided = await d.call(0, VERB_TXDECIDE, b"11", pack(state_effects([(b"k", None, 0)])))
        assert isinstance(decided, tuple) and decided[0] == "error"
        # A decision that was made is answered as made.
        await d.call(100, VERB_TXLOCK, b"12", b"one", b"k")
        assert await d.call(0, VERB_TXDECIDE, b"12", pack(state_effects([(b"k", None, 0)]))) is True
        assert await d.call(0, VERB_TXRESOLVE, b"12") == b"commit"

    await serving(open_shard(data_dir), first)

    async def second(d: Driver) -> None:
        assert await d.call(0, VERB_TXRESOLVE, b"11") == b"abort"
        assert await d.call(0, VERB_TXRESOLVE, b"12") == b"commit"

    await serving(open_shard(data_dir), second)


def test_replay_applies_committed_transactions_only_and_snapshots_stop_before_open_ones() -> None:
    prepared = [[b"SET", b"p", b"1"]]
    records = [
        (1, 0, encode_record(1000, [[b"SET", b"a", b"1"]])),
        (2, 0, encode_record(1001, [], [[MARK_PREPARE, 5, 1, [0, 1], prepared]])),
        (3, 0, encode_record(1002, [[b"SET", b"b", b"1"]])),
        (4, 0, encode_record(1003, prepared, [[MARK_COMMIT, 5]])),
    ]
    ctx = new_context()
    replay_records(ctx, iter(records[:3]), 0, "0" * 64)
    assert set(state_of(ctx.db)) == {b"a", b"b"}  # the PREPARE alone is not applied
    replay_records(ctx, iter(records[3:]), 3, "0" * 64)
    assert set(state_of(ctx.db)) == {b"a", b"b", b"p"}
    assert snapshot_cut(iter(records[:3]), 0, 3) == 1  # before the open PREPARE
    assert snapshot_cut(iter(records), 0, 4) == 4
    assert snapshot_cut(iter(records[2:3]), 2, 3) == 3
    # A recent decision keeps the snapshot before it; an old one does not.
    decided = [(5, 0, encode_record(2000, [], [[MARK_DECIDE_COMMIT, 6]])),
               (6, 0, encode_record(2000 + 11 * 60 * 1000, [[b"SET", b"c", b"1"]]))]
    assert snapshot_cut(iter(decided[:1]), 4, 5) == 4
    assert snapshot_cut(iter(decided), 4, 6) == 6


async def test_a_closed_coordinator_connection_leaves_no_locks(tmp_path: Path) -> None:
    """Its unprepared transactions are released and its waiting lock requests dropped;
    its prepared ones stay locked, in doubt, for a resolver."""
    async def body(d: Driver) -> None:
        other = Driver(d.shard)
        other.rid = 1000
        await d.call(100, VERB_TXLOCK, b"21", b"one", b"k")
        queued = other.submit(200, VERB_TXLOCK, b"22", b"one", b"k")  # waits for k
        await other.call(201, VERB_TXLOCK, b"23", b"one", b"j")
        await other.call(0, VERB_TXPREPARE, b"23", b"1", pack([0, 1]), pack(state_effects([(b"j", None, 0)])))
        d.shard.txn.conn_closed(other.sink)
        assert await d.call(0, VERB_TXABORT, b"21") is True
        await trio.sleep(0.05)  # the drain loop runs
        assert not other.answered(queued)
        assert d.shard.txn.locks == {b"j": 23} and list(d.shard.txn.txns) == [23]
        assert await d.call(0, VERB_TXINDOUBT) == [[23, 1]]

    await serving(open_shard(tmp_path / "data"), body)



async def test_a_read_tries_without_waiting_then_waits_for_the_lock(tmp_path: Path) -> None:
    """TXREAD try answers TXBUSY at once where a key is locked, locking nothing (a
    cross-shard read never waits while holding locks); TXREAD wait waits for the lock,
    and its own locks defer writers until its TXABORT."""
    async def body(d: Driver) -> None:
        assert await d.call(1, b"MSET", b"a", b"1", b"b", b"2") == b"+OK\r\n"
        await d.call(2, VERB_TXLOCK, b"10", b"one", b"a")  # a writer holds a
        assert await d.call(3, VERB_TXREAD, b"11", b"try", b"MGET", b"a", b"b") == ("error", TXBUSY)
        assert d.shard.txn.locks == {b"a": 10}
        waiting = d.submit(3, VERB_TXREAD, b"12", b"wait", b"MGET", b"b", b"a")
        await trio.sleep(0.05)
        assert not d.answered(waiting)
        await d.call(2, VERB_TXDECIDE, b"10", pack([[b"SET", b"a", b"new"]]))
        ok, value = internal_reply_decoder.decode(await d.sink.wait_for(waiting))
        assert ok and value == [b"2", b"new"]
        write = d.submit(4, b"SET", b"b", b"3")  # the read's lock on b defers it
        await trio.sleep(0.05)
        assert not d.answered(write)
        assert await d.call(5, VERB_TXREAD, b"13", b"try", b"EXISTS", b"a", b"c") == ("error", TXBUSY)
        assert await d.call(5, VERB_TXREAD, b"13", b"try", b"EXISTS", b"c", b"c") == 0
        await d.call(5, VERB_TXABORT, b"13")
        await d.call(3, VERB_TXABORT, b"12")
        assert await d.sink.wait_for(write) == b"+OK\r\n"
        assert d.shard.txn.locks == {}
    await serving(open_shard(tmp_path / "data"), body)


async def test_the_reads_of_a_batch_share_one_txid_and_its_locks(tmp_path: Path) -> None:
    """A client's pipelined cross-shard reads go as one batch under one txid
    (server/txn_read.py): a read is neither refused (try) nor held back (wait) by its
    batch's own locks, a writer waits for all of them, and one TXABORT releases them."""
    async def body(d: Driver) -> None:
        assert await d.call(1, b"MSET", b"a", b"1", b"b", b"2", b"c", b"3") == b"+OK\r\n"
        assert await d.call(3, VERB_TXREAD, b"20", b"try", b"MGET", b"a", b"b") == [b"1", b"2"]
        assert await d.call(3, VERB_TXREAD, b"20", b"try", b"MGET", b"b", b"c") == [b"2", b"3"]
        assert await d.call(6, VERB_TXREAD, b"21", b"try", b"MGET", b"c") == [b"3"]  # another batch shares c
        write = d.submit(4, b"SET", b"c", b"new")  # waits for both reads' locks on c
        # The batch's own next read is not queued behind the waiting writer (it waits for the batch).
        assert await d.call(3, VERB_TXREAD, b"20", b"wait", b"EXISTS", b"a", b"c", b"z") == 2
        await trio.sleep(0.05)
        assert not d.answered(write)
        assert d.shard.txn.locks == {b"a": SHARED, b"b": SHARED, b"c": SHARED, b"z": SHARED}
        assert d.shard.txn.readers == {b"a": 1, b"b": 1, b"c": 2, b"z": 1}
        assert await d.call(3, VERB_TXABORT, b"20") is True
        await trio.sleep(0.05)
        assert not d.answered(write)  # the other batch still reads c
        assert d.shard.txn.locks == {b"c": SHARED}
        assert await d.call(6, VERB_TXABORT, b"21") is True
        assert await d.sink.wait_for(write) == b"+OK\r\n"
        assert d.shard.txn.locks == {} and not d.shard.txn.txns and not d.shard.txn.readers
    await serving(open_shard(tmp_path / "data"), body)


async def test_reads_share_their_locks_and_queue_behind_a_waiting_writer(tmp_path: Path) -> None:
    """Cross-shard reads of different clients hold the same keys at once (SHARED);
    a writer waits until the last reader goes; a read that comes after a waiting
    writer waits behind it (try: TXBUSY), so a stream of readers cannot starve it;
    a writer's lock still refuses a read."""
    async def body(d: Driver) -> None:
        assert await d.call(1, b"MSET", b"a", b"1", b"b", b"2") == b"+OK\r\n"
        assert await d.call(3, VERB_TXREAD, b"30", b"try", b"MGET", b"a", b"b") == [b"1", b"2"]
        assert await d.call(4, VERB_TXREAD, b"31", b"try", b"MGET", b"b", b"a") == [b"2", b"1"]
        assert d.shard.txn.readers == {b"a": 2, b"b": 2}
        lock = d.submit(2, VERB_TXLOCK, b"32", b"one", b"a")  # a writer: waits for both readers
        await trio.sleep(0.05)
        assert not d.answered(lock)
        assert await d.call(5, VERB_TXREAD, b"33", b"try", b"GET", b"a") == ("error", TXBUSY)
        late = d.submit(5, VERB_TXREAD, b"34", b"wait", b"MGET", b"a", b"b")
        assert await d.call(3, VERB_TXABORT, b"30") is True
        await trio.sleep(0.05)
        assert not d.answered(lock)
        assert await d.call(4, VERB_TXABORT, b"31") is True
        await d.sink.wait_for(lock)  # the writer goes first, then the late reader waits for it
        await trio.sleep(0.05)
        assert not d.answered(late) and d.shard.txn.locks == {b"a": 32}
        await d.call(2, VERB_TXDECIDE, b"32", pack([[b"SET", b"a", b"new"]]))
        ok, value = internal_reply_decoder.decode(await d.sink.wait_for(late))
        assert ok and value == [b"new", b"2"]
        assert await d.call(5, VERB_TXABORT, b"34") is True
        assert d.shard.txn.locks == {} and not d.shard.txn.readers
    await serving(open_shard(tmp_path / "data"), body)


async def test_a_whole_shard_lock_and_a_prepared_flush_survive_a_restart(tmp_path: Path) -> None:
    """A MULTI with FLUSHDB across shards holds the whole shard (`wide`): every
    request waits, not only those on its keys; its prepared FLUSHALL survives a
    restart in doubt, still holding the whole shard, until it is committed."""
    data_dir = tmp_path / "data"

    async def first(d: Driver) -> None:
        assert await d.call(1, b"SET", b"k1", b"old") == b"+OK\r\n"
        await d.call(100, VERB_TXLOCK, b"8", b"wide")
        other_key = d.submit(6, b"GET", b"elsewhere")
        await trio.sleep(0.05)
        assert not d.answered(other_key)
        effects = [[b"FLUSHALL"], *state_effects([(b"k2", None, 0)])]
        assert await d.call(0, VERB_TXPREPARE, b"8", b"1", pack([0, 1]), pack(effects)) is True

    await serving(open_shard(data_dir), first)
    shard = open_shard(data_dir)
    assert shard.txn.whole_txid == 8 and shard.db.data[b"k1"] == b"old"

    async def second(d: Driver) -> None:
        waiting = d.submit(5, b"DBSIZE")
        await trio.sleep(0.05)
        assert not d.answered(waiting)
        assert await d.call(0, VERB_TXCOMMIT, b"8") is True
        assert await d.sink.wait_for(waiting) == b":0\r\n"

    await serving(shard, second)
    shard = open_shard(data_dir)
    assert not shard.db.data and not shard.txn.txns and not shard.txn.whole_txid
    shard.wal.close()
