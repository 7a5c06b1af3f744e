"""Where the snapshotter reads a shard's log: the segment files in the data dir
(the embedded default) or the records on etcd (`log-backend = "etcd"`).

The snapshotter never talks to a shard: it needs, per shard, the durable tail it
may cover, the first seq still retained, the records, and a growth measure for
its schedule (bytes of log written, by some key that only grows)."""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Iterator

import durakv.log as wal
from durakv.log.layout import log_dir_of
from durakv.log.manifest import list_segments
from durakv.log.reader import DataEnds
from durakv.snapshotter.local import shard_dir_of
from durakv.snapshotter.errors import SnapshotterError
from durakv.snapshotter.logtail import durable_tail, log_first_seq

if TYPE_CHECKING:
    from durakv.log.etcd_client import EtcdClient
    from durakv.log.etcd_records import RestoreMark
    from durakv.log.etcd_upkeep import Defragmenter

logger = logging.getLogger("durakv.snapshotter")

SIZE_READ_ATTEMPTS = 3


class LocalLogSource:
    """The segment files under DIR/shard-NNN/log."""

    archives = True  # its sealed segments are shipped to the store (snapshotter/tailship.py)

    def __init__(self, data_dir: str) -> None:
        self.data_dir = data_dir
        self._data_ends = DataEnds()

    def _dir(self, shard: int) -> str:
        return log_dir_of(shard_dir_of(self.data_dir, shard))

    def present(self, shard: int) -> bool:
        return os.path.isdir(self._dir(shard))

    def name(self, shard: int) -> str:
        """Where the shard's log is, for messages."""
        return self._dir(shard)

    def durable_tail(self, shard: int) -> int:
        return durable_tail(self._dir(shard))

    def first_seq(self, shard: int) -> int:
        return log_first_seq(self._dir(shard))

    def read(self, shard: int, from_seq: int, through_seq: int) -> Iterator[tuple[int, int, bytes]]:
        return wal.read(self._dir(shard), from_seq, through_seq=through_seq)

    def sizes(self, shard: int) -> dict[int, int]:
        """Bytes per segment (first seq -> size): the growth since a build is the sum of differences."""
        out = {}
        segments = list_segments(self._dir(shard))
        for i, (first, path) in enumerate(segments):
            try:   # the active segment's file may be preallocated: its records end sooner
                out[first] = self._data_ends.of(path) if i == len(segments) - 1 else os.path.getsize(path)
            except FileNotFoundError:
                pass
        return out


class EtcdLogSource:
    """The records under PREFIX/shard-NNN/log/ on etcd. Every record etcd shows is
    durable, so the tail is simply the last key. (The etcd modules load with the first
    EtcdLogSource: a tree on local segments never imports them.)"""

    archives = False  # etcd holds the log, replicated; the store gets snapshots only

    def __init__(self, client: EtcdClient, prefix: str, defragmenter: Defragmenter | None = None) -> None:
        """defragmenter: the snapshotter's rounds of etcd defragmentation (log/etcd_upkeep.py)."""
        from durakv.log import etcd_records

        self.records = etcd_records
        self.client = client
        self.prefix = prefix
        self.defragmenter = defragmenter
        self._lock = threading.Lock()
        self._counted: dict[int, tuple[int, int]] = {}  # shard -> (last seq counted, bytes counted)

    def _prefix(self, shard: int) -> str:
        return self.records.shard_prefix(self.prefix, shard)

    def shards(self) -> int:
        """The shard count the first tree on the prefix recorded; SnapshotterError if none."""
        count = self.records.recorded_shard_count(self.client, self.prefix)
        if not count:
            raise SnapshotterError(self.records.no_logs_message(self.prefix))
        return count

    def present(self, shard: int) -> bool:
        return True

    def name(self, shard: int) -> str:
        return f"etcd:{self._prefix(shard)}"

    def durable_tail(self, shard: int) -> int:
        return self.records.last_seq(self.client, self._prefix(shard))

    def restore_mark(self, shard: int) -> RestoreMark | None:
        return self.records.restore_mark(self.client, self._prefix(shard))

    def first_seq(self, shard: int) -> int:
        return self.records.first_seq(self.client, self._prefix(shard))

    def read(self, shard: int, from_seq: int, through_seq: int) -> Iterator[tuple[int, int, bytes]]:
        return self.records.read(self.client, self._prefix(shard), from_seq, through_seq=through_seq)

    def note_published(self, shard: int, seq: int, epoch: int, store_url: str) -> None:
        """A snapshot through seq is in the shared store: the shard's primary, on any node,
        may drop the records it covers (log/etcd_records.py P/published)."""
        self.records.note_published(self.client, self._prefix(shard), self.records.Published(seq, epoch, store_url))

    def sizes(self, shard: int) -> dict[int, int]:
        """{0: payload bytes of every record counted so far}: a count that only grows
        (records dropped stay counted). Each call reads only the records written since
        the previous one."""
        with self._lock:
            counted_seq, counted_bytes = self._counted.get(shard, (0, 0))
            for _attempt in range(SIZE_READ_ATTEMPTS):
                start = max(counted_seq + 1, self.first_seq(shard))
                try:
                    for seq, _epoch, payload in self.records.read(self.client, self._prefix(shard), start):
                        counted_seq, counted_bytes = seq, counted_bytes + len(payload)
                    break
                except wal.RecordsDropped:  # the shard dropped records meanwhile: start after them
                    continue
            self._counted[shard] = (counted_seq, counted_bytes)
            return {0: counted_bytes}


LogSource = LocalLogSource | EtcdLogSource
