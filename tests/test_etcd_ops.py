"""Operating the log on etcd: a new machine starts from the snapshot store when etcd
no longer holds the log's start, the offline tools read etcd logs, and truncation
keeps etcd's size bounded."""

from __future__ import annotations

import shutil
import uuid

from conftest import DurakvServer
from snapshot_support import cli, write_every_type
from test_etcd_backend import etcd_config
from test_snapshot import dump, redis_dump_of_rdb
from test_snapshot_serve import _wait_for

from durakv.log import layout
from durakv.log.etcd_client import EtcdClient, b64, unb64
from durakv.log.etcd_log import EtcdLog
from durakv.log.etcd_records import Keys, first_seq, last_seq, read_published, shard_prefix
from durakv.log.etcd_upkeep import member_sizes
from durakv.shards.log_backend import record_shard_count
from durakv.snapshotter.filestore import open_store
from durakv.snapshotter.local import newest_local
from durakv.shards.exit_codes import EXIT_PERMANENT

SNAPSHOT_OFTEN = "snapshot-every-bytes = 8192\nsnapshot-every-percent = 0\nsnapshot-cpu-percent = 100\n"
EXIT_WAIT_S = 60
CYCLES = 5
BURST_KEYS = 200
BURST_VALUE_BYTES = 20_000


def write_rounds(client, rounds: int, tag: str = "") -> None:
    for round_no in range(rounds):
        pipe = client.pipeline(transaction=False)
        for k in range(20):
            pipe.set(f"{tag}k{k}", f"{round_no}:" + "v" * 200)
        pipe.incr(f"{tag}counter")
        pipe.execute()


def dropped_on_etcd(etcd: EtcdClient, prefix: str, shards: int) -> bool:
    return all(first_seq(etcd, shard_prefix(prefix, i)) > 1 for i in range(shards))


def test_a_new_data_dir_starts_from_s3_when_etcd_dropped_the_log_start(etcd_cluster, s3, server_factory,
                                                                       tmp_path):
    """The records before seq X are gone from etcd (a snapshot covers them): a tree on a
    fresh data dir (another machine) fetches the newest published snapshot from S3 and
    replays the records on etcd after it, ending with exactly the state the first tree had."""
    _, _, url = s3
    prefix = f"boot-{uuid.uuid4().hex[:8]}"
    config = etcd_config(tmp_path, etcd_cluster.endpoints, prefix, f'snapshot-url = "{url}"\n' + SNAPSHOT_OFTEN)
    srv = server_factory(shards=2, extra_args=("--config", config))
    client = srv.client()
    write_rounds(client, 40)
    etcd = EtcdClient(etcd_cluster.endpoints)
    _wait_for(lambda: dropped_on_etcd(etcd, prefix, 2), "both shards to drop records a snapshot covers from etcd")
    write_rounds(client, 3, "after:")  # records on etcd after the snapshot
    live = dump(client)
    starts = [first_seq(etcd, shard_prefix(prefix, i)) for i in range(2)]
    print(f"etcd's logs start at seqs {starts}, end at {[last_seq(etcd, shard_prefix(prefix, i)) for i in range(2)]}")
    srv.kill9()

    elsewhere = server_factory(shards=2, extra_args=("--config", config), data_dir=tmp_path / "new-machine")
    assert dump(elsewhere.client()) == live
    assert "fetching snapshot seq" in elsewhere.log()


def test_a_new_data_dir_without_a_covering_snapshot_fails_with_one_line(etcd_cluster, s3, server_factory,
                                                                        tmp_path):
    """The same, but the snapshot URL names a store that holds nothing of this log: the
    shard does not start, says in one line what is missing and how to fix it, and is
    not restarted in a loop."""
    _, bucket, url = s3
    prefix = f"gap-{uuid.uuid4().hex[:8]}"
    config = etcd_config(tmp_path, etcd_cluster.endpoints, prefix, f'snapshot-url = "{url}"\n' + SNAPSHOT_OFTEN)
    srv = server_factory(shards=1, extra_args=("--config", config))
    write_rounds(srv.client(), 40)
    etcd = EtcdClient(etcd_cluster.endpoints)
    _wait_for(lambda: dropped_on_etcd(etcd, prefix, 1), "the shard to drop records a snapshot covers from etcd")
    srv.kill9()

    empty_store = f"s3://{bucket}/nothing-here"
    wrong = etcd_config(tmp_path, etcd_cluster.endpoints, prefix, f'snapshot-url = "{empty_store}"\n')
    other = DurakvServer(tmp_path / "new-machine", shards=1, extra_args=("--config", wrong))
    other.start(wait=False)
    try:
        assert other.proc.wait(EXIT_WAIT_S) == EXIT_PERMANENT
        lines = [line for line in other.log().splitlines() if "cannot start" in line]
        print(lines)
        assert len(lines) == 1
        assert (f"holds no snapshot of shard 0 through seq {first_seq(etcd, shard_prefix(prefix, 0)) - 1}"
                in lines[0]), lines
        assert "set snapshot-url" in lines[0] and empty_store in lines[0]
        assert "Traceback" not in other.log()
    finally:
        other.discard()


