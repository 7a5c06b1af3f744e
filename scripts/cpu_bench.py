#!/usr/bin/env python3
"""CPU µs per command of durakv's router and shard processes, per workload: the
figure the hot-path work is judged by on a shared machine, where throughput
drifts with the neighbours' load but CPU per command moves far less.

Starts one `durakv serve` (default: 1 shard, so the router and the shard each
have a core), runs redis-benchmark through the router and on the shard port
(--cluster), and prints, per workload, the median over --rounds of utime+stime
per command of the router, of the shard's loop thread and of its other threads
(the commit thread),
with commands per fsync for writes.

    python scripts/cpu_bench.py [--rounds 3] [--requests 40000] [--shards 1]
        [--workloads set1,set16,get1,get16] [--paths router,shard]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))
from bench import (  # noqa: E402
    CLK_TCK, PIPELINED_REQUESTS_FACTOR, ProcessGroups, Server, benchmark_argv, children, durakv_shard_ports,
    start_durakv,
)

BENCHMARK_TIMEOUT_S = 600.0


def _stat_cpu_s(path: str) -> float:
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds of a process: 'main' (its first thread) and 'threads' (all others,
    ended ones included: the process' own figure counts them)."""
    try:
        main = _stat_cpu_s(f"/proc/{pid}/task/{pid}/stat")
        total = _stat_cpu_s(f"/proc/{pid}/stat")
    except FileNotFoundError:
        return {"main": 0.0, "threads": 0.0}
    return {"main": main, "threads": max(0.0, total - main)}


def sample(server: Server) -> dict[str, float]:
    """CPU seconds so far: 'router', 'shard loop' (the shards' trio threads) and
    'shard threads' (their other threads: the commit thread, mostly)."""
    roles = {"router": 0.0, "shard loop": 0.0, "shard threads": 0.0}
    for pid, title in children(server.proc.pid).items():
        if title.startswith("durakv router "):
            roles["router"] += sum(thread_cpu_s(pid).values())
        elif title.startswith("durakv shard "):
            cpu = thread_cpu_s(pid)
            roles["shard loop"] += cpu["main"]
            roles["shard threads"] += cpu["threads"]
    return roles


def fsyncs(server: Server) -> int:
    return server.info_stats().get("log_fsyncs", 0)


def run(server: Server, test: str, pipeline: int, requests: int, key_space: int) -> dict[str, float]:
    argv = benchmark_argv(server.bench_port or server.port, test, pipeline, requests, key_space, server.cluster)
    before, fsyncs_before = sample(server), fsyncs(server)
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, timeout=BENCHMARK_TIMEOUT_S)
    elapsed_s = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"{argv} exited with {done.returncode}: {done.stderr.decode(errors='replace')}")
    after, fsyncs_after = sample(server), fsyncs(server)
    out = {role: (after[role] - before[role]) * 1e6 / requests for role in after}
    out["ops/s"] = requests / elapsed_s
    synced = fsyncs_after - fsyncs_before
    out["cmds/fsync"] = requests / synced if synced > 0 else 0.0
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=40_000, help="per P1 run; P16 runs 10x as many")
    p.add_argument("--key-space", type=int, default=100_000)
    p.add_argument("--shards", type=int, default=1)
    p.add_argument("--routers", type=int, default=1)
    p.add_argument("--workloads", default="set1,set16,get1,get16")
    p.add_argument("--paths", default="router,shard")
    opts = p.parse_args()
    if not (1 <= opts.rounds <= 100 and 100 <= opts.requests <= 10_000_000 and 1 <= opts.shards <= 64):
        p.error("an argument is out of range")
    workloads = [(w[:3], int(w[3:])) for w in opts.workloads.split(",")]
    groups = ProcessGroups()
    results: dict[tuple[str, str, int], list[dict[str, float]]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="durakv-cpu-bench-") as tmp:
            durakv = start_durakv(groups, Path(tmp), opts)
            shard_port = durakv_shard_ports(durakv)
            # redis-benchmark --cluster wants two nodes at least; one shard owns every slot,
            # so a plain client on its port reaches the same code.
            shard_port.cluster = opts.shards > 1
            servers = {"router": durakv, "shard": shard_port}
            run(durakv, "set", 1, 2000, opts.key_space)  # warm up: imports, first segment
            for _ in range(opts.rounds):
                for test, pipeline in workloads:
                    requests = opts.requests * (PIPELINED_REQUESTS_FACTOR if pipeline > 1 else 1)
                    for path in opts.paths.split(","):
                        results.setdefault((path, test, pipeline), []).append(
                            run(servers[path], test, pipeline, requests, opts.key_space))
    finally:
        groups.stop_all()
    columns = ["router", "shard loop", "shard threads", "cmds/fsync", "ops/s"]
    print(f"{'path':<7} {'workload':<8} " + " ".join(f"{c:>12}" for c in columns) + "   (CPU µs/cmd, medians)")
    for (path, test, pipeline), rounds in results.items():
        cells = [statistics.median(r[c] for r in rounds) for c in columns]
        print(f"{path:<7} {test.upper() + ' P' + str(pipeline):<8} " + " ".join(f"{c:>12.2f}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
