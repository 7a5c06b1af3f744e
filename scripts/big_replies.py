#!/usr/bin/env python3
"""Big replies built by a shard: LRANGE of a long list, SMEMBERS of a big set,
HGETALL of a big hash and KEYS * over many keys, durakv (`serve --shards 2`,
through the router) against redis-server in one run (a size of 0 skips a case).

For each command it reports the time from sending it to the reply's last byte
(the expected reply is computed here, so the client does no parsing that would
cost more than the server), and the worst latency another client saw meanwhile:
a probe doing GET in a loop on a key of the *other* shard than the list's (for
KEYS, which touches every shard, the same probe). Redis runs the same probe.

    python scripts/big_replies.py --list-elements 5000000 --keys 1000000
    python scripts/big_replies.py --list-elements 0 --keys 0 --set-members 2000000 --hash-fields 1000000
    python scripts/big_replies.py --list-elements 0 --keys 0 --zset-members 1000000

ZRANGE 0 -1 WITHSCORES of a big sorted set also runs a second probe, a client of
the same shard (GET of a key beside the set), whose worst latency is what a chunk's
loop turn costs the shard's other clients (shards/chunked.py SortedRange).

The set's and hash's replies are checked by size (their order is the server's).
With DURAKV_LOOPWATCH_MS=30 PYTHONPATH=scripts/loopwatch the shards log their long
loop turns with CPU time (scripts/loopwatch/sitecustomize.py).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
sys.path.insert(0, str(SCRIPTS))
from memory_per_key import call, command, load, wait_ready  # noqa: E402
from proctools import free_port, start_group, stop_group  # noqa: E402

RECV_BYTES = 4 << 20
PUSH_CHUNK = 10_000
PROBE_INTERVAL_S = 0.002
IDLE_CPU_FRACTION = 0.05  # the tree counts as idle below this much of one core
IDLE_WAIT_MAX_S = 180.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
LIST_KEY = b"biglist"  # slot 2568: shard 0 of 2
SET_KEY = b"set:big"  # slot 2240: shard 0 of 2
HASH_KEY = b"hash:big"  # slot 5166: shard 0 of 2
ZSET_KEY = b"{sorted}big"  # slot 1137: shard 0 of 2
SAME_SHARD_PROBE_KEY = b"{sorted}probe"  # beside ZSET_KEY
PROBE_KEY = b"probe:0"  # slot 11956: shard 1 of 2


def key_slot(key: bytes) -> int:
    from binascii import crc_hqx
    start = key.find(b"{")
    end = key.find(b"}", start + 1) if start >= 0 else -1
    if end > start + 1:  # a hash tag: only it is hashed
        key = key[start + 1 : end]
    return crc_hqx(key, 0) & 16383


def element(i: int) -> bytes:
    return b"element-%d" % i


def resp_array_bytes(items) -> int:
    return len(b"*%d\r\n" % len(items)) + sum(len(b"$%d\r\n" % len(x)) + len(x) + 2 for x in items)


def push_list(port: int, count: int, verb: bytes = b"RPUSH", key: bytes = LIST_KEY, pairs: bool = False) -> None:
    """`verb key element...` PUSH_CHUNK elements a command (HSET: element element, when pairs)."""
    with socket.create_connection(("127.0.0.1", port), timeout=600) as s:
        for first in range(0, count, PUSH_CHUNK):
            last = min(count, first + PUSH_CHUNK)
            items = [element(i) for i in range(first, last)]
            if pairs:
                items = [x for item in items for x in (item, item)]
            s.sendall(command([verb, key, *items]))
            reply = s.recv(1024)
            if not reply.startswith(b":"):
                raise SystemExit(f"{verb.decode()} failed: {reply[:200]!r}")


def timed_reply(port: int, argv: list[bytes], size_bytes: int) -> tuple[float, bytes]:
    """Seconds from sending argv to the size_bytes-th reply byte; the reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=600) as s:
        chunks, got = [], 0
        start = time.monotonic()
        s.sendall(command(argv))
        while got < size_bytes:
            data = s.recv(RECV_BYTES)
            if not data:
                raise ConnectionError("server closed the connection")
            chunks.append(data)
            got += len(data)
        elapsed = time.monotonic() - start
    return elapsed, b"".join(chunks)


