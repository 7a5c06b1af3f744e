"""The snapshot commands of the `durakv` CLI: snapshotter, snapshot --now,
snapshots list, restore, import-rdb, export-rdb. server/cli.py registers them
with add_parsers() and hands matching commands to run()."""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from datetime import datetime, UTC
from typing import TYPE_CHECKING

from durakv.shards.config import DEFAULTS, Config

if TYPE_CHECKING:
    from durakv.snapshotter.build_lock import BuildLocks
    from durakv.snapshotter.logsource import EtcdLogSource

COMMANDS = frozenset({"snapshotter", "snapshot", "snapshots", "restore", "import-rdb", "export-rdb"})
SNAPSHOT_WAIT_POLL_S = 0.2
DEFAULT_NICE = 10


def _cpu_percent(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError("must be between 1 and 100")
    return value


def _store_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sse", help="S3 server-side encryption (AES256, aws:kms)")
    parser.add_argument("--storage-class", help="S3 storage class for uploads (STANDARD_IA, ...)")


def add_parsers(sub) -> None:
    p = sub.add_parser("snapshotter", help="build snapshots from shard logs and ship them to S3")
    p.add_argument("--data-dir", default=DEFAULTS.data_dir)
    p.add_argument("--snapshot-url", default="",
                   help="s3://BUCKET/PREFIX or file:///PATH (omit: snapshots only, in DATA_DIR/snapshots)")
    p.add_argument("--once", action="store_true", help="snapshot every shard once and exit")
    p.add_argument("--every-bytes", type=int, default=DEFAULTS.snapshot_every_bytes,
                   help="build when at least this many log bytes follow the newest snapshot")
    p.add_argument("--every-percent", type=int, default=DEFAULTS.snapshot_every_percent,
                   help="and at least this percentage of the newest snapshot's size (0: off)")
    p.add_argument("--max-age-s", type=float, default=DEFAULTS.snapshot_max_age_s,
                   help="build at least this often while there are new records")
    p.add_argument("--poll-interval-s", type=float, default=1.0)
    p.add_argument("--log-archive-interval-ms", type=int, default=DEFAULTS.log_archive_interval_ms,
                   help="ship each shard's durable log tail to the store this often (s3://, file:// only)")
    p.add_argument("--log-archive-bytes", type=int, default=DEFAULTS.log_archive_bytes,
                   help="or as soon as this many log bytes are new")
    p.add_argument("--nice", type=int, default=DEFAULT_NICE, help="CPU niceness increment (low priority)")
    p.add_argument("--cpu-percent", type=_cpu_percent, default=DEFAULTS.snapshot_cpu_percent,
                   help="at most this share of wall time building (1-100), in short slices, so a "
                        "snapshot does not slow the shards; 100 builds as fast as the CPU allows")
    p.add_argument("--sched-idle", action=argparse.BooleanOptionalAction, default=True,
                   help="run under SCHED_IDLE (Linux): any shard that wakes preempts the snapshotter; "
                        "on a box whose CPUs are never idle, snapshots then progress only slowly")
    p.add_argument("--config", help="the servers' TOML config file (durakv.toml): data-dir, snapshot-url, "
                   "the snapshot-* schedule and logging come from it")
    p.add_argument("--config-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    _store_flags(p)

    p = sub.add_parser("snapshot", help="snapshot every shard now")
    p.add_argument("--now", action="store_true", required=True)
    p.add_argument("--data-dir", default=DEFAULTS.data_dir)
    p.add_argument("--snapshot-url", default="", help="used when no snapshotter is running")
    p.add_argument("--timeout-s", type=float, default=600.0)
    _store_flags(p)

    p = sub.add_parser("snapshots", help="inspect published snapshots")
    list_sub = p.add_subparsers(dest="snapshots_command", required=True)
    lp = list_sub.add_parser("list", help="table of shard, seq, time, size, verified")
    lp.add_argument("--from", dest="url", required=True, help="s3://BUCKET/PREFIX or file:///PATH")

    p = sub.add_parser("restore", help="rebuild a data directory from S3 (or a file:// store)")
    p.add_argument("--from", dest="url", required=True, help="s3://BUCKET/PREFIX or file:///PATH")
    p.add_argument("--data-dir", required=True)
    target = p.add_mutually_exclusive_group()
    target.add_argument("--seq", action="append",
                        help="N (every shard) or SHARD=N; repeatable. Default: newest")
    target.add_argument("--at", help="point in time: unix seconds or ISO 8601 (UTC unless it says otherwise)")
    p.add_argument("--force", action="store_true", help="replace a non-empty data directory")
    p.add_argument("--config", help="the servers' TOML config file: with log-backend = \"etcd\" the shards "
                   "are restored from the store's snapshots plus the records on etcd, and etcd's logs are made "
                   "to continue from the restored state")
    p.add_argument("--allow-partial", action="store_true",
                   help="with --at: restore shards whose archive ends before that time to their end "
                        "instead of failing (the shards are then not at one consistent time)")
    _store_flags(p)

    p = sub.add_parser("import-rdb", help="seed a new data directory from a Redis RDB file")
    p.add_argument("rdb_file")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--shards", type=int, default=0, help="shard count (default: one per CPU core)")
    p.add_argument("--skip-unsupported", action="store_true", help="skip module values (durakv has no modules)")

    p = sub.add_parser("export-rdb", help="write one RDB holding the whole dataset")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data-dir")
    source.add_argument("--from", dest="url", help="s3://BUCKET/PREFIX: newest published snapshots")
    source.add_argument("--config", help="the servers' TOML config file: its data dir, or with log-backend = "
                        "\"etcd\" the records on etcd after each shard's snapshot (the data dir's, else the "
                        "snapshot-url store's)")
    p.add_argument("-o", "--output", required=True)


def _fail(message: str, code: int = 1) -> int:
    from durakv.server.logsetup import print_error

    print_error(f"durakv: {message}")
    return code


def _store(url: str, args: argparse.Namespace, data_dir: str | None = None):
    """The store a URL names (s3://, file://), or with no URL the embedded one under data_dir."""
    from durakv.snapshotter.filestore import open_store

    return open_store(url, data_dir, server_side_encryption=getattr(args, "sse", None),
                      storage_class=getattr(args, "storage_class", None))


def parse_at(text: str) -> int:
    """--at as absolute ms."""
    try:
        return int(float(text) * 1000)
    except ValueError:
        pass
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def parse_seq(values: list[str] | None) -> int | dict[int, int] | None:
    if not values:
        return None
    if len(values) == 1 and "=" not in values[0]:
        return int(values[0])
    out = {}
    for value in values:
        shard, _, seq = value.partition("=")
        if not seq:
            raise ValueError(f"--seq {value!r}: give N alone, or SHARD=N for each shard")
        out[int(shard)] = int(seq)
    return out


def cmd_snapshotter(args: argparse.Namespace) -> int:
    from durakv.server.proctitle import set_title
    from durakv.snapshotter.priority import lower_priority
    from durakv.snapshotter.runner import Schedule, Snapshotter, SnapshotterBusy, acquire_lock

    if args.parent_pid:
        from durakv.shards.lifeline import die_with_parent

        die_with_parent(args.parent_pid)
    data_dir = args.data_dir
    url = args.snapshot_url
    log_level = "info"
    etcd = None
    locks = None
    if args.config_fd is not None or args.config:
        from durakv.server.logsetup import setup_logging
        from durakv.shards.config import config_from_fd, load_config

        try:
            config = config_from_fd(args.config_fd) if args.config_fd is not None else load_config(args.config, {})
        except ValueError as e:
            return _fail(f"bad configuration: {e}")
        try:
            setup_logging(config.log_level, config.log_file)
        except OSError as e:
            return _fail(f"cannot open log-file {config.log_file}: {e.strerror}; fix log-file (empty: log to "
                         "stderr) or the file's permissions")
        from durakv.server.secret_sources import export_s3_credentials

        export_s3_credentials(config)
        log_level = config.log_level
        data_dir = config.data_dir
        url = url or config.snapshot_url
        args.sse = args.sse or config.snapshot_sse or None
        args.storage_class = args.storage_class or config.snapshot_storage_class or None
        args.every_bytes, args.max_age_s = config.snapshot_every_bytes, config.snapshot_max_age_s
        args.every_percent = config.snapshot_every_percent
        args.cpu_percent = config.snapshot_cpu_percent
        args.log_archive_interval_ms, args.log_archive_bytes = config.log_archive_interval_ms, config.log_archive_bytes
        etcd = _etcd_source(config)
        locks = _build_locks(config, etcd)
    set_title("snapshotter", os.path.abspath(data_dir))
    lower_priority(args.nice, args.sched_idle)
    try:
        lock_fd = acquire_lock(data_dir)
    except SnapshotterBusy as e:
        return _fail(str(e))
    try:
        runner = Snapshotter(data_dir, _store(url, args, data_dir),
                             Schedule(every_bytes=args.every_bytes, every_percent=args.every_percent,
                                      max_age_s=args.max_age_s, poll_interval_s=args.poll_interval_s,
                                      cpu_percent=args.cpu_percent,
                                      archive_interval_ms=args.log_archive_interval_ms,
                                      archive_bytes=args.log_archive_bytes), etcd, locks)
        if args.once:
            stop_renewing = threading.Event()
            if locks is not None:
                locks.start(stop_renewing)
            try:
                status = runner.run_once(force=True)
            finally:
                stop_renewing.set()
                if locks is not None:
                    locks.close()
            errors = [s for s in status.shards.values() if s.status == "error"]
            for s in errors:
                print(f"shard {s.shard}: {s.error}", file=sys.stderr)
            return 1 if errors else 0
        stop = threading.Event()
        import signal

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        _follow_log_level(data_dir, log_level, stop)
        runner.serve(stop)
        return 0
    finally:
        os.close(lock_fd)


def _load_config(path: str) -> Config:
    """A command's --config (the servers' file), with the S3 credentials it names exported.
    ConfigError (one line) when it does not load."""
    from durakv.server.secret_sources import export_s3_credentials
    from durakv.shards.config import load_config

    try:
        config = load_config(path, {})
    except ValueError as e:
        raise ConfigError(f"bad configuration: {e}") from None
    export_s3_credentials(config)
    return config


class ConfigError(Exception):
    """--config did not load; str() is the operator's line."""


def _etcd_source(config: Config) -> "EtcdLogSource | None":
    """The shard logs on etcd when the config says log-backend = "etcd" (else None)."""
    from durakv.shards.log_backend import etcd_client, uses_etcd

    if not uses_etcd(config):
        return None  # the etcd client stays out of this process (tests/test_process_memory.py)
    from durakv.log.etcd_upkeep import Defragmenter
    from durakv.snapshotter.logsource import EtcdLogSource

    client = etcd_client(config)
    defragmenter = Defragmenter(client.clone(), config.etcd_prefix, config.etcd_defrag_free_bytes,
                                config.etcd_defrag_interval_s)
    return EtcdLogSource(client, config.etcd_prefix, defragmenter)


def _build_locks(config: Config, etcd: "EtcdLogSource | None") -> "BuildLocks | None":
    """With the logs on etcd, the build locks shared by every node's snapshotter
    (snapshotter/build_lock.py), on a client of their own (their lease is renewed from a
    thread while a build runs)."""
    if etcd is None:
        return None
    from durakv.snapshotter.build_lock import BuildLocks

    return BuildLocks(etcd.client.clone(), config.etcd_prefix, config.node_id, config.etcd_lease_ttl_s,
                      config.etcd_lease_margin_ms)


def _follow_log_level(data_dir: str, configured: str, stop: threading.Event) -> None:
    """CONFIG SET loglevel on the servers reaches the snapshotter through DIR/run/settings."""
    from durakv.server.logsetup import LogLevelFollower
    from durakv.server.runtime_changes import load_runtime_changes, settings_path

    LogLevelFollower(settings_path(data_dir), configured, lambda: load_runtime_changes(data_dir)).start_thread(stop)


def cmd_snapshot_now(args: argparse.Namespace) -> int:
    from durakv.snapshotter.runner import Snapshotter, SnapshotterBusy, acquire_lock, read_status, request_snapshot

    try:
        lock_fd = acquire_lock(args.data_dir)
    except SnapshotterBusy:
        request = request_snapshot(args.data_dir)
        deadline = time.monotonic() + args.timeout_s
        while time.monotonic() < deadline:
            status = read_status(args.data_dir)
            if status.request_served >= request:
                return _print_status(status)
            time.sleep(SNAPSHOT_WAIT_POLL_S)
        return _fail(f"the running snapshotter did not serve the request within {args.timeout_s:.0f} s")
    try:
        runner = Snapshotter(args.data_dir, _store(args.snapshot_url, args, args.data_dir))
        return _print_status(runner.run_once(force=True))
    finally:
        os.close(lock_fd)


def _print_status(status) -> int:
    failed = 0
    for shard in sorted(status.shards):
        s = status.shards[shard]
        if s.status == "error":
            failed += 1
            print(f"shard {shard}: ERROR {s.error}")
        else:
            print(f"shard {shard}: seq {s.last_seq}, {s.last_keys} keys, {s.last_rdb_bytes} bytes"
                  f"{', published' if s.published else ''}")
    return 1 if failed else 0


def cmd_snapshots_list(args: argparse.Namespace) -> int:
    store = _store(args.url, args)
    store.check_bucket()
    rows = store.list_snapshots()
    if not rows:
        return _fail(f"no snapshot found in {args.url}")
    print(f"{'SHARD':>5} {'SEQ':>12} {'CREATED (UTC)':<20} {'BYTES':>12} {'KEYS':>10} VERIFIED")
    for row in rows:
        m = row.manifest
        created = datetime.fromtimestamp(m.created_at_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
        verified = "yes" if row.complete else ("no (RDB missing)" if row.rdb_size is None else "no (size)")
        print(f"{m.shard:>5} {m.seq:>12} {created:<20} {m.rdb_bytes:>12} {m.keys:>10} {verified}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from durakv.snapshotter.restore import restore

    try:
        seq = parse_seq(args.seq)
        at_ms = parse_at(args.at) if args.at else None
    except ValueError as e:
        return _fail(str(e), 2)
    etcd = _etcd_source(_load_config(args.config)) if args.config else None
    if etcd is not None:
        from durakv.snapshotter.etcd_restore import restore_etcd

        results = restore_etcd(_store(args.url, args), etcd, args.data_dir, seq=seq, at_ms=at_ms, force=args.force)
    else:
        results = restore(_store(args.url, args), args.data_dir, seq=seq, at_ms=at_ms, force=args.force,
                          allow_partial=args.allow_partial)
    from durakv.server.topology import ensure_topology

    ensure_topology(args.data_dir, len(results))
    for r in results:
        print(f"shard {r.shard}: seq {r.seq} (snapshot {r.snapshot_seq} + {r.records_replayed} records), "
              f"{r.keys} keys, state digest {r.state_digest[:16]}")
        if not r.covers_at:
            print(f"shard {r.shard}: PARTIAL: its archive ends at seq {r.seq}, before --at {args.at}",
                  file=sys.stderr)
    return 0


def cmd_import_rdb(args: argparse.Namespace) -> int:
    from durakv.server.topology import ensure_topology
    from durakv.snapshotter.rdb_import import import_rdb

    shards = args.shards or (os.cpu_count() or 1)
    ensure_topology(args.data_dir, shards)
    with open(args.rdb_file, "rb") as f:
        report = import_rdb(f, args.data_dir, shards, skip_unsupported=args.skip_unsupported)
    print(f"imported {report.keys} keys and {report.libraries} function libraries into {shards} shards "
          f"({report.records} log records); skipped {report.expired_skipped} expired keys")
    for item in report.unsupported_skipped:
        print(f"skipped: {item}")
    return 0


def cmd_export_rdb(args: argparse.Namespace) -> int:
    from durakv.snapshotter.export import export_rdb

    if args.url:
        keys = export_rdb(args.output, store=_store(args.url, args))
    elif args.config:
        config = _load_config(args.config)
        etcd = _etcd_source(config)
        if etcd is None:
            keys = export_rdb(args.output, data_dir=config.data_dir)
        else:
            keys = export_rdb(args.output, data_dir=config.data_dir, store=_store(config.snapshot_url, args,
                                                                                   config.data_dir), etcd=etcd)
    else:
        keys = export_rdb(args.output, data_dir=args.data_dir)
    print(f"wrote {keys} keys to {args.output}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run a snapshot command; operator-facing failures become one line on
    stderr and exit status 1."""
    from durakv.log import LogError
    from durakv.snapshotter.errors import SnapshotterError
    from durakv.server.topology import TopologyMismatch

    from durakv.server.logsetup import setup_logging

    errors: tuple[type[BaseException], ...] = (SnapshotterError, LogError, TopologyMismatch, OSError, ConfigError)
    if args.command != "snapshotter":
        # The long-running snapshotter reads no RDB itself (its builds run in a forked
        # child, loads turn RdbError into SnapshotInvalid), so it does not import the
        # RDB codec and the engine behind it just to name these.
        from durakv.shards.rdb.codec import RdbError
        from durakv.snapshotter.rdb_import import RdbImportError

        errors += (RdbError, RdbImportError)

    setup_logging("info")  # botocore's "Found credentials ..." and urllib3's INFO lines stay out
    handlers = {
        "snapshotter": cmd_snapshotter, "snapshot": cmd_snapshot_now, "snapshots": cmd_snapshots_list,
        "restore": cmd_restore, "import-rdb": cmd_import_rdb, "export-rdb": cmd_export_rdb,
    }
    try:
        return handlers[args.command](args)
    except errors as e:
        return _fail(str(e))

