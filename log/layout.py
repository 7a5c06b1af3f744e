"""Where things live in a data directory: the one home for its layout.

    DIR/cluster.json          topology (shard count, node id)
    DIR/LOCK                  the data-dir lock (log.lock): held by `durakv serve` and by
                              offline tools that rewrite the data dir
    DIR/shard-NNN/            one shard: log/ (segments, manifest, LOCK), snapshot/,
                              FAILED (why the shard cannot start; removed once it does),
                              durability-journal.jsonl (only with the test hook
                              test-durability-journal: what each sync made durable)
    DIR/run/                  runtime files of a running server, mode 0700: the internal
                              Unix sockets (shard-NNN.sock, router-NNN.sock) and state
                              that only the server's own processes may read
    DIR/snapshotter/          the snapshotter's lock, requests and status
    DIR/snapshots/            the embedded snapshot store (no snapshot URL): same layout as S3

Every process that spells one of these paths takes it from here.
"""

from __future__ import annotations

import os

DEFAULT_DATA_DIR = "./durakv-data"
TOPOLOGY_FILE = "cluster.json"
DATA_DIR_LOCK = "LOCK"
SHARD_FAILED_FILE = "FAILED"
RUN_DIR = "run"
RUN_DIR_MODE = 0o700
SNAPSHOTS_DIR = "snapshots"


def shard_dir(data_dir: str, shard: int) -> str:
    return os.path.join(data_dir, f"shard-{shard:03d}")


def shard_log_dir(data_dir: str, shard: int) -> str:
    return os.path.join(shard_dir(data_dir, shard), "log")


def shard_failed_path(data_dir: str, shard: int) -> str:
    return os.path.join(shard_dir(data_dir, shard), SHARD_FAILED_FILE)


def data_dir_lock_path(data_dir: str) -> str:
    return os.path.join(data_dir, DATA_DIR_LOCK)


def durability_journal_path(data_dir: str, shard: int) -> str:
    return os.path.join(shard_dir(data_dir, shard), "durability-journal.jsonl")


def topology_path(data_dir: str) -> str:
    return os.path.join(data_dir, TOPOLOGY_FILE)


def run_dir(data_dir: str) -> str:
    return os.path.join(data_dir, RUN_DIR)


def ensure_run_dir(data_dir: str) -> str:
    """Create DIR/run with mode 0700 (and tighten it if it exists): it holds the
    internal sockets, which must be closed to other users."""
    path = run_dir(data_dir)
    os.makedirs(path, mode=RUN_DIR_MODE, exist_ok=True)
    if os.stat(path).st_mode & 0o777 != RUN_DIR_MODE:
        os.chmod(path, RUN_DIR_MODE)
    return path


def shard_socket_path(data_dir: str, shard: int) -> str:
    return os.path.join(run_dir(data_dir), f"shard-{shard:03d}.sock")


def router_socket_path(data_dir: str, router: int) -> str:
    return os.path.join(run_dir(data_dir), f"router-{router:03d}.sock")


def snapshots_dir(data_dir: str) -> str:
    """DIR/snapshots: the embedded snapshot store when no snapshot URL is set."""
    return os.path.join(data_dir, SNAPSHOTS_DIR)
