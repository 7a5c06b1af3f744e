"""Where a shard's CPU per durable SET goes, phase by phase, against a GET: runs
scripts/node_bench.py's closed loop (real Clients on a ShardNode over loopback,
in-process) with the group commit's functions wrapped in CPU timers of the
calling thread (time.thread_time_ns), and prints µs per command for each phase.

Each phase's figure excludes the listed phases it calls (indented: usually
called from the one above), so the figures add up; "rest" is the loop's CPU
outside every listed phase: parsing, dispatch, trio's scheduling and polling
(for SET also the idle task's switch and zero-timeout epoll, or the commit
thread's eventfd wakeup). A wrapper costs
~0.2 µs per call, so per-command phases (execute) read high by about that.

    python scripts/commit_phases.py [--clients 25] [--requests 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections import defaultdict
from typing import Any, Callable

import trio

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, SCRIPTS)
sys.path.insert(0, os.path.join(SCRIPTS, ".."))

import node_bench  # noqa: E402

from durakv.log.writer import Log  # noqa: E402
from durakv.server.front import Front  # noqa: E402
from durakv.server.node import LocalLink  # noqa: E402
from durakv.shards import commit, idle_sync, shard  # noqa: E402
from durakv.shards.hazards import HazardTracker, HeldReplies  # noqa: E402

CPU_NS: dict[str, int] = defaultdict(int)
CALLS: dict[str, int] = defaultdict(int)
LOOP_THREAD = 0  # the loop's thread id: only its CPU is counted


NESTED_NS: list[int] = []  # per active timed call: CPU of the timed calls inside it


def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """fn, counting its CPU on the loop thread exclusive of the timed calls inside it."""
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() != LOOP_THREAD:
            return fn(*args, **kwargs)
        NESTED_NS.append(0)
        t0 = time.thread_time_ns()
        try:
            return fn(*args, **kwargs)
        finally:
            spent = time.thread_time_ns() - t0
            CPU_NS[name] += spent - NESTED_NS.pop()
            CALLS[name] += 1
            if NESTED_NS:
                NESTED_NS[-1] += spent
    return wrapper


PHASES: list[tuple[str, Any, str]] = [
    ("execute (per command: handler, effect, hazards, stats)", shard.Shard, "_execute"),
    ("  Shard._mark_dirty (per changed key)", shard.Shard, "_mark_dirty"),
    ("append_effects (encode + Log.append + hand-off)", commit.GroupCommit, "append_effects"),
    ("  encode_record", commit, "encode_record"),
    ("  Log.append", Log, "append"),
    ("  IdleSync.appended (reschedule the idle task)", idle_sync.IdleSync, "appended"),
    ("  CommitThread.wake (lock release: the thread)", commit.CommitThread, "wake"),
    ("catch_up_durable (before each batch)", commit.GroupCommit, "catch_up_durable"),
    ("hand_out_events", shard.Shard, "hand_out_events"),
    ("sync in the loop (CommitThread.sync_in_loop)", commit.CommitThread, "sync_in_loop"),
    ("  Log.sync (pwritev2 RWF_DSYNC: kernel CPU)", Log, "sync"),
    ("_on_durable (hazards, events, held replies)", commit.GroupCommit, "_on_durable"),
    ("  HazardTracker.advance", HazardTracker, "advance"),
    ("  HeldReplies.hold_many", HeldReplies, "hold_many"),
    ("  HeldReplies.release_through", HeldReplies, "release_through"),
    ("  LocalLink.send (fill + flush held replies)", LocalLink, "send"),
    ("flush_ready_clients (every reply's send)", Front, "flush_ready_clients"),
    ("wait_all_tasks_blocked (idle wait, its own frame)", idle_sync, "wait_all_tasks_blocked"),
]


def install() -> None:
    for name, owner, attr in PHASES:
        original = getattr(owner, attr, None)
        if original is None:
            continue  # an older tree without this phase
        if attr == "wait_all_tasks_blocked":
            async def idle_wait(_original: Any = original, _name: str = name) -> None:
                CALLS[_name] += 1  # calls only: CPU during the wait is other tasks'
                await _original()
            setattr(owner, attr, idle_wait)
        else:
            setattr(owner, attr, timed(name, original))


async def run(opts: argparse.Namespace, data_dir: str) -> dict[str, tuple[float, dict[str, tuple[float, float]]]]:
    global LOOP_THREAD
    LOOP_THREAD = threading.get_ident()
    config = node_bench.Config(data_dir=data_dir, shards=1).resolved()
    the_shard = node_bench.Shard(config, 0)
    os.makedirs(the_shard.dir, exist_ok=True)
    the_shard.open_log()
    out: dict[str, tuple[float, dict[str, tuple[float, float]]]] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(the_shard.committer)
        node = node_bench.ShardNode(config, the_shard)
        pairs = node_bench.socket_pairs(opts.clients)
        clients = []
        for _peer, conn in pairs:
            client = node_bench.Client(node, conn, node.new_client_id())
            node.clients[client.id] = client
            node.poller.add(client)
            clients.append(client)
        peers = [peer for peer, _ in pairs]
        await node_bench.workload(node, the_shard, peers, clients, "set", 1, opts.keys, opts.keys)
        for _ in range(opts.rounds):
            for command in ("set", "get"):
                CPU_NS.clear()
                CALLS.clear()
                fsyncs = the_shard.wal.fsync_count
                loop_us, _other = await node_bench.workload(node, the_shard, peers, clients, command, 1,
                                                            opts.requests, opts.keys)
                n = opts.requests
                phases = {name: (CPU_NS[name] / 1000 / n, CALLS[name] / n) for name, _, _ in PHASES}
                phases["fsyncs"] = (0.0, (the_shard.wal.fsync_count - fsyncs) / n)
                if command not in out or loop_us < out[command][0]:
                    out[command] = (loop_us, phases)
        nursery.cancel_scope.cancel()
    the_shard.wal.close()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=25)
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--keys", type=int, default=5_000)
    opts = p.parse_args()
    if not (1 <= opts.clients <= 1000 and 100 <= opts.requests <= 10_000_000 and 1 <= opts.rounds <= 100
            and 1 <= opts.keys <= 1_000_000):
        p.error("an argument is out of range")
    install()
    with tempfile.TemporaryDirectory(prefix="durakv-commit-phases-") as data_dir:
        out = trio.run(run, opts, data_dir)
    set_us, set_phases = out["set"]
    get_us, get_phases = out["get"]
    print(f"loop CPU µs per command (best of {opts.rounds}): SET {set_us:.2f}, GET {get_us:.2f} "
          f"({set_us / get_us:.2f}x); SETs per fsync {1 / max(set_phases['fsyncs'][1], 1e-9):.1f}")
    print(f"{'phase (exclusive)':<58} {'SET µs/cmd':>10} {'calls/cmd':>9} {'GET µs/cmd':>10}")
    set_listed = get_listed = 0.0
    for name, _, _ in PHASES:
        s_us, s_calls = set_phases[name]
        g_us, _ = get_phases[name]
        set_listed += s_us
        get_listed += g_us
        print(f"{name:<58} {s_us:>10.2f} {s_calls:>9.3f} {g_us:>10.2f}")
    print(f"{'rest':<58} {set_us - set_listed:>10.2f} {'':>9} {get_us - get_listed:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
