"""A shard's log on etcd as a reader sees it (log/interface.py's LogFollower): a
replica, the snapshotter, any process. Every key etcd shows is committed on a
quorum, so every record read is durable; the durable tail is the last record key
(or the first retained seq - 1 once all were dropped), and a watch from the
revision of that read is the tail notification."""

from __future__ import annotations

import json
import time
from typing import Iterator

import requests

from .errors import LogError
from .etcd_client import EtcdClient, unb64
from .etcd_log import _ends, _Keys, _header_revision, _kvs, read
from .interface import LeaseState, Record


class EtcdFollower:
    """Reads PREFIX (one shard, e.g. "durakv/shard-000") without a lease."""

    def __init__(self, client: EtcdClient, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._keys = _Keys(prefix.encode())
        self._durable = 0

    def durable_seq(self) -> int:
        """The last record on etcd; never goes back (a record once there is durable)."""
        self._durable = max(self._durable, _ends(self.client, self._keys)[1])
        return self._durable

    def lease(self) -> LeaseState:
        """The leader key's holder and epoch; valid_until_ns from its etcd lease's
        remaining TTL, converted to this machine's CLOCK_MONOTONIC (0: no holder)."""
        kvs = _kvs(self.client.range(self._keys.leader))
        if not kvs:
            epoch_kvs = _kvs(self.client.range(self._keys.epoch))
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
        revision = _header_revision(self.client.range(keys.log_start, keys.log_end, limit=1, keys_only=True))
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
