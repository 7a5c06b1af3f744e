"""TLS on the client ports (Redis' tls-port and tls-* settings), with the
standard library's ssl over memory BIOs.

Client I/O is sans-IO over raw non-blocking sockets read from one epoll set
(server/client.py), so TLS sits at the socket's edge: after the handshake (a
short trio task per connection, bounded by HANDSHAKE_TIMEOUT_S) a `TlsSocket`
stands in for the socket, with the same recv/send/sendmsg a `Client` calls,
encrypting and decrypting through an `ssl.SSLObject`. A plain client never
meets any of this.

- recv reads the raw socket once and decrypts everything that is complete, so
  no plaintext ever waits inside the SSLObject where level-triggered epoll would
  not see it.
- send reports as sent only plaintext whose records the kernel took. When it
  could not take a whole record, the rest of that record's bytes wait here
  (at most WRITE_CHUNK_BYTES of plaintext, encrypted) and send reports the
  chunk as not sent: the client keeps it in its output queue, asks for
  writability and sends the same bytes again, which then only finish the
  record. So the client's output limits and backpressure count TLS output too.
- The context is rebuilt whenever CONFIG SET changes a tls-* setting (Redis'
  certificate reload): connections keep the context they were accepted with.

A few OpenSSL settings Redis makes have no Python API (TLS 1.3 ciphersuites, the
server session cache); they are set through ctypes on the context's SSL_CTX,
and each is read back, so a layout this module does not expect fails loudly.
"""

from __future__ import annotations

import _ssl
import ctypes
import logging
import os
import socket
import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import trio

from durakv.shards.config import Config
from durakv.shards.resp import ReplyError
from durakv.shards.tls_bio import WRITE_CHUNK_BYTES, BioTls

if TYPE_CHECKING:
    from durakv.server.front import Front
    from durakv.server.router_view import RouterView

logger = logging.getLogger("durakv.tls")

HANDSHAKE_TIMEOUT_S = 10.0

# The settings, as redis.conf and CONFIG GET name them; Config holds them as tls_*.
TLS_SETTINGS = (
    "tls-port", "tls-cert-file", "tls-key-file", "tls-key-file-pass", "tls-ca-cert-file", "tls-ca-cert-dir",
    "tls-dh-params-file", "tls-auth-clients", "tls-protocols", "tls-ciphers", "tls-ciphersuites",
    "tls-prefer-server-ciphers", "tls-session-caching", "tls-session-cache-size", "tls-session-cache-timeout",
)
ERR_TLS_UPDATE = b"Unable to update TLS configuration. Check server logs."
_PROTOCOLS = {"tlsv1": ssl.TLSVersion.TLSv1, "tlsv1.1": ssl.TLSVersion.TLSv1_1,
              "tlsv1.2": ssl.TLSVersion.TLSv1_2, "tlsv1.3": ssl.TLSVersion.TLSv1_3}
_AUTH_MODES = {"yes": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "no": ssl.CERT_NONE}


class TlsConfigError(ValueError):
    """A TLS setting that cannot be applied; str() is one line naming it."""


def config_values(config: Config) -> dict[str, str]:
    """The tls-* settings of a Config as CONFIG GET shows them (booleans yes/no)."""
    values = {}
    for name in TLS_SETTINGS:
        value = getattr(config, name.replace("-", "_"))
        values[name] = ("yes" if value else "no") if isinstance(value, bool) else str(value)
    return values


