#!/usr/bin/env python3
"""The output limit at full size (issue 13, client limits): a client pipelines
1M `GET big` (a 100 KB value) and never reads, under `client-output-buffer-limit
normal 64mb 32mb 10`; it must be disconnected at the limit. Meanwhile another
client GETs a small key on the same shard. Prints that client's GET latency idle
and during (from the slow client's start to its disconnection), how long the slow
client lasted and what it had sent, and the peak RSS of the server's processes.
`--slow-clients N` sends N such clients one after another (a harsher load);
`--seconds S` keeps sending them for S seconds at least, so that the "during"
figures rest on enough samples (each slow client lasts only tens of ms);
`--rate R` starts at most R of them a second (an offered load that does not grow
as the server closes them faster). `--alternate K` splits the slow clients' time
into K phases, each after an idle phase as long, and compares the GETs of the idle
phases with those of the slow clients' (the same background for both: a single 2 s
idle sample's p99 moved 0.55-1.9 ms between runs on the shared 2-core machine). The CPU milliseconds per slow client are
printed too, of each server process, of the process that sends the slow clients
and of the measuring thread, and the GETs the server ran per slow client (measures
the machine's load moves less than latency); `--alone` runs the slow clients
without the other client, whose GETs the server processes' figures include
otherwise: their CPU cost alone.
The slow client runs in a process of its own: in this one, its sending loop would
hold the GIL against the measuring thread and show as GET latency.

    python scripts/output_limit.py --durakv       # starts durakv serve (2 shards)
    python scripts/output_limit.py --redis        # starts redis-server for comparison
    python scripts/output_limit.py --port 6379    # an already running server

tests/test_client_limits.py checks the same mechanism at test size.
"""

from __future__ import annotations

import argparse
import bisect
import multiprocessing
import os
import shutil
import socket
import sys
import tempfile
import threading
import time

import redis
from proctools import free_port, stop_group
from slow_client import (BIG_KEY, SAME_SHARD_KEY, VALUE_BYTES, measure, measure_stamped, rss_mb, start_server,
                         summary, tree_pids)

GETS_PER_CLIENT = 1_000_000
REQUESTS_PER_SEND = 1000
DISCONNECT_WAIT_S = 60.0


SlowClient = tuple[float, int, str, float, float]


def slow_client(port: int, gets: int) -> SlowClient:
    """Pipeline `gets` GETs of the big key without reading; returns (seconds until
    the server closed the connection, GETs sent, how it ended, and perf_counter at
    its connect and at its end: the machine's monotonic clock, which the measuring
    process reads too). A server that closes a connection with unread input resets
    it, so the close shows as a failed send; a server that stops reading instead
    shows as a send timeout."""
    began = time.perf_counter()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.settimeout(DISCONNECT_WAIT_S)
    request = b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(BIG_KEY), BIG_KEY.encode())
    requests = request * REQUESTS_PER_SEND  # built once: what it sends costs the server, building it does not
    sent = 0
    start = time.monotonic()
    how = f"all {gets} GETs sent and still connected"
    try:
        while sent < gets:
            sock.sendall(requests)
            sent += REQUESTS_PER_SEND
        while time.monotonic() - start < DISCONNECT_WAIT_S:  # everything sent: is it closed?
            sock.sendall(b"PING\r\n")
            time.sleep(0.1)
    except TimeoutError:
        how = f"not closed: the server stopped reading it for {DISCONNECT_WAIT_S:.0f} s"
    except OSError as e:
        how = f"closed by the server ({e.strerror})"
    elapsed = time.monotonic() - start
    ended = time.perf_counter()
    sock.close()
    return elapsed, sent, how, began, ended


def slow_clients_in_turn(port: int, count: int, seconds: float, rate: float) -> list[SlowClient]:
    """slow_client after slow_client (`count` at least, for `seconds` at least, at most
    `rate` a second, 0: each as the last is closed) up to the first the server does not
    close: their results. The loop runs in the senders' process too, so that the
    measuring thread's process does nothing per slow client (a pool call each would
    run its pool's handler threads there, on the measuring thread's GIL)."""
    out: list[SlowClient] = []
    started = time.monotonic()
    while len(out) < count or time.monotonic() - started < seconds:
        if rate:
            time.sleep(max(0.0, started + len(out) / rate - time.monotonic()))
        out.append(slow_client(port, GETS_PER_CLIENT))
        if not out[-1][2].startswith("closed"):
            break
    return out


