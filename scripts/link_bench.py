"""CPU µs and instructions per command of a shard's side of the router path,
in-process: a real `Shard` serving real router links (shards/process.py
serve_router, its FrameReceiver task, execution, the reply frames, the group
commit) over Unix socket pairs whose other ends a stand-in router in the driver
writes: each turn one frame per link carrying --clients/--links requests (as a
router's turn sends one frame per shard), then it reads every reply. The half of
the router path that scripts/router_bench.py stands in for; no other process takes
part. Durable SETs wait for their fsync (the commit thread's CPU is reported apart).
Best of --rounds rounds.

    python scripts/link_bench.py [--clients 50] [--links 1] [--requests 50000] [--rounds 5]
        [--workloads get1,set1]

Instructions per command, deterministic (Ir / commands, the driver included, as in
scripts/node_bench.py):

    valgrind --tool=callgrind --instr-atstart=no python scripts/link_bench.py \
        --callgrind --rounds 1 --requests 2000 --clients 10 --workloads set1
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time

import msgspec
import trio

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from durakv.shards.config import Config  # noqa: E402
from durakv.shards.frames import FRAME_HEADER_BYTES, Request, encode_frame  # noqa: E402
from durakv.shards.process import serve_router  # noqa: E402
from durakv.shards.shard import Shard  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from node_bench import VALUE, callgrind  # noqa: E402

WAIT_S = 10.0  # for a reply (an fsync), before giving up
replies_decoder = msgspec.msgpack.Decoder(list[tuple[int, bytes]])


class StandInRouter:
    """The router end of one link: sends a frame of requests, counts the replies."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.rid = 0

    def send(self, command: bytes, keys: list[bytes], proto: int = 2) -> None:
        requests = []
        for key in keys:
            self.rid += 1
            argv = [command, key] if command == b"GET" else [command, key, VALUE]
            requests.append(Request(self.rid, self.rid, proto, argv))
        self.sock.sendall(encode_frame(requests))

    async def replies(self, count: int) -> None:
        """Read frames until `count` replies came."""
        buf = self.buf
        got = 0
        while got < count:
            while len(buf) >= FRAME_HEADER_BYTES:
                size = int.from_bytes(buf[:FRAME_HEADER_BYTES], "big")
                if len(buf) < FRAME_HEADER_BYTES + size:
                    break
                got += len(replies_decoder.decode(bytes(buf[FRAME_HEADER_BYTES:FRAME_HEADER_BYTES + size])))
                del buf[:FRAME_HEADER_BYTES + size]
            if got >= count:
                break
            try:
                buf += self.sock.recv(1 << 20)
            except BlockingIOError:
                with trio.fail_after(WAIT_S):
                    await trio.lowlevel.wait_readable(self.sock)
        assert got == count, f"{got} replies for {count} requests"


async def workload(routers: list[StandInRouter], per_link: int, command: bytes, requests: int,
                   keys: int) -> tuple[float, float]:
    """(loop thread CPU µs per command, driver included; other threads' CPU µs per command)."""
    done = 0
    issued = 0
    thread_start, process_start = time.thread_time(), time.process_time()
    while done < requests:
        for router in routers:
            batch = []
            for _ in range(per_link):
                issued += 1
                batch.append(b"key:%06d" % (issued % keys))
            router.send(command, batch)
        for router in routers:
            await router.replies(per_link)
        done += per_link * len(routers)
    thread_s = time.thread_time() - thread_start
    other_s = time.process_time() - process_start - thread_s
    return thread_s * 1e6 / done, other_s * 1e6 / done


async def run(opts: argparse.Namespace, data_dir: str) -> None:
    config = Config(data_dir=data_dir, shards=1).resolved()
    shard = Shard(config, 0)
    os.makedirs(shard.dir, exist_ok=True)
    shard.open_log()
    per_link = max(1, opts.clients // opts.links)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(shard.committer)
        routers = []
        for _ in range(opts.links):
            router_end, shard_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            router_end.setblocking(False)
            shard_end.setblocking(False)
            nursery.start_soon(serve_router, shard, shard_end)
            routers.append(StandInRouter(router_end))
        await workload(routers, per_link, b"SET", opts.keys, opts.keys)  # every key exists
        results: dict[str, list[tuple[float, float]]] = {}
        for _ in range(opts.rounds):
            for name in opts.workloads.split(","):
                command = b"GET" if name.startswith("get") else b"SET"
                callgrind(opts, "--instr=on")
                results.setdefault(name, []).append(await workload(routers, per_link, command, opts.requests,
                                                                   opts.keys))
                callgrind(opts, "--instr=off")
                callgrind(opts, "--dump=" + name)
        idle = shard.idle_sync
        places = shard.sync_places()
        fsyncs = shard.wal.fsync_count
        nursery.cancel_scope.cancel()
    shard.wal.close()
    print(f"{'workload':<9} {'loop µs/cmd':>12} {'threads µs/cmd':>15}   every round (loop)")
    for name, rounds in results.items():
        loop_us, other_us = min(rounds)
        print(f"{name.upper():<9} {loop_us:>12.2f} {other_us:>15.2f}   " + " ".join(f"{r[0]:.2f}" for r in rounds))
    print(f"fsyncs {fsyncs}: in the loop {places['fsyncs_in_loop']}, at a turn's end {places['fsyncs_at_turn_end']}"
          f", handed to the thread {idle.handed_to_thread if idle is not None else 0}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=50, help="requests per turn, over all links")
    p.add_argument("--links", type=int, default=1, help="router links (routers) to the shard")
    p.add_argument("--requests", type=int, default=50_000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--keys", type=int, default=20_000)
    p.add_argument("--workloads", default="get1,set1")
    p.add_argument("--callgrind", action="store_true", help="toggle callgrind's collection around the workloads")
    opts = p.parse_args()
    if not (1 <= opts.clients <= 1000 and 1 <= opts.links <= 64 and 100 <= opts.requests <= 10_000_000
            and 1 <= opts.rounds <= 100 and 1 <= opts.keys <= 1_000_000):
        p.error("an argument is out of range")
    with tempfile.TemporaryDirectory(prefix="durakv-link-bench-") as data_dir:
        trio.run(run, opts, data_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
