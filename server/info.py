"""INFO: the router's own sections plus figures aggregated over every shard."""

from __future__ import annotations

import os
import resource
import secrets
import sys
import time
from typing import NamedTuple

from durakv.shards.framelink import link_stats
from durakv.shards.frames import frame_stats
from durakv.shards import failure, lazyfree
from durakv.server import replication
from durakv.server.save_changes import ChangesSinceSave
from durakv.server.settings import format_percentile
from durakv.shards.evict import HeapGauge
from durakv.shards.internal import rss_bytes
from durakv.shards.latency import merge_histograms, percentile_ns
from durakv.shards.slots import slot_ranges
from durakv.shards.table import TABLE
from durakv.snapshotter.runner import pending_request, read_status

RUN_ID = ""


def _new_run_id() -> None:
    """Like Redis' run_id: random, new for every process, forked ones included (the
    supervisor imports this module once and forks every router and shard)."""
    global RUN_ID
    RUN_ID = secrets.token_hex(20)


_new_run_id()
os.register_at_fork(after_in_child=_new_run_id)

DEFAULT_SECTIONS = ("server", "clients", "memory", "persistence", "stats", "replication", "cpu",
                    "modules", "errorstats", "cluster", "keyspace")
ALL_SECTIONS = DEFAULT_SECTIONS[:-2] + ("commandstats", "latencystats") + DEFAULT_SECTIONS[-2:]


TOTAL_SYSTEM_MEMORY_BYTES = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def bytes_to_human(n: int) -> str:
    """Redis' bytesToHuman: B below a KiB, else two decimals of K, M, G, T, P."""
    if n < 1024:
        return f"{n}B"
    for power, unit in enumerate("KMGTP", 1):
        if n < 1024 ** (power + 1) or unit == "P":
            return f"{n / 1024 ** power:.2f}{unit}"
    raise AssertionError("unreachable")


def _last_build_s(snapshots) -> int:
    """rdb_last_bgsave_time_sec: the newest snapshot's build time (-1 before any)."""
    newest = max(snapshots, key=lambda s: s.last_created_at_ms, default=None)
    return -1 if newest is None or not newest.last_created_at_ms else newest.last_build_ms // 1000


class ShardState(NamedTuple):
    shard: int
    up: bool
    first_slot: int
    last_slot: int
    reason: str  # why it is down ("" while up)

    @property
    def slots(self) -> int:
        return self.last_slot - self.first_slot + 1

    def line(self) -> str:
        """`cluster_shardN:...` for INFO cluster and CLUSTER INFO; commas in the
        reason become semicolons so INFO parsers keep it one field."""
        text = f"cluster_shard{self.shard}:state={'ok' if self.up else 'down'}," \
               f"slots={self.first_slot}-{self.last_slot}"
        if not self.up:
            text += ",reason=" + self.reason.replace(",", ";")
        return text


def shard_states(router) -> list[ShardState]:
    """Each shard's link state and slots; for a shard that is down, the reason it
    recorded in DIR/shard-NNN/FAILED (a permanent failure) or that it is restarting."""
    ranges = slot_ranges(len(router.links))
    out = []
    for link in router.links:
        first, last = ranges[link.index]
        reason = "" if link.up else (failure.read(router.config.data_dir, link.index)
                                     or "not connected (starting or restarting)")
        out.append(ShardState(link.index, link.up, first, last, reason))
    return out


def cluster_lines(router) -> list[str]:
    """cluster_state and slot counts, then one line per shard that is down."""
    states = shard_states(router)
    ok = sum(s.slots for s in states if s.up)
    return [f"cluster_state:{'ok' if all(s.up for s in states) else 'fail'}",
            f"cluster_slots_ok:{ok}",
            f"cluster_slots_fail:{sum(s.slots for s in states) - ok}"]


def wanted_sections(args: list[bytes]) -> list[str]:
    if not args:
        return list(DEFAULT_SECTIONS)
    wanted: list[str] = []
    for arg in args:
        name = arg.decode(errors="replace").lower()
        if name in ("all", "everything"):
            expanded = ALL_SECTIONS
        elif name == "default":
            expanded = DEFAULT_SECTIONS
        else:
            expanded = (name,)
        for section in expanded:
            if section not in wanted:
                wanted.append(section)
    return wanted


def render(router, shard_infos: list[dict], sections: list[str], version: bytes) -> bytes:
    lines: list[str] = []
    for section in sections:
        body = _SECTIONS.get(section)
        if body is None:
            continue
        if lines:
            lines.append("")
        lines.append(f"# {section.capitalize() if section != 'cpu' else 'CPU'}")
        lines.extend(body(router, shard_infos, version))
    return ("\r\n".join(lines) + "\r\n").encode() if lines else b""


