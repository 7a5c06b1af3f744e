"""Transactions on the shard side (Redis' multi.c): WATCH bookkeeping and the
atomic execution of a queued transaction.

The router queues MULTI ... EXEC itself and sends the whole transaction as one
request, so it runs in one batch with nothing interleaved, and its effects land
in one log record (they replay atomically). WATCH invalidation hangs off the
keyspace's modification signal, so every write, including expiry and FLUSHALL,
invalidates the watchers of the keys it touches.
"""

from __future__ import annotations

from typing import cast

import msgspec

from durakv.shards.context import Ctx, ServingShardView
from durakv.shards.resp import OK, ReplyError
from durakv.shards.table import MULTI_RUN_NOW, KeySpec, command

MAX_WATCHED_KEYS_PER_CLIENT = 1 << 20

_commands_decoder = msgspec.msgpack.Decoder(list[list[bytes]])
_commands_encoder = msgspec.msgpack.Encoder()


def pack_transaction(commands: list[list[bytes]]) -> bytes:
    return _commands_encoder.encode(commands)


def unpack_transaction(packed: bytes) -> list[list[bytes]]:
    return _commands_decoder.decode(packed)


class Watches:
    """Which clients watch which keys, and which of them saw a change."""

    __slots__ = ("by_key", "by_client", "dirty_clients", "expired_at_watch")

    def __init__(self) -> None:
        self.by_key: dict[bytes, set[int]] = {}
        self.by_client: dict[int, set[bytes]] = {}
        self.dirty_clients: set[int] = set()
        # Keys that were already logically expired when watched: their later
        # lazy deletion is not a change the watcher can have missed.
        self.expired_at_watch: dict[int, set[bytes]] = {}

    def watch(self, cid: int, key: bytes, expired: bool) -> None:
        keys = self.by_client.setdefault(cid, set())
        if key in keys:
            return
        if len(keys) >= MAX_WATCHED_KEYS_PER_CLIENT:
            raise ReplyError(b"ERR too many watched keys (limit %d per client)" % MAX_WATCHED_KEYS_PER_CLIENT)
        keys.add(key)
        self.by_key.setdefault(key, set()).add(cid)
        if expired:
            self.expired_at_watch.setdefault(cid, set()).add(key)

    def unwatch(self, cid: int) -> None:
        keys = self.by_client.pop(cid, None)
        self.dirty_clients.discard(cid)
        self.expired_at_watch.pop(cid, None)
        if not keys:
            return
        by_key = self.by_key
        for key in keys:
            watchers = by_key.get(key)
            if watchers is not None:
                watchers.discard(cid)
                if not watchers:
                    del by_key[key]

    def touched(self, key: bytes) -> None:
        self.dirty_clients.update(self.by_key[key])

    def touched_existing(self, data: dict) -> None:
        for key, watchers in self.by_key.items():
            if key in data:
                self.dirty_clients.update(watchers)

    def is_dirty(self, cid: int, db) -> bool:
        """EXEC must fail: a watched key changed, or expired since WATCH."""
        if cid in self.dirty_clients:
            return True
        expired_before = self.expired_at_watch.get(cid, ())
        now = db.now()
        for key in self.by_client.get(cid, ()):
            when = db.expires.get(key)
            if when is not None and when <= now and key not in expired_before:
                return True
        return False


@command("watch", -2, "noscript loading stale fast allow_busy", (1, -1, 1), "transactions",
         multi=MULTI_RUN_NOW,
         key_specs=(KeySpec("RO", 1, -1, 1),))
def watch(ctx: Ctx, argv: list[bytes]):
    db = ctx.db
    watches = cast(ServingShardView, ctx.shard).watches  # WATCH is never replayed
    now = db.now()
    for key in argv[1:]:
        when = db.expires.get(key)
        watches.watch(ctx.client_id, key, when is not None and when <= now)
    return OK
