#!/usr/bin/env python3
"""Large values, durakv against redis-server in the same run (issue 11 §4):
SET and GET of big strings (64 and 512 MiB by default; a plain socket client
that copies nothing, so the time is the servers') and LRANGE of a big list
(redis-py with hiredis), each timed, while a separate probe process PINGs
and GETs a small key on another shard back to back and records its worst
latency during the operation. Also the peak RSS of each server's processes.

    python scripts/large_values.py                      # 64 and 512 MiB, a 1M-element list, KEYS * of 1M keys
    python scripts/large_values.py --sizes-mb 8 64 --list-elements 5000000

Target (issue 11): durakv within 2x redis' time, and the probe (a client of
another shard) never stalled more than 50 ms; a second probe, a client of the
shard doing the operation, shows what its other clients wait. The first row is the probe's worst
latency while nothing runs: on a loaded machine, the baseline to read the others by. The same mechanism at test size
is tests/test_large_values.py.

Each phase starts on a settled tree: the probes pause and the script waits until no
snapshot build child, log archive lag, BGSAVE or AOF rewrite is left and the tree's
processes used under twice the CPU in SETTLE_WINDOW_S that the fresh tree did
(plus SETTLE_CPU_MS), so that one phase's aftermath is not counted in the next. A probe request
counts in a phase when it overlaps it (it began or ended inside it; the probes
record each request's start and end on the machine's monotonic clock). For each
phase's worst stall of each probe the script prints the CPU each thread of the tree
used during it (/proc, 10 ms ticks) and, with --py-spy, a `py-spy dump` of the
shards and routers taken while a probe request was past PYSPY_AFTER_MS. With
--loopwatch MS the tree runs with scripts/loopwatch (per-turn loop monitor),
summarised per phase and process.
"""

from __future__ import annotations

import argparse
import array
import glob
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event

import hiredis
import redis
from proctools import free_port, start_group, stop_group

MIB = 1024 * 1024
READY_TIMEOUT_S = 60.0
SOCKET_TIMEOUT_S = 600.0
RSS_SAMPLE_S = 0.02  # also the CPU samples' period (attribution of stalls)
SETTLE_WINDOW_S = 0.5
SETTLE_CPU_MS = 25.0  # the whole tree, in SETTLE_WINDOW_S, with the probes paused
SETTLE_TIMEOUT_S = 180.0
PROBE_RESUME_S = 0.3  # the probes run this long before a phase starts
PYSPY_AFTER_MS = 100.0
PYSPY_TIMEOUT_S = 20.0
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
PY_SPY = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
IDLE_WINDOW_S = 3.0
LIST_PUSH_BATCH = 10_000
KEYS_PIPELINE = 5_000
# "{a}..." and "{b}..." hash to different halves of the slots: with two shards the
# probe's key lives on the other shard than the big values.
BIG_KEY = "{a}big"
LIST_KEY = "{a}list"
PROBE_KEY = "{b}probe"
SAME_SHARD_PROBE_KEY = "{a}probe"  # a client of the shard doing the big operation


def probe(port: int, key: str, running: Event, ask: Event, done: Event, out: Connection,
          in_flight: Synchronized) -> None:
    """Back-to-back PING and GET of `key` while `running` is set. Records every
    request's start and end (time.monotonic: one clock for every process of the
    machine); when `ask` is set, sends them (an array of start, end pairs) and starts
    over. `in_flight` holds the start of the request under way (0: none), for the
    parent's py-spy trigger."""
    client = redis.Redis(port=port, socket_timeout=SOCKET_TIMEOUT_S)
    times = array.array("d")
    while not done.is_set():
        if ask.is_set():
            ask.clear()
            out.send_bytes(times.tobytes())
            times = array.array("d")
        if not running.is_set():
            time.sleep(0.01)
            continue
        for request in (client.ping, lambda: client.get(key)):
            t0 = in_flight.value = time.monotonic()
            request()
            in_flight.value = 0.0
            times.append(t0)
            times.append(time.monotonic())