def _server(router, infos, version):
    uptime = int(time.time() - router.started_at)
    return [
        f"redis_version:{version.decode()}",
        "redis_mode:cluster",
        "durakv_version:0.1.0",
        f"os:{os.uname().sysname} {os.uname().release} {os.uname().machine}",
        "arch_bits:64",
        "multiplexing_api:epoll",
        f"python_version:{sys.version.split()[0]}",
        f"process_id:{os.getpid()}",
        f"run_id:{RUN_ID}",
        f"tcp_port:{router.port}",
        f"server_time_usec:{time.time_ns() // 1000}",
        f"uptime_in_seconds:{uptime}",
        f"uptime_in_days:{uptime // 86400}",
        f"hz:{router.settings.values['hz']}",
        f"configured_hz:{router.settings.values['hz']}",
        f"executable:{sys.executable}",
        f"config_file:{router.config.config_file}",
        f"shards:{len(router.links)}",
        f"routers:{router.config.routers}",
    ]


def _clients(router, infos, version):
    return [
        f"connected_clients:{len(router.clients)}",
        "cluster_connections:0",
        f"maxclients:{router.settings.maxclients}",
        f"blocked_clients:{sum(1 for c in router.clients.values() if c.blocked_pending is not None or c.paused)}",
        f"tracking_clients:{router.tracking.clients}",
    ]


def _memory(router, infos, version):
    """Totals over the shards and this router (each process's used memory is its RSS
    at start plus its heap growth since, shards/evict.py; a peak is the sum of the
    processes' peaks), and durakv's per-shard share of maxmemory."""
    gauge = _router_gauge()
    mine = gauge.sample()
    shards = [i["memory"] for i in infos]
    used = mine + sum(m["used_memory"] for m in shards)
    startup = gauge.startup_bytes + sum(m["used_memory_startup"] for m in shards)
    peak = max(gauge.peak_bytes + sum(m["used_memory_peak"] for m in shards), used)
    shard_rss = sum(i["rss_bytes"] for i in infos)
    rss = shard_rss + rss_bytes()
    maxmemory = int(router.settings.values["maxmemory"])
    return [
        f"used_memory:{used}",
        f"used_memory_human:{bytes_to_human(used)}",
        f"used_memory_rss:{rss}",
        f"used_memory_rss_human:{bytes_to_human(rss)}",
        f"used_memory_peak:{peak}",
        f"used_memory_peak_human:{bytes_to_human(peak)}",
        f"used_memory_peak_perc:{used * 100 / peak if peak else 100:.2f}%",
        f"used_memory_startup:{startup}",
        f"used_memory_dataset:{used - startup}",
        f"used_memory_router_rss:{rss_bytes()}",
        f"used_memory_shards_rss:{shard_rss}",
        f"number_of_cached_scripts:{_cached_scripts(infos)}",
        f"total_system_memory:{TOTAL_SYSTEM_MEMORY_BYTES}",
        f"total_system_memory_human:{bytes_to_human(TOTAL_SYSTEM_MEMORY_BYTES)}",
        f"maxmemory:{maxmemory}",
        f"maxmemory_human:{bytes_to_human(maxmemory)}",
        f"maxmemory_policy:{router.settings.values['maxmemory-policy']}",
        f"maxmemory_per_shard:{shards[0]['maxmemory_share'] if shards else 0}",
        f"mem_not_counted_for_evict:{sum(m['not_counted_bytes'] for m in shards)}",
        f"mem_fragmentation_ratio:{rss / used if used else 1:.2f}",
        "mem_allocator:libc",  # CPython's pymalloc sits on the C library's malloc
        f"lazyfree_pending_objects:{_lazyfree(infos, 1)}",  # big values waiting for the reaper (shards/lazyfree.py)
        *(f"shard{i['shard']}_memory:used={m['used_memory']},startup={m['used_memory_startup']},"
          f"share={m['maxmemory_share']},oom={int(m['oom'])},pymalloc_block_bytes={m['bytes_per_block']}"
          for i, m in zip(infos, shards)),
    ]


_ROUTER_GAUGE: list[HeapGauge] = []
_CHANGES = ChangesSinceSave()  # this router's rdb_changes_since_last_save bases


def _router_gauge() -> HeapGauge:
    """This router's heap gauge, started at its first INFO (a router holds no keys:
    its use barely moves after start)."""
    if not _ROUTER_GAUGE:
        _ROUTER_GAUGE.append(HeapGauge())
    return _ROUTER_GAUGE[0]


