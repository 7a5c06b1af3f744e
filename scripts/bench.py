#!/usr/bin/env python3
"""durakv against Debian's redis-server, side by side, with redis-benchmark;
writes BENCHMARKS.md.

Why this shape: throughput on a shared machine drifts, so the only figure worth
keeping is a ratio measured in one sitting. All servers run at once and the
systems take turns on every workload, round after round (durakv, redis,
redis-aof, durakv, ...); the report shows medians. durakv is measured on both
paths: through its router (plain clients) and on the shards' own ports
(`redis-benchmark --cluster`, "durakv-cluster"); redis-server stays non-cluster. Besides throughput and
latency it records CPU time per command of durakv's router and shards (from
/proc) and how many commands the router packs into one shard frame (INFO
stats), which is what the router costs.

Every process this script starts runs in its own session and is killed on any
exit: normal, error, Ctrl-C, SIGTERM, or (via PR_SET_PDEATHSIG) SIGKILL of this
script.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import ctypes
import functools
import io
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, UTC
from pathlib import Path

import hiredis

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
sys.path.insert(0, str(SCRIPTS))
from load import sync_command  # noqa: E402
from bench_sections import owned_sections  # noqa: E402
from proctools import free_port, start_group, stop_group  # noqa: E402

CLIENTS = 50
VALUE_BYTES = 100
PIPELINES = (1, 16)
PIPELINED_REQUESTS_FACTOR = 10
# redis-benchmark --cluster runs threaded, and a threaded run notices its end only at
# its 250 ms throughput tick: the elapsed time it divides by is rounded up to 250 ms
# (a 40,000-request SET at ~38k/s read 31.9k/s; a 500-request run against a real
# 3-node Redis Cluster read 1,960/s). So a cluster run is sized from the last round's
# rate to last CLUSTER_RUN_S at least (understated by at most 250 ms of it: ~6%).
CLUSTER_RUN_S = 4.0
CLUSTER_FIRST_RUN_FACTOR = 5  # the first round has no rate yet
READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0
BENCHMARK_TIMEOUT_S = 1800.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1

# Targets from the issues (not test assertions): workload -> minimum ratio.
# Issue 11's targets: GET against redis-server without persistence, durable SET against
# redis-server with appendfsync always; the router path (plain clients) and the shard
# ports (cluster clients).
TARGETS_VS_REDIS = {("get", 1): 0.7, ("get", 16): 0.25}
TARGETS_VS_AOF = {("set", 1): 0.6, ("set", 16): 0.4}
TARGET_P99_VS_AOF = 2.5
CLUSTER_TARGETS = {("get", 1): 0.8, ("get", 16): 0.4, ("set", 1): 1.0, ("set", 16): 0.6}
CLUSTER_TARGET_P99 = 2.0
# Where the time goes, from the profiles behind issue 11 (py-spy and per-phase counters);
# printed under the CPU table so the figures above are read with it.
PROFILE_NOTES = [
    "- Router, GET P1 (py-spy): about 72% of its time is system calls, a quarter each for the "
    "client's send, the send to the shard and epoll; Python is 3-4 µs of the ~20 µs. The hop "
    "itself is the cost: cluster clients skip it on the shard ports.",
    "- Router, P16: request parsing was about 18%; a pipeline of plain requests is now parsed by "
    "hiredis (shards/resp.py's fast path: 2.0 -> 0.8 µs per SET, 1.5 -> 0.5 per GET), which took "
    "router CPU per command at P16 from 6.8-7.2 to 6.0 µs (GET) and 8.2-8.3 to 6.6-7.0 µs (SET), "
    "and a shard port's from 14.8-16.2 to 12.6-12.9 µs per SET (scripts/cpu_bench.py, loaded machine).",
    "- Shard, durable SET P1: the kernel's write + fdatasync on an appended segment costs 61-70 µs "
    "of CPU per fsync and 3.4-3.6 context switches of the commit thread (a journal commit for the "
    "size change); over preallocated, zeroed space 46 µs and 2.1-2.3 (log_bench-style micro, "
    "quiet moment). The write and the sync are one pwritev2(RWF_DSYNC) now. In-process "
    "(scripts/commit_bench.py) a SET's own bookkeeping (record, hazards, held replies) is ~1.1 µs "
    "over a GET; the rest of the gap is per fsync: waking the commit thread (a futex wake with the "
    "GIL held: py-spy puts ~10% of the loop's GIL time in CommitThread.wake), its GIL handoffs and "
    "the eventfd wakeup back. Tried and dropped: waking the thread through an eventfd written "
    "without the GIL (no gain measurable on the shared machine, worse in-process). "
    "Not done: preallocated segments (a log format change; the power-loss test disk journals "
    "sizes), io_uring for the write + fsync (no commit thread, no GIL handoffs).",
    "- Session 6 (hot path): what session 5 added per command (ACL, tracking, MONITOR, pause, "
    "reply modes, counters, the latency histogram, keyspace hit counts) is one attribute test or a "
    "counter each; making commandstats and the histogram cheaper took ~1% of a shard port's "
    "instructions per command. No CPU figure reproduced the 0.96x -> 0.76x drop: scripts/cpu_bench.py "
    "on the commit before those features (4a5816f) measured no lower than on session 5's last "
    "(the machine was loaded; throughput ratios moved with the load). What was cut: per turn, the "
    "task wakeups between the poller, the link sender (router), the node's batch task and the "
    "flusher: a turn's requests are written or executed at the end of the poller's turn "
    "(Front.end_turn, ShardLink.send_now, ShardNode.end_turn), a shard writes its replies from "
    "RouterConn.send, a node writes fsync-released replies from LocalLink.send; per command, "
    "commandstats and the latency histogram inline, no flush of a client whose replies are not in. "
    "scripts/node_bench.py under callgrind (instructions per command, deterministic): GET P1 "
    "88.8k -> 84.2k, GET P16 47.4k -> 46.1k (driver included). Before a batch a shard takes "
    "the news of a sync that ended while it was busy (GroupCommit.catch_up_durable), so held "
    "replies leave a turn sooner and the committer task is not woken for it.",
    "- Shard, per fsync (session 6): cProfile of node_bench SET P1 under load puts the loop's "
    "largest wall-time item in CommitThread.wake (the lock release: the loop loses the GIL to "
    "the commit thread, which takes it three times per sync: after its wake, after "
    "pwritev2, after the eventfd write). A Python commit thread cannot do fewer; without a C "
    "extension the ways out are no thread (the loop syncs when it has nothing else to run, as "
    "Redis does, at the cost of reads waiting behind an fsync) or Linux AIO through ctypes "
    "(IOCB_CMD_FDSYNC with an eventfd: no thread, no GIL handoff; not tried).",
    "- Shard, per fsync (session 7): a shard whose loop is idle syncs its log itself "
    "(shards/idle_sync.py: trio's wait_all_tasks_blocked, then one pwritev2(RWF_DSYNC) with the GIL "
    "released, replies released in the same turn), while the disk syncs in under 500 µs; otherwise, "
    "or when the loop is busy, the commit thread as before. A/B against the previous commit, both "
    "trees at once, redis-benchmark -c 50 -n 20000, 3 alternating rounds, load 25-27: with the data "
    "dir on tmpfs shard CPU per durable SET P1 fell 66.5/46.5 -> 59.5/44.0 µs (shard ports) and 48.0 "
    "-> 40.0 µs (router path), 3x as many SETs per fsync (6 -> 19); on the shared disk under load "
    "15-20 (several ms per fsync) syncing in the loop lost 15-30% of SET P1 throughput at the same "
    "CPU per command (no overlap with the next batch), hence the 500 µs rule, which keeps that case "
    "on the thread. callgrind (node_bench set1, 10 clients, driver included): 121.1k -> 128.7k "
    "instructions per SET; GET 85.7k -> 85.4k: the handoffs saved are kernel and scheduler time, "
    "which callgrind does not count, and the idle wait costs a task switch and trio's idle "
    "bookkeeping per sync. node_bench (loop + commit thread CPU) at load 2.8: SET1 30.0 -> 20.1 µs, "
    "GET1 16.8 -> 13.7 µs (1.79x -> 1.47x); at load 10-13 the same comparison was within noise.",
    "- Shard, per durable SET (session 8): scripts/commit_phases.py splits a shard's loop CPU per "
    "command by phase (25 clients, data on tmpfs so every sync is in the loop, load 10): SET 32.3 "
    "against GET 19.5 µs (1.66x); what a SET adds: the SET itself (keyspace put, effect, hazard mark) "
    "+2.0 µs, record encoding and Log.append 0.8 µs, the sync 1.1 µs (tmpfs: no disk), the release "
    "of held replies 0.7 µs, and ~6 µs of task switches per fsync (the idle task, trio's "
    "zero-timeout poll, a second flush pass). On the disk a sync goes to the commit thread: a SET "
    "costs 38-39 µs against 19-20 per GET. Tried and dropped: syncing at the end of the turn that "
    "read the batch (redis' beforeSleep) cut a shard port's CPU per SET on tmpfs 26.7 -> 22.5 µs and "
    "callgrind's SET1 130.8k -> 107.6k instructions, but lost throughput on the disk (bench.py, "
    "quiet machine, two rounds each alternating: durable SET P1 vs redis always, shard ports "
    "0.93x/0.78x without it, 0.62x/0.71x with it; router 0.74x/0.67x vs 0.58x/0.58x): the sync in "
    "the loop gives up the overlap of one sync with the next batch. SETs per fsync at c=50: 31-37 "
    "on one shard, redis-server's 27. What a sync itself costs (scripts/sync_probe.py, 3 KB "
    "records, shared disk, load 20-23, CPU µs / wall ms per sync): pwritev2(RWF_DSYNC) appending "
    "88-159 / 1.3-4.8, over preallocated zeroed space 46-93 / 0.85-1.9, through a Python commit "
    "thread 102-169 of process CPU (13-19 of them the loop's), buffered pwritev + Linux AIO "
    "IOCB_CMD_FDSYNC 37-89. Done since: preallocated log segments (zeroed 1 MiB ahead by the "
    "syncing thread, records written in place; log/FORMAT.md): shard-port durable SET P1 0.59/0.58x "
    "-> 0.70/0.75x, P16 0.37/0.44x -> 0.60/0.61x of redis always (two bench.py rounds each, quiet). "
    "Not done: AIO fsync in place of the commit thread (no GIL handoffs).",
    "- Shard, durable SET via Linux AIO (session 9, tried, not merged): the loop wrote the pending records "
    "with one buffered pwrite into the preallocated zeros and submitted IOCB_CMD_FDSYNC (caio's linux_aio), "
    "its completion on an eventfd trio waited on: no commit-thread handoff. Per sync (3 KB records, load "
    "24): 32-40 us of process CPU against 93-111 through the thread (the fdatasync's kernel CPU moves to a "
    "kernel worker that no process is charged for), wall 1.0-1.6 against 1.9-2.5 ms; io_uring (caio's "
    "linux_uring) runs its fsync on an in-process io-wq thread: 92-111 us, no gain. callgrind (node_bench "
    "set1, 10 clients) 127.9k -> 118.5k instructions per SET. But in a tree on this disk (both trees and "
    "redis always at once, load 15-27) it gathered 13-15 SETs per fsync against 17-22 and made shard-port "
    "durable SET P1 0.43-0.58x of redis always against 0.63-0.90x through the thread and idle loop: the "
    "idle loop's inline fast syncs hold the loop and so gather more requests per fsync, and the fsync rate "
    "bounds P1 here. The loop's own CPU per SET (commit_phases.py: 18.5-19.7 us against 8.7-9.1 per GET) "
    "is the same with or without AIO, so the handoff is not where the SET/GET gap is.",
    "- Session 9 A/B (quiet, alternating trees of session 8's end and session 9's, `bench.py --rounds 1` "
    "twice each): router GET P1 49.4k/45.0k (before) vs 37.2k/48.7k (after), router SET P1 27.8k/28.1k vs"
    " 28.3k/26.8k, router SET P16 136.8k/122.1k vs 116.7k/124.2k; shard ports identical (GET P1 53.3k, "
    "SET P1 31.9k, SET P16 177k both). The router path's rounds spread 20-25% on this 2-core machine "
    "(three processes share two cores: where the kernel places them decides), the shard ports' under 1%. "
    "Instructions per command (callgrind, 10 clients): router get1 +0.7%, set1 +0.8%, get16 +0.1%; shard "
    "port get1 +1.0%, set1 +1.1%, set16 +1.8%, get16 +0.4% (the script fence's and output window's "
    "checks, lazy free of big values on overwrite). Tried and not merged: a level-triggered wait that "
    "kept trio from re-arming a socket with epoll_ctl at every wakeup (router GET P1 9 -> 7 system calls,"
    " shard SET P1 8.1 -> 7.4) showed no CPU difference within this noise and relied on trio's private "
    "epoll internals.",
    "- Output limit (session 7, issue 13): a client pipelining GETs of a 100 KB value had up to 256 "
    "replies (25 MB) in flight on the shard link before its output backed up (the in-flight byte "
    "bound was only checked once output was queued), and every other client's reply on that link "
    "waited behind them; now the bound holds from the first request. The router's shard link decodes "
    "replies straight from its receive buffer (no copy of each frame). scripts/output_limit.py "
    "--durakv --slow-clients 10, old and new alternating, load 11-14: other client's GET during p99 "
    "518/404 ms -> 49/39 ms, max 737/453 -> 79/53 ms (idle p99 at that load 0.7-35 ms); not yet "
    "within 2x idle on this loaded machine.",
    "- Router per command (session 8, issue 11 §3): scripts/router_bench.py runs a real Router and its "
    "Clients in-process against stand-in shards (deterministic under callgrind, with a per-phase split). "
    "GET P1, 50 clients, 12.2 µs/cmd at load 10: reading, parsing and dispatch 5.6 (the recv ~2, the "
    "parse 1.3, dispatch and submit 1.0), the frame to each shard 0.4, the link's receive and the replies"
    " 6.3 (the client's send ~4). A real router at GET P1 makes 2.3 system calls per command (strace -c: "
    "1.07 sendto, 1.05 recvfrom, 0.10 epoll_wait, 0.09 epoll_ctl; ~14 commands per turn): the client's "
    "recv and send are the floor at P1; py-spy puts 37% of its samples in the send to a shard "
    "(ShardLink.send_now), 16% in the clients' sends, 31% in epoll and ~12% in Python, and it is "
    "preempted ~0.1 times per command (the send that wakes a shard hands it the CPU). Cut: a short read "
    "(one request) is parsed by one split at CRLF with its headers checked canonical (shards/resp.py "
    "_parse_small: 1.9 -> 1.3 µs per GET), a single-key command is routed before the other dispatch "
    "checks, the in-flight cap and the poller interest are not recomputed when unchanged. callgrind "
    "(router_bench, 10 clients, driver included): GET P1 82.2k -> 74.7k, SET P1 89.9k -> 80.4k, GET P16 "
    "32.3k -> 31.5k, SET P16 36.7k -> 35.8k instructions per command. One frame per shard per turn holds;"
    " one send per client per turn does not for a pipeline over both shards (1.3-1.4 sends per pipeline: "
    "each link's frame flushes the replies it completed), ~0.1 µs per command at P16. Not tried: handing "
    "the shard links to the client poller's epoll (no task wakeup per link read) and shard processes in "
    "SCHED_BATCH (no wakeup preemption of the router; A/B at load 20 was noise).",
    "- Shard port, durable SET P1 (session 10): the sync runs at the end of the client poller's turn "
    "that appended when a zero-timeout epoll of the poller's own set finds no client ready "
    "(shards/idle_sync.py IdleSync.end_of_turn, redis' beforeSleep), under the same fast-disk and size "
    "rules, instead of rescheduling the idle task and waiting for trio's wait_all_tasks_blocked (a task "
    "switch, trio's idle bookkeeping, two more scheduler passes with a zero-timeout epoll_wait per "
    "sync: epoll_wait calls per SET 0.31 -> 0.11 at 10 SETs per sync). callgrind (node_bench, 10 "
    "clients, data on tmpfs so every sync stays in the loop): set1 124.1-124.2k -> 101.1-103.2k "
    "instructions per SET (SET/GET 1.48x -> 1.21-1.23x), get1 83.6-83.7k -> 83.8-84.0k; with 3 clients "
    "(3 SETs per sync, so per-sync costs weigh more) set1 202.4k -> 128.1k, get1 87.65k -> 87.74k "
    "(SET/GET 2.31x -> 1.46x). node_bench CPU (25 clients, "
    "tmpfs, load 14-22, best of 3 rounds, three alternations): SET1 24.6-26.9 -> 21.5-23.3 µs; GET1 "
    "alone (5 rounds, three alternations, load 16-20) 14.6-15.8 -> 14.6-14.7 µs. What a SET still adds over a "
    "GET, in bytecodes per command (sys.settrace opcode counts of node_bench, 10 SETs per batch): "
    "the third argument in the parser +46; the SET itself (put with its access stamp, effect, the "
    "dirty mark, notify) ~180 against GET's ~86; per batch the record (append_effects, encode, "
    "Log.append, whose checks are ~290 of ~400) and per sync Log.sync ~350 plus ~100 to release the "
    "held replies: each a small share, none removable without changing the log's checks; the rest "
    "is C (the split of a 100-byte value, pwritev2). SETs per fsync at c=50 on the shared disk (load "
    "16-22, scripts/set_p1_ab.py, perf's syscall tracepoints): 15-18 per shard of its 25 clients "
    "against redis-server's 26-28 of 50; each shard syncs its own log, so a durakv SET costs ~1.6x "
    "redis' fsyncs, but each is cheaper (written in place over preallocated zeros: perf trace p50 / "
    "p90 / p99 0.8 / 5.8 / 17 ms against redis' appending 3.1 / 11 / 26 ms). With syncs over 500 µs "
    "(INLINE_SYNC_SLOW_US) the commit thread syncs as before: 26-27% of syncs ran at a turn's end "
    "in that run, 79-96% with the data on tmpfs. A/B on the disk (3 rounds, load 15-18, medians): "
    "shard-port SET P1 0.91x of redis always against 0.83x before, 17.7 against 19.7 SETs per fsync "
    "(a turn's end comes sooner than trio's idle), 22% against 15% of syncs in the loop; rounds "
    "spread 30%, so that is noise until re-measured on a quiet machine (scripts/set_p1_ab.py "
    "--base OTHER_CHECKOUT; session 8's unconditional turn-end sync lost throughput there).",
    "- Large values and big replies: see scripts/large_values.py and scripts/big_replies.py; "
    "LRANGE of 5M elements is bounded by encoding on the shard and the copy through the router.",
]
# Issue 4's pipelined mixed benchmark: redis-benchmark's own tests per data type.
MIXED_TESTS = ("lpush", "lpop", "hset", "sadd", "spop", "zadd", "zpopmin", "lrange_100")
MIXED_PIPELINE = 16


class Interrupted(SystemExit):
    """A termination signal arrived; unwinding runs every cleanup."""


def _on_signal(signum: int, frame: object) -> None:
    raise Interrupted(128 + signum)


# The signals that stop the benchmark (main() installs their handlers).
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


def _die_with_us(mask: set[signal.Signals]) -> None:
    """preexec_fn: the child gets SIGTERM if this script dies, even by SIGKILL, and the
    signal mask ProcessGroups.start had before it held the stop signals (exec keeps it)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


