#!/usr/bin/env python3
"""Log growth without S3 (issue 9, item 13): --writes SETs over --keys keys
(redis-benchmark, pipelined) against `durakv serve` with no snapshot URL and
default settings, then: the data dir's log size (and snapshot store size) once
the snapshotter has caught up, and the time from restarting the killed (-9)
server to its first answered GET. The same against redis-server 7.0 with
appendonly yes (appendfsync everysec, auto rewrite): AOF + RDB size and restart
time. Prints the numbers; nothing is written to the repository."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import redis

from durakv.log.layout import snapshots_dir
from proctools import free_port, kill_group

STARTUP_TIMEOUT_S = 600
SETTLE_TIMEOUT_S = 300


def wait_serving(port: int, proc: subprocess.Popen) -> float:
    """Seconds until GET answers (the keyspace is loaded)."""
    start = time.monotonic()
    while time.monotonic() - start < STARTUP_TIMEOUT_S:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            redis.Redis(port=port, socket_timeout=5).get("key:000000000001")
            return time.monotonic() - start
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.BusyLoadingError):
            time.sleep(0.005)
        except redis.ResponseError as e:  # CLUSTERDOWN while shards start
            if "CLUSTERDOWN" not in str(e) and "LOADING" not in str(e):
                raise
            time.sleep(0.005)
    raise RuntimeError("server did not start")


def dir_bytes(path: str, suffixes: tuple[str, ...]) -> int:
    total = 0
    for directory, _, files in os.walk(path):
        for name in files:
            if name.endswith(suffixes):
                try:
                    total += os.path.getsize(os.path.join(directory, name))
                except FileNotFoundError:
                    pass
    return total


def load(port: int, writes: int, keys: int) -> float:
    start = time.monotonic()
    subprocess.run(["redis-benchmark", "-p", str(port), "-t", "set", "-n", str(writes), "-r", str(keys),
                    "-P", "32", "-c", "16", "-q"], check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - start


def durakv(workdir: str, writes: int, keys: int, shards: int, config: str | None) -> None:
    data_dir = os.path.join(workdir, "durakv")
    port = free_port()
    argv = [sys.executable, "-m", "durakv.server.cli", "serve", "--port", str(port), "--shards", str(shards),
            "--data-dir", data_dir, *(["--config", config] if config else [])]
    log = open(os.path.join(workdir, "durakv.log"), "ab")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_serving(port, proc)
    took = load(port, writes, keys)
    written = redis.Redis(port=port).info("persistence")["log_bytes_written"]
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    # Let the snapshotter catch up and the shards drop what it covers (they poll every few seconds).
    time.sleep(10)
    while time.monotonic() < deadline and redis.Redis(port=port).info("persistence")["rdb_bgsave_in_progress"]:
        time.sleep(0.5)
    log_bytes = dir_bytes(data_dir, (".seg",))
    store_bytes = dir_bytes(snapshots_dir(data_dir), (".rdb",))
    kill_group(proc)
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    restart_s = wait_serving(port, proc)
    kill_group(proc)
    print(f"durakv ({shards} shards, no snapshot URL, config {config or 'default'}): "
          f"{writes} SETs over {keys} keys in {took:.1f} s; "
          f"log written {written} B, log on disk {log_bytes} B, snapshot store {store_bytes} B; "
          f"restart after kill -9: {restart_s:.2f} s")


def redis_server(workdir: str, writes: int, keys: int) -> None:
    data_dir = os.path.join(workdir, "redis")
    os.makedirs(data_dir)
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--dir", data_dir, "--appendonly", "yes", "--save", "",
            "--daemonize", "no"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, start_new_session=True)
    wait_serving(port, proc)
    took = load(port, writes, keys)
    time.sleep(3)  # let an automatic AOF rewrite finish
    size = dir_bytes(data_dir, (".aof", ".rdb"))
    kill_group(proc)
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, start_new_session=True)
    restart_s = wait_serving(port, proc)
    kill_group(proc)
    print(f"redis-server (appendonly yes): {writes} SETs over {keys} keys in {took:.1f} s; "
          f"AOF+RDB {size} B; restart after kill -9: {restart_s:.2f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--writes", type=int, default=3_000_000)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--shards", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--config", help="durakv TOML config (e.g. smaller snapshot-every-bytes)")
    parser.add_argument("--no-redis", action="store_true", help="measure durakv only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="log-growth-") as workdir:
        if not args.no_redis:
            redis_server(workdir, args.writes, args.keys)
        durakv(workdir, args.writes, args.keys, args.shards, args.config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
