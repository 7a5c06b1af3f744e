"""The cluster as clients are told it (CLUSTER SLOTS/SHARDS/NODES, MOVED): with
`cluster-announce = "shards"` every shard is a master node on its own port, with
its own node id; with "router", the router is the one node owning every slot.
With a tls-port, each node also has a TLS port: TLS clients are told the TLS
ports, plain clients the plain ones (Redis with tls-cluster yes)."""

from __future__ import annotations

from typing import NamedTuple

from durakv.log.lease import pid_alive
from durakv.server.topology import replica_node_id
from durakv.shards.config import Config, replica_port, shard_port, tls_replica_port, tls_shard_port
from durakv.shards.replica_board import STATE_ONLINE, ReplicaBoard, ReplicaSlot
from durakv.shards.slots import SLOT_COUNT, slot_ranges


class Node(NamedTuple):
    node_id: str
    port: int  # 0: none (port 0, TLS only)
    tls_port: int  # 0: none (no tls-port)
    first_slot: int
    last_slot: int
    shard: int  # -1: the router (announce "router")
    replica: int = -1  # the replica's number; -1: the shard's primary (a master)


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


def replica_online(config: Config, node: Node) -> bool:
    return any(slot.number == node.replica and slot.state == STATE_ONLINE
               for slot in replica_slots(config, node.shard))
