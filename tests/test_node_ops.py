"""Operating several nodes (issue 15): CONFIG SET reaches every node through etcd.

Each node is a `durakv serve` tree on one host standing for a machine, sharing its
shard logs on a real 3-member etcd cluster (tests/etcd_support.py): node a runs the
primaries, nodes b and c (node-role replica) only replicas."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import redis
import trustme

from conftest import DurakvServer
from proctools import free_port, kill_group
from durakv.log.etcd_client import EtcdClient
from durakv.log.etcd_nodes import read_cluster
from durakv.log.etcd_settings import read_settings
from test_etcd_backend import etcd_config
from test_etcd_failover import _reply, _retry, _until
from test_replicas import replica_port

TTL_S = 2
SHARDS = 1


def _node(tmp_path, etcd_cluster, prefix: str, node_id: str, replicas: int = 0, extra: str = "",
          wait: bool = True, ttl_s: int = TTL_S) -> DurakvServer:
    common = f"etcd-lease-ttl-s = {ttl_s}\nsnapshotter = false\n{extra}"
    role = ("--node-role", "replica") if replicas else ()
    port = 7000 + ord(node_id[0]) - ord("a")
    node = DurakvServer(tmp_path / f"node-{node_id}", shards=SHARDS, extra_args=(
        "--config", etcd_config(tmp_path, etcd_cluster.endpoints, prefix, common + f"replicas = {replicas}\n"),
        "--node-id", node_id, *role, "--advertise", f"127.0.0.1:{port}"))
    return node.start(wait=wait)


def _config_get(client: redis.Redis, name: str) -> str:
    reply = _retry(lambda: client.config_get(name), f"CONFIG GET {name} on port {client.connection_pool}")
    return reply.get(name, "")


def test_config_set_on_one_node_reaches_every_node(etcd_cluster, tmp_path):
    """CONFIG SET on node b's router and on its replica's port is applied on node a's
    router and shard port (and node a's shard: its SLOWLOG follows the threshold set on
    b); a node started afterwards applies what was set; a per-machine setting (a TLS
    file path) stays on the node it was set on."""
    prefix = f"cfg-{uuid.uuid4().hex[:8]}"
    nodes = []
    try:
        node_a = _node(tmp_path, etcd_cluster, prefix, "a")
        nodes.append(node_a)
        node_b = _node(tmp_path, etcd_cluster, prefix, "b", replicas=1, wait=False)
        nodes.append(node_b)
        a_router, a_shard = node_a.client(decode_responses=True), node_a.shard_client(0, decode_responses=True)
        b_router = redis.Redis(port=node_b.port, socket_timeout=30, decode_responses=True)
        b_replica = redis.Redis(port=replica_port(node_b, 0), socket_timeout=30, decode_responses=True)
        assert _config_get(a_router, "maxmemory-policy") == "noeviction"
        assert _retry(lambda: b_router.config_set("maxmemory-policy", "allkeys-lru"), "CONFIG SET on node b")
        set_at = time.monotonic()
        for client in (a_router, a_shard):
            _until(lambda client=client: _config_get(client, "maxmemory-policy") == "allkeys-lru",
                   "node b's maxmemory-policy on node a")
        print(f"CONFIG SET on node b seen on node a's router and shard port {time.monotonic() - set_at:.3f} s "
              "after its OK")
        # A path on node b's machine: not node a's business.
        assert _retry(lambda: b_replica.config_set("tls-ca-cert-dir", str(tmp_path)), "CONFIG SET on b's replica")
        assert _retry(lambda: b_replica.config_set("slowlog-log-slower-than", "0"), "CONFIG SET on b's replica")
        for client in (a_router, a_shard, b_router):
            _until(lambda client=client: _config_get(client, "slowlog-log-slower-than") == "0",
                   "the slowlog threshold set on b's replica port")
        assert _config_get(a_router, "tls-ca-cert-dir") == "" and _config_get(a_shard, "tls-ca-cert-dir") == ""
        assert _config_get(b_router, "tls-ca-cert-dir") == str(tmp_path)
        a_shard.slowlog_reset()
        a_router.set("slow", "1")   # executed on node a's shard: logged with a threshold of 0 us
        _until(lambda: any("slow" in str(entry["command"]) for entry in a_shard.slowlog_get(10)),
               "node a's shard logging every command")
        node_c = _node(tmp_path, etcd_cluster, prefix, "c", replicas=1, wait=False)
        nodes.append(node_c)
        c_router = redis.Redis(port=node_c.port, socket_timeout=30, decode_responses=True)
        _until(lambda: _config_get(c_router, "maxmemory-policy") == "allkeys-lru"
               and _config_get(c_router, "slowlog-log-slower-than") == "0", "node c applying what was set before")
        assert _config_get(c_router, "tls-ca-cert-dir") == ""
        # Set on two nodes at once: every node ends on the same value.
        a_router.config_set("maxmemory-policy", "volatile-ttl")
        c_router.config_set("maxmemory-policy", "allkeys-lfu")
        def views() -> set[str]:
            return {_config_get(c, "maxmemory-policy") for c in (a_router, a_shard, b_router, b_replica, c_router)}

        def recorded() -> str:
            return read_settings(EtcdClient(etcd_cluster.endpoints), prefix)[1]["maxmemory-policy"]

        _until(lambda: views() == {recorded()}, "every node on the maxmemory-policy etcd holds last")
        print(f"after CONFIG SETs on a and c, every node has {views()}")
    finally:
        for node in nodes:
            node.discard()


def _node_ids(etcd_cluster, prefix: str) -> set[str]:
    return set(read_cluster(EtcdClient(etcd_cluster.endpoints), prefix)[1].nodes)


def _cluster_nodes(client: redis.Redis) -> str:
    reply = _retry(lambda: client.execute_command("CLUSTER", "NODES"), "CLUSTER NODES")
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def test_a_clean_stop_removes_the_node_entry_at_once(etcd_cluster, tmp_path):
    """With a lease TTL of 60 s: a node stopped cleanly (SIGTERM) has no entry left in
    etcd once its process exited, and node a's CLUSTER NODES drops its replica; a node
    killed with kill -9 keeps its entry (it expires with the lease)."""
    prefix = f"stop-{uuid.uuid4().hex[:8]}"
    ttl_s = 60
    nodes = []
    try:
        node_a = _node(tmp_path, etcd_cluster, prefix, "a", ttl_s=ttl_s)
        nodes.append(node_a)
        node_b = _node(tmp_path, etcd_cluster, prefix, "b", replicas=1, ttl_s=ttl_s, wait=False)
        node_c = _node(tmp_path, etcd_cluster, prefix, "c", replicas=1, ttl_s=ttl_s, wait=False)
        nodes += [node_b, node_c]
        a = node_a.client()
        for node in (node_b, node_c):
            _until(lambda node=node: f"127.0.0.1:{replica_port(node, 0)}@" in _cluster_nodes(a),
                   f"node a listing {node.data_dir.name}'s replica")
        assert _node_ids(etcd_cluster, prefix) == {"a", "b", "c"}
        node_c.kill9()
        node_b.stop()
        assert _node_ids(etcd_cluster, prefix) == {"a", "c"}, "a clean stop left the node's entry behind"
        _until(lambda: f"127.0.0.1:{replica_port(node_b, 0)}@" not in _cluster_nodes(a),
               "node a dropping node b's replica", timeout_s=30)
        assert f"127.0.0.1:{replica_port(node_c, 0)}@" in _cluster_nodes(a)   # killed: listed until its TTL
        assert "removed " in node_b.log() and "(a clean stop)" in node_b.log()
    finally:
        for node in nodes:
            node.discard()


def _health(client: redis.Redis, port: int) -> str:
    """CLUSTER SHARDS' health of the node on `port` ("" if not listed)."""
    shards = _retry(lambda: client.execute_command("CLUSTER", "SHARDS"), "CLUSTER SHARDS")
    for shard in shards:
        for node in shard[b"nodes"] if isinstance(shard, dict) else dict(zip(shard[::2], shard[1::2]))[b"nodes"]:
            node = node if isinstance(node, dict) else dict(zip(node[::2], node[1::2]))
            if node[b"port"] == port:
                return node[b"health"].decode()
    return ""


