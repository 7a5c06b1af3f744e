"""Internal links over TCP, between a router on one node and a shard primary on
another (issue 15): the shard's listening socket and the handshake both ends run
before the first frame.

A local link is a Unix socket in a 0700 directory whose peer's uid both ends check
(shards/unixsock.py); a TCP peer has no uid, so it proves it knows the deployment's
link secret (log/etcd_nodes.py, in etcd). The handshake is a challenge-response with
HMAC-SHA256, both ways: the secret never crosses the wire, a recorded handshake is
useless (fresh nonces each time), and the router knows it reached a shard of its
deployment, not something else listening on that port. A peer that fails it, or is
silent for HANDSHAKE_TIMEOUT_S, is closed before anything it sent is read as a frame.

    shard  -> router   MAGIC + server nonce (32 bytes)
    router -> shard    client nonce (32) + HMAC(secret, b"router" + server nonce + client nonce)
    shard  -> router   HMAC(secret, b"shard" + server nonce + client nonce)

A shard process serves one shard, so its listener is one per process: bound when the
shard campaigns for its leader key (shards/log_backend.py puts the address in it) and
listening once the shard serves (shards/process.py serve_primary), so a router that
connects before then is refused and tries again rather than waiting on a backlog."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import socket

import trio

from durakv.shards.config import Config
from durakv.shards.framelink import send_all, tune_socket

logger = logging.getLogger("durakv.shard")

MAGIC = b"DKVLINK1"
NONCE_BYTES = 32
MAC_BYTES = hashlib.sha256().digest_size
HANDSHAKE_TIMEOUT_S = 5.0


class LinkRefused(Exception):
    """The peer of an internal TCP link did not prove it knows the link secret."""


def _mac(secret: bytes, side: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    return hmac.new(secret, side + server_nonce + client_nonce, hashlib.sha256).digest()


async def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        try:
            chunk = sock.recv(size - len(data))
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)
            continue
        if not chunk:
            raise LinkRefused(f"the peer closed the link after {len(data)} of {size} handshake bytes")
        data += chunk
    return bytes(data)


async def accept_link(sock: socket.socket, secret: bytes) -> None:
    """The shard's side of the handshake (sock non-blocking); LinkRefused if the
    router does not prove it knows the secret within HANDSHAKE_TIMEOUT_S."""
    server_nonce = os.urandom(NONCE_BYTES)
    with trio.move_on_after(HANDSHAKE_TIMEOUT_S):
        await send_all(sock, MAGIC + server_nonce)
        answer = await _recv_exactly(sock, NONCE_BYTES + MAC_BYTES)
        client_nonce, mac = answer[:NONCE_BYTES], answer[NONCE_BYTES:]
        if not hmac.compare_digest(mac, _mac(secret, b"router", server_nonce, client_nonce)):
            raise LinkRefused("the peer does not know the link secret")
        await send_all(sock, _mac(secret, b"shard", server_nonce, client_nonce))
        return
    raise LinkRefused(f"no handshake within {HANDSHAKE_TIMEOUT_S:g} s")


async def open_link(sock: socket.socket, secret: bytes) -> None:
    """The router's side of the handshake on a connected, non-blocking socket;
    LinkRefused if the shard does not prove it knows the secret."""
    with trio.move_on_after(HANDSHAKE_TIMEOUT_S):
        hello = await _recv_exactly(sock, len(MAGIC) + NONCE_BYTES)
        if not hello.startswith(MAGIC):
            raise LinkRefused("the peer is not a durakv shard's link port")
        server_nonce, client_nonce = hello[len(MAGIC):], os.urandom(NONCE_BYTES)
        await send_all(sock, client_nonce + _mac(secret, b"router", server_nonce, client_nonce))
        if not hmac.compare_digest(await _recv_exactly(sock, MAC_BYTES),
                                   _mac(secret, b"shard", server_nonce, client_nonce)):
            raise LinkRefused("the peer does not know the link secret")
        return
    raise LinkRefused(f"no handshake within {HANDSHAKE_TIMEOUT_S:g} s")


def tune_tcp_link(sock: socket.socket) -> None:
    """A TCP link carries one frame per turn each way: no Nagle delay on it."""
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    tune_socket(sock)


def link_host(config: Config) -> str:
    """The address a shard's link port binds and announces: --advertise's host (where
    other nodes reach this one), else the first bind address."""
    if config.advertise:
        return config.advertise.rpartition(":")[0]
    return config.bind.split()[0]


class LinkPort:
    """This process's link listener (a shard process serves one shard): bound, and
    listening once the shard serves."""

    _bound: "LinkPort | None" = None

    def __init__(self, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        self.address = f"{host}:{self.sock.getsockname()[1]}"

    @classmethod
    def of_process(cls, config: Config, shard: int) -> "LinkPort":
        """The process's link port, bound on first use: link-port-base + shard, or any
        free port (also when that one is taken: a deposed primary of this machine may
        still hold it)."""
        if cls._bound is None:
            host = link_host(config)
            port = config.link_port_base + shard if config.link_port_base else 0
            try:
                cls._bound = cls(host, port)
            except OSError as e:
                if not port:
                    raise OSError(e.errno, f"cannot bind an internal link port on {host}: {e.strerror}") from e
                logger.warning("shard %d: link port %s:%d is taken (%s); using a free port instead", shard,
                               host, port, e.strerror)
                cls._bound = cls(host, 0)
        return cls._bound

    @classmethod
    def bound(cls) -> "LinkPort | None":
        return cls._bound
