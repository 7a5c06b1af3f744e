"""SLOWLOG GET/LEN/RESET/HELP as Redis 7.0. A router's log holds the commands it
answered itself; each shard's holds those it executed. On a router, GET merges
its log with every reachable shard's, newest first (by the wall clock in
nanoseconds each entry was made at), and GET/LEN see at most slowlog-max-len
entries in all, as one Redis would. A shard node's log is its shard's (one per
process), so a node answers from it alone.

A shard knows a client by id only: the router (or node) fills in the address and
name of its own connected clients when it answers; an entry of a client that has
gone or is connected to another router shows them empty.
"""

from __future__ import annotations

from typing import Any

from durakv.server.client import Client
from durakv.shards.frames import VERB_SLOWLOG
from durakv.shards.numbers import parse_ll
from durakv.shards.resp import OK, Simple, encode, fixed_error
from durakv.shards.slowlog import ADDR, ARGV, CLIENT_ID, DURATION_US, ID, NAME, TIME_NS
from durakv.shards.table import ROUTER, command, container, subcommand_syntax_error

DEFAULT_GET_COUNT = 10
ERR_COUNT = fixed_error(b"ERR count should be greater than or equal to -1")

container("slowlog", "server", where=ROUTER)


def _answered_here(client: Client) -> bool:
    """A shard node's log is its shard's (one per process): it answers from it
    alone. A router adds every shard's."""
    return client.router.cluster_node


def _up_shards(client: Client) -> list[int]:
    return [link.index for link in client.router.links if link.up]


@command("slowlog|get", -2, "admin loading stale", group="server", where=ROUTER,
         tips=("request_policy:all_nodes", "nondeterministic_output"))
def slowlog_get(client: Client, argv: list[bytes]):
    if len(argv) > 3:
        raise subcommand_syntax_error(argv)
    count = DEFAULT_GET_COUNT
    if len(argv) > 2:
        value = parse_ll(argv[2])
        if value is None or value < -1:
            raise ERR_COUNT
        count = value
    router = client.router
    own = router.slowlog.newest(count)

    def merge(values: list[Any]) -> list:
        entries = own + [entry for part in values for entry in part]
        entries.sort(key=lambda entry: entry[TIME_NS], reverse=True)
        limit = router.slowlog.max_len if count < 0 else min(count, router.slowlog.max_len)
        clients = router.clients
        reply = []
        for entry in entries[:limit]:
            addr, name = entry[ADDR], entry[NAME]
            if not addr:
                known = clients.get(entry[CLIENT_ID])
                if known is not None:
                    addr, name = known.addr.encode(), known.name
            reply.append([entry[ID], entry[TIME_NS] // 1_000_000_000, entry[DURATION_US], entry[ARGV],
                          addr, name])
        return reply

    if _answered_here(client):
        return merge([])
    proto = client.proto
    return router.fanout_internal(client, [VERB_SLOWLOG, b"get", b"%d" % count],
                                  lambda values: encode(merge(values), proto), shards=_up_shards(client))


@command("slowlog|reset", 2, "admin loading stale", group="server", where=ROUTER,
         tips=("request_policy:all_nodes", "response_policy:all_succeeded"))
def slowlog_reset(client: Client, argv: list[bytes]):
    router = client.router
    router.slowlog.reset()
    if _answered_here(client):
        return OK
    return router.fanout_internal(client, [VERB_SLOWLOG, b"reset"], lambda values: b"+OK\r\n",
                                  shards=_up_shards(client))


@command("slowlog|len", 2, "admin loading stale", group="server", where=ROUTER,
         tips=("request_policy:all_nodes", "response_policy:agg_sum", "nondeterministic_output"))
def slowlog_len(client: Client, argv: list[bytes]):
    router = client.router
    own = len(router.slowlog.entries)
    if _answered_here(client):
        return own
    proto = client.proto

    def finish(values: list[Any]) -> bytes:
        return encode(min(own + sum(values), router.slowlog.max_len), proto)

    return router.fanout_internal(client, [VERB_SLOWLOG, b"len"], finish, shards=_up_shards(client))


@command("slowlog|help", 2, "loading stale", group="server", where=ROUTER)
def slowlog_help(client: Client, argv: list[bytes]):
    return [Simple(line) for line in (
        b"SLOWLOG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        b"GET [<count>]",
        b"    Return top <count> entries from the slowlog (default: 10, -1 mean all).",
        b"    Entries are made of:",
        b"    id, timestamp, time in microseconds, arguments array, client IP and port,",
        b"    client name",
        b"LEN",
        b"    Return the length of the slowlog.",
        b"RESET",
        b"    Reset the slowlog.",
        b"HELP",
        b"    Prints this help.",
    )]
