"""The supervisor (`durakv serve`): a killed shard is restarted and the router
recovers, SIGTERM stops the whole process group, and children die with a
kill -9'd supervisor (PR_SET_PDEATHSIG). Each test starts its own server."""

from __future__ import annotations

import os
import signal
import time

import redis

from refserver import RawConn
from shards.slots import key_slot

DEADLINE_S = 30
DOWN = b"-CLUSTERDOWN The cluster is down\r\n"
POLL_S = 0.05


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(POLL_S)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def keys_by_shard(count: int = 50) -> tuple[list[str], list[str]]:
    keys = [f"sup:{i}" for i in range(count)]
    low = [k for k in keys if key_slot(k.encode()) < 8192]
    high = [k for k in keys if key_slot(k.encode()) >= 8192]
    assert low and high
    return low, high


def get_or_error(client: redis.Redis, key: str) -> object:
    try:
        return client.get(key)
    except redis.ResponseError as e:
        return e


def test_killed_shard_is_restarted_and_router_recovers(server_factory):
    srv = server_factory()
    client = srv.client()
    low, high = keys_by_shard()
    for key in low + high:
        client.set(key, key)
    raw = RawConn(srv.port)
    supervisor = srv.proc.pid
    victim = srv.child_pid("shard", 1)
    os.kill(supervisor, signal.SIGSTOP)  # hold the restart so the outage can be observed
    try:
        os.kill(victim, signal.SIGKILL)
        # A command caught in flight by the crash gets its own CLUSTERDOWN text;
        # once the router has noticed, the shard's slots answer the steady one.
        wait_until(lambda: raw.call("GET", high[0]) == DOWN, "the router to answer CLUSTERDOWN")
        assert raw.call("GET", low[0]) == b"$%d\r\n%s\r\n" % (len(low[0]), low[0].encode())
        assert b"cluster_state:fail" in raw.call("CLUSTER", "INFO")
        replies = raw.pipeline([("GET", low[0]), ("SET", high[1], "x"), ("GET", low[1]), ("PING",)])
        assert replies[1] == DOWN
        assert replies[0].endswith(low[0].encode() + b"\r\n") and replies[2].endswith(low[1].encode() + b"\r\n")
        assert replies[3] == b"+PONG\r\n"
    finally:
        os.kill(supervisor, signal.SIGCONT)
    wait_until(lambda: get_or_error(client, high[0]) == high[0].encode(), "the restarted shard to serve")
    assert srv.child_pid("shard", 1) != victim
    assert client.mget(low + high) == [k.encode() for k in low + high]  # acknowledged writes survived
    assert client.set(high[0], "after") and client.get(high[0]) == b"after"
    assert b"cluster_state:ok" in client.execute_command("CLUSTER", "INFO")
    raw.close()
    client.close()


def test_killed_router_is_restarted(server_factory):
    srv = server_factory()
    first = srv.child_pid("router", 0)
    os.kill(first, signal.SIGKILL)

    def serving() -> bool:
        try:
            with redis.Redis(port=srv.port, socket_timeout=2) as c:
                return c.ping()
        except redis.ConnectionError:
            return False

    wait_until(serving, "the router to come back")
    assert srv.child_pid("router", 0) != first


def test_sigterm_stops_every_process(server_factory):
    srv = server_factory()
    pids = srv.pids()
    assert len(pids) == 1 + 2 + 1 + 1  # supervisor, two shards, one router, the snapshotter
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.proc.wait(DEADLINE_S) == 0
    wait_until(lambda: not any(alive(pid) for pid in pids), "every process of the group to exit")
    assert not any(alive(pid) for pid in srv.pids())  # no orphan holds the port (probing it races other workers)


def test_sigkill_of_the_supervisor_takes_the_children(server_factory):
    srv = server_factory()
    children = [pid for pid in srv.pids() if pid != srv.proc.pid]
    assert len(children) == 4  # two shards, one router, the snapshotter
    os.kill(srv.proc.pid, signal.SIGKILL)
    srv.proc.wait(DEADLINE_S)
    wait_until(lambda: not any(alive(pid) for pid in children), "the children to die with the supervisor")
    # Nothing of the process group is left to hold the port or a log open. (Probing
    # the port itself would race with other test workers that may reuse it.)
    assert not any(alive(pid) for pid in srv.pids())
