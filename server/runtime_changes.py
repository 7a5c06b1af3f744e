"""DIR/run/settings: the CONFIG SET changes of this server run (server/settings_sync.py
propagates them; every process reads them when it starts, and follows loglevel).

Its own module, apart from the propagation, so that a process that only reads the
file (the snapshotter following loglevel) does not import the router's world (trio,
links, pub/sub) with it (tests/test_process_memory.py)."""

from __future__ import annotations

import fcntl
import json
import logging
import os

from durakv.log.disk import OS_DISK
from durakv.log.durable_file import replace_file
from durakv.log.layout import ensure_run_dir, run_dir

logger = logging.getLogger("durakv.router")

SETTINGS_FILE = "settings"
SETTINGS_LOCK_FILE = "settings.lock"
SETTINGS_FILE_MODE = 0o600
MAX_MESSAGE_BYTES = 1024 * 1024


def settings_path(data_dir: str) -> str:
    return os.path.join(run_dir(data_dir), SETTINGS_FILE)


def load_runtime_changes(data_dir: str) -> dict[str, str]:
    """The CONFIG SET changes made since this server started (name -> value)."""
    path = settings_path(data_dir)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_MESSAGE_BYTES + 1)
    except FileNotFoundError:
        return {}
    try:
        values = json.loads(raw)["values"]
        if not (isinstance(values, dict) and all(isinstance(v, str) for v in values.values())):
            raise ValueError("values must map names to strings")
    except (ValueError, KeyError, TypeError) as e:
        logger.error("router: ignoring unreadable %s: %s", path, e)
        return {}
    return values


def clear_runtime_changes(data_dir: str) -> None:
    """A new server run starts from the configuration file: forget the CONFIG SETs of
    the previous run (called before any router of this run starts)."""
    path = settings_path(data_dir)
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    OS_DISK.fsync_dir(os.path.dirname(path))


def try_lock_runtime_changes(data_dir: str) -> int:
    """Take DIR/run/settings.lock without blocking: the fd to close, or -1 while
    another router holds it (it propagates a CONFIG SET)."""
    directory = ensure_run_dir(data_dir)
    lock_fd = os.open(os.path.join(directory, SETTINGS_LOCK_FILE), os.O_RDWR | os.O_CREAT, SETTINGS_FILE_MODE)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock_fd)
        return -1
    except BaseException:
        os.close(lock_fd)
        raise
    return lock_fd


def store_runtime_changes(data_dir: str, changes: list[tuple[str, str]]) -> dict[str, str]:
    """Merge changes into DIR/run/settings (the caller holds lock_runtime_changes):
    temp file 0600, fsync, rename, fsync the directory. Returns the merged state."""
    ensure_run_dir(data_dir)
    path = settings_path(data_dir)
    values = load_runtime_changes(data_dir)
    values.update(changes)
    data = json.dumps({"values": values}, sort_keys=True).encode()
    replace_file(path, data, mode=SETTINGS_FILE_MODE)
    return values
