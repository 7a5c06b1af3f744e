"""Exceptions as values: no module keeps an exception instance to raise again
(a shared instance carries the traceback of its last raise, and every frame that
traceback references, until the next one), and the snapshotter's errors share
one base class an operator-facing caller can catch."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import durakv.server
import durakv.shards
import durakv.snapshotter
from durakv.shards.args import ERR_SYNTAX, int_arg
from durakv.shards.resp import ReplyError

PACKAGES = (durakv.shards, durakv.server, durakv.snapshotter)


def all_modules():
    for package in PACKAGES:
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            yield importlib.import_module(info.name)


def test_no_module_keeps_an_exception_instance():
    shared = [f"{module.__name__}.{name}" for module in all_modules()
              for name, value in vars(module).items() if isinstance(value, BaseException)]
    assert shared == []


def traceback_entries(error: BaseException) -> int:
    count = 0
    tb = error.__traceback__
    while tb is not None:
        count += 1
        tb = tb.tb_next
    return count


def test_raising_a_constant_error_makes_a_new_instance():
    caught = []
    for _ in range(100):
        with pytest.raises(ReplyError) as info:
            int_arg(b"not a number")
        caught.append(info.value)
    first, last = caught[0], caught[-1]
    assert first is not last
    # Raising an instance again prepends the new frames to its old traceback: a shared
    # instance's traceback (and the frames it keeps alive) grew with every raise.
    assert traceback_entries(last) == traceback_entries(first) <= 3
    assert first.message == last.message == b"ERR value is not an integer or out of range"
    with pytest.raises(ReplyError) as info:
        raise ERR_SYNTAX
    assert info.value.message == ERR_SYNTAX.message == b"ERR syntax error"


def test_snapshotter_errors_share_one_base():
    from durakv.log.errors import LockHeld
    from durakv.snapshotter.build import SnapshotVerifyFailed
    from durakv.snapshotter.errors import SnapshotterError
    from durakv.snapshotter.local import SnapshotInvalid
    from durakv.snapshotter.manifest import ManifestError
    from durakv.snapshotter.replay import ChainMismatch
    from durakv.snapshotter.restore import RestoreError
    from durakv.snapshotter.runner import SnapshotterBusy
    from durakv.snapshotter.shard_hooks import StartError
    from durakv.snapshotter.store import ChecksumMismatch, StoreError

    for error in (StoreError, ChecksumMismatch, RestoreError, SnapshotInvalid, ChainMismatch, SnapshotVerifyFailed,
                  ManifestError, StartError, SnapshotterBusy):
        assert issubclass(error, SnapshotterError), error
    assert issubclass(SnapshotterBusy, LockHeld)  # still the log's lock error: it names the holder
    assert issubclass(ManifestError, ValueError)
    busy = SnapshotterBusy("snapshotter lock /x", "42", "snapshotter")
    assert str(busy) == "snapshotter lock /x is locked by pid 42 (snapshotter); stop that process first"
