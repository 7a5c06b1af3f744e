"""The hot path's per-turn shortcuts (issue 11 §2, §3): a router writes a turn's
requests for a shard from the poller's turn (ShardLink.send_now), handing the
sender task only the rest of a frame the socket did not take; a shard takes the
news of a sync that finished while its loop was busy before its next batch
(GroupCommit.catch_up_durable) instead of waiting for the committer task."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from types import SimpleNamespace

import trio

from durakv.server.links import ShardLink
from durakv.shards.commit import CommitThread
from durakv.shards.framelink import FrameReceiver
from durakv.shards.frames import Request, request_batch_decoder

WAIT_S = 20
VALUE = b"v" * 1000


class FakeClient:
    """What ShardLink.submit reads of a client."""

    def __init__(self) -> None:
        self.id = 7
        self.filled = 0

    def reply_ready(self) -> None:
        self.filled += 1


async def test_send_now_writes_a_turn_as_one_frame_and_the_sender_finishes_a_partial_one(tmp_path: Path) -> None:
    router = SimpleNamespace(poller=SimpleNamespace(in_turn=True), large_requests=0, scripts_in_flight=0,
                             config=SimpleNamespace(replicas=0))
    link = ShardLink(router, 0, str(tmp_path))
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # a frame of 200 KB cannot go at once
    link.sock = ours
    link.up = True
    client = FakeClient()
    got: list[Request] = []
    frames: list[int] = []

    def handle(items: list) -> None:
        for item in items:
            frames.append(1)
            got.extend(request_batch_decoder.decode(item))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(link._sender, nursery.cancel_scope)
        # A small turn: written from the turn, one frame, nothing left for the sender.
        for _ in range(3):
            link.submit(client, 2, [b"GET", b"k"])
        link.send_now()
        assert link._carry is None and not link._sending and link.frames_sent == 1
        # A big turn: the socket takes part of it; the sender writes the rest.
        for _ in range(200):
            link.submit(client, 2, [b"SET", b"k", VALUE])
        link.send_now()
        assert link._carry is not None and link._unsent == []  # its first bytes left
        # The next turn waits for the sender (frames never interleave).
        for _ in range(5):
            link.submit(client, 2, [b"GET", b"k"])
        link.send_now()
        assert link._outbox.items and link.frames_sent == 2
        nursery.start_soon(FrameReceiver(theirs, handle).run)
        with trio.fail_after(WAIT_S):
            while len(got) < 208:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert [r.rid for r in got] == list(range(1, 209))
    assert len(frames) == 3 and link.frames_sent == 3 and link.requests_sent == 208
    assert link._carry is None and link._outbox.items == []
    ours.close()
    theirs.close()


class Sink:
    def __init__(self) -> None:
        self.sent: list[tuple[int, bytes]] = []

    def send(self, replies: list[tuple[int, bytes]]) -> None:
        self.sent.extend(replies)


async def test_a_batch_after_a_finished_sync_releases_its_replies_without_the_committer(tmp_path: Path) -> None:
    from durakv.shards.config import Config
    from durakv.shards.shard import Shard

    shard = Shard(Config(data_dir=str(tmp_path / "data"), shards=1).resolved(), 0)
    Path(shard.dir).mkdir(parents=True)
    shard.open_log()
    # The commit thread without the committer task: only catch_up_durable can hear of its syncs.
    thread = shard._commit_thread = CommitThread(shard.wal, trio.lowlevel.current_trio_token(), "test commit",
                                                 lambda e: None, shard.latency)
    thread.start()
    try:
        sink = Sink()
        assert shard.execute_batch(sink, [Request(1, 1, 2, [b"SET", b"k", b"v"])]) == []  # held for its fsync
        deadline = time.monotonic() + WAIT_S
        while shard.wal.durable_seq < 1:  # without yielding to trio: the loop is "busy"
            assert time.monotonic() < deadline, "the commit thread never synced"
            time.sleep(0.001)
        # The next batch hears of the sync first: the SET's reply leaves, the GET need not wait.
        assert shard.execute_batch(sink, [Request(2, 1, 2, [b"GET", b"k"])]) == [(2, b"$1\r\nv\r\n")]
        assert sink.sent == [(1, b"+OK\r\n")]
        assert shard.hazards.durable_seq == 1 and shard.held.count == 0
    finally:
        shard._commit_thread = None
        trio.lowlevel.notify_closing(thread.durable_fd)
        thread.stop()
        shard.wal.close()


async def test_a_shard_writes_replies_at_once_and_its_writer_finishes_a_partial_frame() -> None:
    from durakv.shards.frames import reply_batch_decoder
    from durakv.shards.process import RouterConn

    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    conn = RouterConn(ours, FrameReceiver(ours, lambda items: None))
    got: list[int] = []

    def handle(items: list) -> None:
        for item in items:
            got.extend(rid for rid, _ in reply_batch_decoder.decode(item))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.writer)
        conn.send([(1, b"+OK\r\n")])  # written from here: nothing queued, nothing left over
        assert conn._carry is None and not conn.sending and not conn.outbox.items
        conn.send([(rid, b"$1000\r\n" + VALUE + b"\r\n") for rid in range(2, 202)])
        assert conn._carry is not None and conn.sending  # the writer owes the rest
        conn.send([(202, b"+OK\r\n")])
        assert conn.outbox.items  # queued behind it
        nursery.start_soon(FrameReceiver(theirs, handle).run)
        with trio.fail_after(WAIT_S):
            while len(got) < 202:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert got == list(range(1, 203))
    assert conn._carry is None and not conn.sending
    ours.close()
    theirs.close()
