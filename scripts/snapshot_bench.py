#!/usr/bin/env python3
"""Snapshot measurements (issue 5): on a durakv holding --keys keys,

  * a steady GET/SET load's p99 and max latency alone, then while the
    snapshotter builds and publishes a snapshot of every shard;
  * beside it, redis-server 7.0 with the same keys: the same load alone, then
    during BGSAVE (fork);
  * snapshot build time and keys/s, the snapshotter's peak RSS, the RDB size;
  * restore time of the same dataset from S3 (a moto server) into an empty dir.

Latencies come from scripts/load.py (closed loop, hiredis). Everything runs on
this machine, so the snapshotter competes with the server for cores exactly as
it would in a single-box deployment.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import redis

HERE = os.path.dirname(os.path.abspath(__file__))
STARTUP_TIMEOUT_S = 120
DURING_MAX_S = 600  # a load run alongside a snapshot or BGSAVE stops when that ends, at most this late


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            client = redis.Redis(port=port, socket_timeout=2)
            client.ping()
            try:
                if b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                    raise redis.ConnectionError("not ready")
            except redis.ResponseError:
                pass  # redis-server without cluster mode
            return
        except (redis.ConnectionError, redis.TimeoutError):
            time.sleep(0.1)
    raise RuntimeError("server not ready")


def wait_http(port: int) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto server on port {port} not ready")


def load(port: int, seconds: float, keys: int, value_size: int, prefill: bool = False) -> dict:
    argv = [sys.executable, os.path.join(HERE, "load.py"), "--port", str(port), "-r", str(keys),
            "-d", str(value_size), "--duration", str(seconds), "-c", "20", "--json", "-q"]
    if prefill:
        argv += ["--prefill", "-P", "200"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def latency(result: dict) -> dict:
    return {"ops_per_s": result["ops_per_s"], "p99_ms": result["latency_ms"]["p99"],
            "max_ms": result["latency_ms"]["max"]}


def during(port: int, keys: int, value_size: int, start_work, work_done, tmp: str) -> tuple[dict, float]:
    """Run the load from one second before background work starts until it ends
    (so the latencies are those of the work's window); returns (latency, work seconds)."""
    until = os.path.join(tmp, "work-done")
    if os.path.exists(until):
        os.unlink(until)
    loader = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "load.py"), "--port", str(port), "-r", str(keys), "-d",
         str(value_size), "--duration", str(DURING_MAX_S), "--until-file", until, "-c", "20", "--json", "-q"],
        stdout=subprocess.PIPE, text=True)
    time.sleep(1.0)
    started = time.monotonic()
    start_work()
    while not work_done():
        time.sleep(0.05)
    work_s = time.monotonic() - started
    open(until, "w").close()
    out, _ = loader.communicate()
    return latency(json.loads(out)), work_s


class Snapshots:
    """Snapshots as a single-box deployment takes them: the snapshotter is the
    child `durakv serve --snapshot-url` supervises (same session as the shards,
    so its low priority applies against them), asked with BGSAVE; its peak RSS
    is the child's VmHWM."""

    def __init__(self, client: redis.Redis, data_dir: str, serve_pid: int) -> None:
        self.client = client
        self.data_dir = data_dir
        self.serve_pid = serve_pid
        self.before = ""

    def status(self) -> dict:
        """The snapshotter's status.json (snapshotter/runner.py)."""
        try:
            with open(os.path.join(self.data_dir, "snapshotter", "status.json")) as f:
                return json.load(f)
        except FileNotFoundError:
            return {"request_served": "", "shards": {}}

    def start(self) -> None:
        self.before = self.status()["request_served"]
        assert self.client.bgsave()

    def done(self) -> bool:
        status = self.status()
        if status["request_served"] == self.before:
            return False
        errors = [s["error"] for s in status["shards"].values() if s["status"] != "ok"]
        if errors:
            raise RuntimeError(f"snapshot failed: {errors}")
        return True

    def run(self) -> float:
        started = time.monotonic()
        self.start()
        while not self.done():
            time.sleep(0.05)
        return time.monotonic() - started

    def max_rss_mb(self) -> float:
        for pid in os.listdir("/proc"):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
                with open(f"/proc/{pid}/status") as f:
                    status = f.read()
            except OSError:
                continue
            if b"snapshotter" in argv and f"\nPPid:\t{self.serve_pid}\n" in status:
                kb = int(status.split("VmHWM:")[1].split()[0])
                return round(kb / 1024, 1)
        raise RuntimeError("no snapshotter child found")


def newest_manifests(data_dir: str, shards: int) -> list[dict]:
    out = []
    for shard in range(shards):
        snap_dir = os.path.join(data_dir, f"shard-{shard:03d}", "snapshot")
        name = max(n for n in os.listdir(snap_dir) if n.endswith(".json"))
        with open(os.path.join(snap_dir, name)) as f:
            out.append(json.load(f))
    return out


