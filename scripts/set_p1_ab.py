#!/usr/bin/env python3
"""Durable SET at P1 on durakv's shard ports: two durakv trees (this one and a
baseline) against redis-server `appendfsync always`, taking turns, with SETs per
fsync and the fsync latency of each.

Why apart from scripts/bench.py: issue 11's last gap is this one workload, and
its throughput is bounded by how many SETs each fsync carries as much as by CPU.
This runs only that workload, A/B against another checkout (alternating rounds,
all servers up at once, as bench.py does), and counts every server's fsyncs from
the kernel's syscall tracepoints (redis-server reports none itself),
and times them (`perf trace`), so a change in grouping shows next to the change in
throughput.

    python scripts/set_p1_ab.py --base /path/to/other/checkout [--rounds 3] [--requests 40000] [--via router]

--base is a checkout of durakv (the folders server/, shards/, log/, snapshotter/):
its tree runs with those modules in place of this venv's install. Needs
redis-server, redis-benchmark and perf (tracepoints readable: run as root).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))
from bench import (CLIENTS, VALUE_BYTES, ProcessGroups, Server, durakv_shard_ports,  # noqa: E402
                   start_redis, wait_ready)
from proctools import free_port  # noqa: E402

PACKAGES = ("server", "shards", "log", "snapshotter")
FSYNC_CALLS = "fdatasync,fsync,pwritev2"
FSYNC_EVENTS = ("syscalls:sys_enter_fdatasync", "syscalls:sys_enter_fsync", "syscalls:sys_enter_pwritev2")
SYNC_LINE = re.compile(r"\(\s*([0-9.]+) ms\): .*")
BENCH_TIMEOUT_S = 1800.0


def base_package(base: Path, tmp: Path) -> Path:
    """A directory holding `durakv/` whose subpackages are the base checkout's folders
    (a namespace package found on PYTHONPATH before the editable install's finder)."""
    root = tmp / "base-pkg"
    pkg = root / "durakv"
    pkg.mkdir(parents=True)
    for name in PACKAGES:
        if not (base / name).is_dir():
            raise SystemExit(f"set_p1_ab: {base} has no {name}/: pass a durakv checkout as --base")
        (pkg / name).symlink_to(base / name)
    return root


def start_tree(groups: ProcessGroups, name: str, tmp: Path, shards: int, pythonpath: Path | None,
               via: str = "shard") -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "durakv.server.cli", "serve", "--port", str(port), "--shards", str(shards),
            "--data-dir", str(tmp / f"{name}-data")]
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    log_path = tmp / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = groups.start(argv, cwd=tmp, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = Server(name, argv, name, port, proc, log_path, ("set",))
    wait_ready(server, (b"CLUSTER", b"INFO"), b"cluster_state:ok")
    return server if via == "router" else dataclasses.replace(durakv_shard_ports(server), name=name)


def pids_of(server: Server) -> list[int]:
    """The processes that sync: durakv's shards, or redis-server itself."""
    if not server.name.startswith("durakv"):
        return [server.proc.pid]
    from bench import children
    return [pid for pid, title in children(server.proc.pid).items() if title.startswith("durakv shard ")]


def one_run(server: Server, requests: int, key_space: int, tmp: Path) -> dict[str, float]:
    """redis-benchmark SET P1 c=50 under `perf stat` of the server's syncing processes."""
    pids = pids_of(server)
    cpu_before = server.cpu_by_role()
    durakv = server.name.startswith("durakv")
    stats_before = server.info_stats() if durakv else {}
    perf_out, stat_out = tmp / "perf.txt", tmp / "perf-stat.txt"
    pid_list = ",".join(map(str, pids))
    perf = [subprocess.Popen(["perf", "trace", "-o", str(perf_out), "-e", FSYNC_CALLS, "-p", pid_list],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
            subprocess.Popen(["perf", "stat", "-x", ",", "-o", str(stat_out), "-e", ",".join(FSYNC_EVENTS),
                              "-p", pid_list], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    time.sleep(1.0)  # perf attaches
    argv = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(server.bench_port or server.port),
            *(["--cluster"] if server.cluster else []), "-t", "set", "-c", str(CLIENTS), "-P", "1",
            "-d", str(VALUE_BYTES), "-r", str(key_space), "-n", str(requests), "--csv"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=BENCH_TIMEOUT_S, check=True).stdout
    for proc in perf:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    cpu_after = server.cpu_by_role()
    row = out[out.find('"test"'):].splitlines()[1].replace('"', "").split(",")
    # Latency: one line per sync, "  T ( D ms): comm/tid pwritev2(...flags: 2) = N" (durakv: the
    # write and the sync are one call; flags 2 = RWF_DSYNC) or "... fdatasync(fd: N) = 0" (redis).
    # perf trace may drop events under load: the count comes from perf stat's tracepoints.
    sync_ms = sorted(float(m.group(1)) for m in SYNC_LINE.finditer(perf_out.read_text())
                     if "fdatasync(" in m.group(0) or "fsync(" in m.group(0) or "flags: 2)" in m.group(0))
    counts = {}
    for line in stat_out.read_text().splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[2] in FSYNC_EVENTS:
            counts[fields[2].rsplit("_", 1)[1]] = int(fields[0]) if fields[0].isdigit() else 0
    syncs = counts.get("fdatasync", 0) + counts.get("fsync", 0) + counts.get("pwritev2", 0)
    cpu = sum(cpu_after.values()) - sum(cpu_before.values())
    run = {"rps": float(row[1]), "p50": float(row[4]), "p99": float(row[6]),
           "per_fsync": requests / syncs if syncs else 0.0, "cpu_us": cpu * 1e6 / requests,
           "in_loop": 0.0, "turn_end": 0.0,
           "sync_p50": percentile(sync_ms, 0.5), "sync_p90": percentile(sync_ms, 0.9),
           "sync_p99": percentile(sync_ms, 0.99)}
    if durakv:  # where the syncs ran: INFO persistence (a tree without these counters shows 0)
        stats_after = server.info_stats()
        delta = {k: stats_after.get(k, 0) - stats_before.get(k, 0)
                 for k in ("log_fsyncs", "log_fsyncs_in_loop", "log_fsyncs_at_turn_end")}
        if delta["log_fsyncs"] > 0:
            run["in_loop"] = delta["log_fsyncs_in_loop"] / delta["log_fsyncs"]
            run["turn_end"] = delta["log_fsyncs_at_turn_end"] / delta["log_fsyncs"]
    return run


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", type=Path, required=True, help="another durakv checkout to compare with")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=40_000)
    p.add_argument("--key-space", type=int, default=100_000)
    p.add_argument("--shards", type=int, default=os.cpu_count() or 1)
    p.add_argument("--via", choices=("shard", "router"), default="shard",
                   help="durakv's shard ports (redis-benchmark --cluster) or its router port")
    opts = p.parse_args()
    if not (1 <= opts.rounds <= 50 and 1000 <= opts.requests <= 10_000_000 and 1 <= opts.shards <= 64):
        p.error("an argument is out of range")
    groups = ProcessGroups()
    results: dict[str, list[dict[str, float]]] = {}
    with open("/proc/loadavg") as f:
        load_start = " ".join(f.read().split()[:3])
    try:
        with tempfile.TemporaryDirectory(prefix="durakv-set-ab-") as tmp_name:
            tmp = Path(tmp_name)
            servers = [start_tree(groups, "durakv-this", tmp, opts.shards, None, opts.via),
                       start_tree(groups, "durakv-base", tmp, opts.shards, base_package(opts.base.resolve(), tmp),
                                  opts.via),
                       start_redis(groups, tmp, "redis-aof", ["--appendonly", "yes", "--appendfsync", "always"],
                                   ("set",))]
            for round_no in range(1, opts.rounds + 1):
                for server in servers:
                    run = one_run(server, opts.requests, opts.key_space, tmp)
                    results.setdefault(server.name, []).append(run)
                    print(f"round {round_no} {server.name}: {run['rps']:,.0f} SET/s p99 {run['p99']:.3f} ms, "
                          f"{run['per_fsync']:.1f} SETs per fsync, {run['cpu_us']:.1f} CPU µs/SET, syncs in the loop "
                          f"{run['in_loop']:.0%} (at a turn's end {run['turn_end']:.0%}), sync ms p50/p90/p99 "
                          f"{run['sync_p50']:.2f}/{run['sync_p90']:.2f}/{run['sync_p99']:.2f}",
                          file=sys.stderr, flush=True)
    finally:
        groups.stop_all()
    with open("/proc/loadavg") as f:
        load_end = " ".join(f.read().split()[:3])
    redis = statistics.median(r["rps"] for r in results["redis-aof"])
    print(f"load average {load_start} -> {load_end}; medians of {opts.rounds} rounds, SET P1 c={CLIENTS}"
          f" via durakv's {opts.via} port{'s' if opts.via == 'shard' else ''}")
    print(f"{'server':<12} {'SET/s':>9} {'vs redis':>9} {'p50 ms':>7} {'p99 ms':>7} {'SETs/fsync':>11} "
          f"{'CPU µs/SET':>11} {'in loop':>8} {'sync ms p50/p90/p99':>20}  every round SET/s")
    for name, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"{name:<12} {med['rps']:>9,.0f} {med['rps'] / redis:>8.2f}× {med['p50']:>7.3f} {med['p99']:>7.3f} "
              f"{med['per_fsync']:>11.1f} {med['cpu_us']:>11.1f} {med['in_loop']:>8.0%} "
              f"{med['sync_p50']:>6.2f}/{med['sync_p90']:.2f}/{med['sync_p99']:.2f}  "
              + " ".join(f"{r['rps']:,.0f}" for r in runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
