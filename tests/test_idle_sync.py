"""The shard syncs its log in its own loop when the loop is idle (shards/idle_sync.py),
and hands the sync to the commit thread when the loop is busy, the pending write is
large or the log fails: every reply still leaves only after its record is durable."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import trio
from test_commit_thread import WAIT_S, open_shard, sets

from durakv.shards import idle_sync
from durakv.shards.frames import Request
from durakv.shards.shard import Shard


class DurableSink:
    """A ReplySink that notes, for each reply, the shard's durable seq when it left."""

    def __init__(self, shard: Shard) -> None:
        self.shard = shard
        self.durable_at_send: dict[int, int] = {}
        self.data: dict[int, bytes] = {}
        self.arrived = trio.Event()

    def send(self, replies: list[tuple[int, bytes]]) -> None:
        for rid, data in replies:
            self.durable_at_send[rid] = self.shard.wal.durable_seq
            self.data[rid] = data
        self.arrived.set()

    async def wait_for(self, count: int) -> None:
        with trio.fail_after(WAIT_S):
            while len(self.data) < count:
                self.arrived = trio.Event()
                await self.arrived.wait()


@pytest.fixture(autouse=True)
def no_slow_syncs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A loaded machine's fsync may be slow enough to send the next sync to the
    thread (INLINE_SYNC_SLOW_US); these tests choose where syncs go themselves."""
    monkeypatch.setattr(idle_sync, "INLINE_SYNC_SLOW_US", 10**9)


async def started(shard: Shard, nursery: trio.Nursery) -> None:
    nursery.start_soon(shard.committer)
    await trio.testing.wait_all_tasks_blocked()
    assert shard.idle_sync is not None and shard._commit_thread is not None


async def test_an_idle_loop_syncs_itself_and_replies_leave_after_the_sync(tmp_path: Path) -> None:
    shard = open_shard(tmp_path)
    sink = DurableSink(shard)
    async with trio.open_nursery() as nursery:
        await started(shard, nursery)
        for batch in range(5):
            assert shard.execute_batch(sink, sets(batch * 3 + 1, 3)) == []
            await sink.wait_for((batch + 1) * 3)
            # This batch's record is seq batch + 1: its replies left once it was durable.
            assert all(sink.durable_at_send[rid] >= batch + 1 for rid in range(batch * 3 + 1, batch * 3 + 4))
        thread = shard._commit_thread
        assert thread.syncs_in_loop == shard.wal.fsync_count == 5  # the thread never synced
        assert shard.idle_sync.handed_to_thread == 0
        assert shard.fsyncs == 5 and shard.held.count == 0 and shard.hazards.pending_keys() == 0
        nursery.cancel_scope.cancel()
    shard.wal.close()


async def test_a_busy_loop_hands_the_sync_to_the_thread(tmp_path: Path) -> None:
    shard = open_shard(tmp_path)
    sink = DurableSink(shard)
    async with trio.open_nursery() as nursery:
        await started(shard, nursery)
        # Two batches in one turn: the second starts before the loop was ever idle.
        assert shard.execute_batch(sink, sets(1, 2)) == []
        assert shard.execute_batch(sink, sets(3, 2)) == []
        assert shard.idle_sync.handed_to_thread == 1
        await sink.wait_for(4)
        assert sink.durable_at_send[1] >= 1 and sink.durable_at_send[3] >= 2
        # The thread, woken, synced them (unless the loop went idle first and took them:
        # Log.sync never runs twice at once, CommitThread._syncing).
        assert shard.wal.durable_seq == shard.wal.tail_seq == 2
        nursery.cancel_scope.cancel()
    shard.wal.close()


async def test_a_large_pending_write_goes_to_the_thread(tmp_path: Path) -> None:
    shard = open_shard(tmp_path)
    sink = DurableSink(shard)
    big = b"v" * (idle_sync.INLINE_SYNC_MAX_BYTES + 1)
    async with trio.open_nursery() as nursery:
        await started(shard, nursery)
        assert shard.execute_batch(sink, [Request(1, 1, 2, [b"SET", b"big", big])]) == []
        await sink.wait_for(1)
        assert sink.durable_at_send[1] >= 1
        assert shard._commit_thread.syncs_in_loop == 0 and shard.idle_sync.handed_to_thread == 1
        nursery.cancel_scope.cancel()
    shard.wal.close()


async def test_a_failed_sync_in_the_loop_is_misconf_until_a_retry_succeeds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shard = open_shard(tmp_path)
    sink = DurableSink(shard)
    failing = True
    real_pwritev, real_fdatasync = os.pwritev, os.fdatasync

    def pwritev(fd: int, buffers: list, offset: int, flags: int = 0) -> int:
        if failing:
            raise OSError(errno.EIO, "Input/output error (injected)")
        return real_pwritev(fd, buffers, offset, flags)

    def fdatasync(fd: int) -> None:  # the retry's rewrite
        if failing:
            raise OSError(errno.EIO, "Input/output error (injected)")
        real_fdatasync(fd)

    async with trio.open_nursery() as nursery:
        await started(shard, nursery)
        monkeypatch.setattr(os, "pwritev", pwritev)
        monkeypatch.setattr(os, "fdatasync", fdatasync)
        assert shard.execute_batch(sink, sets(1, 2)) == []
        with trio.fail_after(WAIT_S):
            while shard.write_error is None:
                await trio.sleep(0.01)
        assert shard.write_error.startswith(b"MISCONF ")
        assert shard._commit_thread.parked
        await trio.sleep(0.1)  # the retries fail too; the replies stay held
        assert sink.data == {} and shard.held.count == 2
        failing = False
        await sink.wait_for(2)
        assert sink.data == {1: b"+OK\r\n", 2: b"+OK\r\n"} and shard.write_error is None
        assert not shard._commit_thread.parked
        syncs_in_loop = shard._commit_thread.syncs_in_loop
        assert shard.execute_batch(sink, sets(3, 1)) == []  # synced again, in the loop
        await sink.wait_for(3)
        assert sink.durable_at_send[3] == shard.wal.tail_seq
        assert shard._commit_thread.syncs_in_loop == syncs_in_loop + 1
        nursery.cancel_scope.cancel()
    shard.wal.close()


async def test_after_a_slow_sync_the_next_goes_to_the_thread(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    shard = open_shard(tmp_path)
    sink = DurableSink(shard)
    async with trio.open_nursery() as nursery:
        await started(shard, nursery)
        assert shard.execute_batch(sink, sets(1, 1)) == []
        await sink.wait_for(1)
        assert shard._commit_thread.syncs_in_loop == 1
        monkeypatch.setattr(idle_sync, "INLINE_SYNC_SLOW_US", -1)  # every sync counts as slow
        assert shard.execute_batch(sink, sets(2, 1)) == []
        await sink.wait_for(2)
        assert sink.durable_at_send[2] == 2
        assert shard._commit_thread.syncs_in_loop == 1 and shard.idle_sync.handed_to_thread == 1
        nursery.cancel_scope.cancel()
    shard.wal.close()


class TurnSource:
    """A turn's source (idle_sync.TurnSource) with a client ready, or none."""

    def __init__(self, ready: bool) -> None:
        self.ready = ready

    def nothing_ready(self) -> bool:
        return not self.ready


