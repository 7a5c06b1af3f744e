"""A durable write through the router is synced at the end of its router link's turn
on the shard when nothing else is ready (shards/link_turn.py), as a shard port's is
at the end of its poller's turn (tests/test_turn_end_sync.py): its reply leaves in
the same turn, never before its record is durable. With another link or a client
of the shard port ready the sync waits, as before, for the idle loop or the thread."""

from __future__ import annotations

import socket
from pathlib import Path

import msgspec
import pytest
import trio
from test_commit_thread import WAIT_S, open_shard
from test_turn_end_sync import GET, connect

from durakv.server.node import ShardNode

from durakv.shards import idle_sync, link_turn
from durakv.shards.frames import FRAME_HEADER_BYTES, Request, encode_frame
from durakv.shards.link_turn import READY, ReadyWatch
from durakv.shards.process import serve_router
from durakv.shards.shard import Shard

replies_decoder = msgspec.msgpack.Decoder(list[tuple[int, bytes]])


@pytest.fixture(autouse=True)
def no_slow_syncs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A loaded machine's fsync may be slow enough to send the next sync to the thread."""
    monkeypatch.setattr(idle_sync, "INLINE_SYNC_SLOW_US", 10**9)


def set_frame(rid: int) -> bytes:
    return bytes(encode_frame([Request(rid, rid, 2, [b"SET", b"k%d" % rid, b"v"])]))


async def reply_frame(peer: socket.socket) -> list[tuple[int, bytes]]:
    """One frame of replies from the shard's end of a link."""
    buf = b""
    with trio.fail_after(WAIT_S):
        while True:
            if len(buf) >= FRAME_HEADER_BYTES:
                size = int.from_bytes(buf[:FRAME_HEADER_BYTES], "big")
                if len(buf) >= FRAME_HEADER_BYTES + size:
                    assert len(buf) == FRAME_HEADER_BYTES + size, "one frame at a time here"
                    return replies_decoder.decode(buf[FRAME_HEADER_BYTES:])
            await trio.lowlevel.wait_readable(peer)
            buf += peer.recv(1 << 16)


async def links(shard: Shard, nursery: trio.Nursery, count: int) -> list[socket.socket]:
    """`count` router links to the shard (its serve_router over socket pairs); the router ends."""
    nursery.start_soon(shard.committer)
    await trio.testing.wait_all_tasks_blocked()
    assert shard.idle_sync is not None
    peers = []
    for _ in range(count):
        peer, end = socket.socketpair()
        peer.setblocking(False)
        end.setblocking(False)
        nursery.start_soon(serve_router, shard, end)
        peers.append(peer)
    await trio.testing.wait_all_tasks_blocked()
    return peers


async def test_a_set_through_a_link_is_synced_at_the_end_of_its_turn(tmp_path: Path) -> None:
    shard = open_shard(tmp_path)
    async with trio.open_nursery() as nursery:
        [peer] = await links(shard, nursery, 1)
        for rid in range(1, 4):
            peer.send(set_frame(rid))
            assert await reply_frame(peer) == [(rid, b"+OK\r\n")]
            assert shard.wal.durable_seq == shard.wal.tail_seq == rid
        # Every sync ran at the end of the link's turn, none once trio found the loop idle.
        assert shard.idle_sync.synced_at_turn_end == 3
        assert shard._commit_thread.syncs_in_loop == shard.wal.fsync_count == 3
        assert shard.sync_places() == {"fsyncs_in_loop": 3, "fsyncs_at_turn_end": 3}  # INFO persistence
        nursery.cancel_scope.cancel()
    assert READY.nothing_ready() and not READY._owners  # the closed link was forgotten
    shard.wal.close()


async def test_with_another_link_ready_the_turn_does_not_sync(tmp_path: Path) -> None:
    shard = open_shard(tmp_path)
    async with trio.open_nursery() as nursery:
        first, second = await links(shard, nursery, 2)
        first.send(set_frame(1))
        second.send(set_frame(2))  # both are readable when the first of the two turns ends
        assert await reply_frame(first) == [(1, b"+OK\r\n")]
        assert await reply_frame(second) == [(2, b"+OK\r\n")]
        assert shard.wal.durable_seq == shard.wal.tail_seq == 2
        # The first turn saw the other link ready: no sync at its end (the second turn's
        # batch found its records pending and gave them to the thread; its own end may sync).
        assert shard.idle_sync.synced_at_turn_end <= 1
        assert shard.idle_sync.handed_to_thread >= 1
        nursery.cancel_scope.cancel()
    shard.wal.close()


async def test_with_a_client_of_the_shard_port_ready_the_turn_does_not_sync(tmp_path: Path) -> None:
    shard = open_shard(tmp_path)
    async with trio.open_nursery() as nursery:
        [link] = await links(shard, nursery, 1)
        node = ShardNode(shard.config, shard)
        READY.watch(node.poller.fileno(), node)  # as ShardNode.serve does
        try:
            [(peer, _client)] = connect(node, 1)
            peer.send(GET)  # ready on the node's poller, not read (its task is not running)
            await trio.sleep(0.01)
            link.send(set_frame(1))
            assert await reply_frame(link) == [(1, b"+OK\r\n")]
            assert shard.wal.durable_seq == shard.wal.tail_seq == 1
            assert shard.idle_sync.synced_at_turn_end == 0  # synced once the loop went idle instead
        finally:
            READY.forget(node.poller.fileno(), node)
        nursery.cancel_scope.cancel()
    node.poller.close()
    shard.wal.close()


def test_ready_watch_sees_input_and_owners(monkeypatch: pytest.MonkeyPatch) -> None:
    watch = ReadyWatch()
    (a, a_end), (b, b_end) = socket.socketpair(), socket.socketpair()
    try:
        watch.watch(a_end.fileno(), "link a")
        assert watch.nothing_ready()
        a.send(b"x")
        assert not watch.nothing_ready()
        # A descriptor never forgotten goes to its new owner; the old owner's forget leaves it.
        watch.watch(a_end.fileno(), "link a2")
        watch.forget(a_end.fileno(), "link a")
        assert not watch.nothing_ready()
        watch.forget(a_end.fileno(), "link a2")
        assert watch.nothing_ready()
        assert a_end.recv(1) == b"x"
        # Past the limit a descriptor is not watched, and no turn may then sync.
        monkeypatch.setattr(link_turn, "MAX_WATCHED_FDS", 1)
        watch.watch(a_end.fileno(), "link a")
        watch.watch(b_end.fileno(), "link b")
        assert not watch.nothing_ready()
        watch.forget(b_end.fileno(), "link b")
        assert watch.nothing_ready()
        watch.forget(a_end.fileno(), "link a")
    finally:
        for sock in (a, a_end, b, b_end):
            sock.close()
