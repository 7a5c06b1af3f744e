"""One RDB codec (shards/rdb): a value loads to the same value and encoding
whichever way its RDB bytes arrive, and that is what redis-server 7.0 itself
loads (DEBUG RELOAD is the oracle). The remaining tests pin each point where
DUMP/RESTORE and the snapshot files used to disagree to Redis 7.0's rule."""

from __future__ import annotations

import io
import os
import struct

import pytest
from engine_util import call, new_ctx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from refserver import redis_ref  # noqa: F401

import durakv.shards.commands  # noqa: F401
from durakv.shards.engine import canonical_value
from durakv.shards.keyspace import Keyspace
from durakv.shards.rdb import codec as C
from durakv.shards.rdb.crc64 import crc64
from durakv.shards.rdb.file import default_aux, load_rdb, write_keyspace
from durakv.shards.rdb.packed import intset_encode, lp_encode
from durakv.shards.resp import OK, ReplyError
from durakv.shards.shard_settings import SHARD_DEFAULTS

# Creation thresholds small enough that a few elements leave a sticky encoding,
# which a load with the defaults then re-chooses.
SMALL = {"hash-max-listpack-entries": 4, "hash-max-listpack-value": 8, "set-max-intset-entries": 4,
         "zset-max-listpack-entries": 4, "zset-max-listpack-value": 8}
SCORES = [0.0, -0.0, 1.0, -3.0, 1.5, 0.1, 2.0 ** 52, 2.0 ** 53 + 2, 2.0 ** 62, -(2.0 ** 62), 2.0 ** 63, 1e20,
          float("inf"), float("-inf")]


def score_arg(score: float) -> bytes:
    if score in (float("inf"), float("-inf")):
        return b"inf" if score > 0 else b"-inf"
    return b"%.17g" % score


elements = st.binary(max_size=12)
int_members = st.integers(-2**63, 2**63 - 1).map(lambda i: b"%d" % i)


@st.composite
def key_recipes(draw) -> tuple[dict, list[list[bytes]]]:
    """(creation config, commands building key b"k")."""
    config = draw(st.sampled_from([{}, SMALL]))
    kind = draw(st.sampled_from(["string", "list", "set", "hash", "zset"]))
    if kind == "string":
        return config, [[b"SET", b"k", draw(st.one_of(st.binary(max_size=40), int_members))]]
    if kind == "list":
        return config, [[b"RPUSH", b"k", *draw(st.lists(st.one_of(elements, int_members), min_size=1, max_size=12))]]
    if kind == "set":
        members = draw(st.lists(st.one_of(int_members, elements) if draw(st.booleans()) else int_members,
                                min_size=1, max_size=10, unique=True))
        commands = [[b"SADD", b"k", *members]]
    elif kind == "hash":
        fields = draw(st.lists(elements, min_size=1, max_size=8, unique=True))
        members = fields
        commands = [[b"HSET", b"k", *[x for f in fields for x in (f, draw(elements))]]]
    else:
        members = draw(st.lists(elements, min_size=1, max_size=8, unique=True))
        scores = [draw(st.one_of(st.sampled_from(SCORES), st.floats(allow_nan=False, width=32))) for _ in members]
        commands = [[b"ZADD", b"k", *[x for m, s in zip(members, scores) for x in (score_arg(s), m)]]]
    removed = draw(st.lists(st.sampled_from(members), max_size=len(members) - 1, unique=True))
    if removed:
        commands.append([{"set": b"SREM", "hash": b"HDEL", "zset": b"ZREM"}[kind], b"k", *removed])
    return config, commands


def loaded_state(value: object) -> tuple:
    ctx = new_ctx()
    ctx.db.put(b"k", value)
    return canonical_value(value), call(ctx, "OBJECT", "ENCODING", "k")


def restored_state(payload: bytes) -> tuple:
    ctx = new_ctx()
    assert call(ctx, "RESTORE", "k", 0, payload) is OK
    return loaded_state(ctx.db.get(b"k"))


def rdb_state(data: bytes) -> tuple:
    db = Keyspace()
    load_rdb(io.BytesIO(data), db)
    assert list(db.data) == [b"k"]
    return loaded_state(db.data[b"k"])


def redis_contents(client, kind: bytes) -> object:
    """Redis' value over the wire, in canonical_value's form."""
    if kind == b"string":
        return client.get("k")
    if kind == b"list":
        return client.lrange("k", 0, -1)
    if kind == b"set":
        return sorted(client.smembers("k"))
    if kind == b"hash":
        return sorted(client.hgetall("k").items())
    return sorted(client.zrange("k", 0, -1, withscores=True))


def comparable(kind: bytes, canonical: object) -> object:
    if kind == b"zset":  # Redis prints scores its own way; compare them as numbers
        return sorted((m, float(s)) for m, s in canonical)
    return canonical


