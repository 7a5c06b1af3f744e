#!/usr/bin/env python3
"""Cross-shard transactions (issue 16) against single-shard ones and redis-server:
a 2-key MSET and a 3-command MULTI/EXEC, with the keys on two shards or on one
(hash tag), at pipeline depth 1 and 16, through the router; `--workloads
mget-cross,mget-one`: a 2-key MGET (across shards it reads under both shards' locks); `mget-hot`: the same across
shards, every client over the same 4 key pairs.

    python scripts/bench_txn.py [--shards 4] [--clients 8] [--seconds 5]

Clients are processes (hiredis over raw sockets), so the client is not the
bottleneck of a transaction that costs the server two fsyncs. Systems take turns
on every workload; the table shows ops/s (transactions per second) and the
median latency of one request (P1) or one pipeline (P16); each durakv run also prints
the CPU time of the whole durakv tree per operation (stderr), steadier than ops/s
on a loaded machine."""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import hiredis

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))
from proctools import free_port, start_durakv_serve, start_group, stop_group  # noqa: E402
from bench_sections import replace_section  # noqa: E402

REPO = SCRIPTS.parent
READY_TIMEOUT_S = 60.0
KEY_SPACE = 100_000


def encode(*args: bytes | str) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a.encode() if isinstance(a, str) else a
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def tags(shards: int) -> tuple[str, str, str]:
    """Three hash tags: the first two on different shards of `shards`, the third any."""
    sys.path.insert(0, str(REPO))
    from durakv.shards.slots import key_slot, slot_owner_table
    owner = slot_owner_table(max(shards, 2))
    first = "a"
    for i in range(1000):
        t = f"t{i}"
        if owner[key_slot(t.encode())] != owner[key_slot(first.encode())]:
            return first, t, "c"
    raise RuntimeError("no two tags on different shards")


def workload(name: str, a: str, b: str, c: str, rng: random.Random) -> list[bytes]:
    n = rng.randrange(KEY_SPACE)
    if name == "mset-cross":
        return [encode("MSET", f"{{{a}}}:{n}", "v" * 100, f"{{{b}}}:{n}", "v" * 100)]
    if name == "mset-one":
        return [encode("MSET", f"{{{a}}}:{n}", "v" * 100, f"{{{a}}}:x{n}", "v" * 100)]
    if name == "multi3-cross":
        return [encode("MULTI"), encode("SET", f"{{{a}}}:{n}", "v" * 100), encode("INCR", f"{{{b}}}:n{n}"),
                encode("LPUSH", f"{{{c}}}:l{n % 100}", "x"), encode("EXEC")]
    if name == "multi3-one":
        return [encode("MULTI"), encode("SET", f"{{{a}}}:{n}", "v" * 100), encode("INCR", f"{{{a}}}:n{n}"),
                encode("LPUSH", f"{{{a}}}:l{n % 100}", "x"), encode("EXEC")]
    if name == "mget-cross":
        return [encode("MGET", f"{{{a}}}:{n}", f"{{{b}}}:{n}")]
    if name == "mget-hot":  # every client reads the same 4 key pairs: readers of one key must not queue
        return [encode("MGET", f"{{{a}}}:hot{n % 4}", f"{{{b}}}:hot{n % 4}")]
    if name == "mget-one":
        return [encode("MGET", f"{{{a}}}:{n}", f"{{{a}}}:x{n}")]
    assert name == "set", name
    return [encode("SET", f"k:{n}", "v" * 100)]


def client(port: int, name: str, pipeline: int, seconds: float, tagset: tuple[str, str, str], seed: int,
           out: multiprocessing.Queue) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = hiredis.Reader()
    rng = random.Random(seed)
    done = 0
    latencies = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        batch = []
        for _ in range(pipeline):
            batch.extend(workload(name, *tagset, rng))
        started = time.perf_counter()
        sock.sendall(b"".join(batch))
        want = len(batch)
        while want:
            reply = reader.gets()
            if reply is False:
                data = sock.recv(1 << 16)
                if not data:
                    raise ConnectionError(f"{name}: the server closed the connection")
                reader.feed(data)
                continue
            if isinstance(reply, hiredis.ReplyError):
                raise RuntimeError(f"{name}: {reply}")
            want -= 1
        latencies.append(time.perf_counter() - started)
        done += pipeline
    sock.close()
    out.put((done, latencies))


def run(port: int, name: str, pipeline: int, clients: int, seconds: float, tagset) -> tuple[float, float]:
    queue: multiprocessing.Queue = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=client, args=(port, name, pipeline, seconds, tagset, i, queue))
             for i in range(clients)]
    started = time.monotonic()
    for p in procs:
        p.start()
    results = [queue.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join()
    elapsed = time.monotonic() - started
    total = sum(r[0] for r in results)
    lat = [x for r in results for x in r[1]]
    return total / elapsed, statistics.median(lat) * 1000 if lat else 0.0


def wait_port(port: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(encode("PING"))
                if s.recv(64).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"nothing answers on port {port}")


def tree_cpu_s(pgid: int) -> float:
    """User + system CPU seconds of every live process in the process group."""
    tick_hz = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / tick_hz


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--workloads", default="mset-cross,mset-one,multi3-cross,multi3-one")
    p.add_argument("--output", type=Path, help="also write the table as BENCHMARKS.md's cross-shard section")
    opts = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-txn-"))
    procs = []
    try:
        durakv, dport = start_durakv_serve(tmp / "durakv", opts.shards)
        procs.append(durakv)
        rport = free_port()
        procs.append(start_group(["redis-server", "--port", str(rport), "--save", "", "--appendonly", "yes",
                                  "--appendfsync", "always", "--dir", str(tmp)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(dport)
        wait_port(rport)
        tagset = tags(opts.shards)
        rows: dict[tuple[str, str, int], list[tuple[float, float]]] = {}
        for _ in range(opts.rounds):
            for name in opts.workloads.split(","):
                for pipeline in (1, 16):
                    for system, port in (("durakv", dport), ("redis-aof-always", rport)):
                        if system != "durakv" and name.endswith("-one"):
                            continue  # one redis-server: the same as the cross rows
                        cpu_before_s = tree_cpu_s(durakv.pid)
                        result = run(port, name, pipeline, opts.clients, opts.seconds, tagset)
                        rows.setdefault((name, system, pipeline), []).append(result)
                        cpu = ""
                        if system == "durakv":  # the whole tree's CPU: less noisy than ops/s on a loaded machine
                            ops = max(result[0] * opts.seconds, 1.0)
                            cpu = f", server CPU {(tree_cpu_s(durakv.pid) - cpu_before_s) / ops * 1e6:.0f} us/op"
                        print(f"{name} P{pipeline} {system}: {result[0]:,.0f} ops/s, p50 {result[1]:.2f} ms{cpu}",
                              file=sys.stderr, flush=True)
        lines = [f"{opts.shards} shards, {opts.clients} client processes, {opts.seconds:.0f} s per run, "
                 f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; `python scripts/bench_txn.py "
                 f"--shards {opts.shards} --clients {opts.clients}`", "",
                 "| workload | system | P1 ops/s | P1 p50 ms | P16 ops/s | P16 p50 ms |",
                 "|---|---|---:|---:|---:|---:|"]
        for name in opts.workloads.split(","):
            for system in ("durakv", "redis-aof-always"):
                r1 = rows.get((name, system, 1))
                r16 = rows.get((name, system, 16))
                if not r1:
                    continue
                m1 = statistics.median(x[0] for x in r1), statistics.median(x[1] for x in r1)
                m16 = statistics.median(x[0] for x in r16), statistics.median(x[1] for x in r16)
                lines.append(f"| {name} | {system} | {m1[0]:,.0f} | {m1[1]:.2f} | {m16[0]:,.0f} | {m16[1]:.2f} |")
        print("\n" + "\n".join(lines))
        if opts.output is not None:
            replace_section(opts.output, "cross-shard-transactions",
                            "## Cross-shard transactions (issue 16)\n\n" + "\n".join(lines))
    finally:
        for proc in procs:
            stop_group(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
