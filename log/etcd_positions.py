"""How far each replica of a shard log on etcd has applied it, so that dropping
covered records never removes one a live replica still needs.

Replicas may run on any node sharing the etcd prefix, so neither a primary nor the
`durakv log truncate` tool can ask them directly. Each replica publishes its applied
seq under P/replica/<node>-<number> (log/etcd_records.py), bound to an etcd lease of
its own: a replica that dies or is cut off from etcd vanishes from the positions once
its lease expires (it then starts again from the newest snapshot, as one that fell
behind does), so a dead replica never holds the log forever. Whoever drops records
(log/etcd_log.py drop_segments_through, server/etcd_logtool.py) drops at most through
the lowest published position."""

from __future__ import annotations

import json
import logging
import os
import threading
import time

from .errors import LogError
from .etcd_client import EtcdClient, unb64
from .etcd_nodes import live_replica_key
from .etcd_records import Keys, kvs_of, put_op

logger = logging.getLogger("durakv.log")

# Positions read in one range request: a shard has a handful of replicas, never this many.
MAX_REPLICAS_READ = 1000


def replica_positions(client: EtcdClient, keys: Keys) -> dict[str, int]:
    """Each live replica's applied seq, by name (a value that is not a position is
    reported and ignored: it cannot say what a replica needs)."""
    reply = client.range(keys.replicas_start, keys.replicas_end, limit=MAX_REPLICAS_READ)
    positions = {}
    for kv in kvs_of(reply):
        name = unb64(kv["key"])[len(keys.replicas_start):].decode(errors="replace")
        try:
            positions[name] = int(json.loads(unb64(kv["value"]))["seq"])
        except (ValueError, KeyError, TypeError) as e:
            logger.error("etcd log %s: replica position %r is not one (%s); ignored", keys.base.decode(), name, e)
    return positions


def droppable_through(client: EtcdClient, keys: Keys, seq: int) -> tuple[int, dict[str, int]]:
    """The highest seq <= `seq` whose records every live replica has applied, and the
    positions that decided it."""
    positions = replica_positions(client, keys)
    return min([seq, *positions.values()]), positions


class PositionPublisher:
    """One replica's published position (a blocking etcd client: call from a thread),
    and with it, under the same lease, the replica's live entry in D/cluster/
    (log/etcd_nodes.py), which every node's CLUSTER answers follow. The live entry is
    written at every publish with its wall clock time (`at_ms`): other nodes' INFO
    replication shows the seconds since as the replica's lag, as Redis shows the seconds
    since a replica's last ack."""

    def __init__(self, client: EtcdClient, keys: Keys, name: str, node: str, ttl_s: int, number: int = 0) -> None:
        self.client = client
        self.key = keys.replica(name)
        self.live_key = live_replica_key(keys.base.decode(), name)
        self.number = number
        self.node = node
        self.ttl_s = ttl_s
        self._lease = 0
        self._published = -1
        self._withdrawn = False
        self._lock = threading.Lock()  # a publish abandoned by its caller cannot outlive a withdraw

    def publish(self, seq: int) -> None:
        """Keep the position's lease alive and write `seq` if it changed (or the lease
        expired and took the key with it). Raises LogError if etcd cannot be reached."""
        assert seq >= 0, "an applied seq is never negative"
        with self._lock:
            if not self._withdrawn:
                self._publish(seq)

    def _publish(self, seq: int) -> None:
        if self._lease and self.client.lease_keepalive(self._lease) <= 0:
            logger.warning("etcd log: replica position %s lost its lease; publishing it again",
                           self.key.decode())
            self._lease = 0
        if not self._lease:
            self._lease = self.client.lease_grant(self.ttl_s)
            self._published = -1
        # The live entry carries the seq too: other nodes' INFO replication shows the offset.
        live = json.dumps({"node": self.node, "number": self.number, "seq": seq,
                           "at_ms": time.time_ns() // 1_000_000}).encode()
        puts = [put_op(self.live_key, live, self._lease)]
        if seq != self._published:
            value = json.dumps({"seq": seq, "node": self.node, "pid": os.getpid()}).encode()
            puts.append(put_op(self.key, value, self._lease))
        reply = self.client.txn([], puts, [])
        if not reply.get("succeeded", True):
            raise LogError(f"etcd log: publishing replica position {self.key.decode()} failed: {reply}")
        self._published = seq

    def withdraw(self) -> None:
        """Remove the position and the live entry at once, for good (promotion: a primary
        holds nothing back; a clean stop: other nodes stop showing the replica)."""
        with self._lock:
            self._withdrawn = True
            if self._lease:
                lease, self._lease = self._lease, 0
                self.client.lease_revoke(lease)
