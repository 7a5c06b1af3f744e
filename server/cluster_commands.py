"""CLUSTER SLOTS/SHARDS/NODES/INFO/MYID and friends, on the router and on every
shard's node (server/node.py). With `cluster-announce = "shards"` (the default)
the shards are the master nodes, each on its own port, and cluster clients talk
straight to them; the node answering is flagged `myself` (the router is none of
them). With "router", the router is the one node owning every slot, so cluster
clients connect to it and never see MOVED (server/cluster_view.py)."""

from __future__ import annotations

from durakv.server.client import Client
from durakv.server.cluster_view import (
    Node, announced_ip, cluster_nodes, other_replicas, primary_node, replica_nodes, replica_online,
)
from durakv.server.info import cluster_lines, shard_states
from durakv.server.tls import is_tls
from durakv.shards.args import int_arg
from durakv.shards.frames import VERB_COUNTKEYSINSLOT, VERB_GETKEYSINSLOT
from durakv.shards.resp import OK, Map, ReplyError, Simple, Verbatim, encode
from durakv.shards.slots import SLOT_COUNT, key_slot
from durakv.shards.table import MULTI_REFUSED, ROUTER, command, container

container("cluster", "cluster", where=ROUTER)


def _nodes(client: Client) -> list[Node]:
    """The primaries, in slot order: on several nodes, each where it leads now."""
    view = client.router
    router_port = view.config.port if view.cluster_node else view.port
    return [primary_node(view.directory, node)
            for node in cluster_nodes(view.config, view.router_node_id, router_port, view.shard_node_ids)]


def _client_port(client: Client, node: Node) -> int:
    """The node's port of the client's own kind (TLS or plain)."""
    return node.tls_port if is_tls(client.sock) else node.port


def _replicas(client: Client, node: Node) -> list[Node]:
    """This node's replicas of the primary's shard, then the other live nodes' (several nodes)."""
    view = client.router
    local = node if not node.ip else node._replace(ip=b"")
    return [*replica_nodes(view.config, view.router_node_id, local), *other_replicas(view.directory, node)]


def _is_myself(client: Client, node: Node) -> bool:
    view = client.router
    return node.node_id == view.node_id if view.cluster_node else node.shard < 0


def _node_up(client: Client, node: Node) -> bool:
    view = client.router
    if node.replica >= 0:
        # Another node's: online while it follows (its live entry in etcd), as Redis flags a failed replica.
        return node.live if node.ip else replica_online(view.config, node, view.directory)
    if node.shard < 0 or view.cluster_node:
        return view.shards_up()
    return bool(view.links[node.shard].up)


def _flags(client: Client, node: Node, up: bool) -> list[str]:
    """CLUSTER NODES flags in Redis' order (myself, master/slave, fail): a replica that
    stopped following is `fail` (not `fail?`: the lapse of its live entry or position is
    one fact every node reads alike, as Redis' FAIL once a majority agreed)."""
    flags = ["myself"] if _is_myself(client, node) else []
    flags.append("master" if node.replica < 0 else "slave")
    if node.replica >= 0 and not up:
        flags.append("fail")
    return flags


def _holds(client: Client, slot: int) -> bool:
    """Whether keys of `slot` are here: everywhere on the router; on a node, only
    its own slots (a cluster node counts and lists its own keys only)."""
    view = client.router
    return not view.cluster_node or view.slot_owner[slot] == view.index


@command("cluster|slots", 2, "stale", group="cluster", where=ROUTER, tips=("nondeterministic_output",))
def cluster_slots(client: Client, argv: list[bytes]):
    ip = announced_ip(client.router.config, client.laddr)
    return [[node.first_slot, node.last_slot,
             *([n.ip or ip, _client_port(client, n), n.node_id.encode(), Map([])]
               for n in [node, *(r for r in _replicas(client, node) if _node_up(client, r))])]
            for node in _nodes(client)]


@command("cluster|shards", 2, "stale", group="cluster", where=ROUTER, tips=("nondeterministic_output",))
def cluster_shards(client: Client, argv: list[bytes]):
    ip = announced_ip(client.router.config, client.laddr)
    out = []
    for primary in _nodes(client):
        entries = []
        for node in [primary, *_replicas(client, primary)]:
            ports = [b"port", node.port] if node.port else []
            if node.tls_port:
                ports += [b"tls-port", node.tls_port]
            entries.append(Map([
                b"id", node.node_id.encode(),
                *ports,
                b"ip", node.ip or ip,
                b"endpoint", node.ip or ip,
                b"role", b"master" if node.replica < 0 else b"replica",
                b"replication-offset", 0,
                b"health", b"online" if _node_up(client, node) else b"failed",
            ]))
        out.append(Map([b"slots", [primary.first_slot, primary.last_slot], b"nodes", entries]))
    return out


