"""The layout of a shard's log on etcd, and reading it (no lease needed).

Keys, under a shard's prefix P (e.g. "durakv/shard-000"):
    P/log/<seq, 20 digits>  one record: header (epoch u64, parts u32, little-endian) + payload,
                            or, for a payload over max_txn_bytes, the header alone, with
    P/part/<seq>/<i, 6 digits>  its parts 0..parts-1, written (fenced) before the record key
    P/leader                the current writer: JSON {holder, epoch, lease, pid, boot[, node, advertise,
                            client, tls_client]} (client: its shard port, shards/standby.py),
                            bound to its etcd lease
    P/epoch                 the highest epoch ever taken (never deleted, so epochs only grow)
    P/first                 the first seq retained (absent: 1); moves when records are dropped
    P/replica/<name>        JSON {seq, node, pid}: a replica applied the log through seq (bound to
                            the replica's etcd lease; records it still needs are not dropped,
                            log/etcd_positions.py)
    P/restored              JSON {seq, epoch}: `durakv restore` cut the log after seq at epoch;
                            a snapshot past seq with an older epoch belongs to the discarded history
    P/published             JSON {seq, epoch, store}: the newest snapshot of the shard published to the
                            shared store `store` (s3://, file://) by whichever node's snapshotter built
                            it; the primary drops records through it (snapshotter/shard_hooks.py), so
                            drops go on while its own node's snapshotter is stopped; a restore that
                            rewrites the log deletes it (a notice of the discarded history)
and, per deployment prefix D (P is D/shard-NNN), D/shards: its shard count.

A record exists once its record key does. Every key etcd shows is committed on a
quorum, so whatever a reader finds is durable. The writer is log/etcd_log.py, the
follower (tail, LogFollower) log/etcd_follower.py."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any, Iterator

from .errors import LogCorrupt, RecordsDropped
from .etcd_client import EtcdClient, b64, unb64

SEQ_DIGITS = 20
HEADER = struct.Struct("<QI")  # epoch, parts (0: the payload follows inline)
MAX_PARTS = 999_999
READ_PAGE_RECORDS = 256
PART_PAGE = 8


def shard_prefix(prefix: str, shard: int) -> str:
    """The key prefix of one shard's log under a deployment's prefix."""
    return f"{prefix.rstrip('/')}/shard-{shard:03d}"


def shard_count_key(prefix: str) -> bytes:
    """PREFIX/shards: the shard count the first tree on a deployment's prefix recorded."""
    return f"{prefix.rstrip('/')}/shards".encode()


def recorded_shard_count(client: EtcdClient, prefix: str) -> int:
    """The shard count recorded under a deployment's prefix (0: none yet)."""
    kvs = kvs_of(client.range(shard_count_key(prefix)))
    return int(unb64(kvs[0]["value"])) if kvs else 0


def no_logs_message(prefix: str) -> str:
    return (f"etcd-prefix {prefix!r} holds no durakv logs (no {shard_count_key(prefix).decode()} key); check "
            "etcd-prefix and etcd-endpoints")


@dataclass(frozen=True, slots=True)
class Keys:
    """The keys of one shard's log under its prefix."""
    base: bytes

    @property
    def leader(self) -> bytes:
        return self.base + b"/leader"

    @property
    def epoch(self) -> bytes:
        return self.base + b"/epoch"

    @property
    def first(self) -> bytes:
        return self.base + b"/first"

    @property
    def restored(self) -> bytes:
        return self.base + b"/restored"

    @property
    def published(self) -> bytes:
        return self.base + b"/published"

    @property
    def replicas_start(self) -> bytes:
        return self.base + b"/replica/"

    @property
    def replicas_end(self) -> bytes:
        return self.base + b"/replica0"  # "/" + 1: every key under replica/

    def replica(self, name: str) -> bytes:
        return self.replicas_start + name.encode()

    @property
    def log_start(self) -> bytes:
        return self.base + b"/log/"

    @property
    def log_end(self) -> bytes:
        return self.base + b"/log0"  # "/" + 1: every key under log/

    def record(self, seq: int) -> bytes:
        return b"%s/log/%0*d" % (self.base, SEQ_DIGITS, seq)

    def parts_of(self, seq: int) -> bytes:
        return b"%s/part/%0*d/" % (self.base, SEQ_DIGITS, seq)

    def part(self, seq: int, index: int) -> bytes:
        return b"%s%06d" % (self.parts_of(seq), index)

    def seq_of(self, key: bytes) -> int:
        return int(key[len(self.base) + 5:])