class ProcessGroups:
    """Every process started here, each the leader of its own session, so
    killing its group also kills what it started."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, argv: list[str], **kwargs) -> subprocess.Popen:
        """Start argv with the stop signals held back until it is in self.procs: with a
        preexec_fn, Popen forks running Python's at-fork callbacks (logging's lock
        release), and the KeyboardInterrupt a Ctrl-C raises inside one is printed as
        "Exception ignored" and lost: the benchmark went on as if never interrupted.
        Held, the signal arrives once the mask is restored, outside any callback."""
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            proc = start_group(argv, preexec_fn=functools.partial(_die_with_us, mask), **kwargs)
            self.procs.append(proc)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        stop_group(proc, STOP_GRACE_S)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)
        self.procs.clear()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads, dead ones included)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children(ppid: int) -> dict[int, str]:
    """pid -> command line of the direct children of ppid."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            if parent != ppid:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                found[int(entry)] = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
    return found


@dataclass
class Server:
    """A running server: name, port, how it was started, where its CPU goes."""

    name: str
    argv: list[str]
    shown_argv: str  # argv as the report shows it: no temp paths
    port: int
    proc: subprocess.Popen
    log_path: Path
    tests: tuple[str, ...]
    bench_port: int = 0  # where redis-benchmark connects (0: port); INFO is always read from port
    cluster: bool = False  # redis-benchmark --cluster (durakv's shard ports)

    def cpu_by_role(self) -> dict[str, float]:
        """CPU seconds so far, by role: durakv's 'router'/'shard' children, or 'server'."""
        if not self.name.startswith("durakv"):
            return {"server": cpu_seconds(self.proc.pid)}
        roles = {"router": 0.0, "shard": 0.0}
        for pid, title in children(self.proc.pid).items():  # process titles: `durakv shard 1 DIR`
            for role in roles:
                if title.startswith(f"durakv {role} "):
                    roles[role] += cpu_seconds(pid)
        return roles

    def info_stats(self) -> dict[str, int]:
        reply = sync_command("127.0.0.1", self.port, b"INFO", b"stats", b"persistence")
        if isinstance(reply, hiredis.ReplyError):
            return {}
        stats = {}
        for line in reply.decode().splitlines():
            key, _, value = line.partition(":")
            if value.strip().isdigit():
                stats[key] = int(value)
        return stats


