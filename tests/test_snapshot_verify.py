"""A snapshot's RDB is verified as it streams past (issue 11 §4): written in key
order, it is digested while read back, so the snapshotter never loads a second
copy of a shard's keyspace; an RDB out of key order does not verify."""

from __future__ import annotations

import pytest
from engine_util import call, new_ctx

import durakv.shards.commands  # noqa: F401
from durakv.shards.keyspace import Keyspace
from durakv.shards.rdb.file import default_aux, settle_keyspace, write_keyspace
from durakv.snapshotter import build as build_mod
from durakv.snapshotter.build import SnapshotVerifyFailed
from durakv.snapshotter.digest import state_digest



def write_rdb(path, db: Keyspace, keys: list[bytes]) -> str:
    with open(path, "wb") as f:
        hashing = build_mod._HashingWriter(f)
        write_keyspace(hashing, db.data, db.expires, default_aux(0, {}), keys=keys)
    return hashing.sha256.hexdigest()


def every_type_keyspace() -> Keyspace:
    ctx = new_ctx()
    for i in range(300):
        call(ctx, "SET", b"s:%d" % i, b"v%d" % i)
    call(ctx, "PEXPIREAT", "s:1", 4102444800000)
    call(ctx, "RPUSH", "l", "a", "b", "c")
    call(ctx, "HSET", "h", "f", "v")
    call(ctx, "SADD", "set", "m1", "m2")
    call(ctx, "ZADD", "z", 1, "a", 2, "b")
    call(ctx, "SET", "", "empty key")
    settle_keyspace(ctx.db)
    return ctx.db


def test_verification_streams_without_a_scratch_keyspace(tmp_path, monkeypatch):
    db = every_type_keyspace()
    digest = state_digest(db)
    sha = write_rdb(tmp_path / "s.rdb", db, sorted(db.data))
    made = []

    class CountingKeyspace(Keyspace):
        __slots__ = ()

        def __init__(self) -> None:
            made.append(self)
            super().__init__()

    monkeypatch.setattr(build_mod, "Keyspace", CountingKeyspace)
    build_mod.verify_rdb_file(str(tmp_path / "s.rdb"), sha, digest)
    assert made == [], "verification loaded the RDB into a second keyspace"


def test_rdb_out_of_key_order_does_not_verify(tmp_path):
    db = every_type_keyspace()
    digest = state_digest(db)
    sha = write_rdb(tmp_path / "r.rdb", db, sorted(db.data, reverse=True))
    with pytest.raises(SnapshotVerifyFailed, match="out of order"):
        build_mod.verify_rdb_file(str(tmp_path / "r.rdb"), sha, digest)


def test_rdb_with_other_contents_does_not_verify(tmp_path):
    db = every_type_keyspace()
    digest = state_digest(db)
    db.data[b"s:7"] = b"not what the log says"
    sha = write_rdb(tmp_path / "o.rdb", db, sorted(db.data))
    with pytest.raises(SnapshotVerifyFailed, match="state digest"):
        build_mod.verify_rdb_file(str(tmp_path / "o.rdb"), sha, digest)
