"""A shard's log on etcd as a reader sees it (log/interface.py's LogFollower): a
replica, the snapshotter, any process. Every key etcd shows is committed on a
quorum, so every record read is durable; the durable tail is the last record key
(or the first retained seq - 1 once all were dropped), and a watch from the
revision of that read is the tail notification. Tail follows every record in order
(what a replica applies)."""

from __future__ import annotations

import json
import logging
import time
from typing import Generator, Iterator

import requests

from .errors import LogCorrupt, LogError
from .etcd_client import EtcdClient, EtcdUnavailable, WatchStream, unb64
from .etcd_records import Keys, decode_record, kvs_of, log_ends, read, revision_of
from .interface import LeaseState, Record

logger = logging.getLogger("durakv.log")

TAIL_RETRY_PAUSE_S = 0.2


class EtcdFollower:
    """Reads PREFIX (one shard, e.g. "durakv/shard-000") without a lease."""

    def __init__(self, client: EtcdClient, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._keys = Keys(prefix.encode())
        self._durable = 0

    def durable_seq(self) -> int:
        """The last record on etcd; never goes back (a record once there is durable)."""
        self._durable = max(self._durable, log_ends(self.client, self._keys)[1])
        return self._durable

    def lease(self) -> LeaseState:
        """The leader key's holder and epoch; valid_until_ns from its etcd lease's
        remaining TTL, converted to this machine's CLOCK_MONOTONIC (0: no holder)."""
        kvs = kvs_of(self.client.range(self._keys.leader))
        if not kvs:
            epoch_kvs = kvs_of(self.client.range(self._keys.epoch))
            return LeaseState(int(unb64(epoch_kvs[0]["value"])) if epoch_kvs else 0, "", 0, 0)
        leader = json.loads(unb64(kvs[0]["value"]))
        sent_ns = time.monotonic_ns()
        ttl_s = int(self.client.call("kv/lease/timetolive", {"ID": int(leader["lease"])}).get("TTL", -1))
        valid_until_ns = sent_ns + ttl_s * 1_000_000_000 if ttl_s > 0 else 0
        return LeaseState(int(leader["epoch"]), str(leader["holder"]), int(leader.get("pid", 0)), valid_until_ns)

    def read(self, from_seq: int, through_seq: int) -> Iterator[Record]:
        return read(self.client, self.prefix, from_seq, through_seq=through_seq)

    def wait_durable(self, after_seq: int, timeout_ms: int) -> int:
        """Block until a record after after_seq is on etcd or timeout_ms passed (a watch
        from the revision of the last read); returns durable_seq()."""
        deadline = time.monotonic() + timeout_ms / 1000
        keys = self._keys
        revision = revision_of(self.client.range(keys.log_start, keys.log_end, limit=1, keys_only=True))
        if self.durable_seq() > after_seq:
            return self._durable
        remaining_s = deadline - time.monotonic()
        if remaining_s <= 0:
            return self._durable
        stream = self.client.watch(keys.record(after_seq + 1), keys.log_end, revision + 1,
                                   read_timeout_s=remaining_s)
        try:
            for result in stream.replies():
                if result.get("events") or result.get("compact_revision") or time.monotonic() >= deadline:
                    break
        except (requests.RequestException, LogError):
            pass  # the read timed out (or the watch ended): answer with what etcd holds now
        finally:
            stream.close()
        return self.durable_seq()

    def close(self) -> None:
        """Nothing held open between calls."""


class Tail:
    """The records from from_seq on, in order, then each new one as it commits
    (a watch from the revision of the initial read). close() from another thread
    ends the iteration."""

    def __init__(self, client: EtcdClient, prefix: str, from_seq: int = 1) -> None:
        self._client = client
        self._keys = Keys(prefix.encode())
        self._prefix = prefix
        self._next = from_seq
        self._stream: WatchStream | None = None
        self._closed = False

    def _read_on(self) -> Generator[tuple[int, int, bytes], None, int]:
        """The records from self._next that etcd holds now, read by range (RecordsDropped
        if they were dropped); returns the revision a watch goes on from. Records
        committed after that revision may repeat what it returned: skipped by seq."""
        keys = self._keys
        reply = self._client.range(keys.log_start, keys.log_end, limit=1, keys_only=True)
        revision = revision_of(reply)
        for record in read(self._client, self._prefix, self._next):
            self._next = record[0] + 1
            yield record
        return revision

    def __iter__(self) -> Iterator[tuple[int, int, bytes]]:
        keys = self._keys
        revision = yield from self._read_on()
        while not self._closed:
            try:
                stream = self._stream = self._client.watch(keys.record(self._next), keys.log_end, revision)
            except EtcdUnavailable as e:  # that member is down: the client moved on to the next
                logger.warning("etcd log %s: watch failed (%s); trying again", self._prefix, e)
                time.sleep(TAIL_RETRY_PAUSE_S)
                continue
            if self._closed:
                stream.close()
                return
            try:
                for result in stream.replies():
                    if result.get("compact_revision"):
                        # The watch's history is gone (a compaction after a drop, or while this
                        # process was paused), not necessarily the records: those a replica's
                        # position still holds are read by range; RecordsDropped if they went too.
                        logger.warning("etcd log %s: history before revision %s was compacted; reading on "
                                       "from seq %d by range", self._prefix, result["compact_revision"],
                                       self._next)
                        revision = yield from self._read_on()
                        break
                    for event in result.get("events", []):
                        if event.get("type", "PUT") != "PUT":
                            continue  # records dropped behind us
                        seq, epoch, payload = decode_record(self._client, keys, event["kv"])
                        revision = int(event["kv"]["mod_revision"]) + 1
                        if seq < self._next:
                            continue
                        if seq != self._next:
                            raise LogCorrupt(self._prefix, 0, f"etcd log tail jumps from seq "
                                             f"{self._next - 1} to {seq}")
                        self._next = seq + 1
                        yield seq, epoch, payload
            except (EtcdUnavailable, OSError, ValueError) as e:
                if self._closed:
                    return
                logger.warning("etcd log %s: watch ended (%s); resuming from revision %d", self._prefix, e,
                               revision)
            finally:
                stream.close()

    def close(self) -> None:
        self._closed = True
        if self._stream is not None:
            self._stream.close()