def _cached_scripts(infos) -> int:
    """Distinct scripts over the shards' caches (shards/internal.py cached_scripts)."""
    if any(i["cached_scripts"][1] is None for i in infos):
        return max(i["cached_scripts"][0] for i in infos)
    return len({sha for i in infos for sha in i["cached_scripts"][1]})


def _persistence(router, infos, version):
    """The durable log, summed over shards (per-shard figures follow)."""
    shards = [i["persistence"] for i in infos]
    uptime_s = max(time.time() - router.started_at, 1e-9)
    fsyncs = sum(p["fsyncs"] for p in shards)
    records = sum(p["records_appended"] for p in shards)
    effects = sum(p["effects_appended"] for p in shards)
    failed = [p["write_error"] for p in shards if p["write_error"]]
    status = read_status(router.config.data_dir)
    snapshots = status.shards
    saved = {n: s for n, s in snapshots.items() if s.published}
    changes = sum(_CHANGES.count(i["shard"], i["persistence"].get("changes", 0),
                                 saved[i["shard"]].last_changes if i["shard"] in saved else 0,
                                 i["persistence"]["effects_appended"],
                                 (saved[i["shard"]].last_seq if i["shard"] in saved else 0,
                                  status.request_served_at_ms)) for i in infos)
    snapshot_failed = any(s.status == "error" for s in snapshots.values())
    lines = [
        "loading:0",
        "async_loading:0",
        f"rdb_changes_since_last_save:{changes}",
        f"rdb_bgsave_in_progress:{1 if pending_request(router.config.data_dir, status) else 0}",
        f"rdb_last_save_time:{status.newest_published_ms() // 1000 or int(router.started_at)}",
        f"rdb_last_bgsave_status:{'err' if snapshot_failed else 'ok'}",
        f"rdb_last_bgsave_time_sec:{_last_build_s(snapshots.values())}",
        "aof_enabled:1",
        # The log is durakv's AOF; it is never rewritten (snapshots let covered segments go).
        "aof_rewrite_in_progress:0",
        "aof_rewrite_scheduled:0",
        "aof_last_rewrite_time_sec:-1",
        "aof_current_rewrite_time_sec:-1",
        "aof_last_bgrewrite_status:ok",
        "aof_rewrites:0",
        f"aof_last_write_status:{'err' if failed else 'ok'}",
        f"aof_current_size:{sum(p['log_size_bytes'] for p in shards)}",
        f"durability:{shards[0]['durability'] if shards else 'sync'}",
        f"log_durable_seq:{sum(p['durable_seq'] for p in shards)}",
        f"log_pending_records:{sum(p['pending_records'] for p in shards)}",
        f"log_fsyncs:{fsyncs}",
        f"log_fsyncs_per_sec:{fsyncs / uptime_s:.2f}",
        f"log_fsyncs_in_loop:{sum(p.get('fsyncs_in_loop', 0) for p in shards)}",
        f"log_fsyncs_at_turn_end:{sum(p.get('fsyncs_at_turn_end', 0) for p in shards)}",
        f"log_last_fsync_latency_us:{max((p['last_fsync_latency_us'] for p in shards), default=0)}",
        f"log_records_appended:{records}",
        f"log_avg_effects_per_record:{effects / records if records else 0:.2f}",
        f"log_bytes_written:{sum(p['log_bytes_written'] for p in shards)}",
        f"log_size_bytes:{sum(p['log_size_bytes'] for p in shards)}",
        f"log_segments:{sum(p['log_segments'] for p in shards)}",
        f"log_held_replies:{sum(p['held_replies'] for p in shards)}",
        f"log_dirty_keys:{sum(p['dirty_keys'] for p in shards)}",
        f"log_write_error:{failed[0] if failed else ''}",
        f"log_backend:{shards[0].get('log_backend', 'local') if shards else 'local'}",
        # Cross-shard transactions (server/txn.py, shards/txn.py); committed/aborted: this router's.
        f"xshard_committed:{getattr(getattr(router, 'txn', None), 'committed', 0)}",
        f"xshard_aborted:{getattr(getattr(router, 'txn', None), 'aborted', 0)}",
        f"xshard_read_waits:{getattr(getattr(router, 'txn', None), 'read_waits', 0)}",
        f"xshard_batched:{getattr(getattr(router, 'txn', None), 'batched', 0)}",
        f"xshard_locked_keys:{sum(p.get('txn_locked_keys', 0) for p in shards)}",
        f"xshard_waiting_requests:{sum(p.get('txn_waiting_requests', 0) for p in shards)}",
        f"xshard_lock_waits:{sum(p.get('txn_lock_waits', 0) for p in shards)}",
        f"xshard_in_doubt:{sum(p.get('txn_in_doubt', 0) for p in shards)}",
        # Blocked commands parked at the shards (a cross-shard BLPOP waits on each of its shards).
        f"shard_blocked_waiters:{sum(p.get('blocked_waiters', 0) for p in shards)}",
    ]
    lines.append(f"snapshot_url:{router.config.snapshot_url}")
    for p, info in zip(shards, infos):
        s = snapshots.get(info["shard"])
        if s is not None:
            lines.append(
                f"snapshot_shard{info['shard']}:status={s.status},seq={s.last_seq},"
                f"records_behind={max(p['tail_seq'] - s.last_seq, 0)},created_at_ms={s.last_created_at_ms},"
                f"build_ms={s.last_build_ms},rdb_bytes={s.last_rdb_bytes},keys={s.last_keys}")
    if router.config.snapshot_url:  # a store that keeps the log: RPO for machine loss is the archive lag
        now_ms = time.time_ns() // 1_000_000
        for p, info in zip(shards, infos):
            s = snapshots.get(info["shard"])
            archived = s.log_archived_seq if s else 0
            behind = max(p["durable_seq"] - archived, 0)
            lag_ms = 0 if not behind else now_ms - (s.log_archive_caught_up_ms if s and s.log_archive_caught_up_ms
                                                     else int(router.started_at * 1000))
            lines.append(f"log_archive_shard{info['shard']}:archived_seq={archived},lag_records={behind},"
                         f"lag_ms={lag_ms},status={'error' if s and s.log_archive_error else 'ok'}")
    for p, info in zip(shards, infos):
        lines.append(
            f"shard{info['shard']}:durable_seq={p['durable_seq']},tail_seq={p['tail_seq']},"
            f"fsyncs={p['fsyncs']},last_fsync_us={p['last_fsync_latency_us']},"
            f"segments={p['log_segments']},replayed={p['replayed_records']}")
        if "etcd_epoch" in p:
            lines.append(f"etcd_shard{info['shard']}:epoch={p['etcd_epoch']},first_seq={p['etcd_first_seq']},"
                         f"lease_valid={p['etcd_lease_valid']},endpoint={p['etcd_endpoint']},"
                         f"db_size={p.get('etcd_db_size', 0)},db_size_in_use={p.get('etcd_db_size_in_use', 0)}")
    if any("etcd_epoch" in p for p in shards):  # this node's snapshotter and etcd's defragmentation
        lines += [f"etcd_defragmenter:{int(status.etcd_defragmenter)}", f"etcd_defragmented:{status.etcd_defragmented}"]
    return lines


