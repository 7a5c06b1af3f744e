#!/usr/bin/env python3
"""Routing across nodes (issue 15): a GET/SET through node b's router to primaries on
node a (an authenticated TCP link) beside the same through node a's router (the local
Unix socket), and failover as a client of node b sees it.

Starts a 3-member etcd cluster on loopback (scripts/etcd_cluster.py) and, per round,
two `durakv serve` trees on this host standing for two machines: node a runs the
primaries, node b (node-role replica) one replica per shard. Latency: redis-benchmark
with one client, pipeline 1, keys over every shard, against node b's router and node a's.
Failover: 8 SET writers through node b's router, kill -9 of node a's whole tree; the time
to the first write acknowledged after the kill, and until every writer had one (every
shard served again by node b), over --trials trials (each with fresh trees).

Prints a markdown section (the lead puts it in BENCHMARKS.md)."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import redis

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))
from etcd_cluster import EtcdCluster  # noqa: E402
from proctools import free_port  # noqa: E402

REPO = SCRIPTS.parent
READY_TIMEOUT_S = 60.0
WRITERS = 8


class Node:
    def __init__(self, tmp: Path, name: str, endpoints: list[str], prefix: str, shards: int, ttl_s: int,
                 replica: bool) -> None:
        self.port = free_port()
        config = tmp / f"{name}-{prefix}.toml"
        listed = ", ".join(f'"{e}"' for e in endpoints)
        config.write_text(f'log-backend = "etcd"\netcd-endpoints = [{listed}]\netcd-prefix = "{prefix}"\n'
                          f"etcd-lease-ttl-s = {ttl_s}\nsnapshotter = false\n"
                          + ("replicas = 1\n" if replica else ""))
        argv = [sys.executable, "-m", "durakv.server.cli", "serve", "--port", str(self.port), "--shards",
                str(shards), "--data-dir", str(tmp / f"{name}-{prefix}"), "--config", str(config),
                "--node-id", name, "--advertise", f"127.0.0.1:{self.port}"]
        if replica:
            argv += ["--node-role", "replica"]
        self.log = open(tmp / f"{name}-{prefix}.log", "wb")
        self.proc = subprocess.Popen(argv, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def kill9(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.log.close()


def until(fn, what: str):
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            value = fn()
            if value:
                return value
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def start_pair(tmp: Path, etcd: EtcdCluster, shards: int, ttl_s: int) -> tuple[Node, Node]:
    prefix = f"xb-{uuid.uuid4().hex[:8]}"
    a = Node(tmp, "a", etcd.endpoints, prefix, shards, ttl_s, replica=False)
    until(lambda: redis.Redis(port=a.port).set("ready", 1), "node a")
    b = Node(tmp, "b", etcd.endpoints, prefix, shards, ttl_s, replica=True)
    client = redis.Redis(port=b.port)
    # Every shard forwarded: one key per slot half is enough for 2 shards; try many keys.
    until(lambda: all(client.set(f"probe{i}", 1) for i in range(32)), "node b's router forwarding")
    return a, b


def benchmark(port: int, requests: int) -> dict[str, tuple[float, float, float]]:
    """{test: (requests/s, p50 ms, p99 ms)} from redis-benchmark -c 1 -P 1."""
    out = subprocess.run(["redis-benchmark", "-p", str(port), "-c", "1", "-P", "1", "-n", str(requests),
                          "-r", "100000", "-t", "set,get", "--csv"], capture_output=True, text=True, check=True)
    results = {}
    for line in out.stdout.splitlines()[1:]:
        fields = [f.strip('"') for f in line.split(",")]
        results[fields[0]] = (float(fields[1]), float(fields[4]), float(fields[6]))
    return results


def failover_trial(tmp: Path, etcd: EtcdCluster, shards: int, ttl_s: int) -> tuple[float, float]:
    a, b = start_pair(tmp, etcd, shards, ttl_s)
    killed_at = [0.0]
    first_ack: list[float | None] = [None] * WRITERS
    stop = threading.Event()

    def write(index: int) -> None:
        client = redis.Redis(port=b.port, socket_timeout=20, retry=None)
        n = 0
        while not stop.is_set():
            n += 1
            sent = time.monotonic()
            try:
                client.set(f"w{index}:{n}", n)
            except redis.RedisError:
                time.sleep(0.01)
                continue
            if killed_at[0] and first_ack[index] is None and sent > killed_at[0]:  # sent after the kill
                first_ack[index] = time.monotonic()

    threads = [threading.Thread(target=write, args=(i,), daemon=True) for i in range(WRITERS)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    a.kill9()
    killed_at[0] = time.monotonic()
    until(lambda: all(t is not None for t in first_ack), "every writer acknowledged after the kill")
    stop.set()
    for thread in threads:
        thread.join(30)
    b.kill9()
    acks = [t - killed_at[0] for t in first_ack if t is not None]
    return min(acks), max(acks)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--requests", type=int, default=5000, help="per redis-benchmark run")
    parser.add_argument("--rounds", type=int, default=3, help="latency rounds (node a and b alternate)")
    parser.add_argument("--trials", type=int, default=5, help="failover trials")
    parser.add_argument("--lease-ttl-s", type=int, default=2)
    opts = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="xnode-bench-"))
    etcd = EtcdCluster(tmp / "etcd", binary=shutil.which("etcd") or "etcd").start()
    try:
        a, b = start_pair(tmp, etcd, opts.shards, opts.lease_ttl_s)
        rows: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
        for _ in range(opts.rounds):
            for where, port in (("node a's router (local primary)", a.port),
                                ("node b's router (primary on node a)", b.port)):
                for test, result in benchmark(port, opts.requests).items():
                    rows.setdefault((test, where), []).append(result)
        a.kill9()
        b.kill9()
        trials = [failover_trial(tmp, etcd, opts.shards, opts.lease_ttl_s) for _ in range(opts.trials)]
    finally:
        etcd.stop()
    load = os.getloadavg()
    print(f"## Routing across nodes ({opts.shards} shards, etcd 3 members on loopback; load average "
          f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f})\n")
    print("| command | through | ops/s (P1) | p50 ms | p99 ms |\n|---|---|---|---|---|")
    for (test, where), results in sorted(rows.items()):
        print(f"| {test} | {where} | {statistics.median(r[0] for r in results):,.0f} | "
              f"{statistics.median(r[1] for r in results):.3f} | {statistics.median(r[2] for r in results):.3f} |")
    first = [t[0] for t in trials]
    every = [t[1] for t in trials]
    print(f"\nFailover seen by 8 writers through node b, kill -9 of node a (etcd-lease-ttl-s {opts.lease_ttl_s}, "
          f"{opts.trials} trials): first acknowledged write after the kill p50 {percentile(first, 50):.2f} s, "
          f"p99 {percentile(first, 99):.2f} s; every writer acknowledged again p50 {percentile(every, 50):.2f} s, "
          f"p99 {percentile(every, 99):.2f} s ({', '.join(f'{t:.2f}' for t in every)})")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
