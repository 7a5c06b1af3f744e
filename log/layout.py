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
                              that only the server's own processes may read (shard-NNN.replicas:
                              what each replica applied)
    DIR/snapshotter/          the snapshotter's lock, requests and status
    DIR/snapshots/            the embedded snapshot store (no snapshot URL): same layout as S3

Every process that spells one of these paths takes it from here.
"""

from __future__ import annotations

import os

DEFAULT_DATA_DIR = "./durakv-data"
TOPOLOGY_FILE = "cluster.json"
LOCK_FILE = "LOCK"  # the lock file of a data dir, a shard log dir and the snapshotter dir (log/lock.py)
SHARD_FAILED_FILE = "FAILED"
RUN_DIR = "run"
RUN_DIR_MODE = 0o700
SNAPSHOTS_DIR = "snapshots"
SNAPSHOTTER_DIR = "snapshotter"
SHARD_DIR_PREFIX = "shard-"
LOG_DIR = "log"
SNAPSHOT_DIR = "snapshot"


def shard_dir_name(shard: int) -> str:
    """shard-NNN: a shard's folder in a data dir (and its prefix in a snapshot store)."""
    return f"{SHARD_DIR_PREFIX}{shard:03d}"


def parse_shard_dir_name(name: str) -> int | None:
    """The shard number a shard-NNN folder name stands for, None for any other name."""
    digits = name[len(SHARD_DIR_PREFIX):]
    if name.startswith(SHARD_DIR_PREFIX) and digits.isascii() and digits.isdigit():
        return int(digits)
    return None


def shard_dir(data_dir: str, shard: int) -> str:
    return os.path.join(data_dir, shard_dir_name(shard))


def log_dir_of(shard_dir_path: str) -> str:
    """DIR/shard-NNN/log, given the shard's folder."""
    return os.path.join(shard_dir_path, LOG_DIR)


def snapshot_dir_of(shard_dir_path: str) -> str:
    """DIR/shard-NNN/snapshot (the local snapshot cache), given the shard's folder."""
    return os.path.join(shard_dir_path, SNAPSHOT_DIR)


def replica_bootstrap_dir(shard_dir_path: str, number: int) -> str:
    """Where replica `number` rebuilds its start from the snapshot store when the log
    no longer reaches its local snapshot (snapshotter/shard_hooks.py); removed after."""
    return os.path.join(shard_dir_path, f"replica-{number}.bootstrap")


def shard_log_dir(data_dir: str, shard: int) -> str:
    return log_dir_of(shard_dir(data_dir, shard))


def shard_log_dirs(data_dir: str) -> list[str]:
    """The log directory of every shard the data dir holds, in shard order."""
    if not os.path.isdir(data_dir):
        return []
    shards = sorted(s for s in map(parse_shard_dir_name, os.listdir(data_dir)) if s is not None)
    return [path for path in (shard_log_dir(data_dir, s) for s in shards) if os.path.isdir(path)]


def snapshotter_dir(data_dir: str) -> str:
    """DIR/snapshotter: the snapshotter's lock, requests and status."""
    return os.path.join(data_dir, SNAPSHOTTER_DIR)


def shard_failed_path(data_dir: str, shard: int) -> str:
    return os.path.join(shard_dir(data_dir, shard), SHARD_FAILED_FILE)


def data_dir_lock_path(data_dir: str) -> str:
    return os.path.join(data_dir, LOCK_FILE)


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
    return os.path.join(run_dir(data_dir), shard_dir_name(shard) + ".sock")


def router_socket_path(data_dir: str, router: int) -> str:
    return os.path.join(run_dir(data_dir), f"router-{router:03d}.sock")


def replica_board_path(data_dir: str, shard: int) -> str:
    """Where shard `shard`'s replicas publish what they applied (shards/replica_board.py)."""
    return os.path.join(run_dir(data_dir), shard_dir_name(shard) + ".replicas")


def node_socket_path(data_dir: str, shard: int) -> str:
    """A shard's client port's CONFIG SET control socket (server/settings_sync.py)."""
    return os.path.join(run_dir(data_dir), f"node-{shard:03d}.sock")


def replica_socket_path(data_dir: str, shard: int, number: int) -> str:
    """Replica `number` of shard `shard`: its client port's control socket (CONFIG SET
    and the pub/sub mesh, server/settings_sync.py), as node_socket_path is the primary's."""
    return os.path.join(run_dir(data_dir), f"replica-{shard:03d}-{number}.sock")


def clients_count_path(data_dir: str) -> str:
    """Every router's and shard port's count of connected clients (server/client_count.py)."""
    return os.path.join(run_dir(data_dir), "clients")


def oom_flags_path(data_dir: str) -> str:
    """Each shard's out-of-memory flag, read by routers queueing MULTI (shards/oom_flags.py)."""
    return os.path.join(run_dir(data_dir), "oom")


def snapshots_dir(data_dir: str) -> str:
    """DIR/snapshots: the embedded snapshot store when no snapshot URL is set."""
    return os.path.join(data_dir, SNAPSHOTS_DIR)
