"""Snapshots and archived log segments in S3 (or MinIO, or a moto server).

Layout under s3://BUCKET/PREFIX:
    snapshots/shard-NNN/<seq:020d>.rdb    the RDB
    snapshots/shard-NNN/<seq:020d>.json   its manifest, written last: no manifest, no snapshot
    log/shard-NNN/<first:020d>-<last:020d>.seg   a sealed log segment, byte for byte

Credentials, region and endpoint come from boto3's standard chain
(AWS_ENDPOINT_URL_S3 points it at a local store). Objects carry their sha256
in metadata; an upload is read back and hashed before anything refers to it,
and a download is hashed before it is used. An object is never overwritten
with different content: a name collision (two histories writing one prefix)
is an error, not a silent replacement.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlparse

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError

from snapshotter.local import LocalSnapshot, file_sha256, snapshot_dir
from snapshotter.manifest import (
    ManifestError,
    SnapshotManifest,
    decode_manifest,
    encode_manifest,
    fsync_dir,
    snapshot_stem,
    write_durably,
)

MULTIPART_THRESHOLD_BYTES = 64 * 1024 * 1024
MULTIPART_CHUNK_BYTES = 64 * 1024 * 1024
READ_CHUNK_BYTES = 1 << 20
META_SHA256 = "sha256"
META_LAST_WRITE_MS = "last-write-ms"
_SNAPSHOT_RE = re.compile(r"shard-(\d{3,})/(\d{20})\.(rdb|json)$")
_SEGMENT_RE = re.compile(r"(\d{20})-(\d{20})\.seg$")


class StoreError(Exception):
    """S3 trouble, worded for the operator (missing bucket, denied, conflict...)."""


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
class RemoteSegment:
    shard: int
    first_seq: int
    last_seq: int
    key: str
    size: int


def parse_url(url: str) -> tuple[str, str]:
    """s3://bucket/prefix -> (bucket, prefix without slashes at the ends)."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise StoreError(f"snapshot URL must look like s3://BUCKET/PREFIX, not {url!r}")
    return parsed.netloc, parsed.path.strip("/")


