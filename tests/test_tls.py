"""TLS on router and shard ports (issue 13, TLS): tls-port and the tls-* settings
as redis.conf names them, client certificates required/optional/refused, the
certificate reloaded on CONFIG SET, cluster clients told the TLS ports, a
TLS-only server (port 0), and a bad certificate path refused at startup."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import trustme
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from conftest import STARTUP_TIMEOUT_S
from proctools import free_port
from refserver import RedisRef
from test_operator_mistakes import durakv, one_line
from durakv.shards.slots import key_slot

SHARDS = 2
LAST_SLOT_OF_SHARD_0 = 8191
BIG_VALUE_BYTES = 3 * 1024 * 1024


class Certs:
    """A CA, the server's certificate, a client certificate from that CA and one
    from a CA the server does not trust, as files."""

    def __init__(self, tmp: Path) -> None:
        tmp.mkdir(exist_ok=True)
        self.dir = tmp
        self.ca = trustme.CA()
        self.ca_file = self._write("ca.pem", self.ca.cert_pem)
        self.server_cert, self.server_key = self.issue("server", "localhost", "127.0.0.1")
        self.client_cert, self.client_key = self.issue("client", "client@example")
        stranger = trustme.CA().issue_cert("stranger@example")
        self.stranger_cert = self._write("stranger.pem", stranger.cert_chain_pems[0])
        self.stranger_key = self._write("stranger.key", stranger.private_key_pem)

    def issue(self, name: str, *identities: str) -> tuple[str, str]:
        cert = self.ca.issue_cert(*identities)
        return self._write(f"{name}.pem", cert.cert_chain_pems[0]), self._write(f"{name}.key", cert.private_key_pem)

    def _write(self, name: str, blob: trustme.Blob) -> str:
        path = self.dir / name
        blob.write_to_path(str(path))
        return str(path)

    def settings(self) -> dict[str, str]:
        return {"tls-cert-file": self.server_cert, "tls-key-file": self.server_key, "tls-ca-cert-file": self.ca_file}


@pytest.fixture
def certs(tmp_path) -> Certs:
    return Certs(tmp_path / "certs")


def write_config(path: Path, settings: dict[str, object]) -> Path:
    lines = [f"{name} = {value!r}" if isinstance(value, int) else f'{name} = "{value}"'
             for name, value in settings.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def start_tls(server_factory, certs: Certs, tmp_path: Path, **extra: object):
    """A durakv tree with a plain port (the fixture's) and a TLS port, shards on both."""
    tls_port = free_port()
    config = write_config(tmp_path / f"tls-{tls_port}.toml", {"tls-port": tls_port, **certs.settings(), **extra})
    srv = server_factory(shards=SHARDS, extra_args=("--config", str(config)))
    srv.tls_port = tls_port
    return srv


def tls_client(port: int, certs: Certs, cert: str | None = "client", **kwargs) -> redis.Redis:
    files = {"client": (certs.client_cert, certs.client_key), "stranger": (certs.stranger_cert, certs.stranger_key),
             None: (None, None)}[cert]
    # No retries: a refused handshake fails at once rather than after redis-py's backoff.
    return redis.Redis(port=port, ssl=True, ssl_ca_certs=certs.ca_file, ssl_certfile=files[0],
                       ssl_keyfile=files[1], socket_timeout=30, retry=Retry(NoBackoff(), 0), **kwargs)


def owner(key: str) -> int:
    return 0 if key_slot(key.encode()) <= LAST_SLOT_OF_SHARD_0 else 1


def test_tls_round_trip_on_router_and_shard_ports(server_factory, certs, tmp_path):
    srv = start_tls(server_factory, certs, tmp_path)
    r = tls_client(srv.tls_port, certs)
    assert r.set("k", "v") and r.get("k") == b"v"
    big = bytes(range(256)) * (BIG_VALUE_BYTES // 256)  # many TLS records, and writes the kernel takes in part
    assert r.set("big", big)
    pipe = r.pipeline(transaction=False)
    for i in range(500):
        pipe.set(f"p{i}", i)
        pipe.get("big" if i % 100 == 0 else f"p{i}")
    replies = pipe.execute()
    assert replies[1] == big and replies[3] == b"1" and replies[999] == b"499"
    assert srv.client().get("k") == b"v"  # the plain port serves the same keyspace

    # Cluster clients over TLS: told the shards' TLS ports, and MOVED there.
    tls_ports = [srv.tls_port + 1 + i for i in range(SHARDS)]
    node = tls_client(tls_ports[0], certs)
    assert [entry[2][1] for entry in node.execute_command("CLUSTER", "SLOTS")] == tls_ports
    plain_node = srv.shard_client(0)
    assert [entry[2][1] for entry in plain_node.execute_command("CLUSTER", "SLOTS")] == [
        srv.shard_port(i) for i in range(SHARDS)]
    shards = plain_node.execute_command("CLUSTER", "SHARDS")  # parsed by redis-py: a dict per node
    ports = [(shard[b"nodes"][0][b"port"], shard[b"nodes"][0][b"tls-port"]) for shard in shards]
    assert ports == [(srv.shard_port(i), tls_ports[i]) for i in range(SHARDS)]
    key = next(f"key{i}" for i in range(100) if owner(f"key{i}") == 1)
    with pytest.raises(redis.ResponseError, match=f"^{key_slot(key.encode())} 127.0.0.1:{tls_ports[1]}$"):  # MOVED
        node.get(key)
    cluster = RedisCluster(host="127.0.0.1", port=tls_ports[1], ssl=True, ssl_ca_certs=certs.ca_file,
                           ssl_certfile=certs.client_cert, ssl_keyfile=certs.client_key, socket_timeout=30)
    assert {n.port for n in cluster.get_primaries()} == set(tls_ports)
    keys = [f"c{i}" for i in range(100)]
    for k in keys:
        cluster.set(k, k)
    assert [cluster.get(k) for k in keys] == [k.encode() for k in keys]
    assert {owner(k) for k in keys} == {0, 1}
    cluster.close()


def test_client_certificates_required_optional_and_refused(server_factory, certs, tmp_path):
    srv = start_tls(server_factory, certs, tmp_path)
    ports = [srv.tls_port, srv.tls_port + 1]  # the router's and shard 0's
    for port in ports:
        assert tls_client(port, certs).ping()
        for cert in (None, "stranger"):  # tls-auth-clients yes: no certificate, or one the CA did not sign
            with pytest.raises(redis.ConnectionError):
                tls_client(port, certs, cert=cert).ping()
    # CONFIG SET applies on every router and shard port, for new connections.
    admin = srv.client()
    assert admin.config_set("tls-auth-clients", "optional")
    assert admin.config_get("tls-auth-clients") == {"tls-auth-clients": "optional"}
    for port in ports:
        assert tls_client(port, certs, cert=None).ping()
        with pytest.raises(redis.ConnectionError):
            tls_client(port, certs, cert="stranger").ping()  # optional: a certificate shown must verify
    assert admin.config_set("tls-auth-clients", "no")
    for port in ports:
        assert tls_client(port, certs, cert="stranger").ping()
    log = srv.log()
    assert "tls: error accepting a client connection from 127.0.0.1" in log


def server_serial(port: int, certs: Certs) -> int:
    ctx = ssl.create_default_context(cafile=certs.ca_file)
    ctx.load_cert_chain(certs.client_cert, certs.client_key)
    with socket.create_connection(("127.0.0.1", port)) as raw, ctx.wrap_socket(raw, server_hostname="localhost") as s:
        der = s.getpeercert(binary_form=True)
    from cryptography import x509

    return x509.load_der_x509_certificate(der).serial_number


def test_config_set_reloads_the_certificate_and_refuses_what_redis_refuses(server_factory, certs, tmp_path):
    srv = start_tls(server_factory, certs, tmp_path)
    admin = srv.client()
    before = server_serial(srv.tls_port, certs)
    old = tls_client(srv.tls_port, certs)
    assert old.ping()
    new_cert, new_key = certs.issue("server2", "localhost", "127.0.0.1")
    with pytest.raises(redis.ResponseError, match="Unable to update TLS configuration"):
        admin.config_set("tls-cert-file", new_cert)  # the old key does not fit it
    assert admin.execute_command("CONFIG", "SET", "tls-cert-file", new_cert, "tls-key-file", new_key) == b"OK"
    for port in (srv.tls_port, srv.tls_port + 1, srv.tls_port + 2):
        assert server_serial(port, certs) != before
    assert old.ping()  # a connection keeps the context it was accepted with

    ref = RedisRef(tmp_path / "ref", ("--tls-port", str(free_port()), *(
        arg for name, value in certs.settings().items() for arg in (f"--{name}", value))))
    try:
        theirs = ref.client()
        for name, value in [("tls-cert-file", "/nonexistent.pem"), ("tls-key-file", certs.ca_file),
                            ("tls-protocols", "TLSv1.9"), ("tls-protocols", "tlsv1.2  tlsv1.3"),
                            ("tls-ciphers", "NO-SUCH-CIPHER"), ("tls-ciphersuites", "NO_SUCH_SUITE"),
                            ("tls-ca-cert-file", "/nonexistent.pem"), ("tls-auth-clients", "maybe"),
                            ("tls-session-cache-size", "-1"), ("tls-prefer-server-ciphers", "perhaps")]:
            with pytest.raises(redis.ResponseError) as expected:
                theirs.config_set(name, value)
            with pytest.raises(redis.ResponseError) as got:
                admin.config_set(name, value)
            assert str(got.value) == str(expected.value), (name, value)
        with pytest.raises(redis.ResponseError) as got:
            admin.config_set("tls-port", str(srv.tls_port + 100))  # durakv does not rebind, as for port
        assert str(got.value) == ("CONFIG SET failed (possibly related to argument 'tls-port') - "
                                  "Unable to listen on this port: durakv listens on the port it started with")
        for name, value in [("tls-protocols", "TLSv1.3"), ("tls-ciphersuites", "TLS_AES_256_GCM_SHA384"),
                            ("tls-prefer-server-ciphers", "yes"), ("tls-session-caching", "no"),
                            ("tls-session-cache-size", "100"), ("tls-session-cache-timeout", "60")]:
            assert theirs.config_set(name, value) and admin.config_set(name, value)
        names = ["tls-port", "tls-protocols", "tls-ciphersuites", "tls-prefer-server-ciphers", "tls-session-caching",
                 "tls-session-cache-size", "tls-session-cache-timeout", "tls-auth-clients", "tls-ciphers",
                 "tls-key-file-pass", "tls-ca-cert-dir", "tls-dh-params-file"]
        mine = {k: v for k, v in admin.config_get("tls-*").items() if k in names and k != "tls-port"}
        assert mine == {k: v for k, v in theirs.config_get("tls-*").items() if k in names and k != "tls-port"}
    finally:
        ref.stop()
    assert tls_client(srv.tls_port, certs).ping()  # the new settings (TLSv1.3 only) still serve
    ctx = ssl.create_default_context(cafile=certs.ca_file)
    ctx.load_cert_chain(certs.client_cert, certs.client_key)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        with socket.create_connection(("127.0.0.1", srv.tls_port)) as raw:
            ctx.wrap_socket(raw, server_hostname="localhost")


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli is not installed")
def test_redis_cli_tls_round_trip(server_factory, certs, tmp_path):
    srv = start_tls(server_factory, certs, tmp_path)
    tls_args = ["--tls", "--cacert", certs.ca_file, "--cert", certs.client_cert, "--key", certs.client_key]

    def cli(port: int, *args: str, cluster: bool = False) -> str:
        out = subprocess.run(["redis-cli", *(["-c"] if cluster else []), *tls_args, "-p", str(port), *args],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    assert cli(srv.tls_port, "SET", "greeting", "hello over tls") == "OK"
    assert cli(srv.tls_port, "GET", "greeting") == "hello over tls"
    keys = {owner(f"cli{i}"): f"cli{i}" for i in range(50)}
    for shard, key in keys.items():  # -c follows MOVED from shard 0's TLS port to shard 1's
        assert cli(srv.tls_port + 1, "SET", key, f"on {shard}", cluster=True) == "OK"
        assert cli(srv.tls_port + 1, "GET", key, cluster=True) == f"on {shard}"
        assert srv.shard_client(shard).get(key) == f"on {shard}".encode()


def test_tls_only_with_port_0(certs, tmp_path):
    """port 0: no plain listener anywhere (router or shards), only the TLS ports."""
    tls_port = free_port()
    plain_port = free_port()
    config = write_config(tmp_path / "tls-only.toml", {"port": 0, "tls-port": tls_port, **certs.settings(),
                                                       "tls-auth-clients": "no"})
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "durakv.server.cli", "serve", "--config", str(config),
                             "--shards", str(SHARDS), "--shard-port-base", str(plain_port),
                             "--data-dir", str(tmp_path / "data")], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                r = tls_client(tls_port, certs, cert=None)
                if b"cluster_state:ok" in r.execute_command("CLUSTER", "INFO"):
                    break
            except (redis.ConnectionError, redis.TimeoutError):  # not listening yet, or not accepting yet
                assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
                time.sleep(0.05)
        assert r.set("k", "v") and r.get("k") == b"v"
        assert r.config_get("port") == {"port": "0"}
        nodes = [shard[b"nodes"][0] for shard in r.execute_command("CLUSTER", "SHARDS")]
        assert [(node.get(b"port"), node[b"tls-port"]) for node in nodes] == [(None, tls_port + 1 + i)
                                                                           for i in range(SHARDS)]
        for port in (plain_port, plain_port + 1):  # shard-port-base is unused without a plain port
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port)).close()
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()


def test_bad_tls_configuration_is_one_line_at_startup(certs, tmp_path):
    cases = {
        "tls-cert-file": ("/nonexistent/cert.pem", "failed to load certificate /nonexistent/cert.pem or private key"),
        "tls-ca-cert-file": ("", "tls-auth-clients is yes, so either tls-ca-cert-file or tls-ca-cert-dir must be "
                                 "specified (or set tls-auth-clients no)"),
        "tls-protocols": ("TLSv1.4", "invalid tls-protocols 'TLSv1.4'"),
    }
    for name, (value, problem) in cases.items():
        config = write_config(tmp_path / f"{name}.toml", {"tls-port": free_port(), **certs.settings(), name: value})
        out = durakv("serve", "--port", str(free_port()), "--config", str(config), "--data-dir", str(tmp_path / "d"))
        assert out.returncode == 2, out.stderr
        line = one_line(out)
        assert line.startswith("durakv: bad TLS configuration: ") and problem in line, line
