"""`durakv serve` with snapshots: the supervised snapshotter, shards that start
from their snapshot and drop released log segments, and a server started on a
restored (or empty, S3-bootstrapped) data directory. Expected states are read
from the live server before it is killed."""

from __future__ import annotations

import os
import time

import pytest

from refserver import dump_keyspace as dump
from snapshot_support import cli, small_segment_config, write_every_type
from durakv.log.layout import log_dir_of, shard_dir as layout_shard_dir

WAIT_S = 60


def _segments(shard_dir: str) -> list[str]:
    return sorted(n for n in os.listdir(log_dir_of(shard_dir)) if n.endswith(".seg"))


def _wait_for(predicate, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_kill9_restart_loads_snapshot_and_log_tail(server_factory, s3, tmp_path):
    _, _, url = s3
    args = (*small_segment_config(tmp_path, manual=False), "--snapshot-url", url)
    srv = server_factory(shards=2, extra_args=args)
    client = srv.client()
    write_every_type(client, "a")
    for i in range(300):
        client.set(f"pad:{i}", "p" * 30)
    cli("snapshot", "--now", "--data-dir", str(srv.data_dir))
    shard_dir = layout_shard_dir(srv.data_dir, 0)
    _wait_for(lambda: _segments(shard_dir)[0] != f"{1:020d}.seg", "shard 0 to drop released segments")
    write_every_type(client, "b")
    client.delete("a:hash")
    live = dump(client)
    srv.kill9()
    restarted = server_factory(shards=2, extra_args=args, data_dir=srv.data_dir)
    assert dump(restarted.client()) == live
    assert "loaded snapshot seq" in restarted.log()


def test_serve_restored_dir_and_bootstrap_from_s3(server_factory, s3, tmp_path):
    _, _, url = s3
    srv = server_factory(shards=2, extra_args=small_segment_config(tmp_path))
    client = srv.client()
    write_every_type(client, "a")
    live = dump(client)
    cli("snapshotter", "--data-dir", str(srv.data_dir), "--snapshot-url", url, "--once")
    srv.stop()
    restored = tmp_path / "restored"
    cli("restore", "--from", url, "--data-dir", str(restored))
    assert dump(server_factory(shards=2, data_dir=restored).client()) == live
    empty = tmp_path / "empty"
    booted = server_factory(shards=2, data_dir=empty, extra_args=("--snapshot-url", url))
    assert dump(booted.client()) == live


def test_bgsave_publishes_a_snapshot_and_lastsave_reports_it(server_factory, s3, tmp_path):
    _, _, url = s3
    config = tmp_path / "pace.toml"
    config.write_text("snapshot-cpu-percent = 50\n")
    srv = server_factory(shards=2, extra_args=("--snapshot-url", url, "--config", str(config)))
    client = srv.client()
    write_every_type(client, "a")
    before = client.lastsave()
    time.sleep(1.1)  # LASTSAVE has one-second resolution
    assert client.bgsave() is True
    assert client.info("persistence")["rdb_bgsave_in_progress"] == 1
    _wait_for(lambda: client.lastsave() > before, "LASTSAVE to report the new snapshot")
    _wait_for(lambda: client.info("persistence")["rdb_bgsave_in_progress"] == 0, "the request to be served")
    info = client.info("persistence")
    assert info["rdb_last_save_time"] == int(client.lastsave().timestamp())
    assert info["rdb_last_bgsave_status"] == "ok"
    assert "builds at most 50% of the time" in srv.log()
    assert info["snapshot_url"] == url
    assert info["snapshot_shard0"]["status"] == "ok" and info["snapshot_shard0"]["records_behind"] == 0
    listed = cli("snapshots", "list", "--from", url)
    assert listed.stdout.splitlines()[0].startswith("SHARD") and len(listed.stdout.splitlines()) == 3


def test_supervised_snapshotter_uploads_with_configured_encryption_and_storage_class(server_factory, s3, tmp_path):
    client_s3, bucket, url = s3
    config = tmp_path / "sse.toml"
    config.write_text(f'snapshot-url = "{url}"\nsnapshot-sse = "AES256"\nsnapshot-storage-class = "STANDARD_IA"\n')
    srv = server_factory(shards=1, extra_args=("--config", str(config)))
    client = srv.client()
    write_every_type(client, "a")
    before = client.lastsave()
    time.sleep(1.1)  # LASTSAVE has one-second resolution
    client.bgsave()
    _wait_for(lambda: client.lastsave() > before, "the supervised snapshotter to publish")
    keys = [o["Key"] for o in client_s3.list_objects_v2(Bucket=bucket, Prefix="cluster/snapshots/")["Contents"]]
    rdb = next(k for k in keys if k.endswith(".rdb"))
    head = client_s3.head_object(Bucket=bucket, Key=rdb)
    assert head["ServerSideEncryption"] == "AES256"
    assert head["StorageClass"] == "STANDARD_IA"
