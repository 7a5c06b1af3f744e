#!/usr/bin/env python3
"""RSS per key: durakv (`serve --shards N`) against redis-server, same data.

Loads N string keys (`key:%012d`, VALUE_BYTES-byte values) into both servers
over pipelined raw RESP, then sums the resident set size of each process tree
from /proc and prints bytes/key per process and the durakv/redis ratio. RSS
counts a page shared by several processes once in each (shards are forked from
the supervisor and share its imported code), so the ratio is also given with PSS
(each shared page split among its sharers), which sums to the tree's real use. It
also prints each durakv process's RSS before the load (an empty shard must
stay small), so the per-key figure is net of the empty processes too. Then it
samples the tree every --sample-s for --idle-s: the snapshotter builds each
shard's snapshot in a forked child ("snapshot build", holding one shard's
keyspace while it runs) and is back to its empty size between builds.

    python scripts/memory_per_key.py --keys 632000
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import hiredis

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
sys.path.insert(0, str(SCRIPTS))
from proctools import free_port, start_group, stop_group  # noqa: E402

VALUE_BYTES = 100
PIPELINE_COMMANDS = 2000
READY_TIMEOUT_S = 60.0
SETTLE_S = 1.0
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
RECV_BYTES = 1 << 20


def command(argv: list[bytes]) -> bytes:
    return b"*%d\r\n" % len(argv) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in argv)


def call(port: int, *argv: bytes, timeout_s: float = 600.0) -> object:
    """One command on a fresh connection; the decoded reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        s.sendall(command(list(argv)))
        reader = hiredis.Reader()
        while True:
            reply = reader.gets()
            if reply is not False:
                return reply
            data = s.recv(RECV_BYTES)
            if not data:
                raise ConnectionError("server closed the connection")
            reader.feed(data)


def wait_ready(port: int, proc: subprocess.Popen, probe: tuple[bytes, ...], expect: bytes) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            reply = call(port, *probe, timeout_s=2)
            if isinstance(reply, bytes) and expect in reply:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"server on port {port} not ready after {READY_TIMEOUT_S}s")


def load(port: int, keys: int) -> float:
    """SET key:%012d to a VALUE_BYTES value for every key; seconds taken."""
    value = b"v" * VALUE_BYTES
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=600) as s:
        reader = hiredis.Reader()
        for first in range(0, keys, PIPELINE_COMMANDS):
            last = min(keys, first + PIPELINE_COMMANDS)
            s.sendall(b"".join(command([b"SET", b"key:%012d" % i, value]) for i in range(first, last)))
            for error in read_errors(s, reader, last - first):
                raise SystemExit(f"SET failed: {error}")
    return time.monotonic() - start


def read_errors(s: socket.socket, reader: hiredis.Reader, count: int) -> list[hiredis.ReplyError]:
    """Read `count` pipelined replies; the error replies among them."""
    errors = []
    while count:
        reply = reader.gets()
        if reply is False:
            data = s.recv(RECV_BYTES)
            if not data:
                raise ConnectionError("server closed the connection during the load")
            reader.feed(data)
            continue
        if isinstance(reply, hiredis.ReplyError):
            errors.append(reply)
        count -= 1
    return errors


