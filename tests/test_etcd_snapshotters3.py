"""Three nodes' snapshotters on one deployment on etcd (issue 15): the build locks
(snapshotter/build_lock.py) let one snapshotter build a shard at a time, hand it to
exactly one of the others when the builder stops renewing its lease, and a builder
that lost its lock mid-build publishes nothing; a snapshotter killed mid-build leaves
no partial snapshot referenced anywhere.

Three `durakv serve` trees on one host stand for three machines sharing a real
3-member etcd cluster and one snapshot store (a file:// directory standing for the
S3 bucket): node a runs shard 0's primary, nodes b and c (node-role replica) a
replica each; all three run a snapshotter. Node a's builds can be held mid-build
(snapshotter/build.py, shards/faults.py hold_here: the RDB written to its .tmp file, no manifest)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from pathlib import Path

import redis

from conftest import DurakvServer
from durakv.log.etcd_client import EtcdClient, unb64
from durakv.log.etcd_records import Keys, first_seq_at, kvs_of, last_seq, shard_prefix
from durakv.shards.keyspace import Keyspace
from durakv.snapshotter.build import BUILD_HOLD_STEP
from durakv.snapshotter.build_lock import DEFRAG_HOLD_STEP, defrag_key, read_builders
from durakv.snapshotter.filestore import open_store
from durakv.snapshotter.local import list_local, load_snapshot, shard_dir_of
from etcd_support import until
from test_etcd_backend import etcd_config
from test_etcd_ops import SNAPSHOT_OFTEN
from test_etcd_snapshotters import BUILT, TTL_S, WAIT_S, _burst, _errors, _published, _snapshotter_pid
from test_standby_reads import ADVERTISED_HOST

HOLD_ENV = "DURAKV_TXN_HOLD"
HELD = "build held at step " + BUILD_HOLD_STEP
STALE = "not publishing it"
DEFRAGMENTED = "etcd upkeep: defragmented "
DEFRAG_HELD = "defragmentation held at step " + DEFRAG_HOLD_STEP
TOO_LATE = "defragment not sent"
# Every member is due for defragmentation once it has a free page, at most once a second (free
# pages come from compaction after the primary drops records: see _take_over).
DEFRAG_OFTEN = "etcd-defrag-free-bytes = 1\netcd-defrag-interval-s = 1\n"


class Nodes:
    """Nodes a (primary of shard 0), b and c (replicas) on one prefix and one store."""

    def __init__(self, server_factory, tmp_path: Path, etcd_cluster, extra: str = "") -> None:
        self.url = f"file://{tmp_path / 'store'}"
        self.prefix = f"snaps3-{uuid.uuid4().hex[:8]}"
        self.hold_file = tmp_path / "hold-a"
        self.hold_files = {name: tmp_path / f"hold-{name}" for name in "abc"}  # each node's (DURAKV_TXN_HOLD)
        common = (f"etcd-lease-ttl-s = {TTL_S}\nsnapshot-max-age-s = 1\n{SNAPSHOT_OFTEN}"
                  f'snapshot-url = "{self.url}"\nlog-level = "info"\n{extra}')
        endpoints = etcd_cluster.endpoints
        self.a = server_factory(shards=1, env={HOLD_ENV: str(self.hold_file)}, extra_args=(
            "--config", etcd_config(tmp_path, endpoints, self.prefix, common),
            "--node-id", "a", "--advertise", f"{ADVERTISED_HOST}:7000"))
        self.others: list[DurakvServer] = []
        for index, name in enumerate("bc"):
            hold = {HOLD_ENV: str(self.hold_files[name])}
            node = DurakvServer(tmp_path / f"node-{name}", shards=1, env=hold, extra_args=(
                "--config", etcd_config(tmp_path, endpoints, self.prefix, common + "replicas = 1\n"),
                "--node-id", name, "--node-role", "replica", "--advertise", f"{ADVERTISED_HOST}:{7001 + index}"))
            node.start(wait=False)
            self.others.append(node)
        for node in self.others:
            node.wait_ready()
        self.etcd = EtcdClient(endpoints)

    @property
    def all(self) -> dict[str, DurakvServer]:
        return {"a": self.a, "b": self.others[0], "c": self.others[1]}

    def built(self) -> dict[str, list[int]]:
        """The seqs of shard 0 each node's snapshotter built (its log)."""
        return {name: [int(s) for s in BUILT.findall(node.log())] for name, node in self.all.items()}

    def holder(self) -> str:
        """The node holding shard 0's build lock ("" when free)."""
        holder, _revision = read_builders(self.etcd, self.prefix).holders.get(0, ({}, 0))
        return str(holder.get("node", ""))

    def defrag_holder(self) -> str:
        kvs = kvs_of(self.etcd.range(defrag_key(self.prefix)))
        return str(json.loads(unb64(kvs[0]["value"])).get("node", "")) if kvs else ""

    def defrags(self) -> dict[str, int]:
        """Members each node's snapshotter defragmented (INFO persistence)."""
        return {name: node.client().info("persistence")["etcd_defragmented"] for name, node in self.all.items()}

    def defragmenters(self) -> list[str]:
        """The nodes whose INFO says their snapshotter runs etcd's defragmentation."""
        return [name for name, node in self.all.items() if node.client().info("persistence")["etcd_defragmenter"]]

    def errors(self) -> list[str]:
        """The snapshotters' errors (a shard's lease renewed late on a loaded machine is not one)."""
        return [line for node in self.all.values() for line in _errors(node.log())
                if "snapshot" in line]

    def discard(self) -> None:
        for node in self.others:
            node.discard()


