"""A client that pipelines requests for big replies (issue 13's output-limit load)
keeps few bytes of replies in flight, so other clients' replies on the same shard
link do not queue behind tens of megabytes (server/client.py run_backlog), and the
router reads those replies without copying each frame (FrameReceiver views)."""

from __future__ import annotations

import socket
from pathlib import Path

import trio

from durakv.server.client import (
    MAX_IN_FLIGHT_BYTES, MAX_REPLIES_IN_FLIGHT, RECV_BYTES, START_REPLIES_IN_FLIGHT, Client,
)
from durakv.server.node import ShardNode
from durakv.shards.config import Config
from durakv.shards.framelink import FrameReceiver
from durakv.shards.frames import encode_frame, reply_batch_decoder
from durakv.shards.shard import Shard

VALUE_BYTES = 100_000
PIPELINE = 200


def connected_pair() -> tuple[socket.socket, socket.socket]:
    listener = socket.create_server(("127.0.0.1", 0))
    peer = socket.create_connection(listener.getsockname())
    conn, _ = listener.accept()
    listener.close()
    conn.setblocking(False)
    peer.setblocking(False)
    return peer, conn


def node_with_big_value(tmp_path: Path) -> tuple[Shard, ShardNode]:
    """A shard holding `big` (VALUE_BYTES) and its client port, run in this process."""
    config = Config(data_dir=str(tmp_path / "data"), shards=1).resolved()
    shard = Shard(config, 0)
    (tmp_path / "data").mkdir()
    Path(shard.dir).mkdir()
    shard.open_log()
    shard.db.data[b"big"] = b"x" * VALUE_BYTES
    return shard, ShardNode(config, shard)


def connect(node: ShardNode) -> tuple[socket.socket, Client]:
    peer, conn = connected_pair()
    client = Client(node, conn, node.new_client_id())
    node.clients[client.id] = client
    node.poller.add(client)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # it never reads
    return peer, client


async def run_turns(node: ShardNode, client: Client, turns: int) -> list[int]:
    """Run the poller's turns for one client; its replies in flight after each read."""
    in_flight = []
    for _ in range(turns):
        node.poller.in_turn = True
        client.on_readable()
        node.poller.in_turn = False
        in_flight.append(len(client.replies))
        node.end_turn()
        await trio.lowlevel.checkpoint()
    return in_flight


async def test_a_pipeline_of_big_gets_keeps_its_replies_in_flight_under_the_byte_bound(tmp_path: Path) -> None:
    shard, node = node_with_big_value(tmp_path)
    peer, client = connect(node)
    request = b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n"
    peer.send(request * PIPELINE)
    in_flight = await run_turns(node, client, 20)
    # Before its first reply's size is known a client may have MAX_IN_FLIGHT_BYTES /
    # 16 KiB replies in flight, then as many as fit MAX_IN_FLIGHT_BYTES at their size.
    assert max(in_flight) <= MAX_IN_FLIGHT_BYTES // (16 * 1024), in_flight
    assert max(in_flight[1:]) <= MAX_IN_FLIGHT_BYTES // VALUE_BYTES + 1, in_flight
    assert client.outbuf_bytes > VALUE_BYTES  # it was served meanwhile, into its output buffer
    peer.close()
    client.kill()
    shard.wal.close()


