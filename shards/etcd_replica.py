"""A replica's view of a shard log on etcd (shards/replica.py with log-backend = "etcd").

The replica reads the log through log/etcd_follower.py: EtcdFollower for its start
and its promotion (records up to the last one etcd holds), and a Tail (a watch from
the revision of its first read) to follow, in a thread, since the etcd client blocks.
Every record the watch shows was committed by a quorum under the leader key's fence,
so a replica never applies a write a crash or a deposed primary could take back.
The thread hands each record to the trio loop, which applies it in order."""

from __future__ import annotations

import logging
from typing import Callable

import trio

from durakv.log.etcd_follower import EtcdFollower, Tail
from durakv.log.etcd_records import first_seq
from durakv.shards.config import Config
from durakv.shards.log_backend import etcd_client, etcd_shard_prefix

logger = logging.getLogger("durakv.replica")


class EtcdFollow:
    """One replica's follower of shard `index`'s log on etcd, and its tail thread."""

    def __init__(self, config: Config, index: int) -> None:
        self.prefix = etcd_shard_prefix(config, index)
        self.follower = EtcdFollower(etcd_client(config), self.prefix)
        self._stopped = False

    def first_seq(self) -> int:
        """The first seq etcd still holds (a replica starting behind it needs a snapshot)."""
        return first_seq(self.follower.client, self.prefix)

    async def follow(self, from_seq: int, apply: Callable[[int, bytes], None]) -> None:
        """Apply (in this trio loop) every record from from_seq on as etcd commits it,
        until stop() or cancellation. RecordsDropped if etcd compacted past our place."""
        token = trio.lowlevel.current_trio_token()
        tail = Tail(self.follower.client.clone(), self.prefix, from_seq)

        def run() -> None:
            # The thread alone closes its watch: closing the response from another thread
            # can block on the lock of the read in progress, so stop() only sets a flag
            # that the thread sees at its next record (the watch stays open until then).
            try:
                for seq, _epoch, payload in tail:
                    if self._stopped:
                        return
                    trio.from_thread.run_sync(apply, seq, payload, trio_token=token)
            finally:
                tail.close()

        await trio.to_thread.run_sync(run, abandon_on_cancel=True)

    def stop(self) -> None:
        """Let the tail thread end (promotion: the replica reads the rest itself); what
        it may still deliver is ignored (Replica.apply_followed)."""
        self._stopped = True
