"""Lease fencing of the log (log/FORMAT.md, "Leases and fencing"): a writer fenced by
a new holder while it still runs (paused, in these tests simply not renewing) has
its sync refused and none of its later records ever visible to readers, replay or
followers."""

from __future__ import annotations

import os
import time

import pytest

from durakv.log import LeaseLost, Log, LogLocked, read, verify
from durakv.log.follow import Follower

LEASE_MS = 150


def _open(path, **kw):
    return Log.open(path, holder="test", lease_duration_ms=LEASE_MS, **kw)


def _write(log, lease, payloads):
    log.append(payloads, log.tail_seq, lease)
    return log.sync()


def test_second_writer_without_takeover_is_refused(tmp_path):
    with _open(tmp_path / "log") as log:
        log.take_lease("a")
        with pytest.raises(LogLocked):
            _open(tmp_path / "log")


def test_takeover_waits_for_the_lease_then_fences_the_old_writer(tmp_path):
    path = tmp_path / "log"
    old = _open(path)
    old_lease = old.take_lease("old")
    assert _write(old, old_lease, [b"a1", b"a2", b"a3"]) == 3
    started = time.monotonic()
    new = _open(path, takeover_wait_ms=5000)
    waited_ms = (time.monotonic() - started) * 1000
    print(f"takeover waited {waited_ms:.0f} ms for a {LEASE_MS} ms lease")
    assert waited_ms >= LEASE_MS * 0.5          # it did wait for the lease, not grab it
    assert new.tail_seq == new.durable_seq == 3
    # The old writer, resumed, appends and writes: its sync is refused after the write.
    old.append([b"stale4", b"stale5"], old.tail_seq, old_lease)
    with pytest.raises(LeaseLost):
        old.sync()
    assert old.durable_seq == 3 and old.deposed
    with pytest.raises(LeaseLost):
        old.renew(old_lease)
    with pytest.raises(LeaseLost):
        old.append([b"x"], old.tail_seq, old_lease)
    new_lease = new.take_lease("new")
    assert new_lease.epoch > old_lease.epoch
    assert _write(new, new_lease, [b"b4"]) == 4
    want = [(1, b"a1"), (2, b"a2"), (3, b"a3"), (4, b"b4")]
    assert [(s, p) for s, _, p in read(path)] == want
    assert verify(path).ok
    follower = Follower(str(path))
    assert follower.durable_seq() == 4
    assert [(s, p) for s, _, p in follower.read(1, 4)] == want
    # The deposed writer keeps writing garbage after its records; nothing changes.
    seg = sorted(p for p in os.listdir(path) if p.endswith(".seg"))[0]
    with open(path / seg, "ab") as f:
        f.write(b"\0garbage from a deposed writer" * 10)
    new.close()
    old.close()
    follower.close()
    # Recovery (a plain open, as a restarted shard does) keeps exactly that log.
    with _open(path) as again:
        assert again.tail_seq == 4
        assert [(s, p) for s, _, p in again.read()] == want
        lease = again.take_lease("again")
        assert _write(again, lease, [b"c5"]) == 5
    assert [p for _, _, p in read(path)][-1] == b"c5"


def test_deposed_writer_cannot_drop_segments_or_retry(tmp_path):
    path = tmp_path / "log"
    old = Log.open(path, holder="old", lease_duration_ms=LEASE_MS, segment_size_bytes=100)
    old_lease = old.take_lease("old")
    for i in range(5):
        _write(old, old_lease, [b"x" * 60 + bytes([i])])
    new = _open(path, takeover_wait_ms=5000)
    with pytest.raises(LeaseLost):
        old.drop_segments_through(3)
    with pytest.raises(LeaseLost):
        old.take_lease("old again")
    assert [s for s, _, _ in read(path)] == [1, 2, 3, 4, 5]
    new.close()
    old.close()


def test_follower_sees_only_durable_records(tmp_path):
    path = tmp_path / "log"
    with _open(path) as log:
        lease = log.take_lease("w")
        follower = Follower(str(path))
        log.append([b"p1"], 0, lease)
        assert follower.durable_seq() == 0            # appended, not yet durable
        assert follower.wait_durable(0, 20) == 0
        log.sync()
        assert follower.wait_durable(0, 1000) == 1
        assert list(follower.read(1, 1)) == [(1, lease.epoch, b"p1")]
        for i in range(2, 6):
            _write(log, lease, [b"p%d" % i])
        assert [p for _, _, p in follower.read(2, follower.durable_seq())] == [b"p2", b"p3", b"p4", b"p5"]
        with pytest.raises(ValueError):
            list(follower.read(6, 6))
        follower.close()


def test_a_closed_holder_releases_its_lease(tmp_path):
    path = tmp_path / "log"
    old = Log.open(path, holder="old", lease_duration_ms=60_000)
    _write(old, old.take_lease("old"), [b"1"])
    old.close()
    started = time.monotonic()
    with _open(path, takeover_wait_ms=60_000) as new:   # no wait for a minute-long lease
        assert new.tail_seq == 1
    assert time.monotonic() - started < 30


def test_free_lock_but_live_lease_holder_is_fenced_not_truncated(tmp_path):
    """A holder that fenced its predecessor never got LOCK; a later opener that does
    get it must not truncate under that holder (still running) but fence it."""
    path = tmp_path / "log"
    first = _open(path)
    _write(first, first.take_lease("first"), [b"1"])
    second = _open(path, takeover_wait_ms=5000)       # fences `first` (same pid: alive)
    lease = second.take_lease("second")
    _write(second, lease, [b"2"])
    first.close()                                      # frees LOCK; `second` still holds the lease
    active = sorted(p for p in path.iterdir() if p.name.endswith(".seg"))[-1]
    with open(active, "ab") as f:
        f.write(b"DKVR torn")                          # `second`'s write in progress
    started = time.monotonic()
    third = _open(path)                                # no takeover asked: still waits, then fences
    assert time.monotonic() - started >= LEASE_MS / 1000 * 0.5
    assert third.tail_seq == 2
    second.append([b"3"], second.tail_seq, lease)
    with pytest.raises(LeaseLost):
        second.sync()
    third.close()
    second.close()
    assert [p for _, _, p in read(path)] == [b"1", b"2"]


def test_pid_alive_is_false_for_a_process_ending_during_the_read(monkeypatch):
    """A process that exits between open() and read() of /proc/PID/stat makes the read
    raise ESRCH; INFO replication and CLUSTER SLOTS read the replica board through
    pid_alive while replicas restart, so that must read as gone, not fail the command."""
    from durakv.log import lease

    class Ending:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self, size):
            raise ProcessLookupError(3, "No such process")

    monkeypatch.setattr(lease, "open", lambda *args, **kwargs: Ending(), raising=False)
    assert lease.pid_alive(os.getpid()) is False
