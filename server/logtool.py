"""`durakv log verify|dump`: read shard logs offline (no lock taken, nothing changed)."""

from __future__ import annotations

import glob
import os
import sys

import log as wal
from shards.records import decode_record


def _shard_log_dirs(data_dir: str) -> list[str]:
    return sorted(glob.glob(os.path.join(data_dir, "shard-*", "log")))


def verify_logs(data_dir: str) -> int:
    """Exit status 0 if every shard log verifies, 1 otherwise (torn tails are
    reported but are not damage: recovery truncates them)."""
    dirs = _shard_log_dirs(data_dir)
    if not dirs:
        print(f"no shard logs under {data_dir}", file=sys.stderr)
        return 1
    status = 0
    for path in dirs:
        report = wal.verify(path)
        print(f"{path}: {report}")
        if not report.ok:
            status = 1
    return status


def _render(payload: bytes) -> str:
    record = decode_record(payload)
    return f"@{record.written_at_ms} " + " | ".join(" ".join(repr(arg)[2:-1] for arg in argv)
                                                    for argv in record.effects)


def dump_log(data_dir: str, shard: int, from_seq: int, limit: int | None) -> int:
    path = os.path.join(data_dir, f"shard-{shard:03d}", "log")
    if not os.path.isdir(path):
        print(f"no log at {path}", file=sys.stderr)
        return 1
    try:
        for record in wal.dump(path, from_seq=from_seq, limit=limit, decode=_render):
            print(record)
    except wal.LogCorrupt as e:
        print(str(e), file=sys.stderr)
        return 1
    return 0
