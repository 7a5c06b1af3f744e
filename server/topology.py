"""DIR/cluster.json: the shard count and node id a data directory was created
with. A data dir is never served with a different shard count (its keys would
be on the wrong shards)."""

from __future__ import annotations

import hashlib
import json
import os
import secrets

from durakv.log.durable_file import create_durably
from durakv.log.layout import topology_path

TOPOLOGY_VERSION = 1


class TopologyMismatch(Exception):
    pass


def ensure_topology(data_dir: str, shards: int) -> dict:
    """The data dir's topology, created on first use. Processes started together
    (systemd starts a router and its shards at once) may race to create it: the
    first creation wins and every other process reads that one."""
    os.makedirs(data_dir, exist_ok=True)
    path = topology_path(data_dir)
    if not os.path.exists(path):
        topology = {"version": TOPOLOGY_VERSION, "shards": shards, "node_id": secrets.token_hex(20)}
        if create_durably(path, json.dumps(topology, indent=2).encode()):
            return topology
    try:
        with open(path) as f:
            topology = json.load(f)
    except (OSError, ValueError) as e:
        raise TopologyMismatch(f"cannot read {path} ({e}); it records this data dir's shard count: "
                               "restore it, or start from an empty data dir") from None
    if not isinstance(topology, dict) or not isinstance(topology.get("shards"), int):
        raise TopologyMismatch(f"{path} has no shard count; restore it, or start from an empty data dir")
    if topology["shards"] != shards:
        raise TopologyMismatch(
            f"{path} says this data dir has {topology['shards']} shards, not {shards}; "
            f"start with --shards {topology['shards']}"
        )
    return topology



def shard_node_ids(topology: dict) -> list[str]:
    """Each shard's Redis Cluster node id (40 hex digits). Derived from the data
    dir's node id, so it is stable across restarts and every process computes the
    same one, and a data dir made before shards had ports needs no new field."""
    base = topology["node_id"].encode()
    return [hashlib.sha1(base + b":shard:%d" % i).hexdigest() for i in range(topology["shards"])]


def replica_node_id(topology: dict, shard: int, number: int) -> str:
    """The node id of replica `number` of `shard` (stable, as shard_node_ids)."""
    return hashlib.sha1(topology["node_id"].encode() + b":shard:%d:replica:%d" % (shard, number)).hexdigest()
