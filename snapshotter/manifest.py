"""The JSON manifest that makes a snapshot exist. An RDB without its manifest
is not a snapshot: the manifest is written (locally and in S3) only after the
RDB is in place and verified, so readers list manifests, never RDB files."""

from __future__ import annotations

import msgspec

from durakv.snapshotter.errors import SnapshotterError

FORMAT_VERSION = 1
ENGINE = "durakv 0.1.0"
MAX_MANIFEST_BYTES = 64 * 1024


class ManifestError(SnapshotterError, ValueError):
    pass


class SnapshotManifest(msgspec.Struct, kw_only=True):
    """Fields a later durakv adds are ignored (a node being upgraded shares the store
    with nodes not yet upgraded: `changes` was such a field); a change that older
    readers must not misread takes a new format_version, which they refuse."""

    format_version: int = FORMAT_VERSION
    engine: str = ENGINE
    shard: int
    shards: int
    slot_ranges: list[tuple[int, int]]
    seq: int                    # every log record <= seq is in the snapshot, none after
    epoch: int                  # lease epoch of record `seq` (0 when seq is 0)
    chain: str                  # log-chain checksum through seq (snapshotter.replay.chain_step)
    parent_seq: int             # the snapshot this one was built on (0: built from an empty keyspace)
    parent_chain: str
    rdb_name: str
    rdb_bytes: int
    rdb_sha256: str
    state_digest: str           # snapshotter.digest.state_digest of the keyspace at seq
    keys: int
    expires: int
    records_replayed: int       # records applied on top of the parent
    tail_fixed_at_ms: int       # wall clock when seq was fixed: every record <= seq was written before
    last_record_at_ms: int      # written_at_ms of record seq (shards.records; 0 when seq is 0)
    created_at_ms: int
    build_ms: int
    # Redis' dirty count through seq, cumulative over the shard's history (shards/changes.py):
    # INFO's rdb_changes_since_last_save is a shard's count now minus its newest snapshot's.
    # -1: written before the count existed (read as 0 by whoever loads the snapshot).
    changes: int = -1


_encoder = msgspec.json.Encoder()


def encode_manifest(manifest: SnapshotManifest) -> bytes:
    return msgspec.json.format(_encoder.encode(manifest), indent=2) + b"\n"


def decode_manifest(data: bytes, where: str) -> SnapshotManifest:
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{where}: manifest larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        manifest = msgspec.json.decode(data, type=SnapshotManifest)
    except msgspec.DecodeError as e:
        raise ManifestError(f"{where}: unreadable snapshot manifest: {e}") from None
    if manifest.format_version != FORMAT_VERSION:
        raise ManifestError(f"{where}: unsupported snapshot format_version {manifest.format_version}")
    return manifest


def snapshot_stem(seq: int) -> str:
    """File name stem of the snapshot at seq: 20 digits, so names sort by seq."""
    return f"{seq:020d}"

