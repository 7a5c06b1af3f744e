"""The log's only path to stable storage, and a journaling variant for power-loss tests.

Every write, fdatasync, file fsync and directory fsync the log does goes through a
`Disk` passed to Log.open() (default: the os module). Tests pass a subclass to fail
syncs, or a `JournalingDisk` that records what each successful sync made durable, so
that `simulate_power_loss()` can cut the files back to exactly that after a kill -9
(whose page cache would otherwise hide a missing fsync).

Journal lines (JSON, appended with one write(2) each, before the sync call returns):
    {"file": PATH, "ino": INODE, "size": BYTES}   after fsync/fdatasync of a file
    {"dir": PATH, "entries": {NAME: INODE, ...}, "files": BOOL}   after fsync of a directory
"files" is true for directories in the journal's own tree (the journal's directory and
below: what this process writes). Outside it (the data dir a shard's directory sits in)
the journal vouches only for which entries a directory fsync made durable, not for the
files there, whose writers are not journaled.
The size and the entries are taken BEFORE the sync call, so they never claim more
than the call covered. The journal itself is not fsync'd: it plays the disk's
memory of what it promised, and a kill -9 keeps the page cache it is written to."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import threading
from dataclasses import dataclass, field

logger = logging.getLogger("durakv.log")

MAX_JOURNAL_LINE_BYTES = 1 << 20
# pwritev2's per-write O_DSYNC (Linux 4.7); errors meaning "not here", after which
# the log writes and fdatasyncs in two calls.
_RWF_DSYNC = getattr(os, "RWF_DSYNC", 0)
_DSYNC_UNSUPPORTED = (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS)
IOV_MAX = 1024  # buffers one pwritev takes (Linux UIO_MAXIOV)


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

    def write_durably(self, fd: int, data: bytes | memoryview, offset: int) -> None:
        """write_all, then fdatasync: `data` is at `offset` on stable storage when this
        returns. The plain os Disk does both in one pwritev2(RWF_DSYNC), which makes
        exactly that write durable as fdatasync would (data, and the size that finds
        it): one system call and, in a commit thread, one wait for the GIL fewer per
        group commit. A subclass that changes pwrite, write_all or fdatasync (a test's
        hooks) gets the two calls, so its hooks see every sync."""
        if _dsync_usable(type(self)):
            try:
                written = os.pwritev(fd, [data], offset, _RWF_DSYNC)
            except OSError as e:
                if e.errno not in _DSYNC_UNSUPPORTED:
                    raise
                _DSYNC_BROKEN.add(type(self))
                logger.warning("log: pwritev2(RWF_DSYNC) refused (%s); writing and fdatasyncing in two calls", e)
            else:
                if written == len(data):
                    return
                data = memoryview(data)[written:]  # a short write: the rest, then a sync
                offset += written
        self.write_all(fd, data, offset)
        self.fdatasync(fd)

    def write_durably_buffers(self, fd: int, buffers: list[bytes], offset: int) -> None:
        """write_durably of the buffers' concatenation. The plain os Disk writes them
        with one pwritev2(RWF_DSYNC), joining nothing (a record holding a 512 MiB value
        is not copied once more to be written); otherwise they are joined."""
        if _dsync_usable(type(self)) and len(buffers) <= IOV_MAX:
            try:
                written = os.pwritev(fd, buffers, offset, _RWF_DSYNC)
            except OSError as e:
                if e.errno not in _DSYNC_UNSUPPORTED:
                    raise
            else:
                size = sum(map(len, buffers))
                if written == size:
                    return
                rest = memoryview(b"".join(buffers))[written:]  # a short write: the rest, then a sync
                self.write_all(fd, rest, offset + written)
                self.fdatasync(fd)
                return
        self.write_durably(fd, b"".join(buffers), offset)

    @property
    def durable_write_in_one_call(self) -> bool:
        """write_durably is one pwritev2(RWF_DSYNC) that the kernel takes: short and
        unhooked, so a caller may run it where a blocked call would stall others."""
        return _dsync_usable(type(self))

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path or ".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            self.fsync(fd)
        finally:
            os.close(fd)

    def makedirs(self, path: str) -> None:
        """Create `path` and its missing ancestors so that they survive a power cut:
        a new directory counts only once its parent is fsync'd (DESIGN invariant 1)."""
        path = os.path.abspath(path)
        if os.path.isdir(path):
            return
        parent = os.path.dirname(path)
        self.makedirs(parent)
        try:
            os.mkdir(path)
        except FileExistsError:
            if not os.path.isdir(path):
                raise
        self.fsync_dir(parent)


