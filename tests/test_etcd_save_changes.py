"""INFO rdb_changes_since_last_save across nodes on etcd (issue 15): every node answers
the changes since the newest published snapshot, the primary's node, a replica-role node
and one that builds nothing alike (before, node b read 0 and each router counted from
when it first saw a snapshot).

Two `durakv serve` trees on one host stand for two machines sharing a real 3-member etcd
cluster (tests/etcd_support.py) and a file:// store: node a runs shard 0's primary and
builds its snapshots, node b (node-role replica) its standby and builds nothing."""

from __future__ import annotations

import uuid

import redis

from etcd_support import until
from durakv.snapshotter.filestore import open_store
from test_standby_reads import two_nodes

WAIT_S = 120
TTL_S = 2


def _changes(client: redis.Redis) -> int:
    return client.info("persistence")["rdb_changes_since_last_save"]


def _rarely(url: str) -> str:
    """Snapshots only when asked (SAVE/BGSAVE): a scheduled one would restart the count."""
    return (f"etcd-lease-ttl-s = {TTL_S}\nsnapshot-every-bytes = 1000000000\nsnapshot-every-percent = 0\n"
            f'snapshot-max-age-s = 3600\nsnapshot-url = "{url}"\nlog-level = "info"\n')


def test_changes_since_save_alike_on_every_node(etcd_cluster, server_factory, tmp_path):
    url = f"file://{tmp_path / 'store'}"
    node_a, node_b = two_nodes(server_factory, tmp_path, etcd_cluster, _rarely(url), f"chg-{uuid.uuid4().hex[:8]}")
    node_b.wait_ready()
    store = open_store(url)
    try:
        a_router = redis.Redis(port=node_a.port, socket_timeout=WAIT_S)
        b_router = redis.Redis(port=node_b.port, socket_timeout=WAIT_S)

        def both(expected: int) -> tuple[int, int]:
            seen = (_changes(a_router), _changes(b_router))
            return seen if seen == (expected, expected) else ()

        a_router.mset({f"k{i}": "v" for i in range(10)})
        a_router.delete("k0", "k1")
        expected = 10 + 2
        until(lambda: both(expected), f"both nodes to count {expected}: {(_changes(a_router), _changes(b_router))}",
              WAIT_S)
        assert b_router.save() is True  # node a builds (node b asks it: snapshotter/asked.py)
        newest = store.list_snapshots(0)[-1].manifest
        print(f"SAVE on node b: node a published seq {newest.seq}, changes {newest.changes}")
        assert newest.changes == expected, newest
        until(lambda: both(0), f"both nodes to count 0 after the SAVE: {(_changes(a_router), _changes(b_router))}",
              WAIT_S)
        a_router.lpush("list", "a", "b", "c")
        a_router.set("k2", "w")
        until(lambda: both(4), f"both nodes to count 4: {(_changes(a_router), _changes(b_router))}", WAIT_S)
        assert a_router.bgsave()
        until(lambda: both(0), f"both nodes to count 0 after the BGSAVE: {(_changes(a_router), _changes(b_router))}",
              WAIT_S)
        assert store.list_snapshots(0)[-1].manifest.changes == expected + 4
    finally:
        node_b.discard()
