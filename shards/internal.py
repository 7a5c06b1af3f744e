"""Requests the router sends to shards on its own behalf (names start with NUL,
which no client can send through the router's command table). Replies are
msgpack `[ok, value]`."""

from __future__ import annotations

import logging
import os

from durakv.shards.framelink import link_stats
from durakv.shards import lazyfree
from durakv.shards.log_backend import etcd_state
from durakv.shards.luaenv import scripting_of
from durakv.shards.malloc_stats import malloc_stats
from durakv.shards.min_replicas import MIN_REPLICAS_PARAMS
from durakv.shards.notify import parse_flags
from durakv.shards.rdb.codec import RDB_VERSION, RdbError, dump_payload, load_payload
from durakv.shards.t_dump import MAX_DECOMPRESSED_BYTES
from durakv.shards.frames import (
    VERB_CONFIG, VERB_COUNTKEYSINSLOT, VERB_DEBUG, VERB_EXPIRY_PAUSE, VERB_GETKEYSINSLOT, VERB_INFO,
    VERB_LATENCY, VERB_NO_WRITES_FUNCTIONS, VERB_RESETSTAT, VERB_SCRIPT_UNFENCE, VERB_SCRIPTS_EVICTED_SEEN,
    VERB_SLOWLOG, VERB_TRACKING, VERB_UNBLOCK, VERB_UNWATCH,
    encode_internal, frame_stats,
)

logger = logging.getLogger("durakv.shard")
MEMORY_PARAMS = frozenset({"maxmemory", "maxmemory-samples", "lfu-log-factor", "lfu-decay-time"})
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
INFO_LATENCYSTATS = b"latencystats"  # \x00info asks for the command histograms too
INFO_MALLOC = b"malloc"  # MEMORY MALLOC-STATS: the allocators' figures (shards/malloc_stats.py)
LATENCY_PARAMS = frozenset({"latency-monitor-threshold", "latency-tracking"})


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE_BYTES


def info(shard, argv: list[bytes]) -> dict:
    db = shard.db
    return {
        "shard": shard.index,
        "pid": os.getpid(),
        "keys": len(db.data),
        "expires": len(db.expires),
        "rss_bytes": rss_bytes(),
        "memory": memory(shard),
        "total_commands": shard.total_commands,
        "chunked_replies": [shard.chunk_stats.replies, shard.chunk_stats.turns, shard.chunk_stats.commands_between],
        "link_frames_passed_large": link_stats.frames_passed_large,
        "link_frame_bytes_encoded": frame_stats.bytes_encoded,
        "lazyfree": [lazyfree.stats.freed, lazyfree.stats.held],
        "expired_keys": db.stat_expired_keys,
        "evicted_keys": db.stat_evicted_keys,
        "keyspace_hits": db.stat_keyspace_hits,
        "keyspace_misses": db.stat_keyspace_misses,
        "commandstats": {name: [s.calls, s.usec, s.failed, s.rejected] for name, s in shard.stats.items()},
        "persistence": persistence(shard),
        "cached_scripts": cached_scripts(db),
        "script_errors": db.scripting.error_counts if db.scripting is not None else {},
        "latency_histograms": shard.latency.export_histograms() if INFO_LATENCYSTATS in argv else {},
        "malloc": malloc_stats() if INFO_MALLOC in argv else {},
    }


def memory(shard) -> dict:
    """INFO memory's figures for this shard (shards/evict.py says what they measure)."""
    limit = shard.memory
    gauge = limit.gauge
    used = limit.sample(shard.db)
    return {
        "used_memory": used,
        "used_memory_startup": gauge.startup_bytes,
        "used_memory_peak": gauge.peak_bytes,
        "bytes_per_block": gauge.bytes_per_block,
        "maxmemory_share": limit.share_bytes,
        "not_counted_bytes": gauge.not_counted_bytes,
        "oom": shard.db.oom,
    }


# INFO's number_of_cached_scripts counts distinct scripts over the shards (SCRIPT LOAD
# caches on every shard, EVAL where it ran): a shard sends its shas up to this many,
# else only its count (the router then reports the largest count).
MAX_INFO_SCRIPT_SHAS = 4096


def cached_scripts(db) -> list:
    """[count, the shas or None]."""
    scripts = db.scripting.scripts if db.scripting is not None else {}
    return [len(scripts), list(scripts) if len(scripts) <= MAX_INFO_SCRIPT_SHAS else None]


