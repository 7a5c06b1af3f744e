"""DIR/cluster.json: the shard count and node id a data directory was created
with. A data dir is never served with a different shard count (its keys would
be on the wrong shards)."""

from __future__ import annotations

import json
import os
import secrets

from durakv.log.durable_file import replace_file
from durakv.log.layout import topology_path

TOPOLOGY_VERSION = 1


class TopologyMismatch(Exception):
    pass


def ensure_topology(data_dir: str, shards: int) -> dict:
    os.makedirs(data_dir, exist_ok=True)
    path = topology_path(data_dir)
    try:
        with open(path) as f:
            topology = json.load(f)
    except FileNotFoundError:
        topology = {"version": TOPOLOGY_VERSION, "shards": shards, "node_id": secrets.token_hex(20)}
        replace_file(path, json.dumps(topology, indent=2).encode())
        return topology
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