def _stats(router, infos, version):
    return [
        f"total_connections_received:{router.stats_connections}",
        f"total_commands_processed:{router.stats_commands}",
        *router.rates.lines(),
        f"total_net_input_bytes:{router.stats_net_input_bytes}",
        f"total_net_output_bytes:{router.stats_net_output_bytes}",
        f"rejected_connections:{router.stats_rejected_connections}",
        f"expired_keys:{sum(i['expired_keys'] for i in infos)}",
        f"evicted_keys:{sum(i['evicted_keys'] for i in infos)}",
        f"keyspace_hits:{sum(i['keyspace_hits'] for i in infos)}",
        f"keyspace_misses:{sum(i['keyspace_misses'] for i in infos)}",
        f"pubsub_channels:{len(router.pubsub.channels)}",  # this process's, as CLIENT LIST's clients
        f"pubsub_patterns:{len(router.pubsub.patterns)}",
        *router.tracking.stats_lines(),
        "migrate_cached_sockets:0",  # no MIGRATE, so no cached connections
        f"total_error_replies:{router.reply_stats.error_replies + sum(_script_errors(infos).values())}",
        "unexpected_error_replies:0",
        "latest_fork_usec:0",  # snapshots are built by the snapshotter process, not by forking
        "total_forks:0",
        f"total_protocol_errors:{router.stats_protocol_errors}",
        f"shard_frames_sent:{sum(link.frames_sent for link in router.links)}",
        f"shard_requests_sent:{sum(link.requests_sent for link in router.links)}",
        # small frames that passed a big value on a router <-> shard link (shards/framelink.py)
        "link_frames_passed_large:%d" % (link_stats.frames_passed_large
                                         + sum(i["link_frames_passed_large"] for i in infos)),
        # bytes copied into ordinary frames' msgpack on those links (a big value is written uncopied)
        "link_frame_bytes_encoded:%d" % (frame_stats.bytes_encoded + sum(i["link_frame_bytes_encoded"] for i in infos)),
        f"lazyfreed_objects:{_lazyfree(infos, 0)}",  # big values freed off the loop (shards/lazyfree.py)
        # big array replies encoded across loop turns (shards/chunked.py): how many, the
        # turns they took, and the commands shards ran meanwhile
        *(f"{name}:{sum(i['chunked_replies'][k] for i in infos)}" for k, name in
          enumerate(("chunked_replies", "chunked_reply_turns", "commands_during_chunked_replies"))),
    ]


