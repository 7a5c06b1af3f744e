"""maxmemory for one shard: how much memory it uses, and eviction by Redis'
policies when that passes its share of the limit.

**What is measured.** A shard's *used memory* is its resident size when it
started (an empty Python process with durakv imported; INFO's
`used_memory_startup`) plus its heap growth since, estimated cheaply as

    (bytes glibc malloc has in use now - at start)             mallinfo2()
  + (pymalloc blocks in use now - at start) * bytes per block   sys.getallocatedblocks()

Objects of up to 512 bytes live in pymalloc's arenas, whose blocks are counted but
not sized; the bytes per block are the average over the objects of a few random
keys (their keys, string values and some container elements, rounded up to
pymalloc's size classes), as most blocks of a shard are these. (Calibrating it
from RSS growth was tried: after frees, RSS growth has little to do with blocks.)
Unlike RSS, this estimate falls when keys are evicted or deleted, and the memory
they freed is reused before RSS grows again. As Redis leaves its AOF buffer and
replicas' output buffers out (freeMemoryGetNotCountedMemory), the comparison with
the share leaves out what the log holds for records not yet durable
(`ShardLog.buffered_bytes`, INFO `mem_not_counted_for_evict`): up to a pipeline's
records, twice while a sync joins them, which a slow fsync keeps alive and which
evicting keys cannot free. Counting
blocks walks pymalloc's pools (about 0.1 ms per GB of heap), so the full figure is
taken at the shard's `hz`; in between, a batch adds any RSS growth since that
sample (one pread of /proc/self/statm, about 1 us) and subtracts the estimated
size (MEMORY USAGE's) of what it evicted.

**The limit.** `maxmemory` is a total for the whole tree's data: each shard gets
`maxmemory / shards` (INFO `maxmemory_per_shard`) and compares its heap growth
since start (used memory - startup) with it, so the ~35 MB an empty shard process
needs, and the routers, supervisor and snapshotter, are outside the budget.

**Eviction.** As Redis' performEvictions: before a batch runs (and at `hz`), while
over the share, sample `maxmemory-samples` keys (all keys, or those with a TTL for
volatile-*), keep the best candidates in a pool of 16, evict the best: the longest
idle (LRU), the least frequently used (LFU), the soonest to expire (TTL), or a
random one. An eviction is a `DEL` effect in the shard's log (replay, snapshots
and replicas see it), an `evicted` keyspace event and INFO `evicted_keys`. When
nothing can be evicted (noeviction, or no candidate) the keyspace's `oom` flag
makes commands flagged denyoom answer Redis' OOM error.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import logging
import os
import random
import sys
import time
from typing import Any, Callable

from durakv.shards import notify
from durakv.shards.access import LFU_COUNTER_MAX, Lfu, idle_ms, lru_clock
from durakv.shards.keyspace import Keyspace, now_ms
from durakv.shards.resp import fixed_error
from durakv.shards.t_memory import DEFAULT_SAMPLES, estimate_bytes

logger = logging.getLogger("durakv.shard")

OOM_MESSAGE = b"OOM command not allowed when used memory > 'maxmemory'."
ERR_OOM = fixed_error(OOM_MESSAGE)
EXECABORT_OOM = b"EXECABORT Transaction discarded because of: " + OOM_MESSAGE

POLICIES = ("volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl", "allkeys-lru",
            "allkeys-lfu", "allkeys-random", "noeviction")
EVICTION_POOL_SIZE = 16  # Redis' EVPOOL_SIZE
EVICT_KEYS_PER_CALL_MAX = 10_000  # then the batch runs; the next one evicts more
SAMPLE_TRIES_PER_KEY = 8  # random slots (or expiry heap entries) tried per wanted sample
DEFAULT_BYTES_PER_BLOCK = 96  # before any key was sized (strings of ~100 B: 64 and 144 B blocks)
MIN_BYTES_PER_BLOCK, MAX_BYTES_PER_BLOCK = 16, 512  # pymalloc's block sizes
BLOCK_SAMPLE_KEYS = 32  # keys whose objects size the average pymalloc block, per sample
BLOCK_SAMPLE_ELEMENTS = 8  # elements looked at per container value
PYMALLOC_MAX_BYTES = 512  # larger objects come from malloc (and mallinfo2 counts them)
PYMALLOC_ALIGNMENT = 16
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
OOM_LOG_INTERVAL_S = 10.0  # at most one "over the share, nothing to evict" line per this


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _mallinfo2():
    """glibc's mallinfo2 (2.33+), or None where it is missing (then malloc's
    bytes count as zero and pymalloc's blocks carry the whole estimate)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        function = libc.mallinfo2
    except (OSError, AttributeError):
        logger.warning("mallinfo2 not available: used_memory counts pymalloc blocks only")
        return None
    function.restype = _MallInfo2
    function.argtypes = []
    return function