class Probe:
    """GET `key` in a loop on its own connection; the worst latency seen."""

    def __init__(self, port: int, key: bytes = PROBE_KEY) -> None:
        self.port = port
        self.key = key
        self.worst_s = 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Probe":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()

    def _run(self) -> None:
        request = command([b"GET", self.key])
        with socket.create_connection(("127.0.0.1", self.port), timeout=600) as s:
            while not self.stop.is_set():
                start = time.monotonic()
                s.sendall(request)
                data = b""
                while not data.endswith(b"\r\n") or data.count(b"\r\n") < 2:
                    data += s.recv(1024)
                self.worst_s = max(self.worst_s, time.monotonic() - start)
                time.sleep(PROBE_INTERVAL_S)


def group_cpu_ticks(leader: int) -> int:
    out = subprocess.run(["pgrep", "-g", str(leader)], capture_output=True, text=True)
    total = 0
    for pid in out.stdout.split():
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total


def wait_idle(leader: int) -> float:
    """Wait until the durakv tree is idle (the snapshotter's build after a big load
    ends), so the measurement is not of two things at once; seconds waited."""
    start = time.monotonic()
    before = group_cpu_ticks(leader)
    while time.monotonic() - start < IDLE_WAIT_MAX_S:
        time.sleep(1.0)
        now = group_cpu_ticks(leader)
        if (now - before) / CLK_TCK < IDLE_CPU_FRACTION:
            break
        before = now
    return time.monotonic() - start


def measure(name: str, port: int, argv: list[bytes], size_bytes: int, check) -> dict:
    with Probe(port) as probe, Probe(port, SAME_SHARD_PROBE_KEY) as same:
        time.sleep(0.05)
        elapsed, reply = timed_reply(port, argv, size_bytes)
    if not check(reply):
        raise SystemExit(f"{name}: wrong reply to {argv[0]!r} ({len(reply)} bytes)")
    return {"s": elapsed, "probe_worst_ms": probe.worst_s * 1000, "same_worst_ms": same.worst_s * 1000}


