"""Protected mode (issue 13): bound beyond loopback with no password for the
default user, a client from a non-loopback address gets Redis' DENIED reply at
once and is closed, on the router and on shard ports; loopback clients, a
password, or `protected-mode no` lift it. Compared with redis-server 7.0."""

from __future__ import annotations

import socket
import ssl
import subprocess
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from refserver import RedisRef
from test_tls import Certs, start_tls

READ_TIMEOUT_S = 10
QUIET_S = 0.2  # a server that says nothing for this long after the connection is taken to wait for a command


def non_loopback_address() -> str:
    """An IPv4 address of this machine that is not loopback (the test connects from it)."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        address = line.split()[3].split("/")[0]
        if not address.startswith("127."):
            return address
    pytest.skip("this machine has no non-loopback IPv4 address to connect from")


def first_words(address: str, port: int) -> bytes:
    """What the server sends a client connecting from `address` before it sends anything,
    up to the server's close (b"" if it says nothing and keeps the connection)."""
    with socket.create_connection((address, port), timeout=READ_TIMEOUT_S, source_address=(address, 0)) as s:
        s.settimeout(QUIET_S)
        data = b""
        deadline = time.monotonic() + READ_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                return data
            if not chunk:
                return data + b"<closed>"
            data += chunk
    return data


def ping_from(address: str, port: int, password: str | None = None) -> object:
    client = redis.Redis(host=address, port=port, socket_timeout=READ_TIMEOUT_S, password=password,
                         retry=Retry(NoBackoff(), 0))
    try:
        return client.ping()
    finally:
        client.close()


def test_protected_mode_refuses_non_loopback_clients_like_redis(server_factory, tmp_path):
    address = non_loopback_address()
    ref = RedisRef(tmp_path / "ref", ("--bind", "0.0.0.0", "--protected-mode", "yes"))
    try:
        expected = first_words(address, ref.port)
    finally:
        ref.stop()
    assert expected.startswith(b"-DENIED Redis is running in protected mode") and expected.endswith(b"<closed>")
    srv = server_factory(shards=2, extra_args=("--bind", "0.0.0.0"))
    ports = [srv.port, srv.shard_port(0), srv.shard_port(1)]
    for port in ports:
        assert first_words(address, port) == expected
        assert redis.Redis(port=port).ping()  # loopback is served
    admin = srv.client()
    assert admin.config_get("protected-mode") == {"protected-mode": "yes"}
    assert admin.info("stats")["rejected_connections"] >= 1
    assert admin.config_set("protected-mode", "no")
    for port in ports:
        assert first_words(address, port) == b""
        assert ping_from(address, port) is True
    assert admin.config_set("protected-mode", "yes") and admin.config_set("requirepass", "sesame")
    for port in ports:
        assert first_words(address, port) == b""  # a password lifts it: AUTH is asked instead
        with pytest.raises(redis.AuthenticationError):
            ping_from(address, port)
        assert ping_from(address, port, password="sesame") is True


def test_protected_mode_on_tls_ports_after_the_handshake(server_factory, tmp_path):
    address = non_loopback_address()
    certs = Certs(tmp_path / "certs")
    srv = start_tls(server_factory, certs, tmp_path, **{"tls-auth-clients": "no", "bind": "0.0.0.0"})
    ctx = ssl.create_default_context(cafile=certs.ca_file)
    ctx.check_hostname = False
    for port in (srv.tls_port, srv.tls_port + 1):
        with socket.create_connection((address, port), timeout=READ_TIMEOUT_S, source_address=(address, 0)) as raw:
            with ctx.wrap_socket(raw) as tls:
                data = b""
                while chunk := tls.recv(65536):
                    data += chunk
        assert data.startswith(b"-DENIED Redis is running in protected mode") and data.endswith(b"outside.\r\n")
