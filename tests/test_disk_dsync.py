"""A group commit's write and its data sync are one pwritev2(RWF_DSYNC) on the plain
os Disk (one system call and one GIL wait fewer per fsync in the commit thread),
while a Disk whose hooks change pwrite, write_all or fdatasync (the tests' fault and
journaling disks) still sees a write and an fdatasync per sync."""

from __future__ import annotations

import os

import pytest

from durakv.log import Disk, Log, read

pytestmark = pytest.mark.skipif(not hasattr(os, "RWF_DSYNC"), reason="pwritev2(RWF_DSYNC) is Linux-only")


def test_plain_disk_writes_and_syncs_in_one_dsync_call(tmp_path, monkeypatch):
    lg = Log.open(tmp_path / "log")
    lease = lg.take_lease("t")
    calls = []
    real_pwritev = os.pwritev
    monkeypatch.setattr(os, "pwritev", lambda fd, bufs, off, flags=0: calls.append(("pwritev", flags))
                        or real_pwritev(fd, bufs, off, flags))
    monkeypatch.setattr(os, "fdatasync", lambda fd: calls.append(("fdatasync", fd)))
    monkeypatch.setattr(os, "pwrite", lambda *a: calls.append(("pwrite", 0)) or 0)
    for n in range(3):
        lg.append([b"record %d" % n], lg.tail_seq, lease)
        assert lg.sync() == n + 1
    assert calls == [("pwritev", os.RWF_DSYNC)] * 3
    monkeypatch.undo()
    lg.close()
    assert [p for _, _, p in read(tmp_path / "log")] == [b"record 0", b"record 1", b"record 2"]


def test_a_disk_with_its_own_fdatasync_sees_every_sync(tmp_path):
    synced = []

    class CountingDisk(Disk):
        def fdatasync(self, fd: int) -> None:
            synced.append(fd)
            super().fdatasync(fd)

    lg = Log.open(tmp_path / "log", disk=CountingDisk())
    lease = lg.take_lease("t")
    before = len(synced)
    for n in range(3):
        lg.append([b"r%d" % n], lg.tail_seq, lease)
        lg.sync()
    assert len(synced) - before == 3
    lg.close()
    assert [p for _, _, p in read(tmp_path / "log")] == [b"r0", b"r1", b"r2"]


def test_a_refused_dsync_write_falls_back_to_write_and_fdatasync(tmp_path, monkeypatch):
    import errno

    import durakv.log.disk as disk_module

    lg = Log.open(tmp_path / "log")
    lease = lg.take_lease("t")
    synced = []
    real_fdatasync = os.fdatasync

    def refuse(fd, bufs, off, flags=0):
        raise OSError(errno.EOPNOTSUPP, "not supported")

    monkeypatch.setattr(os, "pwritev", refuse)
    monkeypatch.setattr(os, "fdatasync", lambda fd: synced.append(fd) or real_fdatasync(fd))
    monkeypatch.setattr(disk_module, "_DSYNC_BROKEN", set())
    lg.append([b"kept"], 0, lease)
    assert lg.sync() == 1 and len(synced) == 1
    lg.append([b"again"], 1, lease)
    assert lg.sync() == 2 and len(synced) == 2
    lg.close()
    assert [p for _, _, p in read(tmp_path / "log")] == [b"kept", b"again"]