def _snapshot_until_published(nodes: Nodes, primary: redis.Redis, tag: str) -> None:
    """Writes until the store holds a snapshot newer than the newest now."""
    before = max(_published(nodes.url), default=0)

    def newer() -> bool:
        _burst(primary, tag)
        return max(_published(nodes.url), default=0) > before
    until(newer, f"a snapshot past seq {before} in the store", WAIT_S)


def test_three_nodes_one_builder_per_shard(etcd_cluster, server_factory, tmp_path):
    """Only node a's snapshotter (the primary's node) builds shard 0; no seq is built
    twice across the three nodes; the store's snapshots are distinct and every one is
    complete; nobody logs an error."""
    nodes = Nodes(server_factory, tmp_path, etcd_cluster)
    try:
        primary = nodes.a.shard_client(0)
        for round_no in range(3):
            _snapshot_until_published(nodes, primary, f"r{round_no}")
        built = nodes.built()
        print(f"builds of shard 0 per node: { {k: len(v) for k, v in built.items()} }; "
              f"published {_published(nodes.url)}; lock holder {nodes.holder()}")
        assert built["a"] and not built["b"] and not built["c"], built
        every = built["a"] + built["b"] + built["c"]
        assert len(every) == len(set(every)), f"a seq built twice: {built}"
        assert nodes.holder() == "a"
        assert not nodes.errors(), nodes.errors()
    finally:
        nodes.discard()


