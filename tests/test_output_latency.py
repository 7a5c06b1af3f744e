"""A client that pipelines requests for big replies (issue 13's output-limit load)
keeps few bytes of replies in flight, so other clients' replies on the same shard
link do not queue behind tens of megabytes (server/client.py run_backlog)."""

from __future__ import annotations

import socket
from pathlib import Path

import trio

from durakv.server.client import MAX_IN_FLIGHT_BYTES, Client
from durakv.server.node import ShardNode
from durakv.shards.config import Config
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


async def test_a_pipeline_of_big_gets_keeps_its_replies_in_flight_under_the_byte_bound(tmp_path: Path) -> None:
    config = Config(data_dir=str(tmp_path / "data"), shards=1).resolved()
    shard = Shard(config, 0)
    (tmp_path / "data").mkdir()
    Path(shard.dir).mkdir()
    shard.open_log()
    shard.db.data[b"big"] = b"x" * VALUE_BYTES
    node = ShardNode(config, shard)
    peer, conn = connected_pair()
    client = Client(node, conn, node.new_client_id())
    node.clients[client.id] = client
    node.poller.add(client)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # it never reads
    request = b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n"
    peer.send(request * PIPELINE)
    in_flight = []
    for _ in range(20):  # turns, as the poller runs them
        node.poller.in_turn = True
        client.on_readable()
        node.poller.in_turn = False
        in_flight.append(len(client.replies))
        node.end_turn()
        await trio.lowlevel.checkpoint()
    # Before its first reply's size is known a client may have MAX_IN_FLIGHT_BYTES /
    # 16 KiB replies in flight, then as many as fit MAX_IN_FLIGHT_BYTES at their size.
    assert max(in_flight) <= MAX_IN_FLIGHT_BYTES // (16 * 1024), in_flight
    assert max(in_flight[1:]) <= MAX_IN_FLIGHT_BYTES // VALUE_BYTES + 1, in_flight
    assert client.outbuf_bytes > VALUE_BYTES  # it was served meanwhile, into its output buffer
    peer.close()
    client.kill()
    shard.wal.close()