def wait_ready(server: Server, probe: tuple[bytes, ...], ok: bytes) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.proc.returncode}:\n{tail(server.log_path)}")
        try:
            reply = sync_command("127.0.0.1", server.port, *probe, timeout_s=2.0)
            if not isinstance(reply, hiredis.ReplyError) and ok in reply:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{server.name} not ready after {READY_TIMEOUT_S:g}s:\n{tail(server.log_path)}")


def tail(path: Path, max_bytes: int = 4000) -> str:
    data = path.read_bytes() if path.exists() else b""
    return data[-max_bytes:].decode(errors="replace")


def shown(argv: list[str], tmp: Path) -> str:
    return shlex.join(["python" if a == sys.executable else a for a in argv]).replace(str(tmp), "$TMP")


def start_durakv(groups: ProcessGroups, tmp: Path, opts: argparse.Namespace) -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "durakv.server.cli", "serve", "--port", str(port), "--shards", str(opts.shards),
            "--routers", str(opts.routers), "--data-dir", str(tmp / "durakv-data")]
    log_path = tmp / "durakv.log"
    with open(log_path, "wb") as log:
        proc = groups.start(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    server = Server("durakv", argv, shown(argv, tmp), port, proc, log_path, ("set", "get"))
    wait_ready(server, (b"CLUSTER", b"INFO"), b"cluster_state:ok")
    return server


def durakv_shard_ports(server: Server) -> Server:
    """The same durakv, measured as a cluster client sees it: redis-benchmark
    --cluster bootstraps from shard 0's port (the default shard-port-base: port + 1)
    and sends each command straight to the shard owning its slot."""
    return Server("durakv-cluster", server.argv, server.shown_argv, server.port, server.proc, server.log_path,
                  ("set", "get"), bench_port=server.port + 1, cluster=True)


def start_redis(groups: ProcessGroups, tmp: Path, name: str, persistence: list[str],
                tests: tuple[str, ...]) -> Server:
    port = free_port()
    workdir = tmp / name
    workdir.mkdir()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", *persistence,
            "--dir", str(workdir)]
    log_path = tmp / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = groups.start(argv, stdout=log, stderr=subprocess.STDOUT)
    server = Server(name, argv, shown(argv, tmp), port, proc, log_path, tests)
    wait_ready(server, (b"PING",), b"PONG")
    return server


