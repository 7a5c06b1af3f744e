#!/usr/bin/env python3
"""Large values, durakv against redis-server in the same run (issue 11 §4):
SET and GET of big strings (64 and 512 MiB by default; a plain socket client
that copies nothing, so the time is the servers') and LRANGE of a big list
(redis-py with hiredis), each timed, while a separate probe process PINGs
and GETs a small key on another shard back to back and records its worst
latency during the operation. Also the peak RSS of each server's processes.

    python scripts/large_values.py                      # 64 and 512 MiB, a 1M-element list, KEYS * of 1M keys
    python scripts/large_values.py --sizes-mb 8 64 --list-elements 5000000

Target (issue 11): durakv within 2x redis' time, and the probe (a client of
another shard) never stalled more than 50 ms; a second probe, a client of the
shard doing the operation, shows what its other clients wait. The first row is the probe's worst
latency while nothing runs: on a loaded machine, the baseline to read the others by. The same mechanism at test size
is tests/test_large_values.py.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event

import hiredis
import redis
from proctools import free_port, start_group, stop_group

MIB = 1024 * 1024
READY_TIMEOUT_S = 60.0
SOCKET_TIMEOUT_S = 600.0
RSS_SAMPLE_S = 0.05
IDLE_WINDOW_S = 3.0
LIST_PUSH_BATCH = 10_000
KEYS_PIPELINE = 5_000
# "{a}..." and "{b}..." hash to different halves of the slots: with two shards the
# probe's key lives on the other shard than the big values.
BIG_KEY = "{a}big"
LIST_KEY = "{a}list"
PROBE_KEY = "{b}probe"
SAME_SHARD_PROBE_KEY = "{a}probe"  # a client of the shard doing the big operation


def probe(port: int, key: str, measuring: Event, ask: Event, done: Event, out: Connection) -> None:
    """Back-to-back PING and GET of `key`. Records the latency of every request
    that started or ended while `measuring` was set; when `ask` is set, sends the
    worst (ms) and starts over."""
    client = redis.Redis(port=port, socket_timeout=SOCKET_TIMEOUT_S)
    worst_s = 0.0
    while not done.is_set():
        if ask.is_set():
            ask.clear()
            out.send(worst_s * 1000)
            worst_s = 0.0
        for request in (client.ping, lambda: client.get(key)):
            during = measuring.is_set()
            t0 = time.perf_counter()
            request()
            if during or measuring.is_set():
                worst_s = max(worst_s, time.perf_counter() - t0)


def tree_pids(leader: int) -> list[int]:
    out = subprocess.run(["pgrep", "-g", str(os.getpgid(leader))], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass  # exited meanwhile
    return total


class System:
    def __init__(self, name: str, argv: list[str], port: int) -> None:
        self.name = name
        self.port = port
        self.proc = start_group(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                redis.Redis(port=port, socket_timeout=1).set(PROBE_KEY, b"v")
                break
            except redis.RedisError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"{name} did not start: {argv}") from None
                time.sleep(0.1)
        self.client = redis.Redis(port=port, socket_timeout=SOCKET_TIMEOUT_S)
        self.measuring = multiprocessing.Event()
        self.asks = []  # one per probe: the first to see a shared one would clear it for both
        self.done = multiprocessing.Event()
        self.results: list[Connection] = []
        self.probers = []
        for key in (PROBE_KEY, SAME_SHARD_PROBE_KEY):
            results, sender = multiprocessing.Pipe(duplex=False)
            ask = multiprocessing.Event()
            prober = multiprocessing.Process(
                target=probe, args=(port, key, self.measuring, ask, self.done, sender), daemon=True)
            self.asks.append(ask)
            prober.start()
            self.results.append(results)
            self.probers.append(prober)
        self.peak_rss = 0

    def timed(self, fn) -> tuple[float, float, float, object]:
        """Run fn(client): its seconds, the worst latency (ms) meanwhile of the probe of
        another shard and of the one of the same shard, its result."""
        stop = threading.Event()
        pids = tree_pids(self.proc.pid)

        def sample() -> None:
            while not stop.is_set():
                self.peak_rss = max(self.peak_rss, rss_bytes(pids))
                stop.wait(RSS_SAMPLE_S)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        self.measuring.set()
        t0 = time.perf_counter()
        result = fn(self.client)
        seconds = time.perf_counter() - t0
        self.measuring.clear()
        for ask in self.asks:
            ask.set()
        worst_ms, same_ms = (results.recv() for results in self.results)
        stop.set()
        sampler.join()
        return seconds, worst_ms, same_ms, result

    def stop(self) -> None:
        self.done.set()
        for prober in self.probers:
            prober.join(timeout=5)
        stop_group(self.proc)


# The last raw_set's seconds: until the server had read all but its socket buffer, then until +OK.
SET_PHASES: list[float] = []


def raw_set(port: int, key: bytes, value: bytes) -> bytes:
    """SET over a plain socket, the value written from its own buffer: the client
    costs no copy, so the time is the server's."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        start = time.perf_counter()
        sock.sendall(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n" % (len(key), key, len(value)))
        sock.sendall(value)
        sock.sendall(b"\r\n")
        sent = time.perf_counter()
        reply = read_line(sock)
        SET_PHASES[:] = [sent - start, time.perf_counter() - sent]
        return reply


def raw_get(port: int, key: bytes, into: bytearray) -> int:
    """GET over a plain socket into a buffer allocated beforehand; returns the size."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key))
        header = read_line(sock)
        if header[:1] != b"$":
            raise RuntimeError(f"GET answered {header[:200]!r}")
        size = int(header[1:])
        view = memoryview(into)[: size + 2]
        have = 0
        while have < size + 2:
            got = sock.recv_into(view[have:])
            if not got:
                raise RuntimeError(f"connection closed after {have} of {size} bytes")
            have += got
        return size


def last_sync_ms(client: redis.Redis) -> str:
    """Each shard's last write+fsync (INFO persistence shardN:...last_fsync_us=)."""
    info = client.info("persistence")
    return ", ".join(f"{name} {value['last_fsync_us'] / 1000:.0f} ms" for name, value in info.items()
                     if isinstance(value, dict) and "last_fsync_us" in value)


def read_line(sock: socket.socket) -> bytes:
    line = b""
    while not line.endswith(b"\r\n"):
        byte = sock.recv(1)
        if not byte:
            raise RuntimeError(f"connection closed in a reply line {line!r}")
        line += byte
    return line[:-2]


def load_keys(port: int, keys: int) -> None:
    """SET key:%012d to a small value for every key, pipelined over a plain socket."""
    with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT_S) as sock:
        reader = hiredis.Reader()
        for first in range(0, keys, KEYS_PIPELINE):
            last = min(keys, first + KEYS_PIPELINE)
            sock.sendall(b"".join(b"*3\r\n$3\r\nSET\r\n$16\r\nkey:%012d\r\n$1\r\nv\r\n" % i
                                  for i in range(first, last)))
            for _ in range(last - first):
                while (reply := reader.gets()) is False:
                    data = sock.recv(MIB)
                    if not data:
                        raise RuntimeError("connection closed while loading keys")
                    reader.feed(data)
                if isinstance(reply, hiredis.ReplyError):
                    raise RuntimeError(f"SET answered {reply}")


