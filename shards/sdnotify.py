"""systemd's sd_notify protocol: one datagram to $NOTIFY_SOCKET (Type=notify)."""

from __future__ import annotations

import os
import socket

# The abstract socket `durakv serve`'s supervisor listens on starts so: a process it
# runs can ask it to stop the whole tree (STOPPING=1, as SHUTDOWN does).
SUPERVISOR_SOCKET_PREFIX = "@durakv-notify-"


def supervised() -> bool:
    """Run by `durakv serve` (not by systemd or by hand)."""
    return os.environ.get("NOTIFY_SOCKET", "").startswith(SUPERVISOR_SOCKET_PREFIX)


def notify(message: bytes) -> None:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(message)
