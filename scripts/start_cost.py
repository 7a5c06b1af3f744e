"""What one `durakv serve` start costs: wall time until every shard and router
answers (PING on the router port and on each shard port), and the CPU of the whole
process tree from its start to a graceful stop (the supervisor reaps its children,
so RUSAGE_CHILDREN of this process holds them all).

    python scripts/start_cost.py --shards 2 --rounds 3
"""

from __future__ import annotations

import argparse
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from proctools import free_port, stop_group

READY_TIMEOUT_S = 60
POLL_INTERVAL_S = 0.02


def answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def one_start(shards: int) -> tuple[float, float]:
    """(seconds until every port answers, CPU seconds of the tree)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="durakv-start-") as tmp:
        argv = [sys.executable, "-m", "durakv.server.cli", "serve", "--port", str(port),
                "--shards", str(shards), "--data-dir", str(Path(tmp) / "data")]
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            ports = [port] + [port + 1 + i for i in range(shards)]
            deadline = started + READY_TIMEOUT_S
            while not all(answers_ping(p) for p in ports):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"start_cost: durakv serve did not start (exit status {proc.poll()})")
                time.sleep(POLL_INTERVAL_S)
            ready_s = time.monotonic() - started
        finally:
            stop_group(proc)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return ready_s, cpu_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    opts = parser.parse_args(argv)
    if not 1 <= opts.rounds <= 100:
        parser.error("--rounds must be between 1 and 100")
    for _ in range(opts.rounds):
        ready_s, cpu_s = one_start(opts.shards)
        print(f"shards={opts.shards} ready {ready_s:.2f} s, CPU of the tree {cpu_s:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
