"""The supervisor (`durakv serve`): a killed shard is restarted and the router
recovers, SIGTERM stops the whole process group, and children die with a
kill -9'd supervisor (PR_SET_PDEATHSIG); the port is bound once (a second
server on it fails with one line), no secret shows in `ps`, a permanently
failed shard is not restarted, and a killed shard serves again at once.
Each test starts its own server."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from conftest import DurakvServer
from proctools import free_port, signal_group
from refserver import RawConn
from durakv.shards.exit_codes import EXIT_PERMANENT
from durakv.shards.slots import key_slot
from durakv.log.layout import shard_log_dir
from durakv.log.reader import DataEnds

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
    """Any thread of the process still running: its leader turns zombie while
    worker threads may still hold its files (sockets, log) open."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return False
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/stat") as f:
                if f.read().split(")")[-1].split()[0] != "Z":
                    return True
        except FileNotFoundError:
            continue
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
        # Once the shard's socket is gone nothing can be in flight to it (that
        # would close the connection: tests/test_shard_crash.py), and its slots
        # answer CLUSTERDOWN.
        wait_until(lambda: not alive(victim), "the shard to die")
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
    assert len(direct_children(srv.proc.pid)) == 2 + 1 + 1  # two shards, one router, the snapshotter
    pids = srv.pids()  # the whole group: a snapshot build child of the snapshotter too, if one runs
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.proc.wait(DEADLINE_S) == 0
    wait_until(lambda: not any(alive(pid) for pid in pids), "every process of the group to exit")
    assert not any(alive(pid) for pid in srv.pids())  # no orphan holds the port (probing it races other workers)


def test_sigkill_of_the_supervisor_takes_the_children(server_factory):
    srv = server_factory()
    assert len(direct_children(srv.proc.pid)) == 4  # two shards, one router, the snapshotter
    children = [pid for pid in srv.pids() if pid != srv.proc.pid]  # a snapshot build child too, if one runs
    os.kill(srv.proc.pid, signal.SIGKILL)
    srv.proc.wait(DEADLINE_S)
    wait_until(lambda: not any(alive(pid) for pid in children), "the children to die with the supervisor")
    # Nothing of the process group is left to hold the port or a log open. (Probing
    # the port itself would race with other test workers that may reuse it.)
    assert not any(alive(pid) for pid in srv.pids())


def direct_children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def run_serve(port: int, data_dir, *extra: str, timeout_s: float = DEADLINE_S) -> subprocess.CompletedProcess:
    """Run `durakv serve` expecting it to exit by itself; a hang (a server that
    serves when it should refuse) is killed, with its process group, and fails."""
    argv = [sys.executable, "-m", "durakv.server.cli", "serve", "--port", str(port), "--shards", "2",
            "--data-dir", str(data_dir), *extra]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        signal_group(proc, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"durakv serve on port {port} did not exit:\n{err[-3000:]}") from None
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def assert_port_in_use_line(result: subprocess.CompletedProcess, port: int) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines == [f"durakv: port {port} on 127.0.0.1 is already in use; "
                     "stop the other server or choose another --port"], result.stderr


def test_second_serve_on_the_same_port_fails_and_the_first_keeps_serving(server_factory, tmp_path):
    srv = server_factory(extra_args=("--routers", "2"))
    counter = []

    def incr_on_new_connections(times: int) -> None:
        for _ in range(times):
            with redis.Redis(port=srv.port, socket_timeout=10) as c:
                counter.append(c.incr("sup:counter"))

    incr_on_new_connections(10)
    started = time.monotonic()
    result = run_serve(srv.port, tmp_path / "other")
    print(f"second serve exited with {result.returncode} after {time.monotonic() - started:.2f} s")
    assert_port_in_use_line(result, srv.port)
    assert not (tmp_path / "other").exists(), "a refused server must start nothing"
    incr_on_new_connections(30)  # with two databases on the port, this would jump back
    assert counter == list(range(1, 41))


def test_foreign_listener_on_the_port_ends_serve_with_one_line(tmp_path):
    with socket.socket() as foreign:
        foreign.bind(("127.0.0.1", 0))
        foreign.listen(1)
        port = foreign.getsockname()[1]
        result = run_serve(port, tmp_path / "data")
    assert_port_in_use_line(result, port)
    assert "Traceback" not in result.stderr, result.stderr


def test_no_secret_on_any_command_line_and_titles_show_roles(server_factory, tmp_path):
    secret = "pw-" + os.urandom(8).hex()
    (tmp_path / "password").write_text(secret)
    srv = server_factory(extra_args=("--requirepass-file", str(tmp_path / "password")))
    with srv.client(password=secret) as c:
        assert c.ping()
    pids = srv.pids()
    titles = {}
    for pid in pids:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
        assert secret.encode() not in cmdline, f"pid {pid}: {cmdline!r}"
        titles[pid] = cmdline.replace(b"\0", b" ").decode().strip()
    ps = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    assert secret not in ps
    shown = {int(line.split(None, 1)[0]): line.split(None, 1)[1].strip()
             for line in ps.splitlines()[1:] if int(line.split(None, 1)[0]) in pids}
    assert shown == titles
    data_dir = str(srv.data_dir)
    assert sorted(titles.values()) == sorted([
        f"durakv serve 127.0.0.1:{srv.port} {data_dir}",
        f"durakv shard 0 {data_dir}",
        f"durakv shard 1 {data_dir}",
        f"durakv router 0 127.0.0.1:{srv.port} {data_dir}",
        f"durakv snapshotter {data_dir}",
    ])


