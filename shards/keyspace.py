"""A shard's keyspace: values, absolute expiries, a per-slot key index, and the
effect stream that every mutation writes.

The per-slot index (SCAN's cursor is a slot; CLUSTER COUNTKEYSINSLOT and
GETKEYSINSLOT; RANDOMKEY) is a list of keys per slot plus a live count per slot,
not a set: a list costs ~9 bytes per key where a set costs ~55, which was a fifth
of a shard's memory per 100-byte string key. A deleted key stays in its slot's
list until the list is compacted (when it holds more than twice its live count
plus SLOT_INDEX_SLACK), so readers of the index check each key against `data`
and may see a key twice (`keys_in_slot` dedupes).

Every mutation goes through `effect()`, which is how the durable log learns what
to record (DESIGN invariant 3: effects, not commands) and how WATCH and read
hazards learn which keys changed. Expiry is lazy on access plus an active cycle
driven by a min-heap of deadlines, and an expired key becomes a `DEL` effect.

Reads and writes stamp the key's access (shards/access.py: LRU clock or LFU
counter) as Redis' lookupKey does; `peek` is the lookup that does not (Redis'
LOOKUP_NOTOUCH: EXISTS, TYPE, TTL, OBJECT, SCAN).
"""

from __future__ import annotations

import heapq
import random
import time
from typing import Callable

from durakv.shards import lazyfree, notify
from durakv.shards.access import STAMP_CELLS_PER_KEY, Lfu, grow_cells, lru_clock, new_cells
from durakv.shards.lazyfree import LAZY_FREE_MIN_BYTES
from durakv.shards.notify import event_messages
from durakv.shards.slots import key_slot

NOTIFY_TARGETS = notify.KEYSPACE | notify.KEYEVENT

ACTIVE_EXPIRE_KEYS_PER_CYCLE = 200
EXPIRE_HEAP_SLACK = 1024
SLOT_INDEX_SLACK = 8  # stale entries a slot's key list may hold beyond twice its live count

