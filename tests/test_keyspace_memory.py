"""The keyspace's per-key bookkeeping (issue 11 §4): the per-slot key index is
cheap per key, stays bounded under churn, and leaves nothing behind when the keys
go (DEL of each key, or FLUSHALL). Asserts on structure sizes, never on RSS."""

from __future__ import annotations

import sys
import tracemalloc

from engine_util import call, new_ctx

import durakv.shards.commands  # noqa: F401
from durakv.shards.keyspace import SLOT_INDEX_SLACK, Keyspace
from durakv.shards.slots import key_slot

KEY_COUNT = 20_000
TAG_COUNT = 256  # ~78 keys a slot, as a million keys over 16384 slots give ~60
# A set costs 16 bytes per table entry at <= 60% load plus its header (~55 B/key
# measured); a list of pointers ~9. The bound sits between the two.
SLOT_INDEX_MAX_BYTES_PER_KEY = 24


def index_bytes(db: Keyspace) -> int:
    return (sys.getsizeof(db.slot_keys) + sys.getsizeof(db.slot_counts)
            + sum(sys.getsizeof(members) for members in db.slot_keys.values()))


def assert_index_empty(db: Keyspace) -> None:
    assert db.data == {} and db.expires == {}
    assert db.slot_keys == {} and db.slot_counts == {}


def test_slot_index_costs_few_bytes_per_key():
    db = Keyspace()
    for i in range(KEY_COUNT):
        db.put(b"{%d}:%012d" % (i % TAG_COUNT, i), b"v")
    per_key = index_bytes(db) / KEY_COUNT
    print(f"slot index: {per_key:.1f} bytes/key")
    assert per_key <= SLOT_INDEX_MAX_BYTES_PER_KEY


def test_slot_index_bounded_under_churn():
    """Deleting and re-adding keys of one slot leaves stale entries; compaction
    keeps the list within twice the live count plus the slack."""
    db = Keyspace()
    tagged = [b"{tag}:%d" % i for i in range(10)]
    slot = key_slot(tagged[0])
    for _ in range(1000):
        for key in tagged:
            db.put(key, b"v")
        assert len(db.slot_keys[slot]) <= 2 * db.slot_counts[slot] + SLOT_INDEX_SLACK
        for key in tagged[1:]:
            db.delete(key)
    assert db.count_keys_in_slot(slot) == 1
    assert db.keys_in_slot(slot) == [tagged[0]]
    for key in tagged:
        db.put(key, b"v")
    assert sorted(db.keys_in_slot(slot)) == sorted(tagged)  # each once, stale entries dropped
    assert db.count_keys_in_slot(slot) == len(tagged)


def test_deleting_every_key_empties_the_index():
    ctx = new_ctx()
    keys = [b"k:%d" % i for i in range(2000)]
    for key in keys:
        call(ctx, "SET", key, "v")
    call(ctx, "EXPIRE", keys[0], 100)
    assert call(ctx, "DEL", *keys) == len(keys)
    assert_index_empty(ctx.db)


def test_flushall_empties_the_index():
    ctx = new_ctx()
    for i in range(2000):
        call(ctx, "SET", b"k:%d" % i, "v", "EX", 100)
        call(ctx, "RPUSH", b"l:%d" % i, "a", "b")
    call(ctx, "FLUSHALL")
    assert_index_empty(ctx.db)
    assert ctx.db._heap == []


def test_scan_and_randomkey_skip_stale_index_entries():
    ctx = new_ctx()
    tagged = [b"{t}:%d" % i for i in range(8)]
    for key in tagged:
        call(ctx, "SET", key, "v")
    for key in tagged[1:]:
        call(ctx, "DEL", key)
    call(ctx, "SET", tagged[2], "v")
    call(ctx, "DEL", tagged[2])
    call(ctx, "SET", tagged[3], "v")
    cursor, seen = b"0", []
    while True:
        cursor, keys = call(ctx, "SCAN", cursor, "COUNT", 1000)
        seen.extend(keys)
        if cursor == b"0":
            break
    assert sorted(seen) == sorted([tagged[0], tagged[3]])
    for _ in range(50):
        assert call(ctx, "RANDOMKEY") in (tagged[0], tagged[3])


# Per key, beyond the key, its value and its entry in `data`: the slot index (~9
# bytes at this density) and the access stamps, 8-16 bytes in a table of cells.
# A dict of stamps (~33 bytes a key at best, 52 at this count) does not fit.
BOOKKEEPING_MAX_BYTES_PER_KEY = 32


def test_access_stamps_and_index_cost_few_bytes_per_key():
    """Every key written through SET is stamped (OBJECT IDLETIME works for it),
    yet the keyspace's bookkeeping stays a few bytes per key."""
    ctx = new_ctx()
    db = ctx.db
    keys = [b"{%d}:%012d" % (i % TAG_COUNT, i) for i in range(KEY_COUNT)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for key in keys:
            call(ctx, "SET", key, "v")
        db.effects.clear()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    per_key = (grown - sys.getsizeof(db.data)) / KEY_COUNT  # keys made before, "v" shared: the rest is bookkeeping
    print(f"bookkeeping: {per_key:.1f} bytes/key")
    assert per_key <= BOOKKEEPING_MAX_BYTES_PER_KEY
    assert call(ctx, "OBJECT", "IDLETIME", keys[0]) == 0


VOLATILE_KEYS = 20_000
TUPLE_BLOCK_BYTES = 64  # a (deadline, key) tuple's pymalloc block


def test_expiry_heap_compaction_makes_no_new_entries():
    """The expiry heap drops the entries of keys no longer volatile when it passes
    twice their number, in place: the live entries are kept, not made afresh, so
    compaction needs a list of pointers, not a tuple per volatile key on top of
    the old ones (a peak that stayed in the RSS under volatile-* eviction, issue 13)."""
    db = Keyspace()
    keys = [b"v:%d" % i for i in range(3 * VOLATILE_KEYS)]  # two in three deleted: past the slack
    for i, key in enumerate(keys):
        db.put(key, b"v")
        db.set_expire(key, 10**13 + i)
    live = keys[:VOLATILE_KEYS]
    for key in keys[VOLATILE_KEYS:]:
        db.delete(key)  # their heap entries stay until a compaction
    entries = {entry[1]: entry for entry in db.expiry_entries()}
    extra = b"v:extra"
    db.put(extra, b"v")
    tracemalloc.start()
    try:
        db.set_expire(extra, 10**13)  # the heap passes twice the volatile keys: compacted
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    heap = db.expiry_entries()
    assert len(heap) == VOLATILE_KEYS + 1
    assert all(entries[key] is entry for entry in heap if (key := entry[1]) != extra), "entries made afresh"
    assert sorted(key for _, key in heap) == sorted(live + [extra])
    print(f"compaction of {len(keys)} entries to {len(heap)}: peak {peak} bytes")
    assert peak < VOLATILE_KEYS * TUPLE_BLOCK_BYTES / 2
