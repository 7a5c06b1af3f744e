"""systemd's sd_notify protocol: one datagram to $NOTIFY_SOCKET (Type=notify)."""

from __future__ import annotations

import os
import socket


def notify(message: bytes) -> None:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(message)
