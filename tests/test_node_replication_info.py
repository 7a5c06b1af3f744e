"""INFO replication on a primary's node lists the shard's replicas on every node
(issue 15), from the live entries they publish in etcd with how far they applied:
node a runs the primary (no replica of its own), node b (node-role replica) one
replica, sharing a real 3-member etcd cluster (tests/etcd_support.py)."""

from __future__ import annotations

import os
import signal
import uuid

import redis

from test_etcd_failover import _retry, _until
from test_node_ops import TTL_S, _node
from test_replicas import replica_port


def _slaves(client: redis.Redis) -> list[dict]:
    info = _retry(lambda: client.info("replication"), "INFO replication")
    assert info["role"] == "master", info
    slaves = [info[f"slave{i}"] for i in range(info["connected_slaves"])]
    return slaves


def test_info_replication_on_the_primarys_node_lists_another_nodes_replica(etcd_cluster, tmp_path):
    """Node a's router and shard port list node b's replica (ip, port, online) with the
    offset it applied (in INFO replication and ROLE), which follows the writes made on a; once node b is gone (its
    live entry withdrawn at its clean stop, or lapsed) it is no longer listed."""
    prefix = f"info-{uuid.uuid4().hex[:8]}"
    nodes = []
    try:
        node_a = _node(tmp_path, etcd_cluster, prefix, "a")
        nodes.append(node_a)
        node_b = _node(tmp_path, etcd_cluster, prefix, "b", replicas=1, wait=False)
        nodes.append(node_b)
        port = replica_port(node_b, 0)
        views = [node_a.client(decode_responses=True), node_a.shard_client(0, decode_responses=True)]
        for view in views:
            _until(lambda view=view: [s["port"] for s in _slaves(view)] == [port], "node b's replica listed on a")
        for i in range(20):
            _retry(lambda i=i: views[0].set(f"k{i}", i), "SET on node a")
        b_replica = redis.Redis(port=port, socket_timeout=30, decode_responses=True)
        _retry(lambda: b_replica.execute_command("READONLY"), "READONLY on b's replica")
        _until(lambda: _retry(lambda: b_replica.get("k19"), "GET on b's replica") == "19", "the writes on b")
        applied = b_replica.info("replication")["slave_repl_offset"]
        assert applied >= 20, applied
        for view in views:
            _until(lambda view=view: _slaves(view)[0]["offset"] == applied, "b's applied offset shown on a")
            slave = _slaves(view)[0]
            print(f"node a's {'router' if view is views[0] else 'shard port'}: slave0:{slave}")
            # lag: seconds since its live entry was rewritten (every quarter TTL; the entry lapses after a TTL)
            assert slave["ip"] == "127.0.0.1" and slave["state"] == "online" and 0 <= slave["lag"] <= TTL_S, slave
            role = view.execute_command("ROLE")
            assert role[0] == "master" and role[2] == [["127.0.0.1", str(port), str(applied)]], role
        node_b.discard()
        nodes.remove(node_b)
        for view in views:
            _until(lambda view=view: _slaves(view) == [], "node b's replica gone from a's INFO after its lease")
    finally:
        for node in nodes:
            node.discard()


def test_a_paused_replica_on_another_node_shows_a_growing_lag(etcd_cluster, tmp_path):
    """Node a's INFO replication gives node b's replica, as `lag=`, the seconds since the
    replica last rewrote its live entry in etcd (Redis: the seconds since the replica's
    last ack): a SIGSTOPped replica's lag grows until its lease lapses and it is no longer
    listed (before, another node's replica always showed lag=0)."""
    ttl_s = 4  # the paused replica stays listed for about this long: long enough to see its lag grow
    prefix = f"lag-{uuid.uuid4().hex[:8]}"
    nodes = []
    try:
        node_a = _node(tmp_path, etcd_cluster, prefix, "a", ttl_s=ttl_s)
        nodes.append(node_a)
        node_b = _node(tmp_path, etcd_cluster, prefix, "b", replicas=1, wait=False, ttl_s=ttl_s)
        nodes.append(node_b)
        port = replica_port(node_b, 0)
        router = node_a.client(decode_responses=True)
        _until(lambda: [s["port"] for s in _slaves(router)] == [port], "node b's replica listed on a")
        pid = node_b.child_pid("replica", "0 0")
        os.kill(pid, signal.SIGSTOP)
        lags: list[int] = []
        try:
            def lapsed() -> bool:
                slaves = _slaves(router)
                if slaves:
                    lags.append(slaves[0]["lag"])
                return not slaves
            _until(lapsed, "the paused replica gone from a's INFO after its lease")
        finally:
            os.kill(pid, signal.SIGCONT)
        shown = [lag for i, lag in enumerate(lags) if i == 0 or lag != lags[i - 1]]
        print(f"lag= of the paused replica on node b, as node a showed it until it lapsed: {shown}")
        assert max(lags) >= 2 and lags[-1] == max(lags), shown
    finally:
        for node in nodes:
            node.discard()
