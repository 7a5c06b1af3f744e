"""The one lock implementation for durakv's directories: flock(LOCK_EX|LOCK_NB) on a
LOCK file that then holds the holder's pid and role ("12345 shard 0").

Used for a shard log (DIR/shard-NNN/log/LOCK: one writer per log), the data dir
(DIR/LOCK: one `durakv serve`, or one offline tool such as restore, import-rdb or
`log truncate`, per data dir) and the snapshotter (DIR/snapshotter/LOCK). The
kernel drops a flock when its holder dies, even by SIGKILL, so a stale LOCK file
never blocks anyone; its text only names the holder while the lock is held.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Iterator

from .errors import LockHeld, LogLocked
from .layout import data_dir_lock_path, shard_log_dirs
from .layout import LOCK_FILE

_MAX_HOLDER_BYTES = 256


def read_holder(fd: int) -> tuple[str, str]:
    """(pid, role) written by the lock's holder ("" if it has not written yet)."""
    text = os.pread(fd, _MAX_HOLDER_BYTES, 0).decode(errors="replace").strip()
    pid, _, role = text.partition(" ")
    return pid, role


def acquire(lock_path: str, role: str, *, what: str = "", error: type[LockHeld] = LockHeld) -> int:
    """Take the exclusive lock on lock_path (created if missing) and record this
    process as its holder. Returns the fd, which holds the lock until closed.
    Raises `error` naming the holder's pid and role if another process (or
    another open of the same file in this process) holds it."""
    assert "\n" not in role, "a lock role is one line"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid, holder_role = read_holder(fd)
        os.close(fd)
        raise error(what or lock_path, pid, holder_role) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {role}\n".encode()[:_MAX_HOLDER_BYTES], 0)
    return fd


def lock_data_dir(data_dir: str, role: str) -> int:
    """DIR/LOCK: held by `durakv serve` for its whole life and by every offline tool
    that rewrites the data dir, so none of them runs under a live server."""
    return acquire(data_dir_lock_path(data_dir), role, what=f"data dir {data_dir}")


def lock_shard_log(log_dir: str, role: str) -> int:
    """DIR/shard-NNN/log/LOCK, the lock a shard's Log holds while it writes."""
    return acquire(os.path.join(log_dir, LOCK_FILE), role, what=f"log directory {log_dir}",
                   error=LogLocked)


@contextlib.contextmanager
def exclusive_data_dir(data_dir: str, role: str, *, shard_logs: bool = True) -> Iterator[None]:
    """Hold DIR/LOCK and (shard_logs=True) every shard log's lock for the block:
    what an offline tool that rewrites the data dir takes, so it refuses while a
    server (supervised, or shards started one by one under systemd) uses any of it.
    shard_logs=False for a tool that opens each Log itself (which locks it)."""
    fds = []
    try:
        if os.path.isdir(data_dir):
            fds.append(lock_data_dir(data_dir, role))
        if shard_logs:
            for log_dir in shard_log_dirs(data_dir):
                fds.append(lock_shard_log(log_dir, role))
        yield
    finally:
        for fd in fds:
            os.close(fd)
