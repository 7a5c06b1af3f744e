"""A shard's log on etcd: the writer API of log.Log (append, sync, take_lease, read,
drop) over an etcd cluster, so an acknowledged write survives the loss of a machine.

The keys (P/log/<seq>, P/leader, P/epoch, P/first, parts of large records) and the
readers are in log/etcd_records.py.

Fencing: take_lease() writes P/leader and bumps P/epoch in one transaction; the
leader key's mod_revision is the writer's fencing token. Every sync is a transaction
that compares P/leader's mod_revision with that token and the next sequence key
absent, so a deposed writer (another took the leader key, or its etcd lease
expired and etcd deleted the key) is refused, whatever seq it aims at.

Group commit: sync() takes everything pending and writes it in consecutive fenced
transactions, each under etcd's request limits (max_txn_bytes of values,
max_txn_ops puts), returning once the last one committed. etcd fdatasyncs on a
quorum of members before it answers, so whatever sync() returned is durable.
A reply lost with a member makes the client retry on another: if the retry's
compare fails while the leader key is still ours and the sequence key exists,
our earlier attempt committed (only the leader writes log keys), so it counts.

etcd's lease is kept alive by a thread renewing it every ttl/3 (and by renew()); etcd
answers an expired lease's renewal with TTL 0, not an error, so the TTL is checked on
every renewal. The lease's valid_until_ns is the local CLOCK_MONOTONIC at which the
renewal was sent plus the TTL granted (log/interface.py): etcd cannot expire the
lease before then, so no other writer can lead before then.

EtcdLog implements log/interface.py's ShardLog; log/etcd_follower.py its LogFollower.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

from .errors import LeaseLost, LogClosed, LogCorrupt, LogWriteFailed, PendingFull, RecordTooLarge, \
    SequenceMismatch
from .etcd_positions import droppable_through
from .etcd_client import EtcdClient, EtcdRequestFailed, EtcdUnavailable, b64, unb64
from .etcd_records import (HEADER, MAX_PARTS, Keys, cmp_absent, cmp_mod, drop_ops, first_and_guard, get_op, kvs_of,
                           log_ends, put_op, read, revision_of)
from .etcd_nodes import leader_entry_key
from .etcd_upkeep import MemberSize, compact_to_floor, floor_prefixes, member_size
from .format import PayloadPieces
from .interface import LeaseLike
from .lease import BOOT_ID, pid_alive
from .writer import RecoveryReport

logger = logging.getLogger("durakv.log")

DEFAULT_LEASE_TTL_S = 10
MIN_LEASE_TTL_S = 2
# etcd's defaults: --max-request-bytes 1.5 MiB, --max-txn-ops 128 (puts per transaction).
DEFAULT_MAX_TXN_BYTES = 1024 * 1024
DEFAULT_MAX_TXN_OPS = 128
DEFAULT_MAX_PENDING_BYTES = 2 * 1024 * 1024 * 1024  # as log.Log's: two records of the largest value
TAKE_LEASE_ATTEMPTS = 20
CAMPAIGN_POLL_S = 0.1


def holder_is_dead(leader_value_b64: str, node: str = "") -> bool:
    """Whether a leader key's holder ran on this machine in this boot and its process
    is gone (not merely unknown: another machine's holder is never deemed dead). A
    holder that names another node than `node` counts as another machine's, even when
    both nodes run on one host (as in tests)."""
    try:
        leader = json.loads(unb64(leader_value_b64))
        boot, pid = int(leader.get("boot", 0)), int(leader.get("pid", 0))
        holder_node = str(leader.get("node", ""))
    except (ValueError, TypeError, AttributeError):
        return False
    return boot != 0 and boot == BOOT_ID and holder_node == node and not pid_alive(pid)


@dataclass(slots=True)
class EtcdLease:
    """The right to append (log/interface.py's LeaseLike): current while its epoch is the
    log's and the leader key is ours; valid_until_ns as of the renewal that made it.
    Not frozen only because LeaseLike declares plain (writable) attributes; nothing
    changes one after it is made."""
    holder: str
    epoch: int
    valid_until_ns: int
    _owner: object = field(repr=False, compare=False)


class EtcdLog:
    """A shard's log on etcd, with log.Log's writer API. Create with EtcdLog.open()."""

    def __init__(self, client: EtcdClient, prefix: str, lease_ttl_s: int, max_txn_bytes: int,
                 max_txn_ops: int, max_pending_bytes: int) -> None:
        self.client = client
        self.prefix = prefix
        self.path = f"etcd:{prefix}"  # what messages name, as log.Log's directory path
        self._keys = Keys(prefix.encode())
        self.lease_ttl_s = lease_ttl_s
        self.max_txn_bytes = max_txn_bytes
        self.max_txn_ops = max_txn_ops
        self.max_pending_bytes = max_pending_bytes
        self._owner = object()
        self._lock = threading.Lock()              # guards the pending buffer swap
        self._pending: list[tuple[int, int, bytes]] = []   # (seq, epoch, payload)
        self._pending_bytes = 0
        self._inflight: list[tuple[bytes, bytes, int]] = []  # (key, value, seq of a record key or 0) to commit
        self._sync_busy = threading.Lock()
        self._failed: BaseException | None = None
        self._deposed: str | None = None
        self._lease_expired = False                # etcd answered a renewal with TTL 0: our leader key is gone
        self._closed = False
        self._epoch = 0
        self._holder = ""
        self._leader_revision = 0                  # mod_revision of our leader key: the fencing token
        self._etcd_lease = 0
        self._valid_until_ns = 0                   # CLOCK_MONOTONIC: etcd keeps our lease at least until then
        self._renew_lock = threading.Lock()
        self._renew_client = client.clone()        # renewals run beside the commit thread's requests
        self._upkeep_client = client.clone()       # and the drops and size reads of the upkeep thread
        self.compacted_revision = 0                # the highest revision this log compacted etcd at
        self._floor_prefixes: list[str] | None = None  # the shard logs compaction waits for (first drop reads)
        self.member_size: MemberSize | None = None  # refresh_size()'s last reading
        self._size_read_at = 0.0                   # CLOCK_MONOTONIC s of that reading
        self._stop = threading.Event()
        self._keepalive_thread: threading.Thread | None = None
        self.first_seq = 1
        self.tail_seq = 0
        self.durable_seq = 0
        self.fsync_count = 0                       # transactions committed (each fsync'd by a quorum)
        self.last_fsync_latency_us = 0
        self.bytes_written = 0
        self.recovery: RecoveryReport | None = None
        # Told each new durable_seq before sync() returns (a shard with replicas publishes it
        # in its local LEASE file for WAIT and INFO replication, shards/log_backend.py).
        self.durable_sink: Callable[[int], None] | None = None
        # Told (epoch, valid_until_ns) when this writer leads and at each renewal while it does
        # (a shard with replicas mirrors its lease in the local LEASE file for the supervisor's
        # failover and the routers, shards/log_backend.py).
        self.lease_sink: Callable[[int, int], None] | None = None
        # More about the writer for the leader key's readers (a node's id and advertised
        # address, when durakv runs on several machines).
        self.leader_info: dict[str, str] = {}

    @classmethod
    def open(cls, client: EtcdClient, prefix: str, *, lease_ttl_s: int = DEFAULT_LEASE_TTL_S,
             max_txn_bytes: int = DEFAULT_MAX_TXN_BYTES, max_txn_ops: int = DEFAULT_MAX_TXN_OPS,
             max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES) -> "EtcdLog":
        """Find the log's first and last seq under `prefix` and grant the etcd lease the
        writer's leader key will be bound to (kept alive from now on). Raises
        EtcdUnavailable if no endpoint answers."""
        if lease_ttl_s < MIN_LEASE_TTL_S:
            raise ValueError(f"lease_ttl_s must be at least {MIN_LEASE_TTL_S}")
        if not 1 <= max_txn_ops <= 10_000 or max_txn_bytes < 1024:
            raise ValueError("max_txn_ops must be in 1..10000 and max_txn_bytes at least 1024")
        started = time.perf_counter()
        log = cls(client, prefix, lease_ttl_s, max_txn_bytes, max_txn_ops, max_pending_bytes)
        log.first_seq, last = log_ends(client, log._keys)
        log.tail_seq = log.durable_seq = last
        sent_ns = time.monotonic_ns()
        log._etcd_lease = client.lease_grant(lease_ttl_s)
        log._valid_until_ns = sent_ns + lease_ttl_s * 1_000_000_000
        log._keepalive_thread = threading.Thread(target=log._keep_alive, name=f"etcd lease {prefix}",
                                                 daemon=True)
        log._keepalive_thread.start()
        log.recovery = RecoveryReport(
            records=max(0, last - log.first_seq + 1), first_seq=log.first_seq, last_seq=last, truncated_bytes=0,
            truncated_segment=None, truncated_offset_bytes=None, truncated_reason=None, removed_segments=(),
            elapsed_ms=(time.perf_counter() - started) * 1000)
        return log

    # ---- the etcd lease ----

    def _keep_alive(self) -> None:
        interval_s = self.lease_ttl_s / 3
        while not self._stop.wait(interval_s):
            try:
                if not self._renew_etcd_lease() or not self._still_leader():
                    return
            except (EtcdUnavailable, EtcdRequestFailed) as e:
                logger.warning("etcd log %s: lease renewal failed (%s); valid for %.1f s more", self.prefix, e,
                               max(0, self._valid_until_ns - time.monotonic_ns()) / 1e9)

    def _renew_etcd_lease(self) -> bool:
        """One renewal; False once etcd says the lease expired (its leader key is gone)."""
        with self._renew_lock:
            sent_ns = time.monotonic_ns()
            ttl_s = self._renew_client.lease_keepalive(self._etcd_lease)
            if ttl_s <= 0:
                if self._valid_until_ns:
                    logger.error("etcd log %s: etcd lease %x expired (renewal answered TTL %d); the leader key "
                                 "is gone and appends will be refused", self.prefix, self._etcd_lease, ttl_s)
                self._valid_until_ns = 0
                self._lease_expired = True
                return False
            self._valid_until_ns = max(self._valid_until_ns, sent_ns + ttl_s * 1_000_000_000)
            if self.lease_sink is not None and self._epoch and not self.lease_lost:
                self.lease_sink(self._epoch, self._valid_until_ns)
            return True

    def _still_leader(self) -> bool:
        """After a renewal (keepalive thread): whether the leader key still holds our
        fencing token. Another writer may take it over (take_lease with take_over) while
        our etcd lease lives; the primary then stops serving reads at its next batch."""
        if not self._leader_revision or self._deposed is not None:
            return self._deposed is None
        kvs = kvs_of(self._renew_client.range(self._keys.leader))
        if kvs and int(kvs[0]["mod_revision"]) == self._leader_revision:
            return True
        now = unb64(kvs[0]["value"]).decode(errors="replace") if kvs else "nobody"
        self._deposed = f"the leader key is now held by {now} (seen at a lease renewal)"
        logger.critical("etcd log %s: %r (epoch %d) was deposed: %s", self.prefix, self._holder, self._epoch,
                        self._deposed)
        return False

    @property
    def valid_until_ns(self) -> int:
        """CLOCK_MONOTONIC until which no other writer can lead (0 once lost)."""
        return 0 if self.lease_lost else self._valid_until_ns

    @property
    def lease_lost(self) -> bool:
        """Deposed, or etcd expired our lease (the leader key is gone): this writer can
        neither append nor serve again; open the log anew to lead."""
        return self._deposed is not None or self._lease_expired

    @property
    def lost_reason(self) -> str:
        return self._deposed or f"etcd lease {self._etcd_lease:x} expired; the leader key is gone"

    def renew(self, lease: LeaseLike) -> EtcdLease:
        """Renew the etcd lease now and check the leader key is still ours; a lease with
        the new valid_until_ns. LeaseLost if deposed or the etcd lease expired. (A thread
        renews the etcd lease every ttl/3 as well.)"""
        self._check_lease(lease)
        if not self._renew_etcd_lease():
            raise LeaseLost(f"etcd log {self.prefix}: the etcd lease expired; the leader key is gone")
        kvs = kvs_of(self.client.range(self._keys.leader))
        if not kvs or int(kvs[0]["mod_revision"]) != self._leader_revision:
            self._deposed = "another writer took the leader key (seen at a renewal)"
            raise LeaseLost(f"etcd log {self.prefix}: {self._holder!r} (epoch {self._epoch}) was deposed: "
                            f"{self._deposed}")
        return EtcdLease(lease.holder, lease.epoch, self._valid_until_ns, self._owner)

    def lease_valid(self, margin_s: float = 0.0) -> bool:
        """Whether the etcd lease backing our leader key is known alive for margin_s more
        (a primary serves reads only while this holds)."""
        return not self.lease_lost and time.monotonic_ns() + margin_s * 1e9 < self._valid_until_ns

    # ---- leases (epochs) ----

    def take_lease(self, holder: str, *, take_over: bool = True, wait_s: float | None = 0.0,
                   depose_dead: bool = False, reread: bool = False) -> EtcdLease:
        """Campaign: write the leader key (bound to our etcd lease) with an epoch above
        every earlier one. With take_over an existing leader is deposed at once (only for
        tools and tests: a live deposed leader could still answer reads until its next
        renewal); without it, the leader key must be absent (its holder's lease expired),
        waiting up to wait_s. depose_dead: a holder that ran on this machine in this boot
        and whose process is gone is deposed at once (a restart or a failover on the same
        machine need not wait out its TTL: a dead process serves nothing). wait_s None:
        wait as long as another writer leads (a standby). reread: the caller has read
        nothing yet, so a log that grew while we waited is read again rather than refused."""
        self._check_open()
        keys = self._keys
        deadline = None if wait_s is None else time.monotonic() + wait_s
        raced = 0
        waiting_logged = False
        while True:
            kvs = kvs_of(self.client.range(keys.epoch))
            epoch_revision = int(kvs[0]["mod_revision"]) if kvs else 0
            epoch = max(int(unb64(kvs[0]["value"])) if kvs else 0, self._epoch) + 1
            leader = json.dumps({**self.leader_info, "holder": holder, "epoch": epoch, "lease": self._etcd_lease,
                                 "pid": os.getpid(), "boot": BOOT_ID}).encode()
            compare = [cmp_mod(keys.epoch, epoch_revision)]
            if not take_over:
                held = kvs_of(self.client.range(keys.leader))
                if held and depose_dead and holder_is_dead(held[0]["value"], self.leader_info.get("node", "")):
                    logger.warning("etcd log %s: the leader key's holder (%s) is a process of this machine that "
                                   "is gone; taking over", self.prefix,
                                   unb64(held[0]["value"]).decode(errors="replace"))
                    compare.append(cmp_mod(keys.leader, int(held[0]["mod_revision"])))
                else:
                    compare.append(cmp_absent(keys.leader))
                    if held and not waiting_logged:
                        waiting_logged = True
                        logger.warning("etcd log %s: the leader key is held by %s; waiting %s for it to be "
                                       "free", self.prefix, unb64(held[0]["value"]).decode(errors="replace"),
                                       "as a standby" if wait_s is None else f"up to {wait_s:g} s")
            puts = [put_op(keys.epoch, str(epoch).encode()), put_op(keys.leader, leader, self._etcd_lease)]
            if self.leader_info.get("node"):  # a node of several: routers everywhere follow the copy
                puts.append(put_op(leader_entry_key(self.prefix), leader, self._etcd_lease))
            reply = self.client.txn(compare, puts, [get_op(keys.epoch)])
            if reply.get("succeeded"):
                self._leader_revision = revision_of(reply)
                break
            now_kvs = kvs_of(reply["responses"][0]["response_range"])
            if (int(now_kvs[0]["mod_revision"]) if now_kvs else 0) != epoch_revision:
                raced += 1  # another campaigner bumped the epoch between our read and our write
                if raced >= TAKE_LEASE_ATTEMPTS:
                    raise LeaseLost(f"etcd log {self.prefix}: {TAKE_LEASE_ATTEMPTS} campaigns for the leader key "
                                    "lost to other writers")
                continue
            if deadline is not None and time.monotonic() >= deadline:  # not take_over: the key is still held
                raise LeaseLost(f"etcd log {self.prefix}: the leader key is held (by another writer whose etcd "
                                f"lease has not expired) after waiting {wait_s} s")
            time.sleep(CAMPAIGN_POLL_S)
        first, tail = log_ends(self.client, keys)
        if reread and tail != self.tail_seq:
            logger.info("etcd log %s: the log grew from seq %d to %d while %s campaigned", self.prefix,
                        self.tail_seq, tail, holder)
            self.first_seq, self.tail_seq, self.durable_seq = first, tail, tail
            if self.recovery is not None:
                self.recovery = dataclasses.replace(self.recovery, records=max(0, tail - first + 1),
                                                    first_seq=first, last_seq=tail)
            if self.durable_sink is not None:
                self.durable_sink(tail)
        elif tail != self.tail_seq:
            self._deposed = f"the log grew from seq {self.tail_seq} to {tail} while it was opened"
            raise LeaseLost(f"etcd log {self.prefix}: {self._deposed}; open it again")
        self._epoch, self._holder, self._deposed = epoch, holder, None
        if self.lease_sink is not None:
            self.lease_sink(epoch, self._valid_until_ns)
        logger.info("etcd log %s: %s leads at epoch %d (leader revision %d)", self.prefix, holder, epoch,
                    self._leader_revision)
        return EtcdLease(holder, epoch, self._valid_until_ns, self._owner)

    @property
    def epoch(self) -> int:
        return self._epoch

    def _check_lease(self, lease: LeaseLike) -> None:
        if not isinstance(lease, EtcdLease) or lease._owner is not self._owner:
            raise LeaseLost(f"{lease!r} was not issued by this log ({self.path})")
        if self._deposed is not None:
            raise LeaseLost(f"etcd log {self.prefix}: {self._holder!r} was deposed: {self._deposed}")
        if lease.epoch != self._epoch:
            raise LeaseLost(f"lease epoch {lease.epoch} is not current: epoch {self._epoch} is")

    # ---- writing ----

    def append(self, payloads: Sequence[bytes | PayloadPieces], after_seq: int, lease: LeaseLike) -> int:
        """Queue payloads as seqs after_seq+1..; nothing is in etcd until sync()."""
        self._check_open()
        self._check_lease(lease)
        if after_seq != self.tail_seq:
            raise SequenceMismatch(after_seq, self.tail_seq)
        size = 0
        for payload in payloads:
            if len(payload) > MAX_PARTS * self.max_txn_bytes:
                raise RecordTooLarge(f"record of {len(payload)} bytes exceeds the etcd log's "
                                     f"{MAX_PARTS * self.max_txn_bytes}-byte limit")
            size += len(payload) + HEADER.size
        records = [(after_seq + 1 + i, lease.epoch, bytes(payload)) for i, payload in enumerate(payloads)]
        if not records:
            return self.tail_seq
        with self._lock:
            if self._pending_bytes + size > self.max_pending_bytes:
                raise PendingFull(f"{self._pending_bytes + size} bytes pending would exceed "
                                  f"max_pending_bytes={self.max_pending_bytes}; sync first")
            self._pending.extend(records)
            self._pending_bytes += size
        self.tail_seq = after_seq + len(records)
        return self.tail_seq

    def sync(self) -> int:
        """Commit everything pending in consecutive fenced transactions; returns durable_seq
        once the last committed. LeaseLost if deposed (the records are not in etcd),
        LogWriteFailed if etcd was unavailable (retry_failed() tries again)."""
        self._check_usable()
        if not self._sync_busy.acquire(blocking=False):
            raise RuntimeError(f"EtcdLog.sync() of {self.prefix} called while another sync() runs")
        try:
            self._check_usable()
            with self._lock:
                records, self._pending, self._pending_bytes = self._pending, [], 0
            self._inflight += self._puts(records)
            self._commit_inflight()
            return self.durable_seq
        finally:
            self._sync_busy.release()

    def retry_failed(self) -> int:
        """After LogWriteFailed: commit the records the failed sync held, again."""
        self._check_open()
        if not self._sync_busy.acquire(blocking=False):
            raise RuntimeError(f"EtcdLog.retry_failed() of {self.prefix} called while a sync runs")
        try:
            if self._failed is None:
                return self.durable_seq
            if self._deposed is not None:
                raise LeaseLost(f"etcd log {self.prefix}: deposed: {self._deposed}")
            self._failed = None
            self._commit_inflight()
            logger.warning("etcd log %s: writable again; durable through seq %d", self.prefix, self.durable_seq)
            return self.durable_seq
        finally:
            self._sync_busy.release()

    def _puts(self, records: list[tuple[int, int, bytes]]) -> list[tuple[bytes, bytes, int]]:
        """The key/value puts of records, in commit order: a payload over max_txn_bytes
        goes in parts first, then its record key, which makes it exist."""
        keys, limit = self._keys, self.max_txn_bytes
        puts = []
        for seq, epoch, payload in records:
            if len(payload) + HEADER.size <= limit:
                puts.append((keys.record(seq), HEADER.pack(epoch, 0) + payload, seq))
                continue
            parts = (len(payload) + limit - 1) // limit
            puts += [(keys.part(seq, i), payload[i * limit:(i + 1) * limit], 0) for i in range(parts)]
            puts.append((keys.record(seq), HEADER.pack(epoch, parts), seq))
        return puts

    def _commit_inflight(self) -> None:
        while self._inflight:
            count, size = 0, 0
            for _key, value, _seq in self._inflight:
                if count and (count >= self.max_txn_ops or size + len(value) > self.max_txn_bytes):
                    break
                count += 1
                size += len(value)
            chunk = self._inflight[:count]
            seqs = [seq for _key, _value, seq in chunk if seq]
            started = time.perf_counter_ns()
            try:
                self._commit_chunk(chunk, seqs)
            except (EtcdUnavailable, EtcdRequestFailed) as e:
                self._failed = e
                logger.error("etcd log %s: committing seqs %d..%d failed: %s", self.prefix, self.durable_seq + 1,
                             self.tail_seq, e)
                raise LogWriteFailed(f"etcd log {self.prefix}: {e}; writes wait for a successful retry") from e
            self.last_fsync_latency_us = (time.perf_counter_ns() - started) // 1000
            del self._inflight[:count]
            self.fsync_count += 1
            self.bytes_written += size
            if seqs:
                self.durable_seq = seqs[-1]
                if self.durable_sink is not None:
                    self.durable_sink(self.durable_seq)

    def _commit_chunk(self, chunk: list[tuple[bytes, bytes, int]], seqs: list[int]) -> None:
        """One fenced transaction: the leader key is ours and the first record key in it
        is absent (a chunk of parts only is fenced by the leader key alone)."""
        keys = self._keys
        assert not seqs or seqs[0] == self.durable_seq + 1, "records commit in order, with no gap"
        compare = [cmp_mod(keys.leader, self._leader_revision)]
        failure = [get_op(keys.leader)]
        if seqs:
            compare.append(cmp_absent(keys.record(seqs[0])))
            failure.append({"request_range": {"key": b64(keys.record(seqs[0])), "keys_only": True}})
        reply = self.client.txn(compare, [put_op(key, value) for key, value, _seq in chunk], failure)
        if reply.get("succeeded"):
            return
        what = f"seqs {seqs[0]}..{seqs[-1]}" if seqs else f"parts of seq {self.durable_seq + 1}"
        leader_kvs = kvs_of(reply["responses"][0]["response_range"])
        if not leader_kvs or int(leader_kvs[0]["mod_revision"]) != self._leader_revision:
            now = unb64(leader_kvs[0]["value"]).decode(errors="replace") if leader_kvs else "nobody (lease expired)"
            self._deposed = f"the leader key is now held by {now}"
            self._failed = LeaseLost(self._deposed)
            logger.critical("etcd log %s: %r (epoch %d) was deposed: %s; %s refused", self.prefix,
                            self._holder, self._epoch, self._deposed, what)
            raise LeaseLost(f"etcd log {self.prefix}: {self._holder!r} (epoch {self._epoch}) was deposed: "
                            f"{self._deposed}")
        if seqs and kvs_of(reply["responses"][1]["response_range"]):
            # Still the leader, and the record key exists: only the leader writes log keys, so an
            # earlier attempt of this very transaction committed and its reply was lost.
            logger.warning("etcd log %s: %s were committed by an attempt whose reply was lost", self.prefix, what)
            return
        raise LogCorrupt(self.path, seqs[0] if seqs else 0,
                         "fenced append refused although this writer leads and the seq is free")

    # ---- reading and dropping ----

    def read(self, from_seq: int = 1, *, through_seq: int | None = None) -> Iterator[tuple[int, int, bytes]]:
        """(seq, epoch, payload) from from_seq through durable_seq (or through_seq if lower)."""
        limit = self.durable_seq if through_seq is None else min(through_seq, self.durable_seq)
        if limit < from_seq:
            return iter(())
        return read(self.client, self.prefix, from_seq, through_seq=limit)

    @property
    def upkeep_client(self) -> EtcdClient:
        """The upkeep thread's own client (drops, size reads, the release notice on etcd)."""
        return self._upkeep_client

    def drop_segments_through(self, seq: int) -> list[str]:
        """Delete the records through `seq` (fenced: only the leader drops) that every
        live replica on any node has applied (log/etcd_positions.py), move the first
        seq on, and compact etcd's history up to the deployment's compaction floor
        (log/etcd_upkeep.py: never past a revision another shard's followers still
        need), so the space can be reused; defragmentation returns it to the
        disk. Called from one upkeep thread at a time, beside the commit thread: it
        has its own etcd client."""
        self._check_usable()
        seq = min(seq, self.durable_seq)
        if seq < self.first_seq:
            return []
        keys = self._keys
        client = self._upkeep_client
        allowed, positions = droppable_through(client, keys, seq)
        if allowed < seq:
            logger.info("etcd log %s: dropping through seq %d, not %d: a replica still needs the rest (%s)",
                        self.prefix, allowed, seq, ", ".join(f"{n} at {p}" for n, p in sorted(positions.items())))
            seq = allowed
        # `durakv log truncate` may have moved the first seq on beside us: start from etcd's.
        first, first_unmoved = first_and_guard(client, keys)
        self.first_seq = max(self.first_seq, first)
        if seq < self.first_seq:
            return []
        reply = client.txn([cmp_mod(keys.leader, self._leader_revision), first_unmoved],
                           drop_ops(keys, self.first_seq, seq), [get_op(keys.leader)])
        if not reply.get("succeeded"):
            leader_kvs = kvs_of(reply["responses"][0]["response_range"])
            if leader_kvs and int(leader_kvs[0]["mod_revision"]) == self._leader_revision:
                logger.info("etcd log %s: the first seq moved while dropping (durakv log truncate); the next "
                            "round drops from there", self.prefix)
                return []
            self._deposed = "the leader key changed (seen while dropping records)"
            raise LeaseLost(f"etcd log {self.prefix}: {self._deposed}")
        dropped = [f"{self.path}/log/{self.first_seq}..{seq}"]
        self.first_seq = seq + 1
        try:
            if self._floor_prefixes is None:
                self._floor_prefixes = floor_prefixes(client, self.prefix)
            self.compacted_revision = max(self.compacted_revision,
                                          compact_to_floor(client, self._floor_prefixes, revision_of(reply)))
        except (EtcdUnavailable, EtcdRequestFailed) as e:  # e.g. a user without etcd's root role
            logger.warning("etcd log %s: records through seq %d dropped, but compacting etcd's history failed "
                           "(%s); compact it with etcdctl compact", self.prefix, seq, e)
        return dropped

    def refresh_size(self, max_age_s: float = 0.0) -> MemberSize | None:
        """Read the size of the member requests go to (INFO shows the last one read),
        unless the last reading is younger than max_age_s; from the upkeep thread,
        never the shard's loop: it is a request to etcd."""
        now = time.monotonic()
        if self.member_size is not None and now - self._size_read_at < max_age_s:
            return self.member_size
        client = self._upkeep_client
        self._size_read_at = now
        try:
            self.member_size = member_size(client, client.endpoints.index(self.client.current_endpoint))
        except EtcdUnavailable as e:
            logger.warning("etcd log %s: reading etcd's size failed: %s", self.prefix, e)
        return self.member_size

    def rewrite_bounds(self, first_seq: int, last_seq: int) -> None:
        """Keep only the records first_seq..last_seq and make the log continue at
        last_seq + 1 (`durakv restore`: the restored state is a snapshot through
        last_seq; last_seq = first_seq - 1 keeps none), and mark the cut (P/restored:
        snapshots past last_seq from before our epoch are of the discarded history).
        P/published goes too: it names a snapshot of the old history (harmless, as its
        epoch is older than the mark's, but no stale notice should stay).
        One transaction fenced by our leader key, so it is refused once another
        writer leads. Nothing may be pending."""
        self._check_usable()
        if self.tail_seq != self.durable_seq:
            raise RuntimeError(f"etcd log {self.prefix}: rewrite_bounds with {self.pending_records} records pending")
        if first_seq < 1 or last_seq < first_seq - 1:
            raise ValueError(f"bounds {first_seq}..{last_seq}: need 1 <= first_seq <= last_seq + 1")
        keys = self._keys
        ops: list[dict] = []
        for start, end in ((keys.record(0), keys.record(first_seq)), (keys.record(last_seq + 1), keys.log_end)):
            ops.append({"request_delete_range": {"key": b64(start), "range_end": b64(end)}})
        for start, end in ((keys.parts_of(0), keys.parts_of(first_seq)),
                           (keys.parts_of(last_seq + 1), keys.base + b"/part0")):
            ops.append({"request_delete_range": {"key": b64(start), "range_end": b64(end)}})
        ops.append(put_op(keys.first, str(first_seq).encode()))
        ops.append(put_op(keys.restored, json.dumps({"seq": last_seq, "epoch": self._epoch}).encode()))
        ops.append({"request_delete_range": {"key": b64(keys.published)}})  # a notice of the history cut here
        reply = self.client.txn([cmp_mod(keys.leader, self._leader_revision)], ops, [])
        if not reply.get("succeeded"):
            self._deposed = "the leader key changed (seen while rewriting the log's bounds)"
            raise LeaseLost(f"etcd log {self.prefix}: {self._deposed}")
        self.first_seq = first_seq
        self.tail_seq = self.durable_seq = last_seq
        logger.warning("etcd log %s: rewritten to hold seqs %d..%d only (by %s, epoch %d)", self.prefix, first_seq,
                       last_seq, self._holder, self._epoch)

    # ---- state and stats ----

    @property
    def failed(self) -> bool:
        return self._failed is not None

    @property
    def pending_records(self) -> int:
        return self.tail_seq - self.durable_seq

    @property
    def buffered_bytes(self) -> int:
        """Memory held for records appended and not yet taken by a sync (log/writer.py's
        Log.buffered_bytes says why it is asked; the puts of a sync in flight are not counted)."""
        return self._pending_bytes

    @property
    def size_bytes(self) -> int:
        """Bytes this writer committed since open (etcd's own size is in its status)."""
        return self.bytes_written

    @property
    def segment_count(self) -> int:
        return 0

    def _check_open(self) -> None:
        if self._closed:
            raise LogClosed(f"{self.path} is closed")

    def _check_usable(self) -> None:
        self._check_open()
        if self._deposed is not None:
            raise LeaseLost(f"etcd log {self.prefix}: {self._holder!r} was deposed: {self._deposed}")
        if self._failed is not None:
            raise LogWriteFailed(f"etcd log {self.prefix}: {self._failed}; writes wait for a successful "
                                 "retry") from self._failed

    def close(self) -> None:
        """Stop renewing and revoke the etcd lease (the leader key goes at once, so a
        successor need not wait out the TTL). Records not yet committed are discarded."""
        if self._closed:
            return
        with self._sync_busy:
            if self.tail_seq != self.durable_seq:
                logger.warning("etcd log %s: closing with %d uncommitted records (discarded)", self.prefix,
                               self.tail_seq - self.durable_seq)
            self._closed = True
        self._stop.set()
        if self._keepalive_thread is not None:
            self._keepalive_thread.join(self.client.request_timeout_s * 2)
        try:
            self.client.lease_revoke(self._etcd_lease)
        except (EtcdUnavailable, EtcdRequestFailed) as e:
            logger.warning("etcd log %s: revoking lease %x failed (%s); it expires in %d s", self.prefix,
                           self._etcd_lease, e, self.lease_ttl_s)

    def __enter__(self) -> "EtcdLog":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<EtcdLog {self.prefix} tail_seq={self.tail_seq} durable_seq={self.durable_seq} epoch={self._epoch}>"