def phase_stats(times: array.array, start: float, end: float) -> tuple[float, float, tuple[float, float]]:
    """Max and p99 (ms) of the requests that overlap [start, end], and the worst one's
    (start, end)."""
    spans = [(times[i], times[i + 1]) for i in range(0, len(times), 2)
             if times[i + 1] >= start and times[i] <= end]
    if not spans:
        return 0.0, 0.0, (start, start)
    lat = sorted((b - a) * 1000 for a, b in spans)
    worst = max(spans, key=lambda span: span[1] - span[0])
    return lat[-1], lat[min(len(lat) - 1, int(len(lat) * 0.99))], worst


def tree_pids(leader: int) -> list[int]:
    out = subprocess.run(["pgrep", "-g", str(os.getpgid(leader))], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass  # exited meanwhile
    return total


def thread_cpu(pids: list[int]) -> dict[str, float]:
    """CPU seconds so far of every thread of `pids`, by "title/tid" (main: the pid's own)."""
    cpu: dict[str, float] = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                title = f.read().split(b"\0")[0].decode(errors="replace")
            title = " ".join(title.split()[:3]) or str(pid)
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue  # exited meanwhile
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            name = f"{title} ({pid}){'' if tid == str(pid) else f'/thread {tid}'}"
            cpu[name] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S  # utime, stime
    return cpu


def cpu_between(samples: list[tuple[float, dict[str, float]]], start: float, end: float) -> list[tuple[float, str]]:
    """CPU ms per thread from the last sample at or before start to the first at or
    after end, largest first (threads that appeared meanwhile count from zero)."""
    before = next((cpu for at, cpu in reversed(samples) if at <= start), samples[0][1] if samples else {})
    after = next((cpu for at, cpu in samples if at >= end), samples[-1][1] if samples else {})
    used = [((after[name] - before.get(name, 0.0)) * 1000, name) for name in after]
    return sorted((u for u in used if u[0] > 0), reverse=True)


def tree_cpu_ms(pids_of, window_s: float) -> float:
    """CPU ms the tree used in the next window_s."""
    before = sum(thread_cpu(pids_of()).values())
    time.sleep(window_s)
    return (sum(thread_cpu(pids_of()).values()) - before) * 1000


def background_work(pids: list[int], client: redis.Redis) -> str:
    """What the tree still does after a phase, or "": a snapshot build child (a child
    of durakv's snapshotter, which paces itself and so may sit idle for a while), a
    log archive behind (durakv with an S3 store), a redis-server BGSAVE or AOF rewrite."""
    titles = {}
    parents = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                titles[pid] = f.read().split(b"\0")[0].decode(errors="replace")
            with open(f"/proc/{pid}/stat", "rb") as f:
                parents[pid] = int(f.read().rsplit(b")", 1)[1].split()[1])
        except OSError:
            continue  # exited meanwhile
    for pid, parent in parents.items():
        if titles.get(parent, "").startswith("durakv snapshotter"):
            return f"a snapshot build child ({pid})"
    info = client.info("persistence")
    for field in ("rdb_bgsave_in_progress", "aof_rewrite_in_progress"):
        if info.get(field):
            return field
    for name, value in info.items():
        if name.startswith("log_archive_shard") and isinstance(value, dict) and value.get("lag_records"):
            return f"{name} lag_records={value['lag_records']}"
    return ""


def settle(pids_of, client: redis.Redis, what: str, idle_ms: float) -> float:
    """Wait until no background work is left (background_work) and the tree used under
    2 * idle_ms + SETTLE_CPU_MS of CPU in SETTLE_WINDOW_S (idle_ms: the most the fresh
    tree used, its timers and --loopwatch's watchdogs, which a loaded machine makes
    vary); returns the seconds waited."""
    started = time.monotonic()
    while True:
        busy = background_work(pids_of(), client)
        if not busy and tree_cpu_ms(pids_of, SETTLE_WINDOW_S) < 2 * idle_ms + SETTLE_CPU_MS:
            return time.monotonic() - started
        if busy:
            time.sleep(SETTLE_WINDOW_S)
        if time.monotonic() - started > SETTLE_TIMEOUT_S:
            print(f"{what}: not settled after {SETTLE_TIMEOUT_S:.0f} s ({busy or 'CPU'}); measuring anyway",
                  file=sys.stderr)
            return time.monotonic() - started


class System:
    def __init__(self, name: str, argv: list[str], port: int, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.port = port
        self.proc = start_group(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                redis.Redis(port=port, socket_timeout=1).set(PROBE_KEY, b"v")
                break
            except redis.RedisError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"{name} did not start: {argv}") from None
                time.sleep(0.1)
        self.client = redis.Redis(port=port, socket_timeout=SOCKET_TIMEOUT_S)
        self.running = multiprocessing.Event()
        self.asks = []  # one per probe: the first to see a shared one would clear it for both
        self.done = multiprocessing.Event()
        self.results: list[Connection] = []
        self.in_flight: list[Synchronized] = []
        self.probers = []
        for key in (PROBE_KEY, SAME_SHARD_PROBE_KEY):
            results, sender = multiprocessing.Pipe(duplex=False)
            ask = multiprocessing.Event()
            in_flight = multiprocessing.Value("d", 0.0, lock=False)
            prober = multiprocessing.Process(
                target=probe, args=(port, key, self.running, ask, self.done, sender, in_flight), daemon=True)
            self.asks.append(ask)
            prober.start()
            self.results.append(results)
            self.in_flight.append(in_flight)
            self.probers.append(prober)
        self.peak_rss = 0
        self.idle_ms = max(tree_cpu_ms(self.pids, SETTLE_WINDOW_S) for _ in range(3))  # probes not running yet
        self.loopwatch_out = ""  # DURAKV_LOOPWATCH_OUT of the tree (--loopwatch)
        self.py_spy = ""  # "", "python" or "native" (--py-spy)
        self.notes: list[str] = []  # per phase: settling, the worst stalls' CPU, py-spy dumps

    def pids(self) -> list[int]:
        return tree_pids(self.proc.pid)

    def timed(self, fn, name: str) -> tuple[float, tuple[float, ...], object]:
        """Run fn(client) on a settled tree: its seconds; max and p99 (ms) meanwhile of
        the probe of another shard and of the one of the same shard; its result."""
        settled_s = settle(self.pids, self.client, f"{self.name} before {name}", self.idle_ms)
        self.running.set()
        time.sleep(PROBE_RESUME_S)
        stop = threading.Event()
        samples: list[tuple[float, dict[str, float]]] = []
        dumps: list[str] = []
        spies: list[threading.Thread] = []

        def sample() -> None:
            while not stop.is_set():
                pids = tree_pids(self.proc.pid)
                self.peak_rss = max(self.peak_rss, rss_bytes(pids))
                samples.append((time.monotonic(), thread_cpu(pids)))
                if self.py_spy and not dumps and any(
                        v.value and (time.monotonic() - v.value) * 1000 > PYSPY_AFTER_MS for v in self.in_flight):
                    dumps.append("")  # one per phase, in its own thread: sampling goes on meanwhile
                    spies.append(threading.Thread(target=spy_into, args=(dumps, pids, self.py_spy), daemon=True))
                    spies[0].start()
                stop.wait(RSS_SAMPLE_S)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        time.sleep(2 * RSS_SAMPLE_S)  # a CPU sample before the phase
        start = time.monotonic()
        start_unix = time.time()  # loopwatch's lines carry unix times
        t0 = time.perf_counter()
        result = fn(self.client)
        seconds = time.perf_counter() - t0
        end = time.monotonic()
        time.sleep(2 * RSS_SAMPLE_S)  # and one after
        for ask in self.asks:
            ask.set()
        times = [array.array("d", results.recv_bytes()) for results in self.results]
        self.running.clear()
        stop.set()
        sampler.join()
        for spy in spies:
            spy.join(4 * PYSPY_TIMEOUT_S)
        stats: list[float] = []
        notes = [f"{self.name} {name}: settled in {settled_s:.1f} s; ran from unix time {start_unix:.3f} "
                 f"for {end - start:.3f} s"]
        for probe_name, probe_times in zip(("other-shard", "same-shard"), times):
            worst_ms, p99_ms, (w0, w1) = phase_stats(probe_times, start, end)
            stats += [worst_ms, p99_ms]
            busy = ", ".join(f"{title} {ms:.0f}" for ms, title in cpu_between(samples, w0, w1)[:4])
            notes.append(f"  {probe_name} worst {worst_ms:.0f} ms at {w0 - start:+.2f} s; CPU ms meanwhile: {busy}")
        if self.loopwatch_out:
            notes += loopwatch_summary(self.loopwatch_out, start_unix, start_unix + (end - start))
        notes += dumps
        self.notes.append("\n".join(notes))
        return seconds, tuple(stats), result

    def stop(self) -> None:
        self.done.set()
        for prober in self.probers:
            prober.join(timeout=5)
        stop_group(self.proc)


def loopwatch_summary(prefix: str, start_unix: float, end_unix: float) -> list[str]:
    """Per process of the tree, from its loopwatch lines stamped within the phase: the
    most CPU one loop turn or task step used (CPUTURN/CPUSTEP, logged above a third of
    the threshold) and the loop's lags (LAG: a callback waited past the threshold),
    which, when every process shows them at once, are the machine's, not a loop's."""
    out = []
    for path in sorted(glob.glob(f"{prefix}.*")):
        pid = path.rsplit(".", 1)[1]
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                title = " ".join(f.read().split(b"\0")[0].decode(errors="replace").split()[:3])
        except OSError:
            title = f"pid {pid}"
        cpu_ms, busiest, lags_ms = 0.0, "", []
        with open(path) as f:
            for line in f:
                fields = line.split()
                if len(fields) < 4 or line.startswith(" ") or not start_unix <= float(fields[0]) <= end_unix:
                    continue
                if fields[1] in ("CPUTURN", "CPUSTEP") and float(fields[3]) > cpu_ms:
                    cpu_ms, busiest = float(fields[3]), line.strip()
                elif fields[1] == "LAG":
                    lags_ms.append(float(fields[2]))
        out.append(f"  loopwatch {title}: longest turn/step CPU {cpu_ms:.1f} ms (0: none logged); "
                   f"{len(lags_ms)} lags, longest {max(lags_ms, default=0):.0f} ms"
                   + (f"; {busiest}" if busiest else ""))
    return out


def spy_into(dumps: list[str], pids: list[int], mode: str) -> None:
    dumps[0] = spy_dump(pids, mode)


def spy_dump(pids: list[int], mode: str) -> str:
    """py-spy dump of each shard and router of the tree (--py-spy)."""
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                title = f.read().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if title.startswith(("durakv shard ", "durakv router ")):
            dump = subprocess.run([PY_SPY, "dump", "--native" if mode == "native" else "--nonblocking",
                                   "--pid", str(pid)],
                                  capture_output=True, text=True, timeout=PYSPY_TIMEOUT_S)
            out.append(f"  py-spy dump of {title} ({pid}) at a probe request past {PYSPY_AFTER_MS:.0f} ms:\n"
                       + dump.stdout + dump.stderr)
    return "".join(out)


# The last raw_set's seconds: until the server had read all but its socket buffer, then until +OK.
SET_PHASES: list[float] = []


def raw_set(port: int, key: bytes, value: bytes) -> bytes:
    """SET over a plain socket, the value written from its own buffer: the client
    costs no copy, so the time is the server's."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        start = time.perf_counter()
        sock.sendall(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n" % (len(key), key, len(value)))
        sock.sendall(value)
        sock.sendall(b"\r\n")
        sent = time.perf_counter()
        reply = read_line(sock)
        SET_PHASES[:] = [sent - start, time.perf_counter() - sent]
        return reply


def raw_get(port: int, key: bytes, into: bytearray) -> int:
    """GET over a plain socket into a buffer allocated beforehand; returns the size."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key))
        header = read_line(sock)
        if header[:1] != b"$":
            raise RuntimeError(f"GET answered {header[:200]!r}")
        size = int(header[1:])
        view = memoryview(into)[: size + 2]
        have = 0
        while have < size + 2:
            got = sock.recv_into(view[have:])
            if not got:
                raise RuntimeError(f"connection closed after {have} of {size} bytes")
            have += got
        return size


def last_sync_ms(client: redis.Redis) -> str:
    """Each shard's last write+fsync (INFO persistence shardN:...last_fsync_us=)."""
    info = client.info("persistence")
    return ", ".join(f"{name} {value['last_fsync_us'] / 1000:.0f} ms" for name, value in info.items()
                     if isinstance(value, dict) and "last_fsync_us" in value)


def read_line(sock: socket.socket) -> bytes:
    line = b""
    while not line.endswith(b"\r\n"):
        byte = sock.recv(1)
        if not byte:
            raise RuntimeError(f"connection closed in a reply line {line!r}")
        line += byte
    return line[:-2]


def load_keys(port: int, keys: int) -> None:
    """SET key:%012d to a small value for every key, pipelined over a plain socket."""
    with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT_S) as sock:
        reader = hiredis.Reader()
        for first in range(0, keys, KEYS_PIPELINE):
            last = min(keys, first + KEYS_PIPELINE)
            sock.sendall(b"".join(b"*3\r\n$3\r\nSET\r\n$16\r\nkey:%012d\r\n$1\r\nv\r\n" % i
                                  for i in range(first, last)))
            for _ in range(last - first):
                while (reply := reader.gets()) is False:
                    data = sock.recv(MIB)
                    if not data:
                        raise RuntimeError("connection closed while loading keys")
                    reader.feed(data)
                if isinstance(reply, hiredis.ReplyError):
                    raise RuntimeError(f"SET answered {reply}")


def raw_keys(port: int) -> int:
    """KEYS * with hiredis' C reader (redis-py's per-key objects would be most of the
    time); returns how many keys came."""
    with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT_S) as sock:
        sock.sendall(b"*2\r\n$4\r\nKEYS\r\n$1\r\n*\r\n")
        reader = hiredis.Reader()
        while (reply := reader.gets()) is False:
            data = sock.recv(MIB)
            if not data:
                raise RuntimeError("connection closed in the KEYS reply")
            reader.feed(data)
        return len(reply)