def _lazyfree(infos, field: int) -> int:
    """The shards' count (0: freed, 1: held) plus this process's, unless this is a
    shard's node (its shard's figure is this process's)."""
    own = (lazyfree.stats.freed, lazyfree.stats.held)[field]
    pid = os.getpid()
    return sum(i["lazyfree"][field] for i in infos) + (0 if any(i["pid"] == pid for i in infos) else own)


def _replication(router, infos, version):
    return replication.info_lines(router)


def _cpu(router, infos, version):
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return [
        f"used_cpu_sys:{usage.ru_stime:.6f}",
        f"used_cpu_user:{usage.ru_utime:.6f}",
        f"used_cpu_sys_children:{children.ru_stime:.6f}",
        f"used_cpu_user_children:{children.ru_utime:.6f}",
    ]


def _modules(router, infos, version):
    return []


def _errorstats(router, infos, version):
    return router.reply_stats.error_lines(_script_errors(infos))


def _script_errors(infos) -> dict[bytes, int]:
    """The errors of the commands scripts ran, counted by the shards (shards/luaenv.py)."""
    merged: dict[bytes, int] = {}
    for info in infos:
        for code, count in info.get("script_errors", {}).items():
            merged[code] = merged.get(code, 0) + count
    return merged


def _cluster(router, infos, version):
    return ["cluster_enabled:1", *cluster_lines(router), *(s.line() for s in shard_states(router))]


def _keyspace(router, infos, version):
    keys = sum(i["keys"] for i in infos)
    expires = sum(i["expires"] for i in infos)
    if not keys:
        return []
    return [f"db0:keys={keys},expires={expires},avg_ttl=0"]


def _commandstats(router, infos, version):
    """The shards' stats of the commands they ran plus this router's own (the commands
    it answers, and those it refused before they reached a shard)."""
    merged: dict[str, list[int]] = {}
    own = [{name: [s.calls, s.usec, s.failed, s.rejected] for name, s in router.reply_stats.commands.items()}]
    for stats in [i["commandstats"] for i in infos] + own:
        for name, counts in stats.items():
            entry = merged.setdefault(name, [0, 0, 0, 0])
            for n, count in enumerate(counts):
                entry[n] += count
    lines = []
    for name, (calls, usec, failed, rejected) in sorted(merged.items()):
        if not (calls or failed or rejected):
            continue
        per_call = usec / calls if calls else 0.0
        lines.append(f"cmdstat_{name}:calls={calls},usec={usec},usec_per_call={per_call:.2f},"
                     f"rejected_calls={rejected},failed_calls={failed}")
    return lines


def _latencystats(router, infos, version):
    """Per-command latency percentiles (µs) over this process's and the shards'
    histograms (shards/latency.py), in command table order, as Redis 7.0 prints them."""
    merged = merge_histograms([router.latency.export_histograms(), *(i["latency_histograms"] for i in infos)])
    percentiles = [float(p) for p in router.settings.values["latency-tracking-info-percentiles"].split()]
    lines = []
    for cmd in TABLE.values():
        for each in (cmd, *cmd.subcommands.values()):
            counts = merged.get(each.fullname)
            if counts:
                values = ",".join(f"p{format_percentile(p)}={percentile_ns(counts, p) / 1000:.3f}"
                                  for p in percentiles)
                lines.append(f"latency_percentiles_usec_{each.fullname}:{values}")
    return lines


_SECTIONS = {
    "server": _server,
    "clients": _clients,
    "memory": _memory,
    "persistence": _persistence,
    "stats": _stats,
    "replication": _replication,
    "cpu": _cpu,
    "modules": _modules,
    "errorstats": _errorstats,
    "cluster": _cluster,
    "keyspace": _keyspace,
    "commandstats": _commandstats,
    "latencystats": _latencystats,
}