def test_another_nodes_replica_is_online_only_while_it_follows(etcd_cluster, tmp_path):
    """Node b's replica, paused (SIGSTOP: alive, its node's entry still there, but it no
    longer follows the log), is shown failed by node a's CLUSTER SHARDS and NODES (and
    left out of CLUSTER SLOTS) once its live entry's lease ran out; resumed, it is online
    again."""
    prefix = f"live-{uuid.uuid4().hex[:8]}"
    nodes = []
    try:
        node_a = _node(tmp_path, etcd_cluster, prefix, "a")
        nodes.append(node_a)
        node_b = _node(tmp_path, etcd_cluster, prefix, "b", replicas=1, wait=False)
        nodes.append(node_b)
        port = replica_port(node_b, 0)
        views = [node_a.client(), node_a.shard_client(0)]
        for view in views:
            _until(lambda view=view: _health(view, port) == "online", "node b's replica online on node a")
        assert f"127.0.0.1:{port}@{port + 10000} slave " in _cluster_nodes(views[0])
        pid = node_b.child_pid("replica", "0 0")
        os.kill(pid, signal.SIGSTOP)
        try:
            stopped_at = time.monotonic()
            for view in views:
                _until(lambda view=view: _health(view, port) == "failed", "node b's paused replica failed on a")
            print(f"a paused replica shown failed on the other node after {time.monotonic() - stopped_at:.2f} s "
                  f"(lease TTL {TTL_S} s)")
            line = next(line for line in _cluster_nodes(views[0]).splitlines() if f":{port}@" in line)
            assert line.split(" ")[2] == "slave,fail" and line.endswith(" disconnected"), line
            # Its own node judges it alike: by its live entry and how lately it looked at the log.
            own = next(line for line in _cluster_nodes(node_b.client()).splitlines() if f":{port}@" in line)
            assert own.split(" ")[2] == "slave,fail" and own.endswith(" disconnected"), own
            slots = views[0].execute_command("CLUSTER", "SLOTS")
            assert all(node[1] != port for entry in slots for node in entry[2:]), slots
            assert {"a", "b"} <= _node_ids(etcd_cluster, prefix)   # its node is alive all along
        finally:
            os.kill(pid, signal.SIGCONT)
        for view in views:
            _until(lambda view=view: _health(view, port) == "online", "node b's resumed replica online again")
    finally:
        for node in nodes:
            node.discard()


