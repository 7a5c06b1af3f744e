"""The base of every error the snapshotter raises about snapshots, the store and
restores, so a caller (the CLI, the snapshotter loop) can catch the family and
give the operator its one line. The RDB codec's errors are not here: the codec
sits in shards/ (DUMP/RESTORE use it), which never imports snapshotter/."""

from __future__ import annotations


class SnapshotterError(Exception):
    """Base class of the snapshotter's errors; str() is worded for the operator."""
