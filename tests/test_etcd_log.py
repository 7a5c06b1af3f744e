"""The shard log on etcd (log/etcd_log.py) against a real 3-member etcd cluster:
round trip, fencing of a deposed writer, kill -9 of the etcd leader, tail by watch."""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid

import pytest

from durakv.log import LeaseLost, LogWriteFailed, RecordsDropped, SequenceMismatch
from durakv.log.etcd_client import EtcdClient, EtcdRequestFailed, EtcdUnavailable, unb64
from durakv.log.etcd_follower import EtcdFollower, Tail
from durakv.log.etcd_log import EtcdLog
from durakv.log.etcd_records import put_op, read, shard_prefix
from durakv.log.interface import LeaseState, LogFollower, ShardLog

KILL_RUN_S = 1.0  # appends before the etcd leader is killed
AFTER_KILL_APPENDS = 200
PROGRESS_WAIT_S = 60.0  # a generous bound, not a measurement
PAUSED_TTL_S = 4


def fresh_prefix() -> str:
    return shard_prefix(f"test-{uuid.uuid4().hex[:8]}", 0)


def open_log(cluster, prefix: str, **kwargs) -> EtcdLog:
    return EtcdLog.open(EtcdClient(cluster.endpoints, request_timeout_s=1.0), prefix, **kwargs)


def test_round_trip_split_into_transactions_and_reopen(etcd_cluster):
    prefix = fresh_prefix()
    log = open_log(etcd_cluster, prefix, max_txn_bytes=4096, max_txn_ops=5)
    lease = log.take_lease("writer")
    payloads = [b"p%03d" % i + bytes([i % 256]) * (i * 37 % 900) for i in range(40)]
    assert log.append(payloads[:1], 0, lease) == 1
    assert log.sync() == 1
    log.append(payloads[1:], 1, lease)
    assert log.durable_seq == 1 and log.pending_records == 39
    assert log.sync() == 40
    assert log.fsync_count >= 1 + 39 // 5  # one sync, split into transactions of at most 5 records
    assert [(s, e, p) for s, e, p in log.read()] == [(i + 1, 1, p) for i, p in enumerate(payloads)]
    assert [s for s, _e, _p in log.read(10, through_seq=12)] == [10, 11, 12]
    with pytest.raises(SequenceMismatch):
        log.append([b"x"], 39, lease)
    # Payloads over a transaction's limit go in parts, written before the record key.
    big = [bytes(range(256)) * 40, b"small", b"y" * 4096 * 3]
    log.append(big, 40, lease)
    assert log.sync() == 43
    assert [p for _s, _e, p in log.read(41)] == big
    log.close()

    again = open_log(etcd_cluster, prefix)
    assert (again.tail_seq, again.durable_seq, again.recovery.first_seq) == (43, 43, 1)
    lease2 = again.take_lease("writer, restarted")
    assert lease2.epoch == 2
    again.append([b"after restart"], 43, lease2)
    again.sync()
    # Any process reads the log without a lease: every record etcd shows is durable.
    other = EtcdClient(etcd_cluster.endpoints)
    assert [(s, e) for s, e, _p in read(other, prefix, 42)] == [(42, 1), (43, 1), (44, 2)]
    assert [p for _s, _e, p in read(other, prefix, 41, through_seq=43)] == big
    assert again.drop_segments_through(41) == [f"etcd:{prefix}/log/1..41"]
    with pytest.raises(RecordsDropped):
        list(read(other, prefix, 41))
    assert [s for s, _e, _p in read(other, prefix, 42)] == [42, 43, 44]
    assert _part_seqs(other, prefix) == [43]  # the parts of seq 41 went with it
    again.close()
    reopened = open_log(etcd_cluster, prefix)  # closed, or its lease thread renews (and logs) past the cluster's end
    assert reopened.recovery.first_seq == 42
    reopened.close()
    # Every record dropped (a snapshot covers them all): the log still ends at seq 44.
    emptied = open_log(etcd_cluster, prefix)
    emptied.take_lease("writer, third")
    emptied.drop_segments_through(44)
    emptied.close()
    assert _part_seqs(other, prefix) == []
    last = open_log(etcd_cluster, prefix)
    assert (last.recovery.first_seq, last.tail_seq) == (45, 44)
    last_lease = last.take_lease("writer, fourth")
    last.append([b"seq 45"], 44, last_lease)
    assert last.sync() == 45
    assert [s for s, _e, _p in read(other, prefix, 45)] == [45]
    last.close()


