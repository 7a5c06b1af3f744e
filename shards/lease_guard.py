"""A primary's log lease: the local LEASE while the shard has replicas (LeaseGuard), or
the etcd lease of a log on etcd (EtcdLeaseGuard, below).

LeaseGuard (log/FORMAT.md, "Leases and fencing"): it is renewed in the background
every quarter of its duration, and the executor checks it before each batch (one
clock read, shards/shard.py): past `deadline_ns` (the lease's end minus a margin) a
batch first renews it. A renewal
refused because a replica took the log means this process was paused or stalled
past its lease and is deposed: it ends at once, answering nothing more, so no client
gets a stale read or the acknowledgement of a write the new primary never saw (its
log sync refuses too). Its clients see their connections close, as after a crash."""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

import trio

from durakv.log import LeaseLost, Log
from durakv.log.writer import Lease
from durakv.shards import internal
from durakv.shards.exit_codes import EXIT_DEPOSED
from durakv.shards.frames import INTERNAL_PREFIX, VERB_AS_USER, VERB_EXEC, encode_internal
from durakv.shards.resp import encode_error
from durakv.shards.txn import TXN_VERBS

if TYPE_CHECKING:
    from durakv.log.etcd_log import EtcdLog
    from durakv.shards.shard import Shard

logger = logging.getLogger("durakv.shard")

RENEWALS_PER_LEASE = 4
# How often a primary on etcd looks whether its keepalive thread found it deposed, when
# no batch comes to look (it then ends, so routers and the supervisor act at once).
ETCD_DEPOSED_POLL_S = 0.05
LAPSED_ERROR = b"CLUSTERDOWN The cluster is down"
LAPSED_REPLY = encode_error(LAPSED_ERROR)


class LeaseGuard:
    __slots__ = ("wal", "lease", "margin_ns", "period_s", "deadline_ns")

    def __init__(self, wal: Log, lease: Lease, duration_ms: int) -> None:
        self.wal = wal
        self.lease = lease
        self.margin_ns = duration_ms * 1_000_000 // RENEWALS_PER_LEASE
        self.period_s = duration_ms / 1000 / RENEWALS_PER_LEASE
        self.deadline_ns = lease.valid_until_ns - self.margin_ns

    def check(self) -> bool:
        """Past the deadline: renew before answering anything, or end if deposed."""
        try:
            self.lease = self.wal.renew(self.lease)
        except LeaseLost as e:
            deposed(str(e))
        self.deadline_ns = self.lease.valid_until_ns - self.margin_ns
        return True

    async def renew_loop(self) -> None:
        while True:
            await trio.sleep(self.period_s)
            self.check()


def deposed(why: str) -> None:
    """Another process holds the log now: stop without another reply or write."""
    logger.critical("shard primary pid %d lost its log lease and stops at once: %s", os.getpid(), why)
    logging.shutdown()
    os._exit(EXIT_DEPOSED)


class EtcdLeaseGuard:
    """Lease-fenced reads on etcd (as MemoryDB's): a primary answers reads and writes
    only while its etcd lease is known alive for `margin_ms` more. The log's keepalive
    thread renews the lease every TTL/3 (log/etcd_log.py) and moves valid_until_ns;
    no other writer can lead before that instant (a campaigner waits for the leader key
    to vanish with the lease, log/etcd_log.py take_lease), so a read answered before it
    cannot miss a write of a newer primary; the margin covers the drift between this
    machine's clock and etcd's. While the lease has lapsed (etcd unreachable, this
    process was paused) every request gets CLUSTERDOWN and nothing runs: the lease may
    come back (etcd answers the renewal with a TTL) and the shard serves again, or etcd
    says it expired or another writer leads, and the process ends (deposed()).
    The executor calls check() only past deadline_ns: one clock read per batch."""

    __slots__ = ("wal", "margin_ns", "deadline_ns", "lapsed_since_ns")

    def __init__(self, wal: EtcdLog, margin_ms: int) -> None:
        self.wal = wal
        self.margin_ns = margin_ms * 1_000_000
        self.deadline_ns = wal.valid_until_ns - self.margin_ns
        self.lapsed_since_ns = 0

    def check(self) -> bool:
        """Whether the batch may run; ends the process if it was deposed."""
        wal = self.wal
        if wal.lease_lost:
            deposed(wal.lost_reason)
        self.deadline_ns = wal.valid_until_ns - self.margin_ns
        now_ns = time.monotonic_ns()
        if now_ns < self.deadline_ns:
            if self.lapsed_since_ns:
                logger.warning("shard primary pid %d: its etcd lease was renewed after %.3f s; serving again",
                               os.getpid(), (now_ns - self.lapsed_since_ns) / 1e9)
                self.lapsed_since_ns = 0
            return True
        if not self.lapsed_since_ns:
            self.lapsed_since_ns = now_ns
            logger.error("shard primary pid %d: its etcd lease is not known valid for %d ms more (etcd "
                         "unreachable, or this process was paused); answering CLUSTERDOWN until it is renewed",
                         os.getpid(), self.margin_ns // 1_000_000)
        return False

    async def renew_loop(self) -> None:
        """The keepalive thread renews; this ends a deposed primary that gets no batch."""
        while True:
            await trio.sleep(ETCD_DEPOSED_POLL_S)
            if self.wal.lease_lost:
                deposed(self.wal.lost_reason)


def refuse_batch(shard: "Shard", conn: object, requests: list) -> list[tuple[int, bytes]]:
    """The replies to a batch that arrived while the lease lapsed: CLUSTERDOWN for every
    command and for internal requests that read or change the keyspace; the others
    (INFO sections about the server, CONFIG SET, SLOWLOG...) run, so an operator sees why."""
    out = []
    for req in requests:
        verb = req.argv[0]
        if verb[:1] != INTERNAL_PREFIX or verb in (VERB_EXEC, VERB_AS_USER):
            out.append((req.rid, LAPSED_REPLY))
        elif verb in TXN_VERBS or internal.reads_keyspace(req.argv):
            out.append((req.rid, encode_internal(False, LAPSED_ERROR)))
        else:
            out.append((req.rid, internal.run(shard, req.argv, conn)))
    return out
