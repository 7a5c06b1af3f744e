"""A shard's local snapshot cache, DIR/shard-NNN/snapshot/: `<seq>.rdb` plus
`<seq>.json` (the manifest, written last). The newest complete pair is what a
shard loads at start before replaying its log from seq + 1."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from durakv.log.disk import OS_DISK
from durakv.log.layout import shard_dir as shard_dir_of  # noqa: F401  (the snapshotter's name for it)
from durakv.log.layout import snapshot_dir_of as snapshot_dir
from durakv.snapshotter.manifest import SnapshotManifest, decode_manifest
from durakv.snapshotter.pace import unpaced
from durakv.snapshotter.errors import SnapshotterError

if TYPE_CHECKING:
    from durakv.shards.keyspace import Keyspace

HASH_CHUNK_BYTES = 1 << 20
_MANIFEST_RE = re.compile(r"^(\d{20})\.json$")
# Snapshots kept in the cache: the newest, plus the one before it while the
# newest is being published.
KEEP_LOCAL = 2


class SnapshotInvalid(SnapshotterError):
    """A snapshot whose RDB does not match its manifest (sha256 or state digest)."""


@dataclass(frozen=True)
class LocalSnapshot:
    manifest: SnapshotManifest
    rdb_path: str
    manifest_path: str


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


def list_local(shard_dir: str) -> list[LocalSnapshot]:
    """Complete local snapshots (manifest present), oldest first."""
    directory = snapshot_dir(shard_dir)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = []
    for name in sorted(names):
        if _MANIFEST_RE.match(name) is None:
            continue
        path = os.path.join(directory, name)
        with open(path, "rb") as f:
            manifest = decode_manifest(f.read(), path)
        found.append(LocalSnapshot(manifest, os.path.join(directory, manifest.rdb_name), path))
    return found


def newest_local(shard_dir: str) -> LocalSnapshot | None:
    found = list_local(shard_dir)
    return found[-1] if found else None


def load_snapshot(snapshot: LocalSnapshot, db: Keyspace, check_digest: bool = False,
                  pace: Callable[[], None] = unpaced) -> None:
    """Load a local snapshot into an empty keyspace after checking the RDB's
    sha256 against the manifest (and, when asked, the resulting state digest).

    The RDB codec and the engine are imported here, not at the top: the idle
    snapshotter lists and publishes snapshots without them (its builds and loads run
    in a forked child, snapshotter/isolate.py), and stays that much smaller."""
    from durakv.shards.rdb.codec import RdbError
    from durakv.shards.rdb.file import load_rdb
    from durakv.snapshotter.digest import state_digest

    manifest = snapshot.manifest
    if not os.path.exists(snapshot.rdb_path):
        raise SnapshotInvalid(f"{snapshot.manifest_path}: its RDB {snapshot.rdb_path} is missing")
    actual = file_sha256(snapshot.rdb_path)
    if actual != manifest.rdb_sha256:
        raise SnapshotInvalid(f"{snapshot.rdb_path}: sha256 {actual} does not match the manifest's "
                              f"{manifest.rdb_sha256}")
    try:
        with open(snapshot.rdb_path, "rb") as f:
            load_rdb(f, db, pace)
    except RdbError as e:
        raise SnapshotInvalid(f"{snapshot.rdb_path}: {e}") from None
    db.changes = max(manifest.changes, 0)  # the log after it adds to this (shards/changes.py)
    if check_digest:
        digest = state_digest(db, pace)
        if digest != manifest.state_digest:
            raise SnapshotInvalid(f"{snapshot.rdb_path}: state digest {digest} does not match the "
                                  f"manifest's {manifest.state_digest}")


def prune_local(shard_dir: str, keep: int = KEEP_LOCAL) -> list[str]:
    """Delete all but the newest `keep` local snapshots, and leftovers of
    interrupted builds (temp files, RDBs without a manifest older than the
    newest manifest). Returns the deleted paths."""
    directory = snapshot_dir(shard_dir)
    snapshots = list_local(shard_dir)
    kept = snapshots[-keep:] if keep else []
    keep_names = {os.path.basename(s.rdb_path) for s in kept} | {os.path.basename(s.manifest_path) for s in kept}
    newest_seq = snapshots[-1].manifest.seq if snapshots else -1
    deleted = []
    for name in os.listdir(directory) if os.path.isdir(directory) else ():
        if name in keep_names:
            continue
        stem = name.split(".", 1)[0]
        stale = name.endswith(".tmp") or (stem.isdigit() and int(stem) <= newest_seq)
        if stale:
            path = os.path.join(directory, name)
            os.unlink(path)
            deleted.append(path)
    if deleted:
        OS_DISK.fsync_dir(directory)
    return deleted
