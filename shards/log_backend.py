"""Which log a shard writes: local segment files (log.Log, the embedded default) or
records on etcd (log.etcd_log.EtcdLog) with `log-backend = "etcd"`. One home for
turning the config into a log, used by the shard, the snapshotter and `serve`'s
start check."""

from __future__ import annotations

from typing import Callable, cast

from durakv.log import Disk, Log, LogError
from durakv.log.etcd_client import DEFAULT_REQUEST_TIMEOUT_S, DEFAULT_RETRY_S, EtcdClient, b64, unb64
from durakv.log.etcd_log import EtcdLog
from durakv.log.etcd_upkeep import size_fields
from durakv.log.etcd_records import shard_count_key, shard_prefix
from durakv.log.interface import ShardLog
from durakv.log.layout import log_dir_of
from durakv.shards.config import Config

# serve's start check: how long etcd may take to answer before the start fails.
ETCD_CHECK_TIMEOUT_S = 3.0
# How often a shard reads etcd's size for INFO (one status request).
ETCD_SIZE_REFRESH_S = 10.0


def uses_etcd(config: Config) -> bool:
    return config.log_backend == "etcd"


def etcd_client(config: Config, request_timeout_s: float | None = None) -> EtcdClient:
    """A client for the configured etcd; with request_timeout_s, one that gives up after
    that long (serve's start check) instead of retrying for DEFAULT_RETRY_S."""
    timeout_s = DEFAULT_REQUEST_TIMEOUT_S if request_timeout_s is None else request_timeout_s
    return EtcdClient(config.etcd_endpoints, request_timeout_s=timeout_s,
                      retry_s=DEFAULT_RETRY_S if request_timeout_s is None else request_timeout_s,
                      ca_file=config.etcd_ca_file or None, cert_file=config.etcd_cert_file or None,
                      key_file=config.etcd_key_file or None, user=config.etcd_user,
                      password=config.etcd_password)


def etcd_shard_prefix(config: Config, shard: int) -> str:
    return shard_prefix(config.etcd_prefix, shard)


def open_shard_log(config: Config, index: int, shard_dir: str, disk: Disk, *, takeover_wait_ms: int = 0) -> Log:
    """The shard's log, opened for writing (the caller takes the lease). takeover_wait_ms:
    a replica being promoted fences a primary that still runs once its lease expired
    (local segments only: replicas follow local logs, log/FORMAT.md)."""
    if not uses_etcd(config):
        return Log.open(log_dir_of(shard_dir), segment_size_bytes=config.segment_size_bytes,
                        holder=f"shard {index}", disk=disk, lease_duration_ms=config.lease_duration_ms,
                        takeover_wait_ms=takeover_wait_ms)
    log: ShardLog = EtcdLog.open(etcd_client(config), etcd_shard_prefix(config, index),
                                 lease_ttl_s=config.etcd_lease_ttl_s)
    # EtcdLog implements log/interface.py's ShardLog (and the Log attributes the shard reads:
    # recovery, fsync_count, drop_segments_through...); the cast stands until the shard
    # holds its log as a ShardLog.
    return cast(Log, log)


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
    key = shard_count_key(prefix)
    reply = client.txn([{"key": b64(key), "target": "CREATE", "create_revision": "0", "result": "EQUAL"}],
                       [{"request_put": {"key": b64(key), "value": b64(str(shards).encode())}}],
                       [{"request_range": {"key": b64(key)}}])
    if reply.get("succeeded"):
        return shards
    return int(unb64(reply["responses"][0]["response_range"]["kvs"][0]["value"]))


def etcd_upkeep(shard_dir: str, wal: Log, release: Callable[[str, Log], list[str]]) -> None:
    """One round of a shard's upkeep of its log on etcd, in a worker thread (each is
    a request to etcd, which must not stall the shard's loop): drop the records the
    snapshotter released (and compact, log/etcd_upkeep.py), then read etcd's size."""
    release(shard_dir, wal)
    cast(EtcdLog, wal).refresh_size(ETCD_SIZE_REFRESH_S)


def etcd_state(wal: object) -> dict[str, int | str]:
    """INFO persistence's view of a shard log on etcd ({} for local segments); the
    size is the upkeep thread's last reading of the member the shard talks to."""
    if not isinstance(wal, EtcdLog):
        return {}
    return {"etcd_epoch": wal.epoch, "etcd_first_seq": wal.first_seq, "etcd_lease_valid": int(wal.lease_valid()),
            "etcd_endpoint": wal.client.current_endpoint, **size_fields(wal.member_size)}
