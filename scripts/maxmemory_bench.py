#!/usr/bin/env python3
"""maxmemory under a write load, per policy: what the tree's RSS does against the
limit, how many writes noeviction refuses with -OOM, and whether the evicted keys
stay gone after kill -9 and a restart (their DEL effects replayed).

For each policy a fresh `durakv serve --shards N` tree gets CONFIG SET maxmemory
LIMIT and the policy, then SETs KEYS keys of VALUE_BYTES bytes (for volatile-*
nine in ten with a long TTL), pipelined, counting OOM errors. It prints, per
policy: keys left, evicted_keys, OOM replies, the shards' RSS growth over their
empty RSS (what maxmemory budgets: each shard gets LIMIT / N of heap growth), the
whole tree's RSS (including the supervisor, router and snapshotter, which
maxmemory does not cover), and whether the key set after kill -9 + restart is the
one before.

    python scripts/maxmemory_bench.py --limit-mb 50 --keys 150000
"""

from __future__ import annotations

import argparse
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import hiredis

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
sys.path.insert(0, str(SCRIPTS))
from memory_per_key import call, command, group_pids, read_errors, role, rss_bytes, wait_ready  # noqa: E402
from proctools import free_port, kill_group, start_group, stop_group  # noqa: E402

POLICIES = ("noeviction", "allkeys-lru", "allkeys-lfu", "allkeys-random", "volatile-lru", "volatile-lfu",
            "volatile-random", "volatile-ttl")
PIPELINE_COMMANDS = 1000
SETTLE_S = 1.0
LONG_TTL_S = 1_000_000
CHECKED_EVICTED_KEYS = 1000  # evicted keys looked up after the restart
MB = 1 << 20


def load(port: int, keys: int, value_bytes: int, volatile: bool) -> tuple[int, float]:
    """SET every key; returns (OOM replies, seconds)."""
    value = b"v" * value_bytes
    oom = 0
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=600) as s:
        reader = hiredis.Reader()
        for first in range(0, keys, PIPELINE_COMMANDS):
            last = min(keys, first + PIPELINE_COMMANDS)
            batch = []
            for i in range(first, last):
                argv = [b"SET", b"key:%012d" % i, value]
                if volatile and i % 10:
                    argv += [b"EX", b"%d" % LONG_TTL_S]
                batch.append(command(argv))
            s.sendall(b"".join(batch))
            for error in read_errors(s, reader, last - first):
                if not str(error).startswith("OOM "):
                    raise SystemExit(f"SET failed: {error}")
                oom += 1
    return oom, time.monotonic() - start


def tree_rss(leader: int) -> dict[str, int]:
    return {role(pid, leader): rss_bytes(pid) for pid in group_pids(leader)}


def info_field(port: int, section: bytes, name: str) -> str:
    text = call(port, b"INFO", section).decode()
    for line in text.splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1]
    raise KeyError(name)


def all_keys(port: int) -> set[bytes]:
    return set(call(port, b"KEYS", b"*"))


def start_tree(data_dir: str, port: int, shards: int, log) -> subprocess.Popen:
    proc = start_group([sys.executable, "-m", "durakv.server.cli", "serve", "--port", str(port),
                        "--shards", str(shards), "--data-dir", data_dir], cwd=REPO, stdout=log,
                       stderr=subprocess.STDOUT)
    wait_ready(port, proc, (b"CLUSTER", b"INFO"), b"cluster_state:ok")
    return proc


def run_policy(policy: str, opts: argparse.Namespace, tmp: str) -> dict:
    data_dir = f"{tmp}/{policy}"
    port = free_port()
    log = open(f"{tmp}/{policy}.log", "wb")
    proc = start_tree(data_dir, port, opts.shards, log)
    try:
        time.sleep(SETTLE_S)
        empty = tree_rss(proc.pid)
        limit = opts.limit_mb * MB
        call(port, b"CONFIG", b"SET", b"maxmemory-policy", policy.encode())
        call(port, b"CONFIG", b"SET", b"maxmemory", b"%d" % limit)
        oom, seconds = load(port, opts.keys, opts.value_bytes, policy.startswith("volatile-"))
        time.sleep(SETTLE_S)
        full = tree_rss(proc.pid)
        call(port, b"CONFIG", b"SET", b"maxmemory", b"0")  # no eviction while the key set is read
        evicted = int(info_field(port, b"stats", "evicted_keys"))
        kept = all_keys(port)
        kill_group(proc)
        proc.wait()
        proc = start_tree(data_dir, port, opts.shards, log)
        after = all_keys(port)
        gone = [b"key:%012d" % i for i in range(opts.keys) if b"key:%012d" % i not in kept]
        sample = random.sample(gone, min(len(gone), CHECKED_EVICTED_KEYS))
        resurrected = sum(call(port, b"EXISTS", key) for key in sample)
    finally:
        stop_group(proc)
        log.close()
    shards = [name for name in full if name.startswith("shard")]
    return {
        "policy": policy, "seconds": seconds, "keys": len(kept), "evicted": evicted, "oom": oom,
        "shard_growth": sum(full[n] - empty.get(n, 0) for n in shards),
        "tree_rss": sum(full.values()), "tree_empty": sum(empty.values()),
        "snapshotter_growth": full.get("snapshotter", 0) - empty.get("snapshotter", 0),
        "same_after_restart": after == kept, "resurrected": resurrected, "limit": limit,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit-mb", type=int, default=50)
    p.add_argument("--keys", type=int, default=150_000)
    p.add_argument("--value-bytes", type=int, default=500)
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--policies", default=",".join(POLICIES))
    opts = p.parse_args()
    print(f"maxmemory {opts.limit_mb} MB, {opts.keys} SETs of {opts.value_bytes} B, --shards {opts.shards}")
    print(f"{'policy':<16}{'load s':>7}{'keys':>8}{'evicted':>9}{'OOM':>8}{'shards RSS+':>12}{'/limit':>7}"
          f"{'tree RSS':>10}{'(empty)':>9}{'snap RSS+':>10}  restart")
    with tempfile.TemporaryDirectory(prefix="durakv-maxmem-") as tmp:
        for policy in opts.policies.split(","):
            r = run_policy(policy, opts, tmp)
            restart = "same keys" if r["same_after_restart"] else "DIFFERENT keys"
            restart += f", {r['resurrected']} evicted keys back"
            print(f"{policy:<16}{r['seconds']:>7.1f}{r['keys']:>8}{r['evicted']:>9}{r['oom']:>8}"
                  f"{r['shard_growth'] / MB:>10.1f}MB{r['shard_growth'] / r['limit']:>7.2f}"
                  f"{r['tree_rss'] / MB:>8.1f}MB{r['tree_empty'] / MB:>7.1f}MB"
                  f"{r['snapshotter_growth'] / MB:>8.1f}MB  {restart}", flush=True)


if __name__ == "__main__":
    main()
