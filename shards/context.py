"""The execution context a command handler receives."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from durakv.shards.keyspace import Keyspace

if TYPE_CHECKING:
    from durakv.shards.acl import User
    from durakv.shards.t_multi import Watches


class ShardView(Protocol):
    """What a command handler may read from the shard it runs on (`ctx.shard`).

    The serving shard (shards/shard.py `Shard`) offers it, and so do the stand-ins
    that run handlers without serving: the snapshotter's replay
    (snapshotter/replay.py `ReplayShard`) and the tests' in-process shards. A
    handler that needs more of its shard adds it here first, and with it to every
    stand-in, rather than reaching into `Shard`."""

    @property
    def settings(self) -> Mapping[str, int]:
        """Encoding parameters (shards/shard_settings.py), as CONFIG SET left them."""
        ...

    @property
    def slot_range(self) -> tuple[int, int]:
        """The first and last hash slot this shard owns (SCAN walks them)."""
        ...


class ServingShardView(ShardView, Protocol):
    """What only a shard serving clients has: the WATCH registry. The commands
    that use it (WATCH) never reach a replay, whose records hold effects only."""

    @property
    def watches(self) -> Watches: ...


class Ctx:
    """Per-request view of the shard: its keyspace and the calling client's
    identity. One instance per shard, re-pointed for each request (no per-command
    allocation)."""

    __slots__ = ("db", "client_id", "proto", "shard", "in_multi", "acl_user", "acl_denials", "chunks")

    def __init__(self, db: Keyspace, shard: ShardView) -> None:
        self.db = db
        self.client_id = 0
        self.proto = 2
        self.shard = shard
        self.in_multi = False  # blocking commands do not block inside MULTI/EXEC
        self.acl_user: User | None = None  # a script's ACL user (shards/acl.py); None: unrestricted
        self.acl_denials: list[list] = []  # the redis.calls acl_user was refused, for the router's ACL LOG
        self.chunks = False  # a big array reply may be encoded across loop turns (shards/chunked.py)
