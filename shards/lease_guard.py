"""A primary's log lease while the shard has replicas (log/FORMAT.md, "Leases and
fencing"). It is renewed in the background every quarter of its duration, and the
executor checks it before each batch (one clock read, shards/shard.py): past
`deadline_ns` (the lease's end minus a margin) a batch first renews it. A renewal
refused because a replica took the log means this process was paused or stalled
past its lease and is deposed: it ends at once, answering nothing more, so no client
gets a stale read or the acknowledgement of a write the new primary never saw (its
log sync refuses too). Its clients see their connections close, as after a crash."""

from __future__ import annotations

import logging
import os

import trio

from durakv.log import LeaseLost, Log
from durakv.log.writer import Lease
from durakv.shards.exit_codes import EXIT_DEPOSED

logger = logging.getLogger("durakv.shard")

RENEWALS_PER_LEASE = 4


class LeaseGuard:
    __slots__ = ("wal", "lease", "margin_ns", "period_s", "deadline_ns")

    def __init__(self, wal: Log, lease: Lease, duration_ms: int) -> None:
        self.wal = wal
        self.lease = lease
        self.margin_ns = duration_ms * 1_000_000 // RENEWALS_PER_LEASE
        self.period_s = duration_ms / 1000 / RENEWALS_PER_LEASE
        self.deadline_ns = lease.valid_until_ns - self.margin_ns

    def check(self) -> None:
        """Past the deadline: renew before answering anything, or end if deposed."""
        try:
            self.lease = self.wal.renew(self.lease)
        except LeaseLost as e:
            deposed(str(e))
        self.deadline_ns = self.lease.valid_until_ns - self.margin_ns

    async def renew_loop(self) -> None:
        while True:
            await trio.sleep(self.period_s)
            self.check()


def deposed(why: str) -> None:
    """Another process holds the log now: stop without another reply or write."""
    logger.critical("shard primary pid %d lost its log lease and stops at once: %s", os.getpid(), why)
    logging.shutdown()
    os._exit(EXIT_DEPOSED)