@given(key_recipes())
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_dump_snapshot_and_redis_rdb_load_alike(redis_ref, recipe):  # noqa: F811
    config, commands = recipe
    client = redis_ref.client()
    client.flushall()
    live = new_ctx()
    try:
        for name, value in config.items():
            client.config_set(name, value)
            live.shard.settings[name] = value
        for command in commands:
            ours, theirs = call(live, *command), client.execute_command(*command)
            assert not isinstance(ours, ReplyError), (command, ours, theirs)
        assert call(live, "OBJECT", "ENCODING", "k") == client.object("encoding", "k")
        our_dump = call(live, "DUMP", "k")
        their_dump = client.dump("k")
        snapshot = io.BytesIO()
        write_keyspace(snapshot, live.db.data, live.db.expires, default_aux(0))
    finally:
        for name in config:
            client.config_set(name, SHARD_DEFAULTS[name])
    assert client.execute_command("DEBUG", "RELOAD") == b"OK"  # saves dump.rdb, loads it with the defaults
    with open(os.path.join(client.config_get("dir")["dir"], "dump.rdb"), "rb") as f:
        their_rdb = f.read()
    states = {
        "RESTORE of durakv's DUMP": restored_state(our_dump),
        "durakv's snapshot": rdb_state(snapshot.getvalue()),
        "redis-server's RDB": rdb_state(their_rdb),
        "RESTORE of redis-server's DUMP": restored_state(their_dump),
    }
    assert len(set(map(repr, states.values()))) == 1, states
    canonical, encoding = states["durakv's snapshot"]
    kind = client.type("k")
    assert encoding == client.object("encoding", "k")
    assert comparable(kind, canonical) == comparable(kind, redis_contents(client, kind))


# --- the points where the two copies disagreed -------------------------------------


def rdb_file(objects: list[tuple[int, bytes, bytes]], version: int = 10) -> bytes:
    """An RDB holding (type, key, object body) in db 0."""
    data = b"REDIS%04d" % version + b"\xfe\x00"
    for rdb_type, key, body in objects:
        data += bytes((rdb_type,)) + C.encode_string(key) + body
    data += b"\xff"
    return data + struct.pack("<Q", crc64(data))


def payload(rdb_type: int, body: bytes, version: int = 10) -> bytes:
    data = bytes((rdb_type,)) + body + struct.pack("<H", version)
    return data + struct.pack("<Q", crc64(data))


def load(data: bytes) -> Keyspace:
    db = Keyspace()
    load_rdb(io.BytesIO(data), db)
    return db


def test_snapshot_writes_integral_scores_as_redis_does(redis_ref):  # noqa: F811
    """zzlInsertAt stores integral scores within +-LLONG_MAX/2 as integers (the
    snapshot writer used to stop at 2^52): the snapshot's object bytes are
    Redis' DUMP bytes."""
    client = redis_ref.client()
    client.flushall()
    args = ["ZADD", "z", "4503599627370496", "a", "4611686018427387904", "b", "-4611686018427387904", "c",
            "9007199254740994", "d", "9223372036854775807", "e"]
    client.execute_command(*args)
    client.config_set("rdbcompression", "no")
    try:
        theirs = client.dump("z")
    finally:
        client.config_set("rdbcompression", "yes")
    live = new_ctx()
    call(live, *args)
    snapshot = io.BytesIO()
    write_keyspace(snapshot, live.db.data, live.db.expires, default_aux(0))
    data = snapshot.getvalue()
    head = bytes((C.TYPE_ZSET_LISTPACK,)) + C.encode_string(b"z")
    start = data.index(head) + len(head)
    assert bytes((C.TYPE_ZSET_LISTPACK,)) + data[start:-9] == theirs[:-10]


def test_text_scores_are_read_as_strtod_reads_them(redis_ref):  # noqa: F811
    """RDB_TYPE_ZSET text scores: sscanf("%lg") semantics (prefix, hex floats,
    no underscores), not Python's float()."""
    body = C.encode_len(3) + b"".join(C.encode_string(m) + bytes((len(t),)) + t
                                      for m, t in [(b"a", b"1_000"), (b"b", b"0x10"), (b"c", b"2.5abc")])
    client = redis_ref.client()
    client.flushall()
    client.restore("z", 0, payload(C.TYPE_ZSET, body, 9))
    expected = dict(client.zrange("z", 0, -1, withscores=True))
    assert expected == {b"a": 1.0, b"b": 16.0, b"c": 2.5}
    assert load(rdb_file([(C.TYPE_ZSET, b"z", body)], 9)).data[b"z"].scores == expected
    ctx = new_ctx()
    assert call(ctx, "RESTORE", "z", 0, payload(C.TYPE_ZSET, body, 9)) is OK
    assert ctx.db.get(b"z").scores == expected


@pytest.mark.parametrize("case", ["nan score", "duplicate set member", "duplicate zset member",
                                  "duplicate hash field"])
