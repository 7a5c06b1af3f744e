"""INFO commandstats' counts of one command: kept by the shard (shards/shard.py), by a
cross-shard run's scratch shard for its scripts' redis.calls (shards/txn.py) and by
the router for what it answers itself (server/stats.py)."""

from __future__ import annotations


class CommandStats:
    """As Redis 7.0: failed = ran and replied an error; rejected = refused before
    running (counted in neither calls nor usec)."""

    __slots__ = ("calls", "usec", "failed", "rejected")

    def __init__(self) -> None:
        self.calls = 0
        self.usec = 0
        self.failed = 0
        self.rejected = 0