@dataclass
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_cmd: dict[str, float] = field(default_factory=dict)
    cmds_per_frame: float | None = None
    fsyncs_per_s: float | None = None
    cmds_per_fsync: float | None = None


def cluster_requests(earlier: list[Run] | None, requests: int) -> int:
    """-n for a redis-benchmark --cluster run: enough to last CLUSTER_RUN_S at the
    rate of the earlier rounds (see CLUSTER_RUN_S), never fewer than `requests`."""
    if not earlier:
        return requests * CLUSTER_FIRST_RUN_FACTOR
    return max(requests, int(max(r.rps for r in earlier) * CLUSTER_RUN_S))


def benchmark_argv(port: int, test: str, pipeline: int, requests: int, key_space: int,
                   cluster: bool = False) -> list[str]:
    return ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), *(["--cluster"] if cluster else []),
            "-t", test, "-c", str(CLIENTS), "-P", str(pipeline), "-d", str(VALUE_BYTES), "-r", str(key_space),
            "-n", str(requests), "--csv"]


def run_benchmark(groups: ProcessGroups, server: Server, test: str, pipeline: int, requests: int,
                  key_space: int) -> Run:
    argv = benchmark_argv(server.bench_port or server.port, test, pipeline, requests, key_space, server.cluster)
    cpu_before = server.cpu_by_role()
    stats_before = server.info_stats() if server.name.startswith("durakv") else {}
    started = time.monotonic()
    proc = groups.start(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=BENCHMARK_TIMEOUT_S)
    finally:
        groups.stop(proc)
        groups.procs.remove(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} exited with {proc.returncode}: {err.decode(errors='replace')}")
    text = out.decode()
    # --cluster first lists the nodes it found: the CSV starts at its header.
    header = text.find('"test"')
    rows = list(csv.DictReader(io.StringIO(text[header:] if header >= 0 else text)))
    # LRANGE_* first prints the LPUSH that fills the list: the test's own row is last.
    if not rows or float(rows[-1]["rps"]) <= 0:
        raise RuntimeError(f"{shlex.join(argv)} printed no result:\n{out.decode()}{err.decode()}")
    row = rows[-1]
    cpu_after = server.cpu_by_role()
    cpu = {role: (cpu_after[role] - cpu_before.get(role, 0.0)) * 1e6 / requests for role in cpu_after}
    elapsed_s = time.monotonic() - started
    per_frame = fsyncs_per_s = per_fsync = None
    if stats_before:
        stats_after = server.info_stats()
        frames = stats_after.get("shard_frames_sent", 0) - stats_before.get("shard_frames_sent", 0)
        sent = stats_after.get("shard_requests_sent", 0) - stats_before.get("shard_requests_sent", 0)
        per_frame = sent / frames if frames > 0 else None
        fsyncs = stats_after.get("log_fsyncs", 0) - stats_before.get("log_fsyncs", 0)
        if fsyncs > 0:
            fsyncs_per_s = fsyncs / elapsed_s
            per_fsync = requests / fsyncs
    return Run(float(row["rps"]), float(row["p50_latency_ms"]), float(row["p99_latency_ms"]), cpu, per_frame,
               fsyncs_per_s, per_fsync)


