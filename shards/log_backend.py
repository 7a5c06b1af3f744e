"""Which log a shard writes: local segment files (log.Log, the embedded default) or
records on etcd (log.etcd_log.EtcdLog) with `log-backend = "etcd"`. One home for
turning the config into a log, used by the shard, the snapshotter and `serve`'s
start check.

The etcd modules are imported only when a log on etcd is used: they bring etcd3gw and
requests (~10 MB of code and data), which a tree on local segments never needs, and the
supervisor, which every process is forked from, would otherwise hold them for all."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Callable, TypeGuard, cast

from durakv.log import Disk, Log, LogError
from durakv.log.interface import ShardLog
from durakv.log.layout import log_dir_of
from durakv.log.lease import LeaseFile
from durakv.log.writer import Lease
from durakv.shards.config import Config

if TYPE_CHECKING:
    from durakv.log.etcd_client import EtcdClient
    from durakv.log.etcd_log import EtcdLease, EtcdLog

# serve's start check: how long etcd may take to answer before the start fails.
ETCD_CHECK_TIMEOUT_S = 3.0
# How often a shard reads etcd's size for INFO (one status request).
ETCD_SIZE_REFRESH_S = 10.0


def uses_etcd(config: Config) -> bool:
    return config.log_backend == "etcd"


def etcd_client(config: Config, request_timeout_s: float | None = None) -> EtcdClient:
    """A client for the configured etcd; with request_timeout_s, one that gives up after
    that long (serve's start check) instead of retrying for DEFAULT_RETRY_S."""
    from durakv.log.etcd_client import DEFAULT_REQUEST_TIMEOUT_S, DEFAULT_RETRY_S, EtcdClient

    timeout_s = DEFAULT_REQUEST_TIMEOUT_S if request_timeout_s is None else request_timeout_s
    return EtcdClient(config.etcd_endpoints, request_timeout_s=timeout_s,
                      retry_s=DEFAULT_RETRY_S if request_timeout_s is None else request_timeout_s,
                      ca_file=config.etcd_ca_file or None, cert_file=config.etcd_cert_file or None,
                      key_file=config.etcd_key_file or None, user=config.etcd_user,
                      password=config.etcd_password)


def etcd_shard_prefix(config: Config, shard: int) -> str:
    from durakv.log.etcd_records import shard_prefix

    return shard_prefix(config.etcd_prefix, shard)


def open_shard_log(config: Config, index: int, shard_dir: str, disk: Disk, *, takeover_wait_ms: int = 0,
                   read_through_seq: int = 0, next_record_at: tuple[int, int] | None = None) -> Log:
    """The shard's log, opened for writing (the caller takes the lease). takeover_wait_ms:
    a replica being promoted fences a primary that still runs once its lease expired;
    read_through_seq: it applied the log through that seq, so recovery starts there, at
    next_record_at (segment, byte offset) if known (local segments only)."""
    if not uses_etcd(config):
        return Log.open(log_dir_of(shard_dir), segment_size_bytes=config.segment_size_bytes,
                        holder=f"shard {index}", disk=disk, lease_duration_ms=config.lease_duration_ms,
                        takeover_wait_ms=takeover_wait_ms, read_through_seq=read_through_seq,
                        next_record_at=next_record_at, preallocate=True)
    from durakv.log.etcd_log import EtcdLog

    etcd_log = EtcdLog.open(etcd_client(config), etcd_shard_prefix(config, index),
                            lease_ttl_s=config.etcd_lease_ttl_s)
    if config.replicas:
        mirror_lease(etcd_log, log_dir_of(shard_dir))
    if config.node_id:
        from durakv.shards.link_auth import LinkPort
        from durakv.shards.standby import leader_addresses

        etcd_log.leader_info = {"node": config.node_id, "advertise": config.advertise,
                                "link": LinkPort.of_process(config, index).address,
                                **leader_addresses(config, index)}
    log: ShardLog = etcd_log
    # EtcdLog implements log/interface.py's ShardLog (and the Log attributes the shard reads:
    # recovery, fsync_count, drop_segments_through...); the cast stands until the shard
    # holds its log as a ShardLog.
    return cast(Log, log)


def link_secret(config: Config) -> bytes:
    """The deployment's secret for internal links between nodes (log/etcd_nodes.py);
    a request to etcd: call it from a thread."""
    from durakv.log.etcd_nodes import link_secret as read_or_create

    return read_or_create(etcd_client(config), config.etcd_prefix)


def mirror_lease(etcd_log: EtcdLog, log_dir: str) -> None:
    """With replicas, a primary on etcd mirrors its lease and durable seq in the local
    LEASE file (log/lease.py), so what reads it on local segments works the same:
    WAIT and INFO replication (the durable seq, server/replication.py), the supervisor's
    failover of a stalled primary (its pid and valid_until_ns, server/supervisor.py) and
    the routers leaving a deposed primary (server/links.py LeaseWatch). etcd stays the
    truth: a promoted replica still campaigns for the leader key."""
    os.makedirs(log_dir, mode=0o700, exist_ok=True)
    mirror = LeaseFile(log_dir)
    mirror.publish_durable(etcd_log.durable_seq)
    etcd_log.durable_sink = mirror.publish_durable
    pid = os.getpid()

    def leads(epoch: int, valid_until_ns: int) -> None:
        with mirror.locked():
            mirror.set_holder(epoch, pid, valid_until_ns)

    etcd_log.lease_sink = leads


# How long a shard on etcd campaigning for its leader key waits for a live holder's
# lease to expire, in TTLs: past it the start fails loudly (and is retried) rather than hang.
CAMPAIGN_WAIT_TTLS = 3


def take_shard_lease(config: Config, wal: Log, holder: str) -> Lease | EtcdLease:
    """Lead the shard's log. On etcd, campaign: take the leader key once it is free (its
    holder's lease expired) or its holder was a process of this machine that is gone,
    never from a live holder, so a deposed primary's reads stay fenced by its lease.
    The shard campaigns before it reads the log (Shard.open_log), so what another writer
    appended meanwhile is read too. On a node (node-id set) a shard whose leader key
    another node holds stands by until it is free: that node serves the shard meanwhile."""
    if not is_etcd_log(wal):
        return wal.take_lease(holder)
    return wal.take_lease(holder, take_over=False, depose_dead=True, reread=True,
                          wait_s=None if config.node_id else config.etcd_lease_ttl_s * CAMPAIGN_WAIT_TTLS)


def etcd_problem(config: Config) -> str:
    """One line if log-backend is etcd and no endpoint answers, or the prefix holds
    the logs of another shard count ("" otherwise). The first tree on a prefix
    records its shard count there: the slots a shard owns follow from it, so a tree
    started with another count would serve keys from the wrong logs (the data dir's
    topology file guards the local logs the same way)."""
    if not uses_etcd(config):
        return ""
    try:
        client = etcd_client(config, ETCD_CHECK_TIMEOUT_S)
        recorded = record_shard_count(client, config.etcd_prefix, config.shards)
    except ValueError as e:
        return f"etcd-endpoints: {e}"
    except LogError as e:
        return (f"log-backend is etcd but no etcd endpoint answers ({e}); start etcd or fix "
                "etcd-endpoints")
    if recorded != config.shards:
        return (f"etcd-prefix {config.etcd_prefix!r} holds the logs of {recorded} shards, not {config.shards}; "
                f"start with --shards {recorded} or choose another etcd-prefix")
    return ""


def record_shard_count(client: EtcdClient, prefix: str, shards: int) -> int:
    """PREFIX/shards: set to `shards` unless present; returns what it holds."""
    from durakv.log.etcd_client import b64, unb64
    from durakv.log.etcd_records import shard_count_key

    key = shard_count_key(prefix)
    reply = client.txn([{"key": b64(key), "target": "CREATE", "create_revision": "0", "result": "EQUAL"}],
                       [{"request_put": {"key": b64(key), "value": b64(str(shards).encode())}}],
                       [{"request_range": {"key": b64(key)}}])
    if reply.get("succeeded"):
        return shards
    return int(unb64(reply["responses"][0]["response_range"]["kvs"][0]["value"]))


def is_etcd_log(wal: object) -> TypeGuard[EtcdLog]:
    """Whether wal is a log on etcd, without importing the etcd modules (not loaded:
    no log is on etcd)."""
    etcd_log = sys.modules.get("durakv.log.etcd_log")
    return etcd_log is not None and isinstance(wal, etcd_log.EtcdLog)


def etcd_upkeep(shard_dir: str, wal: Log, release: Callable[[str, Log], list[str]]) -> None:
    """One round of a shard's upkeep of its log on etcd, in a worker thread (each is
    a request to etcd, which must not stall the shard's loop): drop the records the
    snapshotter released (and compact, log/etcd_upkeep.py), then read etcd's size."""
    release(shard_dir, wal)
    cast("EtcdLog", wal).refresh_size(ETCD_SIZE_REFRESH_S)


def etcd_state(wal: object) -> dict[str, int | str]:
    """INFO persistence's view of a shard log on etcd ({} for local segments); the
    size is the upkeep thread's last reading of the member the shard talks to."""
    if not is_etcd_log(wal):
        return {}
    from durakv.log.etcd_upkeep import size_fields

    return {"etcd_epoch": wal.epoch, "etcd_first_seq": wal.first_seq, "etcd_lease_valid": int(wal.lease_valid()),
            "etcd_endpoint": wal.client.current_endpoint, **size_fields(wal.member_size)}
