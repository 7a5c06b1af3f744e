"""The snapshotter's memory between builds (issue 11 section 4): a build holds a
shard's whole keyspace, and it runs in a forked child (snapshotter/isolate.py), so
the long-lived snapshotter gives all of it back when the build ends."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from durakv.log.errors import LogCorrupt
from durakv.snapshotter.build import SnapshotVerifyFailed
from durakv.snapshotter.isolate import BuildChildFailed, run_in_child

KEYS = 60_000
VALUE = b"v" * 100
MSET_KEYS = 1000
WAIT_S = 60
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
# 60k keys of 100 B are ~15 MB in a keyspace; kept in the snapshotter (before the
# child) ~10 MB stayed resident after the build. What the parent may grow by:
RETAINED_MAX_BYTES = 4 << 20


def test_run_in_child_returns_built_or_not_and_raises_the_childs_error():
    parent = os.getpid()
    assert run_in_child(lambda: os.getpid() != parent or None) is True
    assert run_in_child(lambda: None) is False

    def fail():
        raise SnapshotVerifyFailed(f"in {os.getpid()}")

    with pytest.raises(SnapshotVerifyFailed) as caught:
        run_in_child(fail)
    assert str(caught.value) != f"in {parent}"

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(BuildChildFailed, match="killed by signal 9"):
        run_in_child(die)


def _snapshotter_pid(srv) -> int:
    """The snapshotter the supervisor started (not a build child, whose title is the same)."""
    out = subprocess.run(["pgrep", "-P", str(srv.proc.pid), "-f", "^durakv snapshotter"],
                         capture_output=True, text=True)
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 1, f"expected one snapshotter, found {pids}"
    return pids[0]


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE_BYTES


def test_snapshotter_holds_no_keyspace_after_a_build(server_factory):
    srv = server_factory(shards=1)
    client = srv.client()
    pid = _snapshotter_pid(srv)
    deadline = time.monotonic() + WAIT_S
    while client.info("persistence")["rdb_bgsave_in_progress"] or not client.lastsave().timestamp():
        assert time.monotonic() < deadline, "the snapshotter's first build did not end"
        time.sleep(0.1)
    empty = _rss_bytes(pid)
    for first in range(0, KEYS, MSET_KEYS):
        client.mset({b"key:%09d" % i: VALUE for i in range(first, first + MSET_KEYS)})
    before = client.lastsave()
    assert client.bgsave() is True
    while client.lastsave() <= before or client.info("persistence")["rdb_bgsave_in_progress"]:
        assert time.monotonic() < deadline + WAIT_S, "BGSAVE was not served"
        time.sleep(0.1)
    grown = _rss_bytes(pid) - empty
    print(f"snapshotter RSS: {empty / 2**20:.1f} MB empty, grown {grown / 2**20:.1f} MB by a build of {KEYS} keys")
    assert grown < RETAINED_MAX_BYTES


def test_a_build_childs_log_error_reaches_the_parent_as_itself():
    """A corrupt log is an operator's problem the snapshotter reports in one line: the
    child's LogCorrupt must arrive as LogCorrupt (not a RuntimeError with a traceback)."""
    def corrupt():
        raise LogCorrupt("shard-000/log/1.seg", 1613, "length exceeds the limit")

    with pytest.raises(LogCorrupt) as caught:
        run_in_child(corrupt)
    assert (caught.value.segment, caught.value.offset_bytes) == ("shard-000/log/1.seg", 1613)
