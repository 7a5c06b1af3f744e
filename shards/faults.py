"""Fault injection for tests: the environment variables naming a step at which a process
exits (DURAKV_TXN_CRASH) or waits (DURAKV_TXN_HOLD), and the check of a step. Light (no
trio) so that the idle snapshotter can have hold points without importing the engine
(tests/test_process_memory.py); shards/txn.py's crash and hold points build on it."""

from __future__ import annotations

import logging
import os
import time

logger = logging.getLogger("durakv.shard")

CRASH_ENV = "DURAKV_TXN_CRASH"
HOLD_ENV = "DURAKV_TXN_HOLD"
HOLD_POLL_S = 0.01
MAX_HOLD_POLLS = 6_000  # a held step goes on by itself after a minute


def crash_armed(step: str, env: str = CRASH_ENV) -> bool:
    """Fault injection for tests: with DURAKV_TXN_CRASH=PATH, a process exits at the
    step named in the file PATH, while it exists (DURAKV_TXN_HOLD: it waits there)."""
    path = os.environ.get(env)
    if not path:
        return False
    try:
        with open(path) as f:
            return f.read().strip() == step
    except FileNotFoundError:
        return False


def hold_here(step: str, what: str) -> None:
    """Wait at STEP while the hold file names it (at most a minute), saying once in the
    log that `what` is held there, so that a test knows the process got there."""
    for poll in range(MAX_HOLD_POLLS):
        if not crash_armed(step, HOLD_ENV):
            return
        if poll == 0:
            logger.warning("%s: %s held at step %s (pid %d)", HOLD_ENV, what, step, os.getpid())
        time.sleep(HOLD_POLL_S)
    logger.warning("%s: step %s held for %.0f s; going on", HOLD_ENV, step, MAX_HOLD_POLLS * HOLD_POLL_S)
