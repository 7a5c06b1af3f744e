"""Failover time and the cost of replicas (issue 14).

1. Failover: a tree with `replicas = 1`; in each trial a client writes SETs through
   the router as fast as it can, the shard's primary gets kill -9, and the time from
   the kill to the first SET acknowledged after it (by the promoted replica) is
   recorded. p50/p99/max over --trials (target: p99 <= 1 s). Before the next trial the
   replacement replica must be online. Each trial also prints the promotion itself (the
   promoted replica's "promoted to primary in" line: open and fence the log, apply the
   rest). --prefill-records writes that many SETs first (redis-benchmark, pipelined), so
   the retained log is large: the promotion must not grow with it.
2. Throughput: redis-benchmark SET through the router (durable: each reply after its
   fsync) with `replicas = 0` and `replicas = 1`: requests/s and p99.
3. --min-replicas: `replicas = 1` with min-replicas-to-write 0 and 1 (each reply also
   waits for the replica to apply the write), pipelines of 1 and 16.

    python scripts/failover_bench.py --trials 20 [--prefill-records 300000]
    python scripts/failover_bench.py --etcd --trials 10 --writers 8 --no-throughput

With --etcd the shard logs live on a 3-member etcd cluster the script starts on loopback
(issue 15: the promoted replica campaigns for the shard's leader key); --writers adds
that many writers of their own through the router during each trial (load).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proctools import free_port, start_group, stop_group  # noqa: E402

READY_TIMEOUT_S = 60
PROMOTED = re.compile(rb"promoted to primary in ([0-9.]+) s")


def start(tmp: Path, name: str, replicas: int, lease_ms: int, shards: int,
          extra_config: str = "") -> tuple[subprocess.Popen, int]:
    port = free_port()
    config = tmp / f"{name}.toml"
    config.write_text(f"replicas = {replicas}\nlease-duration-ms = {lease_ms}\n{extra_config}")
    log = open(tmp / f"{name}.log", "ab")
    proc = start_group([sys.executable, "-m", "durakv.server.cli", "serve", "--port", str(port), "--shards",
                        str(shards), "--data-dir", str(tmp / name), "--config", str(config)],
                       stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if b"cluster_state:ok" in redis.Redis(port=port).execute_command("CLUSTER", "INFO"):
                return proc, port
        except redis.RedisError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"durakv did not start; see {tmp / name}.log")


def replica_online(port: int) -> bool:
    try:
        info = redis.Redis(port=port + 1).info("replication")
    except redis.RedisError:
        return False
    return info.get("connected_slaves", 0) >= 1 and info["slave0"]["state"] == "online"


def primary_pid(port: int) -> int:
    return int(redis.Redis(port=port + 1).info("server")["process_id"])


def failover_trial(port: int, writers: int = 0) -> float:
    """kill -9 the primary of shard 0 under a writer (and `writers` more, for load);
    seconds to the first SET acked after."""
    killed_at = [0.0]
    first_after = [0.0]
    stop = threading.Event()

    def load(index: int) -> None:
        client = redis.Redis(port=port, socket_timeout=5, retry=None)
        n = 0
        while not stop.is_set():
            n += 1
            try:
                client.set(f"load{index}:{n}", n)
            except redis.RedisError:
                client = redis.Redis(port=port, socket_timeout=5, retry=None)
                time.sleep(0.001)

    loaders = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(writers)]
    for loader in loaders:
        loader.start()

    def writer() -> None:
        client = redis.Redis(port=port, socket_timeout=5, retry=None)
        n = 0
        while not stop.is_set():
            n += 1
            sent_at = time.monotonic()
            try:
                client.set(f"k{n}", n)
            except redis.RedisError:
                client = redis.Redis(port=port, socket_timeout=5, retry=None)
                time.sleep(0.001)
                continue
            if killed_at[0] and sent_at > killed_at[0] and not first_after[0]:  # sent after the kill
                first_after[0] = time.monotonic()
                stop.set()

    pid = primary_pid(port)
    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    time.sleep(0.3)
    os.kill(pid, signal.SIGKILL)
    killed_at[0] = time.monotonic()
    thread.join(30)
    stop.set()
    for loader in loaders:
        loader.join(10)
    if not first_after[0]:
        raise RuntimeError("no write was acknowledged within 30 s of the kill")
    return first_after[0] - killed_at[0]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def throughput(tmp: Path, replicas: int, lease_ms: int, requests: int, clients: int,
               shards: int, extra_config: str = "", min_replicas: int = 0, pipeline: int = 1) -> tuple[float, float]:
    proc, port = start(tmp, f"tput-r{replicas}-m{min_replicas}-p{pipeline}", replicas, lease_ms, shards, extra_config)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while replicas and not replica_online(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        redis.Redis(port=port).config_set("min-replicas-to-write", min_replicas)
        out = subprocess.run(["redis-benchmark", "-p", str(port), "-t", "set", "-n", str(requests), "-c",
                              str(clients), "-r", "100000", "-P", str(pipeline), "--csv"],
                             capture_output=True, text=True, check=True)
        rows = list(csv.DictReader(io.StringIO(out.stdout)))
        return float(rows[0]["rps"]), float(rows[0]["p99_latency_ms"])
    finally:
        stop_group(proc)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--lease-ms", type=int, default=2000, help="lease-duration-ms")
    p.add_argument("--shards", type=int, default=1)
    p.add_argument("--requests", type=int, default=50_000, help="redis-benchmark -n per throughput run")
    p.add_argument("--clients", type=int, default=50, help="redis-benchmark -c")
    p.add_argument("--prefill-records", type=int, default=0, help="SETs written before the first trial")
    p.add_argument("--no-throughput", dest="throughput", action="store_false")
    p.add_argument("--min-replicas", action="store_true",
                   help="only durable SET with replicas = 1, min-replicas-to-write 0 vs 1, -P 1 and 16")
    p.add_argument("--etcd", action="store_true", help='log-backend = "etcd" on a 3-member etcd cluster')
    p.add_argument("--etcd-lease-ttl-s", type=int, default=2)
    p.add_argument("--writers", type=int, default=0, help="more writers during each trial (load)")
    opts = p.parse_args()
    if opts.min_replicas:
        with tempfile.TemporaryDirectory(prefix="failover-bench-") as tmp_name:
            for pipeline in (1, 16):
                for min_replicas in (0, 1):
                    rps, p99 = throughput(Path(tmp_name), 1, opts.lease_ms, opts.requests, opts.clients,
                                          opts.shards, "", min_replicas, pipeline)
                    print(f"durable SET, replicas = 1, min-replicas-to-write {min_replicas}, -P {pipeline}: "
                          f"{rps:.0f} requests/s, p99 {p99:.2f} ms (redis-benchmark -n {opts.requests} "
                          f"-c {opts.clients}, {opts.shards} shard(s))", flush=True)
        return 0
    with tempfile.TemporaryDirectory(prefix="failover-bench-") as tmp_name, contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        extra = ""
        if opts.etcd:
            from etcd_cluster import EtcdCluster

            cluster = EtcdCluster(tmp / "etcd").start()
            stack.callback(cluster.stop)
            endpoints = ", ".join(f'"{e}"' for e in cluster.endpoints)
            extra = (f'log-backend = "etcd"\netcd-endpoints = [{endpoints}]\n'
                     f"etcd-lease-ttl-s = {opts.etcd_lease_ttl_s}\n")
        proc, port = start(tmp, "failover", 1, opts.lease_ms, opts.shards, extra)
        times = []
        try:
            if opts.prefill_records:
                subprocess.run(["redis-benchmark", "-p", str(port), "-t", "set", "-n", str(opts.prefill_records),
                                "-r", str(opts.prefill_records), "-d", "100", "-P", "16", "-q"],
                               capture_output=True, check=True)
                log_bytes = sum(f.stat().st_size for f in (tmp / "failover" / "shard-000" / "log").glob("*.seg"))
                print(f"prefilled {opts.prefill_records} SETs: {log_bytes / 1e6:.1f} MB of shard 0's log retained",
                      flush=True)
            for trial in range(opts.trials):
                deadline = time.monotonic() + READY_TIMEOUT_S
                while not replica_online(port):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"no replica online; see {tmp}/failover.log")
                    time.sleep(0.05)
                seconds = failover_trial(port, opts.writers)
                times.append(seconds)
                promoted = PROMOTED.findall((tmp / "failover.log").read_bytes())
                promotion = f", promotion {float(promoted[-1]) * 1000:.0f} ms" if promoted else ""
                print(f"trial {trial + 1}: kill -9 to first acknowledged write {seconds * 1000:.0f} ms{promotion}",
                      flush=True)
        finally:
            stop_group(proc)
        ms = [t * 1000 for t in times]
        print(f"failover over {len(ms)} trials: p50 {percentile(ms, 50):.0f} ms, p99 {percentile(ms, 99):.0f} ms, "
              f"max {max(ms):.0f} ms (lease {opts.lease_ms} ms, {opts.shards} shard(s), "
              f"{'etcd' if opts.etcd else 'local'} log, {opts.writers} more writers, "
              f"load average {os.getloadavg()[0]:.1f})")
        if opts.throughput:
            for replicas in (0, 1):
                rps, p99 = throughput(tmp, replicas, opts.lease_ms, opts.requests, opts.clients, opts.shards,
                                      extra)
                print(f"durable SET, replicas = {replicas}: {rps:.0f} requests/s, p99 {p99:.2f} ms "
                      f"(redis-benchmark -n {opts.requests} -c {opts.clients}, {opts.shards} shard(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
