#!/usr/bin/env python3
"""Run Redis' own test suite (tag 7.0.15) against durakv, one fresh server per unit.

The suite is not part of this repository. Export it once outside the project:

    git -C /path/to/redis.git archive 7.0.15 runtest tests utils | tar -x -C /tmp/redis-tests

then:

    python scripts/redis_suite.py --suite /tmp/redis-tests [--units unit/type/list ...] [--markdown OUT]

Prints passed/failed per unit (and the failing test names with --verbose).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from proctools import free_port, kill_group

DEFAULT_UNITS = [
    "unit/type/string", "unit/type/incr", "unit/type/list", "unit/type/hash", "unit/type/set",
    "unit/type/zset", "unit/expire", "unit/keyspace", "unit/multi", "unit/info-command",
    "unit/protocol", "unit/scan", "unit/bitops", "unit/type/stream", "unit/pubsub",
]
# Issue 12's further units (`--units further`): redis-server's passes in this mode are below.
FURTHER_UNITS = [
    "unit/type/stream-cgroups", "unit/scripting", "unit/functions", "unit/geo", "unit/tracking", "unit/sort",
    "unit/other", "unit/introspection", "unit/introspection-2", "unit/pause", "unit/dump", "unit/hyperloglog",
    "unit/bitfield", "unit/type/list-2", "unit/type/list-3", "unit/querybuf", "unit/quit", "unit/lazyfree",
    "integration/redis-cli", "unit/slowlog",
]
# Redis 7.0.15's own pass counts for these units in the same mode (issue 4).
REFERENCE_PASSES = {
    "unit/type/list": 219, "unit/type/zset": 308, "unit/type/set": 95, "unit/type/string": 75,
    "unit/type/hash": 72, "unit/expire": 58, "unit/bitops": 45, "unit/keyspace": 42, "unit/multi": 32,
    "unit/type/incr": 23, "unit/protocol": 19, "unit/scan": 17, "unit/info-command": 3,
    "unit/type/stream": 63, "unit/pubsub": 29,
    "unit/type/stream-cgroups": 48, "unit/scripting": 182, "unit/functions": 86, "unit/geo": 59,
    "unit/tracking": 51, "unit/sort": 52, "unit/other": 10, "unit/introspection": 27, "unit/introspection-2": 37,
    "unit/pause": 14, "unit/dump": 9, "unit/hyperloglog": 16, "unit/bitfield": 16, "unit/type/list-2": 2,
    "unit/type/list-3": 11, "unit/querybuf": 2, "unit/quit": 3, "unit/lazyfree": 2, "integration/redis-cli": 28,
    "unit/slowlog": 9,
}
SKIP_TAGS = ("-needs:debug -needs:repl -needs:config-maxmemory -needs:config-resetstat -needs:reset "
             "-needs:save -needs:pfdebug -needs:latency -needs:local-process")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
UNIT_TIMEOUT_S = 900
READY_TIMEOUT_S = 30
LOG_DIR = os.environ.get("DURAKV_SUITE_LOGS", tempfile.gettempdir())


def wait_ready(port: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(64).startswith(b"+PONG"):
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"durakv on port {port} not ready after {READY_TIMEOUT_S}s")


def run_unit(suite: str, unit: str, verbose: bool, timeout_s: int, shards: int,
             via: str, replicas: int = 0) -> tuple[int, int, list[str]]:
    data_dir = tempfile.mkdtemp(prefix="durakv-suite-")
    port = free_port()
    server_log = open(os.path.join(LOG_DIR, unit.replace("/", "_") + ".server.log"), "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "durakv.server.cli", "serve", "--port", str(port), "--shards", str(shards),
         "--data-dir", data_dir, "--replicas", str(replicas)],
        stdin=subprocess.DEVNULL, stdout=server_log, stderr=subprocess.STDOUT, start_new_session=True)
    # Through the router, or straight to shard 0's own port (a Redis Cluster node: port + 1).
    test_port = port if via == "router" else port + 1
    try:
        wait_ready(test_port)
        cmd = ["./runtest", "--host", "127.0.0.1", "--port", str(test_port), "--singledb", "--durable",
               "--clients", "1", "--timeout", str(timeout_s), "--baseport", str(free_port()),
               "--tags", SKIP_TAGS, "--single", unit]
        try:
            out = subprocess.run(cmd, cwd=suite, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                 timeout=UNIT_TIMEOUT_S).stdout
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            out += "\n[err]: unit timed out\n"
    finally:
        kill_group(server)
        server_log.close()
        shutil.rmtree(data_dir, ignore_errors=True)
    with open(os.path.join(LOG_DIR, unit.replace("/", "_") + ".out"), "w") as f:
        f.write(out)
    lines = [ANSI.sub("", line) for line in out.splitlines()]
    passed = sum(1 for line in lines if line.startswith("[ok]:"))
    failures = [line for line in lines if line.startswith(("[err]:", "[exception]:", "[TIMEOUT]:"))]
    if verbose:
        for line in failures:
            print("   ", line)
        if any(line.startswith(("[exception]:", "[TIMEOUT]:")) for line in failures):
            tail = "\n".join(lines[-30:])
            print(tail)
    return passed, len(failures), failures


def link_redis_cli(suite: str) -> None:
    """integration/redis-cli runs the suite's own src/redis-cli: point it at the installed one."""
    target = os.path.join(suite, "src", "redis-cli")
    installed = shutil.which("redis-cli")
    if installed and not os.path.exists(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.symlink(installed, target)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", required=True, help="directory with runtest, tests/, utils/ of Redis 7.0.15")
    parser.add_argument("--units", nargs="*", default=DEFAULT_UNITS,
                        help="units to run; `further` stands for issue 12's further units")
    parser.add_argument("--shards", type=int, default=1, help="durakv shard processes")
    parser.add_argument("--via", choices=("router", "shard"), default="router",
                        help="test through the router, or on shard 0's own client port")
    parser.add_argument("--replicas", type=int, default=0, help="replica processes per shard")
    parser.add_argument("--markdown", help="write a markdown table here")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--timeout", type=int, default=60, help="runtest's per-test timeout (seconds)")
    args = parser.parse_args()
    link_redis_cli(args.suite)
    units = [u for unit in args.units for u in (FURTHER_UNITS if unit == "further" else [unit])]
    rows = []
    for unit in units:
        started = time.monotonic()
        passed, failed, _ = run_unit(args.suite, unit, args.verbose, args.timeout, args.shards, args.via,
                                     args.replicas)
        reference = REFERENCE_PASSES.get(unit)
        rows.append((unit, passed, failed, reference))
        print(f"{unit:24s} passed {passed:4d}  failed {failed:4d}  reference {reference}  "
              f"({time.monotonic() - started:.0f}s)", flush=True)
    total = sum(r[1] for r in rows)
    total_ref = sum(r[3] or 0 for r in rows)
    print(f"{'total':24s} passed {total:4d} of reference {total_ref}")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("| unit | passed | failed | redis-server 7.0.15 passes |\n|---|---|---|---|\n")
            for unit, passed, failed, reference in rows:
                f.write(f"| {unit} | {passed} | {failed} | {reference} |\n")
            f.write(f"| **total** | **{total}** | | **{total_ref}** |\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
