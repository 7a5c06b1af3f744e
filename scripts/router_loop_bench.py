"""CPU µs and instructions per command of the router with its own tasks under trio:
scripts/router_bench.py's in-process set-up (a real Router, real Clients over loopback
TCP, ShardLinks to stand-in shards over Unix socket pairs), but the router runs as it
does in a tree: its poller task (`ClientPoller.run`), each link's receive
(`ShardLink._receiver`) and its flusher, woken by trio as the sockets become ready;
the stand-in shards are tasks too, and one driver task keeps every client's next
pipeline in flight (P commands sent as soon as the last P replies are in). So this
counts what router_bench leaves out: trio's scheduling, its epoll_ctl and task
switches per wakeup, and the turns' batching as the load makes it. The driver and
the stand-in shards are timed apart and subtracted (from the CPU figure only; the
instruction counts include them, as router_bench's).

It uses no more of the router than a link's `_receiver` and the poller's `run`,
so it runs against an older checkout too (PYTHONPATH to a directory holding a
`durakv/` of its folders, as scripts/set_p1_ab.py's base_package makes).

    python scripts/router_loop_bench.py [--clients 50] [--requests 50000] [--rounds 5]
        [--workloads get1,get16,set1,set16]

Instructions per command, deterministic within a tree (one workload per run):

    PYTHONHASHSEED=0 valgrind --tool=callgrind --instr-atstart=no python scripts/router_loop_bench.py \\
        --callgrind --rounds 1 --requests 2000 --clients 50 --workloads get1
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import subprocess
import sys
import time

import trio

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from node_bench import GET_REPLY_BYTES, SET_REPLY_BYTES, VALUE, request, socket_pairs  # noqa: E402
from router_bench import connect_link, print_rounds, run_main  # noqa: E402

from durakv.server.client import Client  # noqa: E402
from durakv.server.router import Router  # noqa: E402
from durakv.shards.config import Config  # noqa: E402
from durakv.shards.frames import encode_frame, request_batch_decoder  # noqa: E402

GET_REPLY = b"$%d\r\n%s\r\n" % (len(VALUE), VALUE)
SET_REPLY = b"+OK\r\n"
RECV_BYTES = 1 << 20


class DriverTime:
    """Thread seconds the driver and the stand-in shards took (not the router's)."""

    def __init__(self) -> None:
        self.s = 0.0


async def stand_in_shard(sock: socket.socket, driver: DriverTime) -> None:
    """Answer every request frame at once (a GET with the value, anything else +OK)."""
    buf = bytearray()
    while True:
        await trio.lowlevel.wait_readable(sock)
        t0 = time.thread_time()
        try:
            data = sock.recv(RECV_BYTES)
        except BlockingIOError:
            driver.s += time.thread_time() - t0
            continue
        if not data:
            return
        buf += data
        replies = []
        while len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[:4], "big"):
            size = int.from_bytes(buf[:4], "big")
            replies.extend((r.rid, GET_REPLY if r.argv[0] in (b"GET", b"get") else SET_REPLY)
                           for r in request_batch_decoder.decode(bytes(buf[4:4 + size])))
            del buf[:4 + size]
        if replies:
            sock.sendall(encode_frame(replies))
        driver.s += time.thread_time() - t0


async def drive(peers: list[socket.socket], command: str, pipeline: int, requests: int, keys: int,
                driver: DriverTime) -> None:
    """Keep each client's next pipeline in flight until `requests` commands are answered."""
    reply_bytes = (GET_REPLY_BYTES if command == "get" else SET_REPLY_BYTES) * pipeline
    epoll = select.epoll()
    by_fd = {peer.fileno(): peer for peer in peers}
    waiting = dict.fromkeys(by_fd, 0)
    issued = done = 0
    t0 = time.thread_time()
    try:
        for fd, peer in by_fd.items():
            epoll.register(fd, select.EPOLLIN)
            peer.send(b"".join(request(command, (issued + i) % keys) for i in range(pipeline)))
            issued += pipeline
            waiting[fd] = reply_bytes
        driver.s += time.thread_time() - t0
        while done < requests:
            await trio.lowlevel.wait_readable(epoll.fileno())
            t0 = time.thread_time()
            for fd, _events in epoll.poll(0):
                try:
                    waiting[fd] -= len(by_fd[fd].recv(RECV_BYTES))
                except BlockingIOError:
                    continue
                if waiting[fd] == 0:
                    done += pipeline
                    if issued < requests:
                        by_fd[fd].send(b"".join(request(command, (issued + i) % keys) for i in range(pipeline)))
                        issued += pipeline
                        waiting[fd] = reply_bytes
            driver.s += time.thread_time() - t0
        while any(waiting.values()):  # the last pipelines, answered past `requests`
            await trio.lowlevel.wait_readable(epoll.fileno())
            t0 = time.thread_time()
            for fd, _events in epoll.poll(0):
                waiting[fd] -= len(by_fd[fd].recv(RECV_BYTES))
            driver.s += time.thread_time() - t0
    finally:
        epoll.close()


def callgrind(opts: argparse.Namespace, order: str) -> None:
    """As in scripts/node_bench.py: one callgrind dump per workload."""
    if opts.callgrind:
        subprocess.run(["callgrind_control", order, str(os.getpid())], check=True,
                       stdout=subprocess.DEVNULL, timeout=600)


async def run(opts: argparse.Namespace, data_dir: str) -> None:
    router = Router(Config(data_dir=data_dir, shards=opts.shards).resolved(), 0)
    driver = DriverTime()
    results: dict[str, list[float]] = {}
    async with trio.open_nursery() as nursery:
        for link in router.links:
            nursery.start_soon(stand_in_shard, connect_link(link), driver)
            nursery.start_soon(link._receiver)
        pairs = socket_pairs(opts.clients)
        for _peer, conn in pairs:
            client = Client(router, conn, router.new_client_id())
            router.clients[client.id] = client
            router.poller.add(client)
        nursery.start_soon(router.poller.run)
        nursery.start_soon(router._flusher)
        peers = [peer for peer, _conn in pairs]
        await drive(peers, "get", 1, 1000, opts.keys, driver)  # warm-up
        for _ in range(opts.rounds):
            for name in opts.workloads.split(","):
                command, pipeline = name[:3], int(name[3:])
                requests = opts.requests * (10 if pipeline > 1 else 1)
                callgrind(opts, "--instr=on")
                driver.s = 0.0
                start_s = time.thread_time()
                await drive(peers, command, pipeline, requests, opts.keys, driver)
                router_s = time.thread_time() - start_s - driver.s
                callgrind(opts, "--instr=off")
                callgrind(opts, "--dump=" + name)
                results.setdefault(name, []).append(router_s * 1e6 / requests)
        nursery.cancel_scope.cancel()
    frames = sum(link.frames_sent for link in router.links)
    sent = sum(link.requests_sent for link in router.links)
    print_rounds(results)
    print(f"requests per shard frame (all workloads): {sent / max(frames, 1):.1f}")


def main() -> int:
    return run_main(__doc__, run, "durakv-router-loop-bench-")


if __name__ == "__main__":
    sys.exit(main())
