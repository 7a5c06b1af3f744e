"""A SAVE or BGSAVE on a node whose snapshotter does not build every shard (issue 15).

With build locks (snapshotter/build_lock.py) one node's snapshotter builds a shard; a
snapshot request on another node used to be served at once for those shards, with no
snapshot taken. Now the asking snapshotter notes each such shard's durable log tail,
asks the lock holder for a snapshot through it (an etcd request key the holder reads
with its locks), and serves the request once the store shows a published snapshot of
every shard at or past its tail, or fails the shards still short after timeout_s."""

from __future__ import annotations

import logging
import os
import time

logger = logging.getLogger("durakv.snapshotter")

# How long a request waits for other nodes' snapshots (SAVE itself gives up at 10 min);
# tests shorten it (tests/test_etcd_save_changes.py).
ASKED_TIMEOUT_S = float(os.environ.get("DURAKV_TEST_ASKED_TIMEOUT_S", "300"))


class AskedElsewhere:
    """The one request being waited for: shard -> the seq a published snapshot must reach."""

    def __init__(self, timeout_s: float = ASKED_TIMEOUT_S) -> None:
        assert timeout_s > 0
        self.timeout_s = timeout_s
        self.request = ""
        self.targets: dict[int, int] = {}
        self._deadline = 0.0

    def start(self, request: str, targets: dict[int, int]) -> None:
        if self.targets:
            logger.info("snapshot request %s replaces %s, which still waited for shards %s", request,
                        self.request, sorted(self.targets))
        self.request, self.targets = request, dict(targets)
        self._deadline = time.monotonic() + self.timeout_s

    def covered(self, shard: int, published_seq: int) -> None:
        if self.targets.get(shard, published_seq + 1) <= published_seq:
            del self.targets[shard]

    def late(self) -> dict[int, int]:
        """The shards still short once the deadline passed (then forgotten), else {}."""
        if not self.targets or time.monotonic() < self._deadline:
            return {}
        late, self.targets = self.targets, {}
        return late
