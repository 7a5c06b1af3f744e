"""Processes for the tests and the scripts: a free TCP port, and children that
lead their own process group, so that signalling the group reaches everything a
child started (a `durakv serve` tree: supervisor, routers, shards, snapshotter).

Scripts import it as a sibling module; tests get scripts/ on sys.path from
tests/conftest.py. It imports nothing from durakv."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess

STOP_GRACE_S = 15.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on at the moment of the call."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_group(argv: list[str], **kwargs) -> subprocess.Popen:
    """Popen argv as the leader of a new session (and so of a new process group)."""
    return subprocess.Popen(argv, start_new_session=True, **kwargs)


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
