"""What routers and shard ports say about replicas (shards/replica.py): INFO
replication in Redis' field names, ROLE, and WAIT. Everything is read from shared
memory the shards' processes publish: each shard log's durable seq (its LEASE file,
log/lease.py) and what each replica applied (shards/replica_board.py). A replication
offset here is a log seq number (records, not bytes)."""

from __future__ import annotations

import time

import trio

from durakv.log.layout import shard_log_dir
from durakv.log.lease import LeaseFile
from durakv.server.cluster_view import announced_ip, other_nodes_replicas, replica_slots
from durakv.server.links import Pending
from durakv.shards.config import Config, shard_port
from durakv.shards.min_replicas import good_replicas

WAIT_POLL_S = 0.001
# Redis' replid is 40 hex digits; durakv's log has no replication id: a constant one.
REPLID = "0" * 40

_leases: dict[tuple[str, int], LeaseFile] = {}


def durable_seq(config: Config, shard: int) -> int:
    """The durable tail shard `shard`'s primary published (0 before it has a log)."""
    key = (config.data_dir, shard)
    lease = _leases.get(key)
    if lease is None:
        try:
            lease = _leases[key] = LeaseFile(shard_log_dir(config.data_dir, shard))
        except FileNotFoundError:
            return 0
    return lease.durable_seq()


def _own_replica(view):
    """The Replica of this process if the view is a replica's node, else None."""
    shard = getattr(view, "shard", None)
    return shard.replica if view.cluster_node and shard is not None else None


def _shards(view) -> list[int]:
    return [view.index] if view.cluster_node else list(range(view.config.shards))


def _good_replicas_lines(view) -> list[str]:
    """min_slaves_good_slaves, as Redis shows it while min-replicas-to-write and
    min-replicas-max-lag are both set: the least over the shards this front serves
    (each shard's writes need that many of its own)."""
    values = view.settings.values
    to_write, max_lag_s = int(values["min-replicas-to-write"]), int(values["min-replicas-max-lag"])
    if not to_write or not max_lag_s:
        return []
    config = view.config
    now_ms = time.time_ns() // 1_000_000
    counts = [len(good_replicas(replica_slots(config, shard), now_ms, max_lag_s)) if config.replicas else 0
              for shard in _shards(view)]
    return [f"min_slaves_good_slaves:{min(counts, default=0)}"]


def info_lines(view) -> list[str]:
    config = view.config
    if not config.replicas and view.directory is None:  # as a Redis without replicas
        return ["role:master", "connected_slaves:0", *_good_replicas_lines(view), "master_repl_offset:0"]
    replica = _own_replica(view)
    if replica is not None:
        applied = replica.applied_seq
        durable = replica.follower.durable_seq()
        # On etcd the primary may be on another node: where its leader key says (shards/standby.py).
        primary = replica.etcd.primary if replica.etcd is not None else None
        host, port = ((primary.host_port() if primary is not None else None)
                      or (config.announce_ip or config.bind, shard_port(config, view.index)))
        return [
            "role:slave", f"master_host:{host}",
            f"master_port:{port}", "master_link_status:up",
            "master_last_io_seconds_ago:0", "master_sync_in_progress:0",
            f"slave_read_repl_offset:{applied}", f"slave_repl_offset:{applied}",
            "slave_priority:100", "slave_read_only:1", "replica_announced:1", "connected_slaves:0",
            "master_failover_state:no-failover", f"master_replid:{REPLID}",
            f"master_repl_offset:{applied}", f"replica_lag_records:{max(durable - applied, 0)}",
        ]
    now_ms = time.time_ns() // 1_000_000
    ip = (config.announce_ip or config.bind)
    slaves = []
    offset = 0
    for shard in _shards(view):
        durable = durable_seq(config, shard)
        offset += durable
        for slot in replica_slots(config, shard):
            state = "online" if slot.state == 2 else "wait_bgsave"
            lag_s = max(now_ms - slot.heard_at_ms, 0) // 1000
            slaves.append(f"ip={ip},port={slot.port},state={state},offset={slot.applied_seq},lag={lag_s},"
                          f"lag_records={max(durable - slot.applied_seq, 0)}")
        # The other nodes' replicas: following while their live entry lasts; lag counts from its
        # last rewrite (every quarter TTL; across machines, so give or take their clocks' skew).
        for remote in other_nodes_replicas(view.directory, shard):
            lag_s = max(now_ms - remote.heard_at_ms, 0) // 1000 if remote.heard_at_ms else 0
            slaves.append(f"ip={remote.ip},port={remote.port},state=online,offset={remote.applied_seq},"
                          f"lag={lag_s},lag_records={max(durable - remote.applied_seq, 0)}")
    return ["role:master", f"connected_slaves:{len(slaves)}", *_good_replicas_lines(view),
            *(f"slave{i}:{line}" for i, line in enumerate(slaves)),
            "master_failover_state:no-failover", f"master_replid:{REPLID}", f"master_repl_offset:{offset}"]


def role_reply(view, laddr: str) -> list:
    config = view.config
    if not config.replicas and view.directory is None:
        return [b"master", 0, []]  # as a Redis without replicas
    replica = _own_replica(view)
    if replica is not None:
        return [b"slave", announced_ip(config, laddr), shard_port(config, view.index), b"connected",
                replica.applied_seq]
    offset = 0
    slaves = []
    for shard in _shards(view):
        offset += durable_seq(config, shard)
        slaves += [[announced_ip(config, laddr), b"%d" % slot.port, b"%d" % slot.applied_seq]
                   for slot in replica_slots(config, shard)]
        slaves += [[remote.ip.encode(), b"%d" % remote.port, b"%d" % remote.applied_seq]
                   for remote in other_nodes_replicas(view.directory, shard)]
    return [b"master", offset, slaves]


def acked_replicas(config: Config, targets: dict[int, int]) -> int:
    """How many replicas applied each shard's target seq (the least over the shards)."""
    counts = [sum(1 for slot in replica_slots(config, shard) if slot.applied_seq >= target)
              for shard, target in targets.items()]
    return min(counts, default=0)


def wait(client, numreplicas: int, timeout_ms: int):
    """WAIT: replicas that applied everything durable when WAIT arrived (so every
    write this client was answered before it), counted on each shard this front
    serves, the least of them. Answered at once when enough have, else polled until
    they have or the timeout (0: none) passes."""
    view = client.router
    config = view.config
    if not config.replicas:
        return 0
    targets = {shard: durable_seq(config, shard) for shard in _shards(view)}
    acked = acked_replicas(config, targets)
    if acked >= numreplicas:
        return acked
    pending = Pending(client)
    client.replies.append(pending)

    async def poll() -> None:
        deadline = time.monotonic() + timeout_ms / 1000 if timeout_ms else None
        count = acked
        while count < numreplicas and (deadline is None or time.monotonic() < deadline):
            await trio.sleep(WAIT_POLL_S)
            count = acked_replicas(config, targets)
        pending.fill(b":%d\r\n" % count)

    assert view.nursery is not None, "WAIT before the front serves"
    view.nursery.start_soon(poll)
    return pending
