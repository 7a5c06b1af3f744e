"""The LEASE file of a log directory (log/FORMAT.md, "Leases and fencing"): the live
lease between the processes of one machine, mmap'd so that the writer's check after
every sync and a follower's poll of the durable tail cost no system call.

It is never fsync'd: after a reboot every process is gone and the manifest's epoch is
the durable floor. Changes of epoch or expiry are compare-and-swaps under flock(LEASE),
held for a few memory accesses; durable_seq is written by the current holder alone."""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import struct
import time
from typing import Iterator

from .interface import LeaseState

LEASE_FILE = "LEASE"
LEASE_BYTES = 64
_EPOCH, _PID, _VALID_UNTIL, _DURABLE, _FENCE, _BOOT = 0, 8, 16, 24, 32, 40
_U64 = struct.Struct("<Q")


def _boot_id() -> int:
    """This boot of the machine: CLOCK_MONOTONIC and pids mean nothing across a reboot."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            return int(f.read().strip().replace(b"-", b"")[:16], 16)
    except (OSError, ValueError):
        return 0


BOOT_ID = _boot_id()


def pid_alive(pid: int) -> bool:
    """False only when `pid` is certainly not a running process (gone, or a zombie
    whose flocks and fds the kernel already released)."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read(512)
    except (FileNotFoundError, ProcessLookupError):   # gone, or ending between the open and the read
        return False
    state = stat[stat.rfind(b")") + 2:][:1]
    return state not in (b"Z", b"X")


def published_durable_seq(log_dir: str) -> int | None:
    """The durable seq a holder of this boot published in `log_dir`'s LEASE, read
    without creating, locking or mapping anything (for readers such as the
    snapshotter). None when no holder of this boot took the lease: LEASE missing,
    never taken, or left from before a reboot (it is never fsync'd, so its value is
    no floor then; every writer of that boot is gone)."""
    try:
        fd = os.open(os.path.join(log_dir, LEASE_FILE), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        while True:
            first = os.pread(fd, LEASE_BYTES, 0)
            if len(first) < LEASE_BYTES:
                return None
            if os.pread(fd, LEASE_BYTES, 0)[_DURABLE:_DURABLE + 8] == first[_DURABLE:_DURABLE + 8]:
                break
    finally:
        os.close(fd)
    if _U64.unpack_from(first, _BOOT)[0] != BOOT_ID or _U64.unpack_from(first, _EPOCH)[0] == 0:
        return None
    return int(_U64.unpack_from(first, _DURABLE)[0])


class LeaseFile:
    """An open, mmap'd LEASE file (created zeroed if missing)."""

    def __init__(self, log_dir: str) -> None:
        self.path = os.path.join(log_dir, LEASE_FILE)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            if os.fstat(fd).st_size < LEASE_BYTES:
                os.ftruncate(fd, LEASE_BYTES)
            self._map = mmap.mmap(fd, LEASE_BYTES)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def _get(self, offset: int) -> int:
        return _U64.unpack_from(self._map, offset)[0]

    def _put(self, offset: int, value: int) -> None:
        # One 8-byte copy: struct.pack_into zeroes the field before it writes it, and a
        # process reading it in between (the writer preempted there) would see 0.
        self._map[offset:offset + 8] = _U64.pack(value)

    @property
    def epoch(self) -> int:
        return self._get(_EPOCH)

    @property
    def holder_pid(self) -> int:
        return self._get(_PID)

    @property
    def valid_until_ns(self) -> int:
        return self._get(_VALID_UNTIL)

    @property
    def fence_seq(self) -> int:
        return self._get(_FENCE)

    def durable_seq(self) -> int:
        """The published durable tail, read until two reads agree (no torn value)."""
        while True:
            first = self._get(_DURABLE)
            if self._get(_DURABLE) == first:
                return first

    def publish_durable(self, seq: int) -> None:
        self._put(_DURABLE, seq)

    def state(self, holder: str = "") -> LeaseState:
        return LeaseState(self.epoch, holder, self.holder_pid, self.valid_until_ns)

    def holder_alive(self) -> bool:
        """The holder may still run: it set the lease in this boot and its pid lives."""
        return self._get(_BOOT) == BOOT_ID and pid_alive(self.holder_pid)

    def expired(self, now_ns: int | None = None) -> bool:
        """The lease has no live holder: it ran out, or its holder process is gone."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        return self.valid_until_ns <= now or not self.holder_alive()

    @contextlib.contextmanager
    def locked(self) -> Iterator["LeaseFile"]:
        """flock(LEASE) for one compare-and-swap."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield self
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def set_holder(self, epoch: int, pid: int, valid_until_ns: int) -> None:
        """Under locked(): a new (or renewed) holder."""
        self._put(_BOOT, BOOT_ID)
        self._put(_VALID_UNTIL, valid_until_ns)
        self._put(_PID, pid)
        self._put(_EPOCH, epoch)

    def set_fence(self, durable_seq: int, fence_seq: int) -> None:
        """Under locked(), by a new holder: the tail it starts from."""
        self._put(_DURABLE, max(durable_seq, self._get(_DURABLE)))
        self._put(_FENCE, fence_seq)

    def close(self) -> None:
        if self._fd >= 0:
            self._map.close()
            os.close(self._fd)
            self._fd = -1