def while_connected(samples: list[tuple[float, float]], clients: list[SlowClient]) -> list[float]:
    """The latencies of the GETs that overlapped a slow client's connection (from its
    connect to its close): what a client waits while a non-reader is being served,
    undiluted by the time between slow clients that a phase also holds."""
    lives = sorted((began, ended) for _, _, _, began, ended in clients)
    starts = [began for began, _ in lives]
    out = []
    for start, latency in samples:
        i = bisect.bisect_right(starts, start + latency) - 1  # the last connect before the GET ended
        if i >= 0 and lives[i][1] > start:
            out.append(latency)
    return out


def cpu_seconds(pids: list[int], task_of: int = 0) -> dict[int, float]:
    """User + system CPU seconds of each process so far (/proc/PID/stat), or of each
    thread of process `task_of` (/proc/PID/task/TID/stat)."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            with open(f"/proc/{task_of}/task/{pid}/stat" if task_of else f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / tick
    return out


def role(pid: int) -> str:
    """A server process's role from its title ("durakv router 0 ..."), else its pid."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            words = f.read().replace(b"\0", b" ").split()
    except OSError:
        return str(pid)
    if words[:1] == [b"durakv"] and len(words) > 2:
        return " ".join(w.decode() for w in words[1:3]) if words[1] in (b"shard", b"router") else words[1].decode()
    return str(pid)


