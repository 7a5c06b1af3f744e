"""The wire protocol over real sockets: malformed input, inline commands,
redis-cli, limits. Wherever the outcome is deterministic the same bytes go to a
reference redis-server 7.0 and the complete byte streams must be identical."""

from __future__ import annotations

import shutil
import socket
import subprocess

import pytest

from conftest import DurakvServer
from refserver import RawConn, RedisRef, decode, encode_command, exchange_until_closed, flushall, start_with_password

REDIS_CLI = shutil.which("redis-cli")
INLINE_LIMIT = 64 * 1024


CLOSING = [
    [b"*x\r\n"],
    [b"*3000000000\r\n"],
    [b"*2147483648\r\n"],
    [b"*01\r\n$4\r\nPING\r\n"],
    [b"*1\r\nPING\r\n"],
    [b"*1\r\n$x\r\n"],
    [b"*1\r\n$-1\r\n"],
    [b"*1\r\n$04\r\nPING\r\n"],
    [b"*1\r\n$2000000000\r\n"],
    [b"*1\r\n$536870913\r\n"],
    [b"*1\r$4\r\nPING\r\n"],
    [b"*1\r\n", b"x", b"\r\n"],
    # Unterminated lines exactly one byte over the 64 KiB limit: the error comes
    # only once every byte is read, so no unread input turns the close into a reset.
    [b"*" + b"1" * INLINE_LIMIT],
    [b"*1\r\n$" + b"1" * INLINE_LIMIT],
    [b"SET a " + b"x" * (INLINE_LIMIT + 1 - 6)],
    [b"PING\x00\r\n", b"y" * (INLINE_LIMIT + 1 - 7)],
    [b"ECHO \"unbalanced\r\n"],
    [b"ECHO 'a'b\r\n"],
    [b"*2\r\n$4\r\nECHO\r\n", b"$3\r\nabc\r\n", b"*1\r\n$4\r\nPING\r\n", b"QUIT\r\n"],
    [b"PING\r\n", b"QUIT\r\n"],
    [encode_command(("QUIT",)) + b"PING\r\n"],
]


@pytest.mark.parametrize("chunks", CLOSING, ids=[repr(b"".join(c)[:40]) for c in CLOSING])
def test_connection_closing_input_matches_redis(server, redis_ref, chunks):
    ours = exchange_until_closed(server.port, chunks)
    theirs = exchange_until_closed(redis_ref.port, chunks)
    assert ours == theirs


@pytest.mark.parametrize("data", [
    b"PING\r\n*1\r\n$x\r\n",
    encode_command(("SET", "k", "v")) + encode_command(("GET", "k")) + b"*1\r\n:1\r\n",
])
def test_commands_before_garbage_in_one_read_are_answered(server, redis_ref, data):
    assert exchange_until_closed(server.port, [data]) == exchange_until_closed(redis_ref.port, [data])


def test_garbage_does_not_disturb_other_clients(server):
    bystander = RawConn(server.port)
    assert bystander.call("SET", "bystander", "1") == b"+OK\r\n"
    for chunks in CLOSING[:12]:
        exchange_until_closed(server.port, chunks)
    assert bystander.call("GET", "bystander") == b"$1\r\n1\r\n"
    fresh = RawConn(server.port)
    assert fresh.call("PING") == b"+PONG\r\n"
    bystander.close()
    fresh.close()


def test_huge_counts_that_stay_pending_cost_nothing(server):
    """A valid huge multibulk count or bulk length waits for its bytes; the
    client can be dropped and nothing was allocated for it."""
    waiting = [RawConn(server.port) for _ in range(4)]
    waiting[0].send_raw(b"*2147483647\r\n")
    waiting[1].send_raw(b"*1\r\n$536870912\r\n")
    waiting[2].send_raw(b"*1048576\r\n$1\r\na\r\n")
    waiting[3].send_raw(b"*3\r\n$3\r\nSET\r\n$7\r\npending\r\n$536870912\r\nabc")
    probe = RawConn(server.port)
    assert probe.call("PING") == b"+PONG\r\n"
    for conn in waiting:
        conn.close()
    assert probe.call("GET", "pending") == b"$-1\r\n"
    probe.close()


