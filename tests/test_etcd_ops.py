"""Operating the log on etcd: a new machine starts from the snapshot store when etcd
no longer holds the log's start, the offline tools read etcd logs, and truncation
keeps etcd's size bounded."""

from __future__ import annotations

import uuid

from conftest import DurakvServer
from test_etcd_backend import etcd_config
from test_snapshot import dump
from test_snapshot_serve import _wait_for

from durakv.log.etcd_client import EtcdClient
from durakv.log.etcd_records import first_seq, last_seq, shard_prefix
from durakv.shards.exit_codes import EXIT_PERMANENT

SNAPSHOT_OFTEN = "snapshot-every-bytes = 8192\nsnapshot-cpu-percent = 100\n"
EXIT_WAIT_S = 60


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