def config_with_data_dir(tmp_path, endpoints: list[str], prefix: str, url: str, data_dir, extra: str = "") -> str:
    """A config file as an operator's tools read it: the data dir and store named in it."""
    return etcd_config(tmp_path, endpoints, prefix, f'snapshot-url = "{url}"\ndata-dir = "{data_dir}"\n{extra}')


def test_log_verify_dump_and_export_rdb_read_the_log_on_etcd(etcd_cluster, s3, server_factory, tmp_path):
    """`durakv log verify|dump` and `export-rdb` with --config read the shard logs on etcd:
    verify checks every record from the first retained one, dump prints them, export-rdb
    writes the whole dataset (from a data dir without a snapshot: the store's newest, plus
    etcd's records after it) as redis-server loads it; a gap on etcd fails verify."""
    _, _, url = s3
    prefix = f"tools-{uuid.uuid4().hex[:8]}"
    config = etcd_config(tmp_path, etcd_cluster.endpoints, prefix, f'snapshot-url = "{url}"\n' + SNAPSHOT_OFTEN)
    srv = server_factory(shards=2, extra_args=("--config", config))
    client = srv.client()
    write_every_type(client, "t")
    write_rounds(client, 40)
    etcd = EtcdClient(etcd_cluster.endpoints)
    _wait_for(lambda: dropped_on_etcd(etcd, prefix, 2), "both shards to drop records a snapshot covers from etcd")
    write_rounds(client, 3, "after:")
    live = dump(client)
    srv.kill9()
    tools = config_with_data_dir(tmp_path, etcd_cluster.endpoints, prefix, url, tmp_path / "elsewhere")
    firsts = [first_seq(etcd, shard_prefix(prefix, i)) for i in range(2)]
    lasts = [last_seq(etcd, shard_prefix(prefix, i)) for i in range(2)]

    out = cli("log", "verify", "--config", tools)
    lines = out.stdout.splitlines()
    assert len(lines) == 2, out.stdout
    for i, line in enumerate(lines):
        assert line.startswith(f"etcd:{shard_prefix(prefix, i)}: {lasts[i] - firsts[i] + 1} records, "
                               f"seq {firsts[i]}..{lasts[i]}") and line.endswith(": ok"), line
    out = cli("log", "dump", "--config", tools, "--shard", "1", "--limit", "2")
    shown = out.stdout.splitlines()
    assert len(shown) == 2 and shown[0].startswith(f"seq={firsts[1]} epoch="), shown
    assert f"key={shard_prefix(prefix, 1)}/log/" in shown[0]

    cli("export-rdb", "--config", tools, "-o", str(tmp_path / "all.rdb"))
    assert redis_dump_of_rdb(tmp_path, tmp_path / "all.rdb") == live

    middle = (firsts[0] + lasts[0]) // 2
    etcd.txn([], [{"request_delete_range": {"key": b64(Keys(shard_prefix(prefix, 0).encode()).record(middle))}}], [])
    out = cli("log", "verify", "--config", tools, check=False)
    assert out.returncode == 1
    assert "CORRUPT" in out.stdout, out.stdout
    assert f"jumps from seq {middle - 1} to {middle + 1}" in out.stdout, out.stdout


