"""MULTI/EXEC/DISCARD/UNWATCH on the router: commands after MULTI are checked
and queued here, and EXEC ships the whole transaction to the one shard that owns
its keys, where it runs atomically (shards/t_multi.py)."""

from __future__ import annotations

from durakv.server import replication
from durakv.server.client import CROSS_SHARD, Client
from durakv.server.links import Pending
from durakv.shards.frames import VERB_AS_USER, VERB_EXEC
from durakv.shards.numbers import parse_ll
from durakv.shards.resp import OK, ReplyError, fixed_error
from durakv.shards.t_multi import pack_transaction
from durakv.shards.table import MULTI_RUN_NOW, ROUTER, command, lookup
from durakv.shards.txn import WHOLE_KEYSPACE

ERR_EXECABORT = fixed_error(b"EXECABORT Transaction discarded because of previous errors.")


@command("multi", 1, "noscript loading stale fast allow_busy", group="transactions", where=ROUTER,
         multi=MULTI_RUN_NOW)
def multi(client: Client, argv: list[bytes]):
    if client.multi is not None:
        raise ReplyError(b"ERR MULTI calls can not be nested")
    client.multi = []
    client.multi_error = False
    client.multi_shard = None
    return OK


@command("exec", 1, "noscript loading stale skip_slowlog", group="transactions", where=ROUTER,
         multi=MULTI_RUN_NOW)
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
        shard = next(iter(watched)) if watched else client.router.home_shard
    if shard == CROSS_SHARD or watched - {shard}:
        return _exec_across_shards(client, client.run_router_commands(queued))
    watched.discard(shard)  # EXEC clears the watches on that shard itself
    link = client.router.links[shard]
    # A restricted user's scripts were queued with its rules: their denials come ahead of the reply.
    scripts = not client.user.unrestricted and any(argv[0] == VERB_AS_USER for argv in queued)
    pending = Pending(client, on_fill=client.router.acl.script_reply) if scripts else None
    pending = link.submit(client, client.proto, [VERB_EXEC, pack_transaction(client.run_router_commands(queued))],
                          pending)
    client.replies.append(pending)
    return pending


def _exec_across_shards(client: Client, queued: list[list[bytes]]):
    """A transaction whose keys (or WATCHed keys) live on several shards: atomic
    across them (server/txn.py); with KEYS, DBSIZE, FLUSHDB... every shard is locked whole;
    the keys SORT BY/GET patterns read are found and locked as the transaction runs."""
    for argv in queued:
        if argv[0][:1] == b"\x00":  # a literal reply, an ACL user's script
            continue
        cmd = lookup(argv)
        if cmd.waits_for_all and cmd.name not in WHOLE_KEYSPACE:
            client.unwatch_all()
            raise ReplyError(b"CROSSSLOT Keys in request don't hash to the same slot")
    return client.router.cross_shard(client, queued, True)


@command("discard", 1, "noscript loading stale fast allow_busy", group="transactions", where=ROUTER,
         multi=MULTI_RUN_NOW)
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


def _wait_timeout(text: bytes) -> int:
    timeout = parse_ll(text)
    if timeout is None:
        raise ReplyError(b"ERR timeout is not an integer or out of range")
    if timeout < 0:
        raise ReplyError(b"ERR timeout is negative")
    return timeout


@command("wait", 3, "noscript", group="generic", where=ROUTER, acl="connection",
         tips=("request_policy:all_shards", "response_policy:agg_min"))
def wait(client: Client, argv: list[bytes]):
    """Every acknowledged write is already durable; with replicas, how many applied
    the client's writes (server/replication.py)."""
    numreplicas = parse_ll(argv[1])
    if numreplicas is None:
        raise ReplyError(b"ERR value is not an integer or out of range")
    return replication.wait(client, numreplicas, _wait_timeout(argv[2]))


@command("waitaof", 4, "noscript", group="generic", where=ROUTER)
def waitaof(client: Client, argv: list[bytes]):
    """Redis 7.2's answer for a local fsync: in sync mode a write's reply only
    leaves once its log record is fsync'd, so the local count is always 1."""
    numlocal = parse_ll(argv[1])
    numreplicas = parse_ll(argv[2])
    if numlocal is None or numreplicas is None:
        raise ReplyError(b"ERR value is not an integer or out of range")
    _wait_timeout(argv[3])
    return [1, 0]
