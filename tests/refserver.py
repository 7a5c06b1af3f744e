"""A reference redis-server 7.0 for differential tests, and a raw RESP client.

The strongest compatibility test is to send the same bytes to durakv and to a
real redis-server and require the same reply bytes back. `RawConn` speaks RESP
over a plain socket so nothing (no client library) normalises the replies
before they are compared; `Pair` sends one command to both servers.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest
import redis
from conftest import STARTUP_TIMEOUT_S, DurakvServer
from proctools import free_port

from durakv.shards.slots import key_slot, slot_owner_table

REDIS_SERVER = shutil.which("redis-server")
REF_STARTUP_TIMEOUT_S = 20
RECV_BYTES = 65536
REPLY_TIMEOUT_S = 30


class RedisRef:
    """A throwaway redis-server (no persistence) on a free port."""

    def __init__(self, workdir: Path, extra_args: tuple[str, ...] = ()) -> None:
        if REDIS_SERVER is None:
            pytest.skip("redis-server is not installed: differential tests need the reference server")
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", str(workdir), "--enable-debug-command", "yes", *extra_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + REF_STARTUP_TIMEOUT_S
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("reference redis-server did not start") from None
                time.sleep(0.02)

    def client(self, **kwargs) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=30, **kwargs)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def redis_ref(tmp_path_factory):
    """Module-scoped reference redis-server 7.0; skips the test when absent."""
    ref = RedisRef(tmp_path_factory.mktemp("redis-ref"))
    yield ref
    ref.stop()


# --- a raw RESP client ------------------------------------------------------------


class Err:
    """A decoded error reply (compared by message)."""

    __slots__ = ("message",)

    def __init__(self, message: bytes) -> None:
        self.message = message

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Err) and other.message == self.message

    def __hash__(self) -> int:
        return hash(self.message)

    def __repr__(self) -> str:
        return f"Err({self.message!r})"


def reply_end(buf: bytes, pos: int = 0) -> int | None:
    """End offset of the complete RESP2/RESP3 reply starting at pos, or None."""
    line_end = buf.find(b"\r\n", pos)
    if line_end < 0:
        return None
    kind = buf[pos : pos + 1]
    head = buf[pos + 1 : line_end]
    after = line_end + 2
    if kind in (b"+", b"-", b":", b"_", b"#", b",", b"("):
        return after
    if kind in (b"$", b"!", b"="):
        size = int(head)
        if size < 0:
            return after
        end = after + size + 2
        return end if end <= len(buf) else None
    if kind in (b"*", b"~", b">", b"%", b"|"):
        count = int(head)
        if count < 0:
            return after
        if kind in (b"%", b"|"):
            count *= 2
        for _ in range(count):
            after = reply_end(buf, after)
            if after is None:
                return None
        if kind == b"|":  # an attribute precedes the real reply
            return reply_end(buf, after)
        return after
    raise AssertionError(f"not a RESP reply: {buf[pos:pos + 80]!r}")


def decode(buf: bytes, pos: int = 0) -> tuple[object, int]:
    """Decode one reply to Python: maps to lists of pairs (order kept), errors to Err."""
    line_end = buf.index(b"\r\n", pos)
    kind = buf[pos : pos + 1]
    head = buf[pos + 1 : line_end]
    after = line_end + 2
    if kind == b"+":
        return head, after
    if kind == b"-":
        return Err(head), after
    if kind in (b":", b"("):
        return int(head), after
    if kind == b"_":
        return None, after
    if kind == b"#":
        return head == b"t", after
    if kind == b",":
        return float(head), after
    if kind in (b"$", b"!", b"="):
        size = int(head)
        if size < 0:
            return None, after
        return buf[after : after + size], after + size + 2
    count = int(head)
    if count < 0:
        return None, after
    items = []
    for _ in range(count * 2 if kind == b"%" else count):
        item, after = decode(buf, after)
        items.append(item)
    if kind == b"%":
        return [(items[i], items[i + 1]) for i in range(0, len(items), 2)], after
    return items, after


def encode_command(args: tuple) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, int):
            arg = b"%d" % arg
        parts.append(b"$%d\r\n%b\r\n" % (len(arg), arg))
    return b"".join(parts)


class RawConn:
    """One TCP connection speaking RESP by hand; replies come back as raw bytes."""

    def __init__(self, port: int, proto: int = 2) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=REPLY_TIMEOUT_S)
        self.buf = b""
        if proto == 3:
            reply = self.call("HELLO", "3")
            assert reply.startswith(b"%"), reply

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_reply(self) -> bytes:
        while True:
            if self.buf:
                end = reply_end(self.buf)
                if end is not None:
                    reply, self.buf = self.buf[:end], self.buf[end:]
                    return reply
            data = self.sock.recv(RECV_BYTES)
            if not data:
                raise ConnectionError(f"connection closed; unparsed {self.buf[:200]!r}")
            self.buf += data

    def call(self, *args) -> bytes:
        self.send_raw(encode_command(args))
        return self.read_reply()

    def value(self, *args) -> object:
        return decode(self.call(*args))[0]

    def pipeline(self, commands: list[tuple]) -> list[bytes]:
        self.send_raw(b"".join(encode_command(c) for c in commands))
        return [self.read_reply() for _ in commands]

    def read_until_closed(self) -> bytes:
        """Everything the server sends until it closes the connection."""
        chunks = [self.buf]
        self.buf = b""
        while True:
            data = self.sock.recv(RECV_BYTES)
            if not data:
                return b"".join(chunks)
            chunks.append(data)

    def close(self) -> None:
        self.sock.close()


class Pair:
    """The same command to durakv and to redis-server; the replies must match."""

    def __init__(self, durakv_port: int, redis_port: int, proto: int = 2) -> None:
        self.ours = RawConn(durakv_port, proto)
        self.theirs = RawConn(redis_port, proto)

    def both(self, *args) -> tuple[bytes, bytes]:
        return self.ours.call(*args), self.theirs.call(*args)

    def same(self, *args) -> object:
        """Assert identical reply bytes; return the decoded reply."""
        ours, theirs = self.both(*args)
        assert ours == theirs, f"{args!r}: durakv {ours!r} != redis {theirs!r}"
        return decode(ours)[0]

    def same_unordered(self, *args) -> list:
        """For replies whose element order is unspecified (KEYS): same multiset."""
        ours, theirs = self.both(*args)
        a, b = decode(ours)[0], decode(theirs)[0]
        assert isinstance(a, list) and isinstance(b, list), (args, ours, theirs)
        assert sorted(a, key=repr) == sorted(b, key=repr), f"{args!r}: durakv {a!r} != redis {b!r}"
        return a

    def close(self) -> None:
        self.ours.close()
        self.theirs.close()


@pytest.fixture
def pair(server, redis_ref):
    """A RESP2 Pair on emptied servers."""
    p = Pair(server.port, redis_ref.port, 2)
    p.same("FLUSHALL")
    yield p
    p.close()


@pytest.fixture
def pair3(server, redis_ref):
    """A RESP3 Pair on emptied servers."""
    p = Pair(server.port, redis_ref.port, 3)
    p.same("FLUSHALL")
    yield p
    p.close()


def start_with_password(data_dir, password: str) -> DurakvServer:
    """conftest's readiness probe does not expect NOAUTH from redis-py (it raises a
    ConnectionError subclass), so a password server waits with the password."""

    class PasswordServer(DurakvServer):
        def client(self, **kwargs):
            return super().client(password=password, **kwargs)

        def wait_ready(self) -> None:
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while time.monotonic() < deadline:
                try:
                    with self.client() as probe:
                        if b"cluster_state:ok" in probe.execute_command("CLUSTER", "INFO"):
                            return
                except redis.ConnectionError:
                    pass
                time.sleep(0.05)
            raise RuntimeError(f"durakv not ready:\n{self.log()}")

    password_file = data_dir.parent / f"{data_dir.name}.password"
    password_file.write_text(password)
    return PasswordServer(data_dir, shards=2, extra_args=("--requirepass-file", str(password_file))).start()


def flushall(*ports: int) -> None:
    for port in ports:
        conn = RawConn(port)
        assert conn.call("FLUSHALL") == b"+OK\r\n"
        conn.close()


def exchange_until_closed(port: int, chunks: list[bytes]) -> bytes:
    """Send chunks (each after the previous one is on the wire), then collect
    everything the server sends until it closes the connection."""
    conn = RawConn(port)
    try:
        for chunk in chunks:
            conn.send_raw(chunk)
        return conn.read_until_closed()
    except ConnectionResetError:
        return b"<reset>"
    finally:
        conn.close()


def same_all(p: Pair, commands: list[tuple]) -> None:
    """Every command gives the same reply bytes on durakv and redis-server."""
    for command in commands:
        p.same(*command)


def same_sequence(p: Pair, commands: list[tuple], keys: list[str], reads: Callable[[str], list[tuple]]) -> None:
    """The differential check of each type's random command sequences: both servers
    emptied, every command's reply compared, then each key's TYPE and the commands
    reads(key) gives compared."""
    p.same("FLUSHALL")
    same_all(p, commands)
    for key in keys:
        p.same("TYPE", key)
        same_all(p, reads(key))


def keys_on_different_shards(count: int = 2) -> list[str]:
    """Key names owned by different shards of the 2-shard test server."""
    owner = slot_owner_table(2)
    found: dict[int, str] = {}
    i = 0
    while len(found) < count:
        name = f"key-{i}"
        found.setdefault(owner[key_slot(name.encode())], name)
        i += 1
    return list(found.values())


def stream_summary(entries: list, groups: list[dict]) -> list:
    """A stream as dump_keyspace compares it: entries, and each group's name, last
    delivered id, read counter and pending count."""
    return [[(sid, sorted(fields.items())) for sid, fields in entries],
            sorted((g["name"], g["last-delivered-id"], g["entries-read"], g["pending"]) for g in groups)]


def dump_keyspace(client: redis.Redis) -> dict:
    """Every key's type, value and absolute expiry, read over the wire."""
    out = {}
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        if kind == "string":
            value = client.get(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "hash":
            value = sorted(client.hgetall(key).items())
        elif kind == "set":
            value = sorted(client.smembers(key))
        elif kind == "zset":
            value = [(m, repr(s)) for m, s in client.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":
            value = stream_summary(client.xrange(key), client.xinfo_groups(key))
        else:
            value = kind
        expire = client.execute_command("PEXPIRETIME", key)
        out[key] = (kind, value, None if expire == -1 else expire)
    return out
