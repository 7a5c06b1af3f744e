"""Redis' dirty count in log records and snapshot manifests (shards/changes.py, issue 15):
a record logs its count only when it is not one per effect, old records and manifests
(without it) read as before, and a keyspace counts only clients' changes."""

from __future__ import annotations

import msgspec
import pytest

from durakv.log.format import PayloadPieces
from durakv.server.save_changes import ChangesSinceSave
from durakv.shards.engine import replay, run_command
from durakv.shards.keyspace import Keyspace
from durakv.shards.records import BIG_EFFECT_ARG_BYTES, decode_record, encode_record, encode_record_pieces
from durakv.snapshotter.manifest import ManifestError, decode_manifest, encode_manifest
from durakv.snapshotter.replay import new_context


def _joined(payload: bytes | PayloadPieces) -> bytes:
    return b"".join(payload.parts) if isinstance(payload, PayloadPieces) else payload


def test_a_record_logs_its_count_only_when_not_one_per_effect():
    effects = [[b"MSET", b"a", b"1", b"b", b"2"]]
    plain = encode_record(5, effects, None, 1)
    assert plain == encode_record(5, effects)  # one per effect: the bytes of before
    assert decode_record(plain).change_count() == 1
    counted = decode_record(encode_record(5, effects, None, 2))
    assert (counted.effects, counted.txns, counted.change_count()) == (effects, [], 2)
    with_txns = decode_record(encode_record(5, effects, [[2, 7]], 0))
    assert (with_txns.txns, with_txns.change_count()) == ([[2, 7]], 0)
    old = msgspec.msgpack.encode((5, [[b"DEL", b"a"], [b"DEL", b"b"]]))  # written before the field
    assert decode_record(old).change_count() == 2


def test_a_record_in_pieces_logs_its_count_alike():
    big = b"x" * BIG_EFFECT_ARG_BYTES
    effects = [[b"SET", b"k", big], [b"DEL", b"gone"]]
    for txns, changes in ((None, 1), ([[4, 9]], 0), (None, 2)):
        pieces = _joined(encode_record_pieces(7, effects, txns, changes))
        assert pieces == encode_record(7, effects, txns, changes)
        record = decode_record(pieces)
        assert (record.effects, record.change_count()) == (effects, changes), (txns, changes)


def test_a_keyspace_counts_clients_changes_not_expiries_or_replay():
    ctx = new_context()
    db = ctx.db
    run_command(ctx, [b"MSET", b"a", b"1", b"b", b"2", b"c", b"3"])
    run_command(ctx, [b"RPUSH", b"l", b"x", b"y"])
    run_command(ctx, [b"DEL", b"a", b"nokey"])
    assert db.changes == 3 + 2 + 1
    db.put(b"old", b"v")
    db.set_expire(b"old", 1)  # long past: the read below expires it, a DEL effect nobody asked for
    assert db.get(b"old") is None and db.effects[-1] == [b"DEL", b"old"]
    assert db.changes == 6
    run_command(ctx, [b"FLUSHALL"])
    assert db.changes == 6 + 3  # b, c and l
    other = Keyspace()
    replay(new_context(other), db.effects)
    assert other.changes == 0  # replay adds what each record logged instead (Shard.replay_record)


def test_an_old_manifest_reads_without_a_count_and_falls_back():
    fields = dict(shard=0, shards=1, slot_ranges=[(0, 16383)], seq=9, epoch=1, chain="0" * 64, parent_seq=0,
                  parent_chain="0" * 64, rdb_name="x.rdb", rdb_bytes=1, rdb_sha256="0", state_digest="0", keys=1,
                  expires=0, records_replayed=9, tail_fixed_at_ms=1, last_record_at_ms=1, created_at_ms=1,
                  build_ms=1)
    old = msgspec.json.encode(fields)
    assert decode_manifest(old, "old").changes == -1
    new = decode_manifest(old, "old")
    new.changes = 12
    assert decode_manifest(encode_manifest(new), "new").changes == 12
    counts = ChangesSinceSave()
    assert counts.count(0, 20, 12, 5, (9, 0)) == 8          # exact: the count since the snapshot
    assert counts.count(1, 20, -1, 5, (9, 0)) == 5          # an old snapshot: effects since first seen
    assert counts.count(1, 20, -1, 7, (10, 0)) == 0         # a newer one seen: counted from here


def test_a_manifest_from_a_later_version_reads_but_not_a_new_format():
    """A node not yet upgraded shares the store with upgraded ones: a field it does not
    know is left aside, while a new format_version is refused rather than misread."""
    fields = dict(shard=0, shards=1, slot_ranges=[(0, 16383)], seq=9, epoch=1, chain="0" * 64, parent_seq=0,
                  parent_chain="0" * 64, rdb_name="x.rdb", rdb_bytes=1, rdb_sha256="0", state_digest="0", keys=1,
                  expires=0, records_replayed=9, tail_fixed_at_ms=1, last_record_at_ms=1, created_at_ms=1,
                  build_ms=1, changes=3, a_later_field={"x": 1})
    assert decode_manifest(msgspec.json.encode(fields), "later").changes == 3
    with pytest.raises(ManifestError, match="unsupported snapshot format_version 2"):
        decode_manifest(msgspec.json.encode({**fields, "format_version": 2}), "newer format")