def test_restore_on_etcd_is_fenced_point_in_time_and_rebuilds_a_lost_etcd(etcd_cluster, s3, server_factory,
                                                                          tmp_path):
    """restore --config with the logs on etcd: refused while a primary holds the shard's
    leader key; to a seq before etcd's end only with --force (the later records are
    deleted from etcd, fenced, with P/published, which named a discarded snapshot); the
    restored tree serves exactly the state at that seq.
    Into a new etcd prefix (etcd lost), the store's newest snapshot becomes the start."""
    _, _, url = s3
    prefix = f"restore-{uuid.uuid4().hex[:8]}"
    short_lease = "etcd-lease-ttl-s = 2\n"
    config = etcd_config(tmp_path, etcd_cluster.endpoints, prefix,
                         f'snapshot-url = "{url}"\nsnapshotter = false\n' + short_lease)
    srv = server_factory(shards=1, extra_args=("--config", config))
    client = srv.client()
    write_rounds(client, 40)
    etcd = EtcdClient(etcd_cluster.endpoints)
    cli("snapshotter", "--once", "--config",
        config_with_data_dir(tmp_path, etcd_cluster.endpoints, prefix, url, srv.data_dir))
    _wait_for(lambda: dropped_on_etcd(etcd, prefix, 1), "the shard to drop records a snapshot covers from etcd")
    write_rounds(client, 2, "kept:")
    target = last_seq(etcd, shard_prefix(prefix, 0))
    at_target = dump(client)
    write_rounds(client, 2, "discarded:")
    end = last_seq(etcd, shard_prefix(prefix, 0))
    restored = tmp_path / "restored"
    tools = config_with_data_dir(tmp_path, etcd_cluster.endpoints, prefix, url, restored, short_lease)

    out = cli("restore", "--from", url, "--data-dir", str(restored), "--config", tools, check=False)
    assert out.returncode == 1 and "is led by" in out.stderr and "stop the tree" in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    srv.kill9()
    leader = Keys(shard_prefix(prefix, 0).encode()).leader
    _wait_for(lambda: not etcd.range(leader).get("kvs"), "the killed shard's etcd lease to expire")
    # Another machine's data dir snapshots the history the restore will discard, with no primary
    # running (a running one would drop the records that snapshot covers: P/published). Its
    # P/published names a snapshot of the discarded history: the restore deletes it.
    away_dir = tmp_path / "away"
    shutil.copytree(srv.data_dir, away_dir, ignore=shutil.ignore_patterns("run"))
    cli("snapshotter", "--once", "--config",
        config_with_data_dir(tmp_path, etcd_cluster.endpoints, prefix, url, away_dir))
    stale = newest_local(layout.shard_dir(away_dir, 0)).manifest.seq
    assert stale > target
    notice = read_published(etcd, shard_prefix(prefix, 0))
    assert notice is not None and notice.seq == stale

    out = cli("restore", "--from", url, "--data-dir", str(restored), "--config", tools, "--seq", str(target),
              check=False)
    assert out.returncode == 1 and f"etcd holds seqs {target + 1}..{end}" in out.stderr, out.stderr
    assert last_seq(etcd, shard_prefix(prefix, 0)) == end and not restored.exists()
    out = cli("restore", "--from", url, "--data-dir", str(restored), "--config", tools, "--seq", str(target),
              "--force")
    assert f"shard 0: seq {target} " in out.stdout
    assert last_seq(etcd, shard_prefix(prefix, 0)) == target
    assert all(s.manifest.seq <= target for s in open_store(url).list_snapshots(0))
    assert read_published(etcd, shard_prefix(prefix, 0)) is None  # the stale notice went with the cut
    again = server_factory(shards=1, extra_args=("--config", config), data_dir=restored)
    r = again.client()
    assert dump(r) == at_target
    for i in range(stale - target + 2):  # the new history passes the discarded snapshot's seq
        r.set(f"new:{i}", i)
    live = dump(r)
    again.kill9()
    _wait_for(lambda: not etcd.range(leader).get("kvs"), "the killed shard's etcd lease to expire")
    # The other machine, whose cache still holds the discarded history's snapshot, starts again.
    away = server_factory(shards=1, extra_args=("--config", config), data_dir=away_dir)
    assert dump(away.client()) == live
    assert "of the history restore discarded" in away.log()
    away.discard()

    # etcd lost: a new prefix, the same store: the newest published snapshot is the start.
    fresh = f"fresh-{uuid.uuid4().hex[:8]}"
    rebuilt = tmp_path / "rebuilt"
    new_tools = config_with_data_dir(tmp_path, etcd_cluster.endpoints, fresh, url, rebuilt, short_lease)
    cli("export-rdb", "--from", url, "-o", str(tmp_path / "published.rdb"))
    published = redis_dump_of_rdb(tmp_path, tmp_path / "published.rdb")
    cli("restore", "--from", url, "--data-dir", str(rebuilt), "--config", new_tools)
    assert first_seq(etcd, shard_prefix(fresh, 0)) > 1
    serving = server_factory(shards=1, extra_args=("--config", new_tools), data_dir=rebuilt)
    assert dump(serving.client()) == published


