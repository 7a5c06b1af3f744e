"""Snapshotters of several nodes sharing a deployment on etcd (issue 15): exactly one
builds a given shard at a time (a build lock per shard in etcd, bound to the
snapshotter's lease; the node that holds the shard's primary is preferred), and a
snapshotter that stops renewing its lease hands its shards to another node's.

Two `durakv serve` trees on one host stand for two machines sharing a real 3-member
etcd cluster (tests/etcd_support.py) and one snapshot store (a file:// directory
standing for the S3 bucket): node a runs the primary, node b (node-role replica) its
standby; both run a snapshotter."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import uuid

import redis

from durakv.log.etcd_client import EtcdClient
from durakv.log.etcd_records import first_seq, last_seq, shard_prefix
from durakv.snapshotter.filestore import open_store
from etcd_support import until
from test_etcd_ops import SNAPSHOT_OFTEN
from test_standby_reads import two_nodes

WAIT_S = 60
TTL_S = 2
BUILT = re.compile(r"shard 0: snapshot at seq (\d+)")


def _burst(client: redis.Redis, tag: str, keys: int = 40) -> None:
    pipe = client.pipeline(transaction=False)
    for k in range(keys):
        pipe.set(f"{tag}:{k}", "v" * 500)
    pipe.execute()


def _published(url: str) -> list[int]:
    return [s.manifest.seq for s in open_store(url).list_snapshots(0) if s.complete]


def _snapshotter_pid(node) -> int:
    """The snapshotter process (the supervisor's child; not a build child it forked, which has its title)."""
    out = subprocess.run(["pgrep", "-P", str(node.proc.pid), "-f", "^durakv snapshotter "],
                         capture_output=True, text=True)
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 1, f"expected one snapshotter, found {pids}"
    return pids[0]


def _nodes(server_factory, tmp_path, etcd_cluster):
    url = f"file://{tmp_path / 'store'}"
    common = (f"etcd-lease-ttl-s = {TTL_S}\nsnapshot-max-age-s = 1\n{SNAPSHOT_OFTEN}"
              f'snapshot-url = "{url}"\nlog-level = "info"\n')
    prefix = f"snaps-{uuid.uuid4().hex[:8]}"
    node_a, node_b = two_nodes(server_factory, tmp_path, etcd_cluster, common, prefix)
    node_b.wait_ready()
    return url, node_a, node_b, prefix


def _errors(log: str) -> list[str]:
    return [line for line in log.splitlines() if "snapshot failed" in line or "ERROR" in line]


def test_one_snapshotter_builds_a_shard_across_nodes(etcd_cluster, server_factory, tmp_path):
    """Both nodes' snapshotters run on the same shard log and store: only node a's (the
    primary's node) builds shard 0, snapshots keep being published, and neither logs
    an error (before, both built every seq, and the second publish of a seq failed)."""
    url, node_a, node_b, _prefix = _nodes(server_factory, tmp_path, etcd_cluster)
    try:
        primary = node_a.shard_client(0)
        for round_no in range(6):
            _burst(primary, f"r{round_no}")
            until(lambda n=round_no: len(_published(url)) > n, f"snapshot {round_no + 1} in the store\n"
                  f"{node_a.log()[-3000:]}", WAIT_S)
        built_a = BUILT.findall(node_a.log())
        built_b = BUILT.findall(node_b.log())
        print(f"builds of shard 0: node a {len(built_a)}, node b {len(built_b)}; published {_published(url)}")
        assert built_a, "node a (the primary's node) built no snapshot"
        assert not built_b, f"node b built snapshots of a shard node a builds: {built_b}"
        assert not _errors(node_a.log()) and not _errors(node_b.log()), \
            _errors(node_a.log()) + _errors(node_b.log())
    finally:
        node_b.discard()


def test_a_stopped_snapshotter_hands_its_shards_to_another_node(etcd_cluster, server_factory, tmp_path):
    """Node a's snapshotter is stopped (SIGSTOP: its lease runs out, its process stays):
    node b's takes shard 0 over after the lease TTL and publishes the next snapshots from
    node a's; resumed, node a's publishes nothing it built meanwhile, takes the shard back
    (its node holds the primary), and nobody logs an error."""
    url, node_a, node_b, _prefix = _nodes(server_factory, tmp_path, etcd_cluster)
    try:
        primary = node_a.shard_client(0)
        _burst(primary, "before")
        until(lambda: _published(url), f"node a's first snapshot\n{node_a.log()[-3000:]}", WAIT_S)
        paused = _snapshotter_pid(node_a)
        os.kill(paused, signal.SIGSTOP)
        try:
            newest = max(_published(url))
            _burst(primary, "paused")
            until(lambda: max(_published(url)) > newest, f"node b's snapshot in the store\n{node_b.log()[-3000:]}",
                  WAIT_S)
        finally:
            os.kill(paused, signal.SIGCONT)
        built_b = len(BUILT.findall(node_b.log()))
        built_a_before = len(BUILT.findall(node_a.log()))

        def a_builds_again() -> bool:  # writes until node a's snapshotter took the shard back and built it
            _burst(primary, "after")
            return len(BUILT.findall(node_a.log())) > built_a_before
        until(a_builds_again, f"node a to build shard 0 again\n{node_a.log()[-3000:]}", WAIT_S)
        print(f"node b built {built_b} while node a's snapshotter was stopped; published {_published(url)}")
        assert not _errors(node_a.log()) and not _errors(node_b.log()), \
            _errors(node_a.log()) + _errors(node_b.log())
        assert built_b, "node b did not build shard 0 while node a's snapshotter was stopped"
    finally:
        node_b.discard()


def test_after_a_failover_the_new_primarys_node_builds_and_drops(etcd_cluster, server_factory, tmp_path):
    """kill -9 of node a (primary and snapshotter): node b's replica takes the shard over,
    node b's snapshotter takes its builds over once node a's lease expired, and node b's
    new primary drops the records its snapshots cover from etcd (before, it did too, but
    beside node a's builds of the same seqs)."""
    url, node_a, node_b, prefix = _nodes(server_factory, tmp_path, etcd_cluster)
    etcd = EtcdClient(etcd_cluster.endpoints)
    shard = shard_prefix(prefix, 0)
    try:
        _burst(node_a.shard_client(0), "before")
        until(lambda: _published(url), f"node a's first snapshot\n{node_a.log()[-3000:]}", WAIT_S)
        node_a.kill9()
        new_primary = node_b.client()

        def write_after() -> bool:
            try:
                _burst(new_primary, "after")
                return True
            except redis.RedisError:
                return False
        until(write_after, f"node b's replica to take the shard over\n{node_b.log()[-3000:]}", WAIT_S)
        tail = last_seq(etcd, shard)
        until(lambda: first_seq(etcd, shard) > tail, f"node b's primary to drop through seq {tail}\n"
              f"{node_b.log()[-3000:]}", WAIT_S)
        assert BUILT.findall(node_b.log()), "node b did not build"
        assert new_primary.get("after:39") == b"v" * 500 and new_primary.get("before:0") == b"v" * 500
        assert not _errors(node_b.log()), _errors(node_b.log())
    finally:
        node_b.discard()


def _local_snapshot(shard_dir, seq: int, value: bytes):
    from durakv.shards.keyspace import Keyspace
    from durakv.shards.slots import SLOT_COUNT
    from durakv.snapshotter.build import write_snapshot
    from durakv.snapshotter.digest import state_digest
    from durakv.snapshotter.replay import CHAIN_START

    db = Keyspace()
    db.data[b"k"] = value
    fields = dict(shard=0, shards=1, slot_ranges=[(0, SLOT_COUNT - 1)], seq=seq, epoch=1, chain=CHAIN_START,
                  parent_seq=0, parent_chain=CHAIN_START, records_replayed=seq, tail_fixed_at_ms=0,
                  last_record_at_ms=0)
    return write_snapshot(db, str(shard_dir), fields, state_digest(db))


def test_a_shard_taken_over_starts_from_the_stores_newest_snapshot(tmp_path):
    """adopt_published (a snapshotter taking a shard over): the local snapshots through the
    store's newest seq that the store does not hold (built while another node's snapshotter
    held the shard) are deleted, and the store's newest is fetched, so nothing local is
    published over a snapshot already in the store; a newer local one is kept."""
    from durakv.snapshotter.base import adopt_published
    from durakv.snapshotter.local import list_local

    store = open_store(f"file://{tmp_path / 'store'}")
    assert store.publish(_local_snapshot(tmp_path / "other", 5, b"theirs"))
    _local_snapshot(tmp_path / "mine", 3, b"old")
    _local_snapshot(tmp_path / "mine", 5, b"mine")
    fetched = adopt_published(store, 0, str(tmp_path / "mine"), last_seq=9)
    assert fetched is not None and fetched.manifest.seq == 5
    local = list_local(str(tmp_path / "mine"))
    assert [s.manifest.seq for s in local] == [5]
    assert local[0].manifest.rdb_sha256 == store.list_snapshots(0)[0].manifest.rdb_sha256
    assert not store.publish(local[-1]), "the store's own snapshot is already there"
    _local_snapshot(tmp_path / "mine", 7, b"newer")
    assert adopt_published(store, 0, str(tmp_path / "mine"), last_seq=9) is None
    assert [s.manifest.seq for s in list_local(str(tmp_path / "mine"))] == [5, 7]


def test_lastsave_on_a_node_that_does_not_build_the_shard(etcd_cluster, server_factory, tmp_path):
    """Node b's snapshotter does not build shard 0 (node a's holds its build lock), yet
    node b's status.json, LASTSAVE and INFO persistence show the newest snapshot node a
    published, and move with node a's next build (before, node b showed none: LASTSAVE
    stayed at its start time)."""
    from durakv.snapshotter.runner import read_status

    url, node_a, node_b, _prefix = _nodes(server_factory, tmp_path, etcd_cluster)
    store = open_store(url)
    try:
        b_router = redis.Redis(port=node_b.port, socket_timeout=30)
        primary = node_a.shard_client(0)
        shown = []
        for tag in ("first", "second"):
            count = len(_published(url))
            _burst(primary, tag)
            until(lambda n=count: len(_published(url)) > n, f"node a's {tag} snapshot\n"
                  f"{node_a.log()[-3000:]}", WAIT_S)
            newest = store.list_snapshots(0)[-1].manifest

            def b_shows_it(seq: int = newest.seq) -> bool:
                status = read_status(str(node_b.data_dir)).shards.get(0)
                return status is not None and status.last_seq >= seq

            until(b_shows_it, f"node b's status.json to show seq {newest.seq}\n{node_b.log()[-3000:]}", WAIT_S)
            newest = store.list_snapshots(0)[-1].manifest  # node a may have built once more meanwhile

            def shown_alike() -> tuple | None:  # status.json, LASTSAVE and INFO read at one refresh
                status = read_status(str(node_b.data_dir)).shards[0]
                lastsave = int(b_router.lastsave().timestamp())
                info = b_router.info("persistence")
                alike = lastsave == status.last_created_at_ms // 1000 == info["rdb_last_save_time"]
                return (status, lastsave) if alike else None

            status, lastsave = until(shown_alike, "node b's LASTSAVE and INFO to agree with its status.json", WAIT_S)
            assert status.published and status.built_elsewhere and status.status == "ok", status
            assert status.last_created_at_ms <= newest.created_at_ms
            shown.append((status.last_seq, lastsave))
        print(f"node b showed node a's snapshots (seq, LASTSAVE): {shown}")
        assert shown[1][0] > shown[0][0], shown
        assert not BUILT.findall(node_b.log()), "node b built shard 0"
    finally:
        node_b.discard()


def test_save_on_a_node_that_does_not_build_the_shard_asks_the_builder(etcd_cluster, server_factory, tmp_path):
    """Node a's snapshotter builds shard 0 and, by its schedule, would not build again
    for an hour; a SAVE on node b asks it for a snapshot through the log's tail (an
    etcd request key) and answers once one is published: the store's newest snapshot
    then holds every key written. A BGSAVE on node b likewise makes node a publish,
    and node b's LASTSAVE moves. Before, node b answered at once with no snapshot."""
    url = f"file://{tmp_path / 'store'}"
    rarely = (f"etcd-lease-ttl-s = {TTL_S}\nsnapshot-every-bytes = 1000000000\nsnapshot-every-percent = 0\n"
              f'snapshot-max-age-s = 3600\nsnapshot-url = "{url}"\nlog-level = "info"\n')
    node_a, node_b = two_nodes(server_factory, tmp_path, etcd_cluster, rarely, f"asked-{uuid.uuid4().hex[:8]}")
    node_b.wait_ready()
    store = open_store(url)
    try:
        b_router = redis.Redis(port=node_b.port, socket_timeout=WAIT_S)
        primary = node_a.shard_client(0)
        for round_no in range(2):  # node a's first round may find the first burst by itself; not the second
            _burst(primary, f"save{round_no}")
            assert b_router.save() is True
            newest = store.list_snapshots(0)[-1].manifest
            print(f"SAVE on node b: node a published seq {newest.seq} with {newest.keys} keys")
            assert newest.keys == 40 * (round_no + 1), newest
        lastsave = b_router.lastsave()
        until(lambda: int(time.time()) > int(lastsave.timestamp()), "a new second", WAIT_S)
        _burst(primary, "second")
        assert b_router.bgsave()
        until(lambda: b_router.lastsave() > lastsave, f"node b's LASTSAVE to move\n{node_b.log()[-3000:]}", WAIT_S)
        newest = store.list_snapshots(0)[-1].manifest
        print(f"BGSAVE on node b: node a published seq {newest.seq} with {newest.keys} keys")
        assert newest.keys == 120, newest
        assert not BUILT.findall(node_b.log()), "node b built shard 0"
        assert len(BUILT.findall(node_a.log())) >= 3, node_a.log()[-3000:]
    finally:
        node_b.discard()


def test_a_request_asked_elsewhere_is_served_when_covered_or_fails_late():
    """AskedElsewhere: a shard is done once a published snapshot reaches the seq asked
    for; one still short at the deadline is handed back as late (a SAVE then fails)."""
    from durakv.snapshotter.asked import AskedElsewhere

    asked = AskedElsewhere(timeout_s=0.2)
    asked.start("1", {0: 10, 1: 7})
    asked.covered(0, 9)
    asked.covered(1, 7)
    assert asked.targets == {0: 10} and asked.late() == {}
    until(lambda: asked.late() == {0: 10}, "shard 0 late", WAIT_S)
    assert asked.targets == {}
