"""MEMORY STATS, DOCTOR, MALLOC-STATS and PURGE: answered by the router from the
shards' INFO figures. Redis' field names; the numbers are what durakv measures (each
shard's used memory, startup and peak as INFO memory has them, shards/evict.py; the
processes' resident sizes, the key counts, the clients' output buffers), and 0 for
what it does not have (replication backlog, AOF buffer, allocator internals). MALLOC-STATS
gives glibc's and CPython's figures of every process (shards/malloc_stats.py)."""

from __future__ import annotations

import os

from durakv.server.client import Client
from durakv.server.router_view import RouterView
from durakv.shards import t_memory  # noqa: F401  (the MEMORY container)
from durakv.shards.frames import VERB_INFO
from durakv.shards.internal import INFO_MALLOC, rss_bytes
from durakv.shards.malloc_stats import format_stats, malloc_stats
from durakv.shards.resp import OK, Map, Verbatim, encode
from durakv.shards.table import ROUTER, command

MEMORY_TIPS = ("nondeterministic_output", "request_policy:all_shards", "response_policy:special")
DOCTOR_EMPTY = (b"Hi Sam, this instance is empty or is using very little memory, my issues detector can't be "
                b"used in these conditions. Please, leave for your mission on Earth and fill it with some data. "
                b"The new Sam and I will be back to our programming as soon as I finished rebooting.\n")
DOCTOR_FINE = (b"Hi Sam, I can't find any memory issue in your instance. I can only account for what occurs "
               b"on this base.\n")
# Redis' thresholds and texts (object.c, getMemoryDoctorReport).
DOCTOR_EMPTY_BELOW_BYTES = 5 << 20
DOCTOR_PEAK_RATIO = 1.5
DOCTOR_RSS_RATIO = 1.4
DOCTOR_OVERHEAD_BYTES = 10 << 20
DOCTOR_CLIENT_BUFFER_BYTES = 200 * 1024
DOCTOR_MANY_SCRIPTS = 1000
DOCTOR_ISSUES = b"Sam, I detected a few issues in this Redis instance memory implants:\n\n"
DOCTOR_CLOSING = b"I'm here to keep you safe, Sam. I want to help you.\n"
DOCTOR_PEAK = (
    b" * Peak memory: In the past this instance used more than 150% the memory that is currently using. The "
    b"allocator is normally not able to release memory after a peak, so you can expect to see a big fragmentation "
    b"ratio, however this is actually harmless and is only due to the memory peak, and if the Redis instance "
    b"Resident Set Size (RSS) is currently bigger than expected, the memory will be used as soon as you fill the "
    b"Redis instance with more data. If the memory peak was only occasional and you want to try to reclaim "
    b"memory, please try the MEMORY PURGE command, otherwise the only other option is to shutdown and restart the "
    b"instance.\n\n")
DOCTOR_HIGH_RSS = (
    b" * High total RSS: This instance has a memory fragmentation and RSS overhead greater than 1.4 (this means "
    b"that the Resident Set Size of the Redis process is much larger than the sum of the logical allocations Redis "
    b"performed). This problem is usually due either to a large peak memory (check if there is a peak memory "
    b"entry above in the report) or may result from a workload that causes the allocator to fragment memory a "
    b"lot. If the problem is a large peak memory, then there is no issue. Otherwise, make sure you are using the "
    b"Jemalloc allocator and not the default libc malloc. Note: The currently used allocator is \"libc\".\n\n")
DOCTOR_BIG_CLIENT_BUFFERS = (
    b" * Big client buffers: The clients output buffers in this instance are greater than 200K per client (on "
    b"average). This may result from different causes, like Pub/Sub clients subscribed to channels bot not "
    b"receiving data fast enough, so that data piles on the Redis instance output buffer, or clients sending "
    b"commands with large replies or very large sequences of commands in the same pipeline. Please use the CLIENT "
    b"LIST command in order to investigate the issue if it causes problems in your instance, or to understand "
    b"better why certain clients are using a big amount of memory.\n\n")
DOCTOR_MANY_SCRIPTS_TEXT = (
    b" * Many scripts: There seem to be many cached scripts in this instance (more than 1000). This may be "
    b"because scripts are generated and `EVAL`ed, instead of being parameterized (with KEYS and ARGV), `SCRIPT "
    b"LOAD`ed and `EVALSHA`ed. Unless `SCRIPT FLUSH` is called periodically, the scripts' caches may end up "
    b"consuming most of your memory.\n\n")


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
    """Redis' checks on the figures durakv has (see doctor_report)."""
    router = client.router
    up = [link.index for link in router.links if link.up]

    def finish(infos: list) -> bytes:
        scripts = max((i["cached_scripts"][0] for i in infos), default=0)
        return encode(Verbatim(doctor_report(_figures(router, infos), len(router.clients), scripts)), client.proto)

    return router.fanout_internal(client, [VERB_INFO], finish, shards=up)


def doctor_report(f: dict, clients: int, scripts: int) -> bytes:
    """Redis' getMemoryDoctorReport on durakv's figures: its rules for a large peak, a
    high RSS over used memory, big client output buffers and many cached scripts
    (durakv has no replica buffers, and no allocator figures beside RSS). Redis calls
    an instance under 5 MB empty; durakv's processes start with tens of MB of
    interpreter, so here it is the memory above the startup figure that counts."""
    total, rss = f["total"], f["rss"]
    if total - f["startup"] < DOCTOR_EMPTY_BELOW_BYTES:
        return DOCTOR_EMPTY
    issues = []
    if f["peak"] / total > DOCTOR_PEAK_RATIO:
        issues.append(DOCTOR_PEAK)
    if rss / total > DOCTOR_RSS_RATIO and rss - total > DOCTOR_OVERHEAD_BYTES:
        issues.append(DOCTOR_HIGH_RSS)
    if clients and f["clients"] / clients > DOCTOR_CLIENT_BUFFER_BYTES:
        issues.append(DOCTOR_BIG_CLIENT_BUFFERS)
    if scripts > DOCTOR_MANY_SCRIPTS:
        issues.append(DOCTOR_MANY_SCRIPTS_TEXT)
    if not issues:
        return DOCTOR_FINE
    return DOCTOR_ISSUES + b"".join(issues) + DOCTOR_CLOSING


@command("memory|malloc-stats", 2, "", group="server", where=ROUTER, tips=MEMORY_TIPS)
def memory_malloc_stats(client: Client, argv: list[bytes]):
    """Redis prints jemalloc's statistics; durakv the allocators' figures of each of its
    processes (shards/malloc_stats.py): this router's, then every shard's."""
    router = client.router
    up = [link.index for link in router.links if link.up]
    own = [] if router.cluster_node else [(f"router {router.index}", os.getpid(), malloc_stats())]

    def finish(infos: list) -> bytes:
        shards = [(f"shard {i['shard']}", i["pid"], i["malloc"]) for i in infos]
        return encode(Verbatim(format_stats(own + shards).encode()), client.proto)

    return router.fanout_internal(client, [VERB_INFO, INFO_MALLOC], finish, shards=up)


@command("memory|purge", 2, "", group="server", where=ROUTER, tips=("request_policy:all_shards",
                                                                   "response_policy:all_succeeded"))
def memory_purge(client: Client, argv: list[bytes]):
    return OK
