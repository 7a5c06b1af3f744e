"""CPU µs per command of a shard port's client path, in-process: the parse,
dispatch, batch execution, reply flushing and socket calls of real `Client`s on a
`ShardNode` over loopback TCP, driven by a closed loop in the same thread. No
other process takes part, so the figure moves little with the machine's load
(unlike scripts/cpu_bench.py's, whose batching depends on scheduling); it is
what a change to the per-command path (server/client.py, server/node.py,
shards/shard.py) is measured with.

Each turn sends every client its next pipeline (P commands in one send), runs
each client's `on_readable` and the node's `end_turn` (the batch, the flush) as
the poller would, then reads every reply. The driver's own sends and reads are timed apart
and subtracted. Durable SETs wait for their fsync (the commit thread's CPU is
reported apart). Best of --rounds rounds.

    python scripts/node_bench.py [--clients 50] [--requests 50000] [--rounds 5]
        [--workloads get1,get16,set1,set16]   (also eval1, eval16: an EVAL of five redis.calls)

Instructions per command, deterministic (one workload per run; Ir / commands):

    valgrind --tool=callgrind --instr-atstart=no python scripts/node_bench.py \
        --callgrind --rounds 1 --requests 2000 --clients 10 --workloads get1
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time

import trio

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from durakv.server.client import Client  # noqa: E402
from durakv.server.node import ShardNode  # noqa: E402
from durakv.shards.config import Config  # noqa: E402
from durakv.shards.shard import Shard  # noqa: E402

VALUE = b"x" * 100
GET_REPLY_BYTES = len(b"$100\r\n") + len(VALUE) + 2
SET_REPLY_BYTES = len(b"+OK\r\n")
# A script-heavy request: five redis.calls (reads: no fsync to wait for), a fixed reply.
SCRIPT = b"redis.call('GET', KEYS[1]) redis.call('GET', KEYS[1]) redis.call('EXISTS', KEYS[1]) " \
         b"redis.call('STRLEN', KEYS[1]) redis.call('TYPE', KEYS[1]) return 1"
EVAL_REPLY_BYTES = len(b":1\r\n")
REPLY_BYTES = {"get": GET_REPLY_BYTES, "set": SET_REPLY_BYTES, "eval": EVAL_REPLY_BYTES}
WAIT_S = 10.0  # for an fsync, before giving up


def request(command: str, n: int) -> bytes:
    key = b"key:%06d" % n
    if command == "get":
        return b"*2\r\n$3\r\nGET\r\n$10\r\n" + key + b"\r\n"
    if command == "eval":
        return b"*4\r\n$4\r\nEVAL\r\n$%d\r\n%b\r\n$1\r\n1\r\n$10\r\n%b\r\n" % (len(SCRIPT), SCRIPT, key)
    return b"*3\r\n$3\r\nSET\r\n$10\r\n" + key + b"\r\n$100\r\n" + VALUE + b"\r\n"


def socket_pairs(count: int) -> list[tuple[socket.socket, socket.socket]]:
    """(driver end, server end) loopback TCP connections, both non-blocking."""
    listener = socket.create_server(("127.0.0.1", 0))
    pairs = []
    for _ in range(count):
        peer = socket.create_connection(listener.getsockname())
        peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer.setblocking(False)
        conn, _ = listener.accept()
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pairs.append((peer, conn))
    listener.close()
    return pairs


async def workload(node: ShardNode, shard: Shard, peers: list[socket.socket], clients: list[Client],
                   command: str, pipeline: int, requests: int, keys: int) -> tuple[float, float]:
    """(loop thread CPU µs per command without the driver, other threads' CPU µs per command)."""
    reply_bytes = REPLY_BYTES[command] * pipeline
    poller = node.poller
    driver_s = 0.0
    done = 0
    issued = 0
    thread_start, process_start = time.thread_time(), time.process_time()
    while done < requests:
        t0 = time.thread_time()
        for peer in peers:
            parts = []
            for _ in range(pipeline):
                issued += 1
                parts.append(request(command, issued % keys))
            peer.send(b"".join(parts))  # at most 16 SETs: the socket buffer takes them at once
        driver_s += time.thread_time() - t0
        poller.in_turn = True  # as ClientPoller.run does
        for client in clients:
            client.on_readable()
        poller.in_turn = False
        node.end_turn()
        t0 = time.thread_time()
        for peer in peers:
            got = 0
            while got < reply_bytes:
                try:
                    got += len(peer.recv(1 << 20))
                except BlockingIOError:
                    driver_s += time.thread_time() - t0
                    await wait_for_replies(peer)
                    t0 = time.thread_time()
        driver_s += time.thread_time() - t0
        done += len(peers) * pipeline
    thread_s = time.thread_time() - thread_start - driver_s
    other_s = time.process_time() - process_start - (time.thread_time() - thread_start)
    return thread_s * 1e6 / done, other_s * 1e6 / done


async def wait_for_replies(peer: socket.socket) -> None:
    """Sleep until the committer released held replies (LocalLink.send writes them)."""
    with trio.fail_after(WAIT_S):
        await trio.lowlevel.wait_readable(peer)


def callgrind(opts: argparse.Namespace, order: str) -> None:
    """Under `valgrind --tool=callgrind --instr-atstart=no`, count instructions of
    the measured workloads only (not imports and warm-up), one dump per workload:
    deterministic, whatever the machine's load. Instructions per command = the
    dump's total Ir / commands run."""
    if opts.callgrind:
        subprocess.run(["callgrind_control", order, str(os.getpid())], check=True,
                       stdout=subprocess.DEVNULL, timeout=600)


async def run(opts: argparse.Namespace, data_dir: str) -> None:
    config = Config(data_dir=data_dir, shards=1).resolved()
    shard = Shard(config, 0)
    os.makedirs(shard.dir, exist_ok=True)
    shard.open_log()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(shard.committer)
        node = ShardNode(config, shard)
        pairs = socket_pairs(opts.clients)
        clients = []
        for _peer, conn in pairs:
            client = Client(node, conn, node.new_client_id())
            node.clients[client.id] = client
            node.poller.add(client)
            clients.append(client)
        peers = [peer for peer, _ in pairs]
        await workload(node, shard, peers, clients, "set", 1, opts.keys, opts.keys)  # every key exists
        results: dict[str, list[tuple[float, float]]] = {}
        for _ in range(opts.rounds):
            for name in opts.workloads.split(","):
                command = name.rstrip("0123456789")
                pipeline = int(name[len(command):])
                requests = opts.requests * (10 if pipeline > 1 else 1)
                callgrind(opts, "--instr=on")
                results.setdefault(name, []).append(await workload(
                    node, shard, peers, clients, command, pipeline, requests, opts.keys))
                callgrind(opts, "--instr=off")
                callgrind(opts, "--dump=" + name)
        nursery.cancel_scope.cancel()
    shard.wal.close()
    print(f"{'workload':<9} {'loop µs/cmd':>12} {'threads µs/cmd':>15}   every round (loop)")
    for name, rounds in results.items():
        loop_us, other_us = min(rounds)
        print(f"{name.upper():<9} {loop_us:>12.2f} {other_us:>15.2f}   " + " ".join(f"{r[0]:.2f}" for r in rounds))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--requests", type=int, default=50_000, help="per P1 run; pipelined runs 10x as many")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--keys", type=int, default=20_000)
    p.add_argument("--workloads", default="get1,get16,set1,set16")
    p.add_argument("--callgrind", action="store_true", help="toggle callgrind's collection around the workloads")
    opts = p.parse_args()
    if not (1 <= opts.clients <= 1000 and 100 <= opts.requests <= 10_000_000 and 1 <= opts.rounds <= 100
            and 1 <= opts.keys <= 1_000_000):
        p.error("an argument is out of range")
    with tempfile.TemporaryDirectory(prefix="durakv-node-bench-") as data_dir:
        trio.run(run, opts, data_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
