"""The client-facing listening socket: bound once, by one process.

`durakv serve` binds it before starting anything and hands the same socket to
every router (they all accept from it), so a second server on the same port
fails at once instead of sharing it. There is no SO_REUSEPORT: with it, any
process of the same user could bind the port too and take half the clients.
A router started on its own (`durakv router`, the systemd unit) binds it itself.
"""

from __future__ import annotations

import errno
import socket
from typing import NamedTuple

LISTEN_BACKLOG = 511


class ListenError(Exception):
    """The port cannot be bound; str() is the one line for the operator, and
    `in_use` says whether another process holds it."""

    def __init__(self, message: str, in_use: bool = False) -> None:
        super().__init__(message)
        self.in_use = in_use


class ClientListeners(NamedTuple):
    """The listening sockets of one client port: plain, TLS (tls-port), or both."""

    plain: socket.socket | None
    tls: socket.socket | None

    def close(self) -> None:
        for sock in self:
            if sock is not None:
                sock.close()


def open_listener(bind: str, port: int, shard: int | None = None, tls: bool = False) -> socket.socket:
    """A non-blocking listening TCP socket on bind:port (SO_REUSEADDR only, so a
    port left in TIME_WAIT by a stopped server can be taken at once); `shard`:
    the port is that shard's client port, `tls`: a TLS port (the error names it
    and its setting)."""
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((bind, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError as e:
        sock.close()
        raise ListenError(_explain(e, bind, port, shard, tls), in_use=e.errno == errno.EADDRINUSE) from None
    sock.setblocking(False)
    return sock


def listener_from_fd(fd: int) -> socket.socket:
    """The listening socket inherited from the supervisor."""
    sock = socket.socket(fileno=fd)
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) != 1:
        raise ListenError(f"inherited fd {fd} is not a listening socket")
    sock.setblocking(False)
    return sock


def _explain(e: OSError, bind: str, port: int, shard: int | None, tls: bool = False) -> str:
    if tls:
        what, fix = (f"tls-port {port}", "tls-port") if shard is None else (
            f"port {port} (shard {shard}'s TLS client port)", "tls-shard-port-base (default: tls-port + 1)")
    else:
        what, fix = (f"port {port}", "--port") if shard is None else (
            f"port {port} (shard {shard}'s client port)", "shard-port-base (default: --port + 1)")
    if e.errno == errno.EADDRINUSE:
        return (f"{what} on {bind} is already in use; "
                f"stop the other server or choose another {fix}")
    if e.errno == errno.EACCES:
        return f"no permission to listen on {bind}:{port} (ports below 1024 need privileges); choose another {fix}"
    if e.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {bind}:{port}: {bind} is not an address of this machine; fix --bind"
    return f"cannot listen on {bind}:{port}: {e.strerror}; check --bind and --port"
