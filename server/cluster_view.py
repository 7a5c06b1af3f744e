"""The cluster as clients are told it (CLUSTER SLOTS/SHARDS/NODES, MOVED): with
`cluster-announce = "shards"` every shard is a master node on its own port, with
its own node id; with "router", the router is the one node owning every slot.
With a tls-port, each node also has a TLS port: TLS clients are told the TLS
ports, plain clients the plain ones (Redis with tls-cluster yes)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Container, NamedTuple

from durakv.log.lease import pid_alive
from durakv.server.topology import replica_node_id
from durakv.shards.config import Config, replica_port, shard_port, tls_replica_port, tls_shard_port
from durakv.shards.log_backend import uses_etcd
from durakv.shards.replica_board import STATE_ONLINE, ReplicaBoard, ReplicaSlot
from durakv.shards.slots import SLOT_COUNT, slot_ranges

if TYPE_CHECKING:
    from durakv.server.node_links import NodeDirectory


class Node(NamedTuple):
    node_id: str
    port: int  # 0: none (port 0, TLS only)
    tls_port: int  # 0: none (no tls-port)
    first_slot: int
    last_slot: int
    shard: int  # -1: the router (announce "router")
    replica: int = -1  # the replica's number; -1: the shard's primary (a master)
    ip: bytes = b""  # another node's address (server/node_links.py); b"": this node's, announced_ip
    live: bool = False  # another node's replica: following now (its live entry in etcd, log/etcd_nodes.py)


def announced_ip(config: Config, laddr: str) -> bytes:
    """announce-ip if set, else the bound address, else (bound to every address)
    the address the client reached us on (laddr "ip:port")."""
    if config.announce_ip:
        return config.announce_ip.encode()
    if config.bind in ("0.0.0.0", "::", ""):
        return laddr.rsplit(":", 1)[0].encode()
    return config.bind.encode()


def cluster_nodes(config: Config, router_node_id: str, router_port: int, ids: list[str]) -> list[Node]:
    """The master nodes, in slot order (ids: each shard's node id, server/topology.py)."""
    if config.cluster_announce == "router":
        return [Node(router_node_id, router_port, config.tls_port, 0, SLOT_COUNT - 1, -1)]
    return [Node(ids[i], shard_port(config, i), tls_shard_port(config, i), first, last, i)
            for i, (first, last) in enumerate(slot_ranges(config.shards))]


_boards: dict[tuple[str, int], ReplicaBoard] = {}


def replica_slots(config: Config, shard: int) -> list[ReplicaSlot]:
    """What shard `shard`'s replicas published (shards/replica_board.py), of those
    whose process still runs."""
    key = (config.data_dir, shard)
    board = _boards.get(key)
    if board is None:
        board = _boards[key] = ReplicaBoard(config.data_dir, shard)
    return [slot for slot in board.slots(config.replicas) if pid_alive(slot.pid)]


def replica_nodes(config: Config, router_node_id: str, primary: Node) -> list[Node]:
    """The replica nodes of a primary (none with announce "router"), with whether each is online."""
    if primary.shard < 0 or not config.replicas:
        return []
    topology = {"node_id": router_node_id}
    return [Node(replica_node_id(topology, primary.shard, r), replica_port(config, primary.shard, r),
                 tls_replica_port(config, primary.shard, r), primary.first_slot, primary.last_slot, primary.shard, r)
            for r in range(config.replicas)]


def replica_silence_limit_ms(config: Config) -> int:
    """How long a replica may go without a look at the log (its replica board slot's
    heard_at_ms) before it is shown failed: as long as a silent primary keeps its lease
    (the etcd lease TTL, as another node's replica's live entry; else lease-duration-ms).
    A replica looks every millisecond on a local log, every quarter TTL on etcd."""
    return config.etcd_lease_ttl_s * 1000 if uses_etcd(config) else config.lease_duration_ms


def replica_online(config: Config, node: Node, directory: NodeDirectory | None = None) -> bool:
    """This node's replica is online while its process runs, it finished loading and it
    looked at the log lately (a paused replica is alive but follows nothing); with
    several nodes, also while its live entry is in etcd, as the other nodes judge it."""
    if directory is not None and (node.shard, f"{directory.node_id}-{node.replica}") not in directory.state.replicas:
        return False
    now_ms = time.time_ns() // 1_000_000
    limit_ms = replica_silence_limit_ms(config)
    return any(slot.number == node.replica and slot.state == STATE_ONLINE and now_ms - slot.heard_at_ms <= limit_ms
               for slot in replica_slots(config, node.shard))


# --- nodes on several machines (node-id set; server/node_links.py) -----------------------

def node_ip(config: Config) -> str:
    """The address other nodes' clients are told for this node's ports: announce-ip,
    else --advertise's host, else the bind address."""
    return config.announce_ip or config.advertise.rpartition(":")[0] or config.bind.split()[0]


def node_entry(config: Config, router_node_id: str, ids: list[str]) -> dict[str, Any]:
    """What this node serves (its etcd entry, log/etcd_nodes.py): each shard's primary
    port and its replicas' ports, with their node ids."""
    primaries = cluster_nodes(config, router_node_id, config.port, ids)
    return {"node": config.node_id, "ip": node_ip(config), "role": config.node_role,
            "shards": [[list(primary[:6]), [list(r[:7]) for r in replica_nodes(config, router_node_id, primary)]]
                       for primary in primaries]}


def _remote(entry: dict[str, Any], shard: int, live: Container[tuple[int, str]]) -> tuple[Node, list[Node]] | None:
    """Shard `shard`'s primary and replica nodes in another node's entry; live: the
    replicas following now, as (shard, "<node>-<number>")."""
    try:
        primary, replicas = entry["shards"][shard]
        ip = str(entry["ip"]).encode()
        node_id = str(entry["node"])
        return Node._make([*primary[:6], -1, ip, True]), [
            Node._make([*replica[:7], ip, (shard, f"{node_id}-{replica[6]}") in live]) for replica in replicas]
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def primary_node(directory: NodeDirectory | None, local: Node) -> Node:
    """The shard's primary as clients are told it: another node's when that node leads
    the shard (and has published its entry), else this node's."""
    if directory is None or local.shard < 0:
        return local
    leader = directory.leader_node(local.shard)
    if leader is None or leader == directory.node_id:
        return local
    remote = _remote(directory.state.nodes.get(leader, {}), local.shard, directory.state.replicas)
    return remote[0] if remote is not None else local


def other_replicas(directory: NodeDirectory | None, primary: Node) -> list[Node]:
    """The shard's replicas on the other live nodes (not the leading one), each `live`
    while it follows the log."""
    if directory is None or primary.shard < 0:
        return []
    leader = directory.leader_node(primary.shard)
    state = directory.state
    out: list[Node] = []
    for node_id, entry in sorted(state.nodes.items()):
        if node_id not in (directory.node_id, leader):
            remote = _remote(entry, primary.shard, state.replicas)
            if remote is not None:
                out += remote[1]
    return out


class RemoteReplica(NamedTuple):
    ip: str
    port: int
    applied_seq: int
    heard_at_ms: int  # wall clock of its last publish (log/etcd_positions.py); 0: not said


def other_nodes_replicas(directory: NodeDirectory | None, shard: int) -> list[RemoteReplica]:
    """Shard `shard`'s replicas following on the other nodes (their live entries in etcd,
    with how far each applied), where their node's entry says they listen; for INFO
    replication on this node. A live entry whose node has no entry (yet) is left out."""
    if directory is None:
        return []
    state = directory.state
    out = []
    for (live_shard, _name), live in sorted(state.replicas.items()):
        node_id = str(live.get("node", ""))
        if live_shard != shard or node_id == directory.node_id:
            continue
        remote = _remote(state.nodes.get(node_id, {}), shard, ())
        port = next((r.port for r in remote[1] if r.replica == live.get("number")), 0) if remote else 0
        if remote is not None and port:
            try:
                out.append(RemoteReplica(remote[0].ip.decode(), port, int(live.get("seq", 0)),
                                         int(live.get("at_ms", 0))))
            except (TypeError, ValueError):
                continue   # not a position: it cannot say how far the replica is
    return out
