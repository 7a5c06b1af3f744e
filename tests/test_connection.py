"""Connection commands (PING, ECHO, HELLO, AUTH, SELECT, QUIT, RESET, CLIENT),
compared with a real redis-server 7.0 where replies are deterministic. HELLO's
reply carries the connection id and, for durakv, mode "cluster" (it presents
itself as a cluster node); those two fields are compared separately."""

from __future__ import annotations

import re
import socket

import pytest
import redis

from refserver import Pair, RawConn, RedisRef, decode, exchange_until_closed, start_with_password


def run_same(pair, script: list[tuple]) -> list:
    return [pair.same(*cmd) for cmd in script]


def hello_fields(raw: bytes) -> dict:
    value = decode(raw)[0]
    if isinstance(value, list) and value and isinstance(value[0], tuple):
        return dict(value)
    return dict(zip(value[::2], value[1::2]))


def same_hello(pair, *args) -> dict:
    """HELLO on both servers: identical but for id and mode."""
    ours, theirs = pair.both(*args)
    if ours.startswith(b"-") or theirs.startswith(b"-"):
        assert ours == theirs
        return {}
    a, b = hello_fields(ours), hello_fields(theirs)
    assert a[b"mode"] == b"cluster" and b[b"mode"] == b"standalone"
    assert isinstance(a[b"id"], int) and a[b"id"] > 0
    for fields in (a, b):
        del fields[b"mode"], fields[b"id"]
    assert a == b
    assert ours[:1] == theirs[:1]  # same aggregate type: RESP2 array or RESP3 map
    return a


def test_ping_echo_select(pair):
    run_same(pair, [
        ("PING",), ("PING", "hello"), ("PING", ""), ("PING", "a", "b"), ("ping",),
        ("ECHO", "x"), ("ECHO", ""), ("ECHO",), ("ECHO", "a", "b"),
        ("SELECT", "0"), ("SELECT", "abc"), ("SELECT", "0x0"), ("SELECT", "1.0"), ("SELECT", ""),
        ("SELECT", "99999999999"), ("SELECT", "-99999999999"), ("SELECT",), ("SELECT", "0", "1"),
        ("SELECT", str(2**31)), ("SELECT", str(-(2**31) - 1)),
    ])


def test_select_nonzero_is_refused_as_in_redis_cluster(r):
    for db in ("1", "15", "-1", str(2**31 - 1)):
        with pytest.raises(redis.ResponseError, match="^SELECT is not allowed in cluster mode$"):
            r.execute_command("SELECT", db)


def test_ping_in_resp3_and_echo_binary(pair3):
    run_same(pair3, [("PING",), ("PING", "x"), ("ECHO", "\x00\r\n")])


def test_hello_negotiates_protocol(pair):
    assert same_hello(pair, "HELLO")[b"proto"] == 2
    assert same_hello(pair, "HELLO", "3")[b"proto"] == 3
    pair.same("GET", "nope")  # RESP3 null
    pair.same("CONFIG", "GET", "maxmemory")  # RESP3 map
    assert same_hello(pair, "HELLO")[b"proto"] == 3
    assert same_hello(pair, "HELLO", "2")[b"proto"] == 2
    pair.same("GET", "nope")
    for args in (("HELLO", "1"), ("HELLO", "4"), ("HELLO", "abc"), ("HELLO", "-1"), ("HELLO", "3.0"),
                 ("HELLO", "3", "foo"), ("HELLO", "3", "AUTH", "default"), ("HELLO", "3", "SETNAME"),
                 ("HELLO", "2", "SETNAME", "a b"), ("HELLO", "2", "SETNAME", "a\nb"),
                 ("HELLO", "3", "AUTH", "default", "anything"), ("HELLO", "3", "AUTH", "nouser", "pw"),
                 ("HELLO", "2", "SETNAME", "named"), ("HELLO", "2", "setname", "x", "SETNAME", "y")):
        same_hello(pair, *args)
        pair.same("CLIENT", "GETNAME")
        pair.same("GET", "nope")


def test_hello_reply_fields(r3):
    reply = r3.execute_command("HELLO", "3")
    assert reply[b"server"] == b"redis" and reply[b"version"] == b"7.0.15"
    assert reply[b"proto"] == 3 and reply[b"role"] == b"master" and reply[b"modules"] == []
    assert reply[b"id"] == r3.client_id()
    assert reply[b"mode"] == b"cluster"