def test_malformed_values_are_refused_by_files_as_by_restore(redis_ref, case):  # noqa: F811
    rdb_type, body = {
        "nan score": (C.TYPE_ZSET_2, C.encode_len(1) + C.encode_string(b"m") + struct.pack("<d", float("nan"))),
        "duplicate set member": (C.TYPE_SET, C.encode_len(2) + C.encode_string(b"a") * 2),
        "duplicate zset member": (C.TYPE_ZSET_2, C.encode_len(2) + (C.encode_string(b"a") + struct.pack("<d", 1)) * 2),
        "duplicate hash field": (C.TYPE_HASH, C.encode_len(2) + C.encode_string(b"f") + C.encode_string(b"1")
                                 + C.encode_string(b"f") + C.encode_string(b"2")),
    }[case]
    client = redis_ref.client()
    client.config_set("sanitize-dump-payload", "yes")  # durakv always validates fully
    try:
        with pytest.raises(Exception, match="Bad data format"):
            client.restore("x", 0, payload(rdb_type, body), replace=True)
    finally:
        client.config_set("sanitize-dump-payload", "no")
    assert isinstance(call(new_ctx(), "RESTORE", "x", 0, payload(rdb_type, body)), ReplyError)
    with pytest.raises(C.RdbError):
        load(rdb_file([(rdb_type, b"x", body)]))


def test_empty_keys_are_skipped_by_files_and_refused_by_restore(redis_ref):  # noqa: F811
    """rdbLoad skips an empty collection (RESTORE refuses it): the file loads
    without the key, where the snapshot reader used to store an empty set."""
    empty = (C.TYPE_SET, b"empty", C.encode_len(0))
    kept = (C.TYPE_STRING, b"kept", C.encode_string(b"v"))
    data = rdb_file([empty, kept])
    client = redis_ref.client()
    client.flushall()
    with open(os.path.join(client.config_get("dir")["dir"], "dump.rdb"), "wb") as f:
        f.write(data)
    assert client.execute_command("DEBUG", "RELOAD", "NOSAVE") == b"OK"
    assert sorted(client.keys()) == [b"kept"]
    assert list(load(data).data) == [b"kept"]
    assert isinstance(call(new_ctx(), "RESTORE", "x", 0, payload(C.TYPE_SET, C.encode_len(0))), ReplyError)


def test_set_listpack_only_in_rdb_11_and_encoded_by_the_thresholds():
    """RDB 11's set listpack (Redis 7.2) loads from a version 11 file with the
    encoding Redis 7.0's rule gives a set of those members; in a version 10
    file, and in a DUMP payload (which may not claim version 11), it is refused."""
    ints = C.encode_string(lp_encode([b"1", b"2", b"3"]))
    words = C.encode_string(lp_encode([b"a", b"1"]))
    db = load(rdb_file([(C.TYPE_SET_LISTPACK, b"ints", ints), (C.TYPE_SET_LISTPACK, b"words", words)], 11))
    assert db.data[b"ints"].intset and sorted(db.data[b"ints"]) == [b"1", b"2", b"3"]
    assert not db.data[b"words"].intset and sorted(db.data[b"words"]) == [b"1", b"a"]
    with pytest.raises(C.RdbError, match="version 11"):
        load(rdb_file([(C.TYPE_SET_LISTPACK, b"ints", ints)], 10))
    assert isinstance(call(new_ctx(), "RESTORE", "x", 0, payload(C.TYPE_SET_LISTPACK, ints)), ReplyError)
    assert isinstance(call(new_ctx(), "RESTORE", "x", 0, payload(C.TYPE_SET_LISTPACK, ints, 11)), ReplyError)


def test_files_choose_encodings_by_the_settings_as_restore_does():
    """A snapshot no longer keeps "whatever the file says": a small hashtable
    hash, a small skiplist zset and an intset over the limit load as RESTORE
    (and Redis) load them."""
    hash_body = C.encode_len(1) + C.encode_string(b"f") + C.encode_string(b"v")
    zset_body = C.encode_len(1) + C.encode_string(b"m") + struct.pack("<d", -0.0)
    intset_body = C.encode_string(intset_encode(list(range(10))))
    objects = [(C.TYPE_HASH, b"h", hash_body), (C.TYPE_ZSET_2, b"z", zset_body), (C.TYPE_SET_INTSET, b"s", intset_body)]
    small = dict(SHARD_DEFAULTS, **{"set-max-intset-entries": 4})
    db = Keyspace()
    load_rdb(io.BytesIO(rdb_file(objects)), db, settings=small)
    ctx = new_ctx()
    ctx.shard.settings.update(small)
    for rdb_type, key, body in objects:
        assert call(ctx, "RESTORE", key, 0, payload(rdb_type, body)) is OK
        assert loaded_state(db.data[key]) == loaded_state(ctx.db.get(key))
    assert loaded_state(db.data[b"h"])[1] == b"listpack"
    assert loaded_state(db.data[b"z"]) == ([(b"m", b"0")], b"listpack")  # zzlInsertAt: -0 is stored as 0
    assert loaded_state(db.data[b"s"])[1] == b"hashtable"


def test_shard_does_not_import_the_snapshotter():
    """DESIGN.md's layering: shards/ never imports snapshotter/."""
    import subprocess
    import sys

    probe = ("import sys, durakv.shards.commands, durakv.shards.rdb.file\n"
             "print(sorted(m for m in sys.modules if m.startswith('durakv.snapshotter') or m == 'numpy'))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
