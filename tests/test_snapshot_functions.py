"""Function libraries survive snapshots (issue 12: "Functions are durable ... in
snapshots"): every RDB durakv writes carries them as RDB_OPCODE_FUNCTION2
entries, and every load (shard start, import-rdb, export-rdb loaded by
redis-server) restores the library set. Without that, a snapshot that covers
a FUNCTION LOAD lets the shard drop the log segments holding it, and a restart
loses an acknowledged library."""

from __future__ import annotations

import io

import redis
from refserver import RedisRef
from snapshot_support import cli, small_segment_config
from test_snapshot import shard_seqs
from test_snapshot_serve import _segments, _wait_for

from durakv.log.layout import shard_dir as layout_shard_dir
from durakv.shards.keyspace import Keyspace
from durakv.shards.rdb.file import RdbReader, RdbWriter, default_aux, load_rdb
from durakv.snapshotter.local import newest_local

SHARDS = 2
PAD_ROUNDS = 8  # records per shard after the one to release: a few segments' worth
PAD_KEYS_PER_ROUND = 50
LIB_A = b"#!lua name=liba\nredis.register_function('echo_a', function(keys, args) " \
        b"return redis.call('GET', keys[1]) end)\n"
LIB_B = b"#!lua name=libb\nredis.register_function{function_name='count_b', " \
        b"callback=function(keys, args) return #args end, flags={'no-writes'}}\n"


def _small_segments(tmp_path) -> tuple[str, ...]:
    """Small log segments and local snapshots (no URL): the supervised snapshotter
    builds them, releases covered segments and the shards drop them."""
    path = tmp_path / "functions.toml"
    path.write_text("segment-size-bytes = 4096\n")
    return ("--config", str(path))


def _pad(client: redis.Redis, tag: str) -> None:
    """Fill a few log segments, so the records before fall in sealed segments."""
    for round_no in range(PAD_ROUNDS):
        pipe = client.pipeline(transaction=False)
        for i in range(PAD_KEYS_PER_ROUND):
            pipe.set(f"{tag}:{round_no}:{i}", "p" * 30)
        pipe.execute()


def _first_seq(shard_dir: str) -> int:
    return int(_segments(shard_dir)[0].split(".", 1)[0])


def _snapshot_and_release(srv, through: dict[int, int]) -> None:
    """Snapshot every shard now and wait until each has dropped its log up to
    (at least) the record at seq `through[shard]` (which padding must follow)."""
    cli("snapshot", "--now", "--data-dir", str(srv.data_dir))
    for shard in range(SHARDS):
        shard_dir = layout_shard_dir(srv.data_dir, shard)
        _wait_for(lambda shard_dir=shard_dir, seq=through[shard]: _first_seq(shard_dir) > seq,
                  f"shard {shard} to drop the segments through seq {through[shard]}")


def _libraries(client: redis.Redis) -> list:
    """(name, code) of every library, from FUNCTION LIST WITHCODE's RESP2 reply."""
    libraries = []
    for lib in client.function_list(withcode=True):
        fields = dict(zip(lib[::2], lib[1::2]))
        libraries.append((fields[b"library_name"], fields[b"library_code"]))
    return sorted(libraries)


def _rdb_functions(path: str) -> list[bytes]:
    with open(path, "rb") as f:
        reader = RdbReader(f)
        for _ in reader.entries():
            pass
    return reader.info.functions


def test_function_load_survives_snapshot_release_and_kill9(server_factory, tmp_path):
    args = _small_segments(tmp_path)
    srv = server_factory(shards=SHARDS, extra_args=args)
    client = srv.client()
    assert client.function_load(LIB_A.decode()) == b"liba"
    client.set("k{a}", "va")
    client.set("k{b}", "vb")  # {a} and {b} hash to different shards of two
    mark = shard_seqs(client)
    _pad(client, "pad")
    _snapshot_and_release(srv, mark)
    live = _libraries(client)
    srv.kill9()
    restarted = server_factory(shards=SHARDS, extra_args=args, data_dir=srv.data_dir)
    rc = restarted.client()
    assert "loaded snapshot seq" in restarted.log()
    assert rc.fcall("echo_a", 1, "k{a}") == b"va"
    assert rc.fcall("echo_a", 1, "k{b}") == b"vb"
    assert _libraries(rc) == live
    for shard in range(SHARDS):
        snapshot = newest_local(layout_shard_dir(srv.data_dir, shard))
        assert _rdb_functions(snapshot.rdb_path) == [LIB_A]


def test_snapshot_after_function_flush_carries_only_later_libraries(server_factory, tmp_path):
    args = _small_segments(tmp_path)
    srv = server_factory(shards=SHARDS, extra_args=args)
    client = srv.client()
    client.function_load(LIB_A.decode())
    mark = shard_seqs(client)
    _pad(client, "one")
    _snapshot_and_release(srv, mark)
    assert client.function_flush() is True
    mark = shard_seqs(client)
    _pad(client, "two")
    _snapshot_and_release(srv, mark)
    for shard in range(SHARDS):
        snapshot = newest_local(layout_shard_dir(srv.data_dir, shard))
        assert _rdb_functions(snapshot.rdb_path) == []
    client.function_load(LIB_B.decode())
    mark = shard_seqs(client)
    _pad(client, "three")
    _snapshot_and_release(srv, mark)
    for shard in range(SHARDS):
        snapshot = newest_local(layout_shard_dir(srv.data_dir, shard))
        assert _rdb_functions(snapshot.rdb_path) == [LIB_B]
    srv.kill9()
    restarted = server_factory(shards=SHARDS, extra_args=args, data_dir=srv.data_dir)
    rc = restarted.client()
    assert _libraries(rc) == [(b"libb", LIB_B)]
    assert rc.fcall("count_b", 0, "x", "y") == 2