INLINE_SESSIONS = [
    b"PING\r\n",
    b"PING\n",
    b"  SET  inl   \"va lue\"  \r\nGET inl\r\n",
    b"\r\n\r\nPING\r\n",
    b"ECHO \"a\\x41\\n\"\r\n",
    b"ECHO 'it\\'s'\r\n",
    b"ECHO a\vb\r\n",
    b"ECHO \"\" ''\r\n",
    b"SET {t}a 1\r\nMGET {t}a {t}b\r\nDEL {t}a\r\n",
    b"*1\r\n$4\r\nPINGxx\r\n",
    b"*0\r\n*-1\r\nPING\r\n",
    b"*1\r\n$0\r\n\r\n",
    b"NOSUCH a b\r\n",
    b"GET\r\n",
    # After a pipeline deep enough for the parser's hiredis path, lines that start with a
    # RESP3 type Redis does not read in a request (set, attribute, push, map): each is an
    # inline command to Redis, never an array.
    b"*1\r\n$4\r\nPING\r\n" * 20 + b"~1\r\n$4\r\nPING\r\n",
    b"*1\r\n$4\r\nPING\r\n" * 20 + b"|1\r\n$1\r\na\r\n$1\r\nb\r\n*1\r\n$4\r\nPING\r\n",
    b"*1\r\n$4\r\nPING\r\n" * 20 + b">1\r\n$4\r\nPING\r\n%1\r\n$1\r\na\r\n$1\r\nb\r\n",
    # Scalars of other types as lines: hiredis reads `#f` as False, its "nothing more".
    b"*1\r\n$4\r\nPING\r\n" * 20 + b"#f\r\n*1\r\n$4\r\nPING\r\n",
    b"*1\r\n$4\r\nPING\r\n" * 20 + b"#f\r\n#t\r\n_\r\n,1.5\r\n:5\r\n-ERR x\r\n*1\r\n$4\r\nPING\r\n",
]


@pytest.mark.parametrize("data", INLINE_SESSIONS, ids=[repr(d[:40]) for d in INLINE_SESSIONS])
def test_inline_and_odd_requests_match_redis(server, redis_ref, data):
    """Each session ends with QUIT so the complete reply stream can be compared."""
    flushall(server.port, redis_ref.port)
    chunks = [data, b"QUIT\r\n"]
    assert exchange_until_closed(server.port, chunks) == exchange_until_closed(redis_ref.port, chunks)


def test_request_split_into_single_bytes(server, redis_ref):
    data = (encode_command(("SET", "{s}k", "v" * 100)) + b"GET {s}k\r\n"
            + encode_command(("MGET", "{s}k", "{s}x")) + b"QUIT\r\n")
    outputs = []
    flushall(server.port, redis_ref.port)
    for port in (server.port, redis_ref.port):
        conn = RawConn(port)
        for i in range(len(data)):
            conn.sock.sendall(data[i : i + 1])
        outputs.append(conn.read_until_closed())
        conn.close()
    assert outputs[0] == outputs[1]