def kvs_of(reply: dict[str, Any]) -> list[dict[str, Any]]:
    """The key-values of a range reply (etcd omits the field when there are none)."""
    return reply.get("kvs", [])


def revision_of(reply: dict[str, Any]) -> int:
    return int(reply["header"]["revision"])


def cmp_mod(key: bytes, revision: int) -> dict[str, Any]:
    return {"key": b64(key), "target": "MOD", "mod_revision": str(revision), "result": "EQUAL"}


def cmp_absent(key: bytes) -> dict[str, Any]:
    return {"key": b64(key), "target": "CREATE", "create_revision": "0", "result": "EQUAL"}


def get_op(key: bytes) -> dict[str, Any]:
    return {"request_range": {"key": b64(key)}}


def put_op(key: bytes, value: bytes, lease_id: int = 0) -> dict[str, Any]:
    put: dict[str, Any] = {"key": b64(key), "value": b64(value)}
    if lease_id:
        put["lease"] = str(lease_id)
    return {"request_put": put}


@dataclass(frozen=True, slots=True)
class RestoreMark:
    """Where `durakv restore` cut a log: records after `seq` were discarded, and every
    record written since has an epoch of at least `epoch`."""
    seq: int
    epoch: int

    def discarded(self, snapshot_seq: int, snapshot_epoch: int) -> bool:
        """Whether a snapshot through snapshot_seq, whose last record has snapshot_epoch,
        holds records of the discarded history."""
        return snapshot_seq > self.seq and snapshot_epoch < self.epoch


def restore_mark(client: EtcdClient, prefix: str) -> RestoreMark | None:
    kvs = kvs_of(client.range(Keys(prefix.encode()).restored))
    if not kvs:
        return None
    mark = json.loads(unb64(kvs[0]["value"]))
    return RestoreMark(int(mark["seq"]), int(mark["epoch"]))


@dataclass(frozen=True, slots=True)
class Published:
    """A snapshot through `seq` (its last record of `epoch`) is in the shared store `store`."""
    seq: int
    epoch: int
    store: str


def note_published(client: EtcdClient, prefix: str, published: Published) -> None:
    """Tell the shard's primary, on whichever node, that a snapshot is published (P/published).
    Not fenced: only the build lock's holder publishes, and a stale, lower seq written by a
    holder that lost its lock mid-publish only delays the next drop."""
    value = json.dumps({"seq": published.seq, "epoch": published.epoch, "store": published.store}).encode()
    client.txn([], [put_op(Keys(prefix.encode()).published, value)], [])


def read_published(client: EtcdClient, prefix: str) -> Published | None:
    """P/published (None when absent or unreadable: nothing is dropped by it)."""
    kvs = kvs_of(client.range(Keys(prefix.encode()).published))
    if not kvs:
        return None
    try:
        doc = json.loads(unb64(kvs[0]["value"]))
        return Published(int(doc["seq"]), int(doc["epoch"]), str(doc["store"]))
    except (ValueError, KeyError, TypeError):
        return None


def first_seq_at(client: EtcdClient, keys: Keys) -> int:
    kvs = kvs_of(client.range(keys.first))
    return int(unb64(kvs[0]["value"])) if kvs else 1


def first_and_guard(client: EtcdClient, keys: Keys) -> tuple[int, dict[str, Any]]:
    """The first seq retained and a compare that holds while nobody moved it since
    (whoever drops records: the primary, or `durakv log truncate` beside it)."""
    kvs = kvs_of(client.range(keys.first))
    if not kvs:
        return 1, cmp_absent(keys.first)
    return int(unb64(kvs[0]["value"])), cmp_mod(keys.first, int(kvs[0]["mod_revision"]))


