"""Each shard's out-of-memory state (over its share of maxmemory with nothing it
may evict: Keyspace.oom, shards/evict.py) as one byte of DIR/run/oom, which the
shard writes when it changes and routers read: Redis refuses a command queued in
MULTI with its OOM error while out of memory, and a router queues MULTI without
asking the shard. The flag is as of the shard's last batch, as a shard's own
check is."""

from __future__ import annotations

import mmap
import os

from durakv.log.layout import ensure_run_dir, oom_flags_path
from durakv.shards.config import LIMITS

FILE_BYTES = int(LIMITS["shards"][1])


class OomFlags:
    """The flags of every shard, mapped on first use."""

    def __init__(self, data_dir: str) -> None:
        self.data_dir = data_dir
        self._flags: memoryview | None = None

    def _open(self) -> memoryview:
        if self._flags is None:
            ensure_run_dir(self.data_dir)
            fd = os.open(oom_flags_path(self.data_dir), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                if os.fstat(fd).st_size < FILE_BYTES:
                    os.ftruncate(fd, FILE_BYTES)
                self._flags = memoryview(mmap.mmap(fd, FILE_BYTES))
            finally:
                os.close(fd)
        return self._flags

    def set(self, shard: int, oom: bool) -> None:
        self._open()[shard] = 1 if oom else 0

    def oom(self, shard: int) -> bool:
        return bool(self._open()[shard])

    def any_oom(self, shards: int) -> bool:
        return any(self._open()[:shards])