async def test_a_receiver_in_view_mode_hands_frames_over_without_copies_and_drops_them_after() -> None:
    """The router's shard link (server/links.py) decodes replies straight out of the
    receive buffer: each frame is a memoryview, valid during the handler only."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    replies = [[(rid, b"r" * VALUE_BYTES)] for rid in range(1, 4)]
    seen: list[tuple[type, list]] = []
    kept: list[memoryview] = []

    def handle(items: list) -> None:
        for item in items:
            seen.append((type(item), reply_batch_decoder.decode(item)))
            kept.append(item)

    receiver = FrameReceiver(ours, handle, views=True)
    data = b"".join(encode_frame(batch) for batch in replies)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(receiver.run)
        theirs.sendall(data[:VALUE_BYTES // 2])  # part of the first frame: nothing handed over yet
        await trio.testing.wait_all_tasks_blocked()
        assert seen == []
        await trio.to_thread.run_sync(theirs.sendall, data[VALUE_BYTES // 2:])  # more than the socket holds
        with trio.fail_after(10):
            while len(seen) < 3:
                await trio.sleep(0.001)
        theirs.close()
    assert [kind for kind, _ in seen] == [memoryview] * 3
    assert [[tuple(r) for r in decoded] for _, decoded in seen] == replies
    assert all(_released(view) for view in kept)
    assert receiver._buf == bytearray()  # consumed: the views were released before the buffer moved


def _released(view: memoryview) -> bool:
    try:
        view.tobytes()
    except ValueError:
        return True
    raise AssertionError("a frame view outlived its handler")


async def test_a_small_reply_first_does_not_open_the_pipeline_to_big_replies(tmp_path: Path) -> None:
    """The router cannot know a reply's size before it comes: a client whose last reply
    was small (a PING) and that then pipelines GETs of big values gets no more replies
    in flight than a new client (START_REPLIES_IN_FLIGHT), not MAX_REPLIES_IN_FLIGHT of
    them: what one turn pulls for it from the shard stays near START * VALUE_BYTES
    (before: 200 replies, 20 MB, in one turn)."""
    shard, node = node_with_big_value(tmp_path)
    peer, client = connect(node)
    peer.send(b"PING\r\n")
    await run_turns(node, client, 1)
    assert peer.recv(64) == b"+PONG\r\n"
    assert client.reply_bytes == len(b"+PONG\r\n")  # what the router knows of its replies
    peer.send(b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n" * PIPELINE)
    sent_before = node.stats_net_output_bytes
    in_flight = await run_turns(node, client, 1)
    pulled_bytes = node.stats_net_output_bytes - sent_before + client.outbuf_bytes
    print(f"replies in flight after the PING: {in_flight}; bytes pulled in one turn: {pulled_bytes}")
    assert max(in_flight) <= START_REPLIES_IN_FLIGHT, in_flight
    assert pulled_bytes <= START_REPLIES_IN_FLIGHT * (VALUE_BYTES + 16)
    peer.close()
    client.kill()
    shard.wal.close()


async def test_the_window_grows_with_small_replies_written(tmp_path: Path) -> None:
    """A client whose writes prove many small replies may have up to MAX_REPLIES_IN_FLIGHT
    in flight (a deep pipeline of small commands keeps its throughput)."""
    shard, node = node_with_big_value(tmp_path)
    shard.db.data[b"small"] = b"s"
    peer, client = connect(node)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    peer.send(b"*2\r\n$3\r\nGET\r\n$5\r\nsmall\r\n" * 1000)
    caps = []
    for _ in range(12):
        await run_turns(node, client, 1)
        caps.append(client.in_flight_cap)
        try:
            peer.recv(1 << 20)
        except BlockingIOError:
            pass
    print(f"in-flight caps turn by turn: {caps}")
    assert caps[0] == 2 * START_REPLIES_IN_FLIGHT
    assert max(caps) == MAX_REPLIES_IN_FLIGHT
    peer.close()
    client.kill()
    shard.wal.close()


async def test_one_turn_parses_at_most_one_read_of_a_deep_pipeline(tmp_path: Path) -> None:
    """A client that pipelines many small requests has one read (RECV_BYTES, as Redis'
    16 KiB) parsed per turn, not 64 KiB (~2600 GETs, 5-8 ms of the loop every other
    client waited for; issue 13)."""
    shard, node = node_with_big_value(tmp_path)
    peer, client = connect(node)
    request = b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n"
    peer.send(request * (256 * 1024 // len(request)))
    await run_turns(node, client, 1)
    parsed = len(client.backlog) + node.stats_commands  # waiting, and dispatched
    print(f"requests parsed in one turn: {parsed}; the fast path took {client.parser.fast_requests}")
    assert parsed <= RECV_BYTES // len(request) + 1
    assert client.parser.fast_requests >= parsed - 1  # hiredis, up to the request the read ended in
    peer.close()
    client.kill()
    shard.wal.close()
