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

from durakv.log import LogError
from durakv.log.etcd_follower import EtcdFollower, Tail
from durakv.log.etcd_log import holder_is_dead
from durakv.log.etcd_client import unb64
from durakv.log.etcd_positions import PositionPublisher
from durakv.log.etcd_records import Keys, first_seq, kvs_of
from durakv.shards.config import Config
from durakv.shards.log_backend import etcd_client, etcd_shard_prefix
from durakv.shards.standby import PrimaryAddress, primary_address

logger = logging.getLogger("durakv.replica")

# How often a replica node's replica looks at its shard's leader key, in parts of the TTL.
LEADER_POLLS_PER_TTL = 4


class EtcdFollow:
    """One replica's follower of shard `index`'s log on etcd, and its tail thread."""

    def __init__(self, config: Config, index: int) -> None:
        self.prefix = etcd_shard_prefix(config, index)
        self.follower = EtcdFollower(etcd_client(config), self.prefix)
        self.poll_s = config.etcd_lease_ttl_s / LEADER_POLLS_PER_TTL
        self.lease_ttl_s = config.etcd_lease_ttl_s
        self.position: PositionPublisher | None = None   # this replica's applied seq in etcd
        self.node_id = config.node_id
        self._stopped = False
        self.primary: PrimaryAddress | None = None   # as the leader key said at the last look

    async def publish_position(self, number: int, applied: Callable[[], int]) -> None:
        """Publish this replica's applied seq in etcd every poll_s (log/etcd_positions.py),
        so a primary on any node drops no record it still needs; withdrawn on promotion."""
        name = f"{self.node_id or 'local'}-{number}"
        self.position = PositionPublisher(self.follower.client.clone(), Keys(self.prefix.encode()), name,
                                          self.node_id, self.lease_ttl_s, number)
        try:
            while not self._stopped:
                try:
                    await trio.to_thread.run_sync(self.position.publish, applied(), abandon_on_cancel=True)
                except LogError as e:   # out of reach: the position expires, the primary then drops freely
                    logger.warning("etcd log %s: publishing replica %s's position failed (%s); trying again",
                                   self.prefix, name, e)
                await trio.sleep(self.poll_s)
        finally:   # a clean stop (or a promotion): other nodes stop showing this replica at once
            self.withdraw_position()

    def withdraw_position(self) -> None:
        """A promoted replica holds back no drop (a blocking request, as the promotion's)."""
        if self.position is not None:
            try:
                self.position.withdraw()
            except LogError as e:
                logger.warning("etcd log %s: withdrawing a replica position failed (%s); it expires with its "
                               "lease", self.prefix, e)

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

    async def watch_leader(self, until_free: bool) -> None:
        """Read the shard's leader key every poll_s: keep `primary` (where the current
        primary serves clients, for this standby's MOVED replies, shards/standby.py) up to
        date and, with until_free, return once the shard has no live leader: its leader
        key is gone (the holder's etcd lease expired: its node died or was cut off) or
        names a process of this machine that is gone. The campaign itself (take_lease)
        decides who leads."""
        client = self.follower.client.clone()
        leader_key = Keys(self.prefix.encode()).leader

        def free() -> bool:
            kvs = kvs_of(client.range(leader_key))
            self.primary = primary_address(unb64(kvs[0]["value"])) if kvs else None
            return not kvs or holder_is_dead(kvs[0]["value"], self.node_id)

        while True:
            try:
                if await trio.to_thread.run_sync(free, abandon_on_cancel=True) and until_free:
                    return
            except LogError as e:   # etcd out of reach: nobody can campaign now
                logger.warning("etcd log %s: reading the leader key failed (%s); trying again", self.prefix, e)
            await trio.sleep(self.poll_s)
