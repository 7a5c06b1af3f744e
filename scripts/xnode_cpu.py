#!/usr/bin/env python3
"""CPU per GET on the routers of a forwarded GET (issue 15): node b's router forwards to
the primaries on node a over TCP links; node a's router reaches them over Unix sockets.

Starts a 3-member etcd cluster on loopback and two `durakv serve` trees (scripts/xnode_bench.py's
start_pair), then per round runs `redis-benchmark -t get -c C -P P` against node a's router and
node b's, and reads each process's CPU seconds (utime + stime, /proc/PID/stat) before and after:
CPU µs per GET of the router the client talks to and of node a's shards. CPU seconds are far less
noisy than wall time on a loaded machine (the load average is printed beside them)."""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))
from etcd_cluster import EtcdCluster  # noqa: E402
from xnode_bench import start_pair  # noqa: E402

TICKS_S = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_S


def pids(group: int, title: str) -> list[int]:
    out = subprocess.run(["pgrep", "-g", str(group), "-f", f"^durakv {title} "], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def run_get(port: int, requests: int, clients: int, pipeline: int) -> float:
    out = subprocess.run(["redis-benchmark", "-p", str(port), "-c", str(clients), "-P", str(pipeline), "-n",
                          str(requests), "-r", "100000", "-t", "get", "--csv"], capture_output=True, text=True,
                         check=True)
    return float(out.stdout.splitlines()[1].split(",")[1].strip('"'))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--pipeline", type=int, default=1)
    opts = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="xnode-cpu-"))
    etcd = EtcdCluster(tmp / "etcd", binary=shutil.which("etcd") or "etcd").start()
    rows: dict[str, list[tuple[float, float, float]]] = {}
    try:
        a, b = start_pair(tmp, etcd, opts.shards, 2)
        shard_pids = pids(a.proc.pid, "shard")
        for _ in range(opts.rounds):
            for where, node in (("local (node a's router)", a), ("forwarded (node b's router)", b)):
                router = pids(node.proc.pid, "router")
                before = [cpu_s(p) for p in router], [cpu_s(p) for p in shard_pids]
                rate = run_get(node.port, opts.requests, opts.clients, opts.pipeline)
                after = [cpu_s(p) for p in router], [cpu_s(p) for p in shard_pids]
                per = [1e6 * (sum(x) - sum(y)) / opts.requests for x, y in zip(after, before)]
                rows.setdefault(where, []).append((per[0], per[1], rate))
        a.kill9()
        b.kill9()
    finally:
        etcd.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    load = os.getloadavg()
    print(f"GET -c {opts.clients} -P {opts.pipeline}, {opts.requests} requests x {opts.rounds} rounds, "
          f"{opts.shards} shards (load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}); medians:")
    print("| through | router CPU µs/GET | node a shards CPU µs/GET | GET/s |\n|---|---|---|---|")
    for where, results in rows.items():
        print(f"| {where} | {statistics.median(r[0] for r in results):.1f} | "
              f"{statistics.median(r[1] for r in results):.1f} | {statistics.median(r[2] for r in results):,.0f} |")


if __name__ == "__main__":
    main()