def test_auth_without_a_password_configured(pair):
    run_same(pair, [
        ("AUTH", "foo"),
        ("AUTH", "default", "foo"),
        ("AUTH", "default", ""),
        ("AUTH", "nouser", "x"),
        ("AUTH", "a", "b", "c"),
        ("AUTH",),
        ("PING",),
    ])


def test_client_name_commands(pair):
    run_same(pair, [
        ("CLIENT", "GETNAME"),
        ("CLIENT", "SETNAME", "myname"),
        ("CLIENT", "GETNAME"),
        ("CLIENT", "SETNAME", ""),
        ("CLIENT", "GETNAME"),
        ("CLIENT", "SETNAME", "a b"),
        ("CLIENT", "SETNAME", "a\x7fb"),
        ("CLIENT", "SETNAME", "~!@#$%^&*()_+"),
        ("CLIENT", "GETNAME"),
        ("CLIENT", "SETNAME"),
        ("CLIENT", "SETNAME", "a", "b"),
        ("CLIENT", "GETNAME", "x"),
    ])


def test_client_subcommand_errors(pair):
    run_same(pair, [
        ("CLIENT",), ("CLIENT", "FOO"), ("client", "foo", "bar"), ("CLIENT", "ID", "x"),
        ("CLIENT", "INFO", "x"), ("CLIENT", "NO-EVICT", "maybe"), ("CLIENT", "NO-EVICT", "on"),
        ("CLIENT", "NO-EVICT", "OFF"), ("CLIENT", "NO-EVICT"),
        ("CLIENT", "KILL", "1.2.3.4:5"), ("CLIENT", "KILL", "ID"), ("CLIENT", "KILL", "ID", "abc"),
        ("CLIENT", "KILL", "ID", "0"), ("CLIENT", "KILL", "ID", "-5"), ("CLIENT", "KILL", "ID", "999999"),
        ("CLIENT", "KILL", "TYPE", "foo"), ("CLIENT", "KILL", "TYPE", "master"),
        ("CLIENT", "KILL", "TYPE", "pubsub"), ("CLIENT", "KILL", "TYPE", "replica"),
        ("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "maybe"), ("CLIENT", "KILL", "USER", "nobody"),
        ("CLIENT", "KILL", "ADDR", "1.2.3.4:5"), ("CLIENT", "KILL", "LADDR", "1.2.3.4:5"),
        ("CLIENT", "KILL", "FOO", "bar"), ("CLIENT", "KILL", "ID", "1", "TYPE"),
        ("CLIENT", "KILL", "ID", "abc", "TYPE"), ("CLIENT", "KILL"),
        ("CLIENT", "LIST", "TYPE", "foo"), ("CLIENT", "LIST", "TYPE", "pubsub"),
        ("CLIENT", "LIST", "TYPE", "master"), ("CLIENT", "LIST", "ID", "abc"), ("CLIENT", "LIST", "ID", "0"),
        ("CLIENT", "LIST", "ID", "-1", "999999"), ("CLIENT", "LIST", "FOO"), ("CLIENT", "LIST", "TYPE"),
        ("CLIENT", "LIST", "ID"), ("CLIENT", "HELP"), ("CLIENT", "help", "x"),
    ])


CLIENT_LINE = re.compile(
    r"id=(\d+) addr=127\.0\.0\.1:(\d+) laddr=127\.0\.0\.1:(\d+) fd=\d+ name=(\S*) age=\d+ idle=\d+ flags=N "
    r"db=0 sub=0 psub=0 ssub=0 multi=-1 qbuf=(\d+) qbuf-free=\d+ argv-mem=\d+ multi-mem=0 rbs=\d+ rbp=\d+ "
    r"obl=0 oll=0 omem=0 tot-mem=\d+ events=r cmd=(\S+) user=default redir=-1 resp=(\d)")


def test_client_info_and_list(server):
    conn = RawConn(server.port)
    conn.call("CLIENT", "SETNAME", "lister")
    my_id = decode(conn.call("CLIENT", "ID"))[0]
    info = decode(conn.call("CLIENT", "INFO"))[0].decode()
    m = CLIENT_LINE.match(info)
    assert m, info
    assert int(m.group(1)) == my_id and m.group(4) == "lister" and m.group(6) == "client|info"
    assert int(m.group(5)) == len(b"*2\r\n$6\r\nCLIENT\r\n$4\r\nINFO\r\n")
    assert int(m.group(3)) == server.port and info.endswith("\n")
    other = RawConn(server.port)
    other.call("HELLO", "3")
    listing = decode(conn.call("CLIENT", "LIST"))[0].decode().splitlines()
    lines = {int(CLIENT_LINE.match(line).group(1)): CLIENT_LINE.match(line) for line in listing}
    assert my_id in lines and lines[my_id].group(6) == "client|list"
    other_id = decode(other.call("CLIENT", "ID"))[0]
    assert lines[other_id].group(7) == "3" and lines[other_id].group(6) == "hello"
    only = decode(conn.call("CLIENT", "LIST", "ID", other_id, 424242))[0].decode().splitlines()
    assert [int(CLIENT_LINE.match(line).group(1)) for line in only] == [other_id]
    normal = decode(conn.call("CLIENT", "LIST", "TYPE", "normal"))[0].decode().splitlines()
    assert {int(CLIENT_LINE.match(line).group(1)) for line in normal} >= {my_id, other_id}
    conn.close()
    other.close()


def test_client_ids_are_unique_and_increasing(server):
    conns = [RawConn(server.port) for _ in range(5)]
    ids = [decode(c.call("CLIENT", "ID"))[0] for c in conns]
    assert ids == sorted(ids) and len(set(ids)) == 5
    for c in conns:
        c.close()


def test_client_kill_by_id_addr_and_skipme(server):
    killer = RawConn(server.port)
    victims = [RawConn(server.port) for _ in range(3)]
    ids = [decode(v.call("CLIENT", "ID"))[0] for v in victims]
    assert killer.call("CLIENT", "KILL", "ID", ids[0]) == b":1\r\n"
    assert victims[0].read_until_closed() == b""
    addr = re.search(rb"addr=(\S+)", decode(victims[1].call("CLIENT", "INFO"))[0]).group(1)
    assert killer.call("CLIENT", "KILL", addr) == b"+OK\r\n"
    assert victims[1].read_until_closed() == b""
    assert killer.call("CLIENT", "KILL", addr) == b"-ERR No such client\r\n"
    assert killer.call("CLIENT", "KILL", "ADDR", addr) == b":0\r\n"
    my_id = decode(killer.call("CLIENT", "ID"))[0]
    assert killer.call("CLIENT", "KILL", "ID", my_id) == b":0\r\n"  # SKIPME yes by default
    assert victims[2].call("PING") == b"+PONG\r\n"
    assert killer.call("CLIENT", "KILL", "ID", my_id, "SKIPME", "no") == b":1\r\n"
    assert killer.read_until_closed() == b""
    assert victims[2].call("PING") == b"+PONG\r\n"
    for v in victims:
        v.close()
    killer.close()


def test_client_setinfo_is_accepted_for_newer_clients(r):
    """Redis 7.2 clients (redis-py 5) send CLIENT SETINFO on connect; durakv
    accepts it (7.0 would answer an unknown-subcommand error, which clients ignore)."""
    assert r.execute_command("CLIENT", "SETINFO", "LIB-NAME", "mylib") == b"OK"
    assert r.execute_command("CLIENT", "SETINFO", "lib-ver", "1.2") == b"OK"
    with pytest.raises(redis.ResponseError, match="lib-name cannot contain spaces"):
        r.execute_command("CLIENT", "SETINFO", "LIB-NAME", "my lib")
    with pytest.raises(redis.ResponseError, match="^Unrecognized option 'FOO'$"):
        r.execute_command("CLIENT", "SETINFO", "FOO", "x")
    assert "lib-name=mylib lib-ver=1.2" in r.execute_command("CLIENT", "INFO").decode()


def test_quit_answers_pending_replies_then_closes(server, redis_ref):
    data = [b"*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\nQUIT\r\nPING\r\n"]
    assert exchange_until_closed(server.port, data) == exchange_until_closed(redis_ref.port, data)
    assert exchange_until_closed(server.port, [b"QUIT extra args\r\n"]) == b"+OK\r\n"


def test_reset_restores_a_fresh_connection(pair):
    same_hello(pair, "HELLO", "3", "SETNAME", "before")
    run_same(pair, [
        ("MULTI",),
        ("SET", "k", "v"),
        ("RESET",),
        ("CLIENT", "GETNAME"),
        ("GET", "k"),
        ("EXEC",),
        ("RESET", "x"),
    ])
    assert same_hello(pair, "HELLO")[b"proto"] == 2


# --- with a password -------------------------------------------------------------


@pytest.fixture(scope="module")
def password_pair_servers(tmp_path_factory):
    base = tmp_path_factory.mktemp("auth")
    ours = start_with_password(base / "data", "s3cret")
    theirs = RedisRef(base / "ref", ("--requirepass", "s3cret"))
    yield ours, theirs
    ours.discard()
    theirs.stop()


@pytest.fixture
def password_pair(password_pair_servers):
    ours, theirs = password_pair_servers
    p = Pair(ours.port, theirs.port)
    yield p
    p.close()


def test_noauth_for_everything_but_auth_hello_quit_reset(password_pair):
    run_same(password_pair, [
        ("PING",), ("GET", "a"), ("SET", "a", "b"), ("ECHO", "x"), ("SELECT", "0"), ("CLIENT", "ID"),
        ("CLIENT", "SETNAME", "x"), ("COMMAND", "COUNT"), ("CONFIG", "GET", "maxmemory"), ("INFO",),
        ("CLUSTER", "INFO"), ("READONLY",), ("DBSIZE",), ("KEYS", "*"), ("SCAN", "0"), ("MGET", "a", "b"),
        ("NOSUCH",), ("GET",),
        ("HELLO",), ("HELLO", "3"), ("HELLO", "2", "SETNAME", "x"), ("HELLO", "4"),
        ("RESET",),
    ])


def test_auth_with_requirepass(password_pair):
    run_same(password_pair, [
        ("AUTH",),
        ("AUTH", "wrong"),
        ("AUTH", "default", "wrong"),
        ("AUTH", "nouser", "s3cret"),
        ("AUTH", "a", "b", "c"),
        ("PING",),
        ("AUTH", "s3cret"),
        ("PING",),
        ("AUTH", "wrong"),
        ("PING",),  # a failed AUTH does not log an authenticated client out
        ("RESET",),
        ("PING",),
        ("AUTH", "default", "s3cret"),
        ("SET", "a", "1"),
        ("GET", "a"),
    ])


def test_hello_auth_with_requirepass(password_pair):
    for args in (("HELLO", "3", "AUTH", "default", "wrong"), ("HELLO", "3", "AUTH", "nouser", "s3cret"),
                 ("HELLO", "2", "AUTH", "default", "wrong", "SETNAME", "n"), ("HELLO", "3", "AUTH", "default")):
        same_hello(password_pair, *args)
        password_pair.same("PING")
    assert same_hello(password_pair, "HELLO", "3", "AUTH", "default", "s3cret", "SETNAME", "me")[b"proto"] == 3
    run_same(password_pair, [("CLIENT", "GETNAME"), ("GET", "nope"), ("RESET",), ("GET", "nope")])


def test_redis_py_clients_authenticate(password_pair_servers):
    ours, _ = password_pair_servers
    with redis.Redis(port=ours.port, password="s3cret") as client:
        assert client.ping() is True
        assert client.set("k", "v") and client.get("k") == b"v"
    with redis.Redis(port=ours.port, password="s3cret", protocol=3) as client:
        assert client.get("k") == b"v"
    with redis.Redis(port=ours.port, username="default", password="s3cret", protocol=3) as client:
        assert client.get("k") == b"v"
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=ours.port, password="wrong").ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=ours.port).ping()


def test_redis_cli_with_password(password_pair_servers):
    import shutil
    import subprocess

    cli = shutil.which("redis-cli")
    if cli is None:
        pytest.skip("redis-cli is not installed")
    outputs = []
    for srv in password_pair_servers:
        done = subprocess.run([cli, "-p", str(srv.port), "--no-auth-warning", "-a", "s3cret", "PING"],
                              capture_output=True, text=True, timeout=60)
        outputs.append(done.stdout)
    assert outputs == ["PONG\n", "PONG\n"]


def test_unauthenticated_raw_socket_is_refused(password_pair_servers):
    ours, _ = password_pair_servers
    with socket.create_connection(("127.0.0.1", ours.port), timeout=30) as sock:
        sock.sendall(b"GET k\r\n")
        assert sock.recv(100) == b"-NOAUTH Authentication required.\r\n"