def raw_keys(port: int) -> int:
    """KEYS * with hiredis' C reader (redis-py's per-key objects would be most of the
    time); returns how many keys came."""
    with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT_S) as sock:
        sock.sendall(b"*2\r\n$4\r\nKEYS\r\n$1\r\n*\r\n")
        reader = hiredis.Reader()
        while (reply := reader.gets()) is False:
            data = sock.recv(MIB)
            if not data:
                raise RuntimeError("connection closed in the KEYS reply")
            reader.feed(data)
        return len(reply)


def build_list(client: redis.Redis, elements: int) -> None:
    client.delete(LIST_KEY)
    pipe = client.pipeline(transaction=False)
    for start in range(0, elements, LIST_PUSH_BATCH):
        pipe.rpush(LIST_KEY, *(b"element-%d" % i for i in range(start, min(start + LIST_PUSH_BATCH, elements))))
        if len(pipe) >= 10:
            pipe.execute()
    pipe.execute()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--list-elements", type=int, default=1_000_000)
    parser.add_argument("--keys", type=int, default=1_000_000, help="then KEYS * over this many keys (0: skip)")
    parser.add_argument("--redis-appendfsync", choices=("no-aof", "always"), default="no-aof",
                        help="redis-server without an AOF (default), or with appendonly yes, appendfsync always: "
                             "durakv's durability")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="durakv-large-")
    systems: list[System] = []
    try:
        port = free_port()
        systems.append(System("durakv", [sys.executable, "-m", "durakv.server.cli", "serve", "--port", str(port),
                                         "--shards", "2", "--data-dir", os.path.join(tmp, "data")], port))
        port = free_port()
        aof = (["--appendonly", "yes", "--appendfsync", "always"] if args.redis_appendfsync == "always"
               else ["--appendonly", "no"])
        systems.append(System("redis", ["redis-server", "--port", str(port), "--save", "", *aof, "--dir", tmp], port))
        rows = []
        phases: list[str] = []
        # The probe's worst latency while nothing else runs: on a loaded machine the
        # stalls below are only the operations' to the extent they exceed this.
        rows.append((f"idle, {IDLE_WINDOW_S:.0f} s (probe baseline)",
                     [system.timed(lambda c: time.sleep(IDLE_WINDOW_S))[:3] for system in systems]))
        for size_mb in args.sizes_mb:
            value = os.urandom(MIB) * size_mb
            into = bytearray(len(value) + 2)  # allocated (and zeroed) before the clock starts
            for op in ("SET", "GET"):
                cells = []
                for system in systems:
                    if op == "SET":
                        seconds, worst_ms, same_ms, reply = system.timed(
                            lambda c, port=system.port, v=value: raw_set(port, BIG_KEY.encode(), v))
                        assert reply == b"+OK", f"{system.name}: SET answered {reply!r}"
                        phases.append(f"{system.name} {SET_PHASES[0]:.3f} s sending + {SET_PHASES[1]:.3f} s to +OK"
                                      + (f" (the shards' last write+fsync: {last_sync_ms(system.client)})"
                                         if system.name == "durakv" else ""))
                    else:
                        into[:] = bytes(len(into))
                        seconds, worst_ms, same_ms, size = system.timed(
                            lambda c, port=system.port, buf=into: raw_get(port, BIG_KEY.encode(), buf))
                        assert size == len(value) and into[:size] == value, f"{system.name}: GET gave other bytes"
                    cells.append((seconds, worst_ms, same_ms))
                rows.append((f"{op} {size_mb} MiB", cells))
            del value, into
            for system in systems:
                system.client.delete(BIG_KEY)
        if args.list_elements:
            for system in systems:
                build_list(system.client, args.list_elements)
            cells = []
            for system in systems:
                seconds, worst_ms, same_ms, got = system.timed(lambda c: c.lrange(LIST_KEY, 0, -1))
                assert len(got) == args.list_elements, f"{system.name}: LRANGE returned {len(got)} elements"
                cells.append((seconds, worst_ms, same_ms))
            rows.append((f"LRANGE 0 -1 of {args.list_elements} elements", cells))
        if args.keys:
            cells = []
            for system in systems:
                load_keys(system.port, args.keys)
                seconds, worst_ms, same_ms, got = system.timed(lambda c, port=system.port: raw_keys(port))
                assert got >= args.keys, f"{system.name}: KEYS * returned {got} keys"
                cells.append((seconds, worst_ms, same_ms))
            rows.append((f"KEYS * over {args.keys} keys", cells))
        print("| operation | durakv s | redis s | ratio | durakv worst probe ms | durakv same-shard probe ms "
              "| redis worst probe ms |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, ((d_s, d_ms, d_same_ms), (r_s, r_ms, _)) in rows:
            print(f"| {name} | {d_s:.3f} | {r_s:.3f} | {d_s / r_s:.1f}x | {d_ms:.1f} | {d_same_ms:.1f} | {r_ms:.1f} |")
        for line in phases:
            print(f"SET phases: {line}")
        print(f"redis-server: {args.redis_appendfsync}; load average {os.getloadavg()[0]:.1f}")
        print(f"peak RSS: durakv {systems[0].peak_rss / MIB:.0f} MiB (all processes), "
              f"redis {systems[1].peak_rss / MIB:.0f} MiB")
    finally:
        for system in systems:
            system.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