def bench_durakv(opts, tmp: str, env: dict) -> dict:
    data_dir = os.path.join(tmp, "durakv")
    port = free_port()
    config = os.path.join(tmp, "durakv.toml")
    with open(config, "w") as f:  # snapshots only when the bench asks (BGSAVE)
        f.write("snapshot-every-bytes = 1099511627776\nsnapshot-max-age-s = 1e9\n")
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--port", str(port), "--shards",
                             str(opts.shards), "--data-dir", data_dir, "--config", config,
                             "--snapshot-url", opts.url], start_new_session=True, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out: dict = {}
    try:
        wait_ready(port, proc)
        started = time.monotonic()
        load(port, 0.1, opts.keys, opts.value_size, prefill=True)
        out["prefill_s"] = round(time.monotonic() - started, 1)
        out["keys"] = redis.Redis(port=port).dbsize()
        out["steady"] = latency(load(port, opts.duration, opts.keys, opts.value_size))
        snapshots = Snapshots(redis.Redis(port=port), data_dir, proc.pid)
        build_s = snapshots.run()
        manifests = newest_manifests(data_dir, opts.shards)
        out["snapshot_alone"] = {
            "wall_s": round(build_s, 2), "shard_build_ms": [m["build_ms"] for m in manifests],
            "keys_per_s": round(sum(m["keys"] for m in manifests) / build_s),
            "rdb_bytes": sum(m["rdb_bytes"] for m in manifests), "snapshotter_max_rss_mb": snapshots.max_rss_mb(),
        }
        load(port, 2.0, opts.keys, opts.value_size)  # new records for the next snapshot to cover
        out["during_snapshot"], during_s = during(port, opts.keys, opts.value_size, snapshots.start,
                                                  snapshots.done, tmp)
        out["during_snapshot"]["snapshot_wall_s"] = round(during_s, 2)
        out["during_snapshot"]["snapshotter_max_rss_mb"] = snapshots.max_rss_mb()
        restore_dir = os.path.join(tmp, "restored")
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "server.cli", "restore", "--from", opts.url, "--data-dir",
                        restore_dir], env=env, check=True, capture_output=True)
        out["restore_s"] = round(time.monotonic() - started, 2)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
    return out


def bench_redis(opts, tmp: str) -> dict:
    server = shutil.which("redis-server")
    if server is None:
        return {"skipped": "redis-server not installed"}
    port = free_port()
    workdir = os.path.join(tmp, "redis")
    os.makedirs(workdir)
    proc = subprocess.Popen([server, "--port", str(port), "--save", "", "--appendonly", "yes",
                             "--appendfsync", "always", "--dir", workdir],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out: dict = {}
    try:
        wait_ready(port, proc)
        client = redis.Redis(port=port)
        load(port, 0.1, opts.keys, opts.value_size, prefill=True)
        out["keys"] = client.dbsize()
        out["steady"] = latency(load(port, opts.duration, opts.keys, opts.value_size))
        before = client.lastsave()

        def start() -> None:
            client.bgsave()

        def done() -> bool:
            return client.lastsave() != before and client.info("persistence")["rdb_bgsave_in_progress"] == 0

        out["during_bgsave"], out["bgsave_wall_s"] = during(port, opts.keys, opts.value_size, start, done, tmp)
    finally:
        proc.terminate()
        proc.wait()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keys", type=int, default=1_000_000)
    p.add_argument("--value-size", type=int, default=100)
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--duration", type=float, default=10.0, help="seconds of steady load")
    p.add_argument("--s3-nice", type=int, default=19,
                   help="niceness of the moto S3 server process: S3 is off-box in production, so on one "
                        "machine its stand-in runs at the lowest CPU priority (0 charges its CPU to the load)")
    opts = p.parse_args()
    moto_port = free_port()
    moto = subprocess.Popen(["nice", "-n", str(opts.s3_nice), sys.executable, "-m", "moto.server", "-H",
                             "127.0.0.1", "-p", str(moto_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http(moto_port)
    env = dict(os.environ, AWS_ENDPOINT_URL_S3=f"http://127.0.0.1:{moto_port}", AWS_ACCESS_KEY_ID="bench",
               AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    os.environ.update(env)
    import boto3

    boto3.client("s3").create_bucket(Bucket="durakv-bench")
    opts.url = "s3://durakv-bench/bench"
    try:
        with tempfile.TemporaryDirectory(prefix="snapshot-bench-") as tmp:
            result = {"durakv": bench_durakv(opts, tmp, env), "redis": bench_redis(opts, tmp)}
    finally:
        moto.terminate()
        moto.wait()
    steady, snap = result["durakv"]["steady"], result["durakv"]["during_snapshot"]
    result["durakv"]["p99_ratio_during_snapshot"] = round(snap["p99_ms"] / steady["p99_ms"], 2)
    if "steady" in result["redis"]:
        r = result["redis"]
        r["p99_ratio_during_bgsave"] = round(r["during_bgsave"]["p99_ms"] / r["steady"]["p99_ms"], 2)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
