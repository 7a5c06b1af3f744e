"""TLS on the internal TCP links between nodes (issue 15): a router's link to a shard
primary on another node, and that shard's link port, encrypted and verified against
the deployment's CA when the node has tls-cert-file, tls-key-file and a CA
(tls-ca-cert-file or tls-ca-cert-dir). Both ends present the node's certificate and
require the other's (mutual TLS); the router also checks that the shard's certificate
names the host it connects to (the --advertise host in the leader entry). The HMAC
handshake of shards/link_auth.py then runs inside the TLS session, as before.

A `LinkTls` stands in for the link's socket with the methods the frame code calls
(recv, recv_into, send, fileno, setsockopt), encrypting through an ssl.SSLObject over
memory BIOs, with server/tls.py's client connections (shards/tls_bio.py). The frame receiver waits on the
socket before every read, so decrypted bytes must never wait where the kernel cannot
see them: every raw read decrypts everything complete (read until SSLWantRead) into
`_plain`, and `wait_readable` returns at once while `_plain` holds bytes a smaller
recv_into left (shards/framelink.py FrameReceiver waits through it for a TLS link).
A plain link never meets any of this."""

from __future__ import annotations

import logging
import os
import socket
import ssl
from typing import Any

import trio

from durakv.shards.config import Config
from durakv.shards.tls_bio import BioTls

logger = logging.getLogger("durakv.shard")

HANDSHAKE_TIMEOUT_S = 5.0


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


def link_tls_problem(config: Config) -> str:
    """One line naming the file and the fix when this node's links would run over TLS
    but one of their files cannot be read or parsed ("" otherwise), checked when a
    node starts (server/cli.py): else each shard would fail at its link port and be
    restarted in a loop."""
    if not (config.node_id and links_use_tls(config)):
        return ""
    fix = "fix the path or the file, or remove the tls-* files to run the node's links without TLS"
    files = [("tls-cert-file", config.tls_cert_file), ("tls-key-file", config.tls_key_file),
             ("tls-ca-cert-file", config.tls_ca_cert_file)]
    for setting, path in files:
        if path:
            try:
                with open(path, "rb") as f:
                    f.read(1)
            except OSError as e:
                return f"{setting} {path}: cannot read it ({e.strerror or e}); {fix}"
    if config.tls_ca_cert_dir and not os.path.isdir(config.tls_ca_cert_dir):
        return f"tls-ca-cert-dir {config.tls_ca_cert_dir}: not a readable directory; {fix}"
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for setting, path in (files[0], files[2]):
        if path:
            try:
                probe.load_verify_locations(cafile=path)
            except ssl.SSLError as e:
                return f"{setting} {path}: not a PEM certificate ({e.reason or e}); {fix}"
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(config.tls_cert_file, config.tls_key_file,
                                                                 password=config.tls_key_file_pass or None)
    except ssl.SSLError as e:
        return (f"tls-key-file {config.tls_key_file}: not the private key of tls-cert-file {config.tls_cert_file}, "
                f"or tls-key-file-pass does not open it ({(e.reason or str(e)).lower().replace('_', ' ')}); {fix}")
    return ""


class LinkTls(BioTls):
    """A handshaken (see handshake()) TLS link with the socket methods the link code calls."""

    __slots__ = ("_plain", "_eof")
    raw_recv_bytes = 256 * 1024  # plaintext held at most about this

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext, server_hostname: str | None = None) -> None:
        super().__init__(sock, ctx, server_hostname)
        self._plain = bytearray()  # decrypted, not yet read
        self._eof = False

    def setsockopt(self, *args: Any) -> None:
        self.sock.setsockopt(*args)

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
        pieces, eof = self._pull(not self._eof)
        self._eof = self._eof or eof
        for piece in pieces:
            self._plain += piece
        if not self._plain and not self._eof:
            raise BlockingIOError

    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Plaintext taken: only what whole records the kernel took carry (shards/tls_bio.py)."""
        return self._send(memoryview(data))

    async def handshake(self) -> None:
        """Complete the TLS handshake within HANDSHAKE_TIMEOUT_S; LinkTlsError if not."""
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT_S):
                await super().handshake()
        except trio.TooSlowError:
            raise LinkTlsError(f"no TLS handshake within {HANDSHAKE_TIMEOUT_S:g} s") from None
        except EOFError:
            raise LinkTlsError("the peer closed the link during the TLS handshake") from None
        except (ssl.SSLError, OSError) as e:
            raise LinkTlsError(f"TLS handshake failed: {getattr(e, 'reason', None) or e}") from None
