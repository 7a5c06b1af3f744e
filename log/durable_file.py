"""Durable file replacement, the one implementation (DESIGN invariant 1).

A file that must survive a crash whole (a manifest, cluster.json, a snapshot, a
status file) is written to a temp name, fsync'd, renamed over its final name,
and the directory fsync'd: after a power loss the name holds either the old
file or the new one, never a torn mix. Every step goes through a `Disk`, so a
test's JournalingDisk sees (and a failing Disk can refuse) each sync.
"""

from __future__ import annotations

import os
import threading

from .disk import OS_DISK, Disk

TMP_SUFFIX = ".tmp"


def replace_file(path: str, data: bytes, *, mode: int = 0o644, tmp_path: str | None = None,
                 disk: Disk = OS_DISK) -> None:
    """Durably replace `path` with `data`: write a temp file (PATH.tmp unless
    tmp_path names another, created with `mode`) to the end, fsync it, rename it
    over path, fsync the directory."""
    tmp_path = path + TMP_SUFFIX if tmp_path is None else tmp_path
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        disk.write_all(fd, data, 0)
        disk.fsync(fd)
    finally:
        os.close(fd)
    rename_durably(tmp_path, path, disk=disk)


def create_durably(path: str, data: bytes, *, mode: int = 0o644, disk: Disk = OS_DISK) -> bool:
    """Durably create `path` holding `data` unless the name exists (then False). The
    file is written and fsync'd under a temp name private to this thread, then
    linked into place: link(2) fails if the name exists, so processes racing to
    create the same file (a router and a shard started at once) agree on one."""
    tmp_path = f"{path}{TMP_SUFFIX}.{os.getpid()}.{threading.get_ident()}"
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            disk.write_all(fd, data, 0)
            disk.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp_path, path)
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp_path)
    disk.fsync_dir(os.path.dirname(path) or ".")
    return True


def rename_durably(tmp_path: str, path: str, *, disk: Disk = OS_DISK) -> None:
    """Rename a file that is already written and fsync'd over `path`, then fsync
    the directory so the rename itself survives a power loss. Both names are in
    the same directory."""
    directory = os.path.dirname(path)
    assert os.path.dirname(tmp_path) == directory, "a durable rename stays in one directory"
    os.rename(tmp_path, path)
    disk.fsync_dir(directory or ".")


def fsync_file(path: str, *, disk: Disk = OS_DISK) -> None:
    """fsync a file by name (one written through buffered I/O or copied)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        disk.fsync(fd)
    finally:
        os.close(fd)