def _part_seqs(client: EtcdClient, prefix: str) -> list[int]:
    reply = client.range(f"{prefix}/part/".encode(), f"{prefix}/part0".encode(), keys_only=True)
    return sorted({int(unb64(kv["key"]).split(b"/")[-2]) for kv in reply.get("kvs", [])})


def test_deposed_writer_is_refused_at_every_seq(etcd_cluster):
    """Writers deposed without knowing it: one aims at a seq its successor already
    wrote, the other at a free seq; etcd refuses both (the leader key's revision)."""
    prefix = fresh_prefix()
    a = open_log(etcd_cluster, prefix)
    a_lease = a.take_lease("a")
    a.append([b"a 1"], 0, a_lease)
    a.sync()
    b = open_log(etcd_cluster, prefix)
    b_lease = b.take_lease("b")
    assert b_lease.epoch == a_lease.epoch + 1
    b.append([b"b 2", b"b 3"], 1, b_lease)
    b.sync()
    a.append([b"a 2 (taken seq)"], 1, a_lease)
    with pytest.raises(LeaseLost, match="deposed"):
        a.sync()
    with pytest.raises(LeaseLost):
        a.append([b"a again"], a.tail_seq, a_lease)

    c = open_log(etcd_cluster, prefix)
    c.take_lease("c")
    b.append([b"b 4 (free seq)"], 3, b_lease)
    with pytest.raises(LeaseLost, match="deposed"):
        b.sync()
    # A writer that opened before a successor appended cannot take the lease at its stale tail.
    c.close()
    stale = open_log(etcd_cluster, prefix)
    stale.tail_seq = stale.durable_seq = 1
    with pytest.raises(LeaseLost, match="grew"):
        stale.take_lease("stale")
    assert [p for _s, _e, p in read(EtcdClient(etcd_cluster.endpoints), prefix)] == [b"a 1", b"b 2", b"b 3"]
    for log in (a, b, stale):
        log.close()


def test_expired_lease_loses_the_leader_key(etcd_cluster):
    """A writer whose etcd lease expires (it stopped renewing: paused, cut off) is
    refused; a campaigner that waits for the key to go free then leads."""
    prefix = fresh_prefix()
    paused = open_log(etcd_cluster, prefix, lease_ttl_s=PAUSED_TTL_S)
    lease = paused.take_lease("paused")
    waiter = open_log(etcd_cluster, prefix)
    with pytest.raises(LeaseLost):  # held, and renewed: a campaign that does not take over fails
        waiter.take_lease("waiter", take_over=False, wait_s=0)
    paused._stop.set()  # no more renewals, as if the process were stopped
    paused._keepalive_thread.join()
    waiter_lease = waiter.take_lease("waiter", take_over=False, wait_s=PROGRESS_WAIT_S)
    assert waiter_lease.epoch == lease.epoch + 1
    assert not paused.lease_valid()
    paused.append([b"too late"], 0, lease)
    with pytest.raises(LeaseLost):
        paused.sync()
    assert list(read(EtcdClient(etcd_cluster.endpoints), prefix)) == []
    paused.close()
    waiter.close()