class SnapshotStore:
    def __init__(self, url: str, *, client=None, server_side_encryption: str | None = None,
                 storage_class: str | None = None,
                 multipart_threshold_bytes: int = MULTIPART_THRESHOLD_BYTES,
                 multipart_chunk_bytes: int = MULTIPART_CHUNK_BYTES) -> None:
        self.url = url
        self.bucket, self.prefix = parse_url(url)
        self.client = client if client is not None else boto3.client("s3")
        self.extra_args: dict[str, str] = {}
        if server_side_encryption:
            self.extra_args["ServerSideEncryption"] = server_side_encryption
        if storage_class:
            self.extra_args["StorageClass"] = storage_class
        self.transfer = TransferConfig(multipart_threshold=multipart_threshold_bytes,
                                       multipart_chunksize=multipart_chunk_bytes)

    # --- names ------------------------------------------------------------------------

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def snapshot_key(self, shard: int, seq: int, ext: str) -> str:
        return self._key("snapshots", f"shard-{shard:03d}", f"{snapshot_stem(seq)}.{ext}")

    def segment_key(self, shard: int, first_seq: int, last_seq: int) -> str:
        return self._key("log", f"shard-{shard:03d}", f"{first_seq:020d}-{last_seq:020d}.seg")

    # --- low level ----------------------------------------------------------------------

    def _call(self, what: str, fn, **kwargs):
        try:
            return fn(**kwargs)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchBucket",) or (code in ("404", "NotFound") and "Key" not in kwargs):
                raise StoreError(f"bucket {self.bucket!r} does not exist ({what})") from None
            if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise StoreError(f"access to s3://{self.bucket} denied ({what}): {e}") from None
            raise
        except BotoCoreError as e:
            raise StoreError(f"cannot reach S3 for {what}: {e}") from None

    def check_bucket(self) -> None:
        self._call("head_bucket", self.client.head_bucket, Bucket=self.bucket)

    def _head(self, key: str) -> dict | None:
        try:
            return self._call(f"head {key}", self.client.head_object, Bucket=self.bucket, Key=key)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def _list(self, prefix: str) -> list[dict]:
        out = []
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                out.extend(page.get("Contents", ()))
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") == "NoSuchBucket":
                raise StoreError(f"bucket {self.bucket!r} does not exist") from None
            raise
        except BotoCoreError as e:
            raise StoreError(f"cannot reach S3 to list {prefix}: {e}") from None
        return out

    def _read_sha256(self, key: str) -> str:
        """Stream the stored object and hash what S3 actually holds."""
        body = self._call(f"get {key}", self.client.get_object, Bucket=self.bucket, Key=key)["Body"]
        h = hashlib.sha256()
        for chunk in body.iter_chunks(READ_CHUNK_BYTES):
            h.update(chunk)
        return h.hexdigest()

    def _upload_verified(self, path: str, key: str, sha256: str, metadata: dict[str, str]) -> None:
        """Upload a file (multipart when large), then read it back and compare
        its sha256; an object whose content differs is deleted and reported."""
        head = self._head(key)
        if head is not None:
            if head.get("Metadata", {}).get(META_SHA256) == sha256 and self._read_sha256(key) == sha256:
                return
            raise StoreError(f"s3://{self.bucket}/{key} already exists with different content; "
                             "refusing to overwrite it (is another durakv history using this prefix?)")
        extra = dict(self.extra_args, Metadata={META_SHA256: sha256, **metadata})
        try:
            self.client.upload_file(path, self.bucket, key, ExtraArgs=extra, Config=self.transfer)
        except (ClientError, BotoCoreError, S3UploadFailedError) as e:
            raise StoreError(f"upload of {path} to s3://{self.bucket}/{key} failed: {e}") from None
        stored = self._read_sha256(key)
        if stored != sha256:
            self.client.delete_object(Bucket=self.bucket, Key=key)
            raise ChecksumMismatch(f"s3://{self.bucket}/{key} reads back with sha256 {stored}, "
                                   f"uploaded {sha256}; the object was deleted")

    def _download_verified(self, key: str, dest: str, sha256: str,
                           on_bytes: Callable[[int], object] | None = None) -> None:
        tmp = dest + ".tmp"
        h = hashlib.sha256()
        body = self._call(f"get {key}", self.client.get_object, Bucket=self.bucket, Key=key)["Body"]
        with open(tmp, "wb") as f:
            for chunk in body.iter_chunks(READ_CHUNK_BYTES):
                h.update(chunk)
                f.write(chunk)
                if on_bytes is not None:
                    on_bytes(len(chunk))
            f.flush()
            os.fsync(f.fileno())
        if h.hexdigest() != sha256:
            os.unlink(tmp)
            raise ChecksumMismatch(f"s3://{self.bucket}/{key} has sha256 {h.hexdigest()}, "
                                   f"expected {sha256}: refusing it")
        os.rename(tmp, dest)
        fsync_dir(os.path.dirname(dest))

    # --- snapshots -------------------------------------------------------------------------

    def publish(self, snapshot: LocalSnapshot) -> bool:
        """Upload a local snapshot: RDB first (verified by reading it back), the
        manifest last. Returns False when it was already published."""
        m = snapshot.manifest
        manifest_key = self.snapshot_key(m.shard, m.seq, "json")
        existing = self._get_manifest(manifest_key)
        if existing is not None:
            if existing.rdb_sha256 == m.rdb_sha256 and existing.chain == m.chain:
                return False
            raise StoreError(f"s3://{self.bucket}/{manifest_key} already describes a different snapshot "
                             f"at seq {m.seq}; refusing to overwrite it")
        if file_sha256(snapshot.rdb_path) != m.rdb_sha256:
            raise ChecksumMismatch(f"{snapshot.rdb_path} no longer matches its manifest; not publishing it")
        self._upload_verified(snapshot.rdb_path, self.snapshot_key(m.shard, m.seq, "rdb"), m.rdb_sha256,
                              {"durakv-seq": str(m.seq)})
        self._call(f"put {manifest_key}", self.client.put_object, Bucket=self.bucket, Key=manifest_key,
                   Body=encode_manifest(m), ContentType="application/json", **self.extra_args)
        return True

    def _get_manifest(self, key: str) -> SnapshotManifest | None:
        try:
            obj = self._call(f"get {key}", self.client.get_object, Bucket=self.bucket, Key=key)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        data = obj["Body"].read()
        try:
            return decode_manifest(data, f"s3://{self.bucket}/{key}")
        except ManifestError as e:
            raise StoreError(str(e)) from None

    def list_snapshots(self, shard: int | None = None) -> list[RemoteSnapshot]:
        """Published snapshots (those with a manifest), by shard then seq."""
        where = self._key("snapshots", f"shard-{shard:03d}/" if shard is not None else "")
        if shard is None:
            where += "/"
        objects = self._list(where)
        sizes: dict[tuple[int, int], int] = {}
        manifests: list[tuple[int, int, str]] = []
        for obj in objects:
            match = _SNAPSHOT_RE.search(obj["Key"])
            if match is None:
                continue
            ident = (int(match.group(1)), int(match.group(2)))
            if match.group(3) == "rdb":
                sizes[ident] = obj["Size"]
            else:
                manifests.append((*ident, obj["Key"]))
        out = []
        for shard_no, seq, key in sorted(manifests):
            manifest = self._get_manifest(key)
            if manifest is None:
                continue
            if manifest.shard != shard_no or manifest.seq != seq:
                raise StoreError(f"s3://{self.bucket}/{key} describes shard {manifest.shard} seq "
                                 f"{manifest.seq}, not what its name says")
            out.append(RemoteSnapshot(manifest, self.snapshot_key(shard_no, seq, "rdb"), key,
                                      sizes.get((shard_no, seq))))
        return out

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
        write_durably(manifest_path, encode_manifest(m))
        return LocalSnapshot(m, rdb_path, manifest_path)

    # --- log archive ---------------------------------------------------------------------

    def archive_segment(self, shard: int, first_seq: int, last_seq: int, path: str,
                        last_write_ms: int) -> None:
        sha256 = file_sha256(path)
        self._upload_verified(path, self.segment_key(shard, first_seq, last_seq), sha256,
                              {META_LAST_WRITE_MS: str(last_write_ms)})

    def list_segments(self, shard: int) -> list[RemoteSegment]:
        out = []
        for obj in self._list(self._key("log", f"shard-{shard:03d}/")):
            match = _SEGMENT_RE.search(obj["Key"])
            if match is not None:
                out.append(RemoteSegment(shard, int(match.group(1)), int(match.group(2)), obj["Key"],
                                         obj["Size"]))
        out.sort(key=lambda s: s.first_seq)
        return out

    def segment_metadata(self, segment: RemoteSegment) -> dict[str, str]:
        head = self._head(segment.key)
        if head is None:
            raise StoreError(f"s3://{self.bucket}/{segment.key} disappeared")
        return head.get("Metadata", {})

    def download_segment(self, segment: RemoteSegment, dest: str,
                         on_bytes: Callable[[int], object] | None = None) -> None:
        meta = self.segment_metadata(segment)
        sha256 = meta.get(META_SHA256)
        if not sha256:
            raise StoreError(f"s3://{self.bucket}/{segment.key} carries no sha256; refusing it")
        self._download_verified(segment.key, dest, sha256, on_bytes)
