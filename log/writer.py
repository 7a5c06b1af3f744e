"""The single writer of a log directory: recovery on open, leases, group commit.

Threading model: one thread (the shard's trio thread) calls append(), take_lease()
and close(); one other thread at a time (a shard's commit thread) calls sync(); one
more (the shard's release worker) may call drop_segments_through() meanwhile: the
segment list and the manifest it changes are under their own locks.
They share only the pending buffer, swapped under a lock held for a few
assignments, so appending never waits for a write or an fsync.

Every write and sync goes through the Disk given to open() (log/disk.py), the seam
tests use to fail syncs and to record what each sync made durable.

A failed write or sync does not end the log: the failed write's bytes stay in
memory, and retry_failed() cuts the segment back to what its last good sync made
durable (never trusting pages a failed fdatasync may have dropped) and rewrites
them into a fresh segment. Until a retry succeeds, sync() refuses."""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator, NamedTuple, Sequence, cast

from .errors import (LeaseLost, LogClosed, LogCorrupt, LogLocked, LogWriteFailed, PendingFull,
                     RecordTooLarge, SequenceMismatch)
from .format import (MAX_RECORD_BYTES, MAX_WRITE_INDEX, PayloadPieces, Unsealed, encode_records,
                     encode_records_scattered, seal_records, unsealed_bytes)
from .disk import OS_DISK, Disk
from .lease import LeaseFile
from .lock import lock_shard_log
from .manifest import (MANIFEST_NAME, MANIFEST_TMP_NAME, MAX_FENCES, MAX_HOLDER_CHARS, Manifest,
                       list_segments, load_manifest, segment_name, store_manifest)
from .reader import read as read_path
from .scan import WalkState, split_leftovers, walk

logger = logging.getLogger("durakv.log")

DEFAULT_SEGMENT_SIZE_BYTES = 64 * 1024 * 1024
MAX_SEGMENT_SIZE_BYTES = 1 << 40
DEFAULT_MAX_PENDING_BYTES = 2 * MAX_RECORD_BYTES
MAX_PENDING_BYTES_LIMIT = 1 << 36
DEFAULT_LEASE_DURATION_MS = 2000
MAX_LEASE_DURATION_MS = 3_600_000
_FENCE_POLL_S = 0.002   # how often a taker looks at a lease it waits to expire
ZERO_AHEAD_BYTES = 1 << 20   # a preallocating log zeroes this far past its write offset at a time


@dataclass(frozen=True, slots=True)
class Lease:
    """The right to append while `epoch` is the log's current epoch. valid_until_ns
    (CLOCK_MONOTONIC) is when another process may take the lease unless renew()
    extends it: a holder answers reads only before it (log/interface.py)."""
    holder: str
    epoch: int
    _owner: object = field(repr=False, compare=False)
    valid_until_ns: int = 0