def test_a_paused_builder_mid_build_loses_the_shard_to_exactly_one_node(etcd_cluster, server_factory, tmp_path):
    """Node a's snapshotter is held mid-build and then stopped (SIGSTOP: its lease runs
    out): exactly one of b and c takes the lock after the TTL and publishes past it;
    resumed, node a finishes its build, sees the lock gone and publishes nothing (the
    store only ever gains seqs above its newest), then takes the shard back. While node a's
    snapshotter is stopped, its primary drops the records the taker's snapshots cover."""
    nodes = Nodes(server_factory, tmp_path, etcd_cluster)
    try:
        primary = nodes.a.shard_client(0)
        _snapshot_until_published(nodes, primary, "before")
        nodes.hold_file.write_text(BUILD_HOLD_STEP)
        until(lambda: (_burst(primary, "held"), HELD in nodes.a.log())[1], f"node a's build held\n"
              f"{nodes.a.log()[-3000:]}", WAIT_S)
        paused = _snapshotter_pid(nodes.a)
        os.kill(paused, signal.SIGSTOP)
        try:
            released_before = max(_published(nodes.url))  # node a's release notice names at most this
            nodes.hold_file.unlink()  # the build child finishes; its stopped parent cannot publish yet
            taker = until(lambda: nodes.holder() not in ("", "a") and nodes.holder(), "b or c to take the lock",
                          WAIT_S)
            _snapshot_until_published(nodes, primary, "paused")
            during = nodes.built()
            published_while_paused = _published(nodes.url)
            # The primary drops what the taker's snapshot covers (before, only node a's stopped
            # snapshotter told it to: etcd kept every record while it was stopped).
            keys = Keys(shard_prefix(nodes.prefix, 0).encode())
            until(lambda: (_burst(primary, "drop"), first_seq_at(nodes.etcd, keys) > released_before + 1)[1],
                  f"node a's primary to drop records past seq {released_before} while its snapshotter is "
                  f"stopped\n{nodes.a.log()[-2000:]}", WAIT_S)
        finally:
            os.kill(paused, signal.SIGCONT)
        until(lambda: STALE in nodes.a.log(), f"node a to refuse publishing its stale build\n"
              f"{nodes.a.log()[-3000:]}", WAIT_S)
        _snapshot_until_published(nodes, primary, "after")
        until(lambda: nodes.holder() == "a", "node a to take shard 0 back", WAIT_S)
        after = _published(nodes.url)
        print(f"taken over by node {taker}; builds {during}; published while paused {published_while_paused}, "
              f"after {after}")
        builders_while_paused = [name for name in "bc" if during[name]]
        assert builders_while_paused == [taker], f"exactly one of b, c builds: {during}, holder {taker}"
        newest = max(published_while_paused)
        assert all(seq > newest for seq in set(after) - set(published_while_paused)), \
            f"node a published a stale build: {published_while_paused} -> {after}"
        assert not nodes.errors(), nodes.errors()
    finally:
        nodes.discard()


def _writer(primary: redis.Redis, acked: dict[str, str], stop: threading.Event) -> None:
    n = 0
    while not stop.is_set():
        key, value = f"w:{n}", f"v{n}:" + "x" * 200
        primary.set(key, value)
        acked[key] = value
        n += 1


def test_kill9_of_a_snapshotter_mid_build(etcd_cluster, server_factory, tmp_path):
    """kill -9 of node a's snapshotter (only it) while its build is held mid-build, under
    a writer: the supervisor starts a new one, the lock comes free by the lease's
    expiry, a snapshot covering every acknowledged write is published, every snapshot
    in the store is complete and verifies (RDB sha256 and state digest), and the newest
    holds every acknowledged write."""
    nodes = Nodes(server_factory, tmp_path, etcd_cluster)
    acked: dict[str, str] = {}
    stop = threading.Event()
    try:
        primary = nodes.a.shard_client(0)
        _snapshot_until_published(nodes, primary, "before")
        writer = threading.Thread(target=_writer, args=(nodes.a.shard_client(0), acked, stop), daemon=True)
        writer.start()
        nodes.hold_file.write_text(BUILD_HOLD_STEP)
        until(lambda: HELD in nodes.a.log(), f"node a's build held\n{nodes.a.log()[-3000:]}", WAIT_S)
        killed = _snapshotter_pid(nodes.a)
        os.kill(killed, signal.SIGKILL)
        nodes.hold_file.unlink()
        until(lambda: _snapshotter_pid_or_0(nodes.a) not in (0, killed), "node a's new snapshotter", WAIT_S)
        time.sleep(0.5)
        stop.set()
        writer.join(30)
        tail = last_seq(nodes.etcd, shard_prefix(nodes.prefix, 0))
        until(lambda: max(_published(nodes.url), default=0) >= tail, f"a snapshot through seq {tail}\n"
              f"{nodes.a.log()[-3000:]}", WAIT_S)
        store = open_store(nodes.url)
        snapshots = store.list_snapshots(0)
        assert snapshots and all(s.complete for s in snapshots), snapshots
        newest = None
        for remote in snapshots:
            db = Keyspace()
            local = store.download_snapshot(remote, str(tmp_path / f"check-{remote.manifest.seq}"))
            load_snapshot(local, db, check_digest=True)
            if remote.manifest.seq >= tail:
                newest = db
        assert newest is not None
        missing = [k for k, v in acked.items() if newest.data.get(k.encode()) != v.encode()]
        print(f"acknowledged {len(acked)} writes; snapshots {[s.manifest.seq for s in snapshots]} through "
              f"{tail}; builds {nodes.built()}; missing {len(missing)}")
        assert not missing, missing[:10]
        for local in list_local(shard_dir_of(str(nodes.a.data_dir), 0)):  # the held build's .tmp is in none
            load_snapshot(local, Keyspace(), check_digest=True)
        restarted = f"snapshotter (pid {killed}) exited with -9; restarting it"
        assert restarted in nodes.a.log()
        others = [line for line in nodes.errors() if restarted not in line]
        assert not others, others
    finally:
        stop.set()
        nodes.discard()


