"""Access tracking per key, as Redis keeps it in each object's 24-bit `lru` field:
an LRU clock in seconds (OBJECT IDLETIME, the *-lru policies) or, while an LFU
policy is selected, a logarithmic access counter with the minute it last decayed
(OBJECT FREQ, the *-lfu policies). As in Redis, switching between the two
reinterprets the stamps already stored ("LRU and LFU data will take some time to
adjust").

The stamps live in a table of 32-bit cells kept by the keyspace
(shards/keyspace.py), a key's cell chosen by its hash (shards/keyspace.py's `stamp_of`): 4 bytes a
cell and 2 to 4 cells a key, so 8-16 bytes a key where a dict of stamps cost ~33
(issue 11 section 4). The table doubles by repeating itself (`grow_cells`), which
keeps every key's cell content, as its key count passes half its cells. A cell
is stamped when a key is written or read, never on delete or replay: a key only
replayed from the log reads the stamp its cell had, at first the shard's start,
so replay and the snapshotter pay nothing. Two live keys may share a cell; the
cell then holds the newest of their stamps, so a key's idle time is never
overstated (eviction never takes a key used recently for an idle one), only
sometimes understated, and LFU counters of such keys are shared, as in a
count-min sketch.
"""

from __future__ import annotations

import random
from array import array

LRU_CLOCK_MAX = (1 << 24) - 1  # Redis' LRU_BITS
LRU_CLOCK_RESOLUTION_MS = 1000
LFU_INIT_VAL = 5  # a new key's counter, so that it is not evicted before it had a chance
LFU_COUNTER_MAX = 255
LFU_MINUTES_MASK = 65535  # the 16 bits of a stamp that hold its decay time (minutes)

STAMP_CELLS_MIN = 1024  # a keyspace with no keys: 4 KiB
STAMP_CELLS_PER_KEY = 2  # at least this many cells a key; the table doubles past it

ERR_NOT_LFU = (b"ERR An LFU maxmemory policy is not selected, access frequency not tracked. "
               b"Please note that when switching between policies at runtime LRU and LFU data "
               b"will take some time to adjust.")
ERR_IS_LFU = (b"ERR An LFU maxmemory policy is selected, idle time not tracked. "
              b"Please note that when switching between policies at runtime LRU and LFU data "
              b"will take some time to adjust.")


def lru_clock(now_ms: int) -> int:
    """getLRUClock: seconds, wrapping at 24 bits."""
    return (now_ms // LRU_CLOCK_RESOLUTION_MS) & LRU_CLOCK_MAX


def new_cells(stamp: int) -> array:
    """A stamp table of STAMP_CELLS_MIN cells, each holding stamp."""
    return array("I", [stamp]) * STAMP_CELLS_MIN


def grow_cells(cells: array, keys: int) -> int:
    """Double cells in place until it has STAMP_CELLS_PER_KEY cells per key: the
    table repeated after itself, so that cell (hash & new mask) holds what cell
    (hash & old mask) held, for every key. Returns the new mask. (A key's cell is
    hash(key) & mask: a bytes object caches its hash.)"""
    while len(cells) < keys * STAMP_CELLS_PER_KEY:
        cells.extend(cells)
    return len(cells) - 1


def idle_ms(stamp: int, clock: int) -> int:
    """estimateObjectIdleTime: how long ago an LRU stamp was taken, across a wrap."""
    if clock >= stamp:
        return (clock - stamp) * LRU_CLOCK_RESOLUTION_MS
    return (clock + (LRU_CLOCK_MAX - stamp)) * LRU_CLOCK_RESOLUTION_MS


def lfu_minutes(now_ms: int) -> int:
    """LFUGetTimeInMinutes."""
    return (now_ms // 60_000) & LFU_MINUTES_MASK


class Lfu:
    """The LFU parameters (lfu-log-factor, lfu-decay-time) and clock while an LFU
    policy is selected; `stamps[c]` is the stamp of counter c at the current minute."""

    __slots__ = ("log_factor", "decay_time", "minutes", "stamps")

    def __init__(self, log_factor: int, decay_time: int, now_ms: int) -> None:
        self.log_factor = log_factor
        self.decay_time = decay_time
        self.minutes = -1
        self.stamps: list[int] = []
        self.set_clock(now_ms)

    def set_clock(self, now_ms: int) -> None:
        minutes = lfu_minutes(now_ms)
        if minutes != self.minutes:
            self.minutes = minutes
            self.stamps = [(minutes << 8) | counter for counter in range(LFU_COUNTER_MAX + 1)]

    def counter(self, stamp: int) -> int:
        """LFUDecrAndReturn: the counter, less one per decay period elapsed since
        the stamp's minute."""
        counter = stamp & 255
        if not self.decay_time:
            return counter
        last = stamp >> 8
        now = self.minutes
        elapsed = now - last if now >= last else LFU_MINUTES_MASK - last + now
        periods = elapsed // self.decay_time
        return max(counter - periods, 0)

    def bump(self, stamp: int) -> int:
        """updateLFU: decay, then LFULogIncr (the more hits a key has, the less
        likely one more raises its counter)."""
        counter = self.counter(stamp)
        if counter < LFU_COUNTER_MAX:
            base = max(counter - LFU_INIT_VAL, 0)
            if random.random() < 1.0 / (base * self.log_factor + 1):
                counter += 1
        return self.stamps[counter]

    def new(self) -> int:
        return self.stamps[LFU_INIT_VAL]