def wait_titles(leader: int) -> None:
    """Until every process of the tree shows its durakv title: the snapshotter, executed
    afresh after the fork, takes a moment longer than the forked shards and routers."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not all(title(pid).startswith("durakv ") for pid in group_pids(leader) if os.path.exists(f"/proc/{pid}")):
        if time.monotonic() > deadline:
            raise SystemExit(f"durakv's processes did not all start in {READY_TIMEOUT_S}s")
        time.sleep(0.05)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE_BYTES


def pss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no Pss line in /proc/{pid}/smaps_rollup")


def title(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\x00", b" ").decode(errors="replace").strip()


def group_pids(leader: int) -> list[int]:
    out = subprocess.run(["pgrep", "-g", str(leader)], capture_output=True, text=True)
    return sorted(int(p) for p in out.stdout.split())


def parent_pid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def role(pid: int, leader: int) -> str:
    if pid == leader:
        return "supervisor"
    parts = title(pid).split()
    if parts[:2] == ["durakv", "snapshotter"] and parent_pid(pid) != leader:
        return "snapshot build"
    if not parts or parts[0] != "durakv":
        return parts[0] if parts else "?"
    return " ".join(parts[1:3]) if parts[2:3] and parts[2].isdigit() else parts[1]


def peak_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM line in /proc/{pid}/status")


def tree_memory(leader: int) -> dict[str, tuple[int, int]]:
    """role -> (RSS, PSS) in bytes for every process of the tree."""
    memory = {}
    for pid in group_pids(leader):
        try:
            memory[role(pid, leader)] = (rss_bytes(pid), pss_bytes(pid))
        except (FileNotFoundError, ProcessLookupError):  # a build child that just ended
            pass
    return memory


def sample_tree(leader: int, idle_s: float, sample_s: float) -> list[tuple[float, dict[str, tuple[int, int]]]]:
    """(seconds since the first sample, tree_memory) every sample_s for idle_s."""
    samples = []
    start = time.monotonic()
    while True:
        at = time.monotonic() - start
        samples.append((at, tree_memory(leader)))
        if at + sample_s > idle_s:
            return samples
        time.sleep(sample_s)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keys", type=int, default=632_000)
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--idle-s", type=float, default=30.0,
                   help="then sample the tree this long (the snapshotter's builds end)")
    p.add_argument("--sample-s", type=float, default=5.0, help="one sample of the tree every this many seconds")
    opts = p.parse_args()
    procs: list[subprocess.Popen] = []
    try:
        with tempfile.TemporaryDirectory(prefix="durakv-mem-") as tmp:
            dport, rport = free_port(), free_port()
            durakv = start_group([sys.executable, "-m", "durakv.server.cli", "serve", "--port", str(dport),
                                  "--shards", str(opts.shards), "--data-dir", f"{tmp}/data"],
                                 cwd=REPO, stdout=open(f"{tmp}/durakv.log", "wb"), stderr=subprocess.STDOUT)
            procs.append(durakv)
            redis = start_group(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", tmp],
                                stdout=open(f"{tmp}/redis.log", "wb"), stderr=subprocess.STDOUT)
            procs.append(redis)
            wait_ready(dport, durakv, (b"CLUSTER", b"INFO"), b"cluster_state:ok")
            wait_ready(rport, redis, (b"PING",), b"PONG")
            wait_titles(durakv.pid)
            time.sleep(SETTLE_S)
            empty = tree_memory(durakv.pid)
            redis_empty = rss_bytes(redis.pid)
            d_s = load(dport, opts.keys)
            r_s = load(rport, opts.keys)
            time.sleep(SETTLE_S)
            full = tree_memory(durakv.pid)
            peaks = {role(pid, durakv.pid): peak_rss_bytes(pid) for pid in group_pids(durakv.pid)}
            timeline = sample_tree(durakv.pid, opts.idle_s, opts.sample_s)
            idle = timeline[-1][1]
            redis_full = rss_bytes(redis.pid)
            assert call(dport, b"DBSIZE") == opts.keys, "durakv lost keys during the load"
            assert call(rport, b"DBSIZE") == opts.keys, "redis lost keys during the load"
        mb = 1 << 20
        print(f"{opts.keys} keys x {VALUE_BYTES} B values; durakv --shards {opts.shards}")
        print(f"load time: durakv {d_s:.1f} s, redis {r_s:.1f} s")
        print(f"{'process':<14}{'empty RSS':>10}{'RSS MB':>8}{'B/key':>7}{'empty PSS':>10}{'PSS MB':>8}{'B/key':>7}")
        rows = [(name, *empty.get(name, (0, 0)), *full[name]) for name in sorted(full)]
        rows.append(("durakv total", *(sum(r[i] for r in rows) for i in range(1, 5))))
        rows.append(("redis-server", redis_empty, redis_empty, redis_full, redis_full))
        for name, rss0, pss0, rss1, pss1 in rows:
            print(f"{name:<14}{rss0 / mb:>10.1f}{rss1 / mb:>8.1f}{(rss1 - rss0) / opts.keys:>7.0f}"
                  f"{pss0 / mb:>10.1f}{pss1 / mb:>8.1f}{(pss1 - pss0) / opts.keys:>7.0f}")
        print(f"peak RSS so far (VmHWM), and RSS / PSS {timeline[-1][0]:.0f} s later:")
        for name in sorted(full):
            rss, pss = idle.get(name, (0, 0))
            print(f"  {name:<14}peak {peaks.get(name, 0) / mb:>7.1f} MB, then {rss / mb:>7.1f} / {pss / mb:>7.1f} MB")
        print("after the load, s: tree RSS / PSS MB (snapshotter; snapshot build child, if one runs)")
        for at, tree in timeline:
            snap = tree.get("snapshotter", (0, 0))[0]
            build = tree.get("snapshot build", (0, 0))[0]
            print(f"  {at:>5.0f}: {sum(r for r, _ in tree.values()) / mb:>7.1f} / "
                  f"{sum(p for _, p in tree.values()) / mb:>7.1f} (snapshotter {snap / mb:.1f}"
                  + (f"; build {build / mb:.1f})" if build else ")"))
        # Each row's B/key divides its growth by every key of the tree (a shard holds
        # only its share): the tree's figure is their sum, here without a build child.
        served = [(name, *empty.get(name, (0, 0)), *full[name]) for name in full if name != "snapshot build"]
        rss_per_key = sum(r[3] - r[1] for r in served) / opts.keys
        pss_per_key = sum(r[4] - r[2] for r in served) / opts.keys
        print(f"bytes per key of the tree without a build child: RSS {rss_per_key:.0f}, PSS {pss_per_key:.0f}"
              f" (redis-server {(redis_full - redis_empty) / opts.keys:.0f})")
        d_rss, d_pss = rows[-2][3], rows[-2][4]
        snap_rss, snap_pss = (sum(full.get(name, (0, 0))[i] for name in ("snapshotter", "snapshot build"))
                              for i in (0, 1))
        print(f"ratio durakv/redis: RSS {d_rss / redis_full:.2f}x, PSS {d_pss / redis_full:.2f}x; "
              f"without the snapshotter (and its build): RSS {(d_rss - snap_rss) / redis_full:.2f}x, "
              f"PSS {(d_pss - snap_pss) / redis_full:.2f}x")
        quiet = [tree for _, tree in timeline if "snapshot build" not in tree]
        if quiet:
            q_rss, q_pss = (sum(v[i] for v in quiet[-1].values()) for i in (0, 1))
            print(f"ratio with no build running (the last such sample): RSS {q_rss / redis_full:.2f}x, "
                  f"PSS {q_pss / redis_full:.2f}x")
    finally:
        for proc in procs:
            stop_group(proc)


if __name__ == "__main__":
    main()
