"""Local snapshots, the embedded default: with no snapshot URL the supervised
snapshotter keeps snapshots under the data dir (DIR/snapshots, the S3 layout),
so the shards drop covered log segments, BGSAVE/LASTSAVE work, and a restart
loads a snapshot plus a short log tail instead of replaying every write."""

from __future__ import annotations

import os
import time

from test_snapshot import cli, dump
from test_snapshot_serve import _wait_for
from durakv.log.layout import shard_log_dir

SEGMENT_BYTES = 4096
EVERY_BYTES = 16384
KEYS = 20


def _log_bytes(data_dir, shards: int) -> int:
    total = 0
    for shard in range(shards):
        log_dir = shard_log_dir(data_dir, shard)
        for name in os.listdir(log_dir):
            try:
                total += os.path.getsize(os.path.join(log_dir, name)) if name.endswith(".seg") else 0
            except FileNotFoundError:
                pass  # dropped meanwhile by the shard
    return total


def test_no_snapshot_url_snapshots_locally_and_bounds_the_log(server_factory, tmp_path):
    config = tmp_path / "local.toml"
    config.write_text(f"segment-size-bytes = {SEGMENT_BYTES}\nsnapshot-every-bytes = {EVERY_BYTES}\n"
                      "snapshot-cpu-percent = 100\n")
    srv = server_factory(shards=2, extra_args=("--config", str(config)))
    client = srv.client()
    before = client.lastsave()
    for round_no in range(150):  # many writes over few keys: the log outgrows the data many times
        pipe = client.pipeline(transaction=False)
        for k in range(KEYS):
            pipe.set(f"k{k}", f"{round_no}:" + "v" * 200)
        pipe.incr("counter")
        pipe.execute()
    written = client.info("persistence")["log_bytes_written"]
    bound = 2 * (EVERY_BYTES + 2 * SEGMENT_BYTES)  # per shard: the unsnapshotted tail plus two segments
    _wait_for(lambda: _log_bytes(srv.data_dir, 2) <= bound, f"the log to shrink below {bound} bytes")
    print(f"log bytes written {written}, on disk {_log_bytes(srv.data_dir, 2)}")
    assert written > 4 * bound
    time.sleep(1.1)  # LASTSAVE has one-second resolution
    assert client.bgsave() is True
    _wait_for(lambda: client.lastsave() > before, "LASTSAVE to advance")
    _wait_for(lambda: client.info("persistence")["rdb_bgsave_in_progress"] == 0, "BGSAVE to be served")
    assert client.info("persistence")["rdb_last_bgsave_status"] == "ok"
    listed = cli("snapshots", "list", "--from", f"file://{srv.data_dir}/snapshots")
    rows = listed.stdout.splitlines()[1:]
    assert {row.split()[0] for row in rows} == {"0", "1"} and len(rows) <= 4  # pruned to two per shard
    client.set("last", "one")
    live = dump(client)
    srv.kill9()
    restarted = server_factory(shards=2, extra_args=("--config", str(config)), data_dir=srv.data_dir)
    assert dump(restarted.client()) == live
    assert "loaded snapshot seq" in restarted.log()


def test_bgsave_with_nothing_new_still_advances_lastsave(server_factory):
    """Redis answers every BGSAVE with a save; when every shard's snapshot already
    holds everything, that snapshot is the save, and LASTSAVE says so."""
    srv = server_factory(shards=2)
    client = srv.client()
    client.set("k", "v")
    before = client.lastsave()
    time.sleep(1.1)  # LASTSAVE has one-second resolution
    client.bgsave()
    _wait_for(lambda: client.lastsave() > before, "the first BGSAVE to be served")
    first = client.lastsave()
    time.sleep(1.1)  # LASTSAVE has one-second resolution
    client.bgsave()  # no write since: nothing new to build
    _wait_for(lambda: client.lastsave() > first, "LASTSAVE to advance for a BGSAVE with nothing new")
    assert client.get("k") == b"v"


def test_snapshot_schedule_follows_the_aof_rewrite_rule(server_factory, tmp_path):
    """snapshot-every-bytes is a minimum: a snapshot is due once the log since the newest
    one reaches max(snapshot-every-bytes, snapshot-every-percent% of its RDB size), as
    Redis' auto-aof-rewrite-min-size/-percentage. So a dataset much larger than the minimum
    is not rewritten after every few KiB, and however much is written the log on disk stays
    within that threshold plus the segments it is dropped in."""
    from durakv.snapshotter.runner import Schedule, Snapshotter, build_threshold_bytes
    from durakv.snapshotter.local import newest_local, shard_dir_of

    every_bytes, percent, keys, value_bytes = SEGMENT_BYTES, 100, 64, 1000
    config = tmp_path / "rule.toml"
    config.write_text(f"segment-size-bytes = {SEGMENT_BYTES}\nsnapshot-every-bytes = {every_bytes}\n"
                      f"snapshot-every-percent = {percent}\nsnapshotter = false\n")
    srv = server_factory(shards=1, extra_args=("--config", str(config)))
    client = srv.client()

    def overwrite(count: int) -> None:
        pipe = client.pipeline(transaction=False)
        for k in range(count):
            pipe.set(f"k{k}", os.urandom(value_bytes // 2).hex())  # incompressible in the RDB
        pipe.execute()

    overwrite(keys)
    runner = Snapshotter(srv.data_dir, None, Schedule(every_bytes=every_bytes, every_percent=percent,
                                                      cpu_percent=100))
    runner.run_once(force=True)
    rdb_bytes = newest_local(shard_dir_of(srv.data_dir, 0)).manifest.rdb_bytes
    threshold = build_threshold_bytes(every_bytes, percent, rdb_bytes)
    assert rdb_bytes > 4 * every_bytes, rdb_bytes  # the percentage, not the minimum, decides here
    overwrite(keys // 8)  # more log than the minimum, far less than the snapshot's size
    assert not runner.due(0), "a snapshot was due after less log than the snapshot's own size"
    rounds = 12
    for _ in range(rounds):
        overwrite(keys)  # about one snapshot's worth of log per round
        runner.run_once(force=False)
    written = client.info("persistence")["log_bytes_written"]
    bound = threshold + 2 * SEGMENT_BYTES
    _wait_for(lambda: _log_bytes(srv.data_dir, 1) <= bound, f"the log to shrink below {bound} bytes")
    print(f"RDB {rdb_bytes} B, threshold {threshold} B; log written {written} B, on disk "
          f"{_log_bytes(srv.data_dir, 1)} B")
    assert written > 4 * bound
    assert runner.status.shards[0].last_seq > 1