def test_a_shards_drop_does_not_compact_away_another_shards_history(etcd_cluster):
    """etcd's compaction is global: shard 0 dropping all its records must not compact
    the revisions a follower of shard 1 still needs, so a watch of shard 1 from its
    first retained record's revision still sees that record (not 'compacted')."""
    deployment = f"floor-{uuid.uuid4().hex[:8]}"
    client = EtcdClient(etcd_cluster.endpoints)
    record_shard_count(client, deployment, 2)
    logs = [EtcdLog.open(client, shard_prefix(deployment, i)) for i in range(2)]
    try:
        leases = [log.take_lease(f"shard {i}") for i, log in enumerate(logs)]
        logs[1].append([b"shard 1's first"], 0, leases[1])
        logs[1].sync()
        keys1 = Keys(shard_prefix(deployment, 1).encode())
        needed = int(client.range(keys1.record(1))["kvs"][0]["mod_revision"])
        for n in range(5):
            logs[0].append([b"shard 0's %d" % n], logs[0].tail_seq, leases[0])
            logs[0].sync()
        logs[0].drop_segments_through(logs[0].durable_seq)
        print(f"shard 0 compacted at revision {logs[0].compacted_revision}; shard 1's follower needs {needed}")
        assert 0 < logs[0].compacted_revision <= needed
        stream = client.watch(keys1.record(1), keys1.log_end, needed, read_timeout_s=10)
        try:
            for reply in stream.replies():
                assert not reply.get("compact_revision"), reply
                if reply.get("events"):
                    assert unb64(reply["events"][0]["kv"]["key"]) == keys1.record(1)
                    break
        finally:
            stream.close()
        logs[1].drop_segments_through(1)  # no shard holds the floor back any more: compacted at the drop
        assert logs[1].compacted_revision > needed
    finally:
        for log in logs:
            log.close()


def test_etcd_size_stays_bounded_over_snapshot_cycles(etcd_cluster, server_factory, tmp_path):
    """Write, snapshot, drop, compact, again and again: every member's database file
    stays within its in-use size plus the defragmentation threshold (the snapshotter
    defragments one member at a time once etcd is quiet), and INFO persistence shows
    the sizes the shards read."""
    prefix = f"size-{uuid.uuid4().hex[:8]}"
    threshold = 512 * 1024
    config = etcd_config(tmp_path, etcd_cluster.endpoints, prefix,
                         SNAPSHOT_OFTEN + f"etcd-defrag-free-bytes = {threshold}\netcd-defrag-interval-s = 1\n")
    srv = server_factory(shards=2, extra_args=("--config", config))
    client = srv.client()
    etcd = EtcdClient(etcd_cluster.endpoints)
    sizes = []
    for cycle in range(CYCLES):
        pipe = client.pipeline(transaction=False)
        for k in range(BURST_KEYS if cycle == 0 else 50):  # a burst, then a small steady load
            pipe.set(f"k{k}", f"{cycle}:" + "v" * (BURST_VALUE_BYTES if cycle == 0 else 2_000))
        pipe.execute()
        tails = [last_seq(etcd, shard_prefix(prefix, i)) for i in range(2)]
        _wait_for(lambda tails=tails: all(first_seq(etcd, shard_prefix(prefix, i)) > tails[i] for i in range(2)),
                  f"cycle {cycle}'s records to be dropped from etcd")
        sizes.append([(s.db_size_bytes, s.db_in_use_bytes) for s in member_sizes(etcd) if s is not None])
    print("per cycle, each member's (db size, in use) bytes:", sizes)

    def bounded() -> bool:
        now = member_sizes(etcd)
        return all(s is not None and s.free_bytes < threshold for s in now)

    _wait_for(bounded, "every member's free space to fall under the threshold (defragmentation)")
    print("after the quiet defragmentation:", [(s.db_size_bytes, s.db_in_use_bytes) for s in member_sizes(etcd)
                                                if s is not None])
    print("\n".join(line for line in srv.log().splitlines() if "etcd upkeep" in line))
    _wait_for(lambda: client.info("persistence")["etcd_shard1"]["db_size"] > 0, "INFO to show etcd's size")
    line = client.info("persistence")["etcd_shard0"]
    assert line["db_size"] >= line["db_size_in_use"] > 0, line
