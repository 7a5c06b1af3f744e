"""Exceptions raised by the log. All derive from LogError so a caller can catch
the family; each names the file, offset or sequence number it is about, because
a log error is only useful if it says where to look."""

from __future__ import annotations


class LogError(Exception):
    """Base class of every error the log raises."""


class LogLocked(LogError):
    """Another process (or another Log object) already holds the directory's lock."""

    def __init__(self, path: str, holder_pid: str) -> None:
        self.path = path
        self.holder_pid = holder_pid
        who = f" (held by pid {holder_pid})" if holder_pid else ""
        super().__init__(f"log directory {path} is locked by another writer{who}")


class LogCorrupt(LogError):
    """Damage that is not a torn tail: the log cannot be trusted past `offset_bytes`
    of `segment`. Nothing is skipped or repaired automatically."""

    def __init__(self, segment: str, offset_bytes: int, reason: str) -> None:
        self.segment = segment
        self.offset_bytes = offset_bytes
        self.reason = reason
        super().__init__(f"log corrupt: {segment} at offset {offset_bytes}: {reason}")


class LeaseLost(LogError):
    """The lease passed to append() is not the log's current lease."""


class SequenceMismatch(LogError):
    """append(after_seq=...) did not name the current tail."""

    def __init__(self, after_seq: int, tail_seq: int) -> None:
        self.after_seq = after_seq
        self.tail_seq = tail_seq
        super().__init__(f"append after seq {after_seq} but the log tail is seq {tail_seq}")


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