@pytest.mark.skipif(REDIS_CLI is None, reason="redis-cli is not installed")
def test_redis_cli_piped_commands_match_redis(server, redis_ref):
    script = (
        "FLUSHALL\nSET greeting \"hello world\"\nGET greeting\nINCR n\nINCRBYFLOAT f 1.5\n"
        "MSET {t}a 1 {t}b 2\nMGET {t}a {t}b {t}c\nGET\nNOSUCH x\nEXISTS greeting nope\n"
        "TTL greeting\nCONFIG GET maxmemory\nGET greeting\nPING\n"
    )
    outputs = []
    for port in (server.port, redis_ref.port):
        result = subprocess.run([REDIS_CLI, "-p", str(port)], input=script, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
    assert outputs[0] == outputs[1]
    assert "hello world" in outputs[0]


@pytest.mark.skipif(REDIS_CLI is None, reason="redis-cli is not installed")
def test_redis_cli_one_shot_commands(server, redis_ref):
    for args in (["PING"], ["ECHO", "x y"], ["SET", "cli", "1"], ["GET", "cli"], ["GET"], ["EXISTS", "cli", "no"]):
        replies = [subprocess.run([REDIS_CLI, "-p", str(port), *args], capture_output=True, text=True,
                                  timeout=60).stdout for port in (server.port, redis_ref.port)]
        assert replies[0] == replies[1], args


def test_raw_socket_inline_ping_like_nc(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"PING\r\n")
        assert sock.recv(100) == b"+PONG\r\n"


@pytest.fixture(scope="module")
def password_servers(tmp_path_factory):
    base = tmp_path_factory.mktemp("authproto")
    ours = start_with_password(base / "data", "s3cret")
    theirs = RedisRef(base / "ref", ("--requirepass", "s3cret"))
    yield ours, theirs
    ours.discard()
    theirs.stop()


UNAUTHENTICATED = [
    [b"*11\r\n"],
    [b"*10\r\n"] + [b"$1\r\na\r\n"] * 10 + [b"QUIT\r\n"],
    [b"*1\r\n$16385\r\n"],
    [b"*2\r\n$4\r\nECHO\r\n$16384\r\n" + b"z" * 16384 + b"\r\n", b"QUIT\r\n"],
    [b"GET k\r\n", b"AUTH wrong\r\n", b"QUIT\r\n"],
]


@pytest.mark.parametrize("chunks", UNAUTHENTICATED, ids=[repr(b"".join(c)[:30]) for c in UNAUTHENTICATED])
def test_unauthenticated_request_limits_match_redis(password_servers, chunks):
    ours, theirs = password_servers
    assert exchange_until_closed(ours.port, chunks) == exchange_until_closed(theirs.port, chunks)


AUTH_IN_ONE_READ = [
    b"AUTH s3cret\r\n*11\r\n" + b"$1\r\na\r\n" * 11 + b"QUIT\r\n",
    b"HELLO 2 AUTH default s3cret\r\n*2\r\n$4\r\nECHO\r\n$16385\r\n" + b"z" * 16385 + b"\r\nQUIT\r\n",
    # A wrong password lifts nothing: the request after it is refused as before.
    b"AUTH wrong\r\n*11\r\n" + b"$1\r\na\r\n" * 11 + b"QUIT\r\n",
    b"PING\r\nAUTH s3cret\r\nAUTH s3cret\r\n*2\r\n$4\r\nECHO\r\n$16385\r\n" + b"z" * 16385 + b"\r\nQUIT\r\n",
]


@pytest.mark.parametrize("data", AUTH_IN_ONE_READ, ids=[repr(d[:30]) for d in AUTH_IN_ONE_READ])
def test_auth_lifts_limits_for_requests_in_the_same_read(password_servers, data):
    """Redis runs each request before parsing the next: one after a successful AUTH (or
    HELLO AUTH) in the same read gets the authenticated limits, on the router and on a
    shard port; before one, a client still gets the unauthenticated limits."""
    ours, theirs = password_servers

    def after_hello(output: bytes) -> bytes:  # HELLO's map names the server: compared from after it
        return output[decode(output)[1]:] if data.startswith(b"HELLO") else output

    expected = after_hello(exchange_until_closed(theirs.port, [data]))
    assert after_hello(exchange_until_closed(ours.port, [data])) == expected
    assert after_hello(exchange_until_closed(ours.shard_port(0), [data])) == expected


@pytest.fixture(scope="module")
def small_buffer_servers(tmp_path_factory):
    base = tmp_path_factory.mktemp("qbuf")
    config = base / "durakv.toml"
    config.write_text("client-query-buffer-limit = 1048576\n")
    ours = DurakvServer(base / "data", shards=2, extra_args=("--config", str(config))).start()
    theirs = RedisRef(base / "ref", ("--client-query-buffer-limit", "1mb"))
    yield ours, theirs
    ours.discard()
    theirs.stop()


def test_query_buffer_limit_closes_without_reply(small_buffer_servers):
    ours, theirs = small_buffer_servers
    chunks = [b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2000000\r\n", b"v" * 1_200_000]
    # Both close without a reply (a reset when unread input is still queued), on the
    # router and on a shard port alike.
    assert exchange_until_closed(theirs.port, chunks) in (b"", b"<reset>")
    for port in (ours.port, ours.shard_port(0)):
        assert exchange_until_closed(port, chunks) in (b"", b"<reset>")
        probe = RawConn(port)
        assert probe.call("PING") == b"+PONG\r\n"
        probe.close()
