"""DIR/shard-NNN/FAILED: why a shard cannot start, for the router to report.

A shard that stops for a permanent reason (corrupt log, data dir of another
cluster, snapshot cache that does not fit its log) writes one line here before it
exits with EXIT_PERMANENT; the router shows it in INFO and CLUSTER INFO for the
slots it cannot serve. The shard removes the file once it serves again, so the
file's presence means "down, and this is why"."""

from __future__ import annotations

import logging
import os

from durakv.log.layout import shard_dir, shard_failed_path
from durakv.log.durable_file import replace_file

logger = logging.getLogger("durakv.shard")

REASON_MAX_BYTES = 4096


def record(data_dir: str, shard: int, reason: str) -> None:
    """Write the reason (one line) durably; a failure to write it is logged, not
    raised: the shard is exiting anyway and its stderr line says the same."""
    line = " ".join(reason.split())[:REASON_MAX_BYTES]
    path = shard_failed_path(data_dir, shard)
    try:
        os.makedirs(shard_dir(data_dir, shard), exist_ok=True)
        replace_file(path, (line + "\n").encode())
    except OSError as e:
        logger.error("shard %d: cannot write %s: %s", shard, path, e)


def clear(data_dir: str, shard: int) -> None:
    """The shard serves again: forget the last failure."""
    try:
        os.unlink(shard_failed_path(data_dir, shard))
    except FileNotFoundError:
        pass


def read(data_dir: str, shard: int) -> str:
    """The recorded reason, or "" if the shard did not record a permanent failure."""
    try:
        with open(shard_failed_path(data_dir, shard), errors="replace") as f:
            return f.read(REASON_MAX_BYTES).strip()
    except (FileNotFoundError, NotADirectoryError):
        return ""
