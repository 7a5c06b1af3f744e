"""TLS on the internal TCP links between nodes (issue 15): a router's link to a shard
primary on another node, and that shard's link port, encrypted and verified against
the deployment's CA when the node has tls-cert-file, tls-key-file and a CA
(tls-ca-cert-file or tls-ca-cert-dir). Both ends present the node's certificate and
require the other's (mutual TLS); the router also checks that the shard's certificate
names the host it connects to (the --advertise host in the leader entry). The HMAC
handshake of shards/link_auth.py then runs inside the TLS session, as before.

A `LinkTls` stands in for the link's socket with the methods the frame code calls
(recv, recv_into, send, fileno, setsockopt), encrypting through an ssl.SSLObject over
memory BIOs, as server/tls.py does for clients. The frame receiver waits on the
socket before every read, so decrypted bytes must never wait where the kernel cannot
see them: every raw read decrypts everything complete (read until SSLWantRead) into
`_plain`, and `wait_readable` returns at once while `_plain` holds bytes a smaller
recv_into left (shards/framelink.py FrameReceiver waits through it for a TLS link).
A plain link never meets any of this."""

from __future__ import annotations

import logging
import socket
import ssl
from typing import Any

import trio

from durakv.shards.config import Config

logger = logging.getLogger("durakv.shard")

HANDSHAKE_TIMEOUT_S = 5.0
RAW_RECV_BYTES = 256 * 1024  # encrypted bytes read per raw read (plaintext held at most about this)
WRITE_CHUNK_BYTES = 128 * 1024  # plaintext encrypted per step of a send


class LinkTlsError(Exception):
    """The TLS handshake of an internal link failed (str() says why)."""


def links_use_tls(config: Config) -> bool:
    """Whether this node's internal TCP links run over TLS: a certificate, its key and a CA."""
    return bool(config.tls_cert_file and config.tls_key_file and (config.tls_ca_cert_file or config.tls_ca_cert_dir))


def link_context(config: Config, server_side: bool) -> ssl.SSLContext:
    """The context of one end of a link: the node's certificate, the CA, peers verified."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    try:
        ctx.load_cert_chain(config.tls_cert_file, config.tls_key_file, password=config.tls_key_file_pass or None)
        ctx.load_verify_locations(cafile=config.tls_ca_cert_file or None, capath=config.tls_ca_cert_dir or None)
    except (OSError, ssl.SSLError) as e:
        raise OSError(f"cannot load the TLS files for internal links (tls-cert-file {config.tls_cert_file}, "
                      f"tls-key-file {config.tls_key_file}, CA {config.tls_ca_cert_file or config.tls_ca_cert_dir})"
                      f": {e}") from None
    ctx.verify_mode = ssl.CERT_REQUIRED  # the client context also checks the host name
    return ctx


class LinkTls:
    """A handshaken (see handshake()) TLS link with the socket methods the link code calls."""

    __slots__ = ("sock", "_obj", "_incoming", "_outgoing", "_raw_out", "_ahead", "_plain", "_eof")

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext, server_hostname: str | None = None) -> None:
        self.sock = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        server_side = server_hostname is None
        self._obj = ctx.wrap_bio(self._incoming, self._outgoing, server_side=server_side,
                                 server_hostname=server_hostname)
        self._raw_out = b""  # encrypted bytes the kernel has not taken yet
        self._ahead = 0  # plaintext at the head of the next send already in _raw_out
        self._plain = bytearray()  # decrypted, not yet read
        self._eof = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def setsockopt(self, *args: Any) -> None:
        self.sock.setsockopt(*args)

    def getpeername(self) -> Any:
        return self.sock.getpeername()

    def close(self) -> None:
        self.sock.close()

    async def wait_readable(self, _sock: object = None) -> None:
        """FrameReceiver's wait before a read: at once while decrypted bytes wait here."""
        if self._plain or self._eof:
            await trio.lowlevel.checkpoint()
        else:
            await trio.lowlevel.wait_readable(self.sock)

    def recv(self, size: int) -> bytes:
        """At most size bytes of plaintext; b"" at the end; BlockingIOError if none yet."""
        if not self._plain:
            self._fill()
        data = bytes(self._plain[:size])
        del self._plain[:size]
        return data

    def recv_into(self, buffer: Any, nbytes: int = 0) -> int:
        if not self._plain:
            self._fill()
        plain = self._plain
        size = min(nbytes or len(buffer), len(plain))
        with memoryview(plain) as view:
            buffer[:size] = view[:size]
        del plain[:size]
        return size

    def _fill(self) -> None:
        """One raw read, decrypted to the last complete record; BlockingIOError if it
        brought no plaintext and the stream has not ended."""
        self._flush_raw()
        if not self._eof:
            try:
                raw = self.sock.recv(RAW_RECV_BYTES)
            except BlockingIOError:
                raw = None
            if raw == b"":
                self._eof = True
            elif raw:
                self._incoming.write(raw)
        obj = self._obj
        while True:
            try:
                data = obj.read(RAW_RECV_BYTES)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # the peer's close_notify
                self._eof = True
                break
            if not data:
                break
            self._plain += data
        if self._outgoing.pending:  # alerts, key updates, session tickets
            self._raw_out += self._outgoing.read()
            self._flush_raw()
        if not self._plain and not self._eof:
            raise BlockingIOError

    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Plaintext taken: only what whole records the kernel took carry (the rest of a
        record waits here and the same bytes, sent again, finish it; server/tls.py)."""
        view = memoryview(data)
        accepted = 0
        if self._raw_out:
            if not self._flush_raw():
                raise BlockingIOError
            accepted, self._ahead = self._ahead, 0
            assert accepted <= len(view), "a TLS link send resumed with less than it had encrypted"
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
        """Complete the TLS handshake within HANDSHAKE_TIMEOUT_S; LinkTlsError if not."""
        sock = self.sock
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT_S):
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
                        raw = sock.recv(RAW_RECV_BYTES)
                    except BlockingIOError:
                        continue
                    if not raw:
                        raise LinkTlsError("the peer closed the link during the TLS handshake")
                    self._incoming.write(raw)
        except trio.TooSlowError:
            raise LinkTlsError(f"no TLS handshake within {HANDSHAKE_TIMEOUT_S:g} s") from None
        except (ssl.SSLError, OSError) as e:
            raise LinkTlsError(f"TLS handshake failed: {getattr(e, 'reason', None) or e}") from None
