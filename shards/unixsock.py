"""The internal Unix sockets (DIR/run/*.sock, log/layout.py): bind and connect
with paths of any length, and check who is on the other end.

AF_UNIX paths are limited to 107 bytes, and a data dir may be longer. Then the
socket is reached through an O_PATH descriptor of its directory,
`/proc/self/fd/<dirfd>/<name>`, which the kernel resolves like the real path
(no chdir, so it is safe in a threaded process).

The run dir is 0700, so only its owner (and root) can reach a socket in it; the
peer check (SO_PEERCRED) is the second lock: a connection from another uid is
closed before a frame is read, so nothing gets around AUTH through them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import struct
from typing import Iterator

logger = logging.getLogger("durakv.unixsock")

SUN_PATH_MAX_BYTES = 107  # sizeof(sun_path) - 1: the kernel wants room for the NUL
SOCKET_FILE_MODE = 0o600
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


@contextlib.contextmanager
def reachable_path(path: str) -> Iterator[str]:
    """A name for `path` that fits in sun_path, valid inside the block."""
    if len(os.fsencode(path)) <= SUN_PATH_MAX_BYTES:
        yield path
        return
    directory, name = os.path.split(path)
    dir_fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        short = f"/proc/self/fd/{dir_fd}/{name}"
        if len(os.fsencode(short)) > SUN_PATH_MAX_BYTES:
            raise OSError(f"socket name {name!r} is too long for a Unix socket")
        yield short
    finally:
        os.close(dir_fd)


def bind_unix(sock: socket.socket, path: str) -> None:
    """Bind a listening socket at `path`, replacing a stale socket file there.
    The caller must own the name already (a shard holds its log lock), so a file
    left by a dead process is safe to remove; anything but a socket is refused."""
    with reachable_path(path) as name:
        try:
            mode = os.lstat(name).st_mode
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(mode):
                raise OSError(f"{path} exists and is not a socket; remove it")
            os.unlink(name)
        sock.bind(name)
        os.chmod(name, SOCKET_FILE_MODE)


def connect_unix(sock: socket.socket, path: str) -> None:
    with reachable_path(path) as name:
        sock.connect(name)


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process that connected (or listened) on the other end."""
    return _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))


def peer_allowed(sock: socket.socket, what: str, expected_uid: int | None = None) -> bool:
    """True if the peer runs as `expected_uid` (default: this process' effective
    uid); otherwise log a warning naming the peer's pid and uid. The caller
    closes a refused connection without reading from it."""
    if expected_uid is None:
        expected_uid = os.geteuid()
    pid, uid, _gid = peer_credentials(sock)
    if uid == expected_uid:
        return True
    logger.warning("%s: refused a connection from pid %d running as uid %d (only uid %d may connect)",
                what, pid, uid, expected_uid)
    return False