# Python types that hold each Redis type. Strings are bytes (immutable, shared
# freely) or bytearray once APPEND/SETRANGE/SETBIT mutate them in place.
STRING_TYPES = (bytes, bytearray)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Keyspace:
    __slots__ = (
        "data", "expires", "slot_keys", "slot_counts", "_heap", "effects", "on_modified", "on_flush", "replaying",
        "stat_expired_keys", "stat_keyspace_hits", "stat_keyspace_misses",
        "lazy_expire_disabled", "active_expire_enabled", "expiry_paused_until_ms", "frozen_ms", "count_reads",
        "scripting", "notify_flags", "events", "replay_notifies", "expiring", "tracking",
        "access_cells", "access_mask", "access_stamp", "access_default", "lfu", "stat_evicted_keys", "oom",
        "big_keys", "changes",
    )

    def __init__(self) -> None:
        self.data: dict[bytes, object] = {}
        self.expires: dict[bytes, int] = {}
        # slot -> its keys, possibly with stale or repeated entries (see the module
        # docstring); slot -> live key count. A slot is in both or in neither.
        self.slot_keys: dict[int, list[bytes]] = {}
        self.slot_counts: dict[int, int] = {}
        self._heap: list[tuple[int, bytes]] = []
        self.effects: list[list[bytes]] = []
        self.on_modified: Callable[[bytes], None] | None = None
        self.on_flush: Callable[[], None] | None = None
        self.replaying = False
        self.stat_expired_keys = 0
        self.stat_keyspace_hits = 0
        self.stat_keyspace_misses = 0
        self.lazy_expire_disabled = False
        self.active_expire_enabled = True  # DEBUG SET-ACTIVE-EXPIRE
        self.expiry_paused_until_ms = 0  # CLIENT PAUSE: expired keys read as missing but stay (internal.py)
        self.frozen_ms = 0
        self.count_reads = False  # set while a read-only command runs: keyspace hits/misses
        # The Lua state of scripts and functions (shards/luaenv.py), made on first use.
        self.scripting: object | None = None
        # notify-keyspace-events (shards/notify.py), and the (channel, message) pairs
        # generated since the shard last handed them out.
        self.notify_flags = 0
        self.events: list[tuple[bytes, bytes]] = []
        # A replica following the log notifies of what it applies, as a Redis replica
        # does of the commands its primary sends (shards/replica.py).
        self.replay_notifies = False
        # While an expired (or evicted) key is deleted: a change no client made, which
        # CLIENT TRACKING's NOLOOP never hides (shards/tracking.py).
        self.expiring = False
        self.tracking = False  # some front has CLIENT TRACKING clients: scripts report their reads
        # Redis' dirty counter, cumulative over the keyspace's history (shards/changes.py): keys
        # changed by clients; a snapshot's load sets it, a replayed record adds what it logged.
        self.changes = 0
        # Access stamps (shards/access.py): a table of LRU clocks or LFU stamps, key
        # hash & access_mask -> cell, every cell access_default (the shard's start)
        # until stamped. access_stamp is the current LRU clock (moved by tick_clock);
        # lfu is set while an LFU policy is selected.
        self.access_stamp = self.access_default = lru_clock(now_ms())
        self.access_cells = new_cells(self.access_default)
        self.access_mask = len(self.access_cells) - 1
        self.lfu: Lfu | None = None
        self.stat_evicted_keys = 0
        # Set by the shard's memory limit (shards/evict.py) while it is over maxmemory
        # and could not evict: commands flagged denyoom answer OOM.
        self.oom = False
        # The keys whose value is a bytes object of LAZY_FREE_MIN_BYTES or more, kept
        # by put and _remove: FLUSHALL hands those values to the reaper
        # (shards/lazyfree.py) without a scan of the keyspace in the loop. A key
        # may stay after its value changed otherwise (DEBUG RELOAD): flush checks.
        self.big_keys: set[bytes] = set()

    # --- time ---------------------------------------------------------------

    def now(self) -> int:
        """The command's clock: frozen while one command or transaction runs, so a
        key cannot expire half way through it, as in Redis."""
        return self.frozen_ms or now_ms()

    # --- effects ------------------------------------------------------------

    def effect(self, argv: list[bytes], *keys: bytes, changes: int = -1) -> None:
        """Record the deterministic effect of a mutation; `keys` are the keys it
        changes (they drive WATCH invalidation and read hazards); `changes`, Redis'
        dirty count of it when not the number of keys (shards/changes.py)."""
        if not self.replaying:
            self.effects.append(argv)
            if not self.expiring:  # an expiry or eviction is no client's change: Redis counts neither
                self.changes += len(keys) if changes < 0 else changes
        hook = self.on_modified
        if hook is not None:
            for key in keys:
                hook(key)

    def notify(self, event_class: int, event: bytes, key: bytes) -> None:
        """Redis' notifyKeyspaceEvent: queue the event's messages if its class is
        enabled (never while replaying, but on a replica: the log's effects are not events)."""
        flags = self.notify_flags
        if flags & event_class and flags & NOTIFY_TARGETS and (not self.replaying or self.replay_notifies):
            self.events.extend(event_messages(flags, event, key))

    def modified(self, *keys: bytes) -> None:
        """Signal a change that is already covered by another effect."""
        hook = self.on_modified
        if hook is not None:
            for key in keys:
                hook(key)

    def tick_clock(self, now: int) -> None:
        """Move the access clocks on (the shard's cron, as Redis' serverCron)."""
        clock = lru_clock(now)
        if clock != self.access_stamp:
            self.access_stamp = clock
        if self.lfu is not None:
            self.lfu.set_clock(now)

    # --- lookup -------------------------------------------------------------

    def get(self, key: bytes) -> object | None:
        """The live value of key, expiring it first if its time has passed; a hit
        stamps the key's access. (It is `peek` plus the stamp, written out: every
        command's lookup runs here.)"""
        value = self.data.get(key)
        if value is None:
            if self.count_reads:
                self._miss(key)
            return None
        when = self.expires.get(key)
        if when is not None and when <= self.now() and not self.lazy_expire_disabled:
            if not self.expiry_paused():
                self._expire(key)
            if self.count_reads:
                self._miss(key)
            return None
        if self.count_reads:
            self.stat_keyspace_hits += 1
        if not self.replaying:
            if self.lfu is None:
                self.access_cells[hash(key) & self.access_mask] = self.access_stamp
            else:
                self.touch_lfu(key)
        return value

    def touch_lfu(self, key: bytes) -> None:
        lfu = self.lfu
        assert lfu is not None, "an LFU touch without an LFU policy"
        cell = hash(key) & self.access_mask
        self.access_cells[cell] = lfu.bump(self.access_cells[cell])

    def stamp_of(self, key: bytes) -> int:
        """key's access stamp (shards/access.py): an LRU clock, or an LFU stamp."""
        return self.access_cells[hash(key) & self.access_mask]

    def set_stamp(self, key: bytes, stamp: int) -> None:
        self.access_cells[hash(key) & self.access_mask] = stamp

    def peek(self, key: bytes) -> object | None:
        """get without stamping the access (Redis' LOOKUP_NOTOUCH)."""
        value = self.data.get(key)
        if value is None:
            if self.count_reads:
                self._miss(key)
            return None
        when = self.expires.get(key)
        if when is not None and when <= self.now() and not self.lazy_expire_disabled:
            if not self.expiry_paused():
                self._expire(key)
            if self.count_reads:
                self._miss(key)
            return None
        if self.count_reads:
            self.stat_keyspace_hits += 1
        return value

    def _miss(self, key: bytes) -> None:
        """A read command found no key: keyspace_misses, and the `m` class's keymiss event."""
        self.stat_keyspace_misses += 1
        if self.notify_flags & notify.KEY_MISS:
            self.notify(notify.KEY_MISS, b"keymiss", key)

    def expiry_paused(self) -> bool:
        until = self.expiry_paused_until_ms
        if until and now_ms() >= until:
            until = self.expiry_paused_until_ms = 0
        return bool(until)

    def exists(self, key: bytes) -> bool:
        return self.get(key) is not None

    def _expire(self, key: bytes) -> None:
        self._remove(key)
        self.stat_expired_keys += 1
        self.expiring = True
        try:
            self.effect([b"DEL", key], key)
        finally:
            self.expiring = False
        self.notify(notify.EXPIRED, b"expired", key)

    # --- mutation -----------------------------------------------------------

    def put(self, key: bytes, value: object, keep_ttl: bool = False) -> None:
        """Store value at key (new or overwrite); clears the TTL unless keep_ttl."""
        data = self.data
        if not self.replaying:
            if self.lfu is None:
                self.access_cells[hash(key) & self.access_mask] = self.access_stamp
            elif key in data:
                self.touch_lfu(key)
            else:
                self.access_cells[hash(key) & self.access_mask] = self.lfu.new()
        if key in data:
            if not keep_ttl and key in self.expires:
                del self.expires[key]
            old = data[key]
            data[key] = value
            if type(old) is bytes and len(old) >= LAZY_FREE_MIN_BYTES:
                lazyfree.drop(old)  # freed off the loop (shards/lazyfree.py)
                self.big_keys.discard(key)
            if type(value) is bytes and len(value) >= LAZY_FREE_MIN_BYTES:
                self.big_keys.add(key)
            return
        data[key] = value
        if type(value) is bytes and len(value) >= LAZY_FREE_MIN_BYTES:
            self.big_keys.add(key)
        if len(data) * STAMP_CELLS_PER_KEY > self.access_mask + 1:
            self.access_mask = grow_cells(self.access_cells, len(data))
        if self.notify_flags:
            self.notify(notify.NEW, b"new", key)
        slot = key_slot(key)
        members = self.slot_keys.get(slot)
        if members is None:
            self.slot_keys[slot] = [key]
            self.slot_counts[slot] = 1
            return
        count = self.slot_counts[slot] + 1
        self.slot_counts[slot] = count
        members.append(key)
        if len(members) > 2 * count + SLOT_INDEX_SLACK:
            members[:] = [k for k in dict.fromkeys(members) if k in data]
            assert len(members) == count, "slot index out of step with the keyspace"

    def delete(self, key: bytes) -> bool:
        """Remove key if present (no expiry check: callers looked it up)."""
        if key not in self.data:
            return False
        self._remove(key)
        return True

    def _remove(self, key: bytes) -> None:
        value = self.data.pop(key)
        if type(value) is bytes and len(value) >= LAZY_FREE_MIN_BYTES:
            lazyfree.drop(value)  # freed off the loop (shards/lazyfree.py)
            self.big_keys.discard(key)
        self.expires.pop(key, None)
        slot = key_slot(key)
        count = self.slot_counts[slot] - 1
        if count:
            self.slot_counts[slot] = count
        else:
            del self.slot_counts[slot]
            del self.slot_keys[slot]

    def set_expire(self, key: bytes, when_ms: int) -> None:
        assert key in self.data, "expiry set on a missing key"
        self.expires[key] = when_ms
        heap = self._heap
        heapq.heappush(heap, (when_ms, key))
        if len(heap) > 2 * len(self.expires) + EXPIRE_HEAP_SLACK:
            # Compacted in place, keeping the live entries' tuples: a heap built afresh
            # from `expires` made a tuple per volatile key while the old ones still
            # lived, a peak of memory that stayed in the RSS after (it read 6-10% above
            # maxmemory under volatile-* eviction, issue 13).
            expires = self.expires
            kept = 0
            for entry in heap:
                if expires.get(entry[1]) == entry[0]:
                    heap[kept] = entry
                    kept += 1
            del heap[kept:]
            heapq.heapify(heap)

    def persist(self, key: bytes) -> bool:
        return self.expires.pop(key, None) is not None

    def flush(self) -> None:
        if not self.replaying:
            self.changes += len(self.data)  # FLUSHALL/FLUSHDB count the keys removed, as Redis' emptyData
        hook = self.on_flush
        if hook is not None:
            hook()
        big_keys = self.big_keys
        if big_keys:  # their values are freed off the loop, once the clear below lets go of them
            data = self.data
            for key in big_keys:
                lazyfree.drop(data.get(key))
            big_keys.clear()
        self.data.clear()
        self.expires.clear()
        self.access_cells = new_cells(self.access_default)
        self.access_mask = len(self.access_cells) - 1
        self.slot_keys.clear()
        self.slot_counts.clear()
        self._heap.clear()

    # --- active expiry --------------------------------------------------------

    def active_expire(self, limit: int = ACTIVE_EXPIRE_KEYS_PER_CYCLE) -> int:
        """Expire up to `limit` keys whose deadline has passed; returns how many."""
        if self.expiry_paused() or not self.active_expire_enabled:
            return 0
        heap = self._heap
        expires = self.expires
        now = now_ms()
        done = 0
        while heap and done < limit and heap[0][0] <= now:
            when, key = heapq.heappop(heap)
            if expires.get(key) == when:
                self._expire(key)
                done += 1
        return done

    def expiry_entries(self) -> list[tuple[int, bytes]]:
        """The expiry heap's (deadline, key) entries, stale ones included (an entry
        is live while expires[key] == deadline): eviction samples volatile keys here."""
        return self._heap

    # --- iteration ------------------------------------------------------------

    def keys_in_slot(self, slot: int) -> list[bytes]:
        """The keys stored in slot (expired ones included, as Redis counts them),
        each once, in insertion order."""
        members = self.slot_keys.get(slot)
        if not members:
            return []
        data = self.data
        return [key for key in dict.fromkeys(members) if key in data]

    def count_keys_in_slot(self, slot: int) -> int:
        return self.slot_counts.get(slot, 0)

    def live_key_list(self) -> list[bytes]:
        """All keys not past their deadline, without expiring them (a read must not
        write), built at C speed: a copy of the dict's keys, minus those past their
        deadline (found by walking `expires` only)."""
        keys = list(self.data)
        if not self.expires:
            return keys
        now = self.now()
        expired = {key for key, when in self.expires.items() if when <= now}
        if not expired:
            return keys
        return [key for key in keys if key not in expired]

    def random_key(self) -> bytes | None:
        """A random live key: pick random non-empty slots, then a member."""
        for _ in range(100):
            if not self.slot_keys:
                return None
            if len(self.slot_keys) < 4096:
                slot = random.choice(tuple(self.slot_keys))
            else:
                slot = random.randrange(16384)
                if slot not in self.slot_keys:
                    continue
            key = random.choice(self.slot_keys[slot])
            if key not in self.data:  # a stale index entry: choose among the live ones
                key = random.choice(self.keys_in_slot(slot))
            if self.peek(key) is not None:
                return key
        return None


def type_name(value: object) -> bytes:
    t = type(value)
    if t is bytes or t is bytearray:
        return b"string"
    return TYPE_NAMES.get(t, b"none")


# Filled in by the type modules (list, hash, set, zset, stream) as they load.
TYPE_NAMES: dict[type, bytes] = {}
