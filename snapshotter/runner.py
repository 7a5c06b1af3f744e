"""The snapshotter process: for each shard of a data directory, build the next
snapshot when the log has grown enough or the newest snapshot is old enough,
publish it to the store (S3, a file:// directory, or with no snapshot URL the
embedded store DIR/snapshots/), archive the sealed log segments when
the store keeps the log, and tell the shard which segments it may delete.

"Grown enough" is Redis' AOF rewrite rule (auto-aof-rewrite-min-size and
-percentage): the log written since the newest snapshot reaches
max(every_bytes, every_percent% of that snapshot's RDB size). The minimum keeps
a small dataset's restart short (a restart replays at most that much log after
loading the snapshot); the percentage keeps a large dataset from being
rewritten after every few MiB, so building costs at most about as much as the
log it absorbs.

Control files live in DIR/snapshotter/: LOCK (flock: one snapshotter per data
dir), REQUEST (written by `durakv snapshot --now` or BGSAVE: a request id the
loop serves at its next poll) and status.json (per shard: last snapshot seq,
time, duration, size, keys, status, error; plus the last request served).

The release notice DIR/shard-NNN/snapshot/RELEASE.json names the highest seq
through which the shard may delete sealed segments: each such record is in a
published snapshot that is also in the shard's local cache, and, when the
store keeps the log (S3, file://), in a segment archived there (verified by
reading it back). The embedded store keeps no log: a copy on the same disk
would protect nothing and would only move the unbounded growth, so there a
record is released once a published snapshot covers it.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Iterable

from durakv.log import OS_DISK
from durakv.log.layout import LOCK_FILE, snapshotter_dir, topology_path
from durakv.log import lock as dir_lock
from durakv.log.durable_file import replace_file
from durakv.log.errors import LockHeld, LogError
from durakv.shards.config import DEFAULTS
from durakv.shards import sdnotify
from durakv.shards.latency import LATENCY_TS_LEN
from durakv.shards.malloc_stats import release_free_heap
from durakv.snapshotter.asked import AskedElsewhere
from durakv.snapshotter.base import adopt_published, drop_discarded, ensure_base
from durakv.snapshotter.local import newest_local, shard_dir_of, snapshot_dir
from durakv.snapshotter.logsource import EtcdLogSource, LocalLogSource, LogSource
from durakv.snapshotter.pace import CPU_PERCENT_DEFAULT, Pacer
from durakv.snapshotter.published import OthersPublished
from durakv.snapshotter.filestore import open_store
from durakv.snapshotter.isolate import run_in_child
from durakv.snapshotter.store import Store, StoreError
from durakv.snapshotter.tailship import ARCHIVE_BYTES_DEFAULT, ARCHIVE_INTERVAL_MS_DEFAULT, TailArchiver
from durakv.snapshotter.errors import SnapshotterError

if TYPE_CHECKING:
    from durakv.log.etcd_upkeep import Defragmenter
    from durakv.snapshotter.build_lock import BuildLocks

logger = logging.getLogger("durakv.snapshotter")

REQUEST_NAME = "REQUEST"
STATUS_NAME = "status.json"
RELEASE_NAME = "RELEASE.json"


def build_threshold_bytes(every_bytes: int, every_percent: int, snapshot_rdb_bytes: int) -> int:
    """Log bytes after a snapshot that make the next one due (Redis' AOF rewrite rule)."""
    return max(every_bytes, every_percent * snapshot_rdb_bytes // 100)


class SnapshotterBusy(SnapshotterError, LockHeld):
    """Another snapshotter holds the data directory's snapshotter lock."""


@dataclass
class Schedule:
    every_bytes: int = DEFAULTS.snapshot_every_bytes  # log bytes since the newest snapshot: at least this many
    every_percent: int = DEFAULTS.snapshot_every_percent  # and this share of the newest snapshot's RDB size (0: off)
    max_age_s: float = DEFAULTS.snapshot_max_age_s  # and at least this often while anything is new
    poll_interval_s: float = 1.0
    cpu_percent: int = CPU_PERCENT_DEFAULT  # share of wall time a build may run (snapshotter.pace)
    archive_interval_ms: int = ARCHIVE_INTERVAL_MS_DEFAULT  # ship each shard's durable log tail this often
    archive_bytes: int = ARCHIVE_BYTES_DEFAULT              # or as soon as this many bytes are new


@dataclass
class ShardStatus:
    shard: int
    status: str = "none"  # none | ok | error
    last_seq: int = 0
    last_created_at_ms: int = 0
    last_build_ms: int = 0
    last_rdb_bytes: int = 0
    last_keys: int = 0
    published: bool = False
    archived_through_seq: int = 0
    release_through_seq: int = 0
    error: str = ""
    log_archived_seq: int = 0          # every record through it is in the store (sealed or tail piece)
    log_archive_caught_up_ms: int = 0  # when the archive last held everything the shard had made durable
    log_archive_error: str = ""
    built_elsewhere: bool = False  # the last_* fields: another node's snapshotter built and published it
    last_changes: int = -1  # its manifest's `changes` (shards/changes.py; -1: built before the count)
    # LATENCY's snapshot-upload: [[unix s, ms], ...] of the newest uploads (each, whatever
    # the threshold: the routers apply latency-monitor-threshold when they read them).
    upload_samples: list = field(default_factory=list)


@dataclass
class Status:
    shards: dict[int, ShardStatus] = field(default_factory=dict)
    request_served: str = ""
    updated_at_ms: int = 0
    request_served_at_ms: int = 0  # when a request found every shard saved (even if nothing was new)
    etcd_defragmenter: bool = False  # this snapshotter runs etcd's defragmentation (snapshotter/build_lock.py)
    etcd_defragmented: int = 0       # members it defragmented, over the data dir's life

    def newest_published_ms(self) -> int:
        """LASTSAVE: when the newest snapshot was created, or when a BGSAVE found every
        shard's published snapshot already current (Redis answers every BGSAVE with a
        save; here a save with nothing new is the snapshot already there). 0: none yet."""
        created = max((s.last_created_at_ms for s in self.shards.values() if s.published), default=0)
        return max(created, self.request_served_at_ms)


def shard_count(data_dir: str) -> int:
    path = topology_path(data_dir)
    try:
        with open(path) as f:
            return int(json.load(f)["shards"])
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: {data_dir} is not a durakv data directory") from None


def acquire_lock(data_dir: str) -> int:
    """flock DIR/snapshotter/LOCK (log.lock); raises SnapshotterBusy naming the holder."""
    directory = snapshotter_dir(data_dir)
    OS_DISK.makedirs(directory)
    path = os.path.join(directory, LOCK_FILE)
    return dir_lock.acquire(path, "snapshotter", what=f"snapshotter lock {path}", error=SnapshotterBusy)


def note_upload(status: ShardStatus, at_s: int, duration_ms: int) -> None:
    """Keep one upload's time for LATENCY (the newest LATENCY_TS_LEN, one per second)."""
    samples = status.upload_samples
    if samples and samples[-1][0] == at_s:
        samples[-1][1] = max(samples[-1][1], duration_ms)
    else:
        samples.append([at_s, duration_ms])
    del samples[:-LATENCY_TS_LEN]


def read_status(data_dir: str) -> Status:
    try:
        with open(os.path.join(snapshotter_dir(data_dir), STATUS_NAME)) as f:
            doc = json.load(f)
    except FileNotFoundError:
        return Status()
    return Status({int(k): ShardStatus(**v) for k, v in doc["shards"].items()},
                  doc.get("request_served", ""), doc.get("updated_at_ms", 0), doc.get("request_served_at_ms", 0),
                  doc.get("etcd_defragmenter", False), doc.get("etcd_defragmented", 0))


def request_snapshot(data_dir: str) -> str:
    """Ask the running snapshotter for a snapshot of every shard now (BGSAVE,
    `durakv snapshot --now`); returns the request id to wait for in status.json."""
    directory = snapshotter_dir(data_dir)
    os.makedirs(directory, exist_ok=True)
    request_id = str(time.time_ns())
    replace_file(os.path.join(directory, REQUEST_NAME), request_id.encode())
    return request_id


def pending_request(data_dir: str, status: Status | None = None) -> str:
    """The snapshot request (BGSAVE, snapshot --now) the snapshotter has not
    served yet, or ""."""
    try:
        with open(os.path.join(snapshotter_dir(data_dir), REQUEST_NAME)) as f:
            request = f.read().strip()
    except FileNotFoundError:
        return ""
    served = (status or read_status(data_dir)).request_served
    return request if request != served else ""


def read_release(shard_dir: str) -> int:
    """The seq through which the shard may delete sealed log segments (0: none)."""
    try:
        with open(os.path.join(snapshot_dir(shard_dir), RELEASE_NAME)) as f:
            return int(json.load(f)["drop_through_seq"])
    except FileNotFoundError:
        return 0


def _build(shard_dir: str, shard: int, shards: int, pace: Pacer, source: EtcdLogSource | None) -> object:
    """build_snapshot, imported where it runs: in the build child (snapshotter/isolate.py)
    the engine, Lua and trio load for the build and leave with the child, so the idle
    snapshotter never holds them (tests/test_process_memory.py)."""
    from durakv.snapshotter.build import build_snapshot

    return build_snapshot(shard_dir, shard, shards, pace=pace, source=source)


class Snapshotter:
    def __init__(self, data_dir: str, store: Store | None, schedule: Schedule | None = None,
                 etcd: EtcdLogSource | None = None, locks: BuildLocks | None = None) -> None:
        """store None: the embedded store under the data dir (snapshots only). etcd: the
        shard logs are on etcd (log-backend = "etcd"), not in the data dir. locks: the
        build locks shared with other nodes' snapshotters (snapshotter/build_lock.py):
        only the shards it holds are built here."""
        self.data_dir = os.path.abspath(data_dir)
        self.etcd = etcd
        self.locks = locks
        self._adopted: set[int] = set()  # held shards whose local cache was brought level with the store
        self._noted: dict[int, int] = {}  # shard -> the seq its P/published on etcd names (_note_published)
        self.source: LogSource = LocalLogSource(self.data_dir) if etcd is None else etcd
        self.store = store if store is not None else open_store("", self.data_dir)
        self.others = OthersPublished(self.store)  # what the shards other nodes build have published
        self.asked = AskedElsewhere()  # a request's shards other nodes build, until their snapshots cover it
        self.schedule = schedule or Schedule()
        self.shards = shard_count(self.data_dir)
        self.pace = Pacer(self.schedule.cpu_percent)
        self.status = read_status(self.data_dir)
        self.status.etcd_defragmenter = False  # until this process holds the lock
        self._status_lock = threading.Lock()
        self.archiver = (TailArchiver(self.data_dir, self.shards, self.store, self.schedule.archive_interval_ms,
                                      self.schedule.archive_bytes, self._archive_progress)
                         if self.store.archives_log and self.source.archives else None)
        # Per shard: segment sizes when its newest snapshot was built (bytes-since estimate).
        self._sizes_at_build: dict[int, dict[int, int]] = {}
        # Build in a forked child (snapshotter/isolate.py): set by serve(), the
        # long-lived loop, so that the process holds no keyspace between builds.
        self.build_in_child = False

    # --- one shard ----------------------------------------------------------------

    def _ensure_base(self, shard: int, shard_dir: str) -> None:
        """A shard whose log no longer starts at seq 1 needs a snapshot to build on:
        the local cache, else the newest published one (snapshotter/base.py)."""
        first = self.source.first_seq(shard)
        mark = self.etcd.restore_mark(shard) if self.etcd is not None else None
        if first > 1:
            ensure_base(self.store, shard, shard_dir, first, self.source.durable_tail(shard),
                        self.source.name(shard), mark=mark)
        elif mark is not None:
            drop_discarded(shard_dir, mark)

    def run_shard(self, shard: int) -> ShardStatus:
        """Build (if anything is new), publish, archive, release; errors land in the status."""
        status = self.status.shards.setdefault(shard, ShardStatus(shard))
        shard_dir = shard_dir_of(self.data_dir, shard)
        if not self.source.present(shard):
            return status
        try:
            self._ensure_base(shard, shard_dir)
            sizes = self.source.sizes(shard)
            build = functools.partial(_build, shard_dir, shard, self.shards, self.pace, self.etcd)
            if not self.build_in_child:
                built = build() is not None
            else:  # a build child imports the engine: none where build_snapshot would find nothing new
                base = newest_local(shard_dir)
                built = self.source.durable_tail(shard) > (base.manifest.seq if base else 0) and run_in_child(build)
            if built or shard not in self._sizes_at_build:
                self._sizes_at_build[shard] = sizes
            newest = newest_local(shard_dir)
            if newest is not None:
                m = newest.manifest
                status.last_seq, status.last_created_at_ms = m.seq, m.created_at_ms
                status.last_build_ms, status.last_rdb_bytes, status.last_keys = m.build_ms, m.rdb_bytes, m.keys
                status.last_changes, status.built_elsewhere = m.changes, False
                if self.locks is not None and not self.locks.still_held(shard):
                    logger.warning("shard %d: built seq %d, but its build lock went to another node's snapshotter "
                                   "meanwhile; not publishing it", shard, m.seq)
                    return status
                started = time.monotonic()
                if self.store.publish(newest):
                    note_upload(status, int(time.time()), int((time.monotonic() - started) * 1000))
                status.published = True
                self._note_published(shard, m.seq, m.epoch)
                self.store.prune_snapshots(shard)
                release = m.seq
                if self.archiver is not None:
                    status.archived_through_seq = self.archiver.ship(shard)
                    release = min(m.seq, status.archived_through_seq)
                if read_release(shard_dir) != release:
                    replace_file(os.path.join(snapshot_dir(shard_dir), RELEASE_NAME),
                                  json.dumps({"drop_through_seq": release, "snapshot_seq": m.seq}).encode())
                    status.release_through_seq = release
            status.status, status.error = "ok", ""
        except (LogError, SnapshotterError, StoreError) as e:
            # Expected failures (a corrupt or missing log, the store out of reach): one line, retried next round.
            logger.error("shard %d: snapshot failed: %s: %s", shard, type(e).__name__, e)
            status.status, status.error = "error", f"{type(e).__name__}: {e}"
        except Exception as e:  # noqa: BLE001 - reported in status and the log, retried next round
            logger.exception("shard %d: snapshot failed", shard)
            status.status, status.error = "error", f"{type(e).__name__}: {e}"
        return status

    def _note_published(self, shard: int, seq: int, epoch: int) -> None:
        """With the log on etcd and a shared store: the release notice on etcd, read by
        the shard's primary on whichever node (snapshotter/shard_hooks.py), so that
        records covered by a snapshot another node built are dropped while the snapshotter
        of the primary's node is stopped or hung (the notice in its data dir is written by
        that snapshotter only). A failure is logged and tried again after the next build."""
        if self.etcd is None or not self.store.shared or self._noted.get(shard, 0) >= seq:
            return
        try:
            self.etcd.note_published(shard, seq, epoch, self.store.url)
        except LogError as e:
            logger.warning("shard %d: telling its primary on etcd that seq %d is published: %s", shard, seq, e)
            return
        self._noted[shard] = seq

    def _archive_progress(self, shard: int, archived_seq: int, caught_up_ms: int, error: str) -> None:
        """After each log archive pass (TailArchiver): the status INFO reads."""
        with self._status_lock:
            status = self.status.shards.setdefault(shard, ShardStatus(shard))
            status.log_archived_seq, status.log_archive_caught_up_ms = archived_seq, caught_up_ms
            status.log_archive_error = error
        self._save_status()

    # --- all shards -----------------------------------------------------------------

    def due(self, shard: int) -> bool:
        """Enough new log bytes (build_threshold_bytes), or an old snapshot with anything
        new after it."""
        shard_dir = shard_dir_of(self.data_dir, shard)
        if not self.source.present(shard):
            return False
        before = self._sizes_at_build.get(shard)
        now = self.source.sizes(shard)
        if before is None:
            return True
        grown = sum(size - before.get(first, 0) for first, size in now.items())
        newest = newest_local(shard_dir)
        rdb_bytes = newest.manifest.rdb_bytes if newest else 0
        if grown >= build_threshold_bytes(self.schedule.every_bytes, self.schedule.every_percent, rdb_bytes):
            return True
        age_s = time.time() - (newest.manifest.created_at_ms / 1000 if newest else 0)
        return grown > 0 and age_s >= self.schedule.max_age_s

    def _claim(self) -> Iterable[int]:
        """The shards this snapshotter builds now (every one without build locks). A shard
        it just took over starts from the store's newest snapshot (snapshotter/base.py
        adopt_published) and is due at once."""
        if self.locks is None:
            return range(self.shards)
        try:
            held = self.locks.claim(self.shards)
        except LogError as e:
            logger.warning("snapshotter: reading the build locks on etcd: %s; building nothing this round", e)
            return ()
        self._adopted &= held
        for shard in sorted(held - self._adopted):
            self._sizes_at_build.pop(shard, None)
            try:
                mark = self.etcd.restore_mark(shard) if self.etcd is not None else None
                adopt_published(self.store, shard, shard_dir_of(self.data_dir, shard),
                                self.source.durable_tail(shard), mark)
            except (LogError, SnapshotterError, StoreError) as e:  # retried next round, the lock kept
                logger.error("shard %d: taking over its snapshots: %s: %s", shard, type(e).__name__, e)
                continue
            self._adopted.add(shard)
        return sorted(self._adopted)

    def run_once(self, force: bool = True) -> Status:
        held = self._claim()
        for shard in held:
            requested = self.locks.requested.get(shard) if self.locks is not None else None
            if force or requested is not None or self.due(shard):
                status = self.run_shard(shard)
                if requested is not None and status.status == "ok" and status.last_seq >= requested[0]:
                    self._answer(shard, requested[1])
        if self.locks is not None:
            for shard in sorted(set(range(self.shards)) - set(held)):
                self._show_published(shard)
        self._save_status()
        return self.status

    def _answer(self, shard: int, revision: int) -> None:
        """Another node's SAVE/BGSAVE asked for this snapshot: tell it (build_lock.py)."""
        assert self.locks is not None
        try:
            self.locks.answered(shard, revision)
        except LogError as e:  # the request stays: answered again after the next build
            logger.warning("shard %d: clearing another node's snapshot request on etcd: %s", shard, e)

    def _ask_elsewhere(self, request: str, held: set[int]) -> None:
        """A new request: ask the builders of the shards this snapshotter does not build
        for a snapshot through each one's durable tail (none when published already)."""
        targets: dict[int, int] = {}
        others = sorted(set(range(self.shards)) - held) if self.locks is not None else []
        for shard in others:
            assert self.locks is not None
            status = self.status.shards.setdefault(shard, ShardStatus(shard))
            try:
                tail = self.source.durable_tail(shard)
                if tail > (status.last_seq if status.published else 0):
                    self.locks.ask(shard, request, tail)
                    targets[shard] = tail
            except LogError as e:
                logger.error("shard %d: asking its builder on another node for a snapshot: %s", shard, e)
                status.status, status.error = "error", f"asking its builder for a snapshot: {e}"
        if targets:
            logger.info("snapshot request %s: asked other nodes' snapshotters for shards %s", request, targets)
        self.asked.start(request, targets)
        for shard in targets:
            self.others.forget(shard)

    def _asked_done(self) -> bool:
        """Whether every shard asked of another node shows a published snapshot that covers
        the request; shards still short at the deadline are marked failed."""
        for shard, status in self.status.shards.items():
            if status.published:
                self.asked.covered(shard, status.last_seq)
        for shard in self.asked.targets:
            self.others.forget(shard)  # listed again at the next round, not refresh_s later
        for shard, seq in self.asked.late().items():
            error = (f"no snapshot through seq {seq} published by the node building it within "
                     f"{self.asked.timeout_s:.0f} s")
            logger.error("shard %d: snapshot request %s: %s", shard, self.asked.request, error)
            self.status.shards[shard].status, self.status.shards[shard].error = "error", error
        return not self.asked.targets

    def _show_published(self, shard: int) -> None:
        """A shard another node's snapshotter builds: its newest published snapshot in
        this node's status (LASTSAVE, INFO persistence), as if built here."""
        status = self.status.shards.setdefault(shard, ShardStatus(shard))
        remote = self.others.newer(shard, status.last_seq if status.published else 0)
        if remote is None or remote.manifest.seq < status.last_seq:
            return
        m = remote.manifest
        status.last_seq, status.last_created_at_ms = m.seq, m.created_at_ms
        status.last_build_ms, status.last_rdb_bytes, status.last_keys = m.build_ms, m.rdb_bytes, m.keys
        status.last_changes, status.published, status.built_elsewhere = m.changes, True, True
        status.status, status.error = "ok", ""

    def _etcd_upkeep(self, defragmenter: Defragmenter) -> None:
        """A round of etcd defragmentation when one is due (log/etcd_upkeep.py), by the
        one snapshotter holding the defragmenter lock (snapshotter/build_lock.py); a
        failure is logged and retried at the next poll, never the end of the snapshotter."""
        try:
            if self.locks is None or defragmenter.free_bytes_threshold <= 0:
                done = defragmenter.maybe_run()
                self.status.etcd_defragmenter = self.locks is None and defragmenter.free_bytes_threshold > 0
            else:
                self.status.etcd_defragmenter = self.locks.claim_defrag()
                done = defragmenter.maybe_run(self.locks.defrag_deadline) if self.status.etcd_defragmenter else []
            self.status.etcd_defragmented += len(done)
            if done:
                self._save_status()
        except LogError as e:
            logger.warning("snapshotter: etcd upkeep: %s", e)

    def _save_status(self) -> None:
        with self._status_lock:
            self.status.updated_at_ms = time.time_ns() // 1_000_000
            doc = {"shards": {str(k): asdict(v) for k, v in list(self.status.shards.items())},
                   "request_served": self.status.request_served, "updated_at_ms": self.status.updated_at_ms,
                   "request_served_at_ms": self.status.request_served_at_ms,
                   "etcd_defragmenter": self.status.etcd_defragmenter,
                   "etcd_defragmented": self.status.etcd_defragmented}
            os.makedirs(snapshotter_dir(self.data_dir), exist_ok=True)
            replace_file(os.path.join(snapshotter_dir(self.data_dir), STATUS_NAME),
                          json.dumps(doc, indent=2).encode())

    def serve(self, stop: threading.Event) -> None:
        """The snapshotter loop: serve requests and the schedule until stop is set."""
        logger.info("snapshotter ready: %s, %d shards, store %s, every max(%d bytes, %d%% of the snapshot) of "
                    "log or %.0f s, builds at most %d%% of the time", self.data_dir, self.shards, self.store.url,
                    self.schedule.every_bytes, self.schedule.every_percent, self.schedule.max_age_s,
                    self.schedule.cpu_percent)
        # `serve`'s supervisor (and systemd) count a child started once it says so: without
        # it `serve` never told systemd it was ready, and any snapshotter crash was
        # treated as a failure to start (the crash-loop backoff).
        sdnotify.notify(b"READY=1")
        release_free_heap()
        self.build_in_child = True
        shipper = None
        if self.locks is not None:
            self.locks.start(stop)
        if self.archiver is not None:
            shipper = threading.Thread(target=self.archiver.run, args=(stop,), name="log-archive", daemon=True)
            shipper.start()
        while not stop.is_set():
            request = pending_request(self.data_dir, self.status)
            fresh = bool(request) and request != self.asked.request
            try:
                self.run_once(force=fresh)
            except StoreError as e:
                logger.error("snapshotter: %s", e)
            if fresh:
                self._ask_elsewhere(request, set(self._adopted) if self.locks is not None else set())
            if self.etcd is not None and self.etcd.defragmenter is not None:
                self._etcd_upkeep(self.etcd.defragmenter)
            if request and self._asked_done():
                self.status.request_served = request
                shards = self.status.shards.values()
                # Every shard saved for this request, here or (asked) by the node building it.
                if len(shards) == self.shards and all(s.status == "ok" for s in shards):
                    self.status.request_served_at_ms = time.time_ns() // 1_000_000
                self._save_status()
            stop.wait(self.schedule.poll_interval_s)
        if shipper is not None:
            shipper.join()
        if self.locks is not None:
            self.locks.close()
