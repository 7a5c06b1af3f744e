"""Exceptions raised by the log. All derive from LogError so a caller can catch
the family; each names the file, offset or sequence number it is about, because
a log error is only useful if it says where to look."""

from __future__ import annotations


class LogError(Exception):
    """Base class of every error the log raises."""


class LockHeld(LogError):
    """Another process (or another open in this process) holds a directory's lock
    (log.lock). The message names what is locked and the holder's pid and role."""

    def __init__(self, what: str, holder_pid: str, holder_role: str = "") -> None:
        self.what = what
        self.holder_pid = holder_pid
        self.holder_role = holder_role
        if holder_pid:
            who = f"pid {holder_pid}" + (f" ({holder_role})" if holder_role else "")
        else:
            who = "a process that has not yet written its pid"
        super().__init__(f"{what} is locked by {who}; stop that process first")

    def __reduce__(self):  # pickled as itself (a snapshot build child reports its error so)
        return type(self), (self.what, self.holder_pid, self.holder_role)


class LogLocked(LockHeld):
    """Another writer holds a shard log directory's lock."""

    @property
    def path(self) -> str:
        return self.what.removeprefix("log directory ")


class LogCorrupt(LogError):
    """Damage that is not a torn tail: the log cannot be trusted past `offset_bytes`
    of `segment`. Nothing is skipped or repaired automatically."""

    def __init__(self, segment: str, offset_bytes: int, reason: str) -> None:
        self.segment = segment
        self.offset_bytes = offset_bytes
        self.reason = reason
        super().__init__(f"log corrupt: {segment} at offset {offset_bytes}: {reason}")

    def __reduce__(self):
        return type(self), (self.segment, self.offset_bytes, self.reason)


class LeaseLost(LogError):
    """The lease passed to append() is not the log's current lease."""


class SequenceMismatch(LogError):
    """append(after_seq=...) did not name the current tail."""

    def __init__(self, after_seq: int, tail_seq: int) -> None:
        self.after_seq = after_seq
        self.tail_seq = tail_seq
        super().__init__(f"append after seq {after_seq} but the log tail is seq {tail_seq}")

    def __reduce__(self):
        return type(self), (self.after_seq, self.tail_seq)


class LogWriteFailed(LogError):
    """A write or fsync failed. The log is permanently failed: data handed to the
    kernel may or may not be on disk, so nothing after the last successful fsync
    may be acknowledged, and no later append or sync is accepted."""


class RecordTooLarge(LogError, ValueError):
    """A payload exceeds the format's maximum record size."""


class PendingFull(LogError):
    """append() would exceed max_pending_bytes; the caller must sync() first."""


class LogClosed(LogError):
    """The Log was closed."""


class RecordsDropped(LogError):
    """The requested records were dropped (covered by a snapshot) and are gone."""


class EtcdUnavailable(LogError):
    """No etcd endpoint answered within the retry window (log/etcd_client.py). Here, not
    there, so that catching it does not import the etcd client: a tree on local segments
    never loads etcd3gw and requests (~10 MB in every process)."""


class DefragmentTooLate(LogError):
    """A defragmentation request was not sent: the caller's right to defragment (the
    defragmenter lock's lease) was no longer sure to last until etcd received it."""


class EtcdRequestFailed(LogError):
    """etcd refused a request (too large, too many operations, bad argument): retrying cannot help."""