OS_DISK = Disk()
_DSYNC_BROKEN: set[type[Disk]] = set()  # Disk classes whose pwritev2(RWF_DSYNC) the kernel refused


def _dsync_usable(cls: type[Disk]) -> bool:
    return (bool(_RWF_DSYNC) and cls.pwrite is Disk.pwrite and cls.write_all is Disk.write_all
            and cls.fdatasync is Disk.fdatasync and cls not in _DSYNC_BROKEN)


class JournalingDisk(Disk):
    """A Disk that journals, after each successful sync, what it made durable."""

    def __init__(self, journal_path: str) -> None:
        self.journal_path = os.path.abspath(journal_path)
        self.root = os.path.dirname(self.journal_path)
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
        owned = path == self.root or path.startswith(self.root + os.sep)
        self._record({"dir": path, "entries": entries, "files": owned})

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


def _read_journal(journal_path: str, sizes: dict[int, int]) -> dict[str, dict]:
    """The last directory record per directory of one journal; file sizes go into `sizes`."""
    dirs: dict[str, dict] = {}
    with open(journal_path, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break  # a line torn by the kill: that sync never returned
            entry = json.loads(raw)
            if "dir" in entry:
                dirs[entry["dir"]] = entry
            else:
                sizes[entry["ino"]] = entry["size"]
    return dirs


def simulate_power_loss(*journal_paths: str) -> PowerLossReport:
    """Cut every file in a journaled directory back to the size its last journaled
    sync made durable (0 if never synced) and remove the entries no directory fsync
    made durable. Then rewrite each journal as a baseline of the state left behind
    (that state is now "the disk"). Run only while no process writes the files.

    Pass the journals of every process that shares a directory (each shard fsyncs
    the data dir when it creates its own directory there): an entry that any of
    their last fsyncs of that directory covered is durable. (A union is right for
    directories whose entries are only ever added, the only kind processes share.)

    A name whose inode changed after the directory's last fsync (a rename over it)
    cannot be rolled back, since the replaced file is gone: it is kept and listed in
    report.replaced_kept.

    File sizes are looked up in the journals that vouch for the file's directory
    only: inode numbers are reused, so another process's sync of a since-deleted
    file with the same number says nothing about this one."""
    assert journal_paths, "simulate_power_loss needs at least one journal"
    own_dirs: dict[str, dict[str, bool]] = {}  # journal: {dir: files}
    dirs: dict[str, dict[str, int]] = {}
    vouchers: dict[str, list[dict[int, int]]] = {}  # dir: the file sizes of each journal vouching for it
    for journal_path in journal_paths:
        sizes: dict[int, int] = {}
        journal_dirs = _read_journal(journal_path, sizes)
        own_dirs[journal_path] = {d: bool(rec.get("files", True)) for d, rec in journal_dirs.items()}
        for dir_path, record in journal_dirs.items():
            dirs.setdefault(dir_path, {}).update(record["entries"])
            if record.get("files", True):
                vouchers.setdefault(dir_path, []).append(sizes)
    report = PowerLossReport()
    journals = {os.path.abspath(p) for p in journal_paths}
    for dir_path, durable in dirs.items():
        if not os.path.isdir(dir_path):
            continue
        for entry in os.scandir(dir_path):
            if entry.path in journals:
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
            if dir_path in vouchers and entry.is_file(follow_symlinks=False):
                before = entry.stat().st_size
                after = min(before, max(sizes.get(ino, 0) for sizes in vouchers[dir_path]))
                if after != before:
                    os.truncate(entry.path, after)
                    report.truncated[entry.path] = (before, after)
    for journal_path, dir_paths in own_dirs.items():
        _write_baseline(journal_path, dir_paths)
    return report


def _write_baseline(journal_path: str, dir_paths: dict[str, bool]) -> None:
    with open(journal_path, "wb") as f:
        for dir_path, files in dir_paths.items():
            if not os.path.isdir(dir_path):
                continue
            entries = {e.name: e.inode() for e in os.scandir(dir_path)}
            record = {"dir": dir_path, "entries": entries, "files": files}
            f.write((json.dumps(record, sort_keys=True) + "\n").encode())
            for e in os.scandir(dir_path) if files else ():
                if e.is_file(follow_symlinks=False):
                    line = {"file": e.path, "ino": e.inode(), "size": e.stat().st_size}
                    f.write((json.dumps(line, sort_keys=True) + "\n").encode())