def persistence(shard) -> dict:
    wal = shard.wal
    return {
        "durability": shard.config.durability,
        "durable_seq": wal.durable_seq,
        "tail_seq": wal.tail_seq,
        "pending_records": wal.tail_seq - wal.durable_seq,
        "fsyncs": shard.fsyncs,
        **shard.sync_places(),
        "last_fsync_latency_us": wal.last_fsync_latency_us,
        "log_bytes_written": wal.bytes_written,
        "log_segments": wal.segment_count,
        "log_size_bytes": wal.size_bytes,
        "records_appended": shard.records_appended,
        "effects_appended": shard.effects_appended,
        "changes": shard.db.changes,  # shards/changes.py: INFO rdb_changes_since_last_save
        "held_replies": shard.held.count,
        "dirty_keys": shard.hazards.pending_keys(),
        "write_error": (shard.write_error or b"").decode(errors="replace"),
        "replayed_records": shard.replayed_records,
        "txn_locked_keys": len(shard.txn.locks),
        "txn_waiting_requests": len(shard.txn.deferred),
        "txn_lock_waits": shard.txn.lock_waits,
        "txn_in_doubt": sum(1 for t in shard.txn.txns.values() if t.in_doubt),
        "blocked_waiters": len(shard.blocked),
        "log_backend": shard.config.log_backend,
        **etcd_state(wal),
    }


def count_keys_in_slot(shard, argv: list[bytes]) -> int:
    return shard.db.count_keys_in_slot(int(argv[1]))


def get_keys_in_slot(shard, argv: list[bytes]) -> list[bytes]:
    keys = shard.db.keys_in_slot(int(argv[1]))
    limit = int(argv[2])
    return sorted(keys)[:limit]


def reset_stats(shard, argv: list[bytes]) -> bool:
    shard.stats.clear()
    shard.db.stat_expired_keys = 0
    shard.db.stat_evicted_keys = 0
    shard.db.stat_keyspace_hits = 0
    shard.db.stat_keyspace_misses = 0
    shard.latency.reset_histograms()
    if shard.db.scripting is not None:
        shard.db.scripting.error_counts.clear()
    return True


def set_config(shard, argv: list[bytes]) -> bool:
    name = argv[1].decode()
    if name == "notify-keyspace-events":
        flags = parse_flags(argv[2].decode())
        assert flags is not None, "the router validated notify-keyspace-events"
        shard.db.notify_flags = flags
        return True
    if name == "maxmemory-policy":
        shard.configure_memory(argv[2].decode())
        return True
    if name in LATENCY_PARAMS:
        shard.latency.configure(name, argv[2].decode())
        return True
    assert name in shard.settings, f"router forwarded a non-shard parameter {name}"
    shard.settings[name] = int(argv[2])
    if name.startswith("slowlog-"):
        shard.configure_slowlog()
    if name in MEMORY_PARAMS:
        shard.configure_memory()
    if name in MIN_REPLICAS_PARAMS and shard.min_replicas is not None:
        shard.min_replicas.refresh()   # in force when CONFIG SET answers, as in Redis
    return True


def slowlog(shard, argv: list[bytes]) -> list | int | bool:
    """SLOWLOG through a router: this shard's entries (newest first), length or reset."""
    log = shard.slowlog
    if argv[1] == b"get":
        return log.newest(int(argv[2]))
    if argv[1] == b"len":
        return len(log.entries)
    assert argv[1] == b"reset", f"unknown slowlog request {argv[1]!r}"
    log.reset()
    return True


def latency(shard, argv: list[bytes]) -> dict | list:
    """LATENCY through a router: this shard's events or histograms, or a reset
    (the names of the events it dropped)."""
    monitor = shard.latency
    if argv[1] == b"events":
        return monitor.export_events()
    if argv[1] == b"histograms":
        return monitor.export_histograms()
    assert argv[1] == b"reset", f"unknown latency request {argv[1]!r}"
    return monitor.reset_events([name.decode(errors="replace") for name in argv[2:]])


def forget_client(shard, argv: list[bytes]) -> bool:
    """The router's client disconnected or ran UNWATCH/DISCARD: drop its watches."""
    shard.watches.unwatch(int(argv[1]))
    return True


def unfence(shard, argv: list[bytes]) -> int:
    """The router's retry of a client's script is done (shards/script_fence.py): its
    requests held since run; how many."""
    return shard.txn.unfence_client(int(argv[1]))


