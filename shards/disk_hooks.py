"""The test hooks of a shard's disk (shards/config.py test-*): they act through the
Log's Disk seam (log/disk.py), never by patching the os module, so they touch only
this shard's log and only once serving has started (recovery at open is unhooked).

    test-fsync-delay-ms     each segment fdatasync first sleeps this long
    test-fsync-gate-path    each segment fdatasync waits until this file exists
    test-fsync-fail-path    each segment fdatasync fails with EIO while this file exists
    test-durability-journal journal what each sync made durable (power-loss tests)
"""

from __future__ import annotations

import errno
import os
import time

from durakv.log import OS_DISK, Disk, JournalingDisk
from durakv.log.layout import durability_journal_path
from durakv.shards.config import Config

TEST_GATE_MAX_WAIT_S = 60.0
GATE_POLL_S = 0.01


class HookedDisk(Disk):
    """Delays, gates or fails segment fdatasyncs of an inner Disk once armed."""

    def __init__(self, inner: Disk, config: Config) -> None:
        self.inner = inner
        self.delay_ms = config.test_fsync_delay_ms
        self.gate_path = config.test_fsync_gate_path
        self.fail_path = config.test_fsync_fail_path
        self.armed = False  # set once the shard serves: recovery and the lease run unhooked

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        return self.inner.pwrite(fd, data, offset)

    def fsync(self, fd: int) -> None:
        self.inner.fsync(fd)

    def fsync_dir(self, path: str) -> None:
        self.inner.fsync_dir(path)

    def fdatasync(self, fd: int) -> None:
        if self.armed:
            if self.delay_ms:
                time.sleep(self.delay_ms / 1000)
            if self.gate_path:
                deadline = time.monotonic() + TEST_GATE_MAX_WAIT_S
                while not os.path.exists(self.gate_path) and time.monotonic() < deadline:
                    time.sleep(GATE_POLL_S)
            if self.fail_path and os.path.exists(self.fail_path):
                raise OSError(errno.EIO, "Input/output error (injected by test-fsync-fail-path)")
        self.inner.fdatasync(fd)


def shard_disk(config: Config, shard: int) -> Disk:
    """The Disk a shard's log uses: the os module unless a test hook is configured."""
    disk: Disk = OS_DISK
    if config.test_durability_journal:
        disk = JournalingDisk(durability_journal_path(config.data_dir, shard))
    if config.test_fsync_delay_ms or config.test_fsync_gate_path or config.test_fsync_fail_path:
        disk = HookedDisk(disk, config)
    return disk
