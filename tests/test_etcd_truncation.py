"""Dropping covered records from a shard log on etcd shared by several nodes (issue
15): no drop removes a record a live replica on any node has not applied (each
replica publishes its applied seq in etcd, log/etcd_positions.py), the drop runs
off the shard's trio loop, and defragmentation works with etcd's authentication.

Real 3-member etcd clusters (tests/etcd_support.py) and real `durakv serve` trees."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
import redis
import trio
from etcd_cluster import EtcdCluster

from durakv.log import Log
from durakv.shards.config import Config
from durakv.shards.frames import Request
from durakv.shards.shard import Shard, SnapshotHooks

from durakv.log.errors import LogError
from durakv.log.etcd_client import EtcdClient, EtcdRequestFailed, b64, unb64
from durakv.log.etcd_positions import replica_positions
from durakv.log.etcd_records import Keys, first_seq, kvs_of, last_seq, put_op, revision_of, shard_prefix
from durakv.log.etcd_upkeep import DEFRAG_TIMEOUT_S, Defragmenter, member_sizes
from etcd_support import etcd_binary_or_skip, until
from test_etcd_ops import SNAPSHOT_OFTEN
from test_commit_thread import Sink
from test_replicas import replica_port
from test_standby_reads import readonly_get, two_nodes

WAIT_S = 60
# The etcd leases' TTL (a replica position's among them): its positions are published every TTL_S / 4.
TTL_S = 8
KEEP_ALIVE_S = 1.0  # how often PausedReplica renews the paused replica's position lease


class PausedReplica:
    """A replica stopped by SIGSTOP whose position's etcd lease the test keeps alive
    meanwhile, as a pause shorter than the lease would: the pause then lasts as long as
    the snapshots and drops it waits for take on a loaded machine. (Before, the pause
    was bounded by wall clock to stay under the lease, and at load 13-30 the snapshot
    and the drop attempt came after the window: the drop was not tried, or the
    position's lease expired and the drop went past the replica.)"""

    def __init__(self, etcd: EtcdClient, keys: Keys, name: str, pid: int) -> None:
        self.pid = pid
        os.kill(pid, signal.SIGSTOP)
        kvs = kvs_of(etcd.range(keys.replica(name)))
        assert kvs and int(kvs[0].get("lease", 0)), f"replica {name} has no position bound to a lease"
        self.lease = int(kvs[0]["lease"])
        self.position = int(json.loads(unb64(kvs[0]["value"]))["seq"])
        self.client = etcd.clone()
        self.stop = threading.Event()
        self.renewals_failed: list[str] = []
        self.expired = False  # a renewal found the lease gone: the pause outlived it after all
        self.thread = threading.Thread(target=self._renew, daemon=True)
        self.thread.start()

    def _renew(self) -> None:
        while not self.stop.wait(KEEP_ALIVE_S):
            try:
                if self.client.lease_keepalive(self.lease) <= 0:
                    self.expired = True
                    return
            except LogError as e:  # one renewal that failed: the next may still come in time
                self.renewals_failed.append(repr(e))

    def resume(self) -> None:
        """SIGCONT, then stop renewing (the replica renews its lease itself again)."""
        os.kill(self.pid, signal.SIGCONT)
        self.stop.set()
        self.thread.join()


def _until(fn, what: str, timeout_s: float = WAIT_S):
    return until(fn, what, timeout_s)


def _burst(client: redis.Redis, tag: str, keys: int = 40) -> None:
    pipe = client.pipeline(transaction=False)
    for k in range(keys):
        pipe.set(f"{tag}:{k}", "v" * 500)
    pipe.execute()


def test_a_paused_replica_on_another_node_keeps_the_records_it_still_needs(etcd_cluster, server_factory,
                                                                           tmp_path):
    """Node b's standby is paused (SIGSTOP, its position's lease kept alive) while node a
    writes, snapshots and drops covered records: the drop stops at the standby's
    published position, so once resumed the standby follows on from where it was (no
    restart from a snapshot) and shows every write; then the drop goes on past it."""
    prefix = f"trunc-{uuid.uuid4().hex[:8]}"
    # One snapshot store for both nodes (S3 in a deployment): node b's standby starts from
    # node a's snapshots; node b runs no snapshotter of its own.
    store = f'snapshot-url = "file://{tmp_path / "store"}"\n'
    node_a, node_b = two_nodes(server_factory, tmp_path, etcd_cluster,
                               f"etcd-lease-ttl-s = {TTL_S}\n{SNAPSHOT_OFTEN}{store}", prefix,
                               node_b_extra="snapshotter = false\n")
    etcd = EtcdClient(etcd_cluster.endpoints)
    shard = shard_prefix(prefix, 0)
    keys = Keys(shard.encode())
    try:
        primary = node_a.shard_client(0)
        _burst(primary, "before")
        standby_port = replica_port(node_b, 0)
        _until(lambda: readonly_get(standby_port, "before:39") == b"$500\r\n" + b"v" * 500 + b"\r\n",
               f"node b's standby to come up\n{node_b.log()[-3000:]}")
        positions = _until(lambda: replica_positions(etcd, keys), "node b's standby to publish its position")
        assert list(positions) == ["b-0"], positions
        standby_pid = node_b.child_pid("replica", "0 0")
        paused = PausedReplica(etcd, keys, "b-0", standby_pid)
        try:
            held = paused.position
            paused_at = time.monotonic()
            for round_no in range(20):
                _burst(primary, f"paused{round_no}")
            tail = last_seq(etcd, shard)
            # A snapshot covers the writes and the release loop tries to drop them: it stops at the standby.
            _until(lambda: "a replica still needs the rest (b-0 at" in node_a.log(),
                   f"node a to try a drop\n{node_a.log()[-3000:]}")
            assert first_seq(etcd, shard) <= held + 1 < tail, (first_seq(etcd, shard), held, tail)
        finally:
            paused.resume()
        assert not paused.expired, f"the paused replica's position lease expired: {paused.renewals_failed}"
        print(f"paused {time.monotonic() - paused_at:.1f} s at seq {held}; the log reached seq {tail}; "
              f"first retained seq during the pause: {first_seq(etcd, shard)}")
        _until(lambda: readonly_get(standby_port, "paused19:39") == b"$500\r\n" + b"v" * 500 + b"\r\n",
               f"the resumed standby to catch up\n{node_b.log()[-3000:]}")
        assert node_b.child_pid("replica", "0 0") == standby_pid
        assert "fell behind the log on etcd" not in node_b.log()
        # Caught up, it holds nothing back: the next drop goes past where it was paused.
        _burst(primary, "after")
        _until(lambda: first_seq(etcd, shard) > tail, "a drop past the standby's old position")
    finally:
        node_b.discard()


RECORDS = 3000
# What the shard's loop answers while the drop runs (PING is the router's own; a read of a
# clean key is answered at once by the shard).
READ = [b"STRLEN", b"k1"]
READ_REPLY = b":100\r\n"


async def test_a_big_drop_runs_off_the_shards_loop(etcd_cluster, tmp_path):
    """A shard on etcd with RECORDS records; its release loop (Shard.release_loop) drops
    them all. The release step (a hook standing for the snapshotter's release) waits,
    before the drop, for a read the shard's loop answers meanwhile, and the loop keeps
    answering reads while the drop's etcd requests run: on the loop, the first wait
    would time out and no read would be answered during the drop."""
    prefix = f"offloop-{uuid.uuid4().hex[:8]}"
    config = Config(data_dir=str(tmp_path / "data"), shards=1, log_backend="etcd",
                    etcd_endpoints=etcd_cluster.endpoints, etcd_prefix=prefix).resolved()
    shard = Shard(config, 0)
    Path(shard.dir).mkdir(parents=True)
    shard.open_log()
    sink = Sink()
    release_started = threading.Event()
    read_in_release = threading.Event()
    dropping = threading.Event()
    drop_done = threading.Event()
    dropped: list[str] = []

    def release(shard_dir: str, wal: Log, snapshot_url: str = "") -> list[str]:
        """The hook: runs wherever release_loop runs it (a worker thread, or the loop)."""
        if drop_done.is_set():
            return []
        release_started.set()
        assert read_in_release.wait(WAIT_S), "the shard's loop answered no read while the release step ran"
        dropping.set()
        try:
            dropped.extend(wal.drop_segments_through(wal.durable_seq))
        finally:
            dropping.clear()
            drop_done.set()
        return dropped

    shard.snapshots = cast(SnapshotHooks, SimpleNamespace(release_segments=release))
    reads_during_drop = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(shard.committer)
        for batch in range(RECORDS // 100):
            shard.execute_batch(sink, [Request(rid, rid, 2, [b"SET", b"k%d" % rid, b"v" * 100])
                                       for rid in range(batch * 100 + 1, batch * 100 + 101)])
            await sink.wait_for(batch * 100 + 100)
        for seq in range(shard.wal.durable_seq + 1, RECORDS + 1):
            shard.execute_batch(sink, [Request(RECORDS + seq, 0, 2, [b"SET", b"one%d" % seq, b"v"])])
        await sink.wait_for(2 * RECORDS)
        assert shard.wal.durable_seq >= RECORDS
        nursery.start_soon(shard.release_loop)
        with trio.fail_after(WAIT_S):
            while not release_started.is_set():
                await trio.sleep(0.01)
        rid = 10 * RECORDS
        assert shard.execute_batch(sink, [Request(rid, 0, 2, READ)]) == [(rid, READ_REPLY)]
        read_in_release.set()
        with trio.fail_after(WAIT_S):
            while not drop_done.is_set():
                rid += 1
                if shard.execute_batch(sink, [Request(rid, 0, 2, READ)]) == [(rid, READ_REPLY)] \
                        and dropping.is_set():
                    reads_during_drop += 1
                await trio.sleep(0.001)
        nursery.cancel_scope.cancel()
    print(f"{shard.wal.durable_seq} records dropped ({dropped}); reads answered during the drop: "
          f"{reads_during_drop}")
    assert dropped and first_seq(EtcdClient(etcd_cluster.endpoints), shard_prefix(prefix, 0)) > RECORDS
    shard.wal.close()


ROOT_PASSWORD = "root-secret"   # a throwaway cluster's; never on a command line of durakv's
TOKEN_TTL_S = 1


def _etcdctl(cluster: EtcdCluster, *args: str) -> None:
    done = subprocess.run(["etcdctl", "--endpoints", ",".join(cluster.endpoints), *args],
                          env={**os.environ, "ETCDCTL_API": "3"}, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, (args, done.stdout, done.stderr)


FREE_BYTES_THRESHOLD = 1   # any free page: how much compaction frees shows late in dbSizeInUse


def _fragment(client: EtcdClient, prefix: bytes) -> None:
    """Write ~1.5 MB, delete it and compact: every member's file then holds free pages
    (once each member's background compaction is done)."""
    for i in range(150):
        client.txn([], [put_op(prefix + b"%d" % i, b"x" * 10_000)], [])
    reply = client.txn([], [{"request_delete_range": {"key": b64(prefix), "range_end": b64(prefix + b"\xff")}}],
                       [])
    client.compact(revision_of(reply))
    _until(lambda: all(s is not None and s.free_bytes >= FREE_BYTES_THRESHOLD for s in member_sizes(client)),
           "every member's compaction to free pages")


def _defrag_round(defrag: Defragmenter) -> list[str]:
    """maybe_run until etcd is quiet and a round ran (its first looks only measure)."""
    return _until(defrag.maybe_run, "a defragmentation round")


def test_defragmentation_with_etcd_auth_across_token_expiry(tmp_path):
    """etcd with authentication (user root, simple tokens valid TOKEN_TTL_S): the
    upkeep's defragmentation authenticates with etcd-user/etcd-password on each member
    it defragments, and a later round, after the members' tokens expired, fetches new
    ones instead of failing; a user without etcd's root role is told what it lacks."""
    cluster = EtcdCluster(tmp_path / "etcd-auth", binary=etcd_binary_or_skip(),
                          extra_args=("--auth-token-ttl", str(TOKEN_TTL_S))).start()
    try:
        _etcdctl(cluster, "user", "add", f"root:{ROOT_PASSWORD}")
        _etcdctl(cluster, "user", "grant-role", "root", "root")
        _etcdctl(cluster, "role", "add", "durakv")
        _etcdctl(cluster, "role", "grant-permission", "durakv", "--prefix=true", "readwrite", "deploy/")
        _etcdctl(cluster, "user", "add", "durakv:durakv-secret")
        _etcdctl(cluster, "user", "grant-role", "durakv", "durakv")
        _etcdctl(cluster, "auth", "enable")
        client = EtcdClient(cluster.endpoints, user="root", password=ROOT_PASSWORD)
        defrag = Defragmenter(client, "deploy", free_bytes_threshold=FREE_BYTES_THRESHOLD, interval_s=1)
        sizes = []
        for round_no in range(2):
            _fragment(client, b"deploy/junk%d/" % round_no)
            time.sleep(TOKEN_TTL_S + 1)   # every member's token (from the round before) expired
            done = _defrag_round(defrag)
            sizes.append([s.db_size_bytes for s in member_sizes(client) if s is not None])
            assert sorted(done) == sorted(cluster.endpoints), (round_no, done)
        print("members' sizes after each round with auth:", sizes)
        # A user without the root role may write its prefix but not defragment: one clear line.
        plain = EtcdClient(cluster.endpoints, user="durakv", password="durakv-secret")
        with pytest.raises(EtcdRequestFailed, match="etcd's root role"):
            plain.defragment(0, DEFRAG_TIMEOUT_S)
    finally:
        cluster.stop()




def _durakv(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "durakv.server.cli", *args], capture_output=True, text=True,
                          timeout=120)


def test_log_truncate_on_etcd_drops_what_a_snapshot_covers_but_not_what_a_replica_needs(
        etcd_cluster, server_factory, tmp_path):
    """Two nodes share the log on etcd; node a runs no snapshotter (nothing drops records
    on its own). A snapshot is built into the shared store (`durakv snapshotter --once`);
    node b's standby is paused behind it. `durakv log truncate --config` (a dry run,
    then --yes) drops through the standby's position only; once the standby caught up
    (no restart), it drops through the snapshot, beside the running primary."""
    prefix = f"tool-{uuid.uuid4().hex[:8]}"
    store = f'snapshot-url = "file://{tmp_path / "store"}"\n'
    node_a, node_b = two_nodes(server_factory, tmp_path, etcd_cluster,
                               f"etcd-lease-ttl-s = {TTL_S}\nsnapshotter = false\n{store}", prefix)
    etcd = EtcdClient(etcd_cluster.endpoints)
    shard = shard_prefix(prefix, 0)
    tool_config = tmp_path / "tool.toml"
    # The tools run on node b (a data dir holding no primary: the snapshot's release there drops nothing).
    # The tools name the store by another path (a symlink): node a's primary does not take the
    # snapshot they publish for one in its own store (P/published, snapshotter/shard_hooks.py),
    # so only `log truncate` drops records here.
    (tmp_path / "store").mkdir(exist_ok=True)
    (tmp_path / "store-link").symlink_to(tmp_path / "store", target_is_directory=True)
    tool_config.write_text(Path(node_a.extra_args[1]).read_text().replace(str(tmp_path / "store"),
                                                                          str(tmp_path / "store-link"))
                           + f'data-dir = "{node_b.data_dir}"\n')
    try:
        primary = node_a.shard_client(0)
        _burst(primary, "before")
        standby_port = replica_port(node_b, 0)
        _until(lambda: readonly_get(standby_port, "before:39") == b"$500\r\n" + b"v" * 500 + b"\r\n",
               f"node b's standby to come up\n{node_b.log()[-3000:]}")
        keys = Keys(shard.encode())
        _until(lambda: replica_positions(etcd, keys).get("b-0", 0) >= last_seq(etcd, shard),
               "node b's standby to publish its position")
        standby_pid = node_b.child_pid("replica", "0 0")
        paused = PausedReplica(etcd, keys, "b-0", standby_pid)  # its position outlives the snapshot's build
        try:
            held = paused.position
            for round_no in range(5):
                _burst(primary, f"paused{round_no}")
            built = _durakv("snapshotter", "--once", "--config", str(tool_config))
            assert built.returncode == 0, built.stderr
            tail = last_seq(etcd, shard)
            dry = _durakv("log", "truncate", "--config", str(tool_config), "--shard", "0")
            assert dry.returncode == 0, dry.stderr
            print(dry.stdout)
            assert f"replicas: b-0 at seq {held}" in dry.stdout and f"drop: seqs 1..{held} " in dry.stdout
            assert "dry run" in dry.stdout and first_seq(etcd, shard) == 1
            done = _durakv("log", "truncate", "--config", str(tool_config), "--shard", "0", "--yes")
            assert done.returncode == 0, done.stderr
            assert first_seq(etcd, shard) == held + 1 and last_seq(etcd, shard) == tail
        finally:
            paused.resume()
        assert not paused.expired, f"the paused replica's position lease expired: {paused.renewals_failed}"
        _until(lambda: readonly_get(standby_port, "paused4:39") == b"$500\r\n" + b"v" * 500 + b"\r\n",
               f"the resumed standby to catch up\n{node_b.log()[-3000:]}")
        assert node_b.child_pid("replica", "0 0") == standby_pid
        assert "fell behind the log on etcd" not in node_b.log()
        _until(lambda: replica_positions(etcd, keys)["b-0"] >= tail, "the standby's position to move on")
        again = _durakv("log", "truncate", "--config", str(tool_config), "--shard", "0", "--yes")
        assert again.returncode == 0, again.stderr
        print(again.stdout)
        assert first_seq(etcd, shard) == tail + 1, again.stdout   # the snapshot covers every record
        assert primary.set("after", "1") and primary.get("before:0") == b"v" * 500
    finally:
        node_b.discard()
