"""CLUSTER NODES flags a failed replica as Redis does (issue 15): `slave,fail` and a
disconnected link. The reference is a real Redis 7.0 cluster (one master, one
replica) whose replica was killed; durakv's replica is only paused (SIGSTOP: alive,
but it no longer looks at the log), which its own node judges by how lately the
replica looked, as the other nodes judge theirs by its live entry in etcd."""

from __future__ import annotations

import os
import re
import signal
import time

import redis
from proctools import free_port
from refserver import RedisRef
from test_replicas import _start, replica_port

NODE_TIMEOUT_MS = 500
WAIT_S = 30


def _until(check, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _line(client: redis.Redis, port: int) -> str:
    """CLUSTER NODES' line for the node on `port` ("" if not listed)."""
    reply = client.execute_command("CLUSTER", "NODES")
    text = reply.decode() if isinstance(reply, bytes) else str(reply)
    return next((line for line in text.splitlines() if f":{port}@" in line), "")


def _shape(line: str) -> str:
    """The line with its ids, address and numbers replaced by placeholders: what must
    match Redis' (the flags and the link state stay as they are)."""
    fields = line.split(" ")
    assert len(fields) == 8 and re.fullmatch(r"[0-9a-f]{40}", fields[0]) and re.fullmatch(r"[0-9a-f]{40}", fields[3]), \
        line
    assert re.fullmatch(r"[0-9.]+:\d+@\d+", fields[1]) and all(f.isdigit() for f in fields[4:7]), line
    return " ".join(["ID", "IP:PORT@BUS", fields[2], "MASTER", "N", "N", "N", fields[7]])


def _redis_failed_replica_line(tmp_path) -> str:
    """A real Redis cluster's line for its replica, killed, once the master marked it failed."""
    def node(name: str, bus_port: int) -> RedisRef:
        # The bus port is chosen, not Redis' default (port + 10000): that one may be
        # outside this worker's port slice, taken, or an ephemeral port in use.
        return RedisRef(tmp_path / name, ("--cluster-enabled", "yes", "--cluster-port", str(bus_port),
                                          "--cluster-node-timeout", str(NODE_TIMEOUT_MS)))

    master_bus = free_port(0)
    master = node("ref-master", master_bus)
    replica = node("ref-replica", free_port(0))
    witness = node("ref-witness", free_port(0))   # a second master: its report turns fail? into fail
    try:
        m, r = master.client(decode_responses=True), replica.client(decode_responses=True)
        m.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        master_id = m.execute_command("CLUSTER", "MYID")
        for other in (r, witness.client()):
            other.execute_command("CLUSTER", "MEET", "127.0.0.1", master.port, master_bus)
        _until(lambda: master_id in r.execute_command("CLUSTER", "NODES"), "the reference nodes to meet")
        r.execute_command("CLUSTER", "REPLICATE", master_id)
        _until(lambda: f" slave {master_id} " in _line(m, replica.port), "the reference replica on the master")
        replica.proc.kill()
        replica.proc.wait()
        _until(lambda: "fail" in _line(m, replica.port).split(" ")[2].split(","), "the master to fail its replica")
        _until(lambda: _line(m, replica.port).endswith(" disconnected"), "the reference replica's link down")
        return _line(m, replica.port)
    finally:
        for server in (witness, replica, master):
            server.stop()


def test_a_paused_local_replica_is_flagged_failed_as_redis_flags_one(server_factory, tmp_path):
    """A paused replica of this node is `slave,fail ... disconnected` in CLUSTER NODES
    on the router and the shard port, the shape of Redis' line for a failed replica,
    `failed` in CLUSTER SHARDS and left out of CLUSTER SLOTS; resumed, it is `slave`
    and connected again."""
    reference = _redis_failed_replica_line(tmp_path)
    print(f"Redis 7.0: {reference}")
    srv = _start(server_factory, tmp_path)
    port = replica_port(srv, 0)
    views = [srv.client(), srv.shard_client(0)]
    for view in views:
        _until(lambda view=view: _line(view, port).split(" ")[2] == "slave", "the replica online")
        assert _line(view, port).endswith(" connected")
    pid = srv.child_pid("replica", "0 0")
    os.kill(pid, signal.SIGSTOP)
    try:
        stopped_at = time.monotonic()
        for view in views:
            _until(lambda view=view: "fail" in _line(view, port).split(" ")[2], "the paused replica flagged failed")
        print(f"a paused local replica flagged failed after {time.monotonic() - stopped_at:.2f} s")
        for view in views:
            line = _line(view, port)
            print(f"durakv:    {line}")
            assert _shape(line) == _shape(reference), (line, reference)
        shards = views[0].execute_command("CLUSTER", "SHARDS")
        replica_entry = next(node for shard in shards for node in shard[b"nodes"] if node[b"port"] == port)
        assert replica_entry[b"health"] == b"failed", replica_entry
        slots = views[0].execute_command("CLUSTER", "SLOTS")
        assert all(node[1] != port for entry in slots for node in entry[2:]), slots
    finally:
        os.kill(pid, signal.SIGCONT)
    for view in views:
        _until(lambda view=view: _line(view, port).split(" ")[2] == "slave", "the resumed replica online again")
        assert _line(view, port).endswith(" connected")