_MALLINFO2 = _mallinfo2()


def malloc_bytes() -> int:
    """Bytes glibc malloc has handed out and not had back (incl. its mmapped chunks)."""
    if _MALLINFO2 is None:
        return 0
    info = _MALLINFO2()
    return info.uordblks + info.hblkhd


class HeapGauge:
    """A process's used memory (see the module docstring), with its peak."""

    def __init__(self) -> None:
        self._statm = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
        self.startup_bytes = self.rss()
        self._base_blocks = sys.getallocatedblocks()
        self._base_malloc = malloc_bytes()
        self.bytes_per_block = DEFAULT_BYTES_PER_BLOCK
        self.sampled_rss = self.startup_bytes
        self.growth_bytes = 0  # heap growth since start, as of the last sample
        self.not_counted_bytes = 0  # of growth_bytes, what maxmemory leaves out (the log's buffers)
        self.freed_bytes = 0  # estimated size of what was evicted since the last sample
        self.peak_bytes = self.startup_bytes

    def rss(self) -> int:
        """Anonymous resident bytes (resident - shared: what the heap occupies, not
        the pages of files and libraries)."""
        fields = os.pread(self._statm, 128, 0).split()
        return (int(fields[1]) - int(fields[2])) * PAGE_BYTES

    def sample(self, block_bytes: int = 0, not_counted_bytes: int = 0) -> int:
        """Measure afresh (about 0.1 ms per GB of heap), with the average pymalloc
        block size if known (block_bytes) and what of the heap maxmemory leaves out,
        taken at the same moment; returns used memory."""
        if block_bytes:
            self.bytes_per_block = min(max(block_bytes, MIN_BYTES_PER_BLOCK), MAX_BYTES_PER_BLOCK)
        rss = self.rss()
        blocks = sys.getallocatedblocks() - self._base_blocks
        malloc = malloc_bytes() - self._base_malloc
        self.sampled_rss = rss
        self.growth_bytes = max(malloc + blocks * self.bytes_per_block, 0)
        self.not_counted_bytes = min(not_counted_bytes, self.growth_bytes)
        self.freed_bytes = 0
        return self.used_bytes()

    def growth_now(self) -> int:
        """Heap growth since start (cheap): the last sample, plus RSS grown since
        it, less what was evicted since it."""
        return self.growth_bytes + max(self.rss() - self.sampled_rss, 0) - self.freed_bytes

    def freed(self, size_bytes: int) -> None:
        self.freed_bytes += size_bytes

    def used_bytes(self) -> int:
        used = self.startup_bytes + self.growth_bytes
        if used > self.peak_bytes:
            self.peak_bytes = used
        return used


def _score(entry: tuple[int, bytes]) -> int:
    return entry[0]