def run(port: int, pids_of, slow_clients: int, limit: str, seconds: float = 0.0, rate: float = 0.0,
        alone: bool = False, alternate: int = 0) -> None:
    setup = redis.Redis(port=port, socket_timeout=30)
    setup.config_set("client-output-buffer-limit", limit)
    setup.set(BIG_KEY, b"x" * VALUE_BYTES)
    setup.set(SAME_SHARD_KEY, b"v")
    # The server's processes, found once: the sampler reads only their /proc files (a pgrep
    # every 50 ms from this process competed with the measuring thread during the slow
    # clients only), and it samples while idle too, so that idle and during differ by the
    # slow clients alone.
    pids = pids_of()
    peak: dict[int, float] = {}
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            for pid, mb in rss_mb(pids).items():
                peak[pid] = max(peak.get(pid, 0), mb)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    idle = measure(port, SAME_SHARD_KEY, 2.0)
    print(f"limit: client-output-buffer-limit {limit}")
    print(f"idle GET:   {summary(idle)}")
    print(f"RSS before (MB): {rss_mb(pids)}")
    stop = threading.Event()
    samples: list[tuple[float, float]] = []  # (start, latency) of the other client's GETs
    measuring_tid: list[int] = []

    def measure_during() -> None:
        measuring_tid.append(threading.get_native_id())
        samples.extend(measure_stamped(port, SAME_SHARD_KEY, 0.0 if alone else 3600.0, stop))
        stop.wait()  # alive to the end, alone too: its CPU is read then

    other = threading.Thread(target=measure_during)
    pool = multiprocessing.get_context("fork").Pool(1)
    sender = pool.apply(os.getpid)
    other.start()
    while not measuring_tid:
        time.sleep(0.001)
    peak.clear()
    setup.config_resetstat()
    harness = {"slow clients' process": sender, "measuring thread": measuring_tid[0]}

    def cpu_now() -> dict[int, float]:
        return cpu_seconds(pids) | cpu_seconds([sender]) | cpu_seconds([measuring_tid[0]], os.getpid())

    # Idle and during alternate (`alternate` rounds; none: one during phase after the idle
    # one): both then see the same background, which on a shared 2-core machine moves a
    # p99 of a 2 s sample by 2-5x between runs.
    rounds = max(alternate, 1)
    phase_s = seconds / rounds if alternate else seconds
    idle_windows: list[tuple[float, float]] = []
    during_windows: list[tuple[float, float]] = []
    results: list[SlowClient] = []
    cpu_spent: dict[int, float] = {}
    harness_s = window_s = 0.0
    for _ in range(rounds):
        if alternate:
            begin = time.perf_counter()
            time.sleep(phase_s)
            idle_windows.append((begin, time.perf_counter()))
        harness_before = cpu_seconds([os.getpid()])[os.getpid()]
        cpu_before = cpu_now()
        begin = time.perf_counter()
        results += pool.apply(slow_clients_in_turn, (port, slow_clients if not results else 1, phase_s, rate))
        during_windows.append((begin, time.perf_counter()))
        window_s += during_windows[-1][1] - begin
        cpu_after = cpu_now()
        for pid, spent in cpu_after.items():
            cpu_spent[pid] = cpu_spent.get(pid, 0.0) + spent - cpu_before.get(pid, 0.0)
        harness_s += cpu_seconds([os.getpid()])[os.getpid()] - harness_before
        if not results[-1][2].startswith("closed"):
            break
    slow = len(results)
    for i, (elapsed, sent, how, _, _) in enumerate(results, 1):
        if i <= slow_clients or not how.startswith("closed"):
            print(f"slow client {i}: {how} after {elapsed:.2f} s, {sent} GETs sent "
                  f"({sent * VALUE_BYTES / 1e6:.0f} MB of replies asked)")
    gets_run = setup.info("commandstats").get("cmdstat_get", {}).get("calls", 0)
    pool.close()
    stop.set()
    other.join()
    during = [latency for start, latency in samples if any(a <= start < b for a, b in during_windows)]
    if alternate:
        between = [latency for start, latency in samples if any(a <= start < b for a, b in idle_windows)]
        print(f"idle GET, {rounds} phases of {phase_s:.1f} s between the slow clients': {summary(between)}")
    sampling.set()
    names = {pid: role(pid) for pid in pids} | {pid: name for name, pid in harness.items()}
    per_slow_ms = {names[pid]: round(spent * 1000 / slow, 2) for pid, spent in cpu_spent.items()}
    measuring_s = cpu_spent[measuring_tid[0]]
    per_slow_ms["measuring process's other threads"] = round((harness_s - measuring_s) * 1000 / slow, 2)
    print(f"{slow} slow clients in {window_s:.1f} s; CPU ms per slow client meanwhile "
          f"({'theirs alone' if alone else 'with serving the other client'}): {per_slow_ms}")
    print(f"GETs run per slow client: {(gets_run - len(samples)) / slow:.0f} (the server's count less the other "
          f"client's)")
    print(f"during GET: {summary(during)}")
    print(f"GETs in flight while a slow client was connected: {summary(while_connected(samples, results))}")
    print(f"peak RSS during (MB): {peak}")
    time.sleep(1.0)
    print(f"RSS 1 s after (MB): {rss_mb(pids)}")
    setup.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--durakv", action="store_true")
    what.add_argument("--redis", action="store_true")
    what.add_argument("--port", type=int)
    parser.add_argument("--slow-clients", type=int, default=1, help="slow clients, one after another")
    parser.add_argument("--seconds", type=float, default=0.0, help="keep sending slow clients this long at least")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="slow clients started per second at most (0: each as the last is closed)")
    parser.add_argument("--alternate", type=int, default=0,
                        help="split --seconds into this many during phases, each after an idle phase as long")
    parser.add_argument("--alone", action="store_true",
                        help="no other client while the slow clients run: their CPU cost alone")
    parser.add_argument("--limit", default="normal 64mb 32mb 10", help="client-output-buffer-limit to set")
    args = parser.parse_args()
    proc = None
    tmp = tempfile.mkdtemp()
    try:
        if args.port:
            port = args.port
            pids_of = lambda: []  # noqa: E731
        else:
            port = free_port()
            proc = start_server(args.durakv, port, tmp, lambda r: r.ping())
            pids_of = lambda: tree_pids(proc.pid)  # noqa: E731
        run(port, pids_of, args.slow_clients, args.limit, args.seconds, args.rate, args.alone, args.alternate)
    finally:
        if proc is not None:
            stop_group(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
