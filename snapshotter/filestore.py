"""The local-directory backend of the snapshot store (`file:///PATH`), with the
same layout as S3 (snapshotter.store). An object is a file under the root plus
a `.meta` sidecar holding its metadata, written last: no sidecar, no object.
Every file is written the POSIX-durable way (temp, fsync, rename, fsync dir).

With no snapshot URL the snapshotter keeps its snapshots in such a store under
the data dir (log.layout.snapshots_dir): snapshots only (the shards' segments
are released once a snapshot covers them), pruned to the newest few.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from typing import Iterator
from urllib.parse import urlparse

from durakv.log.disk import OS_DISK
from durakv.log.durable_file import fsync_file, rename_durably, replace_file
from durakv.snapshotter.store import Store, StoreError

META_SUFFIX = ".meta"
READ_CHUNK_BYTES = 1 << 20
# Snapshots the embedded store keeps per shard (restore and `snapshots list` see these).
EMBEDDED_KEEP_SNAPSHOTS = 2


def parse_file_url(url: str) -> str:
    """file:///abs/path -> /abs/path."""
    parsed = urlparse(url)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
        raise StoreError(f"a local snapshot URL must look like file:///ABSOLUTE/PATH, not {url!r}")
    return parsed.path.rstrip("/") or "/"


class LocalStore(Store):
    def __init__(self, root: str, *, archives_log: bool = True, keep_snapshots: int = 0, shared: bool = True) -> None:
        self.root = os.path.abspath(root)
        self.url = "file://" + self.root
        self.prefix = ""
        self.archives_log = archives_log
        self.shared = shared
        self.keep_snapshots = keep_snapshots

    def _path(self, key: str) -> str:
        if key.startswith("/") or ".." in key.split("/"):  # keys come from manifests and listings
            raise StoreError(f"{self.url}: key {key!r} would leave the store's directory")
        return os.path.join(self.root, key)

    def where(self, key: str) -> str:
        return self._path(key)

    def check_bucket(self) -> None:
        if not os.path.isdir(self.root):
            raise StoreError(f"{self.root} does not exist or is not a directory")

    def _head(self, key: str) -> dict[str, str] | None:
        try:
            with open(self._path(key) + META_SUFFIX, "rb") as f:
                meta = json.loads(f.read())
        except FileNotFoundError:
            return None
        return meta if os.path.exists(self._path(key)) else None

    def _list(self, prefix: str) -> list[tuple[str, int]]:
        base, _, _ = prefix.rpartition("/")
        top = self._path(base) if base else self.root
        out = []
        for directory, _dirs, files in os.walk(top):
            names = set(files)
            for name in files:
                if name.endswith(META_SUFFIX) or name.endswith(".tmp") or name + META_SUFFIX not in names:
                    continue
                path = os.path.join(directory, name)
                key = os.path.relpath(path, self.root)
                if key.startswith(prefix):
                    try:
                        out.append((key, os.path.getsize(path)))
                    except FileNotFoundError:
                        continue
        return sorted(out)

    def _chunks(self, key: str) -> Iterator[bytes]:
        try:
            f = open(self._path(key), "rb")
        except FileNotFoundError:
            raise StoreError(f"{self._path(key)} does not exist") from None
        with f:
            while chunk := f.read(READ_CHUNK_BYTES):
                yield chunk

    def _get_bytes(self, key: str) -> bytes | None:
        if self._head(key) is None:
            return None
        with open(self._path(key), "rb") as f:
            return f.read()

    def _put_file(self, path: str, key: str, metadata: dict[str, str]) -> None:
        """A hard link when the source is on the same filesystem (the files put
        here are immutable: built snapshots, sealed segments), else a copy."""
        dest = self._path(key)
        OS_DISK.makedirs(os.path.dirname(dest))  # new directories survive a power cut
        tmp = dest + ".tmp"
        if os.path.exists(tmp):
            os.unlink(tmp)
        try:
            os.link(path, tmp)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
            shutil.copyfile(path, tmp)
            fsync_file(tmp)
        rename_durably(tmp, dest)
        replace_file(dest + META_SUFFIX, json.dumps(metadata).encode())

    def _put_bytes(self, key: str, data: bytes, metadata: dict[str, str]) -> None:
        dest = self._path(key)
        OS_DISK.makedirs(os.path.dirname(dest))  # new directories survive a power cut
        replace_file(dest, data)
        replace_file(dest + META_SUFFIX, json.dumps(metadata).encode())

    def _delete(self, key: str) -> None:
        dest = self._path(key)
        for path in (dest + META_SUFFIX, dest):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        OS_DISK.fsync_dir(os.path.dirname(dest))


def shared_store_url(url: str) -> str:
    """The url a store opened from a configured snapshot URL has (Store.url), without
    opening it; "" for the embedded store (no URL), which no other node shares."""
    if not url:
        return ""
    return "file://" + os.path.abspath(parse_file_url(url)) if url.startswith("file:") else url


def open_store(url: str, data_dir: str | None = None, *, server_side_encryption: str | None = None,
               storage_class: str | None = None) -> Store:
    """The store a URL names: s3://BUCKET/PREFIX, file:///PATH, or (no URL) the
    embedded snapshots-only store under data_dir."""
    if not url:
        if data_dir is None:
            raise StoreError("no snapshot URL given")
        from durakv.log.layout import snapshots_dir

        root = snapshots_dir(data_dir)
        OS_DISK.makedirs(root)
        return LocalStore(root, archives_log=False, keep_snapshots=EMBEDDED_KEEP_SNAPSHOTS, shared=False)
    if url.startswith("file:"):
        return LocalStore(parse_file_url(url))
    from durakv.snapshotter.s3 import SnapshotStore

    return SnapshotStore(url, server_side_encryption=server_side_encryption, storage_class=storage_class)