def test_restore_from_s3_keeps_the_libraries(server_factory, s3, tmp_path):
    _, _, url = s3
    srv = server_factory(shards=SHARDS, extra_args=small_segment_config(tmp_path))
    client = srv.client()
    client.function_load(LIB_A.decode())
    client.set("k{a}", "va")
    cli("snapshotter", "--data-dir", str(srv.data_dir), "--snapshot-url", url, "--once")
    srv.stop()
    restored = tmp_path / "restored"
    cli("restore", "--from", url, "--data-dir", str(restored))
    rc = server_factory(shards=SHARDS, data_dir=restored).client()
    assert _libraries(rc) == [(b"liba", LIB_A)]
    assert rc.fcall("echo_a", 1, "k{a}") == b"va"


def test_import_rdb_of_redis_server_keeps_its_libraries(server_factory, tmp_path):
    workdir = tmp_path / "redis"
    ref = RedisRef(workdir, ("--dbfilename", "dump.rdb"))
    try:
        rc = ref.client(decode_responses=True)
        rc.function_load(LIB_A.decode())
        rc.function_load(LIB_B.decode())
        rc.set("k{a}", "va")
        rc.save()
        want = rc.function_list(withcode=True)
    finally:
        ref.stop()
    data_dir = tmp_path / "imported"
    out = cli("import-rdb", str(workdir / "dump.rdb"), "--data-dir", str(data_dir), "--shards", str(SHARDS))
    assert "function library" not in out.stdout  # not skipped
    srv = server_factory(shards=SHARDS, data_dir=data_dir)
    client = srv.client(decode_responses=True)
    assert sorted(client.function_list(withcode=True), key=str) == sorted(want, key=str)
    for shard in range(SHARDS):  # every shard holds the set: FCALL works wherever its keys route
        assert _libraries(srv.shard_client(shard)) == [(b"liba", LIB_A), (b"libb", LIB_B)]
    assert client.fcall("echo_a", 1, "k{a}") == "va"


def test_export_rdb_loads_into_redis_server_with_its_libraries(server_factory, tmp_path):
    srv = server_factory(shards=SHARDS, extra_args=_small_segments(tmp_path))
    client = srv.client(decode_responses=True)
    client.function_load(LIB_A.decode())
    client.function_load(LIB_B.decode())
    client.set("k{b}", "vb")
    _pad(client, "pad")
    cli("snapshot", "--now", "--data-dir", str(srv.data_dir))  # export = snapshot + log after it
    want = client.function_list(withcode=True)
    srv.stop()
    workdir = tmp_path / "ref"
    workdir.mkdir()
    cli("export-rdb", "--data-dir", str(srv.data_dir), "-o", str(workdir / "load.rdb"))
    assert sorted(_rdb_functions(str(workdir / "load.rdb"))) == [LIB_A, LIB_B]
    ref = RedisRef(workdir, ("--dbfilename", "load.rdb", "--sanitize-dump-payload", "yes"))
    try:
        rc = ref.client(decode_responses=True)
        assert sorted(rc.function_list(withcode=True), key=str) == sorted(want, key=str)
        assert rc.fcall("echo_a", 1, "k{b}") == "vb"
    finally:
        ref.stop()


def _rdb_bytes(functions: list[bytes], keys: dict[bytes, bytes]) -> bytes:
    out = io.BytesIO()
    writer = RdbWriter(out, default_aux(0), functions)
    writer.select_db(0, len(keys), 0)
    for key, value in keys.items():
        writer.write_key(key, value, None)
    writer.finish()
    return out.getvalue()


def test_load_rdb_makes_the_files_libraries_the_whole_set():
    from durakv.shards.t_function import library_codes, restore_libraries  # new with function RDB support

    db = Keyspace()
    restore_libraries(db, [LIB_B])
    load_rdb(io.BytesIO(_rdb_bytes([LIB_A], {b"k": b"v"})), db)
    assert library_codes(db) == [LIB_A] and db.data[b"k"] == b"v"
    load_rdb(io.BytesIO(_rdb_bytes([], {})), db)  # a file without libraries leaves none
    assert library_codes(db) == []


def test_import_rdb_refuses_a_library_set_redis_would_refuse(tmp_path):
    rdb = tmp_path / "twice.rdb"
    rdb.write_bytes(_rdb_bytes([LIB_A, LIB_A], {b"k": b"v"}))
    out = cli("import-rdb", str(rdb), "--data-dir", str(tmp_path / "data"), "--shards", "1", check=False)
    assert out.returncode != 0
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]  # one line, no traceback
    assert "Library 'liba' already exists" in out.stderr
