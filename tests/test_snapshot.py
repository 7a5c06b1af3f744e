"""The snapshotter against real processes: durakv servers write the logs, the
`durakv` CLI builds, publishes, restores, imports and exports, a moto server
plays S3, and the expected states come from the live servers (or from a real
redis-server) over the wire."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
import uuid

import pytest
import redis
from refserver import RedisRef
from refserver import dump_keyspace as dump
from snapshot_support import cli, manual_config, small_segment_config, write_every_type

from durakv.log import layout
from durakv.log import Log, LogLocked
from durakv.shards.engine import replay
from durakv.shards.keyspace import Keyspace
from durakv.shards.records import decode_record
from durakv.snapshotter import build as build_mod
from durakv.snapshotter.local import list_local, newest_local
from durakv.shards.rdb.file import load_rdb
from durakv.snapshotter.replay import new_context
from durakv.snapshotter.runner import Snapshotter, read_release
from durakv.snapshotter.s3 import SnapshotStore
from durakv.snapshotter.shard_hooks import load_start_snapshot, release_segments

REDIS_CHECK_RDB = shutil.which("redis-check-rdb")


def shard_seqs(client: redis.Redis) -> dict[int, int]:
    """Each shard's durable seq, from INFO persistence."""
    info = client.info("persistence")
    return {int(k[5:]): v["durable_seq"] for k, v in info.items() if k.startswith("shard") and isinstance(v, dict)}


def load_rdb_bytes(data: bytes) -> Keyspace:
    db = Keyspace()
    load_rdb(io.BytesIO(data), db)
    return db


def redis_dump_of_rdb(tmp_path, rdb_path) -> dict:
    """What a real redis-server 7.0 holds after loading rdb_path."""
    workdir = tmp_path / f"redis-{uuid.uuid4().hex[:6]}"
    workdir.mkdir()
    shutil.copy(rdb_path, workdir / "load.rdb")
    ref = RedisRef(workdir, ("--dbfilename", "load.rdb", "--sanitize-dump-payload", "yes"))
    try:
        return dump(ref.client())
    finally:
        ref.stop()


# --- round trip ------------------------------------------------------------------------


