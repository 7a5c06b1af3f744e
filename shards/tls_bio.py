"""TLS over memory BIOs for a non-blocking socket read from an event loop: the core
that client connections (server/tls.py TlsSocket) and the links between nodes
(shards/link_tls.py LinkTls) share.

- A raw read decrypts everything that is complete (read until SSLWantRead), so no
  plaintext waits inside the SSLObject where epoll or trio cannot see it.
- A send reports as sent only plaintext whose records the kernel took. When it could
  not take a whole record, the rest of that record's bytes wait here (at most
  WRITE_CHUNK_BYTES of plaintext, encrypted) and the send reports the chunk as not
  sent: the caller sends the same bytes again, which then only finish the record,
  so output accounting and backpressure count TLS output exactly."""

from __future__ import annotations

import socket
import ssl
from typing import Any

import trio

WRITE_CHUNK_BYTES = 128 * 1024  # plaintext encrypted per step of a send


class BioTls:
    """A TLS connection over `sock` (server side unless server_hostname is given)."""

    __slots__ = ("sock", "_obj", "_incoming", "_outgoing", "_raw_out", "_ahead")
    raw_recv_bytes = 64 * 1024  # encrypted bytes read per raw read

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext, server_hostname: str | None = None) -> None:
        self.sock = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._obj = ctx.wrap_bio(self._incoming, self._outgoing, server_side=server_hostname is None,
                                 server_hostname=server_hostname)
        self._raw_out = b""  # encrypted bytes the kernel has not taken yet
        self._ahead = 0  # plaintext at the head of the next send already in _raw_out

    def fileno(self) -> int:
        return self.sock.fileno()

    def getpeername(self) -> Any:
        return self.sock.getpeername()

    def close(self) -> None:
        self.sock.close()

    def _pull(self, read_raw: bool) -> tuple[list[bytes], bool]:
        """One raw read (when read_raw), then every complete record decrypted: the
        plaintext pieces, and whether the stream ended (EOF or the peer's close_notify)."""
        self._flush_raw()
        eof = False
        if read_raw:
            try:
                raw = self.sock.recv(self.raw_recv_bytes)
            except BlockingIOError:
                raw = None
            if raw == b"":
                eof = True
            elif raw:
                self._incoming.write(raw)
        plain = []
        obj = self._obj
        while True:
            try:
                data = obj.read(self.raw_recv_bytes)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # the peer's close_notify
                eof = True
                break
            if not data:
                break
            plain.append(data)
        if self._outgoing.pending:  # alerts, key updates, session tickets
            self._raw_out += self._outgoing.read()
            self._flush_raw()
        return plain, eof

    def _send(self, view: memoryview) -> int:
        """Plaintext taken from the head of view (see the module docstring)."""
        accepted = 0
        if self._raw_out:
            if not self._flush_raw():
                raise BlockingIOError
            accepted, self._ahead = self._ahead, 0
            assert accepted <= len(view), "a TLS send resumed with less than it had encrypted"
        while accepted < len(view):
            chunk = view[accepted:accepted + WRITE_CHUNK_BYTES]
            self._obj.write(chunk)
            self._raw_out = self._outgoing.read()
            if not self._flush_raw():
                self._ahead = len(chunk)
                break
            accepted += len(chunk)
        return accepted

    def _flush_raw(self) -> bool:
        """Write pending encrypted bytes; True once none are left. OSError (the
        peer is gone) goes to the caller, as a socket's would."""
        raw = self._raw_out
        while raw:
            try:
                sent = self.sock.send(raw)
            except BlockingIOError:
                self._raw_out = raw
                return False
            raw = raw[sent:]
        self._raw_out = b""
        return True

    async def handshake(self) -> None:
        """Complete the handshake; ssl.SSLError or OSError if it fails, EOFError if
        the peer hangs up first. The caller bounds its time."""
        sock = self.sock
        while True:
            try:
                self._obj.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            if self._outgoing.pending:
                self._raw_out += self._outgoing.read()
            while not self._flush_raw():
                await trio.lowlevel.wait_writable(sock)
            if done:
                return
            await trio.lowlevel.wait_readable(sock)
            try:
                raw = sock.recv(self.raw_recv_bytes)
            except BlockingIOError:
                continue
            if not raw:
                raise EOFError("the peer closed the connection during the TLS handshake")
            self._incoming.write(raw)
