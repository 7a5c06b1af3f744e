"""The S3 backend of the snapshot store (or MinIO, or a moto server); the
layout and the verified-transfer rules are snapshotter.store's.

Credentials, region and endpoint come from boto3's standard chain
(AWS_ENDPOINT_URL_S3 points it at a local store).
"""

from __future__ import annotations

from typing import Iterator
from urllib.parse import urlparse

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError

from durakv.snapshotter.store import Store, StoreError

MULTIPART_THRESHOLD_BYTES = 64 * 1024 * 1024
MULTIPART_CHUNK_BYTES = 64 * 1024 * 1024
READ_CHUNK_BYTES = 1 << 20
_MISSING = ("404", "NoSuchKey", "NotFound")


def parse_url(url: str) -> tuple[str, str]:
    """s3://bucket/prefix -> (bucket, prefix without slashes at the ends)."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise StoreError(f"snapshot URL must look like s3://BUCKET/PREFIX, not {url!r}")
    return parsed.netloc, parsed.path.strip("/")


class SnapshotStore(Store):
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

    def where(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

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

    def _head(self, key: str) -> dict[str, str] | None:
        try:
            head = self._call(f"head {key}", self.client.head_object, Bucket=self.bucket, Key=key)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in _MISSING:
                return None
            raise
        return head.get("Metadata", {})

    def _list(self, prefix: str) -> list[tuple[str, int]]:
        out = []
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                out.extend((obj["Key"], obj["Size"]) for obj in page.get("Contents", ()))
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") == "NoSuchBucket":
                raise StoreError(f"bucket {self.bucket!r} does not exist") from None
            raise
        except BotoCoreError as e:
            raise StoreError(f"cannot reach S3 to list {prefix}: {e}") from None
        return out

    def _chunks(self, key: str) -> Iterator[bytes]:
        body = self._call(f"get {key}", self.client.get_object, Bucket=self.bucket, Key=key)["Body"]
        try:
            yield from body.iter_chunks(READ_CHUNK_BYTES)
        except BotoCoreError as e:
            raise StoreError(f"reading s3://{self.bucket}/{key} failed: {e}") from None

    def _get_bytes(self, key: str) -> bytes | None:
        try:
            obj = self._call(f"get {key}", self.client.get_object, Bucket=self.bucket, Key=key)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in _MISSING:
                return None
            raise
        return obj["Body"].read()

    def _put_file(self, path: str, key: str, metadata: dict[str, str]) -> None:
        extra = dict(self.extra_args, Metadata=metadata)
        try:
            self.client.upload_file(path, self.bucket, key, ExtraArgs=extra, Config=self.transfer)
        except (ClientError, BotoCoreError, S3UploadFailedError) as e:
            raise StoreError(f"upload of {path} to s3://{self.bucket}/{key} failed: {e}") from None

    def _put_bytes(self, key: str, data: bytes, metadata: dict[str, str]) -> None:
        self._call(f"put {key}", self.client.put_object, Bucket=self.bucket, Key=key, Body=data,
                   Metadata=metadata, **self.extra_args)

    def _delete(self, key: str) -> None:
        self._call(f"delete {key}", self.client.delete_object, Bucket=self.bucket, Key=key)
