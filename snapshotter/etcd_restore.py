"""`durakv restore --config FILE` when the shard logs are on etcd.

With the log on etcd the store holds snapshots only (etcd is the replicated log),
so a shard is restored from a published snapshot plus the records etcd still
holds after it, to a target seq: the end of etcd's log (default), --seq N, or
--at (the last record written at or before that time). The data dir receives a
local snapshot at the target; etcd's log is then made to continue at target + 1:

- target = etcd's last seq: nothing changes on etcd;
- target < etcd's last seq (a point in time): the records after the target are
  deleted from etcd (acknowledged writes: refused without --force), and so are the
  store's snapshots past the target; etcd's P/restored marks the cut, so a machine
  whose snapshot cache still holds that discarded history deletes it at its start,
  and P/published (which may name a snapshot of that history) is deleted with it;
- etcd holds less than the target (a new or wiped etcd, disaster recovery):
  etcd's log is set to start at target + 1.

Every write to etcd is one transaction fenced by the shard's leader key, taken
without take-over: while a live primary holds it (its etcd lease not expired),
restore refuses with one line and changes nothing, on etcd or in the data dir."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass

from durakv.log.errors import LeaseLost, RecordsDropped
from durakv.log.etcd_log import EtcdLog
from durakv.log.etcd_records import Keys, kvs_of, recorded_shard_count, shard_prefix
from durakv.log.etcd_client import unb64
from durakv.log.lock import exclusive_data_dir
from durakv.log.disk import OS_DISK
from durakv.log.layout import LOCK_FILE
from durakv.shards.log_backend import record_shard_count
from durakv.shards.rdb.file import settle_keyspace
from durakv.shards.slots import slot_ranges
from durakv.snapshotter.build import write_snapshot
from durakv.snapshotter.digest import state_digest
from durakv.snapshotter.local import SnapshotInvalid, load_snapshot, shard_dir_of
from durakv.snapshotter.logsource import EtcdLogSource
from durakv.snapshotter.replay import CHAIN_START, new_context, replay_records
from durakv.snapshotter.restore import RestoreError, ShardRestore, choose_snapshot, data_dir_is_empty, shards_in_store
from durakv.snapshotter.store import Store

RESTORE_HOLDER = "durakv restore"

logger = logging.getLogger("durakv.snapshotter")


@dataclass
class EtcdPlan:
    """What restoring one shard does to its log on etcd."""
    shard: int
    first_seq: int        # etcd's first retained seq before the restore
    last_seq: int         # and its last
    target: int           # the restored state's seq: etcd continues at target + 1
    keep_first: int       # the records etcd keeps: keep_first..target (none if keep_first > target)

    @property
    def changes_etcd(self) -> bool:
        return self.target != self.last_seq

    @property
    def discards(self) -> int:
        """Records on etcd after the target: acknowledged writes the restore discards."""
        return max(0, self.last_seq - self.target)


def restore_etcd(store: Store, source: EtcdLogSource, data_dir: str, *, seq: int | dict[int, int] | None = None,
                 at_ms: int | None = None, force: bool = False) -> list[ShardRestore]:
    """Restore every shard on etcd into data_dir (empty, or replaced with force)."""
    target_dir = os.path.abspath(data_dir)
    existed = os.path.exists(target_dir)
    os.makedirs(target_dir, exist_ok=True)
    try:
        with exclusive_data_dir(target_dir, "durakv restore"):
            return _restore_locked(store, source, target_dir, seq, at_ms, force)
    except BaseException:
        if not existed:
            shutil.rmtree(target_dir, ignore_errors=True)
        raise


def _restore_locked(store: Store, source: EtcdLogSource, target_dir: str, seq: int | dict[int, int] | None,
                    at_ms: int | None, force: bool) -> list[ShardRestore]:
    if not data_dir_is_empty(target_dir) and not force:
        raise RestoreError(f"{target_dir} is not empty; restore refuses to mix histories "
                           "(use --force to replace its contents)")
    # A new or wiped etcd holds no shard count yet: the store's snapshots say it.
    shards = recorded_shard_count(source.client, source.prefix) or shards_in_store(store)
    for shard in range(shards):
        _refuse_live_primary(source, shard)
    staging = tempfile.mkdtemp(dir=os.path.dirname(target_dir), prefix=f".{os.path.basename(target_dir)}.restore-")
    try:
        out, plans = [], []
        for shard in range(shards):
            shard_dir = shard_dir_of(staging, shard)
            os.makedirs(shard_dir)
            shard_seq = seq.get(shard) if isinstance(seq, dict) else seq
            restored, plan = _restore_shard(store, source, shard, shards, shard_dir, shard_seq, at_ms)
            if plan.discards and not force:
                raise RestoreError(f"shard {shard}: etcd holds seqs {plan.target + 1}..{plan.last_seq} after the "
                                   f"target seq {plan.target}; restoring deletes these acknowledged writes from "
                                   "etcd: pass --force to discard them")
            out.append(restored)
            plans.append(plan)
        for plan in plans:
            if plan.changes_etcd:
                _rewrite(source, plan, shards)
            if plan.discards:
                _forget_discarded(store, plan)
        for name in os.listdir(target_dir):
            if name != LOCK_FILE:
                path = os.path.join(target_dir, name)
                shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.unlink(path)
        for name in os.listdir(staging):
            os.rename(os.path.join(staging, name), os.path.join(target_dir, name))
        OS_DISK.fsync_dir(target_dir)
        return out
    finally:
        shutil.rmtree(staging)


def _refuse_live_primary(source: EtcdLogSource, shard: int) -> None:
    kvs = kvs_of(source.client.range(Keys(shard_prefix(source.prefix, shard).encode()).leader))
    if kvs:
        holder = unb64(kvs[0]["value"]).decode(errors="replace")
        raise RestoreError(f"shard {shard}: its log on etcd is led by {holder}, a primary whose etcd lease is "
                           "alive; stop the tree serving it (every machine) before restoring")


def _restore_shard(store: Store, source: EtcdLogSource, shard: int, shards: int, shard_dir: str,
                   seq: int | None, at_ms: int | None) -> tuple[ShardRestore, EtcdPlan]:
    first, last = source.first_seq(shard), source.durable_tail(shard)
    published = [s for s in store.list_snapshots(shard) if s.complete]
    # etcd holds less than the store (a new or wiped etcd): the target is a snapshot alone.
    etcd_lost = bool(published) and published[-1].manifest.seq > last
    usable = published if etcd_lost else [s for s in published if s.manifest.seq >= first - 1]
    base = choose_snapshot(usable, seq if seq is not None else (None if etcd_lost else last), at_ms)
    if base is None and (etcd_lost or first > 1):
        raise RestoreError(f"shard {shard}: {store.url} holds no snapshot at or before the target that etcd's "
                           f"log (seqs {first}..{last}) continues; pick a later --seq/--at or the store the "
                           "snapshotter published to")
    ctx = new_context(slot_range=slot_ranges(shards)[shard])
    base_seq, chain, epoch, last_at_ms = 0, CHAIN_START, 0, 0
    if base is not None:
        m = base.manifest
        if m.shards != shards:
            raise RestoreError(f"shard {shard}: snapshot at seq {m.seq} belongs to a {m.shards}-shard cluster, "
                               f"not {shards}")
        try:
            load_snapshot(store.download_snapshot(base, shard_dir), ctx.db, check_digest=True)
        except SnapshotInvalid as e:
            raise RestoreError(f"shard {shard}: snapshot at seq {m.seq} does not verify: {e}") from None
        base_seq, chain, epoch, last_at_ms = m.seq, m.chain, m.epoch, m.last_record_at_ms
    target, replayed = base_seq, 0
    through = last if seq is None else seq
    if not etcd_lost and through > base_seq:
        if through > last:
            raise RestoreError(f"shard {shard}: etcd's log ends at seq {last}, before the target seq {through}")
        try:
            result = replay_records(ctx, source.read(shard, base_seq + 1, through), base_seq, chain, until_ms=at_ms)
        except RecordsDropped as e:
            raise RestoreError(f"shard {shard}: {e}") from None
        replayed, target = result.records, result.last_seq
        chain, epoch = result.chain, max(epoch, result.last_epoch)
        last_at_ms = result.last_record_at_ms if result.records else last_at_ms
    if replayed:
        settle_keyspace(ctx.db, dict(ctx.shard.settings))
        digest = state_digest(ctx.db)
        write_snapshot(ctx.db, shard_dir, dict(
            shard=shard, shards=shards, slot_ranges=[slot_ranges(shards)[shard]], seq=target, epoch=epoch,
            chain=chain, parent_seq=base_seq, parent_chain=base.manifest.chain if base else CHAIN_START,
            records_replayed=replayed, tail_fixed_at_ms=0, last_record_at_ms=last_at_ms), digest)
    else:
        digest = base.manifest.state_digest if base is not None else state_digest(ctx.db)
    keep_first = target + 1 if etcd_lost else first
    restored = ShardRestore(shard, base_seq, target, replayed, len(ctx.db.data), digest, last_at_ms)
    return restored, EtcdPlan(shard, first, last, target, keep_first)


def _forget_discarded(store: Store, plan: EtcdPlan) -> None:
    """Delete the store's snapshots past the target: they hold the writes the restore
    discarded, and the snapshotter will publish the new history under the same names."""
    for snapshot in store.list_snapshots(plan.shard):
        if snapshot.manifest.seq > plan.target:
            logger.warning("shard %d: deleting snapshot seq %d from %s: it holds records the restore discarded",
                           plan.shard, snapshot.manifest.seq, store.url)
            store.delete_snapshot(snapshot)


def _rewrite(source: EtcdLogSource, plan: EtcdPlan, shards: int) -> None:
    """Make the shard's log on etcd continue at plan.target + 1, fenced by its leader key."""
    log = EtcdLog.open(source.client, shard_prefix(source.prefix, plan.shard))
    try:
        try:
            log.take_lease(RESTORE_HOLDER, take_over=False)
        except LeaseLost as e:
            raise RestoreError(f"shard {plan.shard}: {e}; stop the tree serving it before restoring") from None
        log.rewrite_bounds(min(plan.keep_first, plan.target + 1), plan.target)
        record_shard_count(source.client, source.prefix, shards)
    finally:
        log.close()
