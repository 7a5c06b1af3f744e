"""A child process that must not outlive its parent: PR_SET_PDEATHSIG.

The supervisor's children (server/supervisor.py) and the snapshotter's build
children (snapshotter/isolate.py) call it first thing, so even a kill -9 of the
parent takes them along: a leftover child would hold the parent's locks (an
inherited flock) and keep its successor from starting."""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when its parent dies; exit now if it already did."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:
        os._exit(1)  # the parent died before prctl took effect
