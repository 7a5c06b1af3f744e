"""Redis' protected mode: while `protected-mode` is yes and the default user has
no password, only loopback clients are served; any other gets Redis' DENIED
reply as soon as it connects, and is closed. Checked at accept (after the TLS
handshake on a TLS port), on routers and shard ports alike."""

from __future__ import annotations

import ipaddress
import logging
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from durakv.server.front import Front
    from durakv.server.tls import TlsSocket

logger = logging.getLogger("durakv.router")

# Redis 7.0's text (networking.c, clientAcceptHandler), typo included.
ERR_DENIED = (
    b"-DENIED Redis is running in protected mode because protected mode is enabled and no password is set for "
    b"the default user. In this mode connections are only accepted from the loopback interface. If you want to "
    b"connect from external computers to Redis you may adopt one of the following solutions: 1) Just disable "
    b"protected mode sending the command 'CONFIG SET protected-mode no' from the loopback interface by connecting "
    b"to Redis from the same host the server is running, however MAKE SURE Redis is not publicly accessible from "
    b"internet if you do so. Use CONFIG REWRITE to make this change permanent. 2) Alternatively you can just "
    b"disable the protected mode by editing the Redis configuration file, and setting the protected mode option "
    b"to 'no', and then restarting the server. 3) If you started the server manually just for testing, restart "
    b"it with the '--protected-mode no' option. 4) Setup a an authentication password for the default user. "
    b"NOTE: You only need to do one of the above things in order for the server to start accepting connections "
    b"from the outside.\r\n"
)


def refused(front: Front, sock: socket.socket | TlsSocket, peer: tuple | None = None) -> bool:
    """Whether protected mode refuses this new connection (`peer`: its address as
    accept gave it, if it did); if so the error is sent (best effort, as Redis) and
    the socket closed."""
    values = front.settings.values
    if values["protected-mode"] != "yes" or values["requirepass"]:
        return False
    if peer is None:
        try:
            peer = sock.getpeername()
        except OSError:  # the peer is gone already
            sock.close()
            return True
    host = peer[0]
    if _loopback(host):
        return False
    front.stats_rejected_connections += 1
    logger.info("router: refused %s: protected mode (no password, not a loopback client)", host)
    try:
        sock.send(ERR_DENIED)
    except OSError:
        pass
    sock.close()
    return True


def _loopback(host: str) -> bool:
    if host == "127.0.0.1" or host == "::1":  # the commonest, without parsing (per connection)
        return True
    address = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback
