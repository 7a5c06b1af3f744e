"""Keeping etcd's size bounded while shard logs come and go: compaction every shard
can live with, defragmentation one member at a time, and the members' sizes.

Why compaction is coordinated: etcd's history is one revision sequence for the
whole keyspace, so compacting at revision R forgets every key's changes before R,
every shard's included. A follower tailing shard B by watch from revision r < R
would be told its history was compacted and have to start over from a snapshot,
although every record it still needs is present. So a shard that drops records
compacts only up to the compaction floor: the lowest mod_revision of any shard's
first retained record (records are written in seq order, so a follower that has
applied everything before a shard's first retained record never needs an older
revision of that shard). A shard with no record left does not hold the floor back.

Why defragmentation is rationed: compaction frees pages inside each member's
bbolt file, but the file only shrinks when that member is defragmented, and a
member being defragmented answers nothing meanwhile. So it runs on one member at
a time (the others keep the quorum), only on members whose free space passed a
threshold, only while etcd is quiet (few new revisions per second), and at most
once per interval for the whole deployment: the right to defragment is the key
D/upkeep/defrag, created if absent and bound to an etcd lease of that interval,
so whichever process creates it runs the round and every other waits for the key to
expire. With several nodes, only one snapshotter runs rounds at all (the defragmenter
lock, snapshotter/build_lock.py): a round longer than the interval, or a snapshotter
paused mid-round, would otherwise let a second one defragment another member at the
same time; maybe_run asks `may_go_on` before each member.

What a lock cannot do: etcd cannot fence a defragmentation (it is no transaction), so
a holder paused between its lock check and its request could defragment a member
after another node took the lock over. Bounded here: the request leaves only while the
holder's lease is sure to last (its last renewal's time plus the TTL, minus
etcd-lease-margin-ms), checked immediately before it is sent; and no member is
defragmented while any member serves no read, so a request from a paused holder
still under way makes the next holder wait instead of taking a second member. Left:
a process paused inside the HTTP call itself (after the check, before etcd received
the request) longer than that margin, or a request delayed as long in the network."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

from .etcd_client import EtcdClient, EtcdUnavailable, b64
from .etcd_records import Keys, kvs_of, put_op, recorded_shard_count, revision_of, shard_prefix
from .errors import DefragmentTooLate, LogError

logger = logging.getLogger("durakv.log")

# Shards whose first records one transaction reads (under etcd's --max-txn-ops default of 128).
FLOOR_SHARDS_PER_TXN = 100
# Revisions per second above which etcd is too busy to lose a member to defragmentation.
QUIET_REVISIONS_PER_S = 50.0
# A member's defragmentation may take this long (it copies the whole database).
DEFRAG_TIMEOUT_S = 60.0
# A member that serves no read within this long is taken as down or being defragmented.
READ_PROBE_TIMEOUT_S = 5.0
# Looks at the members' sizes (a status request to each) at most this often.
CHECK_INTERVAL_S = 5.0


def deployment_of(shard_log_prefix: str) -> str:
    """D of a shard log prefix D/shard-NNN ("" when the prefix names no shard)."""
    head, _, tail = shard_log_prefix.rpartition("/")
    return head if tail.startswith("shard-") else ""


def floor_prefixes(client: EtcdClient, shard_log_prefix: str) -> list[str]:
    """The shard log prefixes whose first records make the compaction floor: every
    shard of the deployment (its recorded count never changes), or a prefix outside
    a deployment (no shard count recorded) alone."""
    deployment = deployment_of(shard_log_prefix)
    shards = recorded_shard_count(client, deployment) if deployment else 0
    return [shard_prefix(deployment, i) for i in range(shards)] or [shard_log_prefix]


def compaction_floor(client: EtcdClient, prefixes: list[str], at_revision: int) -> int:
    """The highest revision etcd may compact at without forgetting what any of these
    shard logs still needs: min over them of their first retained record's
    mod_revision, and at most at_revision."""
    floor = at_revision
    for start in range(0, len(prefixes), FLOOR_SHARDS_PER_TXN):
        ops = []
        for prefix in prefixes[start:start + FLOOR_SHARDS_PER_TXN]:
            keys = Keys(prefix.encode())
            ops.append({"request_range": {"key": b64(keys.log_start), "range_end": b64(keys.log_end), "limit": 1,
                                          "keys_only": True}})
        reply = client.txn([], ops, [])
        for response in reply.get("responses", []):
            kvs = kvs_of(response["response_range"])
            if kvs:
                floor = min(floor, int(kvs[0]["mod_revision"]))
    return floor


def compact_to_floor(client: EtcdClient, prefixes: list[str], at_revision: int) -> int:
    """Compact etcd's history up to the compaction floor of these shard logs (not
    past at_revision); returns the revision compacted at (0: nothing to do)."""
    floor = compaction_floor(client, prefixes, at_revision)
    if floor <= 1:
        return 0
    client.compact(floor)
    return floor


@dataclass(frozen=True, slots=True)
class MemberSize:
    """One member's database file and the part of it in use (the rest is free pages
    that only a defragmentation returns to the disk)."""
    endpoint: str
    db_size_bytes: int
    db_in_use_bytes: int
    revision: int

    @property
    def free_bytes(self) -> int:
        return max(0, self.db_size_bytes - self.db_in_use_bytes)


def member_size(client: EtcdClient, index: int) -> MemberSize:
    status = client.status(index)
    size = int(status.get("dbSize", 0))
    return MemberSize(client.endpoints[index], size, int(status.get("dbSizeInUse", size)), revision_of(status))


def member_sizes(client: EtcdClient) -> list[MemberSize | None]:
    """Every member's size (None for one that does not answer)."""
    out: list[MemberSize | None] = []
    for index in range(len(client.endpoints)):
        try:
            out.append(member_size(client, index))
        except EtcdUnavailable:
            out.append(None)
    return out


class Defragmenter:
    """Runs defragmentation rounds for one deployment (see the module doc)."""

    def __init__(self, client: EtcdClient, deployment: str, free_bytes_threshold: int, interval_s: int) -> None:
        if interval_s < 1:
            raise ValueError("the defragmentation interval must be at least 1 s")
        self.client = client
        self.deployment = deployment
        self.free_bytes_threshold = free_bytes_threshold
        self.interval_s = interval_s
        self._last: tuple[float, int] | None = None   # (monotonic s, revision) of the previous check

    @property
    def lock_key(self) -> bytes:
        return f"{self.deployment.rstrip('/')}/upkeep/defrag".encode()

    def maybe_run(self, may_go_on: Callable[[], float] = lambda: math.inf) -> list[str]:
        """One check: defragment, one at a time, the members over the threshold if etcd
        is quiet and no round ran within the interval. Before each member: every member
        serves a read (none is down or being defragmented by anyone, so the quorum stays
        whole but for this one), then may_go_on() gives the monotonic time until which
        the right to defragment surely lasts (0: the caller lost it), and the request
        leaves only before then (EtcdClient.defragment). Returns the endpoints done."""
        if self.free_bytes_threshold <= 0:
            return []
        if self._last is not None and time.monotonic() - self._last[0] < min(CHECK_INTERVAL_S, self.interval_s):
            return []
        sizes = member_sizes(self.client)
        known = [s for s in sizes if s is not None]
        if not known:
            return []
        revision, now = max(s.revision for s in known), time.monotonic()
        last, self._last = self._last, (now, revision)
        if last is None or (revision - last[1]) / max(now - last[0], 1e-3) > QUIET_REVISIONS_PER_S:
            return []  # the first look, or etcd is busy
        if None in sizes:
            return []  # a member is down: losing another to defragmentation could lose the quorum
        due = [i for i, s in enumerate(sizes) if s is not None and s.free_bytes >= self.free_bytes_threshold]
        if not due or not self._take_round():
            return []
        done = []
        for index in due:
            before = sizes[index]
            assert before is not None
            silent = [self.client.endpoints[i] for i in range(len(sizes))
                      if not self.client.member_reads(i, READ_PROBE_TIMEOUT_S)]
            if silent:
                logger.warning("etcd upkeep: %s serve no read (down, or being defragmented by a process that "
                               "lost the right to); %s left for the next round", ", ".join(silent), before.endpoint)
                break
            not_after = may_go_on()
            if not not_after:
                logger.warning("etcd upkeep: no longer the deployment's defragmenter; %s left for the next round",
                               before.endpoint)
                break
            try:
                self.client.defragment(index, DEFRAG_TIMEOUT_S, not_after)
                after = member_size(self.client, index)
            except DefragmentTooLate as e:
                logger.warning("etcd upkeep: %s (this process was paused or slowed); %s left for the next round",
                               e, before.endpoint)
                break
            except LogError as e:
                logger.warning("etcd upkeep: defragmenting %s failed (%s); the next round tries again",
                               self.client.endpoints[index], e)
                break  # one at a time: a member that did not come back ends the round
            done.append(after.endpoint)
            logger.info("etcd upkeep: defragmented %s: %d -> %d bytes (%d in use)", after.endpoint,
                        before.db_size_bytes, after.db_size_bytes, after.db_in_use_bytes)
        return done

    def _take_round(self) -> bool:
        """Create the round key (bound to a lease of interval_s) unless present."""
        lease = self.client.lease_grant(self.interval_s)
        reply = self.client.txn([{"key": b64(self.lock_key), "target": "CREATE", "create_revision": "0",
                                  "result": "EQUAL"}], [put_op(self.lock_key, b"defrag", lease)], [])
        if not reply.get("succeeded"):
            self.client.lease_revoke(lease)
        return bool(reply.get("succeeded"))


def size_fields(size: MemberSize | None) -> dict[str, Any]:
    """INFO's view of a member's size ({} when unknown)."""
    if size is None:
        return {}
    return {"etcd_db_size": size.db_size_bytes, "etcd_db_size_in_use": size.db_in_use_bytes}
