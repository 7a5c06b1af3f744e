"""SAVE and INFO rdb_changes_since_last_save across nodes on etcd (issue 15): every node
answers the changes since the newest published snapshot, the primary's node, a
replica-role node and one that builds nothing alike (before, each router counted log
effects from when it first saw a snapshot); a SAVE on a node that does not build a shard
fails once the builder's snapshot is late past the asked bound.

Two `durakv serve` trees on one host stand for two machines sharing a real 3-member etcd
cluster (tests/etcd_support.py) and a file:// store: node a runs shard 0's primary and
builds its snapshots, node b (node-role replica) its standby and builds nothing."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from conftest import DurakvServer
from etcd_support import until
from durakv.snapshotter.build import BUILD_HOLD_STEP
from durakv.snapshotter.filestore import open_store
from test_etcd_backend import etcd_config
from test_standby_reads import ADVERTISED_HOST, two_nodes

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


HOLD_ENV = "DURAKV_TXN_HOLD"  # shards/txn.py: a build waits at the step the file names
ASKED_TIMEOUT_S = 3  # node b's bound for the snapshots it asks of node a (snapshotter/asked.py)


def test_save_fails_when_the_builder_does_not_publish_in_time(etcd_cluster, server_factory, tmp_path):
    """Node a builds shard 0 but its builds are held mid-way (DURAKV_TXN_HOLD at
    snapshot-mid-build: the lock kept, nothing published); a SAVE on node b, which asks
    node a for the snapshot, fails after node b's bound (3 s here, 300 s by default) with
    the shard named, rather than waiting the 10 minutes SAVE allows itself. Released,
    node a publishes and the next SAVE on node b succeeds."""
    url = f"file://{tmp_path / 'store'}"
    prefix = f"late-{uuid.uuid4().hex[:8]}"
    hold_file = tmp_path / "hold-a"
    hold_file.write_text(BUILD_HOLD_STEP)
    endpoints = etcd_cluster.endpoints
    node_a = server_factory(shards=1, env={HOLD_ENV: str(hold_file)}, extra_args=(
        "--config", etcd_config(tmp_path, endpoints, prefix, _rarely(url)),
        "--node-id", "a", "--advertise", f"{ADVERTISED_HOST}:7000"))
    config_b = etcd_config(tmp_path, endpoints, prefix, _rarely(url) + "replicas = 1\n")
    node_b = DurakvServer(tmp_path / "node-b", shards=1, env={"DURAKV_TEST_ASKED_TIMEOUT_S": str(ASKED_TIMEOUT_S)},
                          extra_args=("--config", config_b, "--node-id", "b", "--node-role", "replica",
                                      "--advertise", f"{ADVERTISED_HOST}:7001"))
    node_b.start()
    try:
        a_router = redis.Redis(port=node_a.port, socket_timeout=WAIT_S)
        b_router = redis.Redis(port=node_b.port, socket_timeout=WAIT_S)
        a_router.mset({f"k{i}": "v" for i in range(10)})
        started = time.monotonic()
        with pytest.raises(redis.ResponseError) as failed:
            b_router.save()
        took_s = time.monotonic() - started
        print(f"SAVE on node b failed after {took_s:.1f} s: {failed.value}")
        message = str(failed.value)
        assert message.startswith("SAVE failed: shard 0: no snapshot through seq "), message
        assert message.endswith(f"published by the node building it within {ASKED_TIMEOUT_S} s"), message
        # On a loaded machine node a's snapshotter may reach its held build only after node b gave up.
        until(lambda: "build held at step " + BUILD_HOLD_STEP in node_a.log(),
              f"node a's build held\n{node_a.log()[-3000:]}", WAIT_S)
        assert open_store(url).list_snapshots(0) == [], "node a published while held"
        hold_file.unlink()
        assert b_router.save() is True
        newest = open_store(url).list_snapshots(0)[-1].manifest
        assert newest.keys == 10 and newest.changes == 10, newest
        assert _changes(b_router) == 0
    finally:
        node_b.discard()