def _block_bytes(size: int) -> int:
    """The pymalloc block an object of `size` bytes takes (0: malloc's, not a block)."""
    if size > PYMALLOC_MAX_BYTES:
        return 0
    return -(-size // PYMALLOC_ALIGNMENT) * PYMALLOC_ALIGNMENT


def average_block_bytes(db: Keyspace, keys: list[bytes]) -> int:
    """The average pymalloc block of the objects the given keys hold (the key, a
    string value, or a few elements of a container), rounded up to pymalloc's
    size classes: most of a shard's blocks are these; 0 when nothing was sized."""
    total = count = 0
    getsizeof = sys.getsizeof
    for key in keys:
        value = db.data.get(key)
        if value is None:
            continue
        parts: list[object] = [key, value]
        if not isinstance(value, (bytes, bytearray)):
            items: Any = value.items() if isinstance(value, dict) else value
            try:
                for n, item in enumerate(items):
                    if n == BLOCK_SAMPLE_ELEMENTS:
                        break
                    parts.extend(item if isinstance(item, tuple) else (item,))
            except TypeError:  # not iterable (a stream, an HLL): its own size only
                pass
        for part in parts:
            block = _block_bytes(getsizeof(part))
            if block:
                total += block
                count += 1
    return total // count if count else 0


class MemoryLimit:
    """One shard's maxmemory: its share, policy and eviction pool."""

    def __init__(self, shard_count: int, slot_range: tuple[int, int],
                 not_counted_bytes: Callable[[], int] = lambda: 0) -> None:
        """not_counted_bytes: what of the heap the limit leaves out right now (the log's buffers)."""
        assert shard_count >= 1, "a shard count below one"
        self.shard_count = shard_count
        self.slot_range = slot_range
        self.not_counted_bytes = not_counted_bytes
        self.gauge = HeapGauge()
        self.oom_logged_at = 0.0  # time.monotonic() of the last "nothing to evict" line
        self.maxmemory_bytes = 0
        self.share_bytes = 0
        self.policy = "noeviction"
        self.samples = DEFAULT_SAMPLES
        self.pool: list[tuple[int, bytes]] = []  # (score, key), best (highest score) last

    def configure(self, maxmemory_bytes: int, policy: str, samples: int) -> None:
        assert policy in POLICIES, f"unknown maxmemory-policy {policy!r}"
        self.maxmemory_bytes = maxmemory_bytes
        self.share_bytes = maxmemory_bytes // self.shard_count if maxmemory_bytes else 0
        if maxmemory_bytes and not self.share_bytes:
            self.share_bytes = 1  # maxmemory below the shard count: every shard is over
        self.policy = policy
        self.samples = samples
        self.pool.clear()

    def sample(self, db: Keyspace) -> int:
        """Measure afresh, the average block sized from a sample of the keys."""
        block_bytes = average_block_bytes(db, self._sample(db, BLOCK_SAMPLE_KEYS, False))
        return self.gauge.sample(block_bytes, self.not_counted_bytes())

    def enforce(self, db: Keyspace) -> int:
        """Evict while over the share; set db.oom when over and nothing could be
        evicted. Returns the number of keys evicted (their DEL effects are in
        db.effects, for the caller's next record)."""
        gauge = self.gauge
        over = gauge.growth_now() - gauge.not_counted_bytes - self.share_bytes
        if over <= 0:
            db.oom = False
            return 0
        if self.policy == "noeviction":
            self._refuse(db, over)
            return 0
        evicted = 0
        freed = 0
        while freed < over and evicted < EVICT_KEYS_PER_CALL_MAX:
            key = self._candidate(db)
            if key is None:
                break
            freed += self._evict(db, key)
            evicted += 1
        gauge.freed(freed)
        if freed < over and evicted < EVICT_KEYS_PER_CALL_MAX:
            self._refuse(db, over - freed)
        else:
            db.oom = False
        return evicted

    def _refuse(self, db: Keyspace, over_bytes: int) -> None:
        """Over the share with nothing (more) to evict: denyoom commands get OOM. Logged
        with the gauge's parts on entering that state (at most every OOM_LOG_INTERVAL_S)."""
        now = time.monotonic()
        if not db.oom and now - self.oom_logged_at >= OOM_LOG_INTERVAL_S:
            self.oom_logged_at = now
            gauge = self.gauge
            logger.info("over its maxmemory share of %d bytes by %d with nothing to evict (policy %s, "
                        "%d keys, %d with a TTL): denyoom commands answer OOM; heap growth %d bytes as "
                        "sampled (%d of it the log's buffers, left out), %d since by RSS, %d evicted since",
                        self.share_bytes, over_bytes, self.policy, len(db.data), len(db.expires),
                        gauge.growth_bytes, gauge.not_counted_bytes, max(gauge.rss() - gauge.sampled_rss, 0),
                        gauge.freed_bytes)
        db.oom = True

    # --- choosing a key -------------------------------------------------------------

    def _candidate(self, db: Keyspace) -> bytes | None:
        volatile = self.policy.startswith("volatile-")
        kind = self.policy.split("-", 1)[1]
        if kind == "random":
            found = self._sample(db, 1, volatile)
            return found[0] if found else None
        self._populate(db, kind, volatile)
        pool = self.pool
        while pool:
            _score, key = pool.pop()
            if key in db.data and (not volatile or key in db.expires):
                return key
        return None

    def _populate(self, db: Keyspace, kind: str, volatile: bool) -> None:
        """evictionPoolPopulate: score fresh samples, keep the pool's best 16."""
        pool = self.pool
        clock = lru_clock(now_ms())
        lfu = db.lfu
        if kind == "lfu" and lfu is None:  # the policy changed and the shard not yet told: as Redis, adjust
            lfu = Lfu(0, 0, now_ms())
        pooled = {key for _, key in pool}
        for key in self._sample(db, self.samples, volatile):
            if key in pooled:
                continue
            if kind == "lru":
                score = idle_ms(db.stamp_of(key), clock)
            elif kind == "lfu":
                assert lfu is not None
                score = LFU_COUNTER_MAX - lfu.counter(db.stamp_of(key))
            else:  # ttl: the sooner it expires, the better a candidate
                score = -db.expires[key]
            pool.append((score, key))
            pooled.add(key)
        pool.sort(key=_score)
        del pool[:-EVICTION_POOL_SIZE]

    def _sample(self, db: Keyspace, count: int, volatile: bool) -> list[bytes]:
        """Up to `count` random live keys (with a TTL if volatile): as Redis'
        dictGetSomeKeys, neighbours from a random place (a slot's key list, or
        the expiry heap), which is as random for eviction and much cheaper."""
        found: list[bytes] = []
        rand = random.random
        if volatile:
            heap = db.expiry_entries()
            expires = db.expires
            for _ in range(SAMPLE_TRIES_PER_KEY):
                if not heap or len(found) >= count:
                    break
                at = int(rand() * len(heap))
                for when, key in heap[at:at + count]:
                    if expires.get(key) == when:
                        found.append(key)
            if not found and expires:  # unlucky draws among stale entries: take the first live one
                found.extend(key for key in itertools.islice(expires, count))
            return found[:count]
        slots = db.slot_keys
        if not slots:
            return found
        first, last = self.slot_range
        span = last - first + 1
        chosen = tuple(slots) if len(slots) * SAMPLE_TRIES_PER_KEY < span else None
        data = db.data
        for _ in range(count * SAMPLE_TRIES_PER_KEY):
            if len(found) >= count:
                return found
            members = slots[chosen[int(rand() * len(chosen))]] if chosen is not None \
                else slots.get(first + int(rand() * span))
            if not members:
                continue
            at = int(rand() * len(members))
            for key in members[at:at + count - len(found)]:
                if key in data:
                    found.append(key)
        if not found:  # unlucky draws: pick among the slots that hold live keys
            for slot in random.sample(tuple(slots), min(len(slots), SAMPLE_TRIES_PER_KEY)):
                live = db.keys_in_slot(slot)
                if live:
                    found.append(random.choice(live))
                    break
        return found

    # --- evicting ---------------------------------------------------------------------

    @staticmethod
    def _evict(db: Keyspace, key: bytes) -> int:
        """Evict key as an effect; returns the bytes it is estimated to free."""
        size = estimate_bytes(key, db.data[key], DEFAULT_SAMPLES)
        db.delete(key)
        db.stat_evicted_keys += 1
        db.expiring = True  # a change no client made: CLIENT TRACKING's NOLOOP never hides it
        try:
            db.effect([b"DEL", key], key)
        finally:
            db.expiring = False
        db.notify(notify.EVICTED, b"evicted", key)
        return size
