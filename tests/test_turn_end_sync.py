"""A shard port's durable write is synced at the end of the client poller's turn
when no other client is ready (shards/idle_sync.py IdleSync.end_of_turn, as
redis-server syncs in beforeSleep): its reply is on the socket when the turn
ends, with no task switch, and never before its record is durable. With another
client ready the sync waits, as before, for the loop to go idle (or the thread)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import trio
from test_commit_thread import WAIT_S, open_shard

from durakv.server.client import Client
from durakv.server.node import ShardNode
from durakv.shards import idle_sync
from durakv.shards.shard import Shard

SET = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n"
GET = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"


@pytest.fixture(autouse=True)
def no_slow_syncs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A loaded machine's fsync may be slow enough to send the next sync to the thread."""
    monkeypatch.setattr(idle_sync, "INLINE_SYNC_SLOW_US", 10**9)


def connect(node: ShardNode, count: int) -> list[tuple[socket.socket, Client]]:
    """(driver socket, the node's Client) over loopback TCP, as scripts/node_bench.py does."""
    listener = socket.create_server(("127.0.0.1", 0))
    pairs = []
    for _ in range(count):
        peer = socket.create_connection(listener.getsockname())
        peer.setblocking(False)
        conn, _ = listener.accept()
        conn.setblocking(False)
        client = Client(node, conn, node.new_client_id())
        node.clients[client.id] = client
        node.poller.add(client)
        pairs.append((peer, client))
    listener.close()
    return pairs


def turn(node: ShardNode, clients: list[Client]) -> None:
    """One turn of the poller over `clients`, as ClientPoller.run runs it."""
    node.poller.in_turn = True
    for client in clients:
        client.on_readable()
    node.poller.in_turn = False
    node.end_turn()


def received(peer: socket.socket) -> bytes:
    try:
        return peer.recv(1 << 16)
    except BlockingIOError:
        return b""


async def started_node(shard: Shard, nursery: trio.Nursery) -> ShardNode:
    nursery.start_soon(shard.committer)
    await trio.testing.wait_all_tasks_blocked()
    assert shard.idle_sync is not None
    return ShardNode(shard.config, shard)


async def test_a_set_is_synced_and_answered_in_its_own_turn(tmp_path: Path) -> None:
    shard = open_shard(tmp_path)
    async with trio.open_nursery() as nursery:
        node = await started_node(shard, nursery)
        [(peer, client)] = connect(node, 1)
        for round_no in range(1, 4):
            peer.send(SET)
            await trio.sleep(0.01)  # the bytes reach the server end
            turn(node, [client])
            # The sync ran inside the turn: the reply is out, and its record was durable first.
            assert shard.wal.durable_seq == shard.wal.tail_seq == round_no
            assert received(peer) == b"+OK\r\n"  # loopback: a reply sent is here at once
        assert shard.idle_sync.synced_at_turn_end == 3
        assert shard._commit_thread.syncs_in_loop == shard.wal.fsync_count == 3
        assert shard.sync_places() == {"fsyncs_in_loop": 3, "fsyncs_at_turn_end": 3}  # INFO persistence
        nursery.cancel_scope.cancel()
    node.poller.close()
    shard.wal.close()


async def test_with_another_client_ready_the_sync_waits_for_the_idle_loop(tmp_path: Path) -> None:
    shard = open_shard(tmp_path)
    async with trio.open_nursery() as nursery:
        node = await started_node(shard, nursery)
        (writer, writing), (reader, _) = connect(node, 2)
        writer.send(SET)
        reader.send(GET)  # ready, not read in this turn
        await trio.sleep(0.01)
        turn(node, [writing])
        assert shard.wal.tail_seq == 1 and shard.wal.durable_seq == 0  # not synced in the turn
        assert shard.held.count == 1
        assert received(writer) == b""  # held: its record is not durable (loopback: a sent reply is here)
        with trio.fail_after(WAIT_S):
            while shard.wal.durable_seq < 1:  # the idle task (or the thread) syncs it
                await trio.sleep(0.01)
        await trio.sleep(0.01)
        assert received(writer) == b"+OK\r\n"
        assert shard.idle_sync.synced_at_turn_end == 0
        nursery.cancel_scope.cancel()
    node.poller.close()
    shard.wal.close()


def test_info_persistence_says_where_the_syncs_ran(server_factory) -> None:
    srv = server_factory(shards=1)
    port = srv.shard_client(0)
    for n in range(20):
        assert port.set(f"k{n}", "v")
    info = srv.client().info("persistence")
    # On a loaded disk the syncs may all go to the commit thread (INLINE_SYNC_SLOW_US): no
    # count is certain but their order.
    assert 0 <= info["log_fsyncs_at_turn_end"] <= info["log_fsyncs_in_loop"] <= info["log_fsyncs"]
    assert info["log_fsyncs"] >= 1
