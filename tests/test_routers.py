"""Several router processes accept from the one listening socket the supervisor
bound, in front of the same shards."""

from __future__ import annotations



def test_two_routers_share_the_port_and_the_data(server_factory):
    srv = server_factory(shards=2, extra_args=("--routers", "2"))
    assert srv.child_pid("router", 0) != srv.child_pid("router", 1)
    # Whichever router wakes first accepts a connection; connect until both have
    # taken some (bounded).
    clients = []
    for _ in range(200):
        clients.append(srv.client())
        clients[-1].ping()
        routers = {(c.client_id() - 1) % 2 for c in clients}  # id = seq * routers + index + 1
        if routers == {0, 1} and len(clients) >= 8:
            break
    assert routers == {0, 1}, "both routers must take connections"
    ids = [c.client_id() for c in clients]
    assert len(set(ids)) == len(ids), "client ids must be unique across routers"
    for n, c in enumerate(clients):
        c.set(f"k{n}", n)
    for c in reversed(clients):
        assert c.mget([f"k{i}" for i in range(len(clients))]) == [str(i).encode() for i in range(len(clients))]
    for c in clients:
        c.close()


MAX_CONNECTIONS_TO_REACH_BOTH = 400


class RawConnection:
    """One connection spoken to in raw RESP, so that a refused command does not
    make the client library reconnect (possibly to the other router)."""

    def __init__(self, port: int) -> None:
        import socket

        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def call(self, *args: str) -> bytes:
        out = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a.encode()) for a in args)
        self.sock.sendall(out)
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            assert chunk, "connection closed"
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def router(self) -> int:
        return (int(self.call("CLIENT", "ID")[1:]) - 1) % 2  # id = seq * routers + index + 1

    def close(self) -> None:
        self.sock.close()


def wait_routers_listening(srv, routers: int, starts: int = 1) -> None:
    """The server is ready once one router answers; wait until every router has
    logged that it listens (`starts` times each, after restarts)."""
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        log = srv.log()
        if all(log.count(f"router {i} ready") >= starts for i in range(routers)):
            return
        time.sleep(0.05)
    raise AssertionError(f"routers not listening:\n{srv.log()}")


def test_config_set_reaches_every_router(server_factory):
    """CONFIG SET on one router takes effect on all of them before it is acknowledged:
    a password set through one connection is required on every new connection,
    a changed password refuses the old one everywhere, and plain and shard
    parameters read back the same on every router."""
    import redis

    srv = server_factory(shards=2, extra_args=("--routers", "2"))
    wait_routers_listening(srv, 2)
    admin = srv.client()
    assert admin.config_set("requirepass", "first") is True
    # Whichever router wakes first accepts a connection (one shared listening
    # socket): go on until both have taken some, at least 40 in all (bounded).
    seen_routers = set()
    for n in range(MAX_CONNECTIONS_TO_REACH_BOTH):
        c = RawConnection(srv.port)
        assert c.call("SET", "k", "v") == b"-NOAUTH Authentication required."
        assert c.call("AUTH", "first") == b"+OK"
        seen_routers.add(c.router())
        assert c.call("SET", "k", "v") == b"+OK"
        c.close()
        if n >= 40 and seen_routers == {0, 1}:
            break
    assert seen_routers == {0, 1}, "the connections must land on both routers"
    assert admin.config_set("requirepass", "second") is True
    seen_routers = set()
    for n in range(MAX_CONNECTIONS_TO_REACH_BOTH):
        c = RawConnection(srv.port)
        assert c.call("AUTH", "first").startswith(b"-WRONGPASS")
        assert c.call("AUTH", "second") == b"+OK"
        seen_routers.add(c.router())
        c.close()
        if n >= 40 and seen_routers == {0, 1}:
            break
    assert seen_routers == {0, 1}
    assert admin.config_set("maxclients", "1234") is True
    assert admin.config_set("hz", "77") is True
    assert admin.config_set("hash-max-listpack-entries", "3") is True
    for n in range(40):
        c = redis.Redis(port=srv.port, socket_timeout=10, password="second")
        assert c.config_get("maxclients") == {"maxclients": "1234"}
        assert c.config_get("hz") == {"hz": "77"}
        # Shard parameters too: a 4-field hash is not a listpack any more.
        c.hset(f"h{n}", mapping={"a": 1, "b": 2, "c": 3, "d": 4})
        assert c.object("encoding", f"h{n}") == b"hashtable"
        c.close()
    admin.close()


