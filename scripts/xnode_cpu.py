#!/usr/bin/env python3
"""CPU per GET on the routers of a forwarded GET (issue 15): node b's router forwards to
the primaries on node a over TCP links; node a's router reaches them over Unix sockets.

Starts a 3-member etcd cluster on loopback and two `durakv serve` trees (scripts/xnode_bench.py's
start_pair), then per round runs `redis-benchmark -t get -c C -P P` against node a's router and
node b's, and reads each process's CPU seconds (utime, stime: /proc/PID/stat) before and after:
CPU µs per GET of the router the client talks to and of node a's shards. CPU seconds are far less
noisy than wall time on a loaded machine (the load average is printed beside them).

CPU per GET at P1 depends on the rate: a process that sleeps between requests pays the wakeup
and a cold cache each time (node a's router: ~70 µs per GET at 3,800/s, ~170 µs at 370/s, load
10). A forwarded GET waits longer (a TCP hop, whose wakeups suffer most on a loaded machine), so
redis-benchmark's rate through node b is lower and its CPU per GET higher for that reason alone:
--pace-per-s sends GETs from one Python connection at a fixed rate instead, the same for both
paths, so their CPU per GET compares at equal rates; with several clients (-c 20) a router's turn
serves several GETs and the difference goes (load 14-19: 34.2 µs local, 33.7 forwarded). --syscalls
counts the routers' system calls per GET (strace -c; deterministic, unlike time): 9.0 on both paths
at P1 (recvfrom, sendto and epoll_ctl twice, epoll_wait three times), the same calls in the same
order (one frame per turn each way, no TLS, no extra wakeup). --one-cpu runs both trees and the
client on CPU 0: a P1 ping-pong then no longer depends on where the kernel wakes each process
(a Unix socket's wakeup is a synchronous hand-off to the waiting peer, a loopback TCP segment's
comes from softirq), and local and forwarded GETs cost about the same (load 18: 148/131 µs vs
189/130 µs per GET, 507/643 vs 376/848 GET/s over two rounds)."""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))
from etcd_cluster import EtcdCluster  # noqa: E402
from xnode_bench import start_pair  # noqa: E402

TICKS_S = os.sysconf("SC_CLK_TCK")


def user_sys_s(pid: int) -> tuple[float, float]:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return int(fields[11]) / TICKS_S, int(fields[12]) / TICKS_S


def cpu_s(pid: int) -> float:
    return sum(user_sys_s(pid))


def pids(group: int, title: str) -> list[int]:
    """The processes of a tree (process group) whose title starts `durakv TITLE ` (every one for "")."""
    pattern = f"^durakv {title} " if title else "^durakv "
    out = subprocess.run(["pgrep", "-g", str(group), "-f", pattern], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def run_get(port: int, requests: int, clients: int, pipeline: int) -> float:
    out = subprocess.run(["redis-benchmark", "-p", str(port), "-c", str(clients), "-P", str(pipeline), "-n",
                          str(requests), "-r", "100000", "-t", "get", "--csv"], capture_output=True, text=True,
                         check=True)
    return float(out.stdout.splitlines()[1].split(",")[1].strip('"'))


def run_paced(port: int, requests: int, per_s: float) -> float:
    """GETs from one connection, one every 1/per_s s (P1); returns the rate achieved."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    started = time.monotonic()
    try:
        for i in range(requests):
            key = b"key:%012d" % (i % 100_000)
            sock.sendall(b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key))
            if not sock.recv(4096).endswith(b"\r\n"):
                raise RuntimeError("a reply did not come in one read")
            delay = started + (i + 1) / per_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    finally:
        sock.close()
    return requests / (time.monotonic() - started)


def syscalls_per_get(router: int, port: int, requests: int, clients: int, pipeline: int) -> float:
    """The router's system calls per GET (strace -c -f while redis-benchmark runs)."""
    out = Path(tempfile.mkstemp(prefix="xnode-strace-")[1])
    tracer = subprocess.Popen(["strace", "-c", "-f", "-p", str(router), "-o", str(out)], stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached
    run_get(port, requests, clients, pipeline)
    tracer.terminate()
    tracer.wait()
    calls = 0
    for line in out.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[-1] not in ("syscall", "total") and fields[3].isdigit():
            name = fields[-1]
            if name not in ("futex", "poll", "ioctl", "read", "write", "openat", "close", "newfstatat"):
                calls += int(fields[3])
    out.unlink()
    return calls / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--pipeline", type=int, default=1)
    parser.add_argument("--pace-per-s", type=float, default=0.0,
                        help="GETs per second from one Python connection instead of redis-benchmark")
    parser.add_argument("--syscalls", action="store_true", help="count the routers' system calls per GET")
    parser.add_argument("--one-cpu", action="store_true", help="run both trees and the client on CPU 0")
    opts = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="xnode-cpu-"))
    etcd = EtcdCluster(tmp / "etcd", binary=shutil.which("etcd") or "etcd").start()
    rows: dict[str, list[tuple[float, float, float, float]]] = {}
    calls: dict[str, float] = {}
    try:
        a, b = start_pair(tmp, etcd, opts.shards, 2)
        shard_pids = pids(a.proc.pid, "shard")
        if opts.one_cpu:
            os.sched_setaffinity(0, {0})  # redis-benchmark inherits it
            for node in (a, b):
                for pid in pids(node.proc.pid, ""):
                    for thread in os.listdir(f"/proc/{pid}/task"):
                        os.sched_setaffinity(int(thread), {0})
        for _ in range(opts.rounds):
            for where, node in (("local (node a's router)", a), ("forwarded (node b's router)", b)):
                router = pids(node.proc.pid, "router")[0]
                before = user_sys_s(router), sum(cpu_s(p) for p in shard_pids)
                rate = (run_paced(node.port, opts.requests, opts.pace_per_s) if opts.pace_per_s else
                        run_get(node.port, opts.requests, opts.clients, opts.pipeline))
                after = user_sys_s(router), sum(cpu_s(p) for p in shard_pids)
                rows.setdefault(where, []).append((1e6 * (after[0][0] - before[0][0]) / opts.requests,
                                                   1e6 * (after[0][1] - before[0][1]) / opts.requests,
                                                   1e6 * (after[1] - before[1]) / opts.requests, rate))
        if opts.syscalls:
            for where, node in (("local (node a's router)", a), ("forwarded (node b's router)", b)):
                calls[where] = syscalls_per_get(pids(node.proc.pid, "router")[0], node.port, opts.requests,
                                                opts.clients, opts.pipeline)
        a.kill9()
        b.kill9()
    finally:
        etcd.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    load = os.getloadavg()
    how = (f"paced at {opts.pace_per_s:g}/s from one connection" if opts.pace_per_s else
           f"redis-benchmark -c {opts.clients} -P {opts.pipeline}") + (", everything on CPU 0" if opts.one_cpu else "")
    print(f"GET {how}, {opts.requests} requests x {opts.rounds} rounds, {opts.shards} shards (load average "
          f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f}); medians (shards: with their idle CPU over the run):")
    print("| through | router user µs/GET | router sys µs/GET | node a shards CPU µs/GET | GET/s "
          "| router syscalls/GET |\n|---|---|---|---|---|---|")
    for where, results in rows.items():
        medians = [statistics.median(r[i] for r in results) for i in range(4)]
        print(f"| {where} | {medians[0]:.1f} | {medians[1]:.1f} | {medians[2]:.1f} | {medians[3]:,.0f} | "
              f"{calls.get(where, float('nan')):.2f} |")


if __name__ == "__main__":
    main()
