"""Cluster emulation: the router presents itself as one master node owning all
16384 slots, so cluster clients connect, learn one node, and never see MOVED."""

from __future__ import annotations

from durakv.server.client import Client
from durakv.server.info import cluster_lines, shard_states
from durakv.shards.args import int_arg
from durakv.shards.frames import VERB_COUNTKEYSINSLOT, VERB_GETKEYSINSLOT
from durakv.shards.resp import OK, Map, ReplyError, Verbatim, encode
from durakv.shards.slots import SLOT_COUNT, key_slot
from durakv.shards.table import MULTI_REFUSED, ROUTER, command, container

container("cluster", "cluster", where=ROUTER)



def announced_ip(client: Client) -> bytes:
    router = client.router
    if router.config.announce_ip:
        return router.config.announce_ip.encode()
    bind = router.config.bind
    if bind in ("0.0.0.0", "::", ""):
        return client.laddr.rsplit(":", 1)[0].encode()
    return bind.encode()


@command("cluster|slots", 2, "stale", group="cluster", where=ROUTER, tips=("nondeterministic_output",))
def cluster_slots(client: Client, argv: list[bytes]):
    node = [announced_ip(client), client.router.port, client.router.node_id.encode(), Map([])]
    return [[0, SLOT_COUNT - 1, node]]


@command("cluster|shards", 2, "stale", group="cluster", where=ROUTER, tips=("nondeterministic_output",))
def cluster_shards(client: Client, argv: list[bytes]):
    router = client.router
    node = Map([
        b"id", router.node_id.encode(),
        b"port", router.port,
        b"ip", announced_ip(client),
        b"endpoint", announced_ip(client),
        b"role", b"master",
        b"replication-offset", 0,
        b"health", b"online" if router.shards_up() else b"failed",
    ])
    return [Map([b"slots", [0, SLOT_COUNT - 1], b"nodes", [node]])]


@command("cluster|nodes", 2, "stale", group="cluster", where=ROUTER, tips=("nondeterministic_output",))
def cluster_nodes(client: Client, argv: list[bytes]):
    router = client.router
    ip = announced_ip(client).decode()
    line = (f"{router.node_id} {ip}:{router.port}@{router.port + 10000} myself,master - 0 0 1 "
            f"connected 0-{SLOT_COUNT - 1}\n")
    return Verbatim(line.encode())


@command("cluster|info", 2, "stale", group="cluster", where=ROUTER, tips=("nondeterministic_output",))
def cluster_info(client: Client, argv: list[bytes]):
    state, slots_ok, slots_fail = cluster_lines(client.router)
    lines = [
        state,
        f"cluster_slots_assigned:{SLOT_COUNT}",
        slots_ok,
        "cluster_slots_pfail:0",
        slots_fail,
        "cluster_known_nodes:1",
        "cluster_size:1",
        "cluster_current_epoch:1",
        "cluster_my_epoch:1",
        "cluster_stats_messages_sent:0",
        "cluster_stats_messages_received:0",
        "total_cluster_links_buffer_limit_exceeded:0",
        *(s.line() for s in shard_states(client.router) if not s.up),  # which slots are down, and why
    ]
    return Verbatim(("\r\n".join(lines) + "\r\n").encode())


@command("cluster|myid", 2, "stale", group="cluster", where=ROUTER)
def cluster_myid(client: Client, argv: list[bytes]):
    return client.router.node_id.encode()


@command("cluster|keyslot", 3, "stale", group="cluster", where=ROUTER)
def cluster_keyslot(client: Client, argv: list[bytes]):
    return key_slot(argv[2])


@command("cluster|countkeysinslot", 3, "stale", group="cluster", where=ROUTER,
         multi=MULTI_REFUSED)
def cluster_countkeysinslot(client: Client, argv: list[bytes]):
    slot = int_arg(argv[2])
    if not 0 <= slot < SLOT_COUNT:
        raise ReplyError(b"ERR Invalid slot")
    router = client.router
    return router.ask_shard(client, router.slot_owner[slot], [VERB_COUNTKEYSINSLOT, b"%d" % slot],
                            lambda count: b":%d\r\n" % count)


@command("cluster|getkeysinslot", 4, "stale", group="cluster", where=ROUTER, tips=("nondeterministic_output",),
         multi=MULTI_REFUSED)
def cluster_getkeysinslot(client: Client, argv: list[bytes]):
    slot = int_arg(argv[2])
    count = int_arg(argv[3])
    if not 0 <= slot < SLOT_COUNT or count < 0:
        raise ReplyError(b"ERR Invalid slot or number of keys")
    router = client.router
    proto = client.proto
    return router.ask_shard(client, router.slot_owner[slot],
                            [VERB_GETKEYSINSLOT, b"%d" % slot, b"%d" % count],
                            lambda keys: encode(keys, proto))


@command("readonly", 1, "loading stale fast", group="cluster", where=ROUTER,
         acl="connection")
def readonly(client: Client, argv: list[bytes]):
    return OK


@command("readwrite", 1, "loading stale fast", group="cluster", where=ROUTER,
         acl="connection")
def readwrite(client: Client, argv: list[bytes]):
    return OK


@command("asking", 1, "fast", group="cluster", where=ROUTER,
         acl="connection")
def asking(client: Client, argv: list[bytes]):
    return OK
