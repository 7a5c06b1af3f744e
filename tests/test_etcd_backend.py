"""A durakv tree whose shard logs live on etcd (`log-backend = "etcd"`), against a
real 3-member etcd cluster: acknowledged writes survive kill -9 of the etcd leader
and then of the tree, snapshots read and bound the log on etcd, and
`serve` refuses to start on unreachable etcd or a prefix of another shard count."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid

import redis
from proctools import free_port

from durakv.log.etcd_client import EtcdClient
from durakv.log.etcd_records import first_seq, last_seq, shard_prefix
from test_snapshot import dump
from test_snapshot_serve import _wait_for

WRITERS = 8
WRITE_RUN_S = 1.5


def etcd_config(tmp_path, endpoints: list[str], prefix: str, extra: str = "") -> str:
    path = tmp_path / f"durakv-{uuid.uuid4().hex[:6]}.toml"
    listed = ", ".join(f'"{e}"' for e in endpoints)
    path.write_text(f'log-backend = "etcd"\netcd-endpoints = [{listed}]\netcd-prefix = "{prefix}"\n{extra}')
    return str(path)


def test_acknowledged_writes_survive_kill9_of_the_tree(etcd_cluster, server_factory, tmp_path):
    prefix = f"tree-{uuid.uuid4().hex[:8]}"
    config = etcd_config(tmp_path, etcd_cluster.endpoints, prefix)
    data_dir = tmp_path / "data"
    srv = server_factory(shards=2, extra_args=("--config", config), data_dir=data_dir)
    big = bytes(range(256)) * 12_000  # 3 MB: a record over etcd's request limit, written in parts
    srv.client().set("big", big)
    acked: dict[bytes, bytes] = {b"big": big}
    stop = threading.Event()

    def write(writer: int) -> None:
        client = redis.Redis(port=srv.port, socket_timeout=10)
        n = 0
        while not stop.is_set():
            key, value = b"w%d:%d" % (writer, n), b"v%d" % n
            try:
                client.set(key, value)
            except redis.ConnectionError:
                return  # the tree was killed
            acked[key] = value
            n += 1

    threads = [threading.Thread(target=write, args=(i,)) for i in range(WRITERS)]
    for t in threads:
        t.start()
    time.sleep(WRITE_RUN_S / 2)
    leader = etcd_cluster.leader_index()
    assert leader is not None
    at_etcd_kill = len(acked)
    etcd_cluster.kill9(leader)  # the shards' clients move to the other members
    _wait_for(lambda: len(acked) > at_etcd_kill + WRITERS, "writes to go on after the etcd leader was killed")
    after_etcd_kill = len(acked) - at_etcd_kill
    srv.kill9()  # while the writers still write
    stop.set()
    for t in threads:
        t.join(30)
    etcd_cluster.start_member(leader)
    etcd_cluster.wait_healthy()
    assert len(acked) > WRITERS
    client = EtcdClient(etcd_cluster.endpoints)
    records = sum(last_seq(client, shard_prefix(prefix, i)) for i in range(2))
    assert records > 0  # the writes are on etcd (a record holds a batch: several clients' SETs)

    again = server_factory(shards=2, extra_args=("--config", config), data_dir=data_dir)
    r = again.client()
    values = r.mget(list(acked))
    missing = [k for k, v, got in zip(acked, acked.values(), values) if got != v]
    print(f"{len(acked)} acknowledged SETs from {WRITERS} writers ({after_etcd_kill} after kill -9 of the etcd "
          f"leader), {records} records on etcd")
    assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:5]}"
    assert r.dbsize() >= len(acked)
    persistence = r.info("persistence")
    assert persistence["log_backend"] == "etcd"
    assert persistence["etcd_shard0"]["epoch"] == 2 and persistence["etcd_shard1"]["lease_valid"] == 1


def serve_once(args: list[str], tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "durakv.server.cli", "serve", "--port", str(free_port()),
                           "--data-dir", str(tmp_path / "refused"), *args],
                          capture_output=True, text=True, timeout=60)


def test_serve_refuses_unreachable_etcd(tmp_path):
    config = etcd_config(tmp_path, ["http://127.0.0.1:1"], "unreachable")
    done = serve_once(["--config", config], tmp_path)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no etcd endpoint answers" in lines[0] and "127.0.0.1:1" in lines[0], done.stderr


def test_serve_refuses_a_prefix_of_another_shard_count(etcd_cluster, tmp_path):
    prefix = f"count-{uuid.uuid4().hex[:8]}"
    config = etcd_config(tmp_path, etcd_cluster.endpoints, prefix)
    from durakv.shards.log_backend import record_shard_count

    assert record_shard_count(EtcdClient(etcd_cluster.endpoints), prefix, 2) == 2
    done = serve_once(["--config", config, "--shards", "3"], tmp_path)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "holds the logs of 2 shards, not 3" in lines[0], done.stderr


def test_snapshots_read_the_log_on_etcd_and_bound_it(etcd_cluster, server_factory, tmp_path):
    """The snapshotter builds from the records on etcd; the shards then drop the records
    a snapshot covers from etcd; a restart loads the snapshot plus the rest from etcd."""
    prefix = f"snap-{uuid.uuid4().hex[:8]}"
    config = etcd_config(tmp_path, etcd_cluster.endpoints, prefix,
                         "snapshot-every-bytes = 8192\nsnapshot-cpu-percent = 100\n")
    srv = server_factory(shards=2, extra_args=("--config", config))
    client = srv.client()
    for round_no in range(40):
        pipe = client.pipeline(transaction=False)
        for k in range(20):
            pipe.set(f"k{k}", f"{round_no}:" + "v" * 200)
        pipe.incr("counter")
        pipe.execute()
    etcd = EtcdClient(etcd_cluster.endpoints)
    _wait_for(lambda: all(first_seq(etcd, shard_prefix(prefix, i)) > 1 for i in range(2)),
              "both shards to drop records a snapshot covers from etcd")
    dropped = [first_seq(etcd, shard_prefix(prefix, i)) - 1 for i in range(2)]
    tails = [last_seq(etcd, shard_prefix(prefix, i)) for i in range(2)]
    print(f"records dropped from etcd per shard: {dropped}, log tails {tails}")
    client.set("last", "one")
    live = dump(client)
    srv.kill9()
    restarted = server_factory(shards=2, extra_args=("--config", config), data_dir=srv.data_dir)
    assert dump(restarted.client()) == live
    assert "loaded snapshot seq" in restarted.log()


def test_a_deposed_shard_acknowledges_nothing(etcd_cluster, server_factory, tmp_path):
    """Another writer takes shard 0's leader key: the shard's next write is refused by
    etcd, so its client never sees OK; the shard exits, restarts, takes the key back,
    and the refused write is nowhere."""
    from durakv.log.etcd_log import EtcdLog

    prefix = f"deposed-{uuid.uuid4().hex[:8]}"
    config = etcd_config(tmp_path, etcd_cluster.endpoints, prefix)
    srv = server_factory(shards=1, extra_args=("--config", config))
    r = srv.client()
    assert r.set("before", "1")
    usurper = EtcdLog.open(EtcdClient(etcd_cluster.endpoints), shard_prefix(prefix, 0))
    usurper.take_lease("usurper")
    try:
        reply = r.set("refused", "1")
    except redis.RedisError as e:
        reply = e
    assert reply is not True, "a deposed shard acknowledged a write"
    print(f"the deposed shard's client got: {reply!r}")
    usurper.close()
    _wait_for(lambda: _get(srv.port, "before") == b"1", "the restarted shard to serve")
    assert _get(srv.port, "refused") is None
    assert "deposed" in srv.log()


def _get(port: int, key: str) -> bytes | None | Exception:
    try:
        return redis.Redis(port=port, socket_timeout=5).get(key)
    except redis.RedisError as e:
        return e