def test_restarted_router_has_its_peers_settings(server_factory):
    """A router that restarts reads DIR/run/settings, so it requires the password
    its peers were given; a fresh start of the whole server does not."""
    import os
    import signal

    srv = server_factory(shards=1, extra_args=("--routers", "2"))
    wait_routers_listening(srv, 2)
    admin = srv.client()
    assert admin.config_set("requirepass", "secret") is True
    assert oct(os.stat(srv.data_dir / "run" / "settings").st_mode & 0o777) == "0o600"
    for index in (0, 1):
        os.kill(srv.child_pid("router", index), signal.SIGKILL)
    wait_routers_listening(srv, 2, starts=2)
    seen_routers = set()
    for n in range(MAX_CONNECTIONS_TO_REACH_BOTH):
        c = RawConnection(srv.port)
        assert c.call("PING") == b"-NOAUTH Authentication required."
        assert c.call("AUTH", "secret") == b"+OK"
        seen_routers.add(c.router())
        c.close()
        if n >= 20 and seen_routers == {0, 1}:
            break
    assert seen_routers == {0, 1}
    srv.stop()
    srv.start()
    c = srv.client()
    assert c.ping() is True, "CONFIG SET does not outlive a restart of the whole server"
    c.close()



def _line(c: RawConnection) -> bytes:
    while b"\r\n" not in c.buf:
        chunk = c.sock.recv(4096)
        assert chunk, "connection closed"
        c.buf += chunk
    line, c.buf = c.buf.split(b"\r\n", 1)
    return line


def test_concurrent_config_sets_leave_every_router_with_one_value(server_factory):
    """Two CONFIG SETs of one parameter sent at once through the two routers: each
    router applies the other's change too, in one order for all (the settings lock,
    the merged file), so afterwards both routers read the same value."""
    srv = server_factory(shards=2, extra_args=("--routers", "2"))
    wait_routers_listening(srv, 2)
    on: dict[int, RawConnection] = {}
    for _ in range(MAX_CONNECTIONS_TO_REACH_BOTH):
        c = RawConnection(srv.port)
        router = c.router()
        if router in on:
            c.close()
        else:
            on[router] = c
        if len(on) == 2:
            break
    assert set(on) == {0, 1}, "the connections must land on both routers"
    differing = []
    for n in range(30):
        for router, c in on.items():  # both requests are in flight before either reply is read
            value = b"%d" % (10 + 2 * n + router)
            c.sock.sendall(b"*4\r\n$6\r\nCONFIG\r\n$3\r\nSET\r\n$2\r\nhz\r\n$%d\r\n%s\r\n"
                           % (len(value), value))
        assert [_line(c) for c in on.values()] == [b"+OK", b"+OK"]
        got = {}
        for router, c in on.items():
            c.sock.sendall(b"*3\r\n$6\r\nCONFIG\r\n$3\r\nGET\r\n$2\r\nhz\r\n")
            reply = [_line(c) for _ in range(5)]  # *2, $2, hz, $N, value
            got[router] = reply[4]
        if got[0] != got[1]:
            differing.append((n, got))
    for c in on.values():
        c.close()
    print(f"rounds where the routers disagreed: {len(differing)} of 30")
    assert not differing, f"routers disagree after concurrent CONFIG SETs: {differing[:5]}"


def test_router_started_alone_forgets_an_earlier_runs_config_set(tmp_path):
    """Under systemd a router's parent is pid 1 in every run, so nothing about its parent
    tells one run from the next: a router started on its own (no supervisor) removes
    DIR/run/settings when it starts, so a CONFIG SET lasts until the router restarts,
    as in Redis. Here the test process plays the long-lived parent, and the file left
    behind names it (the run id earlier code compared) and sets a password."""
    import json
    import os
    import subprocess
    import sys
    import time

    import redis
    from conftest import free_port

    data_dir = tmp_path / "data"
    run = data_dir / "run"
    run.mkdir(parents=True, mode=0o700)
    with open(f"/proc/{os.getpid()}/stat", "rb") as f:
        stat = f.read()
    parent_run_id = f"{os.getpid()}:{stat[stat.rindex(b')') + 2:].split()[19].decode()}"
    (run / "settings").write_text(json.dumps({"run_id": parent_run_id, "values": {"requirepass": "stale"}}))
    port = free_port()
    config = tmp_path / "router.toml"
    config.write_text(f'port = {port}\nshards = 1\ndata-dir = "{data_dir}"\nstartup-shard-wait-ms = 0\n')
    log = open(tmp_path / "router.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "durakv.server.cli", "router", "--config", str(config)],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                reply = redis.Redis(port=port, socket_timeout=5).ping()
                break
            except redis.AuthenticationError:  # a ConnectionError to redis-py: caught first
                reply = "NOAUTH"
                break
            except redis.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "router.log").read_text()
                time.sleep(0.05)
        assert reply is True, "the router loaded a CONFIG SET left by an earlier run"
        assert not (run / "settings").exists()
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
