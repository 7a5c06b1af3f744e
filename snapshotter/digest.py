"""State digest: one sha256 that two keyspaces share exactly when their state
(every key's type, canonical value and absolute expiry, as shards.engine
defines it for the replay == live property) is the same. Snapshots carry it so
that a snapshot can be checked against the replay that produced it, and a
shard or a restore can check the snapshot it loads."""

from __future__ import annotations

import hashlib
from typing import Callable

import msgspec

from durakv.shards.engine import canonical_value
from durakv.shards.keyspace import Keyspace, type_name
from durakv.snapshotter.pace import unpaced

DIGEST_VERSION = 1
_BATCH_KEYS = 1024
_encoder = msgspec.msgpack.Encoder()


def state_digest(db: Keyspace, pace: Callable[[], None] = unpaced) -> str:
    """sha256 (hex) over the keyspace's canonical dump in key order; pace() is
    called for each key."""
    h = hashlib.sha256(b"durakv-state-digest-v%d\n" % DIGEST_VERSION)
    data = db.data
    expires = db.expires
    batch = []
    for key in sorted(data):
        pace()
        value = data[key]
        batch.append((key, type_name(value), canonical_value(value), expires.get(key)))
        if len(batch) >= _BATCH_KEYS:
            h.update(_encoder.encode(batch))
            batch = []
    if batch:
        h.update(_encoder.encode(batch))
    return h.hexdigest()
