"""MULTI/EXEC/DISCARD/UNWATCH on the router: commands after MULTI are checked
and queued here, and EXEC ships the whole transaction to the one shard that owns
its keys, where it runs atomically (shards/t_multi.py)."""

from __future__ import annotations

from server.client import Client
from shards.resp import OK, ReplyError
from shards.t_multi import pack_transaction
from shards.table import ROUTER, command

ERR_EXECABORT = ReplyError(b"EXECABORT Transaction discarded because of previous errors.")


@command("multi", 1, "noscript loading stale fast allow_busy", group="transactions", where=ROUTER)
def multi(client: Client, argv: list[bytes]):
    if client.multi is not None:
        raise ReplyError(b"ERR MULTI calls can not be nested")
    client.multi = []
    client.multi_error = False
    client.multi_shard = None
    return OK


@command("exec", 1, "noscript loading stale skip_slowlog", group="transactions", where=ROUTER)
def exec_(client: Client, argv: list[bytes]):
    if client.multi is None:
        raise ReplyError(b"ERR EXEC without MULTI")
    queued = client.multi
    failed = client.multi_error
    shard = client.multi_shard
    client.multi = None
    client.multi_error = False
    client.multi_shard = None
    if failed:
        client.unwatch_all()
        raise ERR_EXECABORT
    watched = client.watch_shards
    if shard is None:
        shard = next(iter(watched)) if watched else 0
    if watched - {shard}:
        client.unwatch_all()
        raise ReplyError(b"CROSSSLOT Keys in request don't hash to the same slot")
    watched.discard(shard)  # EXEC clears the watches on that shard itself
    link = client.router.links[shard]
    slot = link.submit(client, client.proto, [b"\x00exec", pack_transaction(queued)])
    client.replies.append(slot)
    return slot


@command("discard", 1, "noscript loading stale fast allow_busy", group="transactions", where=ROUTER)
def discard(client: Client, argv: list[bytes]):
    if client.multi is None:
        raise ReplyError(b"ERR DISCARD without MULTI")
    client.multi = None
    client.multi_error = False
    client.multi_shard = None
    client.unwatch_all()
    return OK


@command("unwatch", 1, "noscript loading stale fast allow_busy", group="transactions", where=ROUTER)
def unwatch(client: Client, argv: list[bytes]):
    client.unwatch_all()
    return OK
