"""State digest: one sha256 that two keyspaces share exactly when their state
(every key's type, canonical value and absolute expiry, as shards.engine
defines it for the replay == live property, and the function libraries) is
the same. A state without libraries digests as it did before libraries were
part of it, so older manifests still check. Snapshots carry it so
that a snapshot can be checked against the replay that produced it, and a
shard or a restore can check the snapshot it loads."""

from __future__ import annotations

import hashlib
from typing import Callable, Iterable

import msgspec

from durakv.shards.engine import canonical_value
from durakv.shards.keyspace import Keyspace, type_name
from durakv.shards.t_function import library_codes
from durakv.snapshotter.pace import unpaced

DIGEST_VERSION = 1
_BATCH_KEYS = 1024
_encoder = msgspec.msgpack.Encoder()


def state_digest(db: Keyspace, pace: Callable[[], None] = unpaced) -> str:
    """sha256 (hex) over the keyspace's canonical dump in key order and its
    function libraries; pace() is called for each key."""
    data = db.data
    get_expire = db.expires.get
    keys = ordered_digest(((key, data[key], get_expire(key)) for key in sorted(data)), pace)
    return with_libraries(keys, library_codes(db))


def with_libraries(keys_digest: str, codes: Iterable[bytes]) -> str:
    """Fold a library set (each library's code, in any order) into the digest
    of the keys (ordered_digest); no libraries leave it unchanged."""
    ordered = sorted(codes)
    if not ordered:
        return keys_digest
    h = hashlib.sha256(b"durakv-libraries-v%d\n" % DIGEST_VERSION)
    h.update(bytes.fromhex(keys_digest))
    h.update(_encoder.encode(ordered))
    return h.hexdigest()


def ordered_digest(entries: Iterable[tuple[bytes, object, int | None]],
                   pace: Callable[[], None] = unpaced) -> str:
    """state_digest of the keyspace holding `entries` (key, value, absolute expiry
    or None), which come in strictly increasing key order: so a snapshot's RDB,
    written in key order, is digested as it streams past, without loading it.
    Raises ValueError on a key out of order (or repeated)."""
    h = hashlib.sha256(b"durakv-state-digest-v%d\n" % DIGEST_VERSION)
    batch = []
    previous: bytes | None = None
    for key, value, expire in entries:
        pace()
        if previous is not None and key <= previous:
            raise ValueError(f"key {key[:64]!r} is not after {previous[:64]!r}")
        previous = key
        batch.append((key, type_name(value), canonical_value(value), expire))
        if len(batch) >= _BATCH_KEYS:
            h.update(_encoder.encode(batch))
            batch = []
    if batch:
        h.update(_encoder.encode(batch))
    return h.hexdigest()