async def test_after_a_slow_sync_a_turn_end_hands_the_next_to_the_thread_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no client ready, a sync that may not run in the loop starts from the turn's
    end, not after trio found the loop idle (the clients wait for that fsync; before,
    the idle task's wakeup and trio's idle detection came first). With a client ready,
    the next batch's start hands it over, that batch's records along."""
    shard = open_shard(tmp_path)
    sink = DurableSink(shard)
    async with trio.open_nursery() as nursery:
        await started(shard, nursery)
        monkeypatch.setattr(idle_sync, "INLINE_SYNC_SLOW_US", -1)  # every sync counts as slow
        idle = shard.idle_sync
        idle.in_turn = True  # as a shard port's poller turn (server/node.py ShardNode.end_turn)
        assert shard.execute_batch(sink, sets(1, 2)) == []
        idle.in_turn = False
        idle.end_of_turn(TurnSource(ready=True))
        assert idle.handed_to_thread == 0  # left for the next batch (or the idle task)
        idle.in_turn = True
        assert shard.execute_batch(sink, sets(3, 2)) == []  # its start wakes the thread
        idle.in_turn = False
        assert idle.handed_to_thread == 1
        await sink.wait_for(4)  # (the idle task, woken by the first turn's end, may hand over too)
        await trio.testing.wait_all_tasks_blocked()
        handed = idle.handed_to_thread
        idle.in_turn = True
        assert shard.execute_batch(sink, sets(5, 2)) == []
        idle.in_turn = False
        idle.end_of_turn(TurnSource(ready=False))
        assert idle.handed_to_thread == handed + 1 and not idle.appended_since  # no await between
        await sink.wait_for(6)
        assert all(sink.durable_at_send[rid] >= (rid + 1) // 2 for rid in range(1, 7))
        assert shard._commit_thread.syncs_in_loop == 0
        nursery.cancel_scope.cancel()
    shard.wal.close()


async def test_a_hooked_disk_syncs_only_in_the_thread(tmp_path: Path) -> None:
    """Test hooks (a gated or delayed fsync) block: the loop must never wait on them."""
    shard = open_shard(tmp_path, test_fsync_delay_ms=1)
    sink = DurableSink(shard)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(shard.committer)
        await trio.testing.wait_all_tasks_blocked()
        assert shard.idle_sync is None
        assert shard.execute_batch(sink, sets(1, 1)) == []
        await sink.wait_for(1)
        assert shard._commit_thread.syncs_in_loop == 0
        nursery.cancel_scope.cancel()
    shard.wal.close()