def test_kill9_of_the_etcd_leader_loses_no_acknowledged_append(etcd_cluster):
    prefix = fresh_prefix()
    log = open_log(etcd_cluster, prefix)
    lease = log.take_lease("writer")
    acked: list[bytes] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def write() -> None:
        n = 0
        while not stop.is_set():
            batch = [b"record %d" % (n + i) for i in range(1 + n % 3)]
            log.append(batch, log.tail_seq, lease)
            try:
                log.sync()
            except LogWriteFailed as e:  # all members unreachable for the retry window: retry, as the shard does
                errors.append(e)
                while True:
                    try:
                        log.retry_failed()
                        break
                    except LogWriteFailed:
                        time.sleep(0.1)
            acked.extend(batch)
            n += len(batch)

    thread = threading.Thread(target=write)
    thread.start()
    try:
        time.sleep(KILL_RUN_S)
        leader = etcd_cluster.leader_index()
        assert leader is not None
        before = len(acked)
        etcd_cluster.kill9(leader)
        deadline = time.monotonic() + PROGRESS_WAIT_S
        while len(acked) < before + AFTER_KILL_APPENDS and thread.is_alive():
            assert time.monotonic() < deadline, "appends did not go on after the leader was killed"
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(30)
    print(f"acknowledged {before} before the kill, {len(acked)} in all; {len(errors)} failed syncs retried")
    assert len(acked) >= before + AFTER_KILL_APPENDS, "the writer stopped (see its thread's exception)"
    assert [p for _s, _e, p in read(EtcdClient(etcd_cluster.endpoints), prefix)] == acked
    log.close()
    etcd_cluster.start_member(leader)
    etcd_cluster.wait_healthy()


def test_tail_by_watch_sees_every_record_in_order(etcd_cluster):
    prefix = fresh_prefix()
    log = open_log(etcd_cluster, prefix, max_txn_bytes=4096)  # every 7th record below comes in parts
    lease = log.take_lease("writer")
    log.append([b"before the tail %d" % i for i in range(5)], 0, lease)
    log.sync()
    tail = Tail(EtcdClient(etcd_cluster.endpoints), prefix, from_seq=2)
    seen: list[tuple[int, bytes]] = []
    done = threading.Event()
    total = 5 + 60

    def follow() -> None:
        for seq, _epoch, payload in tail:
            seen.append((seq, payload))
            if seq == total:
                done.set()
                return

    follower = threading.Thread(target=follow)
    follower.start()
    expected = [(s, b"before the tail %d" % (s - 1)) for s in range(2, 6)]
    for i in range(20):
        batch = [b"live %d" % (3 * i + j) * (2000 if (3 * i + j) % 7 == 0 else 1) for j in range(3)]
        first = log.tail_seq + 1
        log.append(batch, log.tail_seq, lease)
        log.sync()
        expected += list(zip(range(first, first + 3), batch))
    assert done.wait(30), f"the tail saw {len(seen)} of {len(expected)} records"
    tail.close()
    follower.join(10)
    assert seen == expected
    log.close()


def test_tail_reads_on_by_range_when_its_watch_history_was_compacted(etcd_cluster):
    """A replica's tail whose watch revision was compacted away (other keys changed
    between its last record and the first one a drop kept, and the drop compacted at
    that record) reads the records still there by range and watches on; only records
    dropped for good end it with RecordsDropped."""
    prefix = fresh_prefix()
    log = open_log(etcd_cluster, prefix)
    lease = log.take_lease("writer")
    log.append([b"r%d" % i for i in range(1, 4)], 0, lease)
    log.sync()
    client = EtcdClient(etcd_cluster.endpoints)
    tail = Tail(client, prefix, from_seq=1)
    records = iter(tail)
    assert [next(records)[2] for _ in range(3)] == [b"r1", b"r2", b"r3"]  # read by range; the watch is next
    for n in range(5):  # revisions that are not this log's records (leases, other shards, node entries)
        client.txn([], [put_op(b"unrelated-" + prefix.encode(), b"%d" % n)], [])
    log.append([b"r4", b"r5"], 3, lease)
    log.sync()
    log.drop_segments_through(3)
    assert log.compacted_revision > 0
    assert [next(records)[:3:2] for _ in range(2)] == [(4, b"r4"), (5, b"r5")]
    log.append([b"r6"], 5, lease)
    log.sync()
    assert next(records)[:3:2] == (6, b"r6")  # watching again
    tail.close()
    gone = Tail(client, prefix, from_seq=2)
    with pytest.raises(RecordsDropped):
        next(iter(gone))
    log.close()


