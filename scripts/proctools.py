"""Processes for the tests and the scripts: a free TCP port, and children that
lead their own process group, so that signalling the group reaches everything a
child started (a `durakv serve` tree: supervisor, routers, shards, snapshotter).

Scripts import it as a sibling module; tests get scripts/ on sys.path from
tests/conftest.py. It imports nothing from durakv."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

STOP_GRACE_S = 15.0
# durakv serve listens on its port and, by default, one port per shard after it
# (port + 1 + shard): free_port finds that many free in a row. They are drawn
# below Linux' ephemeral range (32768-60999) so outgoing connections never take
# one meanwhile, at random so parallel test workers rarely draw the same.
PORT_BLOCK_MIN, PORT_BLOCK_MAX = 10_000, 32_000
PORT_BLOCK_SIZE = 9  # the port and 8 shard ports
PORT_BLOCK_ATTEMPTS = 1000


def free_port(following: int = PORT_BLOCK_SIZE - 1) -> int:
    """A TCP port on 127.0.0.1 that nothing listens on at the moment of the call,
    nor on the `following` ports after it (a durakv's shard ports)."""
    low, high = _port_slice()
    for _ in range(PORT_BLOCK_ATTEMPTS):
        base = random.randrange(low, high - following)
        if all(_bindable(base + i) for i in range(following + 1)):
            return base
    raise RuntimeError(f"no {following + 1} free ports in a row in {low}-{high}")


def _port_slice() -> tuple[int, int]:
    """The part of the port range this process draws from: under pytest-xdist each
    worker has its own slice, so two workers never draw overlapping blocks."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if not worker.startswith("gw") or not worker[2:].isdigit() or count < 1:
        return PORT_BLOCK_MIN, PORT_BLOCK_MAX
    size = (PORT_BLOCK_MAX - PORT_BLOCK_MIN) // count
    low = PORT_BLOCK_MIN + int(worker[2:]) % count * size
    return low, low + size


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def start_group(argv: list[str], **kwargs) -> subprocess.Popen:
    """Popen argv as the leader of a new session (and so of a new process group)."""
    return subprocess.Popen(argv, start_new_session=True, **kwargs)


def start_durakv_serve(data_dir: Path, shards: int) -> tuple[subprocess.Popen, int]:
    """`durakv serve` on a free port in its own process group, its log beside data_dir."""
    port = free_port()
    proc = start_group([sys.executable, "-m", "durakv.server.cli", "serve", "--port", str(port),
                        "--shards", str(shards), "--data-dir", str(data_dir)],
                       stdout=subprocess.DEVNULL, stderr=open(data_dir.parent / "durakv.log", "wb"))
    return proc, port


def signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Send sig to proc's whole process group; a group that is gone is no error."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def kill_group(proc: subprocess.Popen) -> int:
    """SIGKILL the whole group (a crash, not a shutdown) and reap the leader."""
    signal_group(proc, signal.SIGKILL)
    return proc.wait()


def stop_group(proc: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> int:
    """SIGTERM the group, give the leader grace_s to exit, then SIGKILL what is left."""
    if proc.poll() is None:
        signal_group(proc, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace_s)
    return kill_group(proc)