def build_context(values: Mapping[str, str]) -> ssl.SSLContext:
    """A server context from the tls-* settings, as Redis' tlsConfigure builds
    its SSL_CTX; TlsConfigError says which setting is wrong."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    versions = _protocols(values["tls-protocols"])
    ctx.minimum_version, ctx.maximum_version = min(versions), max(versions)
    ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    if values["tls-prefer-server-ciphers"] == "yes":
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    cert, key = values["tls-cert-file"], values["tls-key-file"]
    if not cert:
        raise TlsConfigError("no tls-cert-file configured")
    if not key:
        raise TlsConfigError("no tls-key-file configured")
    try:
        ctx.load_cert_chain(cert, key, password=values["tls-key-file-pass"] or None)
    except (OSError, ssl.SSLError) as e:
        raise TlsConfigError(f"failed to load certificate {cert} or private key {key}: {_why(e)}") from None
    ca_file, ca_dir = values["tls-ca-cert-file"], values["tls-ca-cert-dir"]
    auth = values["tls-auth-clients"]
    if auth != "no" and not ca_file and not ca_dir:
        raise TlsConfigError(f"tls-auth-clients is {auth}, so either tls-ca-cert-file or tls-ca-cert-dir must be "
                             "specified (or set tls-auth-clients no)")
    if ca_file or ca_dir:
        try:
            ctx.load_verify_locations(cafile=ca_file or None, capath=ca_dir or None)
        except (OSError, ssl.SSLError) as e:
            raise TlsConfigError(f"failed to configure CA certificate(s) file/directory "
                                 f"{ca_file or ca_dir}: {_why(e)}") from None
    ctx.verify_mode = _AUTH_MODES[auth]
    if values["tls-dh-params-file"]:
        try:
            ctx.load_dh_params(values["tls-dh-params-file"])
        except (OSError, ssl.SSLError) as e:
            raise TlsConfigError(f"failed to load tls-dh-params-file {values['tls-dh-params-file']}: "
                                 f"{_why(e)}") from None
    if values["tls-ciphers"]:
        try:
            ctx.set_ciphers(values["tls-ciphers"])
        except ssl.SSLError as e:
            raise TlsConfigError(f"failed to configure tls-ciphers {values['tls-ciphers']!r}: {_why(e)}") from None
    if values["tls-ciphersuites"]:
        _openssl.set_ciphersuites(ctx, values["tls-ciphersuites"])
    _openssl.set_session_cache(ctx, values["tls-session-caching"] == "yes",
                               int(values["tls-session-cache-size"]), int(values["tls-session-cache-timeout"]))
    return ctx


def _protocols(text: str) -> list[ssl.TLSVersion]:
    """tls-protocols: words among TLSv1 TLSv1.1 TLSv1.2 TLSv1.3 (any case), one
    space apart; empty means TLSv1.2 and TLSv1.3. The enabled versions span from
    the lowest to the highest named (a hole in the list is not kept)."""
    if not text:
        return [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]
    versions = [_PROTOCOLS.get(word.lower()) for word in text.split(" ")]
    if None in versions:
        raise TlsConfigError(f"invalid tls-protocols {text!r}: use a combination of 'TLSv1', 'TLSv1.1', "
                             "'TLSv1.2' and 'TLSv1.3'")
    return [v for v in versions if v is not None]


def _why(e: Exception) -> str:
    if isinstance(e, ssl.SSLError):
        return getattr(e, "reason", None) or str(e)
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e)


class _OpenSSL:
    """The SSL_CTX calls Python's ssl does not offer, through the libssl the ssl
    module itself is linked with. Each setting is read back and checked."""

    SSL_CTRL_SET_SESS_CACHE_SIZE = 42
    SSL_CTRL_GET_SESS_CACHE_SIZE = 43
    SSL_CTRL_SET_SESS_CACHE_MODE = 44
    SSL_CTRL_GET_SESS_CACHE_MODE = 45
    SSL_SESS_CACHE_OFF = 0
    SSL_SESS_CACHE_SERVER = 2
    SESSION_ID_CONTEXT = b"redis"

    def __init__(self) -> None:
        self._lib: ctypes.CDLL | None = None

    def _libssl(self) -> ctypes.CDLL:
        if self._lib is None:
            lib = ctypes.CDLL(_ssl.__file__)  # dlsym searches the libssl it links too
            lib.SSL_CTX_set_ciphersuites.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            lib.SSL_CTX_set_ciphersuites.restype = ctypes.c_int
            lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
            lib.SSL_CTX_ctrl.restype = ctypes.c_long
            lib.SSL_CTX_set_timeout.argtypes = [ctypes.c_void_p, ctypes.c_long]
            lib.SSL_CTX_set_timeout.restype = ctypes.c_long
            lib.SSL_CTX_get_timeout.argtypes = [ctypes.c_void_p]
            lib.SSL_CTX_get_timeout.restype = ctypes.c_long
            lib.SSL_CTX_set_session_id_context.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint]
            lib.SSL_CTX_set_session_id_context.restype = ctypes.c_int
            self._lib = lib
        return self._lib

    @staticmethod
    def _ctx_pointer(ctx: ssl.SSLContext) -> int:
        """The SSL_CTX* the context wraps: CPython's PySSLContext holds it right
        after the object header."""
        pointer = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
        if not pointer:
            raise RuntimeError("cannot find the SSL_CTX of an ssl.SSLContext")
        return pointer

    def set_ciphersuites(self, ctx: ssl.SSLContext, suites: str) -> None:
        lib = self._libssl()
        if lib.SSL_CTX_set_ciphersuites(self._ctx_pointer(ctx), suites.encode()) != 1:
            raise TlsConfigError(f"failed to configure tls-ciphersuites {suites!r}: no valid TLSv1.3 ciphersuite")
        wanted = set(suites.split(":"))
        got = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.3"}
        if not got <= wanted:
            raise RuntimeError(f"tls-ciphersuites {suites!r} did not take effect: OpenSSL offers {sorted(got)}")

    def set_session_cache(self, ctx: ssl.SSLContext, enabled: bool, size: int, timeout_s: int) -> None:
        """Redis' server-side session cache (tls-session-caching, -cache-size, -cache-timeout)."""
        lib = self._libssl()
        pointer = self._ctx_pointer(ctx)
        mode = self.SSL_SESS_CACHE_SERVER if enabled else self.SSL_SESS_CACHE_OFF
        lib.SSL_CTX_ctrl(pointer, self.SSL_CTRL_SET_SESS_CACHE_MODE, mode, None)
        if enabled:
            lib.SSL_CTX_ctrl(pointer, self.SSL_CTRL_SET_SESS_CACHE_SIZE, size, None)
            lib.SSL_CTX_set_timeout(pointer, timeout_s)
            lib.SSL_CTX_set_session_id_context(pointer, self.SESSION_ID_CONTEXT, len(self.SESSION_ID_CONTEXT))
        if lib.SSL_CTX_ctrl(pointer, self.SSL_CTRL_GET_SESS_CACHE_MODE, 0, None) != mode or (
                enabled and (lib.SSL_CTX_ctrl(pointer, self.SSL_CTRL_GET_SESS_CACHE_SIZE, 0, None) != size
                             or lib.SSL_CTX_get_timeout(pointer) != timeout_s)):
            raise RuntimeError("the TLS session cache settings did not take effect")