def test_snapshot_round_trip_every_type(server_factory, s3, tmp_path):
    client_s3, bucket, url = s3
    srv = server_factory(shards=2, extra_args=small_segment_config(tmp_path))
    client = srv.client()
    write_every_type(client, "a")
    live = dump(client)
    cli("snapshotter", "--data-dir", str(srv.data_dir), "--snapshot-url", url, "--once")
    listing = cli("snapshots", "list", "--from", url).stdout
    assert listing.count(" yes") == 2, listing
    seqs = shard_seqs(client)
    union = {}
    for shard in range(2):
        prefix = f"cluster/snapshots/{layout.shard_dir_name(shard)}/"
        keys = sorted(o["Key"] for o in client_s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"])
        assert [k.rsplit(".", 1)[1] for k in keys] == ["json", "rdb"]
        manifest = json.loads(client_s3.get_object(Bucket=bucket, Key=keys[0])["Body"].read())
        assert manifest["seq"] == seqs[shard] and manifest["shard"] == shard
        rdb = client_s3.get_object(Bucket=bucket, Key=keys[1])["Body"].read()
        db = load_rdb_bytes(rdb)
        assert len(db.data) == manifest["keys"]
        union.update(db.data)
        if REDIS_CHECK_RDB:
            path = tmp_path / f"shard{shard}.rdb"
            path.write_bytes(rdb)
            check = subprocess.run([REDIS_CHECK_RDB, str(path)], capture_output=True, text=True)
            assert check.returncode == 0 and "RDB looks OK" in check.stdout, check.stdout
    assert set(union) == set(live)
    cli("export-rdb", "--from", url, "-o", str(tmp_path / "all.rdb"))
    assert redis_dump_of_rdb(tmp_path, tmp_path / "all.rdb") == live


def test_snapshot_now_builds_on_previous_snapshot_and_restores(server_factory, s3, tmp_path):
    _, _, url = s3
    srv = server_factory(shards=2, extra_args=small_segment_config(tmp_path))
    client = srv.client()
    write_every_type(client, "a")
    cli("snapshot", "--now", "--data-dir", str(srv.data_dir), "--snapshot-url", url)
    client.delete("a:hash")
    client.lpop("a:list", 3)
    write_every_type(client, "b")
    live = dump(client)
    cli("snapshot", "--now", "--data-dir", str(srv.data_dir), "--snapshot-url", url)
    snapshot = newest_local(layout.shard_dir(srv.data_dir, 0))
    assert snapshot.manifest.parent_seq > 0, "second snapshot was not built on the first"
    restored = tmp_path / "restored"
    out = cli("restore", "--from", url, "--data-dir", str(restored))
    assert "shard 1: seq" in out.stdout
    cli("export-rdb", "--data-dir", str(restored), "-o", str(tmp_path / "restored.rdb"))
    assert redis_dump_of_rdb(tmp_path, tmp_path / "restored.rdb") == live


def test_point_in_time_restore_by_seq(server_factory, s3, tmp_path):
    _, _, url = s3
    srv = server_factory(shards=2, extra_args=small_segment_config(tmp_path))
    client = srv.client()
    write_every_type(client, "a")
    cli("snapshotter", "--data-dir", str(srv.data_dir), "--snapshot-url", url, "--once")
    for i in range(30):
        client.set(f"pit:{i}", i)
    client.delete("a:set")
    target = shard_seqs(client)
    at_target = dump(client)
    for i in range(400):  # later history, enough to seal the segments holding the target
        client.set(f"later:{i}", "z" * 20)
    client.delete("a:zset")
    cli("snapshotter", "--data-dir", str(srv.data_dir), "--snapshot-url", url, "--once")
    restored = tmp_path / "pit"
    seq_args = [f"--seq={shard}={seq}" for shard, seq in target.items()]
    out = cli("restore", "--from", url, "--data-dir", str(restored), *seq_args)
    for shard, seq in target.items():
        assert f"shard {shard}: seq {seq} " in out.stdout
    cli("export-rdb", "--data-dir", str(restored), "-o", str(tmp_path / "pit.rdb"))
    assert redis_dump_of_rdb(tmp_path, tmp_path / "pit.rdb") == at_target


def test_point_in_time_restore_by_time_is_exact_to_the_record(server_factory, s3, tmp_path):
    _, _, url = s3
    srv = server_factory(shards=1, extra_args=small_segment_config(tmp_path))
    client = srv.client()
    write_every_type(client, "a")
    cli("snapshotter", "--data-dir", str(srv.data_dir), "--snapshot-url", url, "--once")
    for i in range(5):  # after the snapshot, in the segment that the writes after `at` continue
        client.set(f"before:{i}", i)
    client.delete("a:set")
    before, (seq_at,) = dump(client), shard_seqs(client).values()
    time.sleep(0.05)
    at = f"{time.time():.3f}"
    time.sleep(0.05)
    client.set("after:0", "z")
    for i in range(400):
        client.set(f"later:{i}", "z" * 20)
    client.delete("a:zset")
    cli("snapshotter", "--data-dir", str(srv.data_dir), "--snapshot-url", url, "--once")
    restored = tmp_path / "at"
    out = cli("restore", "--from", url, "--data-dir", str(restored), "--at", at)
    assert f"shard 0: seq {seq_at} " in out.stdout
    cli("export-rdb", "--data-dir", str(restored), "-o", str(tmp_path / "at.rdb"))
    assert redis_dump_of_rdb(tmp_path, tmp_path / "at.rdb") == before


# --- refusals ----------------------------------------------------------------------------


def test_restore_refuses_corrupted_snapshot_object(server_factory, s3, tmp_path):
    client_s3, bucket, url = s3
    srv = server_factory(shards=1, extra_args=manual_config(tmp_path))
    write_every_type(srv.client(), "a")
    cli("snapshotter", "--data-dir", str(srv.data_dir), "--snapshot-url", url, "--once")
    key = next(o["Key"] for o in client_s3.list_objects_v2(Bucket=bucket)["Contents"] if o["Key"].endswith(".rdb"))
    data = bytearray(client_s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    data[len(data) // 2] ^= 0x40
    client_s3.put_object(Bucket=bucket, Key=key, Body=bytes(data))
    out = cli("restore", "--from", url, "--data-dir", str(tmp_path / "r"), check=False)
    assert out.returncode == 1
    assert "sha256" in out.stderr and "refusing" in out.stderr
    assert not os.path.exists(layout.shard_log_dir(tmp_path / "r", 0))


def test_restore_errors(s3, tmp_path):
    client_s3, bucket, url = s3
    out = cli("restore", "--from", "s3://no-such-bucket-durakv/x", "--data-dir", str(tmp_path / "a"), check=False)
    assert out.returncode == 1 and "does not exist" in out.stderr
    out = cli("restore", "--from", url, "--data-dir", str(tmp_path / "b"), check=False)
    assert out.returncode == 1 and "no snapshot" in out.stderr
    out = cli("snapshots", "list", "--from", url, check=False)
    assert out.returncode == 1 and "no snapshot" in out.stderr


def test_restore_refuses_non_empty_dir_unless_forced(server_factory, s3, tmp_path):
    _, _, url = s3
    srv = server_factory(shards=1, extra_args=manual_config(tmp_path))
    srv.client().set("k", "v")
    cli("snapshotter", "--data-dir", str(srv.data_dir), "--snapshot-url", url, "--once")
    target = tmp_path / "full"
    target.mkdir()
    (target / "something").write_text("mine")
    out = cli("restore", "--from", url, "--data-dir", str(target), check=False)
    assert out.returncode == 1 and "not empty" in out.stderr
    assert (target / "something").exists()
    cli("restore", "--from", url, "--data-dir", str(target), "--force")
    assert not (target / "something").exists()
    assert newest_local(layout.shard_dir(target, 0)).manifest.keys == 1


def test_snapshot_that_does_not_verify_is_never_published(server_factory, s3, tmp_path, monkeypatch):
    client_s3, bucket, url = s3
    srv = server_factory(shards=1, extra_args=manual_config(tmp_path))
    write_every_type(srv.client(), "a")
    real_write = build_mod.write_keyspace

    def corrupting_write(f, data, expires, aux, pace, keys=None, functions=()):
        data = dict(data)
        data[next(iter(data))] = b"not what the log says"
        return real_write(f, data, expires, aux, pace, keys, functions)

    monkeypatch.setattr(build_mod, "write_keyspace", corrupting_write)
    status = Snapshotter(str(srv.data_dir), SnapshotStore(url)).run_once()
    assert status.shards[0].status == "error"
    assert "SnapshotVerifyFailed" in status.shards[0].error
    assert "Contents" not in client_s3.list_objects_v2(Bucket=bucket)
    assert list_local(layout.shard_dir(srv.data_dir, 0)) == []


def test_publish_refuses_local_rdb_changed_after_build(server_factory, s3, tmp_path):
    client_s3, bucket, url = s3
    srv = server_factory(shards=1, extra_args=manual_config(tmp_path))
    srv.client().set("k", "v")
    build_mod.build_snapshot(layout.shard_dir(srv.data_dir, 0), 0, 1)
    snapshot = newest_local(layout.shard_dir(srv.data_dir, 0))
    with open(snapshot.rdb_path, "r+b") as f:
        f.seek(20)
        f.write(b"X")
    status = Snapshotter(str(srv.data_dir), SnapshotStore(url)).run_once()
    assert status.shards[0].status == "error" and "no longer matches" in status.shards[0].error
    assert "Contents" not in client_s3.list_objects_v2(Bucket=bucket)


# --- the shard side: start from snapshot + log tail, drop released segments ----------------


def open_log_after_kill(log_dir: str) -> Log:
    """Log.open once the killed shard process has gone (its flock goes with it)."""
    deadline = time.monotonic() + 15
    while True:
        try:
            return Log.open(log_dir)
        except LogLocked:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_kill9_then_snapshot_plus_log_tail_rebuilds_state(server_factory, s3, tmp_path):
    """A shard's start path (shard_hooks) after kill -9: newest local snapshot,
    released segments dropped, the log after the snapshot replayed."""
    _, _, url = s3
    srv = server_factory(shards=1, extra_args=small_segment_config(tmp_path))
    client = srv.client()
    write_every_type(client, "a")
    for i in range(300):
        client.set(f"pad:{i}", "p" * 30)
    cli("snapshotter", "--data-dir", str(srv.data_dir), "--snapshot-url", url, "--once")
    write_every_type(client, "b")  # the log tail after the snapshot
    client.delete("a:hash")
    live = dump(client)
    srv.kill9()
    shard_dir = layout.shard_dir(srv.data_dir, 0)
    snapshot = newest_local(shard_dir)
    assert read_release(shard_dir) > 0
    ctx = new_context()
    with open_log_after_kill(layout.log_dir_of(shard_dir)) as wal:
        # The live shard drops released segments itself (once a second); whatever
        # it had not dropped yet before the kill goes now.
        before = len(wal.segments())
        dropped = release_segments(shard_dir, wal)
        assert len(wal.segments()) == before - len(dropped)
    with Log.open(layout.log_dir_of(shard_dir)) as wal:
        base = load_start_snapshot(shard_dir, ctx.db, wal)
        assert base == snapshot.manifest.seq
        assert wal.recovery.first_seq > 1, "released segments were not dropped"
        for _seq, _epoch, payload in wal.read(base + 1):
            replay(ctx, decode_record(payload).effects)
    export = tmp_path / "state.rdb"
    from durakv.shards.rdb.file import default_aux, write_keyspace

    with open(export, "wb") as f:
        write_keyspace(f, ctx.db.data, ctx.db.expires, default_aux(0))
    assert redis_dump_of_rdb(tmp_path, export) == live


def test_local_snapshots_release_what_a_snapshot_covers(server_factory, tmp_path):
    """Without a snapshot URL the embedded store keeps no log (a copy on the same
    disk protects nothing), so a published snapshot alone releases the records."""
    srv = server_factory(shards=1, extra_args=small_segment_config(tmp_path))
    client = srv.client()
    for i in range(300):
        client.set(f"k{i}", "v" * 30)
    cli("snapshotter", "--data-dir", str(srv.data_dir), "--once")
    shard_dir = layout.shard_dir(srv.data_dir, 0)
    snapshot = newest_local(shard_dir)
    assert read_release(shard_dir) == snapshot.manifest.seq > 0
    assert os.path.exists(os.path.join(layout.snapshots_dir(srv.data_dir), "snapshots", layout.shard_dir_name(0),
                                       f"{snapshot.manifest.seq:020d}.json"))
    assert not os.path.exists(os.path.join(layout.snapshots_dir(srv.data_dir), "log"))


# --- import ---------------------------------------------------------------------------------


def test_import_rdb_from_redis_server(server_factory, tmp_path):
    workdir = tmp_path / "redis"
    ref = RedisRef(workdir, ("--dbfilename", "dump.rdb"))
    try:
        rc = ref.client()
        write_every_type(rc, "r", n=200)
        rc.set("gone", "soon", px=1)
        rc.xadd("stream", {"f": "v"})
        rc.xgroup_create("stream", "g", id="0")
        rc.xreadgroup("g", "c", {"stream": ">"})
        time.sleep(0.01)
        rc.save()
        want = dump(rc)
    finally:
        ref.stop()
    want.pop(b"gone", None)
    data_dir = tmp_path / "imported"
    cli("import-rdb", str(workdir / "dump.rdb"), "--data-dir", str(data_dir), "--shards", "2")
    srv = server_factory(shards=2, data_dir=data_dir)
    assert dump(srv.client()) == want


# --- priority ----------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux-only")
def test_snapshotter_in_its_own_session_runs_idle_and_lowers_its_autogroup(server_factory, tmp_path):
    srv = server_factory(shards=1, extra_args=manual_config(tmp_path))
    proc = subprocess.Popen([sys.executable, "-m", "durakv.server.cli", "snapshotter", "--data-dir", str(srv.data_dir)],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    autogroup = f"/proc/{proc.pid}/autogroup"
    expected_nice = min(os.getpriority(os.PRIO_PROCESS, 0) + 10, 19)

    def lowered() -> bool:
        autogroup_ok = not os.path.exists(autogroup) or open(autogroup).read().split()[-1] == str(expected_nice)
        return (os.sched_getscheduler(proc.pid) == os.SCHED_IDLE and autogroup_ok
                and os.getpriority(os.PRIO_PROCESS, proc.pid) == expected_nice)

    try:
        deadline = time.monotonic() + 30
        while not lowered() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the snapshotter exited"
        assert os.sched_getscheduler(proc.pid) == os.SCHED_IDLE
        assert os.getpriority(os.PRIO_PROCESS, proc.pid) == expected_nice
        if os.path.exists(autogroup):
            assert open(autogroup).read().split()[-1] == str(expected_nice)
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("others_busy_cpus, rest_share", [(1.8, 0.75), (0.2, 0.0)])
def test_pacer_rests_while_the_machine_is_busy_and_runs_free_while_it_is_idle(monkeypatch, others_busy_cpus,
                                                                             rest_share):
    from durakv.snapshotter import pace

    clock = [0.0]
    slept = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    monkeypatch.setattr(pace.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(pace.time, "sleep", sleep)
    monkeypatch.setattr(pace, "_own_cpu_s", lambda: 0.0)
    monkeypatch.setattr(pace, "_machine_busy_s", lambda: clock[0] * others_busy_cpus)
    pacer = pace.Pacer(25, work_slice_ms=5, cpus=2)

    def work(ms: int) -> tuple[float, float]:
        """(wall seconds, seconds rested) over ms milliseconds of work."""
        started, rested = clock[0], pacer.rested_s
        for _ in range(ms):
            clock[0] += 0.001
            pacer()
        return clock[0] - started, pacer.rested_s - rested

    work(1000)  # the first load samples
    wall_s, rested_s = work(1000)
    assert abs(rested_s / wall_s - rest_share) < 0.01
    assert all(abs(s - 0.015) < 1e-9 for s in slept)
    assert pacer.free_run == (rest_share == 0.0)
    with pytest.raises(ValueError):
        pace.Pacer(0)


def test_snapshotter_refuses_a_cpu_share_outside_1_to_100(tmp_path):
    out = cli("snapshotter", "--data-dir", str(tmp_path), "--once", "--cpu-percent", "0", check=False)
    assert out.returncode == 2 and "must be between 1 and 100" in out.stderr
