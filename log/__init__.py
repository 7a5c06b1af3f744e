"""durakv's durable log: per-shard segment files of CRC32C-checksummed,
sequence-numbered records, group commit, recovery to the longest valid prefix,
and a lease (epoch) that fences writers. A pure library: it imports nothing else
from durakv. The on-disk format and recovery rules are in log/FORMAT.md.

Writer API (one process holds a directory, enforced by flock on DIR/LOCK):

    log = Log.open(path, *, segment_size_bytes=64 MiB, max_pending_bytes=2 GiB, holder="",
                   disk=OS_DISK) -> Log
        Every write, fdatasync, fsync and directory fsync goes through `disk`
        (log/disk.py: Disk; JournalingDisk records what each sync made durable so
        simulate_power_loss() can cut the files back to it in tests).
        Creates the directory if missing, locks it with log.lock (second opener:
        LogLocked naming the path and the holder's pid and role, e.g. "shard 0"),
        validates every segment and recovers:
          - a torn tail (invalid records at the end of the last segment, not followed
            by any record of a later write) is truncated; log.recovery.truncated_bytes
            says how many bytes, and a warning is logged (logger "durakv.log");
          - damage before the tail raises LogCorrupt(segment, offset_bytes, reason).
        Afterwards log.tail_seq == log.durable_seq == last valid seq (0 if empty).

    log.take_lease(holder: str) -> Lease
        Durably bumps the manifest epoch; the returned Lease(holder, epoch, valid_until_ns)
        is current until another take_lease() (this Log's, or another process's that
        fenced it). Records carry the epoch.
    log.renew(lease) -> Lease
        Extends valid_until_ns by lease_duration_ms (Log.open's, default 2000);
        LeaseLost once another holder took the log. Log.open(takeover_wait_ms=N) takes
        the log from a live but expired holder (log/FORMAT.md, "Leases and fencing");
        its sync() then raises LeaseLost and nothing it writes is ever read.

    log.append(payloads: Sequence[bytes], after_seq: int, lease: Lease) -> int
        Main thread. Frames the payloads as seqs after_seq+1.. into the pending buffer
        and returns the new tail_seq; writes nothing. Raises SequenceMismatch if
        after_seq != tail_seq, LeaseLost if the lease is not current, RecordTooLarge
        for a payload over MAX_RECORD_BYTES (1 GiB), PendingFull over max_pending_bytes,
        LogClosed once closed. All-or-nothing. Accepted while the log is failed.

    log.sync() -> int
        A thread other than the appender's (a shard's commit thread), one caller at
        a time (a concurrent call raises RuntimeError). Takes all pending records, rolls to a new segment
        first if they would overflow the active one (new file + directory fsync), does
        one write and one os.fdatasync, then advances and returns durable_seq. Safe to
        run while the main thread appends. On OSError the log fails: LogWriteFailed
        (cause chained) now and from every sync/take_lease/drop until a retry works.

    log.retry_failed() -> int
        Where sync() runs. Stores the manifest again; if a write or fdatasync failed,
        cuts the active segment back to its last durable offset (removing it if none)
        and rewrites the failed write's bytes from memory into a fresh segment (new
        file, directory fsync, one write, one fdatasync). Returns durable_seq and the
        log is usable again; raises LogWriteFailed if this attempt fails too.

    log.read(from_seq=1, *, through_seq=None) -> Iterator[(seq, epoch, payload)]
        Records from from_seq through durable_seq (or through_seq if lower).
    log.segments() -> list[SegmentInfo(first_seq, path, sealed)]
    log.drop_segments_through(seq: int) -> list[str]
        Deletes sealed segments whose records are all <= seq; never the active one.
    log.close()  (also a context manager) -- unsynced records are discarded.

    Attributes: path, tail_seq, durable_seq, epoch, recovery (RecoveryReport), failed,
    segment_size_bytes, max_pending_bytes. Stats for INFO: fsync_count,
    last_fsync_latency_us, bytes_written, pending_records (tail_seq - durable_seq),
    size_bytes (all segments), segment_count.

Lock-free functions, usable from any process while a writer runs:

    read(path, from_seq=1, *, through_seq=None) -> Iterator[(seq, epoch, payload)]
        Stops cleanly at the last complete valid record. Without through_seq it can
        return records written but not yet fsync'd: pass a durable seq learned from
        the writer when that matters. RecordsDropped if from_seq was dropped,
        LogCorrupt on damage before the tail.
    verify(path) -> VerifyReport   (.ok, .records, .first_seq, .last_seq,
        .torn_tail_bytes, .torn_tail, .corruption, .segments; str() is a report)
    dump(path, from_seq=1, limit=None, decode=None) -> Iterator[DumpRecord]
        str(record) is one printable line; decode(payload) renders payloads.

Followers (replicas): log/follow.py's Follower(path): durable_seq(), read(from, through),
wait_durable(after_seq, timeout_ms). The seam for other backends: log/interface.py.

Errors all derive from LogError.

The same writer API on etcd (records replicated on a quorum before sync returns,
fenced by a leader key): log/etcd_log.py (EtcdLog), its keys and reads
log/etcd_records.py, its client log/etcd_client.py and its followers (Tail,
EtcdFollower) log/etcd_follower.py; not imported here, so the local log needs no
etcd client.
"""

from .disk import OS_DISK, Disk, JournalingDisk, simulate_power_loss
from .errors import (LeaseLost, LockHeld, LogClosed, LogCorrupt, LogError, LogLocked, LogWriteFailed,
                     PendingFull, RecordsDropped, RecordTooLarge, SequenceMismatch)
from .format import HEADER_BYTES, MAX_RECORD_BYTES
from .reader import DumpRecord, VerifyReport, dump, read, verify
from .writer import (DEFAULT_SEGMENT_SIZE_BYTES, Lease, Log, RecoveryReport, SegmentInfo)

__all__ = [
    "DEFAULT_SEGMENT_SIZE_BYTES", "Disk", "DumpRecord", "JournalingDisk", "OS_DISK", "HEADER_BYTES", "Lease",
    "LeaseLost", "LockHeld", "Log",
    "LogClosed", "LogCorrupt", "LogError", "LogLocked", "LogWriteFailed", "MAX_RECORD_BYTES",
    "PendingFull", "RecordTooLarge", "RecordsDropped", "RecoveryReport", "SegmentInfo",
    "SequenceMismatch", "VerifyReport", "dump", "read", "simulate_power_loss", "verify",
]
