"""What a script dropped from a full cache costs (issue 16, shards/script_evict.py).

EVALs of distinct bodies, pipelined, all on one key (so one shard), through the router
of a 2-shard tree, once with a cache bound that every EVAL past it overflows (each then
drops a script: the shard tells every router connection, each router answers on its
link) and once with the default bound (no drop). Reports EVAL/s and the CPU µs per
EVAL of the routers and of the shards (from /proc: compare those under load, with the
load average printed beside). Each EVAL compiles a new script either way.

    python scripts/evict_bench.py [--requests 20000] [--pipeline 16] [--bound 100] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

from eval_bench import cpu_seconds, wait_ready
from proctools import kill_group, start_durakv_serve


def command(*args: str) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def run_evals(port: int, start: int, count: int, pipeline: int) -> None:
    """`count` EVALs of distinct bodies, `pipeline` at a time; every reply checked."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        reader = sock.makefile("rb")
        for first in range(start, start + count, pipeline):
            batch = range(first, min(first + pipeline, start + count))
            sock.sendall(b"".join(command("EVAL", f"return {i}", "1", "k") for i in batch))
            for i in batch:
                line = reader.readline()
                if line != b":%d\r\n" % i:
                    raise SystemExit(f"EVAL {i} answered {line!r}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--pipeline", type=int, default=16)
    p.add_argument("--bound", type=int, default=100, help="the cache bound that overflows")
    p.add_argument("--rounds", type=int, default=2)
    opts = p.parse_args()
    for round_ in range(opts.rounds):
        for label, bound in (("drops", opts.bound), ("no drop", 100_000)):
            os.environ["DURAKV_TEST_MAX_CACHED_SCRIPTS"] = str(bound)
            with tempfile.TemporaryDirectory() as tmp:
                proc, port = start_durakv_serve(Path(tmp) / "data", 2)
                try:
                    wait_ready(port)
                    run_evals(port, 0, opts.bound, opts.pipeline)  # fills the small cache
                    router0, shards0 = cpu_seconds(proc.pid, "router"), cpu_seconds(proc.pid, "shard")
                    began = time.monotonic()
                    run_evals(port, opts.bound, opts.requests, opts.pipeline)
                    elapsed = time.monotonic() - began
                    router_us = 1e6 * (cpu_seconds(proc.pid, "router") - router0) / opts.requests
                    shards_us = 1e6 * (cpu_seconds(proc.pid, "shard") - shards0) / opts.requests
                finally:
                    kill_group(proc)
            print(f"round {round_} {label:8} {opts.requests / elapsed:8.0f} EVAL/s  router {router_us:6.1f} µs/EVAL  "
                  f"shards {shards_us:6.1f} µs/EVAL  load {os.getloadavg()[0]:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