def test_open_with_no_reachable_endpoint_fails_fast():
    client = EtcdClient(["http://127.0.0.1:1"], request_timeout_s=0.2, retry_s=0.5)
    started = time.monotonic()
    with pytest.raises(EtcdUnavailable, match="127.0.0.1:1"):
        EtcdLog.open(client, fresh_prefix())
    assert time.monotonic() - started < 10


def test_follower_and_lease_renewal(etcd_cluster):
    """log/interface.py's LogFollower over etcd (durable tail, lease, read, tail
    notification) and ShardLog.renew."""
    prefix = fresh_prefix()
    log = open_log(etcd_cluster, prefix, lease_ttl_s=5)
    follower = EtcdFollower(EtcdClient(etcd_cluster.endpoints), prefix)
    assert isinstance(log, ShardLog) and isinstance(follower, LogFollower)
    assert follower.lease() == LeaseState(0, "", 0, 0)
    lease = log.take_lease("primary")
    state = follower.lease()
    assert (state.epoch, state.holder, state.holder_pid) == (1, "primary", os.getpid())
    assert time.monotonic_ns() < state.valid_until_ns <= time.monotonic_ns() + 5_000_000_000
    renewed = log.renew(lease)
    assert renewed.epoch == lease.epoch and renewed.valid_until_ns >= lease.valid_until_ns
    log.append([b"one", b"two"], 0, renewed)  # any lease of the current epoch appends
    log.sync()
    assert follower.durable_seq() == 2
    assert [p for _s, _e, p in follower.read(1, 2)] == [b"one", b"two"]
    assert follower.wait_durable(2, timeout_ms=200) == 2  # nothing new: returns at the timeout

    def append_later() -> None:
        time.sleep(0.3)
        log.append([b"three"], 2, lease)
        log.sync()

    writer = threading.Thread(target=append_later)
    writer.start()
    assert follower.wait_durable(2, timeout_ms=20_000) == 3
    writer.join()
    successor = open_log(etcd_cluster, prefix)
    successor.take_lease("successor")
    with pytest.raises(LeaseLost, match="deposed"):
        log.renew(lease)
    with pytest.raises(LeaseLost):
        log.append([b"four"], 3, lease)
    assert follower.lease().holder == "successor"
    for closing in (log, successor, follower):
        closing.close()


def test_tls_with_client_certificates(tmp_path):
    """https endpoints whose members require a client certificate: the CA and the
    client's certificate and key (etcd-ca-file, etcd-cert-file, etcd-key-file)."""
    import trustme
    from etcd_cluster import EtcdCluster
    from etcd_support import etcd_binary_or_skip

    ca = trustme.CA()
    files = {name: str(tmp_path / f"{name}.pem") for name in ("ca", "server", "server-key", "client", "client-key")}
    ca.cert_pem.write_to_path(files["ca"])
    server_cert, client_cert = ca.issue_cert("127.0.0.1", "localhost"), ca.issue_cert("durakv-client")
    server_cert.private_key_pem.write_to_path(files["server-key"])
    client_cert.private_key_pem.write_to_path(files["client-key"])
    for name, cert in (("server", server_cert), ("client", client_cert)):
        for i, blob in enumerate(cert.cert_chain_pems):
            blob.write_to_path(files[name], append=i > 0)
    cluster = EtcdCluster(tmp_path / "etcd", members=1, binary=etcd_binary_or_skip(),
                          tls=(files["server"], files["server-key"], files["ca"])).start()
    try:
        prefix = fresh_prefix()
        client = EtcdClient(cluster.endpoints, ca_file=files["ca"], cert_file=files["client"],
                            key_file=files["client-key"])
        log = EtcdLog.open(client, prefix)
        lease = log.take_lease("tls writer")
        log.append([b"over tls"], 0, lease)
        assert log.sync() == 1
        assert [p for _s, _e, p in read(client, prefix)] == [b"over tls"]
        log.close()
        without_cert = EtcdClient(cluster.endpoints, ca_file=files["ca"], request_timeout_s=1, retry_s=1)
        with pytest.raises(EtcdUnavailable):
            EtcdLog.open(without_cert, prefix)
    finally:
        cluster.stop()