def drop_ops(keys: Keys, first: int, through: int) -> list[dict[str, Any]]:
    """The operations that drop records first..through (and their parts) and move the
    first seq on: one transaction, so a reader sees the records gone and P/first moved
    together."""
    assert 1 <= first <= through, "a drop removes at least one record"
    return [{"request_delete_range": {"key": b64(keys.record(first)), "range_end": b64(keys.record(through + 1))}},
            {"request_delete_range": {"key": b64(keys.parts_of(first)), "range_end": b64(keys.parts_of(through + 1))}},
            put_op(keys.first, str(through + 1).encode())]


def log_ends(client: EtcdClient, keys: Keys) -> tuple[int, int]:
    """(first seq retained, last seq) read at one revision. Once every record was
    dropped there is no log key left: the last seq is then the first retained - 1."""
    reply = client.txn([], [get_op(keys.first),
                            {"request_range": {"key": b64(keys.log_start), "range_end": b64(keys.log_end),
                                               "limit": 1, "keys_only": True, "sort_order": "DESCEND",
                                               "sort_target": "KEY"}}], [])
    first_kvs = kvs_of(reply["responses"][0]["response_range"])
    last_kvs = kvs_of(reply["responses"][1]["response_range"])
    first = int(unb64(first_kvs[0]["value"])) if first_kvs else 1
    last = keys.seq_of(unb64(last_kvs[0]["key"])) if last_kvs else 0
    return first, max(last, first - 1)


def decode_record(client: EtcdClient, keys: Keys, kv: dict[str, Any], revision: int = 0) -> tuple[int, int, bytes]:
    """(seq, epoch, payload) of a record key, reading its parts if it has any."""
    value = unb64(kv.get("value", ""))
    seq = keys.seq_of(unb64(kv["key"]))
    if len(value) < HEADER.size:
        raise LogCorrupt(unb64(kv["key"]).decode(), 0, f"record of {len(value)} bytes has no header")
    epoch, parts = HEADER.unpack_from(value)
    if not parts:
        return seq, epoch, value[HEADER.size:]
    chunks: list[bytes] = []
    start, end = keys.part(seq, 0), keys.part(seq, parts)
    while len(chunks) < parts:
        reply = client.range(start, end, limit=PART_PAGE, revision=revision)
        kvs = kvs_of(reply)
        if not kvs:
            raise LogCorrupt(unb64(kv["key"]).decode(), 0, f"record has {parts} parts, {len(chunks)} found")
        chunks += [unb64(part.get("value", "")) for part in kvs]
        start = keys.part(seq, len(chunks))
    return seq, epoch, b"".join(chunks)


def read(client: EtcdClient, prefix: str, from_seq: int = 1, *, through_seq: int | None = None
         ) -> Iterator[tuple[int, int, bytes]]:
    """(seq, epoch, payload) of the records from from_seq through through_seq (or the
    last), all from one etcd revision. Every record etcd shows is durable.
    RecordsDropped if from_seq was dropped; LogCorrupt on a gap."""
    keys = Keys(prefix.encode())
    first = first_seq_at(client, keys)
    if from_seq < first:
        raise RecordsDropped(f"etcd log {prefix}: records before seq {first} were dropped "
                             f"(asked from seq {from_seq})")
    end = keys.log_end if through_seq is None else keys.record(through_seq + 1)
    start, revision, expected = keys.record(from_seq), 0, from_seq
    while True:
        reply = client.range(start, end, limit=READ_PAGE_RECORDS, revision=revision)
        revision = revision or revision_of(reply)
        kvs = kvs_of(reply)
        for kv in kvs:
            seq, epoch, payload = decode_record(client, keys, kv, revision)
            if seq != expected:
                raise LogCorrupt(prefix, 0, f"etcd log jumps from seq {expected - 1} to {seq}")
            expected += 1
            yield seq, epoch, payload
        if not reply.get("more") or not kvs:
            return
        start = keys.record(expected)


def last_seq(client: EtcdClient, prefix: str) -> int:
    """The last seq in the etcd log (0 if empty): durable, as everything etcd shows."""
    return log_ends(client, Keys(prefix.encode()))[1]


def first_seq(client: EtcdClient, prefix: str) -> int:
    """The first seq still retained in the etcd log."""
    return first_seq_at(client, Keys(prefix.encode()))
