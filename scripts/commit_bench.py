"""A shard's CPU per durable SET against its CPU per GET, in-process: no router,
no sockets, so what differs between the two is the durability bookkeeping (record
encoding, Log.append, the commit thread, hazards, held replies, the loop's wakeup
per fsync) plus SET's own keyspace work.

A closed loop as the router path drives a shard at P1: CLIENTS clients, each
sending its next command once its reply arrived; each loop turn executes at most
FRAME ready commands as one batch (one frame) and yields. Each workload runs
--rounds times, alternating; the best round is printed (the machine is shared).

    python scripts/commit_bench.py [--fake-fsync-us 400] [--requests 60000]

--fake-fsync-us replaces fdatasync by a sleep of that long: it keeps the group
commit's timing but leaves out the kernel's fsync CPU (67-70 µs per write+fdatasync
on this machine's ext4), so only durakv's own overhead is counted."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import trio

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from durakv.log.disk import Disk  # noqa: E402
from durakv.shards.config import Config  # noqa: E402
from durakv.shards.frames import Request  # noqa: E402
from durakv.shards.shard import Shard  # noqa: E402

VALUE = b"x" * 100


class Sink:
    """A ReplySink that hands the loop the replies that arrived."""

    def __init__(self) -> None:
        self.got: list[tuple[int, bytes]] = []
        self.arrived = trio.Event()

    def send(self, replies: list[tuple[int, bytes]]) -> None:
        if not self.got:
            self.arrived.set()
        self.got.extend(replies)


async def workload(shard: Shard, command: str, requests: int, clients: int, frame: int,
                   keys: int) -> tuple[float, float]:
    """CPU µs per command (process, main thread) over `requests` commands."""
    sink = Sink()
    ready = list(range(clients))
    done = issued = 0
    cpu_start, main_start = time.process_time(), time.thread_time()
    while done < requests:
        if ready:
            batch = []
            take, ready = ready[:frame], ready[frame:]
            for rid in take:
                issued += 1
                key = b"key:%06d" % (issued % keys)
                argv = [b"SET", key, VALUE] if command == "set" else [b"GET", key]
                batch.append(Request(rid, rid, 2, argv))
            now = shard.execute_batch(sink, batch)
            if now:
                sink.send(now)
            await trio.lowlevel.checkpoint()
        elif not sink.got:
            await sink.arrived.wait()
        sink.arrived = trio.Event()
        for rid, _ in sink.got:
            ready.append(rid)
            done += 1
        sink.got = []
    return ((time.process_time() - cpu_start) * 1e6 / done, (time.thread_time() - main_start) * 1e6 / done)


async def run(opts: argparse.Namespace, data_dir: str) -> None:
    shard = Shard(Config(data_dir=data_dir, shards=1).resolved(), 0)
    os.makedirs(shard.dir, exist_ok=True)
    shard.open_log()
    results: dict[str, list[tuple[float, float, float]]] = {"get": [], "set": []}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(shard.committer)
        await workload(shard, "set", 2 * opts.keys, opts.clients, opts.frame, opts.keys)  # every key exists
        for _ in range(opts.rounds):
            for command in ("get", "set"):
                fsyncs = shard.fsyncs
                cpu_us, main_us = await workload(shard, command, opts.requests, opts.clients, opts.frame, opts.keys)
                per_fsync = opts.requests / (shard.fsyncs - fsyncs) if shard.fsyncs > fsyncs else 0.0
                results[command].append((cpu_us, main_us, per_fsync))
        nursery.cancel_scope.cancel()
    shard.wal.close()
    best = {command: min(rounds) for command, rounds in results.items()}
    for command, (cpu_us, main_us, per_fsync) in best.items():
        rounds = " ".join(f"{r[0]:.1f}" for r in results[command])
        fsyncs = f", {per_fsync:.1f} cmds/fsync" if command == "set" else ""
        print(f"{command.upper()}: {cpu_us:.2f} µs CPU/cmd (loop thread {main_us:.2f}){fsyncs}; "
              f"every round: {rounds}")
    print(f"durable SET / GET: {best['set'][0] / best['get'][0]:.2f}x")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=60_000, help="commands per round and workload")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--keys", type=int, default=50_000, help="key space (SET first fills it twice over)")
    p.add_argument("--frame", type=int, default=8, help="commands per batch at most")
    p.add_argument("--fake-fsync-us", type=int, default=0, help="sleep instead of fdatasync (0: real fsync)")
    p.add_argument("--dir", default=None, help="where the log goes (default: a temporary directory)")
    opts = p.parse_args()
    if not (1 <= opts.requests <= 100_000_000 and 1 <= opts.rounds <= 100 and 1 <= opts.clients <= 100_000
            and 1 <= opts.frame <= 100_000 and 1 <= opts.keys <= 10_000_000 and 0 <= opts.fake_fsync_us <= 1_000_000):
        p.error("an argument is out of range")
    if opts.fake_fsync_us:
        delay_s = opts.fake_fsync_us / 1e6

        def fake_fdatasync(self: Disk, fd: int) -> None:
            time.sleep(delay_s)

        Disk.fdatasync = fake_fdatasync  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory(dir=opts.dir, prefix="durakv-commit-bench-") as data_dir:
        trio.run(run, opts, data_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
