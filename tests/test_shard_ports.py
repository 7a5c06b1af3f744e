"""Shard client ports (issue 11 §1): every shard is a Redis Cluster node on its
own port, cluster clients learn the shards from CLUSTER SLOTS and talk straight
to them, and the router keeps serving plain clients."""

from __future__ import annotations

import os
import random
import signal
import shutil
import socket
import subprocess
import sys
import time

import pytest
import redis
from redis.cluster import RedisCluster

from refserver import RawConn
from durakv.shards.slots import key_slot
from test_durability import Writer, check_writers, wait_for_progress
from test_shard_crash import shard_keys

SHARDS = 2
LAST_SLOT_OF_SHARD_0 = 8191
CROSSSLOT = b"-CROSSSLOT Keys in request don't hash to the same slot\r\n"


def owner(key: str) -> int:
    return 0 if key_slot(key.encode()) <= LAST_SLOT_OF_SHARD_0 else 1


def without_myself(nodes: bytes) -> bytes:
    return nodes.replace(b"myself,", b"")


def test_redis_cluster_from_router_and_from_a_shard_port(server_factory):
    srv = server_factory(shards=SHARDS)
    keys = [f"key:{i}" for i in range(200)]
    for bootstrap_port in (srv.port, srv.shard_port(1)):
        cluster = RedisCluster(host="127.0.0.1", port=bootstrap_port, socket_timeout=30)
        assert {node.port for node in cluster.get_primaries()} == {srv.shard_port(0), srv.shard_port(1)}
        for key in keys:
            assert cluster.set(key, f"{bootstrap_port}:{key}")
        assert [cluster.get(key) for key in keys] == [f"{bootstrap_port}:{key}".encode() for key in keys]
        # MGET across slots: RedisCluster splits it by slot.
        assert cluster.mget_nonatomic(keys[:20]) == [f"{bootstrap_port}:{k}".encode() for k in keys[:20]]
        assert cluster.mset({"{user:1}:name": "ann", "{user:1}:age": "7"})
        assert cluster.mget("{user:1}:name", "{user:1}:age") == [b"ann", b"7"]
        cluster.close()
    # Each key is on the shard owning its slot; the other shard answers MOVED to the owner's port.
    direct = [RawConn(srv.shard_port(i)) for i in range(SHARDS)]
    for key in keys:
        mine = owner(key)
        assert direct[mine].call("GET", key) == b"$%d\r\n%s:%s\r\n" % (
            len(f"{srv.shard_port(1)}:{key}"), str(srv.shard_port(1)).encode(), key.encode())
        assert direct[1 - mine].call("GET", key) == (
            b"-MOVED %d 127.0.0.1:%d\r\n" % (key_slot(key.encode()), srv.shard_port(mine)))
    # Redis Cluster's rule on a node: keys in different slots are CROSSSLOT even on one shard.
    a, b = shard_keys(0, 2, "same-shard:")
    assert key_slot(a.encode()) != key_slot(b.encode())
    assert direct[0].call("MSET", a, "1", b, "2") == CROSSSLOT
    # One hash tag: the owning node runs it, the other redirects it.
    tag_owner = owner("t")
    assert direct[tag_owner].call("MSET", "{t}a", "1", "{t}b", "2") == b"+OK\r\n"
    assert direct[1 - tag_owner].call("MSET", "{t}a", "1", "{t}b", "2") == (
        b"-MOVED %d 127.0.0.1:%d\r\n" % (key_slot(b"t"), srv.shard_port(tag_owner)))
    # Keyless commands answer for this node's slots only.
    counts = [int(c.call("DBSIZE")[1:-2]) for c in direct]
    assert sum(counts) == int(RawConn(srv.port).call("DBSIZE")[1:-2])
    assert all(counts)
    scanned = set()
    cursor = b"0"
    while True:
        cursor, found = redis.Redis(port=srv.shard_port(0)).scan(cursor, count=50)
        scanned.update(found)
        if cursor == 0:
            break
    assert scanned == set(redis.Redis(port=srv.shard_port(0)).keys("*"))
    assert all(owner(k.decode()) == 0 for k in scanned) and scanned
    # CLUSTER COUNTKEYSINSLOT/GETKEYSINSLOT on a node count its own keys only, as in Redis Cluster.
    slot_key = shard_keys(1, 1, "counted:")[0]
    assert direct[1].call("SET", slot_key, "v") == b"+OK\r\n"
    slot = key_slot(slot_key.encode())
    assert direct[1].value("CLUSTER", "COUNTKEYSINSLOT", slot) >= 1
    assert slot_key.encode() in direct[1].value("CLUSTER", "GETKEYSINSLOT", slot, 1000)
    assert direct[0].value("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
    assert direct[0].value("CLUSTER", "GETKEYSINSLOT", slot, 10) == []
    info = redis.Redis(port=srv.shard_port(1)).info()
    assert info["tcp_port"] == srv.shard_port(1)
    assert info["db0"]["keys"] == counts[1] + 1  # and slot_key


def test_cluster_topology_is_the_same_from_the_router_and_every_shard_port(server_factory):
    srv = server_factory(shards=SHARDS)
    ports = [srv.port] + [srv.shard_port(i) for i in range(SHARDS)]
    conns = [RawConn(port) for port in ports]
    slots = [c.call("CLUSTER", "SLOTS") for c in conns]
    shards = [c.call("CLUSTER", "SHARDS") for c in conns]
    nodes = [c.value("CLUSTER", "NODES") for c in conns]
    assert len(set(slots)) == 1 and len(set(shards)) == 1, (slots, shards)
    assert len({without_myself(n) for n in nodes}) == 1, nodes
    lines = nodes[0].decode().splitlines()
    assert len(lines) == SHARDS
    assert [line.split()[1].split("@")[0] for line in lines] == [f"127.0.0.1:{srv.shard_port(i)}"
                                                                 for i in range(SHARDS)]
    assert b"myself" not in nodes[0]  # the router is none of the nodes
    for i in range(SHARDS):
        mine = [line for line in nodes[1 + i].decode().splitlines() if "myself" in line]
        assert len(mine) == 1 and mine[0].split()[0] == conns[1 + i].value("CLUSTER", "MYID").decode()
        assert f":{srv.shard_port(i)}@" in mine[0]
    # Node ids are stable across a restart (cluster.json).
    srv.stop()
    again = server_factory(shards=SHARDS, data_dir=srv.data_dir)
    ids = [line.split()[0] for line in RawConn(again.port).value("CLUSTER", "NODES").decode().splitlines()]
    assert ids == [line.split()[0] for line in lines]


def test_redis_cli_follows_moved_from_a_shard_port(server_factory):
    if shutil.which("redis-cli") is None:
        pytest.skip("redis-cli not installed")
    srv = server_factory(shards=SHARDS)
    keys = shard_keys(1, 5, "cli:")
    for key in keys:
        out = subprocess.run(["redis-cli", "-c", "-p", str(srv.shard_port(0)), "SET", key, f"v-{key}"],
                             capture_output=True, text=True, timeout=30)
        assert out.stdout.strip() == "OK", out
        out = subprocess.run(["redis-cli", "-c", "-p", str(srv.shard_port(0)), "GET", key],
                             capture_output=True, text=True, timeout=30)
        assert out.stdout.strip() == f"v-{key}", out
    assert srv.client().mget(keys) == [f"v-{k}".encode() for k in keys]


def test_connection_features_on_a_shard_port(server_factory, tmp_path):
    srv = server_factory(shards=SHARDS)
    node = RawConn(srv.shard_port(0))
    local = shard_keys(0, 1, "tx:")[0]
    remote = shard_keys(1, 1, "tx:")[0]
    # MULTI/EXEC on one slot runs; a key of another node's slot gets MOVED and aborts the transaction.
    assert node.call("MULTI") == b"+OK\r\n"
    assert node.call("SET", local, "1") == b"+QUEUED\r\n"
    assert node.call("INCR", local) == b"+QUEUED\r\n"
    assert node.call("EXEC") == b"*2\r\n+OK\r\n:2\r\n"
    assert node.call("MULTI") == b"+OK\r\n"
    assert node.call("SET", remote, "1").startswith(b"-MOVED %d " % key_slot(remote.encode()))
    assert node.call("EXEC").startswith(b"-EXECABORT")
    assert node.call("WATCH", local) == b"+OK\r\n"
    assert node.call("WATCH", remote).startswith(b"-MOVED")
    assert node.call("SELECT", "0") == b"+OK\r\n"
    assert node.call("READONLY") == b"+OK\r\n" and node.call("READWRITE") == b"+OK\r\n"
    assert node.call("CLIENT", "SETNAME", "n1") == b"+OK\r\n"
    assert node.call("CLIENT", "GETNAME") == b"$2\r\nn1\r\n"
    assert node.call("COMMAND", "COUNT").startswith(b":")
    assert node.call("CONFIG", "GET", "maxclients").startswith(b"*2\r\n")
    # A blocking pop on a shard port, served by a push through the router.
    queue = shard_keys(0, 1, "queue:")[0].encode()
    blocked = RawConn(srv.shard_port(0))
    blocked.send_raw(b"*3\r\n$5\r\nBLPOP\r\n$%d\r\n%s\r\n$1\r\n0\r\n" % (len(queue), queue))
    time.sleep(0.2)
    assert srv.client().lpush(queue, "x") == 1
    assert blocked.read_reply() == b"*2\r\n$%d\r\n%s\r\n$1\r\nx\r\n" % (len(queue), queue)
    # RESP3
    resp3 = RawConn(srv.shard_port(1), proto=3)
    assert resp3.call("HGETALL", shard_keys(1, 1, "nope:")[0]) == b"%0\r\n"
    assert resp3.call("HELLO", "3").startswith(b"%7\r\n")


def test_requirepass_and_config_set_on_a_shard_port(server_factory, tmp_path):
    (tmp_path / "password").write_text("sekret")
    srv = server_factory(shards=SHARDS, extra_args=("--requirepass-file", str(tmp_path / "password")))
    node = RawConn(srv.shard_port(0))
    assert node.call("GET", "x") == b"-NOAUTH Authentication required.\r\n"
    assert node.call("AUTH", "sekret") == b"+OK\r\n"
    # CONFIG SET on a node: every router and node takes it, and shard parameters reach every shard.
    assert node.call("CONFIG", "SET", "hash-max-listpack-entries", "1") == b"+OK\r\n"
    for port in (srv.port, srv.shard_port(0), srv.shard_port(1)):
        client = redis.Redis(port=port, password="sekret")
        assert client.config_get("hash-max-listpack-entries") == {"hash-max-listpack-entries": "1"}
    router = redis.Redis(port=srv.port, password="sekret")
    for shard in range(SHARDS):
        key = shard_keys(shard, 1, "hash:")[0]
        router.hset(key, mapping={"a": "1", "b": "2"})
        assert router.object("encoding", key) == b"hashtable"
    # requirepass set through the router reaches the nodes' clients too.
    router.config_set("requirepass", "other")
    assert RawConn(srv.shard_port(1)).call("AUTH", "sekret").startswith(b"-WRONGPASS")
    assert RawConn(srv.shard_port(1)).call("AUTH", "other") == b"+OK\r\n"


def test_announce_router_keeps_the_one_node_answer(server_factory):
    srv = server_factory(shards=SHARDS, extra_args=("--cluster-announce", "router"))
    conn = RawConn(srv.port)
    myid = conn.value("CLUSTER", "MYID")
    assert conn.value("CLUSTER", "SLOTS") == [[0, 16383, [b"127.0.0.1", srv.port, myid, []]]]
    assert conn.value("CLUSTER", "NODES").decode() == (
        f"{myid.decode()} 127.0.0.1:{srv.port}@{srv.port + 10000} myself,master - 0 0 1 connected 0-16383\n")
    info = conn.value("CLUSTER", "INFO").decode()
    assert "cluster_known_nodes:1\r\n" in info and "cluster_state:ok\r\n" in info
    shards = conn.value("CLUSTER", "SHARDS")
    assert len(shards) == 1 and shards[0][:2] == [b"slots", [0, 16383]]
    # A shard port gives the same answer (the router is the node to use).
    assert RawConn(srv.shard_port(0)).value("CLUSTER", "SLOTS") == conn.value("CLUSTER", "SLOTS")
    cluster = RedisCluster(host="127.0.0.1", port=srv.port)
    assert [n.port for n in cluster.get_primaries()] == [srv.port]
    cluster.set("a", "1")
    assert cluster.get("a") == b"1"
    cluster.close()


def test_a_taken_shard_port_is_one_line_and_exit_1(tmp_path):
    from proctools import free_port

    port = free_port()
    taken = socket.socket()
    taken.bind(("127.0.0.1", port + 2))
    taken.listen(1)
    out = subprocess.run([sys.executable, "-m", "durakv.server.cli", "serve", "--port", str(port), "--shards", "2",
                          "--data-dir", str(tmp_path / "d")], capture_output=True, text=True, timeout=60)
    # `durakv shard` run alone (the systemd unit) binds its own port: status 2, which its unit does not restart.
    alone = subprocess.run([sys.executable, "-m", "durakv.server.cli", "shard", "--index", "1", "--port", str(port),
                            "--shards", "2", "--data-dir", str(tmp_path / "d")], capture_output=True, text=True,
                           timeout=60)
    taken.close()
    assert out.returncode == 1, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert f"port {port + 2}" in lines[0] and "shard 1" in lines[0] and "shard-port-base" in lines[0]
    assert alone.returncode == 2 and alone.stderr.strip().splitlines() == lines, alone
    assert not (tmp_path / "d").exists()


class ClusterWriter(Writer):
    """test_durability's Writer on one shard's port: its keys share a hash tag of
    that shard's slots, so none is MOVED."""

    def __init__(self, srv, index: int, prefix: str) -> None:
        shard = index % SHARDS
        tag = shard_keys(shard, index // SHARDS + 1, "tag")[-1]
        super().__init__(srv.shard_port(shard), index, prefix=f"{{{tag}}}{prefix}")


def test_acked_writes_on_shard_ports_survive_kill9_of_the_whole_tree(server_factory, tmp_path):
    rng = random.Random(4321)
    data_dir = tmp_path / "crash"
    history: list[list[Writer]] = []
    for trial in range(2):
        srv = server_factory(shards=SHARDS, data_dir=data_dir)
        for writers in history:
            check_writers(srv.client(), writers)
        writers = [ClusterWriter(srv, i, f"t{trial}:") for i in range(4)]
        for w in writers:
            w.start()
        time.sleep(rng.uniform(0.2, 0.8))
        wait_for_progress(writers)
        srv.kill9()
        for w in writers:
            w.join(30)
        history.append(writers)
        print(f"trial {trial}: {sum(len(w.acked_sets) for w in writers)} acknowledged SETs before kill -9")
    srv = server_factory(shards=SHARDS, data_dir=data_dir)
    for writers in history:
        check_writers(srv.client(), writers)


def test_a_restarted_shard_serves_its_port_again(server_factory):
    """The supervisor bound the port; a restarted (forked) shard inherits it, so
    a client connecting meanwhile waits in the backlog instead of being refused."""
    from test_supervisor import alive, wait_until

    srv = server_factory(shards=SHARDS)
    key = shard_keys(1, 1, "restart:")[0]
    assert srv.shard_client(1).set(key, "before")
    pid = srv.child_pid("shard", 1)
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not alive(pid), "shard 1 to die")
    assert srv.shard_client(1).get(key) == b"before"
    assert srv.child_pid("shard", 1) != pid