class SegmentInfo(NamedTuple):
    first_seq: int
    path: str
    sealed: bool


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What Log.open() found and repaired."""
    records: int
    first_seq: int
    last_seq: int
    truncated_bytes: int
    truncated_segment: str | None
    truncated_offset_bytes: int | None
    truncated_reason: str | None
    removed_segments: tuple[str, ...]
    elapsed_ms: float


def _skipped_rows(retained: list[tuple[int, str]], state: WalkState) -> list[list]:
    """[first_seq, path, size_bytes] of the sealed segments a walk from a later seq skipped
    (walk never skips the last one)."""
    if not state.segments:
        return []
    visited_first = state.segments[0].first_seq
    return [[first, seg_path, os.path.getsize(seg_path)] for first, seg_path in retained if first < visited_first]


def _acquire_lock(path: str, holder: str) -> int:
    return lock_shard_log(path, holder or "log writer")


class Log:
    """A shard's durable log. Create with Log.open(); see the package docstring."""

    def __init__(self, path: str, lock_fd: int, segment_size_bytes: int,
                 max_pending_bytes: int, disk: Disk, lease_file: LeaseFile,
                 lease_duration_ms: int, preallocate: bool = False) -> None:
        self.path = path
        self.preallocate = preallocate
        self._zeroed_to = 0   # the active segment's file size: bytes past _active_size are zeros
        self._lease_file = lease_file
        self.lease_duration_ms = lease_duration_ms
        self._lease_epoch = lease_file.epoch   # the LEASE epoch this Log last saw or set
        self._deposed = ""                     # why another holder fenced this one, once it did
        self._disk = disk
        self.segment_size_bytes = segment_size_bytes
        self.max_pending_bytes = max_pending_bytes
        self._lock_fd = lock_fd
        self._owner = object()
        self._manifest = Manifest()
        self._manifest_lock = threading.Lock()
        self._segments: list[list] = []          # [first_seq, path, size_bytes]; last is active
        self._seg_lock = threading.Lock()
        self._active_fd = -1
        self._active_size = 0
        self._lock = threading.Lock()            # guards the pending buffer swap
        self._pending: list[bytes | Unsealed] = []   # Unsealed: records of buffers, not joined
        self._pending_bytes = 0
        self._pending_copied_bytes = 0               # of _pending's joined chunks (buffered_bytes)
        self._syncing_bytes = 0                      # copies the sync in flight holds (buffered_bytes)
        self._pending_scattered = False          # a chunk of _pending is a list of buffers
        self._pending_last_seq = 0
        self._pending_view: tuple[int, int] = (0, 0)   # (generation, first pending seq or 0)
        self._sync_busy = threading.Lock()
        self._failed_cause: BaseException | None = None
        self._failed_what = ""
        self._unsynced: tuple[bytes, int] | None = None   # a failed write: (bytes, last seq)
        self._closed = False
        self.tail_seq = 0
        self.durable_seq = 0
        self.fsync_count = 0
        self.last_fsync_latency_us = 0
        self.bytes_written = 0
        self.recovery: RecoveryReport | None = None
        # (seq, (segment first seq, offset)): where open() started reading, for read() from there.
        self._opened_at: tuple[int, tuple[int, int]] | None = None

    # ---- opening and recovery ----

    @classmethod
    def open(cls, path: str | os.PathLike, *,
             segment_size_bytes: int = DEFAULT_SEGMENT_SIZE_BYTES,
             max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES, holder: str = "",
             disk: Disk = OS_DISK, lease_duration_ms: int = DEFAULT_LEASE_DURATION_MS,
             takeover_wait_ms: int = 0, read_through_seq: int = 0,
             next_record_at: tuple[int, int] | None = None, preallocate: bool = False) -> "Log":
        """Open (creating if missing) the log at `path`, lock it, and recover it.
        `holder` says who writes (e.g. "shard 0"): a second opener's LogLocked names it.
        Every write and sync goes through `disk` (log/disk.py).

        read_through_seq: the opener already read (and so checked) the records through
        this seq, as a replica being promoted has: recovery walks only the segments from
        the one holding the next seq, so opening costs at most a segment or two, not
        the whole retained log. LogCorrupt if the log ends before it. next_record_at:
        (first seq of its segment, byte offset) where record read_through_seq + 1
        starts, if the opener knows (its follower stands there): that segment is read
        from there, so opening costs what was written since, not a whole segment.

        If another process still holds the log (alive, maybe paused), this raises
        LogLocked, unless takeover_wait_ms > 0: then it waits up to that long for the
        holder's lease to expire and fences it (log/FORMAT.md, "Leases and fencing").

        preallocate: the active segment is written with zeros and fsync'd ahead of the
        records (ZERO_AHEAD_BYTES at a time, up to segment_size_bytes, by the syncing
        thread), so that a sync overwrites space the file already has and commits no
        file-size change (log/FORMAT.md, "Preallocation")."""
        if not 1 <= segment_size_bytes <= MAX_SEGMENT_SIZE_BYTES:
            raise ValueError(f"segment_size_bytes must be in 1..{MAX_SEGMENT_SIZE_BYTES}")
        if not 1 <= max_pending_bytes <= MAX_PENDING_BYTES_LIMIT:
            raise ValueError(f"max_pending_bytes must be in 1..{MAX_PENDING_BYTES_LIMIT}")
        if not 1 <= lease_duration_ms <= MAX_LEASE_DURATION_MS:
            raise ValueError(f"lease_duration_ms must be in 1..{MAX_LEASE_DURATION_MS}")
        if read_through_seq < 0:
            raise ValueError(f"read_through_seq must be >= 0, got {read_through_seq}")
        path = os.path.abspath(os.fspath(path))
        disk.makedirs(path)
        lease_file = LeaseFile(path)
        try:
            lock_fd = _acquire_lock(path, holder)
        except LogLocked:
            if takeover_wait_ms <= 0:
                lease_file.close()
                raise
            lock_fd = -1
        # The lock is free but the lease's holder may live: a holder that fenced its
        # predecessor never got the lock (or its pid was reused). Never truncate under
        # it: fence it once its lease ran out.
        holder_may_live = lease_file.holder_alive() and lease_file.valid_until_ns > 0
        log = cls(path, lock_fd, segment_size_bytes, max_pending_bytes, disk, lease_file,
                  lease_duration_ms, preallocate)
        try:
            if lock_fd >= 0 and not holder_may_live:
                log._recover(read_through_seq, next_record_at)
            else:
                wait_ms = takeover_wait_ms if lock_fd < 0 else max(takeover_wait_ms, 2 * lease_duration_ms)
                log._fence(holder, wait_ms, read_through_seq, next_record_at)
        except BaseException:
            log._release_fds()
            raise
        return log

    def _recover(self, read_through_seq: int, next_record_at: tuple[int, int] | None) -> None:
        started = time.perf_counter()
        manifest = load_manifest(self.path)
        segs = list_segments(self.path)
        if manifest is None:
            if segs:
                raise LogCorrupt(os.path.join(self.path, MANIFEST_NAME), 0,
                                 "manifest missing but segments exist")
            manifest = Manifest()
            store_manifest(self.path, manifest, self._disk)
        tmp_path = os.path.join(self.path, MANIFEST_TMP_NAME)
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
        self._manifest = manifest
        retained, leftovers = split_leftovers(self.path, manifest, segs)
        state = self._walk_after(manifest, retained, read_through_seq, next_record_at, live=False)
        for _, seg_path in leftovers:
            logger.warning("log %s: removing %s, wholly below first seq %d (interrupted drop)",
                           self.path, seg_path, manifest.first_seq)
            os.unlink(seg_path)
        if leftovers:
            self._disk.fsync_dir(self.path)
        torn = state.torn
        if torn is not None:
            self._truncate(torn.segment, torn.offset_bytes)
            logger.warning("log %s: torn tail in %s at offset %d (%s): truncated %d bytes; "
                           "log ends at seq %d", self.path, torn.segment, torn.offset_bytes,
                           torn.reason, torn.dropped_bytes, state.last_seq)
        self._segments = _skipped_rows(retained, state) + [[s.first_seq, s.path, s.size_bytes]
                                                           for s in state.segments]
        if torn is not None:
            self._segments[-1][2] = torn.offset_bytes
        if not self._segments:
            self._active_fd = self._create_segment(manifest.first_seq)
            self._segments.append([manifest.first_seq, os.path.join(
                self.path, segment_name(manifest.first_seq)), 0])
        else:
            self._active_fd = os.open(self._segments[-1][1], os.O_WRONLY)
            self._disk.fdatasync(self._active_fd)   # what survived in the page cache is durable now
        self._active_size = self._segments[-1][2]
        self._zeroed_to = os.fstat(self._active_fd).st_size
        self.tail_seq = self.durable_seq = state.last_seq
        self._pending_last_seq = state.last_seq
        with self._lease_file.locked():   # no other holder lives: what followers may read is ours to say
            self._lease_file.publish_durable(state.last_seq)
        self.recovery = RecoveryReport(
            records=state.records, first_seq=manifest.first_seq, last_seq=state.last_seq,
            truncated_bytes=torn.dropped_bytes if torn else 0,
            truncated_segment=torn.segment if torn else None,
            truncated_offset_bytes=torn.offset_bytes if torn else None,
            truncated_reason=torn.reason if torn else None,
            removed_segments=tuple(p for _, p in leftovers),
            elapsed_ms=(time.perf_counter() - started) * 1000)

    def _fence(self, holder: str, wait_ms: int, read_through_seq: int,
               next_record_at: tuple[int, int] | None) -> None:
        """Take the log from a holder that may still run (log/FORMAT.md, "Leases and
        fencing"): bump the LEASE epoch once its lease expired, read the log to its
        last valid record T without repairing anything, store the fence T+1 in the
        manifest and start segment T+1 in place of any file of that name."""
        started = time.perf_counter()
        lease_file = self._lease_file
        deadline = time.monotonic() + wait_ms / 1000
        while True:
            with lease_file.locked():
                if lease_file.expired():
                    old_pid = lease_file.holder_pid
                    floor = load_manifest(self.path) or Manifest()
                    epoch = max(lease_file.epoch, floor.epoch) + 1
                    lease_file.set_holder(epoch, os.getpid(),
                                          time.monotonic_ns() + self.lease_duration_ms * 1_000_000)
                    break
                left_s = (lease_file.valid_until_ns - time.monotonic_ns()) / 1e9
            if time.monotonic() >= deadline:
                raise LogLocked(f"log directory {self.path}", str(lease_file.holder_pid),
                                f"lease holder, lease valid for {left_s:.3f} s more")
            time.sleep(min(max(left_s, 0.0), _FENCE_POLL_S, max(deadline - time.monotonic(), 0.0)))
        self._lease_epoch = epoch
        # From here the old holder's sync() refuses, and its manifest writes too, so the
        # manifest and the records it wrote before this point are what we read.
        stored = load_manifest(self.path)
        segs = list_segments(self.path)
        if stored is None and segs:
            raise LogCorrupt(os.path.join(self.path, MANIFEST_NAME), 0,
                             "manifest missing but segments exist")
        manifest = stored or Manifest()
        retained, _ = split_leftovers(self.path, manifest, segs)
        state = self._walk_after(manifest, retained, read_through_seq, next_record_at, live=True)
        tail = state.last_seq
        fences = tuple(f for f in manifest.fences if f > manifest.first_seq and f != tail + 1)
        new = dataclasses.replace(manifest, epoch=epoch, holder=holder,
                                  fences=(fences + (tail + 1,))[-MAX_FENCES:])
        with lease_file.locked():
            if lease_file.epoch != epoch:
                raise LeaseLost(f"log {self.path}: epoch {lease_file.epoch} was taken while "
                                f"fencing with epoch {epoch}")
            store_manifest(self.path, new, self._disk)
        self._manifest = new
        seg_path = os.path.join(self.path, segment_name(tail + 1))
        tmp_path = seg_path + ".fence"
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            self._disk.fsync(fd)
            os.rename(tmp_path, seg_path)    # the deposed writer's fd, if any, now writes nowhere
            self._disk.fsync_dir(self.path)
        except BaseException:
            os.close(fd)
            raise
        self._active_fd = fd
        self._segments = (_skipped_rows(retained, state) + [[s.first_seq, s.path, s.valid_end_bytes]
                                                            for s in state.segments if s.first_seq <= tail]
                          + [[tail + 1, seg_path, 0]])
        self._active_size = self._zeroed_to = 0
        self.tail_seq = self.durable_seq = self._pending_last_seq = tail
        with lease_file.locked():
            if lease_file.epoch == epoch:
                lease_file.set_fence(tail, tail + 1)
        logger.warning("log %s: fenced the previous holder (pid %s): epoch %d, log continues "
                       "at seq %d in a new segment", self.path, old_pid or "?",
                       epoch, tail + 1)
        self.recovery = RecoveryReport(
            records=state.records, first_seq=manifest.first_seq, last_seq=tail,
            truncated_bytes=0, truncated_segment=None, truncated_offset_bytes=None,
            truncated_reason=None, removed_segments=(),
            elapsed_ms=(time.perf_counter() - started) * 1000)

    def _walk_after(self, manifest: Manifest, retained: list[tuple[int, str]], read_through_seq: int,
                    next_record_at: tuple[int, int] | None, live: bool) -> WalkState:
        """Validate the log from record read_through_seq + 1 on (all of it if 0); a
        next_record_at that does not lead to that record is reported and not used."""
        state = WalkState(manifest)
        try:
            for _ in walk(self.path, state, retained, from_seq=read_through_seq + 1, live=live,
                          start=next_record_at):
                pass
            if next_record_at is not None:
                self._opened_at = (read_through_seq + 1, next_record_at)
        except LogCorrupt as exc:
            if next_record_at is None:
                raise
            logger.warning("log %s: seq %d is not where its opener read it (segment %d, offset %d: %s); "
                           "reading that segment from its start", self.path, read_through_seq + 1,
                           next_record_at[0], next_record_at[1], exc)
            state = WalkState(manifest)
            for _ in walk(self.path, state, retained, from_seq=read_through_seq + 1, live=live):
                pass
        self._check_read_through(state, read_through_seq)
        return state

    def _check_read_through(self, state: WalkState, read_through_seq: int) -> None:
        if state.last_seq < read_through_seq:
            raise LogCorrupt(self.path, 0, f"the log ends at seq {state.last_seq}, but its opener had "
                             f"already read it through seq {read_through_seq}")

    def _truncate(self, seg_path: str, offset_bytes: int) -> None:
        fd = os.open(seg_path, os.O_WRONLY)
        try:
            os.ftruncate(fd, offset_bytes)
            self._disk.fsync(fd)
        finally:
            os.close(fd)

    def _create_segment(self, first_seq: int) -> int:
        """Create an empty segment; it counts only once the directory is fsync'd."""
        fd = os.open(os.path.join(self.path, segment_name(first_seq)),
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            self._disk.fsync(fd)
            self._disk.fsync_dir(self.path)
        except BaseException:
            os.close(fd)
            raise
        return fd

    # ---- leases ----

    def take_lease(self, holder: str) -> Lease:
        """Durably bump the epoch and return a lease for it; older leases are lost.
        LeaseLost if another process took the log since this Log opened."""
        self._check_usable()
        if not isinstance(holder, str) or len(holder) > MAX_HOLDER_CHARS:
            raise ValueError(f"holder must be a str of at most {MAX_HOLDER_CHARS} chars")
        lease_file = self._lease_file
        with self._manifest_lock, lease_file.locked():
            self._check_not_deposed()
            epoch = max(self._manifest.epoch, lease_file.epoch) + 1
            new = dataclasses.replace(self._manifest, epoch=epoch, holder=holder)
            try:
                store_manifest(self.path, new, self._disk)
            except OSError as exc:
                raise self._fail(exc, "manifest write") from exc
            self._manifest = new
            valid_until_ns = time.monotonic_ns() + self.lease_duration_ms * 1_000_000
            lease_file.set_holder(epoch, os.getpid(), valid_until_ns)
            self._lease_epoch = epoch
            if lease_file.durable_seq() < self.durable_seq:
                lease_file.publish_durable(self.durable_seq)
        return Lease(holder, new.epoch, self._owner, valid_until_ns)

    def renew(self, lease: Lease) -> Lease:
        """Extend the lease by lease_duration_ms from now. LeaseLost if another holder
        took the log (this Log is deposed for good)."""
        self._check_lease(lease)
        started_ns = time.monotonic_ns()
        with self._lease_file.locked():
            self._check_not_deposed()
            valid_until_ns = started_ns + self.lease_duration_ms * 1_000_000
            self._lease_file.set_holder(lease.epoch, os.getpid(), valid_until_ns)
        if self._lock_fd < 0:
            self._try_lock()
        return dataclasses.replace(lease, valid_until_ns=valid_until_ns)

    def _try_lock(self) -> None:
        """A holder that fenced a paused one takes LOCK once that process is gone."""
        try:
            self._lock_fd = _acquire_lock(self.path, self._manifest.holder)
        except LogLocked:
            pass

    def _check_not_deposed(self) -> None:
        """Under the LEASE lock (or where a stale answer only delays): has another
        holder taken the log? Then this Log is deposed for good."""
        if not self._deposed and self._lease_file.epoch != self._lease_epoch:
            self._deposed = (f"log {self.path}: the lease passed to epoch {self._lease_file.epoch} "
                             f"(pid {self._lease_file.holder_pid}); this writer held epoch "
                             f"{self._lease_epoch}")
            logger.error("%s: refusing to acknowledge anything more", self._deposed)
        if self._deposed:
            raise LeaseLost(self._deposed)

    @property
    def deposed(self) -> bool:
        """Another holder fenced this Log (its sync() and appends raise LeaseLost)."""
        return bool(self._deposed)

    @property
    def lease_state(self) -> tuple[int, int, int]:
        """(epoch, holder pid, valid_until_ns) of the LEASE file: who holds the log now."""
        lease_file = self._lease_file
        return lease_file.epoch, lease_file.holder_pid, lease_file.valid_until_ns

    @property
    def epoch(self) -> int:
        return self._manifest.epoch

    def _check_lease(self, lease: Lease) -> None:
        if self._deposed:
            raise LeaseLost(self._deposed)
        if not isinstance(lease, Lease) or lease._owner is not self._owner:
            raise LeaseLost(f"{lease!r} was not issued by this Log of {self.path}")
        if lease.epoch != self._manifest.epoch:
            raise LeaseLost(f"lease epoch {lease.epoch} ({lease.holder!r}) is not current: "
                            f"{self._manifest.holder!r} holds epoch {self._manifest.epoch}")

    # ---- writing ----

    def append(self, payloads: Sequence[bytes | PayloadPieces], after_seq: int, lease: Lease) -> int:
        """Frame `payloads` as seqs after_seq+1.. into the pending buffer and return
        the new tail_seq. Nothing is written or durable until sync(). Accepted while
        the log is failed: the records wait for retry_failed() and the next sync()."""
        if self._closed:
            raise LogClosed(f"log {self.path} is closed")
        self._check_lease(lease)
        if after_seq != self.tail_seq:
            raise SequenceMismatch(after_seq, self.tail_seq)
        count = len(payloads)
        if count == 0:
            return self.tail_seq
        scattered = False
        for payload in payloads:
            if type(payload) is PayloadPieces:
                scattered = True
            elif not isinstance(payload, (bytes, bytearray, memoryview)):
                raise TypeError(f"payloads must be bytes, got {type(payload).__name__}")
            if isinstance(payload, memoryview) and (payload.itemsize != 1
                                                    or not payload.c_contiguous):
                raise TypeError("a memoryview payload must be contiguous bytes")
            if len(payload) > MAX_RECORD_BYTES:
                raise RecordTooLarge(f"record of {len(payload)} bytes exceeds the "
                                     f"{MAX_RECORD_BYTES}-byte limit")
        first_seq = after_seq + 1
        while True:
            view = self._pending_view
            write_first = view[1] or first_seq
            if first_seq - write_first + count - 1 > MAX_WRITE_INDEX:
                raise PendingFull(f"more than {MAX_WRITE_INDEX + 1} records pending; sync first")
            chunk: bytes | Unsealed
            if scattered:
                chunk = encode_records_scattered(payloads, first_seq, lease.epoch, first_seq - write_first)
                chunk_bytes = unsealed_bytes(chunk)
            else:
                chunk = encode_records(cast("Sequence[bytes]", payloads), first_seq, lease.epoch,
                                       first_seq - write_first)
                chunk_bytes = len(chunk)
            with self._lock:
                if self._pending_view != view:    # sync() took the buffer meanwhile
                    continue
                if self._pending_bytes + chunk_bytes > self.max_pending_bytes:
                    raise PendingFull(f"{self._pending_bytes + chunk_bytes} bytes pending would "
                                      f"exceed max_pending_bytes={self.max_pending_bytes}; "
                                      "sync first")
                self._pending.append(chunk)
                self._pending_scattered = self._pending_scattered or scattered
                self._pending_bytes += chunk_bytes
                if not scattered:  # an Unsealed chunk's big values are the keyspace's own buffers
                    self._pending_copied_bytes += chunk_bytes
                self._pending_last_seq = after_seq + count
                self._pending_view = (view[0], write_first)
                break
        self.tail_seq = after_seq + count
        return self.tail_seq

    def sync(self) -> int:
        """Write everything pending with one write and one fdatasync, then advance
        and return durable_seq. One caller at a time: the commit thread, or the shard's
        loop while it has nothing else to run (shards/idle_sync.py)."""
        self._check_usable()
        if not self._sync_busy.acquire(blocking=False):
            raise RuntimeError(f"Log.sync() of {self.path} called while another sync() runs")
        try:
            self._check_usable()
            with self._lock:
                chunks, last_seq = self._pending, self._pending_last_seq
                generation, write_first = self._pending_view
                if not chunks:
                    return self.durable_seq
                scattered = self._pending_scattered
                self._syncing_bytes = self._pending_copied_bytes
                self._pending, self._pending_bytes, self._pending_scattered = [], 0, False
                self._pending_copied_bytes = 0
                self._pending_view = (generation + 1, 0)
            buffers: list[bytes] = []
            if scattered:  # a big value among them: written from its own buffer, never joined
                for chunk in chunks:
                    if isinstance(chunk, list):
                        buffers.extend(seal_records(chunk))  # their CRCs: here, in the commit thread
                    else:
                        buffers.append(chunk)
                size = sum(map(len, buffers))
                data = b""
            else:
                joined = cast("list[bytes]", chunks)  # no chunk is a list of buffers
                data = joined[0] if len(joined) == 1 else b"".join(joined)
                size = len(data)
                if len(joined) > 1:
                    self._syncing_bytes += size  # the joined copy, next to its chunks
            try:
                if self._active_size and self._active_size + size > self.segment_size_bytes:
                    self._check_not_deposed()   # a new holder may own the next segment's name
                    self._roll(write_first)
                offset = self._active_size
                if self.preallocate:
                    self._zero_ahead(offset, size)
                started = time.perf_counter_ns()
                if scattered:
                    self._disk.write_durably_buffers(self._active_fd, buffers, offset)
                else:
                    self._disk.write_durably(self._active_fd, data, offset)
                self._active_size = offset + size
                self.last_fsync_latency_us = (time.perf_counter_ns() - started) // 1000
            except OSError as exc:
                self._unsynced = (b"".join(buffers) if scattered else data, last_seq)
                raise self._fail(exc, "write/fsync") from exc
            # The fence (log/FORMAT.md): checked after the write, so a holder that took
            # the log before this point had this write in what it read, and one that
            # took it after sees an epoch that is not ours here: nothing is released.
            self._check_not_deposed()
            self._lease_file.publish_durable(last_seq)
            with self._seg_lock:
                self._segments[-1][2] = self._active_size
            self.fsync_count += 1
            self.bytes_written += size
            self.durable_seq = last_seq
            return last_seq
        finally:
            self._syncing_bytes = 0
            self._sync_busy.release()

    def _roll(self, first_seq: int) -> None:
        # The segment being sealed loses its unwritten zeros first (a sealed segment is
        # all records), durably, before the next one can exist.
        if os.fstat(self._active_fd).st_size > self._active_size:
            os.ftruncate(self._active_fd, self._active_size)
            self._disk.fsync(self._active_fd)
        fd = self._create_segment(first_seq)
        old_fd = self._active_fd
        with self._seg_lock:
            self._segments.append([first_seq, os.path.join(self.path, segment_name(first_seq)), 0])
            self._active_fd, self._active_size = fd, 0
        self._zeroed_to = 0
        os.close(old_fd)

    def _zero_ahead(self, offset: int, size: int) -> None:
        """Before a write of `size` bytes at `offset`: make sure the file already holds
        that space, as zeros written and fsync'd (unwritten extents of fallocate would
        still commit metadata on their first write), so the write changes no file size.
        A write larger than ZERO_AHEAD_BYTES appends as it is: zeroing it first would
        write it twice."""
        end = offset + size
        if end <= self._zeroed_to or size > ZERO_AHEAD_BYTES:
            return
        target = max(end, min(offset + ZERO_AHEAD_BYTES, self.segment_size_bytes))
        start = max(self._zeroed_to, offset)
        self._disk.write_all(self._active_fd, bytes(target - start), start)
        self._disk.fdatasync(self._active_fd)
        self._zeroed_to = target

    def retry_failed(self) -> int:
        """After a failed write, fsync or manifest write: store the manifest again and,
        if a write failed, cut the active segment back to its last durable offset (or
        remove it if nothing in it was durable) and rewrite the failed write's bytes,
        kept in memory, into a fresh segment with one write and one fdatasync. Returns
        durable_seq; the log is usable again. Raises LogWriteFailed (cause chained) if
        this attempt fails too; the log stays failed and the caller may retry later.
        Runs where sync() runs, never concurrently with it."""
        if self._closed:
            raise LogClosed(f"log {self.path} is closed")
        if not self._sync_busy.acquire(blocking=False):
            raise RuntimeError(f"Log.retry_failed() of {self.path} called while a sync runs")
        try:
            if self._failed_cause is None:
                return self.durable_seq
            try:
                with self._manifest_lock, self._lease_file.locked():  # not beside a drop_segments_through
                    self._check_not_deposed()
                    store_manifest(self.path, self._manifest, self._disk)
                    if self._unsynced is not None:
                        self._rewrite_unsynced()
                        self._lease_file.publish_durable(self.durable_seq)
            except OSError as exc:
                self._failed_cause = exc
                raise self._failed_error() from exc
            logger.warning("log %s: recovered from the failed %s; durable through seq %d",
                           self.path, self._failed_what, self.durable_seq)
            self._failed_cause, self._failed_what = None, ""
            return self.durable_seq
        finally:
            self._sync_busy.release()

    def _rewrite_unsynced(self) -> None:
        assert self._unsynced is not None
        data, last_seq = self._unsynced
        first_seq = self.durable_seq + 1
        if self._active_fd >= 0:
            fd, self._active_fd = self._active_fd, -1
            os.close(fd)
        with self._seg_lock:
            seg_first, seg_path, durable_bytes = self._segments[-1]
            if durable_bytes == 0:
                del self._segments[-1]
        if durable_bytes == 0:
            assert seg_first == first_seq, "a segment with no durable bytes starts the failed write"
            os.unlink(seg_path)
        else:
            self._truncate(seg_path, durable_bytes)
        fresh_path = os.path.join(self.path, segment_name(first_seq))
        if os.path.exists(fresh_path):    # left by a failed roll or retry; never acknowledged
            os.unlink(fresh_path)
        fd = self._create_segment(first_seq)
        with self._seg_lock:
            self._segments.append([first_seq, fresh_path, 0])
            self._active_fd, self._active_size = fd, 0
        self._disk.write_all(fd, data, 0)
        self._active_size = self._zeroed_to = len(data)
        self._disk.fdatasync(fd)
        with self._seg_lock:
            self._segments[-1][2] = len(data)
        logger.warning("log %s: rewrote seqs %d..%d (%d bytes) from memory into %s",
                       self.path, first_seq, last_seq, len(data), fresh_path)
        self._unsynced = None
        self.fsync_count += 1
        self.bytes_written += len(data)
        self.durable_seq = last_seq

    def _fail(self, cause: OSError, what: str) -> LogWriteFailed:
        if self._failed_cause is None:
            self._failed_what = what
        self._failed_cause = cause
        logger.error("log %s: %s failed (%s); sync() refuses until retry_failed() succeeds",
                     self.path, what, cause)
        return self._failed_error()

    def _failed_error(self) -> LogWriteFailed:
        return LogWriteFailed(f"log {self.path}: {self._failed_what} failed: "
                              f"{self._failed_cause}; writes wait for a successful retry")

    def _check_usable(self) -> None:
        if self._closed:
            raise LogClosed(f"log {self.path} is closed")
        if self._deposed:
            raise LeaseLost(self._deposed)
        if self._failed_cause is not None:
            raise self._failed_error() from self._failed_cause

    @property
    def failed(self) -> bool:
        return self._failed_cause is not None

    # ---- reading and segments ----

    def read(self, from_seq: int = 1, *, through_seq: int | None = None
             ) -> Iterator[tuple[int, int, bytes]]:
        """(seq, epoch, payload) from from_seq through durable_seq (or through_seq if lower)."""
        limit = self.durable_seq if through_seq is None else min(through_seq, self.durable_seq)
        opened_at = self._opened_at
        start = opened_at[1] if opened_at is not None and opened_at[0] == from_seq else None
        return read_path(self.path, from_seq, through_seq=limit, start=start)

    def segments(self) -> list[SegmentInfo]:
        with self._seg_lock:
            last = len(self._segments) - 1
            return [SegmentInfo(first, seg_path, i != last)
                    for i, (first, seg_path, _) in enumerate(self._segments)]

    def drop_segments_through(self, seq: int) -> list[str]:
        """Delete the sealed segments whose records all have seq <= `seq` (the
        active segment never). Returns the deleted paths. The manifest's first_seq
        moves first, so a crash mid-drop leaves only leftovers that open() removes."""
        self._check_usable()
        with self._seg_lock:
            segs = [list(s) for s in self._segments]
        victims = 0
        while victims < len(segs) - 1 and segs[victims + 1][0] - 1 <= seq:
            victims += 1
        if victims == 0:
            return []
        with self._manifest_lock, self._lease_file.locked():
            self._check_not_deposed()
            first_seq = segs[victims][0]
            new = dataclasses.replace(self._manifest, first_seq=first_seq,
                                      fences=tuple(f for f in self._manifest.fences if f > first_seq))
            try:
                store_manifest(self.path, new, self._disk)
            except OSError as exc:
                raise self._fail(exc, "manifest write") from exc
            self._manifest = new
        with self._seg_lock:
            del self._segments[:victims]
        dropped = [seg_path for _, seg_path, _ in segs[:victims]]
        for seg_path in dropped:
            os.unlink(seg_path)
        try:
            self._disk.fsync_dir(self.path)
        except OSError as exc:
            raise self._fail(exc, "directory fsync") from exc
        return dropped

    # ---- stats ----

    @property
    def pending_bytes(self) -> int:
        """Bytes appended and not yet taken by a sync: what the next sync writes."""
        return self._pending_bytes

    @property
    def buffered_bytes(self) -> int:
        """Memory this log holds for records not yet durable: joined pending chunks, the
        copies of the sync in flight and a failed write kept for its retry. Like Redis'
        AOF buffer it is not dataset memory (maxmemory leaves it out, shards/evict.py).
        Read from the loop while the commit thread syncs: a moment's figure."""
        unsynced = self._unsynced
        return self._pending_copied_bytes + self._syncing_bytes + (len(unsynced[0]) if unsynced else 0)

    @property
    def durable_write_in_one_call(self) -> bool:
        """A sync is one pwritev2(RWF_DSYNC) system call (log/disk.py): no test hook
        or journal between, so the shard may run it in its loop (shards/idle_sync.py)."""
        return self._disk.durable_write_in_one_call

    @property
    def pending_records(self) -> int:
        """Records appended but not yet durable (pending plus any sync in flight)."""
        return self.tail_seq - self.durable_seq

    @property
    def size_bytes(self) -> int:
        with self._seg_lock:
            return sum(size for _, _, size in self._segments)

    @property
    def segment_count(self) -> int:
        with self._seg_lock:
            return len(self._segments)

    # ---- closing ----

    def close(self) -> None:
        """Wait for a sync in flight, then release files and the lock. Records still
        pending were never durable, so never acknowledged; they are discarded."""
        if self._closed:
            return
        with self._sync_busy:
            if self._pending or self._unsynced is not None:
                logger.warning("log %s: closing with %d unsynced records (discarded)",
                               self.path, self.tail_seq - self.durable_seq)
            self._closed = True
            lease_file = self._lease_file
            with lease_file.locked():
                if (not self._deposed and lease_file.epoch == self._lease_epoch
                        and lease_file.holder_pid == os.getpid()):
                    lease_file.set_holder(self._lease_epoch, 0, 0)   # a successor need not wait
            self._release_fds()

    def _release_fds(self) -> None:
        for fd in (self._active_fd, self._lock_fd):
            if fd >= 0:
                os.close(fd)
        self._active_fd = self._lock_fd = -1
        self._lease_file.close()

    def __enter__(self) -> "Log":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<Log {self.path} tail_seq={self.tail_seq} durable_seq={self.durable_seq} "
                f"epoch={self.epoch}>")
