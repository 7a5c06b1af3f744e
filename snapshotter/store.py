"""Where snapshots and the archived log are kept: one interface, two backends
(S3 in snapshotter.s3, a local directory in snapshotter.filestore), one layout:

    snapshots/shard-NNN/<seq:020d>.rdb    the RDB
    snapshots/shard-NNN/<seq:020d>.json   its manifest, written last: no manifest, no snapshot
    log/shard-NNN/<first:020d>-<last:020d>.seg   a sealed log segment, byte for byte
    log/shard-NNN/tail/<segment:020d>/<first:020d>-<last:020d>.part
                                          a piece of the active segment `segment`: its
                                          bytes from the end of the previous piece (0 for
                                          the first) through the end of record `last`
    log/shard-NNN/ARCHIVED.json           {"through_seq", "at_ms"}: at at_ms every record
                                          the shard had made durable was archived

Pieces never overlap and concatenate to a prefix of their segment, so restore
reassembles a segment that was never sealed from them; once the sealed segment
is uploaded it supersedes its pieces (restore ignores them; the archiver
deletes them).

Objects carry their sha256 in metadata; an upload is read back and hashed
before anything refers to it, and a download is hashed before it is used. An
object is never overwritten with different content: a name collision (two
histories writing one prefix) is an error, not a silent replacement.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Iterator

from durakv.log.disk import OS_DISK
from durakv.log.durable_file import replace_file
from durakv.snapshotter.local import LocalSnapshot, file_sha256, snapshot_dir
from durakv.snapshotter.manifest import (
    ManifestError,
    SnapshotManifest,
    decode_manifest,
    encode_manifest,
    snapshot_stem,
)
from durakv.snapshotter.errors import SnapshotterError

META_SHA256 = "sha256"
META_LAST_WRITE_MS = "last-write-ms"
MARKER_NAME = "ARCHIVED.json"
_SNAPSHOT_RE = re.compile(r"shard-(\d{3,})/(\d{20})\.(rdb|json)$")
_SEGMENT_RE = re.compile(r"shard-\d{3,}/(\d{20})-(\d{20})\.seg$")
_PIECE_RE = re.compile(r"shard-\d{3,}/tail/(\d{20})/(\d{20})-(\d{20})\.part$")


class StoreError(SnapshotterError):
    """Store trouble, worded for the operator (missing bucket, denied, conflict...)."""


class ChecksumMismatch(StoreError):
    pass


@dataclass(frozen=True)
class RemoteSnapshot:
    manifest: SnapshotManifest
    rdb_key: str
    manifest_key: str
    rdb_size: int | None  # None: the RDB object is missing

    @property
    def complete(self) -> bool:
        """The RDB object exists with the size the manifest names (cheap check;
        the sha256 is checked whenever the RDB is downloaded)."""
        return self.rdb_size == self.manifest.rdb_bytes


@dataclass(frozen=True)
class TailPiece:
    shard: int
    segment_first_seq: int
    first_seq: int
    last_seq: int
    key: str
    size: int


@dataclass(frozen=True)
class RemoteSegment:
    """An archived segment: one sealed object (key), or, for a segment not yet
    sealed, the tail pieces that rebuild its prefix through last_seq."""
    shard: int
    first_seq: int
    last_seq: int
    key: str
    size: int
    pieces: tuple[TailPiece, ...] = field(default=())


@dataclass(frozen=True)
class ArchiveMarker:
    through_seq: int
    at_ms: int


def group_pieces(shard: int, sealed: list[RemoteSegment], pieces: list[TailPiece]) -> list[RemoteSegment]:
    """Sealed segments plus, for each segment with pieces but no sealed object,
    one RemoteSegment made of its contiguous pieces from the segment's start."""
    sealed_firsts = {s.first_seq for s in sealed}
    out = list(sealed)
    by_segment: dict[int, list[TailPiece]] = {}
    for piece in pieces:
        if piece.segment_first_seq not in sealed_firsts:
            by_segment.setdefault(piece.segment_first_seq, []).append(piece)
    for segment_first, group in by_segment.items():
        group.sort(key=lambda p: p.first_seq)
        chain: list[TailPiece] = []
        expected = segment_first
        for piece in group:
            if piece.first_seq != expected:
                raise StoreError(f"{piece.key}: tail piece starts at seq {piece.first_seq}, expected "
                                 f"{expected} (pieces of segment {segment_first} overlap or have a gap)")
            chain.append(piece)
            expected = piece.last_seq + 1
        out.append(RemoteSegment(shard, segment_first, chain[-1].last_seq, chain[-1].key,
                                 sum(p.size for p in chain), tuple(chain)))
    out.sort(key=lambda s: s.first_seq)
    return out


