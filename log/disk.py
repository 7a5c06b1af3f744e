"""The log's only path to stable storage, and a journaling variant for power-loss tests.

Every write, fdatasync, file fsync and directory fsync the log does goes through a
`Disk` passed to Log.open() (default: the os module). Tests pass a subclass to fail
syncs, or a `JournalingDisk` that records what each successful sync made durable, so
that `simulate_power_loss()` can cut the files back to exactly that after a kill -9
(whose page cache would otherwise hide a missing fsync).

Journal lines (JSON, appended with one write(2) each, before the sync call returns):
    {"file": PATH, "ino": INODE, "size": BYTES}   after fsync/fdatasync of a file
    {"dir": PATH, "entries": {NAME: INODE, ...}}   after fsync of a directory
The size and the entries are taken BEFORE the sync call, so they never claim more
than the call covered. The journal itself is not fsync'd: it plays the disk's
memory of what it promised, and a kill -9 keeps the page cache it is written to."""

from __future__ import annotations

import json
import os
import shutil
import threading
from dataclasses import dataclass, field

MAX_JOURNAL_LINE_BYTES = 1 << 20


class Disk:
    """Pass-through to the os module."""

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        return os.pwrite(fd, data, offset)

    def write_all(self, fd: int, data: bytes | memoryview, offset: int) -> None:
        """pwrite until all of `data` is at `offset` (a regular file takes it in one)."""
        view = memoryview(data)
        while view:
            written = self.pwrite(fd, view, offset)
            if written <= 0:
                raise OSError(f"pwrite wrote {written} bytes at offset {offset}")
            view = view[written:]
            offset += written

    def fdatasync(self, fd: int) -> None:
        os.fdatasync(fd)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path or ".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            self.fsync(fd)
        finally:
            os.close(fd)


OS_DISK = Disk()


class JournalingDisk(Disk):
    """A Disk that journals, after each successful sync, what it made durable."""

    def __init__(self, journal_path: str) -> None:
        self.journal_path = os.path.abspath(journal_path)
        self._lock = threading.Lock()
        self._fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _record(self, entry: dict) -> None:
        line = (json.dumps(entry, sort_keys=True) + "\n").encode()
        if len(line) > MAX_JOURNAL_LINE_BYTES:  # a directory's entries: as many as the disk holds
            raise OSError(f"durability journal {self.journal_path}: a line of {len(line)} bytes is over "
                          f"{MAX_JOURNAL_LINE_BYTES}")
        with self._lock:
            written = os.write(self._fd, line)
        if written != len(line):
            raise OSError(f"durability journal {self.journal_path}: short write")

    def _sync_file(self, fd: int, sync) -> None:
        st = os.fstat(fd)
        path = os.readlink(f"/proc/self/fd/{fd}")
        sync(fd)
        self._record({"file": path, "ino": st.st_ino, "size": st.st_size})

    def fdatasync(self, fd: int) -> None:
        self._sync_file(fd, os.fdatasync)

    def fsync(self, fd: int) -> None:
        self._sync_file(fd, os.fsync)

    def fsync_dir(self, path: str) -> None:
        path = os.path.abspath(path)
        entries = {entry.name: entry.inode() for entry in os.scandir(path)}
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self._record({"dir": path, "entries": entries})

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@dataclass
class PowerLossReport:
    """What simulate_power_loss() changed."""
    truncated: dict[str, tuple[int, int]] = field(default_factory=dict)  # path: (before, after)
    removed: list[str] = field(default_factory=list)
    replaced_kept: list[str] = field(default_factory=list)  # renamed over after the last dir fsync


def simulate_power_loss(journal_path: str) -> PowerLossReport:
    """Cut every file in a journaled directory back to the size its last journaled
    sync made durable (0 if never synced) and remove the entries no directory fsync
    made durable. Then rewrite the journal as a baseline of the state left behind
    (that state is now "the disk"). Run only while no process writes the files.

    A name whose inode changed after the directory's last fsync (a rename over it)
    cannot be rolled back, since the replaced file is gone: it is kept and listed in
    report.replaced_kept."""
    sizes: dict[int, int] = {}
    dirs: dict[str, dict[str, int]] = {}
    with open(journal_path, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break  # a line torn by the kill: that sync never returned
            entry = json.loads(raw)
            if "dir" in entry:
                dirs[entry["dir"]] = entry["entries"]
            else:
                sizes[entry["ino"]] = entry["size"]
    report = PowerLossReport()
    journal = os.path.abspath(journal_path)
    for dir_path, durable in dirs.items():
        if not os.path.isdir(dir_path):
            continue
        for entry in os.scandir(dir_path):
            if entry.path == journal:
                continue
            ino = durable.get(entry.name)
            if ino is None:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                report.removed.append(entry.path)
                continue
            if ino != entry.inode():
                report.replaced_kept.append(entry.path)
                continue
            if entry.is_file(follow_symlinks=False):
                before = entry.stat().st_size
                after = min(before, sizes.get(ino, 0))
                if after != before:
                    os.truncate(entry.path, after)
                    report.truncated[entry.path] = (before, after)
    with open(journal_path, "wb") as f:
        for dir_path in dirs:
            if not os.path.isdir(dir_path):
                continue
            entries = {e.name: e.inode() for e in os.scandir(dir_path)}
            f.write((json.dumps({"dir": dir_path, "entries": entries}, sort_keys=True) + "\n").encode())
            for e in os.scandir(dir_path):
                if e.is_file(follow_symlinks=False):
                    line = {"file": e.path, "ino": e.inode(), "size": e.stat().st_size}
                    f.write((json.dumps(line, sort_keys=True) + "\n").encode())
    return report