def test_bad_tls_files_for_links_stop_the_node_at_start(etcd_cluster, tmp_path):
    """A node whose links would run over TLS (certificate, key and CA set) but one of
    whose files is missing or unreadable as PEM exits at once with 2 and one line on
    stderr naming the setting, the file and the fix; nothing is restarted in a loop."""
    ca = trustme.CA()
    certs = tmp_path / "certs"
    certs.mkdir()
    good = {"tls-cert-file": certs / "node.pem", "tls-key-file": certs / "node.key",
            "tls-ca-cert-file": certs / "ca.pem"}
    issued = ca.issue_cert("127.0.0.1")
    issued.cert_chain_pems[0].write_to_path(str(good["tls-cert-file"]))
    issued.private_key_pem.write_to_path(str(good["tls-key-file"]))
    ca.cert_pem.write_to_path(str(good["tls-ca-cert-file"]))
    garbage = certs / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    other_key = certs / "other.key"
    trustme.CA().issue_cert("127.0.0.1").private_key_pem.write_to_path(str(other_key))
    cases = [("tls-cert-file", certs / "missing.pem", "cannot read it"),
             ("tls-cert-file", garbage, "not a PEM certificate"),
             ("tls-ca-cert-file", garbage, "not a PEM certificate"),
             ("tls-key-file", garbage, "not the private key"),
             ("tls-key-file", other_key, "not the private key")]
    prefix = f"badtls-{uuid.uuid4().hex[:8]}"
    for setting, path, why in cases:
        files = {**good, setting: path}
        tls = "".join(f'{name} = "{value}"\n' for name, value in files.items())
        config = etcd_config(tmp_path, etcd_cluster.endpoints, prefix, f"snapshotter = false\n{tls}")
        proc = subprocess.Popen([sys.executable, "-m", "durakv.server.cli", "serve", "--port", str(free_port()),
                                 "--shards", "1", "--data-dir", str(tmp_path / "data"), "--config", config,
                                 "--node-id", "a"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            _out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            raise AssertionError(f"{setting} = {path}: the node kept running instead of refusing to start") from None
        lines = err.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, (setting, path, proc.returncode, err)
        assert f"{setting} {path}" in lines[0] and why in lines[0] and "fix" in lines[0], lines[0]
    print(lines[0])


def test_config_set_etcd_cannot_record_is_an_error(etcd_cluster, tmp_path):
    """Without an etcd quorum a node's CONFIG SET still takes effect on the node (as on
    one server), but the reply is an error saying the other nodes were not told, rather
    than an OK the other nodes would contradict; the node keeps it while etcd has no
    quorum (router 0's re-reads of etcd, linearizable, cannot answer then, and one sent
    before the change never reverts it); once etcd is back the node returns to the value
    etcd recorded, as every node does. The etcd leader is stopped with one follower: the
    surviving follower, leaderless, drops the write, whereas a surviving leader keeps it in
    its log and may commit it once the quorum returns (then etcd holds the new value and
    every node applies it: the reply says it may happen)."""
    prefix = f"noq-{uuid.uuid4().hex[:8]}"
    node_a = _node(tmp_path, etcd_cluster, prefix, "a")
    try:
        router = node_a.client(decode_responses=True)
        assert router.config_set("maxmemory-policy", "allkeys-lru")
        leader = etcd_cluster.leader_index()
        assert leader is not None
        survivor = (leader + 1) % 3
        stopped = [i for i in range(3) if i != survivor]
        for i in stopped:
            etcd_cluster.kill9(i)
        try:
            started = time.monotonic()
            reply = _reply(router, "CONFIG", "SET", "maxmemory-policy", "volatile-lru")
            print(f"CONFIG SET without an etcd quorum answered in {time.monotonic() - started:.1f} s: {reply}")
            assert isinstance(reply, redis.ResponseError), reply
            assert str(reply).startswith("CONFIG SET could not be recorded in etcd for the other nodes"), reply
            assert "etcd may still take it late" in str(reply), reply
            assert router.config_get("maxmemory-policy") == {"maxmemory-policy": "volatile-lru"}
            time.sleep(2 * TTL_S)  # router 0 tries to read etcd's settings again meanwhile
            assert router.config_get("maxmemory-policy") == {"maxmemory-policy": "volatile-lru"}
        finally:
            for i in stopped:
                etcd_cluster.start_member(i)
            etcd_cluster.wait_healthy()
        recorded = read_settings(EtcdClient(etcd_cluster.endpoints), prefix)[1]
        assert recorded["maxmemory-policy"] == "allkeys-lru", recorded
        # etcd is the truth: once the node reads it again, it goes back to what etcd recorded.
        _until(lambda: router.config_get("maxmemory-policy") == {"maxmemory-policy": "allkeys-lru"},
               "the node back on etcd's value")
    finally:
        node_a.discard()
