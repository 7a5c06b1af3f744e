"""The shard's commit thread (shards/commit.py), driven in-process through
Shard.execute_batch and the committer task: replies leave after the sync that
covers them, a failed fsync becomes MISCONF and is retried, a bug in the thread
ends the committer loudly, and cancelling the committer stops the thread."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import trio

from durakv.log import Log
from durakv.shards import commit
from durakv.shards.config import Config
from durakv.shards.frames import Request
from durakv.shards.shard import Shard

WAIT_S = 20


class Sink:
    """A ReplySink that records what was sent, in sends."""

    def __init__(self) -> None:
        self.sends: list[list[tuple[int, bytes]]] = []
        self.arrived = trio.Event()

    def send(self, replies: list[tuple[int, bytes]]) -> None:
        self.sends.append(list(replies))
        self.arrived.set()

    def replies(self) -> dict[int, bytes]:
        return {rid: data for batch in self.sends for rid, data in batch}

    async def wait_for(self, rid: int) -> bytes:
        with trio.fail_after(WAIT_S):
            while rid not in self.replies():
                self.arrived = trio.Event()
                await self.arrived.wait()
        return self.replies()[rid]


def open_shard(tmp_path: Path, **config: object) -> Shard:
    shard = Shard(Config(data_dir=str(tmp_path / "data"), shards=1, **config).resolved(), 0)
    Path(shard.dir).mkdir(parents=True)
    shard.open_log()
    return shard


def commit_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.endswith(" commit")]


def sets(first_rid: int, count: int) -> list[Request]:
    return [Request(rid, rid, 2, [b"SET", b"k%d" % rid, b"v%d" % rid])
            for rid in range(first_rid, first_rid + count)]


async def test_replies_leave_after_the_sync_and_the_thread_stops_when_cancelled(tmp_path: Path) -> None:
    shard = open_shard(tmp_path)
    sink = Sink()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(shard.committer)
        await trio.testing.wait_all_tasks_blocked()
        assert len(commit_threads()) == 1
        for batch in range(5):
            assert shard.execute_batch(sink, sets(batch * 4 + 1, 4)) == []  # every SET reply is held
        assert await sink.wait_for(20) == b"+OK\r\n"
        with trio.fail_after(WAIT_S):
            while len(sink.replies()) < 20:
                await sink.wait_for(max(sink.replies()) + 1)
        assert shard.wal.durable_seq == shard.wal.tail_seq == 5
        assert shard.held.count == 0 and shard.hazards.pending_keys() == 0
        assert shard.fsyncs == shard.wal.fsync_count >= 1
        # A read of a clean key leaves at once.
        assert shard.execute_batch(sink, [Request(99, 99, 2, [b"GET", b"k1"])]) == [(99, b"$2\r\nv1\r\n")]
        nursery.cancel_scope.cancel()
    assert commit_threads() == []
    assert shard._commit_thread is None
    shard.wal.close()
    reopened = open_shard_again(shard)
    assert reopened.db.data[b"k20"] == b"v20"
    reopened.wal.close()


def open_shard_again(shard: Shard) -> Shard:
    again = Shard(shard.config, 0)
    again.open_log()
    return again


async def test_a_failed_fsync_is_misconf_until_a_retry_succeeds(tmp_path: Path) -> None:
    fail = tmp_path / "fail-fsync"
    shard = open_shard(tmp_path, test_fsync_fail_path=str(fail))
    sink = Sink()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(shard.committer)
        fail.touch()
        assert shard.execute_batch(sink, sets(1, 2)) == []
        with trio.fail_after(WAIT_S):
            while shard.write_error is None:
                await trio.sleep(0.01)
        assert shard.write_error.startswith(b"MISCONF ")
        refused = shard.execute_batch(sink, sets(3, 1))
        assert refused[0][0] == 3 and refused[0][1].startswith(b"-MISCONF ")
        await trio.sleep(0.1)  # retries keep failing; the held replies stay held
        assert 1 not in sink.replies() and shard.held.count == 2
        assert commit_threads()[0].is_alive()
        fail.unlink()
        assert await sink.wait_for(1) == b"+OK\r\n"
        assert await sink.wait_for(2) == b"+OK\r\n"
        assert shard.write_error is None
        # The thread resumed: the next write is synced and answered.
        assert shard.execute_batch(sink, sets(4, 1)) == []
        assert await sink.wait_for(4) == b"+OK\r\n"
        nursery.cancel_scope.cancel()
    assert commit_threads() == []
    shard.wal.close()


async def test_a_bug_in_the_commit_thread_ends_the_committer(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    shard = open_shard(tmp_path)

    def broken_sync(self: Log) -> int:
        raise ZeroDivisionError("a bug in the sync path")

    monkeypatch.setattr(Log, "sync", broken_sync)
    sink = Sink()
    with pytest.raises(BaseExceptionGroup) as info:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(shard.committer)
            await trio.testing.wait_all_tasks_blocked()
            shard.execute_batch(sink, sets(1, 1))
            await trio.sleep(WAIT_S)
    [error] = leaves(info.value)
    assert isinstance(error, RuntimeError) and "the commit thread failed" in str(error)
    assert isinstance(error.__cause__, ZeroDivisionError)
    assert sink.sends == []  # nothing was acknowledged
    assert commit_threads() == []
    shard.wal.close()


def leaves(group: BaseExceptionGroup) -> list[BaseException]:
    out: list[BaseException] = []
    for error in group.exceptions:
        out.extend(leaves(error) if isinstance(error, BaseExceptionGroup) else [error])
    return out


def test_stop_waits_for_the_sync_under_way(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """stop() joins the thread after its sync returns, so the log can be closed."""
    shard = open_shard(tmp_path)
    in_sync = threading.Event()
    release = threading.Event()
    real_sync = Log.sync

    def slow_sync(self: Log) -> int:
        in_sync.set()
        release.wait(WAIT_S)
        return real_sync(self)

    monkeypatch.setattr(Log, "sync", slow_sync)

    async def main() -> None:
        thread = commit.CommitThread(shard.wal, trio.lowlevel.current_trio_token(), "test commit",
                                     lambda error: None)
        thread.start()
        shard.wal.append((b"payload",), shard.wal.tail_seq, shard.lease)
        thread.wake()
        assert in_sync.wait(WAIT_S)
        threading.Timer(0.05, release.set).start()
        thread.stop()
        assert not thread.alive
        assert shard.wal.durable_seq == shard.wal.tail_seq == 1

    trio.run(main)
    shard.wal.close()
