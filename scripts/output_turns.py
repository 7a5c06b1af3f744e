#!/usr/bin/env python3
"""How long the loop is held, turn by turn, while non-reading clients pipeline GETs
of a 100 KB value until they are closed at their output limit (issue 13), measured
in-process on a shard port (real `Client`s on a `ShardNode`, its shard executing
locally, over loopback TCP): the CPU time of each poller turn (every client's reads
and writes, the batch, the flush), as ClientPoller.run runs them. Another client's
GET waits for the turn it arrives in, so the longest turns are what its p99 is made
of; unlike scripts/output_limit.py's latencies, these figures move little with the
machine's load (the driver's sends run outside the timed part).

    python scripts/output_turns.py [--slow-clients 20] [--limit "normal 64mb 32mb 10"]

Prints per slow client the turns until its close, the loop's CPU in them and the
longest turn, the bytes of replies it was sent or had queued, and the turns of the
other client alone (idle) for comparison.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time

import trio

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from durakv.server.client import Client  # noqa: E402
from durakv.server.node import ShardNode  # noqa: E402
from durakv.server.settings import _parse_output_limits  # noqa: E402
from durakv.shards.config import Config  # noqa: E402
from durakv.shards.shard import Shard  # noqa: E402

VALUE_BYTES = 100_000
GETS_PER_CLIENT = 1_000_000
SEND_BYTES = 256 * 1024  # what the driver offers a slow client's socket per turn
SLOW_RCVBUF_BYTES = 64 * 1024
MAX_TURNS = 5000  # per slow client, before giving up on its close
GET = b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n"
SMALL_GET = b"*2\r\n$3\r\nGET\r\n$5\r\nsmall\r\n"


def connect(node: ShardNode, listener: socket.socket, rcvbuf: int = 0) -> tuple[socket.socket, Client]:
    peer = socket.socket()
    if rcvbuf:
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    peer.connect(listener.getsockname())
    peer.setblocking(False)
    conn, _ = listener.accept()
    conn.setblocking(False)
    client = Client(node, conn, node.new_client_id())
    node.clients[client.id] = client
    node.poller.add(client)
    return peer, client


def turn(node: ShardNode) -> float:
    """One poller turn (ClientPoller.run's body); its CPU seconds."""
    poller = node.poller
    start = time.thread_time()
    poller.in_turn = True
    for fd, events in poller._epoll.poll(0, poller.MAX_EVENTS_PER_TURN):
        client = poller._clients.get(fd)
        if client is None:
            continue
        if events & 4:  # EPOLLOUT
            client.on_writable()
        if events & 1 and not client.closed:  # EPOLLIN
            client.on_readable()
    poller.in_turn = False
    node.end_turn()
    return time.thread_time() - start


def other_get(peer: socket.socket) -> None:
    """The other client's next GET (its previous reply read first)."""
    try:
        peer.recv(1 << 16)
    except BlockingIOError:
        pass
    peer.send(SMALL_GET)


async def run(opts: argparse.Namespace, data_dir: str) -> None:
    config = Config(data_dir=data_dir, shards=1).resolved()
    shard = Shard(config, 0)
    os.makedirs(shard.dir, exist_ok=True)
    shard.open_log()
    shard.db.data[b"big"] = b"x" * VALUE_BYTES
    shard.db.data[b"small"] = b"v"
    node = ShardNode(config, shard)
    listener = socket.create_server(("127.0.0.1", 0))
    other, _ = connect(node, listener)
    limits, error = _parse_output_limits(node.settings.values["client-output-buffer-limit"], opts.limit)
    assert limits is not None, error
    node.settings.apply([("client-output-buffer-limit", limits)])  # as CONFIG SET applies it
    idle = []
    for _ in range(200):
        other_get(other)
        idle.append(turn(node))
    idle.sort()
    print(f"limit {opts.limit}; other client alone: turn p50 {idle[100] * 1e6:.0f} µs, max {idle[-1] * 1e6:.0f} µs")
    longest_all = []
    for n in range(1, opts.slow_clients + 1):
        peer, client = connect(node, listener, SLOW_RCVBUF_BYTES)
        request = GET * (SEND_BYTES // len(GET))
        sent_gets = 0
        pending = memoryview(b"")
        output_before = node.stats_net_output_bytes
        turns: list[float] = []
        queued = 0
        while not client.closed and len(turns) < MAX_TURNS:
            if not pending and sent_gets < GETS_PER_CLIENT:
                pending = memoryview(request)
            try:
                took = peer.send(pending) if pending else 0
            except (BlockingIOError, ConnectionError):
                took = 0
            sent_gets += took // len(GET)
            pending = pending[took:]
            other_get(other)
            queued = client.outbuf_bytes
            turns.append(turn(node))
        pulled = node.stats_net_output_bytes - output_before + queued
        longest_all.append(max(turns))
        print(f"slow client {n}: {'closed' if client.closed else 'NOT closed'} after {len(turns)} turns, "
              f"loop CPU {sum(turns) * 1e3:.2f} ms, longest turn {max(turns) * 1e6:.0f} µs, "
              f"{pulled / 1e6:.2f} MB of replies sent or queued")
        if opts.verbose:
            print("  turns (µs): " + " ".join(f"{t * 1e6:.0f}" for t in turns))
        peer.close()
    longest_all.sort()
    print(f"longest turn per slow client: median {longest_all[len(longest_all) // 2] * 1e6:.0f} µs, "
          f"max {longest_all[-1] * 1e6:.0f} µs")
    listener.close()
    shard.wal.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slow-clients", type=int, default=20)
    parser.add_argument("--limit", default="normal 64mb 32mb 10", help="client-output-buffer-limit to set")
    parser.add_argument("--verbose", action="store_true", help="print every turn's CPU")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trio.run(run, opts, tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
