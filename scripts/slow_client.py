#!/usr/bin/env python3
"""One slow client against others (issue 9, item 11): a client pipelines
`GET big` (a 100 KB value) thousands of times and never reads its replies,
while other clients GET a small key on the same shard and on another shard.
Prints the others' latency (p50/p99/max) idle and under that load, the
slowest single GET, and the RSS of the server's processes.

    python scripts/slow_client.py --durakv              # starts durakv serve (2 shards)
    python scripts/slow_client.py --redis               # starts redis-server for comparison
    python scripts/slow_client.py --port 6379           # an already running server

The same mechanism at test size is tests/test_slow_client.py.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable

import redis
from proctools import free_port, stop_group

VALUE_BYTES = 100_000
# Keys by slot: "{a}" and "{b}" hash to slots in different halves of 0..16383, so
# with two shards "{a}small" shares a shard with "{a}big" and "{b}small" does not.
BIG_KEY = "{a}big"
SAME_SHARD_KEY = "{a}small"
OTHER_SHARD_KEY = "{b}small"


def rss_mb(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        out[pid] = int(line.split()[1]) / 1024
        except OSError:
            pass
    return out


def start_server(durakv: bool, port: int, tmp: str,
                 probe: Callable[[redis.Redis], object]) -> subprocess.Popen:
    """durakv (2 shards) or redis-server (no persistence) on port, in its own session,
    returned once `probe` of a client succeeds (30 s at most)."""
    if durakv:
        argv = [sys.executable, "-m", "durakv.server.cli", "serve", "--port", str(port), "--shards", "2",
                "--data-dir", os.path.join(tmp, "data")]
    else:
        argv = ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", tmp]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            probe(redis.Redis(port=port, socket_timeout=1))
            return proc
        except redis.RedisError:
            if time.monotonic() > deadline:
                stop_group(proc)
                raise
            time.sleep(0.1)


def tree_pids(root: int) -> list[int]:
    out = subprocess.run(["pgrep", "-g", str(os.getpgid(root))], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def measure(port: int, key: str, seconds: float, stop: threading.Event | None = None) -> list[float]:
    """Latencies (s) of back-to-back GETs of `key` for `seconds` (after one untimed
    GET: the connection's setup is not a GET's latency)."""
    return [latency for _, latency in measure_stamped(port, key, seconds, stop)]


def measure_stamped(port: int, key: str, seconds: float,
                    stop: threading.Event | None = None) -> list[tuple[float, float]]:
    """measure's GETs as (perf_counter at the start, latency s): a caller can tell which
    phase of a run each belongs to."""
    client = redis.Redis(port=port, socket_timeout=60)
    client.get(key)
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end and not (stop and stop.is_set()):
        t0 = time.perf_counter()
        client.get(key)
        out.append((t0, time.perf_counter() - t0))
    client.close()
    return out


def summary(latencies: list[float]) -> str:
    if not latencies:
        return "no samples"
    ordered = sorted(latencies)
    p = lambda q: ordered[min(int(q * len(ordered)), len(ordered) - 1)] * 1000  # noqa: E731
    return f"n={len(ordered)} p50={p(0.5):.2f} ms p99={p(0.99):.2f} ms max={ordered[-1] * 1000:.1f} ms"


def slow_client(port: int, count: int, sent: list[int]) -> socket.socket:
    """Connect and pipeline `count` GETs of the big key from a thread; never read."""
    sock = socket.create_connection(("127.0.0.1", port))
    request = b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(BIG_KEY), BIG_KEY.encode())

    def pump() -> None:
        try:
            for _ in range(count // 100):
                sock.sendall(request * 100)
                sent[0] += 100
        except OSError:
            pass

    threading.Thread(target=pump, daemon=True).start()
    return sock


def run(port: int, pids_of, count: int, load_seconds: float) -> None:
    setup = redis.Redis(port=port, socket_timeout=30)
    setup.set(BIG_KEY, b"x" * VALUE_BYTES)
    setup.set(SAME_SHARD_KEY, b"v")
    setup.set(OTHER_SHARD_KEY, b"v")
    print(f"idle same shard:   {summary(measure(port, SAME_SHARD_KEY, 1.0))}")
    print(f"idle other shard:  {summary(measure(port, OTHER_SHARD_KEY, 1.0))}")
    print(f"RSS before (MB): {rss_mb(pids_of())}")
    sent = [0]
    sock = slow_client(port, count, sent)
    results: dict[str, list[float]] = {}
    threads = [threading.Thread(target=lambda k=k: results.__setitem__(k, measure(port, k, load_seconds)))
               for k in (SAME_SHARD_KEY, OTHER_SHARD_KEY)]
    peak: dict[int, float] = {}
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        for pid, mb in rss_mb(pids_of()).items():
            peak[pid] = max(peak.get(pid, 0), mb)
        time.sleep(0.1)
    print(f"slow client pipelined {sent[0]} GETs ({sent[0] * VALUE_BYTES / 1e9:.2f} GB of replies asked)")
    print(f"loaded same shard:  {summary(results[SAME_SHARD_KEY])}")
    print(f"loaded other shard: {summary(results[OTHER_SHARD_KEY])}")
    print(f"peak RSS under load (MB): {peak}")
    sock.close()
    t0 = time.monotonic()
    after = measure(port, SAME_SHARD_KEY, 1.0)
    print(f"after the slow client left: first GET {after[0] * 1000:.1f} ms; {summary(after)}"
          f" (measured {time.monotonic() - t0:.1f} s)")
    time.sleep(1.0)
    print(f"RSS 1 s after (MB): {rss_mb(pids_of())}")
    setup.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--durakv", action="store_true")
    what.add_argument("--redis", action="store_true")
    what.add_argument("--port", type=int)
    parser.add_argument("--gets", type=int, default=16_000, help="GETs the slow client pipelines")
    parser.add_argument("--seconds", type=float, default=8.0, help="how long the others measure")
    args = parser.parse_args()
    proc = None
    tmp = tempfile.mkdtemp()
    try:
        if args.port:
            port = args.port
            pids_of = lambda: []  # noqa: E731
        else:
            port = free_port()
            proc = start_server(args.durakv, port, tmp, lambda r: r.set(OTHER_SHARD_KEY, b"v"))
            pids_of = lambda: tree_pids(proc.pid)  # noqa: E731
        run(port, pids_of, args.gets, args.seconds)
    finally:
        if proc is not None:
            stop_group(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