def _snapshotter_pid_or_0(node: DurakvServer) -> int:
    try:
        return _snapshotter_pid(node)
    except AssertionError:
        return 0


def _take_over(nodes: Nodes, holder: str, rounds) -> tuple[str, int, dict[str, int], dict[str, int]]:
    """SIGSTOP the defragmenter lock holder's snapshotter until another node holds the lock,
    its INFO says it defragments and it has defragmented three members; then SIGCONT.
    Returns the taker, the members the holder's journal names as defragmented when it was
    stopped, and the INFO counts when it was stopped and when it resumed.

    The journal, not INFO, says what the holder did before the stop: INFO counts a round's
    members when the round ends, so a holder stopped mid-round shows the members it
    defragmented before the stop only once resumed (the CI failure this test had:
    `{'a': 6, 'b': 2, 'c': 6}`, node b stopped after one member with a second under way).
    While node a's snapshotter is stopped, the taker's snapshots are what node a's primary
    drops records by (snapshotter/shard_hooks.py), which frees the pages that make members due."""
    before = nodes.defrags()
    paused = _snapshotter_pid(nodes.all[holder])
    os.kill(paused, signal.SIGSTOP)
    logged = nodes.all[holder].log().count(DEFRAGMENTED)
    others = tuple(name for name in "abc" if name != holder)
    try:
        # The lock is free once the stopped holder's lease expires (TTL_S) and is taken at
        # another snapshotter's next poll (1 s): WAIT_S leaves a loaded machine plenty.
        taker = until(lambda: nodes.defrag_holder() in others and nodes.defrag_holder(),
                      "another node to take the defragmenter lock", WAIT_S)
        until(lambda: taker in nodes.defragmenters(), f"node {taker}'s INFO to say it defragments", WAIT_S)
        until(lambda: rounds(before[taker] + 3, (taker,)), f"node {taker} to defragment", WAIT_S)
    finally:
        os.kill(paused, signal.SIGCONT)
    return taker, logged, before, nodes.defrags()


