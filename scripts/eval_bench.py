"""Pipelined EVAL through the router of a 2-shard tree (issue 16's script fence):
redis-benchmark -P 16 over random keys (so over both shards), script shapes met in
real use (RQ's lock release, a fixed-window rate limiter, a key through a local or a loop
over KEYS). Each line says whether server/script_scope.py reads the script as keeping to
its declared keys ("keeps": its followers for other shards are sent at once) or not
("held": while one is out, its client's requests for the other shard wait for its reply);
`computed` writes the same key through a computed name, which it cannot read so.

With `--commands fcall` (or `eval,fcall`) each shape also runs as a function (FCALL
f_<shape>, its callback's parameters `keys`/`args` for KEYS/ARGV), judged by
server/script_scope.py function_verdicts, and as the same function in a library with one
more top-level statement (`fcall-unjudged`: never judged, always held, as every FCALL was
before functions were judged).

Reports requests/s and the CPU µs per EVAL of the routers and of the shards (from
/proc, whatever the load: compare those, with the load average printed beside).

    python scripts/eval_bench.py [--requests 60000] [--clients 4] [--pipeline 16] [--rounds 2]
                                 [--commands eval,fcall]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from proctools import kill_group, start_durakv_serve

import durakv.shards.commands  # noqa: F401  (registers the commands script_scope looks up)
from durakv.server.script_scope import function_verdicts, keeps_to_its_keys

SCRIPTS = {
    "literal": "return redis.call('SET', KEYS[1], ARGV[1])",
    "release": "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
    "local": "local k = KEYS[1] return redis.call('SET', k, ARGV[1])",
    "limiter": ("local key = KEYS[1] local n = redis.call('INCR', key) "
                "if n == 1 then redis.call('EXPIRE', key, 60) end return n <= (tonumber(ARGV[1]) or 100) and 1 or 0"),
    "loop": "for _, k in ipairs(KEYS) do redis.call('SET', k, ARGV[1]) end return #KEYS",
    "computed": "return redis.call('SET', KEYS[1] .. '', ARGV[1])",
}
READY_WAIT_S = 30.0


def library(name: str, body: str, judged: bool) -> str:
    """The shape as function f_<name> (an unjudged library has a top-level statement more)."""
    callback = body.replace("KEYS", "keys").replace("ARGV", "args")
    extra = "" if judged else "local unjudged = true\n"
    return (f"#!lua name={'lib' if judged else 'unjudged'}_{name}\n{extra}"
            f"redis.register_function('{'f' if judged else 'u'}_{name}', function(keys, args) {callback} end)")


def runs(name: str, body: str, commands: list[str]) -> list[tuple[str, str, list[str]]]:
    """(label, verdict, the command after redis-benchmark's options) of each way to run the shape."""
    out = []
    if "eval" in commands:
        out.append(("eval", "keeps" if keeps_to_its_keys(body.encode()) else "held", ["EVAL", body]))
    if "fcall" in commands:
        judged = function_verdicts(library(name, body, True).encode()).get(f"f_{name}".encode(), False)
        out.append(("fcall", "keeps" if judged else "held", ["FCALL", f"f_{name}"]))
        out.append(("fcall-unjudged", "held", ["FCALL", f"u_{name}"]))
    return out


def cpu_seconds(group: int, role: str) -> float:
    """utime + stime of the group's processes titled `durakv ROLE ...`."""
    out = subprocess.run(["pgrep", "-g", str(group), "-f", f"^durakv {role}"], capture_output=True, text=True)
    ticks = 0
    for pid in out.stdout.split():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def wait_ready(port: int) -> None:
    deadline = time.monotonic() + READY_WAIT_S
    while time.monotonic() < deadline:
        probe = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True)
        if probe.stdout.strip() == b"PONG":
            return
        time.sleep(0.1)
    raise SystemExit(f"durakv did not answer on port {port} within {READY_WAIT_S:.0f} s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=60_000)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--pipeline", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--scripts", default=",".join(SCRIPTS), help="which shapes, comma-separated")
    p.add_argument("--commands", default="eval", help="eval, fcall, or both, comma-separated")
    opts = p.parse_args()
    commands = opts.commands.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        proc, port = start_durakv_serve(data_dir, 2)
        try:
            wait_ready(port)
            for name in opts.scripts.split(","):
                body = SCRIPTS[name]
                # Another shape's values would fail this one's commands (INCR of "v"): redis-benchmark stops.
                subprocess.run(["redis-cli", "-p", str(port), "FLUSHALL"], check=True, capture_output=True)
                if "fcall" in commands:
                    for judged in (True, False):
                        subprocess.run(["redis-cli", "-p", str(port), "FUNCTION", "LOAD", "REPLACE",
                                        library(name, body, judged)], check=True, capture_output=True)
                for label, verdict, command in runs(name, body, commands):
                    for _ in range(opts.rounds):
                        router0, shards0 = cpu_seconds(proc.pid, "router"), cpu_seconds(proc.pid, "shard")
                        out = subprocess.run(["redis-benchmark", "-p", str(port), "-c", str(opts.clients),
                                              "-P", str(opts.pipeline), "-n", str(opts.requests), "-r", "100000",
                                              "-q", *command, "1", "key:__rand_int__", "v"],
                                             capture_output=True, text=True).stdout
                        router_us = 1e6 * (cpu_seconds(proc.pid, "router") - router0) / opts.requests
                        shards_us = 1e6 * (cpu_seconds(proc.pid, "shard") - shards0) / opts.requests
                        rates = re.findall(r"([0-9.]+) requests per second", out)
                        load = os.getloadavg()[0]
                        print(f"{name:8} {label:14} {verdict:5} P{opts.pipeline}: {rates[-1] if rates else '?'} "
                              f"req/s, router CPU {router_us:.1f} us/op, shards CPU {shards_us:.1f} us/op "
                              f"(load {load:.1f})")
        finally:
            kill_group(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
