"""A script past busy-reply-threshold, seen from its shard's own port (a Redis Cluster
node): the port's other clients are answered BUSY, and SCRIPT KILL works there, with
redis-server 7.0's reply bytes (server/node.py ShardNode.serve_while_busy). Before,
they waited for the script's end: a cluster client could not kill it on that port."""

from __future__ import annotations

import time

from refserver import RawConn, keys_on_different_shards

from durakv.shards.slots import key_slot, slot_owner_table

BUSY_WAIT_S = 20
LOOP = "while true do end"


def _wait_busy(conn: RawConn) -> bytes:
    """PING until the script's run passed the threshold (BUSY), at most BUSY_WAIT_S."""
    deadline = time.monotonic() + BUSY_WAIT_S
    while time.monotonic() < deadline:
        reply = conn.call("PING")
        if reply != b"+PONG\r\n":
            return reply
        time.sleep(0.01)
    raise AssertionError("no BUSY reply while a script loops")


def _busy_session(port: int, local_key: str) -> list[bytes]:
    """A looping script on one connection; what another connection of the same port gets."""
    other = RawConn(port)
    runner = RawConn(port)
    got = [other.call("CONFIG", "SET", "busy-reply-threshold", "10")]
    runner.send_raw(b"*3\r\n$4\r\nEVAL\r\n$%d\r\n%s\r\n$1\r\n0\r\n" % (len(LOOP), LOOP.encode()))
    got.append(_wait_busy(other))
    got.append(other.call("GET", local_key))
    got.append(other.call("FUNCTION", "KILL"))
    got.append(other.call("SCRIPT", "KILL"))
    got.append(runner.read_reply())
    got.append(other.call("PING"))
    got.append(other.call("SCRIPT", "KILL"))
    got.append(other.call("CONFIG", "SET", "busy-reply-threshold", "5000"))
    other.close()
    runner.close()
    return got


def test_shard_port_answers_busy_and_script_kill_like_redis(server_factory, redis_ref):
    server = server_factory(shards=2)
    owner = slot_owner_table(2)
    local, remote = keys_on_different_shards(2)
    if owner[key_slot(local.encode())] != 0:
        local, remote = remote, local
    expected = _busy_session(redis_ref.port, local)
    got = _busy_session(server.shard_port(0), local)
    assert got == expected
    assert expected[1].startswith(b"-BUSY ") and expected[5].startswith(b"-ERR Script killed by user")


def test_shard_port_sends_other_slots_moved_while_busy(server_factory):
    """As in Redis Cluster, a key of another node is redirected before the busy check."""
    server = server_factory(shards=2)
    owner = slot_owner_table(2)
    remote = next(k for k in keys_on_different_shards(2) if owner[key_slot(k.encode())] != 0)
    other = RawConn(server.shard_port(0))
    runner = RawConn(server.shard_port(0))
    other.call("CONFIG", "SET", "busy-reply-threshold", "10")
    runner.send_raw(b"*3\r\n$4\r\nEVAL\r\n$%d\r\n%s\r\n$1\r\n0\r\n" % (len(LOOP), LOOP.encode()))
    assert _wait_busy(other).startswith(b"-BUSY ")
    assert other.call("GET", remote).startswith(b"-MOVED %d " % key_slot(remote.encode()))
    assert other.call("SCRIPT", "KILL") == b"+OK\r\n"
    assert runner.read_reply().startswith(b"-ERR Script killed by user with SCRIPT KILL...")
    assert other.call("PING") == b"+PONG\r\n"
