"""Durable file replacement, the one implementation (DESIGN invariant 1).

A file that must survive a crash whole (a manifest, cluster.json, a snapshot, a
status file) is written to a temp name, fsync'd, renamed over its final name,
and the directory fsync'd: after a power loss the name holds either the old
file or the new one, never a torn mix. Every step goes through a `Disk`, so a
test's JournalingDisk sees (and a failing Disk can refuse) each sync.
"""

from __future__ import annotations

import os

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
