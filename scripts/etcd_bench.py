#!/usr/bin/env python3
"""Durable SET with the shard logs on etcd, beside the local log and redis-server
with appendfsync always: throughput and p50/p99 at pipeline 1 and 16.

Starts a 3-member etcd cluster on loopback (scripts/etcd_cluster.py; every member
fdatasyncs each commit, as in production, all on this machine's one disk), a durakv
tree with `log-backend = "etcd"`, a durakv tree on local segments, and redis-server
with appendonly yes / appendfsync always; all run at once and take turns on each
workload, round after round (as scripts/bench.py does), and the medians are shown.
redis-benchmark drives every server through its plain port (durakv's router).

Prints a markdown section; with --output it also owns the section "etcd-bench" of
that file (BENCHMARKS.md), which scripts/bench.py carries over."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))
from bench import (PIPELINED_REQUESTS_FACTOR, PIPELINES, ProcessGroups, Server, benchmark_argv,  # noqa: E402
                   run_benchmark, shown, start_redis, summarize, wait_ready)
from bench_sections import replace_section  # noqa: E402
from etcd_cluster import EtcdCluster  # noqa: E402
from proctools import free_port  # noqa: E402

REPO = SCRIPTS.parent
SECTION = "etcd-bench"


def start_durakv(groups: ProcessGroups, tmp: Path, name: str, shards: int, config_text: str) -> Server:
    port = free_port()
    config = tmp / f"{name}.toml"
    config.write_text(config_text)
    argv = [sys.executable, "-m", "durakv.server.cli", "serve", "--port", str(port), "--shards", str(shards),
            "--data-dir", str(tmp / f"{name}-data"), "--config", str(config)]
    log_path = tmp / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = groups.start(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    server = Server(name, argv, shown(argv, tmp), port, proc, log_path, ("set",))
    wait_ready(server, (b"CLUSTER", b"INFO"), b"cluster_state:ok")
    return server


def bench(opts: argparse.Namespace, groups: ProcessGroups, tmp: Path) -> str:
    etcd = EtcdCluster(tmp / "etcd", binary=shutil.which("etcd") or "etcd").start()
    try:
        endpoints = ", ".join(f'"{e}"' for e in etcd.endpoints)
        snapshots = (f"snapshot-every-bytes = {opts.snapshot_every_bytes}\nsnapshot-every-percent = 0\n"
                     "snapshot-cpu-percent = 100\n" if opts.snapshot_every_bytes else "")
        servers = [
            start_durakv(groups, tmp, "durakv-etcd", opts.shards,
                         f'log-backend = "etcd"\netcd-endpoints = [{endpoints}]\netcd-prefix = "bench"\n'
                         + snapshots),
            start_durakv(groups, tmp, "durakv-local", opts.shards, snapshots),
            start_redis(groups, tmp, "redis-aof", ["--appendonly", "yes", "--appendfsync", "always"], ("set",)),
        ]
        runs: dict[tuple[str, int], list] = {}
        for round_no in range(opts.rounds):
            for pipeline in PIPELINES:
                requests = opts.requests * (PIPELINED_REQUESTS_FACTOR if pipeline > 1 else 1)
                for server in servers:
                    run = run_benchmark(groups, server, "set", pipeline, requests, opts.key_space)
                    runs.setdefault((server.name, pipeline), []).append(run)
                    if not opts.quiet:
                        print(f"round {round_no + 1} {server.name} SET P{pipeline}: {run.rps:,.0f} req/s, "
                              f"p50 {run.p50_ms:.3f} ms, p99 {run.p99_ms:.3f} ms", file=sys.stderr)
        drops = {server.name: server.log_path.read_text(errors="replace").count(" dropped ")
                 for server in servers[:2]}
    finally:
        etcd.stop()
    lines = ["## Durable SET with the log on etcd (`scripts/etcd_bench.py`)", "",
             f"Command: `python scripts/etcd_bench.py {shlex.join(opts.argv)}`", "",
             f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} cores; etcd: 3 members on "
             "loopback on the same machine and disk (each fdatasyncs every commit).", "",
             f"- each figure: `{shlex.join(benchmark_argv(0, 'set', 1, opts.requests, opts.key_space))}` "
             "(port and -P vary), median of the rounds; all servers run at once and take turns.",
             f"- durakv-etcd: {opts.shards} shards, `log-backend = \"etcd\"`; durakv-local: {opts.shards} shards, "
             "local segments; redis-aof: `--appendonly yes --appendfsync always`."
             + (f" Snapshots every {opts.snapshot_every_bytes} bytes of log, so the shards drop records while "
                f"the clients write: {drops['durakv-etcd']} drops on etcd, {drops['durakv-local']} on local "
                "segments." if opts.snapshot_every_bytes else ""), "",
             "| workload | durakv-etcd req/s | p50 / p99 ms | durakv-local req/s | p50 / p99 ms | "
             "redis-aof req/s | p50 / p99 ms | etcd vs local | etcd vs redis-aof |",
             "|---|---|---|---|---|---|---|---|---|"]
    for pipeline in PIPELINES:
        s = {name: summarize(runs[(name, pipeline)]) for name in ("durakv-etcd", "durakv-local", "redis-aof")}
        cells = [f"SET P{pipeline}"]
        for name in ("durakv-etcd", "durakv-local", "redis-aof"):
            cells += [f"{s[name].rps:,.0f}", f"{s[name].p50_ms:.3f} / {s[name].p99_ms:.3f}"]
        cells += [f"{s['durakv-etcd'].rps / s['durakv-local'].rps:.2f}×",
                  f"{s['durakv-etcd'].rps / s['redis-aof'].rps:.2f}×"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def log_latency(opts: argparse.Namespace, tmp: Path) -> str:
    """One record of --value-bytes in flight: EtcdLog.sync (one fenced transaction) beside
    log.Log.sync (one write + fdatasync), in this process: the log's own cost, no server."""
    import statistics

    from durakv.log import Log
    from durakv.log.etcd_client import EtcdClient
    from durakv.log.etcd_log import EtcdLog

    etcd = EtcdCluster(tmp / "etcd-log", binary=shutil.which("etcd") or "etcd").start()
    try:
        rows = []
        for name, log in (("etcd (3 members)", EtcdLog.open(EtcdClient(etcd.endpoints), "bench-log/shard-000")),
                          ("local segments", Log.open(tmp / "local-log"))):
            lease = log.take_lease("bench")
            payload = b"v" * opts.value_bytes
            latencies_us = []
            for _ in range(opts.appends):
                started = time.perf_counter_ns()
                log.append([payload], log.tail_seq, lease)
                log.sync()
                latencies_us.append((time.perf_counter_ns() - started) / 1000)
            log.close()
            latencies_us.sort()
            total_s = sum(latencies_us) / 1e6
            rows.append(f"| {name} | {opts.appends / total_s:,.0f} | {statistics.median(latencies_us) / 1000:.2f} | "
                        f"{latencies_us[int(len(latencies_us) * 0.99) - 1] / 1000:.2f} |")
    finally:
        etcd.stop()
    return "\n".join([f"One {opts.value_bytes}-byte record in flight, {opts.appends} appends each "
                      "(`--log-latency`): append + sync, in-process.", "",
                      "| log | appends/s | p50 ms | p99 ms |", "|---|---|---|---|", *rows]) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=20_000,
                   help=f"redis-benchmark -n at P1 (P16 runs {PIPELINED_REQUESTS_FACTOR}x as many)")
    p.add_argument("--key-space", type=int, default=100_000)
    p.add_argument("--shards", type=int, default=os.cpu_count() or 1)
    p.add_argument("--snapshot-every-bytes", type=int, default=0,
                   help="snapshot this often (bytes of log) so that records are dropped during the runs "
                        "(0: durakv's default, 4 MiB, which these runs do not reach)")
    p.add_argument("--output", type=Path, help="also write the section into this file (BENCHMARKS.md)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--log-latency", action="store_true",
                   help="only the logs themselves: one record in flight, EtcdLog vs local segments")
    p.add_argument("--appends", type=int, default=500, help="with --log-latency: appends per log")
    p.add_argument("--value-bytes", type=int, default=1024, help="with --log-latency: bytes per record")
    opts = p.parse_args(argv)
    opts.argv = sys.argv[1:] if argv is None else argv
    if not 1 <= opts.rounds <= 100 or not 100 <= opts.requests <= 100_000_000:
        p.error("--rounds must be 1..100 and --requests 100..100000000")
    for tool in ("etcd", "redis-server", "redis-benchmark"):
        if shutil.which(tool) is None:
            print(f"etcd_bench: {tool} not found (Debian: apt-get install etcd-server redis-server "
                  "redis-tools)", file=sys.stderr)
            return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    groups = ProcessGroups()
    try:
        with tempfile.TemporaryDirectory(prefix="durakv-etcd-bench-") as tmp:
            try:
                markdown = log_latency(opts, Path(tmp)) if opts.log_latency else bench(opts, groups, Path(tmp))
            finally:
                groups.stop_all()
    except RuntimeError as e:
        print(f"etcd_bench: {e}", file=sys.stderr)
        return 1
    print(markdown)
    if opts.output is not None:
        replace_section(opts.output, SECTION, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