def corrupt_shard_logs(srv, shards: list[int]) -> None:
    """Stop srv and write garbage in the middle of each given shard's log
    segment, where records follow it: corruption, not a torn tail."""
    srv.stop()
    for shard in shards:
        segments = sorted(Path(shard_log_dir(srv.data_dir, shard)).glob("*.seg"))
        size = DataEnds().of(str(segments[0]))   # its records' end: a shard's segment is preallocated
        with open(segments[0], "r+b") as f:
            f.seek(size // 2)
            f.write(b"\xff" * 16)


def test_shard_failing_permanently_is_not_restarted_and_the_others_serve(server_factory, tmp_path):
    srv = server_factory()
    low, high = keys_by_shard(100)
    with srv.client() as c:
        for key in low + high:
            c.set(key, key)
    corrupt_shard_logs(srv, [1])
    again = DurakvServer(srv.data_dir, shards=2)
    again.log_path = tmp_path / "again.log"
    started = time.monotonic()
    again.start(wait=False)
    try:
        client = redis.Redis(port=again.port, socket_timeout=10)
        def serving() -> bool:
            try:
                return client.get(low[0]) == low[0].encode()
            except (redis.ConnectionError, redis.ResponseError):  # the supervisor may not be listening yet
                return False

        wait_until(serving, "shard 0 to serve through the router")
        print(f"router served shard 0 {time.monotonic() - started:.2f} s after the start")
        assert client.mget(low) == [k.encode() for k in low]
        assert isinstance(get_or_error(client, high[0]), redis.exceptions.ClusterDownError)
        wait_until(lambda: "shard 1" in again.log() and "not restarting it" in again.log(), "the supervisor's line")
        time.sleep(1)  # a restart loop would show within its first backoff steps
        log_text = again.log()
        assert "restarting shard 1" not in log_text
        assert "shard 1 cannot start: log corrupt" in log_text
        # shard 0, the router and the snapshotter (whose build child, building shard 0's
        # first snapshot, may still run: it imports the engine, and is no child of the
        # supervisor)
        assert len(direct_children(again.proc.pid)) == 3
        assert again.proc.poll() is None
        # Its client port refuses connections instead of leaving them unanswered (the
        # supervisor closed the listener the failed shard inherited).
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", again.shard_port(1)), timeout=5).close()
        client.close()
    finally:
        again.stop()


def test_serve_exits_when_every_shard_fails_permanently(server_factory, tmp_path):
    srv = server_factory()
    low, high = keys_by_shard(100)
    with srv.client() as c:
        for key in low + high:
            c.set(key, key)
    corrupt_shard_logs(srv, [0, 1])
    result = run_serve(free_port(), srv.data_dir)
    assert result.returncode == EXIT_PERMANENT
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.count("every shard failed permanently") == 1, result.stderr


def test_killed_shard_serves_again_at_once_each_time(server_factory):
    """Five kill -9s of one shard, each after it served again: the time from the
    kill to the first successful GET through the router does not grow (no
    backoff for crashes after a healthy run). Only a generous bound is asserted;
    the numbers are printed."""
    srv = server_factory()
    low, high = keys_by_shard()
    client = srv.client()
    client.set(high[0], "v")
    times_ms = []
    for _ in range(5):
        victim = srv.child_pid("shard", 1)
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        while True:
            try:
                if client.get(high[0]) == b"v":
                    break
            except (redis.ResponseError, redis.ConnectionError):
                pass
            assert time.monotonic() - killed < DEADLINE_S, "the killed shard did not come back"
            time.sleep(0.002)
        times_ms.append((time.monotonic() - killed) * 1000)
        assert srv.child_pid("shard", 1) != victim
    times_ms_sorted = sorted(times_ms)
    print(f"kill -9 to served again, ms: {[round(t) for t in times_ms]}; "
          f"median {times_ms_sorted[2]:.0f}, max {times_ms_sorted[-1]:.0f}")
    assert max(times_ms) < 3000, times_ms
    client.close()


def test_serve_tells_its_notify_socket_ready_once_every_child_is(tmp_path):
    """Under systemd (Type=notify) `serve` says READY=1 once every child did, the
    snapshotter included (it never did: systemd waited for ever)."""
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(path)
        listener.settimeout(DEADLINE_S)
        srv = DurakvServer(tmp_path / "data", env={"NOTIFY_SOCKET": path})
        srv.start()
        try:
            messages = []
            while b"READY=1" not in messages:
                messages.append(listener.recv(4096))
            assert re.search(r"supervisor: snapshotter \(pid \d+\) ready", srv.log())
        finally:
            srv.discard()