class Store(ABC):
    """The high-level operations on top of a backend's object primitives."""

    url: str
    archives_log: bool = True     # False: the embedded local store keeps snapshots only
    shared: bool = True           # False: the embedded store, under one node's data dir (no other node reads it)
    keep_snapshots: int = 0       # > 0: prune each shard to its newest N snapshots

    # --- backend primitives ----------------------------------------------------------

    @abstractmethod
    def check_bucket(self) -> None:
        ...

    @abstractmethod
    def where(self, key: str) -> str:
        """The object's full name, for messages."""
        ...

    @abstractmethod
    def _head(self, key: str) -> dict[str, str] | None:
        """The object's metadata, or None when it does not exist."""
        ...

    @abstractmethod
    def _list(self, prefix: str) -> list[tuple[str, int]]:
        """(key, size) of every object under prefix."""
        ...

    @abstractmethod
    def _chunks(self, key: str) -> Iterator[bytes]:
        ...

    @abstractmethod
    def _get_bytes(self, key: str) -> bytes | None:
        ...

    @abstractmethod
    def _put_file(self, path: str, key: str, metadata: dict[str, str]) -> None:
        ...

    @abstractmethod
    def _put_bytes(self, key: str, data: bytes, metadata: dict[str, str]) -> None:
        ...

    @abstractmethod
    def _delete(self, key: str) -> None:
        ...

    # --- names ------------------------------------------------------------------------

    prefix: str = ""

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def snapshot_key(self, shard: int, seq: int, ext: str) -> str:
        return self._key("snapshots", f"shard-{shard:03d}", f"{snapshot_stem(seq)}.{ext}")

    def segment_key(self, shard: int, first_seq: int, last_seq: int) -> str:
        return self._key("log", f"shard-{shard:03d}", f"{first_seq:020d}-{last_seq:020d}.seg")

    def piece_key(self, shard: int, segment_first_seq: int, first_seq: int, last_seq: int) -> str:
        return self._key("log", f"shard-{shard:03d}", "tail", f"{segment_first_seq:020d}",
                         f"{first_seq:020d}-{last_seq:020d}.part")

    def marker_key(self, shard: int) -> str:
        return self._key("log", f"shard-{shard:03d}", MARKER_NAME)

    # --- verified transfer --------------------------------------------------------------

    def _read_sha256(self, key: str) -> str:
        """Hash what the store actually holds."""
        h = hashlib.sha256()
        for chunk in self._chunks(key):
            h.update(chunk)
        return h.hexdigest()

    def _check_existing(self, key: str, sha256: str) -> bool:
        """True if key already holds this content; StoreError if it holds other content."""
        meta = self._head(key)
        if meta is None:
            return False
        if meta.get(META_SHA256) == sha256 and self._read_sha256(key) == sha256:
            return True
        raise StoreError(f"{self.where(key)} already exists with different content; "
                         "refusing to overwrite it (is another durakv history using this prefix?)")

    def _verify_stored(self, key: str, sha256: str) -> None:
        stored = self._read_sha256(key)
        if stored != sha256:
            self._delete(key)
            raise ChecksumMismatch(f"{self.where(key)} reads back with sha256 {stored}, "
                                   f"uploaded {sha256}; the object was deleted")

    def _upload_verified(self, path: str, key: str, sha256: str, metadata: dict[str, str]) -> None:
        """Upload a file, then read it back and compare its sha256; an object
        whose content differs is deleted and reported."""
        if self._check_existing(key, sha256):
            return
        self._put_file(path, key, {META_SHA256: sha256, **metadata})
        self._verify_stored(key, sha256)

    def _upload_bytes_verified(self, data: bytes, key: str, metadata: dict[str, str]) -> None:
        sha256 = hashlib.sha256(data).hexdigest()
        if self._check_existing(key, sha256):
            return
        self._put_bytes(key, data, {META_SHA256: sha256, **metadata})
        self._verify_stored(key, sha256)

    def _download_verified(self, key: str, dest: str, sha256: str,
                           on_bytes: Callable[[int], object] | None = None, append: bool = False) -> None:
        """Fetch key into dest (or, with append, onto the end of dest), sha256-checked
        before dest changes."""
        tmp = dest + ".tmp"
        h = hashlib.sha256()
        with open(tmp, "wb") as f:
            for chunk in self._chunks(key):
                h.update(chunk)
                f.write(chunk)
                if on_bytes is not None:
                    on_bytes(len(chunk))
            f.flush()
            os.fsync(f.fileno())
        if h.hexdigest() != sha256:
            os.unlink(tmp)
            raise ChecksumMismatch(f"{self.where(key)} has sha256 {h.hexdigest()}, expected {sha256}: "
                                   "refusing it")
        if append:
            with open(tmp, "rb") as src, open(dest, "ab") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.unlink(tmp)
        else:
            os.rename(tmp, dest)
        OS_DISK.fsync_dir(os.path.dirname(dest))

    # --- snapshots -------------------------------------------------------------------------

    def publish(self, snapshot: LocalSnapshot) -> bool:
        """Store a local snapshot: RDB first (verified by reading it back), the
        manifest last. Returns False when it was already published."""
        m = snapshot.manifest
        manifest_key = self.snapshot_key(m.shard, m.seq, "json")
        existing = self._get_manifest(manifest_key)
        if existing is not None:
            if existing.rdb_sha256 == m.rdb_sha256 and existing.chain == m.chain:
                return False
            raise StoreError(f"{self.where(manifest_key)} already describes a different snapshot "
                             f"at seq {m.seq}; refusing to overwrite it")
        if file_sha256(snapshot.rdb_path) != m.rdb_sha256:
            raise ChecksumMismatch(f"{snapshot.rdb_path} no longer matches its manifest; not publishing it")
        self._upload_verified(snapshot.rdb_path, self.snapshot_key(m.shard, m.seq, "rdb"), m.rdb_sha256,
                              {"durakv-seq": str(m.seq)})
        self._put_bytes(manifest_key, encode_manifest(m), {})
        return True

    def _get_manifest(self, key: str) -> SnapshotManifest | None:
        data = self._get_bytes(key)
        if data is None:
            return None
        try:
            return decode_manifest(data, self.where(key))
        except ManifestError as e:
            raise StoreError(str(e)) from None

    def _snapshot_keys(self, shard: int | None) -> tuple[dict[tuple[int, int], int], list[tuple[int, int, str]]]:
        """Without reading a manifest: RDB sizes by (shard, seq), and the manifests' keys
        as (shard, seq, key) by shard then seq."""
        where = self._key("snapshots", f"shard-{shard:03d}/" if shard is not None else "")
        if shard is None:
            where += "/"
        sizes: dict[tuple[int, int], int] = {}
        manifests: list[tuple[int, int, str]] = []
        for key, size in self._list(where):
            match = _SNAPSHOT_RE.search(key)
            if match is None:
                continue
            ident = (int(match.group(1)), int(match.group(2)))
            if match.group(3) == "rdb":
                sizes[ident] = size
            else:
                manifests.append((*ident, key))
        return sizes, sorted(manifests)

    def _remote(self, shard_no: int, seq: int, key: str, sizes: dict[tuple[int, int], int]) -> RemoteSnapshot | None:
        manifest = self._get_manifest(key)
        if manifest is None:
            return None
        if manifest.shard != shard_no or manifest.seq != seq:
            raise StoreError(f"{self.where(key)} describes shard {manifest.shard} seq "
                             f"{manifest.seq}, not what its name says")
        return RemoteSnapshot(manifest, self.snapshot_key(shard_no, seq, "rdb"), key, sizes.get((shard_no, seq)))

    def list_snapshots(self, shard: int | None = None) -> list[RemoteSnapshot]:
        """Published snapshots (those with a manifest), by shard then seq."""
        sizes, manifests = self._snapshot_keys(shard)
        return [remote for shard_no, seq, key in manifests
                if (remote := self._remote(shard_no, seq, key, sizes)) is not None]

    def newest_snapshot(self, shard: int, known_seq: int = 0) -> RemoteSnapshot | None:
        """A shard's newest published snapshot with its RDB there, read with one listing
        and one manifest; None when there is none, or when it is known_seq (not read again)."""
        sizes, manifests = self._snapshot_keys(shard)
        for shard_no, seq, key in reversed(manifests):
            if seq == known_seq:
                return None
            remote = self._remote(shard_no, seq, key, sizes)
            if remote is not None and remote.complete:
                return remote
        return None

    def prune_snapshots(self, shard: int) -> int:
        """Keep the newest keep_snapshots snapshots of a shard (manifest deleted
        first, so no half snapshot is ever listed); returns how many went."""
        if self.keep_snapshots <= 0:
            return 0
        old = self.list_snapshots(shard)[:-self.keep_snapshots]
        for snapshot in old:
            self.delete_snapshot(snapshot)
        return len(old)

    def delete_snapshot(self, snapshot: RemoteSnapshot) -> None:
        """Remove a published snapshot, manifest first (no half snapshot is ever listed)."""
        self._delete(snapshot.manifest_key)
        self._delete(snapshot.rdb_key)

    def download_snapshot(self, remote: RemoteSnapshot, shard_dir: str,
                          on_bytes: Callable[[int], object] | None = None) -> LocalSnapshot:
        """Fetch a snapshot into the shard's local cache, sha256-checked;
        on_bytes(n) follows the download."""
        directory = snapshot_dir(shard_dir)
        os.makedirs(directory, exist_ok=True)
        m = remote.manifest
        rdb_path = os.path.join(directory, m.rdb_name)
        self._download_verified(remote.rdb_key, rdb_path, m.rdb_sha256, on_bytes)
        manifest_path = os.path.join(directory, snapshot_stem(m.seq) + ".json")
        replace_file(manifest_path, encode_manifest(m))
        return LocalSnapshot(m, rdb_path, manifest_path)

    # --- log archive ---------------------------------------------------------------------

    def archive_segment(self, shard: int, first_seq: int, last_seq: int, path: str,
                        last_write_ms: int) -> None:
        sha256 = file_sha256(path)
        self._upload_verified(path, self.segment_key(shard, first_seq, last_seq), sha256,
                              {META_LAST_WRITE_MS: str(last_write_ms)})

    def archive_piece(self, shard: int, segment_first_seq: int, first_seq: int, last_seq: int,
                      data: bytes, last_write_ms: int) -> TailPiece:
        key = self.piece_key(shard, segment_first_seq, first_seq, last_seq)
        self._upload_bytes_verified(data, key, {META_LAST_WRITE_MS: str(last_write_ms)})
        return TailPiece(shard, segment_first_seq, first_seq, last_seq, key, len(data))

    def list_sealed(self, shard: int) -> list[RemoteSegment]:
        out = []
        for key, size in self._list(self._key("log", f"shard-{shard:03d}/")):
            match = _SEGMENT_RE.search(key)
            if match is not None:
                out.append(RemoteSegment(shard, int(match.group(1)), int(match.group(2)), key, size))
        out.sort(key=lambda s: s.first_seq)
        return out

    def list_pieces(self, shard: int) -> list[TailPiece]:
        out = []
        for key, size in self._list(self._key("log", f"shard-{shard:03d}", "tail/")):
            match = _PIECE_RE.search(key)
            if match is not None:
                out.append(TailPiece(shard, int(match.group(1)), int(match.group(2)), int(match.group(3)),
                                     key, size))
        out.sort(key=lambda p: (p.segment_first_seq, p.first_seq))
        return out

    def delete_pieces(self, pieces: list[TailPiece]) -> None:
        for piece in pieces:
            self._delete(piece.key)

    def list_segments(self, shard: int) -> list[RemoteSegment]:
        """The archived log of a shard in seq order: sealed segments, then the
        segments rebuilt from tail pieces (those not superseded by a sealed one)."""
        return group_pieces(shard, self.list_sealed(shard), self.list_pieces(shard))

    def segment_metadata(self, segment: RemoteSegment) -> dict[str, str]:
        key = segment.pieces[-1].key if segment.pieces else segment.key
        meta = self._head(key)
        if meta is None:
            raise StoreError(f"{self.where(key)} disappeared")
        return meta

    def download_segment(self, segment: RemoteSegment, dest: str,
                         on_bytes: Callable[[int], object] | None = None) -> None:
        parts = segment.pieces or (segment,)
        for i, part in enumerate(parts):
            meta = self._head(part.key)
            sha256 = (meta or {}).get(META_SHA256)
            if not sha256:
                raise StoreError(f"{self.where(part.key)} is missing or carries no sha256; refusing it")
            self._download_verified(part.key, dest, sha256, on_bytes, append=i > 0)

    def write_marker(self, shard: int, marker: ArchiveMarker) -> None:
        self._put_bytes(self.marker_key(shard),
                        json.dumps({"through_seq": marker.through_seq, "at_ms": marker.at_ms}).encode(), {})

    def read_marker(self, shard: int) -> ArchiveMarker | None:
        data = self._get_bytes(self.marker_key(shard))
        if data is None:
            return None
        try:
            doc = json.loads(data)
            return ArchiveMarker(int(doc["through_seq"]), int(doc["at_ms"]))
        except (ValueError, KeyError, TypeError) as e:
            raise StoreError(f"{self.where(self.marker_key(shard))} is unreadable: {e}") from None