def build_list(client: redis.Redis, elements: int) -> None:
    client.delete(LIST_KEY)
    pipe = client.pipeline(transaction=False)
    for start in range(0, elements, LIST_PUSH_BATCH):
        pipe.rpush(LIST_KEY, *(b"element-%d" % i for i in range(start, min(start + LIST_PUSH_BATCH, elements))))
        if len(pipe) >= 10:
            pipe.execute()
    pipe.execute()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--list-elements", type=int, default=1_000_000)
    parser.add_argument("--keys", type=int, default=1_000_000, help="then KEYS * over this many keys (0: skip)")
    parser.add_argument("--idle-s", type=float, default=IDLE_WINDOW_S,
                        help="the idle phase's length (the probes' baseline; the tests' quick run shortens it)")
    parser.add_argument("--redis-appendfsync", choices=("no-aof", "always"), default="no-aof",
                        help="redis-server without an AOF (default), or with appendonly yes, appendfsync always: "
                             "durakv's durability")
    parser.add_argument("--py-spy", choices=("python", "native"),
                        help=f"py-spy dump the shards and routers once per phase, when a probe waits "
                             f"{PYSPY_AFTER_MS:.0f} ms: python (--nonblocking: Python stacks, no pause) or "
                             "native (--native: C frames too, but py-spy pauses each process while it reads)")
    parser.add_argument("--loopwatch", type=float, metavar="MS",
                        help="run the tree with scripts/loopwatch at this threshold (a summary per phase)")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="durakv-large-")
    env = None
    if args.loopwatch:
        here = os.path.dirname(os.path.abspath(__file__))
        env = {**os.environ, "DURAKV_LOOPWATCH_MS": str(args.loopwatch),
               "DURAKV_LOOPWATCH_OUT": os.path.join(tmp, "loopwatch"),
               "PYTHONPATH": os.pathsep.join(filter(None, [os.path.join(here, "loopwatch"),
                                                           os.environ.get("PYTHONPATH")]))}
    systems: list[System] = []
    try:
        port = free_port()
        systems.append(System("durakv", [sys.executable, "-m", "durakv.server.cli", "serve", "--port", str(port),
                                         "--shards", "2", "--data-dir", os.path.join(tmp, "data")], port, env))
        systems[0].py_spy = args.py_spy
        systems[0].loopwatch_out = env["DURAKV_LOOPWATCH_OUT"] if env else ""
        port = free_port()
        aof = (["--appendonly", "yes", "--appendfsync", "always"] if args.redis_appendfsync == "always"
               else ["--appendonly", "no"])
        systems.append(System("redis", ["redis-server", "--port", str(port), "--save", "", *aof, "--dir", tmp], port))
        rows = []
        phases: list[str] = []
        # The probe's worst latency while nothing else runs: on a loaded machine the
        # stalls below are only the operations' to the extent they exceed this.
        idle = f"idle, {args.idle_s:g} s (probe baseline)"
        rows.append((idle, [system.timed(lambda c: time.sleep(args.idle_s), idle)[:2] for system in systems]))
        for size_mb in args.sizes_mb:
            value = os.urandom(MIB) * size_mb
            into = bytearray(len(value) + 2)  # allocated (and zeroed) before the clock starts
            for op in ("SET", "GET"):
                cells = []
                for system in systems:
                    if op == "SET":
                        seconds, stats, reply = system.timed(
                            lambda c, port=system.port, v=value: raw_set(port, BIG_KEY.encode(), v),
                            f"{op} {size_mb} MiB")
                        assert reply == b"+OK", f"{system.name}: SET answered {reply!r}"
                        phases.append(f"{system.name} {SET_PHASES[0]:.3f} s sending + {SET_PHASES[1]:.3f} s to +OK"
                                      + (f" (the shards' last write+fsync: {last_sync_ms(system.client)})"
                                         if system.name == "durakv" else ""))
                    else:
                        into[:] = bytes(len(into))
                        seconds, stats, size = system.timed(
                            lambda c, port=system.port, buf=into: raw_get(port, BIG_KEY.encode(), buf),
                            f"{op} {size_mb} MiB")
                        assert size == len(value) and into[:size] == value, f"{system.name}: GET gave other bytes"
                    cells.append((seconds, stats))
                rows.append((f"{op} {size_mb} MiB", cells))
            del value, into
            for system in systems:
                system.client.delete(BIG_KEY)
        if args.list_elements:
            for system in systems:
                build_list(system.client, args.list_elements)
            cells = []
            name = f"LRANGE 0 -1 of {args.list_elements} elements"
            for system in systems:
                seconds, stats, got = system.timed(lambda c: c.lrange(LIST_KEY, 0, -1), name)
                assert len(got) == args.list_elements, f"{system.name}: LRANGE returned {len(got)} elements"
                cells.append((seconds, stats))
            rows.append((name, cells))
        if args.keys:
            cells = []
            name = f"KEYS * over {args.keys} keys"
            for system in systems:
                load_keys(system.port, args.keys)
                seconds, stats, got = system.timed(lambda c, port=system.port: raw_keys(port), name)
                assert got >= args.keys, f"{system.name}: KEYS * returned {got} keys"
                cells.append((seconds, stats))
            rows.append((name, cells))
        print("| operation | durakv s | redis s | ratio | durakv other-shard probe max ms | p99 ms "
              "| durakv same-shard probe max ms | p99 ms | redis probe max ms | p99 ms |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name, ((d_s, d), (r_s, r)) in rows:
            print(f"| {name} | {d_s:.3f} | {r_s:.3f} | {d_s / r_s:.1f}x | {d[0]:.1f} | {d[1]:.1f} | {d[2]:.1f} "
                  f"| {d[3]:.1f} | {r[0]:.1f} | {r[1]:.1f} |")
        for line in phases:
            print(f"SET phases: {line}")
        print(f"redis-server: {args.redis_appendfsync}; load average {os.getloadavg()[0]:.1f}")
        print(f"peak RSS: durakv {systems[0].peak_rss / MIB:.0f} MiB (all processes), "
              f"redis {systems[1].peak_rss / MIB:.0f} MiB")
        print("Per phase, each probe's worst stall and the threads that used CPU during it:")
        for note in systems[0].notes:
            print(note)
    finally:
        for system in systems:
            system.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
