"""Running the snapshotter below the serving processes.

Two things are needed on Linux, measured on a 2-core box with 1M keys:

* SCHED_IDLE, not only nice: a niced snapshotter still took ~0.7 of a core
  from a loaded server (the shards sleep in fsync and wake often; at nice 10
  each wakeup can wait behind the snapshotter's slice). A SCHED_IDLE task is
  preempted at once by any normal task that wakes.
* With CONFIG_SCHED_AUTOGROUP (the default on most distributions), the
  scheduler first shares CPU fairly between autogroups (one per session) and
  applies priorities only inside a group. A snapshotter in its own session
  (systemd unit, `setsid`) would get as much CPU as the whole serving session
  however low its priority, so a session leader also lowers its autogroup's
  niceness. Under systemd with the cpu controller, the unit's CPUWeight= and
  CPUSchedulingPolicy=idle do this job.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger("durakv.snapshotter")

AUTOGROUP_PATH = "/proc/self/autogroup"
NICE_MAX = 19


def lower_priority(nice_increment: int, sched_idle: bool = True) -> int:
    """Raise this process's niceness by nice_increment (capped at 19), switch it
    to SCHED_IDLE where the platform has it, and lower its autogroup's
    niceness when it leads its own session; returns the niceness."""
    niceness = os.nice(0)
    if nice_increment > 0:
        niceness = os.nice(min(nice_increment, NICE_MAX - niceness))
    if sched_idle and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError as e:
            logger.warning("snapshotter: could not switch to SCHED_IDLE (%s): shards that wake may wait "
                        "behind it", e)
    if os.getsid(0) == os.getpid() and os.path.exists(AUTOGROUP_PATH):
        try:
            with open(AUTOGROUP_PATH, "w") as f:
                f.write(str(niceness))
        except OSError as e:
            logger.warning("snapshotter: could not set its autogroup's niceness to %d (%s): it may take CPU "
                        "from the shards as if it were not niced", niceness, e)
    return niceness