def test_one_node_defragments_etcd_and_another_takes_over(etcd_cluster, server_factory, tmp_path):
    """Every member is due for defragmentation each second it has a free page
    (etcd-defrag-free-bytes = 1): of the three nodes' snapshotters only the holder of the
    defragmenter lock runs rounds (before, each node's ran one whenever the round key had
    expired, so rounds from several nodes could overlap); SIGSTOP of the holder's
    snapshotter: one of the others takes the lock over after the TTL and defragments;
    resumed, the stopped one defragments at most the member it was defragmenting."""
    nodes = Nodes(server_factory, tmp_path, etcd_cluster, DEFRAG_OFTEN)
    try:
        primary = nodes.a.shard_client(0)

        def rounds(n: int, among: tuple[str, ...]) -> bool:
            _burst(primary, "d", keys=5)
            time.sleep(0.2)
            return sum(nodes.defrags()[name] for name in among) >= n
        until(lambda: rounds(6, ("a", "b", "c")), f"six defragmentations\n{nodes.a.log()[-2000:]}", WAIT_S)
        first = nodes.defrags()
        holder = nodes.defrag_holder()
        assert nodes.defragmenters() == [holder]
        print(f"members defragmented per node: {first}; lock holder {holder}")
        assert len([n for n in first.values() if n]) == 1, f"several nodes defragmented: {first}"
        assert first[holder], f"the lock holder {holder!r} did not defragment: {first}"
        taker, logged, stopped, during = _take_over(nodes, holder, rounds)
        others = tuple(name for name in "abc" if name != holder)
        until(lambda: rounds(sum(during.values()) + 3, ("a", "b", "c")), "more defragmentations", WAIT_S)
        after = nodes.defrags()
        resumed_log = nodes.all[holder].log()
        print(f"node {holder} stopped: taken over by node {taker}: {during} while stopped, {after} after resuming")
        assert [name for name in others if during[name] > stopped[name]] == [taker], (stopped, during)
        # A member whose defragmentation was under way when the holder stopped is logged on
        # resuming; the lock is checked before the next one, so at most that one.
        assert resumed_log.count(DEFRAGMENTED) - logged <= 1, \
            f"node {holder} defragmented after losing the lock: {logged} members logged at the stop, {after}"
        until(lambda: nodes.defragmenters() == [taker], f"INFO to name node {taker} the only defragmenter", WAIT_S)
        counts = nodes.defrags()
        for name, node in nodes.all.items():  # the journal says the same as INFO
            # (the taker goes on: its log may already name members INFO counts after the round)
            logged_now = node.log().count(DEFRAGMENTED)
            assert logged_now >= counts[name] if name == taker else logged_now == counts[name], \
                (name, logged_now, counts)
        assert not nodes.errors(), nodes.errors()
    finally:
        nodes.discard()


def test_defragmenter_paused_between_check_and_request_sends_nothing(etcd_cluster, server_factory, tmp_path):
    """The pause race (etcd cannot fence a defragmentation): the lock holder's snapshotter
    is held after its lock check, before its request (test-only hold point), and SIGSTOPped
    there until another node has taken the lock over; resumed, it sends no request (its
    lease was no longer sure to last) and defragments nothing more. Before, the request
    left at once: a member defragmented by a node that had lost the lock, possibly while
    the new holder defragmented another."""
    nodes = Nodes(server_factory, tmp_path, etcd_cluster, DEFRAG_OFTEN)
    try:
        primary = nodes.a.shard_client(0)

        def written(then: bool) -> bool:
            """Writes that the holder's releases compact (free pages: members become due)."""
            _burst(primary, "d", keys=5)
            time.sleep(0.2)
            return then
        until(lambda: written(any(nodes.defrags().values())), "a first defragmentation", WAIT_S)
        holder = nodes.defrag_holder()
        node = nodes.all[holder]
        nodes.hold_files[holder].write_text(DEFRAG_HOLD_STEP)
        until(lambda: written(DEFRAG_HELD in node.log()), f"node {holder}'s defragmentation held\n{node.log()[-2000:]}",
              WAIT_S)
        held_at = nodes.defrags()[holder]
        paused = _snapshotter_pid(node)
        os.kill(paused, signal.SIGSTOP)
        others = tuple(name for name in "abc" if name != holder)
        try:
            taker = until(lambda: nodes.defrag_holder() in others and nodes.defrag_holder(),
                          "another node to take the defragmenter lock", WAIT_S)
        finally:
            nodes.hold_files[holder].unlink()
            os.kill(paused, signal.SIGCONT)
        until(lambda: TOO_LATE in node.log() or DEFRAGMENTED in node.log()[node.log().index(DEFRAG_HELD):],
              f"node {holder} to refuse its request\n{node.log()[-2000:]}", WAIT_S)
        until(lambda: taker in nodes.defragmenters() and holder not in nodes.defragmenters(),
              f"INFO to name node {taker}, not {holder}", WAIT_S)
        print(f"node {holder} held and stopped at {held_at} members; node {taker} took over: {nodes.defrags()}")
        assert TOO_LATE in node.log()
        assert nodes.defrags()[holder] == held_at, nodes.defrags()
        assert node.log().count(DEFRAGMENTED) == held_at
    finally:
        nodes.discard()