def test_authentication_with_a_user_of_the_prefix_only(tmp_path):
    """etcd with auth enabled: a user whose role may read and write PREFIX only
    appends, reads and drops (compaction needs root: a warning, not a failure);
    a wrong password is refused with a message naming the user."""
    from etcd_cluster import EtcdCluster
    from etcd_support import etcd_binary_or_skip

    cluster = EtcdCluster(tmp_path / "etcd", members=1, binary=etcd_binary_or_skip()).start()
    try:
        prefix = fresh_prefix()
        etcdctl = ["etcdctl", "--endpoints", cluster.endpoints[0]]
        for args in (["user", "add", "root", "--new-user-password", "rootpw"], ["role", "add", "root"],
                     ["user", "grant-role", "root", "root"], ["user", "add", "shard", "--new-user-password", "s3cret"],
                     ["role", "add", "durakv"], ["role", "grant-permission", "durakv", "readwrite", prefix, "--prefix"],
                     ["user", "grant-role", "shard", "durakv"], ["auth", "enable"]):
            subprocess.run(etcdctl + args, check=True, capture_output=True, timeout=30)
        client = EtcdClient(cluster.endpoints, user="shard", password="s3cret")
        log = EtcdLog.open(client, prefix)
        lease = log.take_lease("authenticated writer")
        log.append([b"one", b"two"], 0, lease)
        assert log.sync() == 2
        assert log.drop_segments_through(1) == [f"etcd:{prefix}/log/1..1"]
        assert [s for s, _e, _p in read(client, prefix, 2)] == [2]
        log.close()
        with pytest.raises(EtcdRequestFailed, match="shard"):
            EtcdLog.open(EtcdClient(cluster.endpoints, user="shard", password="wrong"), prefix)
        with pytest.raises(EtcdRequestFailed):
            EtcdLog.open(EtcdClient(cluster.endpoints), prefix)  # no user at all
    finally:
        cluster.stop()


def test_quorum_loss_fails_the_sync_and_a_retry_commits_it(etcd_cluster):
    """With two of three members down no transaction commits: sync() raises
    LogWriteFailed (the shard answers MISCONF and retries) and nothing counts as
    durable; once a quorum is back, retry_failed() commits the same records."""
    prefix = fresh_prefix()
    log = EtcdLog.open(EtcdClient(etcd_cluster.endpoints, request_timeout_s=0.5, retry_s=1.5), prefix)
    lease = log.take_lease("writer")
    log.append([b"before"], 0, lease)
    log.sync()
    down = [i for i in range(3) if i != etcd_cluster.leader_index()]
    for i in down:
        etcd_cluster.kill9(i)
    log.append([b"during 1", b"during 2"], 1, lease)
    with pytest.raises(LogWriteFailed):
        log.sync()
    assert log.durable_seq == 1 and log.failed
    with pytest.raises(LogWriteFailed):
        log.sync()  # refused until a retry works
    for i in down:
        etcd_cluster.start_member(i)
    etcd_cluster.wait_healthy()
    deadline = time.monotonic() + PROGRESS_WAIT_S
    while True:
        try:
            assert log.retry_failed() == 3
            break
        except LogWriteFailed:
            assert time.monotonic() < deadline, "etcd did not come back"
    assert not log.failed
    log.append([b"after"], 3, lease)
    assert log.sync() == 4
    assert [p for _s, _e, p in read(EtcdClient(etcd_cluster.endpoints), prefix)] == \
        [b"before", b"during 1", b"during 2", b"after"]
    log.close()
