"""Checks of runtime input are real errors, not `assert` (which python -O drops):
each case here passes a value that comes from disk, a store or a client."""

import subprocess
import sys

import pytest

from durakv.log.disk import MAX_JOURNAL_LINE_BYTES, JournalingDisk
from durakv.shards.slots import slot_ranges
from durakv.snapshotter.filestore import LocalStore
from durakv.snapshotter.store import StoreError


def test_store_key_leaving_its_directory_is_refused(tmp_path):
    store = LocalStore(str(tmp_path / "store"))
    with pytest.raises(StoreError, match="leave the store"):
        store._get_bytes("snapshots/../../etc/passwd")


@pytest.mark.parametrize("shards", [0, 16385])
def test_shard_count_outside_the_slots_is_refused(shards):
    with pytest.raises(ValueError, match="outside 1..16384"):
        slot_ranges(shards)


def test_journal_line_over_the_limit_is_refused(tmp_path):
    directory = tmp_path / "many"
    directory.mkdir()
    name_bytes = 200
    for i in range(MAX_JOURNAL_LINE_BYTES // name_bytes + 10):
        (directory / f"{i:0{name_bytes}d}").touch()
    disk = JournalingDisk(str(tmp_path / "journal.jsonl"))
    try:
        with pytest.raises(OSError, match="over"):
            disk.fsync_dir(str(directory))
    finally:
        disk.close()


def test_the_checks_hold_under_python_O():
    code = ("from durakv.shards.slots import slot_ranges\n"
            "try:\n    slot_ranges(0)\nexcept ValueError:\n    print('refused')\n")
    out = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "refused"