@command("cluster|nodes", 2, "stale", group="cluster", where=ROUTER, tips=("nondeterministic_output",))
def cluster_nodes_(client: Client, argv: list[bytes]):
    ip = announced_ip(client.router.config, client.laddr).decode()
    lines = []
    for epoch, primary in enumerate(_nodes(client), 1):
        for node in [primary, *_replicas(client, primary)]:
            up = _node_up(client, node)
            flags = ",".join(_flags(client, node, up))
            link = "connected" if up else "disconnected"
            port = _client_port(client, node)
            master = "-" if node.replica < 0 else primary.node_id
            slots = f" {node.first_slot}-{node.last_slot}" if node.replica < 0 else ""
            lines.append(f"{node.node_id} {node.ip.decode() or ip}:{port}@{port + 10000} {flags} {master} 0 0 {epoch} "
                         f"{link}{slots}\n")
    return Verbatim("".join(lines).encode())


@command("cluster|info", 2, "stale", group="cluster", where=ROUTER, tips=("nondeterministic_output",))
def cluster_info(client: Client, argv: list[bytes]):
    state, slots_ok, slots_fail = cluster_lines(client.router)
    nodes = _nodes(client)
    lines = [
        state,
        f"cluster_slots_assigned:{SLOT_COUNT}",
        slots_ok,
        "cluster_slots_pfail:0",
        slots_fail,
        f"cluster_known_nodes:{len(nodes)}",
        f"cluster_size:{len(nodes)}",
        f"cluster_current_epoch:{len(nodes)}",
        f"cluster_my_epoch:{client.router.index + 1 if client.router.cluster_node else 1}",
        "cluster_stats_messages_sent:0",
        "cluster_stats_messages_received:0",
        "total_cluster_links_buffer_limit_exceeded:0",
        *(s.line() for s in shard_states(client.router) if not s.up),  # which slots are down, and why
    ]
    return Verbatim(("\r\n".join(lines) + "\r\n").encode())


@command("cluster|myid", 2, "stale", group="cluster", where=ROUTER)
def cluster_myid(client: Client, argv: list[bytes]):
    return client.router.node_id.encode()


CLUSTER_HELP = [
    b"CLUSTER <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    b"COUNTKEYSINSLOT <slot>",
    b"    Return the number of keys in <slot>.",
    b"GETKEYSINSLOT <slot> <count>",
    b"    Return key names stored by current node in a slot.",
    b"INFO",
    b"    Return information about the cluster.",
    b"KEYSLOT <key>",
    b"    Return the hash slot for <key>.",
    b"MYID",
    b"    Return the node id.",
    b"NODES",
    b"    Return cluster configuration seen by node. Output format:",
    b"    <id> <ip:port> <flags> <master> <pings> <pongs> <epoch> <link> <slot> ...",
    b"RESET [HARD|SOFT]",
    b"    Refused: durakv assigns every slot to its shards at start.",
    b"SHARDS",
    b"    Return information about slot range mappings and the nodes associated with them.",
    b"SLOTS",
    b"    Return information about slots range mappings. Each range is made of:",
    b"    start, end, master and replicas IP addresses, ports and ids",
    b"HELP",
    b"    Prints this help.",
]


@command("cluster|help", 2, "loading stale", group="cluster", where=ROUTER)
def cluster_help(client: Client, argv: list[bytes]):
    return [Simple(line) for line in CLUSTER_HELP]


@command("cluster|reset", -2, "admin stale noscript", group="cluster", where=ROUTER)
def cluster_reset(client: Client, argv: list[bytes]):
    """The nodes and their slots follow from the shard count: nothing to reset."""
    if len(argv) > 3 or (len(argv) == 3 and argv[2].lower() not in (b"hard", b"soft")):
        raise ReplyError(b"ERR syntax error")
    raise ReplyError(b"ERR CLUSTER RESET is not supported: durakv assigns every slot to its shards at start")


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
    if not _holds(client, slot):
        return 0
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
    if not _holds(client, slot):
        return []
    proto = client.proto
    return router.ask_shard(client, router.slot_owner[slot],
                            [VERB_GETKEYSINSLOT, b"%d" % slot, b"%d" % count],
                            lambda keys: encode(keys, proto))


@command("readonly", 1, "loading stale fast", group="cluster", where=ROUTER,
         acl="connection")
def readonly(client: Client, argv: list[bytes]):
    """On a replica's node, this connection's reads run there (server/node.py ReplicaGate)."""
    readonly_ids = getattr(client.router, "readonly_ids", None)
    if readonly_ids is not None:
        readonly_ids.add(client.id)
    return OK


@command("readwrite", 1, "loading stale fast", group="cluster", where=ROUTER,
         acl="connection")
def readwrite(client: Client, argv: list[bytes]):
    readonly_ids = getattr(client.router, "readonly_ids", None)
    if readonly_ids is not None:
        readonly_ids.discard(client.id)
    return OK


@command("asking", 1, "fast", group="cluster", where=ROUTER,
         acl="connection")
def asking(client: Client, argv: list[bytes]):
    return OK
