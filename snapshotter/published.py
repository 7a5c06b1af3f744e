"""The snapshots of shards another node's snapshotter builds (issue 15).

With build locks (snapshotter/build_lock.py) one snapshotter builds each shard; the
others' status.json, and so LASTSAVE and INFO persistence on their nodes, would show
nothing of that shard's snapshots. The store holds the fact (the newest published
manifest), so a snapshotter reads it for every shard it does not build: one listing of
the shard's snapshots per refresh_s, and a manifest only when a newer one appeared."""

from __future__ import annotations

import logging
import time

from durakv.snapshotter.store import RemoteSnapshot, Store, StoreError

logger = logging.getLogger("durakv.snapshotter")

# Between two listings of a shard another node builds (a LIST request on S3).
REFRESH_S = 5.0


class OthersPublished:
    """The newest published snapshot of shards built elsewhere, read at most every refresh_s."""

    def __init__(self, store: Store, refresh_s: float = REFRESH_S) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self._read_at: dict[int, float] = {}  # shard -> monotonic time of its last listing
        self._failing: set[int] = set()  # shards whose last listing failed (logged once)

    def forget(self, shard: int) -> None:
        """List shard again at the next newer() (a request waits for its snapshot)."""
        self._read_at.pop(shard, None)

    def newer(self, shard: int, known_seq: int) -> RemoteSnapshot | None:
        """The shard's newest published snapshot if it is not known_seq and refresh_s
        passed since the last look; else None."""
        now = time.monotonic()
        if now - self._read_at.get(shard, -self.refresh_s) < self.refresh_s:
            return None
        self._read_at[shard] = now
        try:
            newest = self.store.newest_snapshot(shard, known_seq)
        except StoreError as e:
            if shard not in self._failing:
                logger.warning("shard %d: reading the snapshots another node's snapshotter published: %s; "
                               "trying again every %.0f s", shard, e, self.refresh_s)
            self._failing.add(shard)
            return None
        self._failing.discard(shard)
        return newest
