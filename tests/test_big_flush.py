"""FLUSHALL / FLUSHDB of big values (issue 11): each value of
lazyfree.LAZY_FREE_MIN_BYTES or more goes to the reaper (shards/lazyfree.py), found
through the keyspace's set of keys with big values (Keyspace.big_keys) rather than a
scan, where the flush freed them in the shard's loop (a 512 MiB value: 40-60 ms of
munmap with the GIL held). Checked by counts (INFO lazyfreed_objects); the same-shard
probe's worst PING is printed, not asserted (scripts/large_values.py measures it).
"""

from __future__ import annotations

import os
import threading
import time

import redis

from durakv.shards import lazyfree
from durakv.shards.keyspace import Keyspace

MIB = 1024 * 1024
BIG_BYTES = lazyfree.LAZY_FREE_MIN_BYTES + MIB
WAIT_S = 30.0  # generous bound for the reaper thread on a loaded machine


def until(predicate, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def big_value(tag: int) -> bytes:
    """A distinct big value; bytes(n) is calloc'ed: untouched pages cost no memory."""
    return bytes(BIG_BYTES - 1) + bytes([tag])


def test_keyspace_tracks_big_values_and_flush_hands_them_to_the_reaper():
    db = Keyspace()
    until(lambda: lazyfree.stats.held == 0, "the reaper to be idle")
    start = lazyfree.stats.freed
    for tag in range(4):
        db.put(b"big%d" % tag, big_value(tag))
    db.put(b"small", b"v")
    db.put(b"big0", b"now small")  # overwritten: the old value is the reaper's now
    db.delete(b"big1")  # deleted: likewise
    db.put(b"later", big_value(9))  # replaces nothing: tracked too
    assert db.big_keys == {b"big2", b"big3", b"later"}
    until(lambda: lazyfree.stats.freed == start + 2, "the reaper to free the overwritten and deleted values")
    db.flush()
    assert not db.data and not db.big_keys
    until(lambda: lazyfree.stats.freed == start + 5, "the flushed values to be freed by the reaper")
    assert lazyfree.stats.held == 0


def test_flushall_of_big_values_frees_them_off_the_loop(server_factory):
    """Big values on one shard, FLUSHALL while a client of that shard PINGs:
    INFO lazyfreed_objects counts every flushed value; the probe's worst is printed."""
    srv = server_factory(shards=1)
    shard = redis.Redis(port=srv.shard_port(0))
    r = redis.Redis(port=srv.port)
    count = 3
    value = os.urandom(MIB) * (BIG_BYTES // MIB)
    for i in range(count):
        assert shard.set(f"big{i}", value)
    assert shard.set("small", b"v")
    del value

    def freed() -> int:
        return int(r.info("all")["lazyfreed_objects"])

    settled = freed()
    time.sleep(0.5)
    until(lambda: int(r.info("all")["lazyfree_pending_objects"]) == 0 and freed() == settled,
          "the values of the SETs to settle")
    before = freed()

    worst_ms = [0.0]
    stop = threading.Event()

    def probe() -> None:
        client = redis.Redis(port=srv.shard_port(0))
        while not stop.is_set():
            t0 = time.perf_counter()
            assert client.ping()
            worst_ms[0] = max(worst_ms[0], (time.perf_counter() - t0) * 1000)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    try:
        time.sleep(0.2)
        idle_ms, worst_ms[0] = worst_ms[0], 0.0
        assert r.flushall()
        until(lambda: freed() == before + count, f"the {count} flushed values to be freed by the reaper")
    finally:
        stop.set()
        prober.join(timeout=10)
    print(f"same-shard PING worst: idle {idle_ms:.1f} ms, during FLUSHALL of {count} x {BIG_BYTES // MIB} MiB "
          f"{worst_ms[0]:.1f} ms (load {os.getloadavg()[0]:.1f})")
    assert r.dbsize() == 0
    assert r.set("after", b"v") and r.get("after") == b"v"


def test_flushdb_and_del_of_many_big_values_go_to_the_reaper(server_factory):
    """FLUSHDB takes the same path as FLUSHALL; a DEL of several big keys hands each to
    the reaper (Keyspace._remove)."""
    srv = server_factory(shards=1)
    shard = redis.Redis(port=srv.shard_port(0))
    value = os.urandom(MIB) * (BIG_BYTES // MIB)
    for i in range(2):
        assert shard.set(f"{{t}}big{i}", value)
    del value

    def freed() -> int:
        return int(shard.info("all")["lazyfreed_objects"])

    before = freed()
    assert shard.delete("{t}big0", "{t}big1") == 2
    until(lambda: freed() == before + 2, "the deleted values to be freed by the reaper")
    assert shard.set("again", b"x" * BIG_BYTES)
    assert shard.flushdb()
    until(lambda: freed() == before + 3, "the flushed value to be freed by the reaper")
    assert shard.dbsize() == 0
