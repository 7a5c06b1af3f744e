#!/usr/bin/env python3
"""GET and SET at P1 through the router: this tree and a baseline checkout benchmarked
at the same time (on a shared machine both meet the same load: the difference between
them is the change's, where rounds taken in turn each met another load), then
redis-server `appendfsync always` alone, with the router's own cost per command: its
CPU (from /proc), and with --count its system calls and context switches (perf stat
on the router process: tracepoints readable, so run as root). The two trees' absolute figures are
each under the other's load: compare them with each other, and redis-server's ratio
is a floor.

Why apart from scripts/set_p1_ab.py: that one counts the shards' fsyncs for durable
SETs; this one looks at the router (issue 11 §3: at P1 the router is the bottleneck
of a plain client's GET), for GET too.

    python scripts/router_p1_ab.py --base /path/to/other/checkout [--rounds 3] [--requests 100000]
        [--tests get,set,connect] [--count]

`connect` is a new connection per request (`redis-benchmark -t ping_mbulk -k 0`): the
router's cost of accepting, serving one PING and closing, per connection.

--base is a checkout of durakv (server/, shards/, log/, snapshotter/), run with
PYTHONPATH as set_p1_ab.py does. Two shards, one router per tree; redis-benchmark -c 50
-P 1 -d 100 -r 100000 after a SET P16 fill of the same keys.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import CLIENTS, ProcessGroups, Server, children, cpu_seconds, start_redis  # noqa: E402
from set_p1_ab import base_package, start_tree  # noqa: E402

EVENTS = ("raw_syscalls:sys_enter", "context-switches")
KEY_SPACE = 100_000
BENCH_TIMEOUT_S = 1800.0


def router_pid(server: Server) -> int:
    """durakv's router process (its title: `durakv router 0 ...`), or redis-server itself."""
    for pid, title in children(server.proc.pid).items():
        if title.startswith("durakv router "):
            return pid
    return server.proc.pid


def benchmark_argv(port: int, test: str, pipeline: int, requests: int) -> list[str]:
    what = ["-t", "ping_mbulk", "-k", "0"] if test == "connect" else ["-t", test]
    return ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), *what, "-c", str(CLIENTS),
            "-P", str(pipeline), "-d", "100", "-r", str(KEY_SPACE), "-n", str(requests), "--csv"]


def ops_per_s(csv: str) -> float:
    return float(csv[csv.find('"test"'):].splitlines()[1].replace('"', "").split(",")[1])


def runs_at_once(servers: list[Server], test: str, requests: int, tmp: Path, count: bool) -> list[dict[str, float]]:
    """One benchmark per server, all started together (the trees compared share whatever
    else the machine runs meanwhile): ops/s, and per command the router's CPU µs, and
    with `count` its system calls and context switches (perf's syscall tracepoint costs
    the router per call: it slows the tree that makes more calls more)."""
    pids = [router_pid(server) for server in servers]
    stat_outs = [tmp / f"perf-stat-{i}.txt" for i in range(len(servers))]
    for out in stat_outs:
        out.write_text("")
    perfs = [subprocess.Popen(["perf", "stat", "-x", ",", "-o", str(out), "-e", ",".join(EVENTS), "-p", str(pid)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for pid, out in zip(pids, stat_outs)] if count else []
    if count:
        time.sleep(0.5)  # perf attaches
    cpu_before = [cpu_seconds(pid) for pid in pids]
    benches = [subprocess.Popen(benchmark_argv(server.port, test, 1, requests), stdout=subprocess.PIPE, text=True)
               for server in servers]
    outs = []
    cpu_after = []
    for bench, pid in zip(benches, pids):
        outs.append(bench.communicate(timeout=BENCH_TIMEOUT_S)[0])
        cpu_after.append(cpu_seconds(pid))
    for perf in perfs:
        perf.send_signal(signal.SIGINT)
        perf.wait(timeout=30)
    runs = []
    for out, stat_out, before, after in zip(outs, stat_outs, cpu_before, cpu_after):
        counts = {}
        for line in stat_out.read_text().splitlines():
            fields = line.split(",")
            if len(fields) > 2 and fields[0].isdigit():
                counts[fields[2]] = int(fields[0])
        runs.append({"rps": ops_per_s(out), "cpu_us": (after - before) * 1e6 / requests,
                     "syscalls": counts.get(EVENTS[0], 0) / requests,
                     "switches": counts.get(EVENTS[1], 0) / requests})
    return runs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", type=Path, required=True, help="another durakv checkout to compare with")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=100_000)
    p.add_argument("--tests", default="get,set")
    p.add_argument("--count", action="store_true", help="count the routers' system calls and context switches "
                   "(perf stat: it slows them)")
    opts = p.parse_args()
    tests = opts.tests.split(",")
    if not (1 <= opts.rounds <= 50 and 1000 <= opts.requests <= 10_000_000 and set(tests) <= {"get", "set", "connect"}):
        p.error("an argument is out of range")
    groups = ProcessGroups()
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    with open("/proc/loadavg") as f:
        load_start = " ".join(f.read().split()[:3])
    try:
        with tempfile.TemporaryDirectory(prefix="durakv-router-ab-") as tmp_name:
            tmp = Path(tmp_name)
            servers = [start_tree(groups, "durakv-this", tmp, 2, None, "router"),
                       start_tree(groups, "durakv-base", tmp, 2, base_package(opts.base.resolve(), tmp), "router"),
                       start_redis(groups, tmp, "redis-aof", ["--appendonly", "yes", "--appendfsync", "always"],
                                   ("get", "set"))]
            for server in servers:  # every key GET asks for exists
                subprocess.run(benchmark_argv(server.port, "set", 16, 2 * KEY_SPACE), capture_output=True,
                               timeout=BENCH_TIMEOUT_S, check=True)
            for round_no in range(1, opts.rounds + 1):
                for test in tests:
                    # The two trees at once, then redis-server alone (the ratio's reference).
                    runs = runs_at_once(servers[:2], test, opts.requests, tmp, opts.count) + \
                        runs_at_once(servers[2:], test, opts.requests, tmp, opts.count)
                    for server, run in zip(servers, runs):
                        results.setdefault((test, server.name), []).append(run)
                        print(f"round {round_no} {test.upper()} {server.name}: {run['rps']:,.0f}/s, router "
                              f"{run['cpu_us']:.1f} CPU µs, {run['syscalls']:.2f} syscalls, "
                              f"{run['switches']:.3f} context switches per command", file=sys.stderr, flush=True)
    finally:
        groups.stop_all()
    with open("/proc/loadavg") as f:
        load_end = " ".join(f.read().split()[:3])
    print(f"load average {load_start} -> {load_end}; medians of {opts.rounds} rounds, P1 c={CLIENTS}, "
          f"durakv through its router (2 shards), both trees at once; redis-server appendfsync always alone")
    print(f"{'test':<4} {'server':<12} {'ops/s':>9} {'vs redis':>9} {'CPU µs':>7} {'syscalls':>9} {'switches':>9}"
          "  every round ops/s (router CPU µs)")
    for test in tests:
        redis = statistics.median(r["rps"] for r in results[(test, "redis-aof")])
        for server in servers:
            runs = results[(test, server.name)]
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            print(f"{test.upper():<4} {server.name:<12} {med['rps']:>9,.0f} {med['rps'] / redis:>8.2f}× "
                  f"{med['cpu_us']:>7.1f} {med['syscalls']:>9.2f} {med['switches']:>9.3f}  "
                  + " ".join(f"{r['rps']:,.0f} ({r['cpu_us']:.1f})" for r in runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
