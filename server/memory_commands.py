"""MEMORY STATS, DOCTOR, MALLOC-STATS and PURGE: answered by the router from the
shards' INFO figures. Redis' field names; the numbers are what durakv measures (each
shard's used memory, startup and peak as INFO memory has them, shards/evict.py; the
processes' resident sizes, the key counts, the clients' output buffers), and 0 for
what it does not have (replication backlog, AOF buffer, allocator internals)."""

from __future__ import annotations

from durakv.server.client import Client
from durakv.server.router_view import RouterView
from durakv.shards import t_memory  # noqa: F401  (the MEMORY container)
from durakv.shards.frames import VERB_INFO
from durakv.shards.internal import rss_bytes
from durakv.shards.resp import OK, Map, Verbatim, encode
from durakv.shards.table import ROUTER, command

MEMORY_TIPS = ("nondeterministic_output", "request_policy:all_shards", "response_policy:special")
DOCTOR_EMPTY = (b"Hi Sam, this instance is empty or is using very little memory, my issues detector can't be "
                b"used in these conditions. Please, leave for your mission on Earth and fill it with some data. "
                b"The new Sam and I will be back to our programming as soon as I finished rebooting.\n")
DOCTOR_FINE = (b"Hi Sam, I can't find any memory issue in your instance. I can only account for what occurs "
               b"on this base.\n")


def _figures(router: RouterView, infos: list[dict]) -> dict:
    memory = [i["memory"] for i in infos]
    rss = sum(i["rss_bytes"] for i in infos) + rss_bytes()
    total = sum(m["used_memory"] for m in memory)
    clients = sum(c.outbuf_bytes for c in router.clients.values())
    keys = sum(i["keys"] for i in infos)
    return {"total": total, "rss": rss, "startup": sum(m["used_memory_startup"] for m in memory),
            "peak": max(sum(m["used_memory_peak"] for m in memory), total),
            "clients": clients, "keys": keys, "expires": sum(i["expires"] for i in infos)}


def _stats_reply(f: dict) -> Map:
    total, startup, peak, rss = f["total"], f["startup"], f["peak"], f["rss"]
    overhead = startup + f["clients"]
    dataset = max(total - overhead, 0)
    items: list = [
        b"peak.allocated", peak, b"total.allocated", total, b"startup.allocated", startup,
        b"replication.backlog", 0, b"clients.slaves", 0, b"clients.normal", f["clients"],
        b"cluster.links", 0, b"aof.buffer", 0, b"lua.caches", 0, b"functions.caches", 0,
    ]
    if f["keys"]:
        items += [b"db.0", Map([b"overhead.hashtable.main", 0, b"overhead.hashtable.expires", 0,
                               b"overhead.hashtable.slot-to-keys", 0])]
    items += [
        b"overhead.total", overhead,
        b"keys.count", f["keys"], b"keys.bytes-per-key", (total - startup) // f["keys"] if f["keys"] else 0,
        b"dataset.bytes", dataset,
        b"dataset.percentage", dataset * 100.0 / (total - startup) if total > startup else 0.0,
        b"peak.percentage", total * 100.0 / peak if peak else 100.0,
        b"allocator.allocated", total, b"allocator.active", total, b"allocator.resident", total,
        b"allocator-fragmentation.ratio", 1.0, b"allocator-fragmentation.bytes", 0,
        b"allocator-rss.ratio", 1.0, b"allocator-rss.bytes", 0,
        b"rss-overhead.ratio", 1.0, b"rss-overhead.bytes", 0,
        b"fragmentation", rss / total if total else 1.0, b"fragmentation.bytes", rss - total,
    ]
    return Map(items)


@command("memory|stats", 2, "", group="server", where=ROUTER, tips=MEMORY_TIPS)
def memory_stats(client: Client, argv: list[bytes]):
    router = client.router
    up = [link.index for link in router.links if link.up]
    return router.fanout_internal(
        client, [VERB_INFO], lambda infos: encode(_stats_reply(_figures(router, infos)), client.proto), shards=up)


@command("memory|doctor", 2, "", group="server", where=ROUTER, tips=MEMORY_TIPS)
def memory_doctor(client: Client, argv: list[bytes]):
    """Redis' report when there is nothing to look at, else its all-clear: durakv keeps
    no peak or allocator figures for the issues Redis' doctor looks for."""
    router = client.router
    up = [link.index for link in router.links if link.up]

    def finish(infos: list) -> bytes:
        return encode(Verbatim(DOCTOR_FINE if _figures(router, infos)["keys"] else DOCTOR_EMPTY), client.proto)

    return router.fanout_internal(client, [VERB_INFO], finish, shards=up)


@command("memory|malloc-stats", 2, "", group="server", where=ROUTER, tips=MEMORY_TIPS)
def memory_malloc_stats(client: Client, argv: list[bytes]):
    return b"Stats not supported for the current allocator"  # Redis' answer without jemalloc


@command("memory|purge", 2, "", group="server", where=ROUTER, tips=("request_policy:all_shards",
                                                                   "response_policy:all_succeeded"))
def memory_purge(client: Client, argv: list[bytes]):
    return OK