def load_zset(port: int, count: int) -> None:
    """ZADD ZSET_KEY i element-i for i < count, PUSH_CHUNK members a command."""
    with socket.create_connection(("127.0.0.1", port), timeout=600) as s:
        for first in range(0, count, PUSH_CHUNK):
            args = [x for i in range(first, min(count, first + PUSH_CHUNK)) for x in (b"%d" % i, element(i))]
            s.sendall(command([b"ZADD", ZSET_KEY, *args]))
            reply = s.recv(1024)
            if not reply.startswith(b":"):
                raise SystemExit(f"ZADD failed: {reply[:200]!r}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--list-elements", type=int, default=5_000_000)
    p.add_argument("--keys", type=int, default=1_000_000)
    p.add_argument("--set-members", type=int, default=0)
    p.add_argument("--hash-fields", type=int, default=0)
    p.add_argument("--zset-members", type=int, default=0)
    p.add_argument("--rounds", type=int, default=3)
    opts = p.parse_args()
    for key in (LIST_KEY, SET_KEY, HASH_KEY):
        assert key_slot(key) < 8192 <= key_slot(PROBE_KEY), "the probe must live on the other shard"
    assert key_slot(ZSET_KEY) < 8192 and key_slot(SAME_SHARD_PROBE_KEY) == key_slot(ZSET_KEY)
    elements = [element(i) for i in range(opts.list_elements)]
    lrange_expected = b"*%d\r\n" % len(elements) + b"".join(b"$%d\r\n%b\r\n" % (len(x), x) for x in elements)
    keys = [b"key:%012d" % i for i in range(opts.keys)] + [PROBE_KEY]
    keys += [key for key, count in ((LIST_KEY, opts.list_elements), (SET_KEY, opts.set_members),
                                    (HASH_KEY, opts.hash_fields), (ZSET_KEY, opts.zset_members)) if count]
    keys += [SAME_SHARD_PROBE_KEY]
    keys_size = resp_array_bytes(keys)
    procs: list[subprocess.Popen] = []
    try:
        with tempfile.TemporaryDirectory(prefix="durakv-big-") as tmp:
            dport, rport = free_port(), free_port()
            procs.append(start_group([sys.executable, "-m", "durakv.server.cli", "serve", "--port", str(dport),
                                      "--shards", "2", "--data-dir", f"{tmp}/data"],
                                     cwd=REPO, stdout=open(f"{tmp}/durakv.log", "wb"), stderr=subprocess.STDOUT))
            procs.append(start_group(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", tmp],
                                     stdout=open(f"{tmp}/redis.log", "wb"), stderr=subprocess.STDOUT))
            wait_ready(dport, procs[0], (b"CLUSTER", b"INFO"), b"cluster_state:ok")
            wait_ready(rport, procs[1], (b"PING",), b"PONG")
            servers = {"durakv": dport, "redis": rport}
            for port in servers.values():
                push_list(port, opts.list_elements)
                call(port, b"SET", PROBE_KEY, b"p")
                call(port, b"SET", SAME_SHARD_PROBE_KEY, b"p")
            rows: dict[tuple[str, str], list[dict]] = {}
            if opts.list_elements:
                print(f"durakv idle after the list's load: {wait_idle(procs[0].pid):.0f} s")
            for _ in range(opts.rounds if opts.list_elements else 0):
                for name, port in servers.items():
                    rows.setdefault(("LRANGE", name), []).append(measure(
                        name, port, [b"LRANGE", LIST_KEY, b"0", b"-1"], len(lrange_expected),
                        lambda reply: reply == lrange_expected))
            for cmd, verb, key, count in ((b"SMEMBERS", b"SADD", SET_KEY, opts.set_members),
                                          (b"HGETALL", b"HSET", HASH_KEY, opts.hash_fields)):
                if not count:
                    continue
                pairs = cmd == b"HGETALL"
                items = [element(i) for i in range(count)]
                size = resp_array_bytes(items * 2 if pairs else items)
                for port in servers.values():
                    push_list(port, count, verb, key, pairs)
                print(f"durakv idle after the {verb.decode()}s: {wait_idle(procs[0].pid):.0f} s")
                for _ in range(opts.rounds):
                    for name, port in servers.items():
                        rows.setdefault((cmd.decode(), name), []).append(measure(
                            name, port, [cmd, key], size, lambda reply, size=size: len(reply) == size))
            if opts.zset_members:
                pairs = [x for i in range(opts.zset_members) for x in (element(i), b"%d" % i)]
                size = resp_array_bytes(pairs)
                expected = b"*%d\r\n" % len(pairs) + b"".join(b"$%d\r\n%b\r\n" % (len(x), x) for x in pairs)
                del pairs
                for port in servers.values():
                    load_zset(port, opts.zset_members)
                print(f"durakv idle after the ZADDs: {wait_idle(procs[0].pid):.0f} s")
                for _ in range(opts.rounds):
                    for name, port in servers.items():
                        rows.setdefault(("ZRANGE", name), []).append(measure(
                            name, port, [b"ZRANGE", ZSET_KEY, b"0", b"-1", b"WITHSCORES"], size,
                            lambda reply, expected=expected: reply == expected))
            if opts.keys:
                for port in servers.values():
                    load(port, opts.keys)
                print(f"durakv idle after the keys' load: {wait_idle(procs[0].pid):.0f} s")
            for _ in range(opts.rounds if opts.keys else 0):
                for name, port in servers.items():
                    rows.setdefault(("KEYS", name), []).append(measure(
                        name, port, [b"KEYS", b"*"], keys_size,
                        lambda reply: len(reply) == keys_size and reply.startswith(b"*%d\r\n" % len(keys))))
        print(f"\nLRANGE biglist 0 -1 over {opts.list_elements} elements; SMEMBERS of {opts.set_members}; "
              f"HGETALL of {opts.hash_fields}; KEYS * over {len(keys)} keys; "
              f"best of {opts.rounds}; probe = worst GET latency of another client meanwhile")
        print(f"{'command':<8}{'server':<8}{'s':>8}{'probe ms':>10}{'same-shard probe ms':>21}")
        for (cmd, name), runs in rows.items():
            best = min(runs, key=lambda r: r["s"])
            print(f"{cmd:<8}{name:<8}{best['s']:>8.3f}{max(r['probe_worst_ms'] for r in runs):>10.1f}"
                  f"{max(r['same_worst_ms'] for r in runs):>21.1f}")
        for cmd in sorted({cmd for cmd, _ in rows}):
            d = min(r["s"] for r in rows[(cmd, "durakv")])
            r = min(r["s"] for r in rows[(cmd, "redis")])
            print(f"{cmd}: durakv/redis time {d / r:.2f}x")
    finally:
        for proc in procs:
            stop_group(proc)


if __name__ == "__main__":
    main()