_openssl = _OpenSSL()


class TlsSocket(BioTls):
    """A handshaken TLS connection with the socket methods a Client uses (see the
    module docstring for how send keeps the output accounting exact)."""

    __slots__ = ()

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext) -> None:
        super().__init__(sock, ctx)

    def getsockname(self) -> Any:
        return self.sock.getsockname()

    def recv(self, size: int) -> bytes:
        """Plaintext (possibly more than `size`: everything that one raw read
        completed); b"" at the end of the stream; BlockingIOError if none yet."""
        plain, eof = self._pull(True)
        if plain:
            return b"".join(plain)
        if eof:
            return b""
        raise BlockingIOError

    def send(self, data: bytes | memoryview) -> int:
        return self._send(memoryview(data))

    def sendmsg(self, buffers: list) -> int:
        """Sends the leading buffers (joined up to WRITE_CHUNK_BYTES): the same
        list sent again starts with the same bytes, as _send needs."""
        joined = []
        size = 0
        for buffer in buffers:
            joined.append(buffer)
            size += len(buffer)
            if size >= WRITE_CHUNK_BYTES:
                break
        return self._send(memoryview(b"".join(joined)))


def is_tls(sock: object) -> bool:
    return type(sock) is TlsSocket


def check_tls_changes(front: RouterView, changes: list[tuple[str, str]]) -> None:
    """CONFIG SET of tls-* settings: refused, as Redis does, if the context they
    make cannot be built (the reason goes to the log); only checked while TLS is
    in use (tls-port set), as Redis applies them only then."""
    if front.tls is None:
        return
    names = [name for name, _ in changes if name in TLS_SETTINGS]
    if not names:
        return
    values = dict(front.settings.values)
    values.update(changes)
    try:
        build_context(values)
    except TlsConfigError as e:
        logger.warning("tls: CONFIG SET refused: %s. Failed applying new configuration. Possibly related to new %s "
                       "setting. Restoring previous settings.", e, names[0])
        raise ReplyError(b"ERR CONFIG SET failed (possibly related to argument '%s') - %s"
                         % (names[0].encode(), ERR_TLS_UPDATE)) from None


class TlsPort:
    """The TLS side of a router's or shard node's client port: the context (rebuilt
    when a tls-* setting changes) and the handshakes in flight."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = {name: values[name] for name in TLS_SETTINGS}
        self.context = build_context(self._values)
        self.handshakes = 0

    def reconfigure(self, values: Mapping[str, str]) -> None:
        """After CONFIG SET (here, or told by a peer): a changed tls-* setting
        rebuilds the context for new connections. CONFIG SET checked the values
        where it was run; should they fail here, the old context stays."""
        wanted = {name: values[name] for name in TLS_SETTINGS}
        if wanted == self._values:
            return
        try:
            self.context = build_context(wanted)
        except TlsConfigError as e:
            logger.error("tls: keeping the previous TLS configuration: %s", e)
            return
        self._values = wanted
        logger.info("tls: TLS configuration reloaded (pid %d)", os.getpid())

    async def accept(self, front: Front, sock: socket.socket) -> None:
        """Handshake with a new connection, then hand it to `front` as a client."""
        conn = TlsSocket(sock, self.context)
        self.handshakes += 1
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT_S):
                await conn.handshake()
        except (ssl.SSLError, OSError, EOFError, trio.TooSlowError) as e:
            reason = f"timed out after {HANDSHAKE_TIMEOUT_S:.0f} s" if isinstance(e, trio.TooSlowError) else _why(e)
            logger.info("tls: error accepting a client connection from %s: %s", _peer(sock), reason)
            sock.close()
            return
        finally:
            self.handshakes -= 1
        try:
            front.add_tls_client(conn)
        except OSError as e:  # gone already (getpeername fails once the peer reset)
            logger.info("tls: client %s left right after the handshake: %s", _peer(sock), _why(e))
            sock.close()


def _peer(sock: socket.socket) -> str:
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return "?"
    return f"{host}:{port}"
