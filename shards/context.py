"""The execution context a command handler receives."""

from __future__ import annotations

from durakv.shards.keyspace import Keyspace


class Ctx:
    """Per-request view of the shard: its keyspace and the calling client's
    identity. One instance per shard, re-pointed for each request (no per-command
    allocation)."""

    __slots__ = ("db", "client_id", "proto", "shard", "in_multi")

    def __init__(self, db: Keyspace, shard: object = None) -> None:
        self.db = db
        self.client_id = 0
        self.proto = 2
        self.shard = shard
        self.in_multi = False  # blocking commands do not block inside MULTI/EXEC