@dataclass
class Summary:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_cmd: dict[str, float]
    cmds_per_frame: float | None
    all_rps: list[float]
    fsyncs_per_s: float | None
    cmds_per_fsync: float | None


def summarize(runs: list[Run]) -> Summary:
    frames = [r.cmds_per_frame for r in runs if r.cmds_per_frame is not None]
    roles = runs[0].cpu_us_per_cmd.keys()
    return Summary(
        statistics.median(r.rps for r in runs), statistics.median(r.p50_ms for r in runs),
        statistics.median(r.p99_ms for r in runs),
        {role: statistics.median(r.cpu_us_per_cmd[role] for r in runs) for role in roles},
        statistics.median(frames) if frames else None, [r.rps for r in runs],
        _median_of([r.fsyncs_per_s for r in runs]), _median_of([r.cmds_per_fsync for r in runs]))


def _median_of(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def machine_facts() -> dict[str, str]:
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    def version(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "unknown"
    commit = version(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]) or "unknown"
    if version(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"]):
        commit += " (with uncommitted changes)"
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    return {
        "CPU": model,
        "cores": f"{os.cpu_count()} ({len(os.sched_getaffinity(0))} usable by this run)",
        "kernel": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "redis-server": version(["redis-server", "--version"]),
        "redis-benchmark": version(["redis-benchmark", "--version"]),
        "durakv commit": commit,
        "load average at start": load,
    }


def fmt_ratio(value: float, target: float | None) -> str:
    if target is None:
        return f"{value:.2f}×"
    return f"{value:.2f}× ({'meets' if value >= target else 'below'} ≥{target:g}×)"


def render(opts: argparse.Namespace, command: str, facts: dict[str, str], servers: list[Server],
           results: dict[tuple[str, str, int], Summary], key_space: int, finished_load: str) -> str:
    requests = {p: opts.requests * (PIPELINED_REQUESTS_FACTOR if p > 1 else 1) for p in PIPELINES}
    out = ["# durakv benchmarks", "",
           "Generated by `scripts/bench.py`; rerun it instead of editing this file.", ""]
    if opts.quick:
        out += ["**QUICK RUN** (`--quick`): too small and too noisy to mean anything; it only shows "
                "that the harness works.", ""]
    out += [f"Command: `{command}`", "",
            f"Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}", "",
            "## Machine", "", "| | |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in facts.items()]
    out += [f"| load average at end | {finished_load} |", "", "## Method", ""]
    for server in servers:
        out.append(f"- {server.name}: `{server.shown_argv}`")
    argv = benchmark_argv(0, "TEST", 0, 0, key_space)
    shown = shlex.join(argv).replace("-p 0", "-p PORT").replace("-P 0", "-P PIPELINE").replace("-n 0", "-n N")
    out += [
        f"- each figure: `{shown}` with TEST in set/get, PIPELINE in {'/'.join(map(str, PIPELINES))}, "
        f"N = {requests[1]} unpipelined and {requests[16]} pipelined.",
        f"- all servers run at once; for each round and workload the systems take turns "
        f"({', '.join(s.name for s in servers)}); {opts.rounds} round(s); the tables show medians.",
        "- latency is redis-benchmark's per-request latency (for P16, of a request inside a pipeline).",
        "- CPU µs/command: utime+stime from /proc of each process during the run, divided by N.", "",
    ]

    def cell(s: Summary) -> str:
        return f"{s.p50_ms:.3f} / {s.p99_ms:.3f}"

    out += ["## durakv vs redis-server without persistence", "",
            "| workload | durakv ops/s | redis ops/s | ratio (target) | durakv p50 / p99 ms | redis p50 / p99 ms |",
            "|---|---:|---:|---|---:|---:|"]
    for test in ("get", "set"):
        for p in PIPELINES:
            d, r = results[("durakv", test, p)], results[("redis", test, p)]
            out.append(f"| {test.upper()} P{p} | {d.rps:,.0f} | {r.rps:,.0f} | "
                       f"{fmt_ratio(d.rps / r.rps, TARGETS_VS_REDIS.get((test, p)))} | {cell(d)} | {cell(r)} |")
    if ("durakv-cluster", "get", 1) in results:
        out += ["", "## durakv's shard ports (`redis-benchmark --cluster`) vs redis-server", "",
                "The same durakv, reached as a cluster client reaches it: CLUSTER SLOTS names the shards and "
                "each command goes straight to its shard's port, skipping the router. GET against redis-server "
                "without persistence, durable SET against redis-server with appendfsync always. "
                "`redis-benchmark --cluster` runs threaded and rounds its elapsed time up to its 250 ms tick, so "
                f"these runs are sized to last {CLUSTER_RUN_S:.0f} s or more (at most ~6% understated; until "
                "session 10 they ran as many requests as the others and read up to 20% low at P1).", "",
                "| workload | durakv shard ports ops/s | redis ops/s | ratio | durakv p50 / p99 ms "
                "| redis p50 / p99 ms | p99 ratio | router path ops/s |",
                "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for test in ("get", "set"):
            for p in PIPELINES:
                c, d = results[("durakv-cluster", test, p)], results[("durakv", test, p)]
                r = results[("redis" if test == "get" else "redis-aof", test, p)]
                p99 = f"{c.p99_ms / r.p99_ms:.2f}×" if r.p99_ms else "n/a"
                if test == "set" and r.p99_ms:
                    p99 += f" ({'meets' if c.p99_ms / r.p99_ms <= CLUSTER_TARGET_P99 else 'above'} " \
                           f"≤{CLUSTER_TARGET_P99:g}×)"
                out.append(f"| cluster {test.upper()} P{p} | {c.rps:,.0f} | {r.rps:,.0f} "
                           f"| {fmt_ratio(c.rps / r.rps, CLUSTER_TARGETS[(test, p)])} "
                           f"| {cell(c)} | {cell(r)} | {p99} | {d.rps:,.0f} |")
    out += ["", "## Durable SET: durakv vs redis-server with appendonly yes, appendfsync always", "",
            "| workload | durakv ops/s | redis-aof ops/s | ratio (target) | durakv p50 / p99 ms "
            "| redis-aof p50 / p99 ms | p99 ratio (target) | durakv fsyncs/s | SETs per fsync |",
            "|---|---:|---:|---|---:|---:|---|---:|---:|"]
    for p in PIPELINES:
        d, a = results[("durakv", "set", p)], results[("redis-aof", "set", p)]
        p99_ratio = d.p99_ms / a.p99_ms if a.p99_ms else float("inf")
        verdict = f"{'meets' if p99_ratio <= TARGET_P99_VS_AOF else 'above'} ≤{TARGET_P99_VS_AOF:g}×"
        fsyncs = f"{d.fsyncs_per_s:,.0f}" if d.fsyncs_per_s is not None else "n/a"
        per_fsync = f"{d.cmds_per_fsync:.1f}" if d.cmds_per_fsync is not None else "n/a"
        out.append(f"| SET P{p} | {d.rps:,.0f} | {a.rps:,.0f} | {fmt_ratio(d.rps / a.rps, TARGETS_VS_AOF[('set', p)])} "
                   f"| {cell(d)} | {cell(a)} | {p99_ratio:.2f}× ({verdict}) | {fsyncs} | {per_fsync} |")
    out += ["", "## Where durakv's CPU goes", "",
            "| workload | router CPU µs/cmd | shards CPU µs/cmd (all shards) | commands per shard frame "
            "| redis CPU µs/cmd |", "|---|---:|---:|---:|---:|"]
    for test in ("get", "set"):
        for p in PIPELINES:
            d, r = results[("durakv", test, p)], results[("redis", test, p)]
            frame = f"{d.cmds_per_frame:.1f}" if d.cmds_per_frame is not None else "n/a"
            out.append(f"| {test.upper()} P{p} | {d.cpu_us_per_cmd['router']:.1f} | {d.cpu_us_per_cmd['shard']:.1f} "
                       f"| {frame} | {r.cpu_us_per_cmd['server']:.1f} |")
            c = results.get(("durakv-cluster", test, p))
            if c is not None:
                out.append(f"| cluster {test.upper()} P{p} | {c.cpu_us_per_cmd['router']:.1f} "
                           f"| {c.cpu_us_per_cmd['shard']:.1f} | n/a (no router hop) "
                           f"| {r.cpu_us_per_cmd['server']:.1f} |")
    out += ["", "Where the time goes (profiles, not this run's figures):", "", *PROFILE_NOTES]
    if opts.mixed:
        out += ["", f"## Data types, pipelined (P{MIXED_PIPELINE}): durakv vs redis-server", "",
                "redis-benchmark's own per-type tests; durakv's writes are durable (fsync'd before the "
                "reply), so redis-aof (appendfsync always) is the like-for-like column.", "",
                "| test | durakv ops/s | redis ops/s | ratio | redis-aof ops/s | ratio vs aof |",
                "|---|---:|---:|---:|---:|---:|"]
        for test in MIXED_TESTS:
            d = results[("durakv", test, MIXED_PIPELINE)]
            r = results[("redis", test, MIXED_PIPELINE)]
            a = results[("redis-aof", test, MIXED_PIPELINE)]
            out.append(f"| {test.upper()} | {d.rps:,.0f} | {r.rps:,.0f} | {d.rps / r.rps:.2f}× | "
                       f"{a.rps:,.0f} | {d.rps / a.rps:.2f}× |")
    out += ["", "## Every run (ops/s, in round order)", "", "| system | workload | ops/s per round |",
            "|---|---|---|"]
    for (name, test, p), s in sorted(results.items()):
        out.append(f"| {name} | {test.upper()} P{p} | {', '.join(f'{v:,.0f}' for v in s.all_rps)} |")
    return "\n".join(out) + "\n"


def bench(opts: argparse.Namespace, groups: ProcessGroups, tmp: Path) -> str:
    command = "python scripts/bench.py " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "python scripts/bench.py"
    facts = machine_facts()
    durakv = start_durakv(groups, tmp, opts)
    servers = [
        durakv,
        durakv_shard_ports(durakv),
        start_redis(groups, tmp, "redis", ["--appendonly", "no"], ("set", "get") + MIXED_TESTS),
        start_redis(groups, tmp, "redis-aof", ["--appendonly", "yes", "--appendfsync", "always"],
                    ("set",) + MIXED_TESTS),
    ]
    key_space = opts.key_space
    runs: dict[tuple[str, str, int], list[Run]] = {}
    for round_no in range(1, opts.rounds + 1):
        for test in ("set", "get"):
            for p in PIPELINES:
                requests = opts.requests * (PIPELINED_REQUESTS_FACTOR if p > 1 else 1)
                for server in servers:
                    if test not in server.tests:
                        continue
                    n = cluster_requests(runs.get((server.name, test, p)), requests) if server.cluster else requests
                    run = run_benchmark(groups, server, test, p, n, key_space)
                    runs.setdefault((server.name, test, p), []).append(run)
                    if not opts.quiet:
                        print(f"round {round_no}/{opts.rounds} {test.upper()} P{p} {server.name}: "
                              f"{run.rps:,.0f} ops/s p50 {run.p50_ms} p99 {run.p99_ms} ms",
                              file=sys.stderr, flush=True)
        for test in MIXED_TESTS if opts.mixed else ():
            requests = opts.requests * PIPELINED_REQUESTS_FACTOR
            for server in servers:
                if server.cluster:
                    continue  # the per-type table compares the router path
                run = run_benchmark(groups, server, test, MIXED_PIPELINE, requests, key_space)
                runs.setdefault((server.name, test, MIXED_PIPELINE), []).append(run)
                if not opts.quiet:
                    print(f"round {round_no}/{opts.rounds} {test.upper()} P{MIXED_PIPELINE} {server.name}: "
                          f"{run.rps:,.0f} ops/s", file=sys.stderr, flush=True)
    with open("/proc/loadavg") as f:
        finished_load = " ".join(f.read().split()[:3])
    results = {k: summarize(v) for k, v in runs.items()}
    return render(opts, command, facts, servers, results, key_space, finished_load)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported")
    p.add_argument("--requests", type=int, default=100_000,
                   help=f"redis-benchmark -n for P1 (P16 runs {PIPELINED_REQUESTS_FACTOR}x as many)")
    p.add_argument("--key-space", type=int, default=100_000, help="redis-benchmark -r: keys spread over all slots")
    p.add_argument("--shards", type=int, default=os.cpu_count() or 1, help="durakv shard processes")
    p.add_argument("--routers", type=int, default=1, help="durakv router processes")
    p.add_argument("--quick", action="store_true", help="tiny run that only proves the harness works")
    p.add_argument("--no-mixed", dest="mixed", action="store_false",
                   help="skip the pipelined per-data-type workloads")
    p.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-run lines on stderr")
    opts = p.parse_args(argv)
    if opts.quick:
        opts.rounds, opts.requests, opts.key_space = 1, 2000, 1000
    if not 1 <= opts.rounds <= 100:
        p.error("--rounds must be between 1 and 100")
    if not 100 <= opts.requests <= 100_000_000:
        p.error("--requests must be between 100 and 100000000")
    if not 1 <= opts.key_space <= 100_000_000:
        p.error("--key-space must be between 1 and 100000000")
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    for tool in ("redis-server", "redis-benchmark"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            print(f"bench: {tool} not found (Debian: apt-get install redis-server redis-tools)", file=sys.stderr)
            return 2
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _on_signal)
    # Ctrl-C must work even when started with SIGINT ignored (a background job of a
    # non-interactive shell, a pytest-xdist worker): Python then installs no handler.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    groups = ProcessGroups()
    try:
        with tempfile.TemporaryDirectory(prefix="durakv-bench-") as tmp:
            try:
                markdown = bench(opts, groups, Path(tmp))
            finally:
                for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                    signal.signal(signum, signal.SIG_IGN)  # let the cleanup finish
                groups.stop_all()
    except RuntimeError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; all servers stopped", file=sys.stderr)
        return 130
    except Interrupted as e:
        print("bench: terminated by a signal; all servers stopped", file=sys.stderr)
        return e.code
    kept = owned_sections(opts.output)
    opts.output.write_text(markdown.rstrip("\n") + "\n\n" + kept if kept else markdown)
    print(f"bench: wrote {opts.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