def no_writes_functions(shard, argv: list[bytes]) -> list[bytes]:
    """The (lowercased) names of the functions flagged no-writes: FCALL of one is not
    held by CLIENT PAUSE WRITE (every shard has the same libraries)."""
    state = shard.db.scripting
    if state is None:
        return []
    return [f.name.lower() for library in state.libraries.values() for f in library.functions.values()
            if b"no-writes" in f.flags]


def pause_expiry(shard, argv: list[bytes]) -> bool:
    """CLIENT PAUSE keeps the dataset as it is (Redis' checkClientPauseTimeoutAndReturnIfPaused):
    until then, an expired key reads as missing but is not deleted, and active expiry waits."""
    shard.db.expiry_paused_until_ms = int(argv[1])
    return True


def debug(shard, argv: list[bytes]) -> int:
    """DEBUG RELOAD: every value through the RDB codec and back, as Redis' save and
    load, so encodings are re-chosen by today's thresholds (nothing is logged: the
    values are equal). DEBUG SET-ACTIVE-EXPIRE: the background expiry on or off."""
    db = shard.db
    if argv[1] == b"set-active-expire":
        db.active_expire_enabled = argv[2] == b"1"
        return 0
    assert argv[1] == b"reload", f"unknown DEBUG request {argv[1]!r}"
    settings = shard.settings
    list_fill = settings["list-max-listpack-size"]
    reloaded = 0
    for key, value in list(db.data.items()):
        try:
            payload = dump_payload(value, list_fill)
            db.data[key] = load_payload(payload, RDB_VERSION, settings, MAX_DECOMPRESSED_BYTES)
        except RdbError as e:
            logger.error("shard %d: DEBUG RELOAD kept key %r as it was: %s", shard.index, key[:64], e)
            continue
        reloaded += 1
    return reloaded


def unblock(shard, argv: list[bytes]) -> bool:
    return shard.unblock(int(argv[1]), argv[2])


HANDLERS = {
    VERB_UNBLOCK: unblock,
    VERB_UNWATCH: forget_client,
    VERB_SCRIPT_UNFENCE: unfence,
    VERB_CONFIG: set_config,
    VERB_INFO: info,
    VERB_COUNTKEYSINSLOT: count_keys_in_slot,
    VERB_GETKEYSINSLOT: get_keys_in_slot,
    VERB_RESETSTAT: reset_stats,
    VERB_SLOWLOG: slowlog,
    VERB_LATENCY: latency,
    VERB_NO_WRITES_FUNCTIONS: no_writes_functions,
    VERB_EXPIRY_PAUSE: pause_expiry,
    VERB_DEBUG: debug,
}


# Internal requests that read the keyspace without naming keys (CLUSTER
# COUNTKEYSINSLOT/GETKEYSINSLOT): keyless reads, so they wait for everything pending.
KEYSPACE_READS = frozenset({VERB_COUNTKEYSINSLOT, VERB_GETKEYSINSLOT})
INFO_KEYSPACE = b"keyspace"


def reads_keyspace(argv: list[bytes]) -> bool:
    """Whether the reply counts or lists keys (DESIGN invariant 2: a keyless read waits
    for every pending record): the requests above, and \x00info when the router asks
    for the keyspace section (INFO keyspace: key counts, like DBSIZE). Other INFO
    sections (persistence, stats) are about the server, not the data, and never wait:
    they are how an operator sees that replies are held."""
    return argv[0] in KEYSPACE_READS or (argv[0] == VERB_INFO and INFO_KEYSPACE in argv[1:])


def run(shard, argv: list[bytes], conn) -> bytes:
    """`conn` is the connection the request came on (the reply sink)."""
    if argv[0] == VERB_TRACKING:
        return encode_internal(True, shard.set_tracking(conn, argv))
    if argv[0] == VERB_SCRIPTS_EVICTED_SEEN:
        return encode_internal(True, scripting_of(shard.db).evicting.answered(conn, argv[1:]))
    handler = HANDLERS.get(argv[0])
    if handler is None:
        return encode_internal(False, b"unknown internal request %r" % argv[0][1:])
    try:
        return encode_internal(True, handler(shard, argv))
    except Exception:
        logger.exception("shard %d: internal request %r failed", shard.index, argv[:3])
        return encode_internal(False, b"ERR internal request failed: %s" % argv[0][1:])
