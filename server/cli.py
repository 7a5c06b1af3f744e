"""The `durakv` command line."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

import trio

from shards.config import Config, config_from_json, load_config
from shards.exit_codes import EXIT_PERMANENT


def _common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML config file")
    parser.add_argument("--config-json", help=argparse.SUPPRESS)
    parser.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--bind", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default 6379)")
    parser.add_argument("--shards", type=int, help="shard processes (default: one per CPU core)")
    parser.add_argument("--routers", type=int, help="router processes sharing the port (default 1)")
    parser.add_argument("--data-dir", help="data directory (default ./durakv-data)")
    parser.add_argument("--requirepass", help="password for the default user")
    parser.add_argument("--snapshot-url", help="s3://BUCKET/PREFIX for snapshots and the log archive")


def _config(args: argparse.Namespace) -> Config:
    if args.config_json:
        return config_from_json(args.config_json)
    return load_config(args.config, {
        "bind": args.bind, "port": args.port, "shards": args.shards, "routers": args.routers,
        "data_dir": args.data_dir, "requirepass": args.requirepass,
        "snapshot_url": args.snapshot_url,
    })


def _setup_logging(config: Config) -> None:
    logging.basicConfig(
        level=getattr(logging, config.log_level.upper(), logging.INFO),
        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s",
        stream=sys.stderr,
    )


async def _run_until_signal(main) -> None:
    async with trio.open_nursery() as nursery:
        async def stop_on_signal() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(stop_on_signal)
        await main()
        nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="durakv", description="Redis-compatible, log-durable database")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run routers and shards under a supervisor")
    _common_flags(serve)
    shard = sub.add_parser("shard", help="run one shard process (systemd units use this)")
    _common_flags(shard)
    shard.add_argument("--index", type=int, required=True)
    router = sub.add_parser("router", help="run one router process (systemd units use this)")
    _common_flags(router)
    router.add_argument("--index", type=int, default=0)
    log_cmd = sub.add_parser("log", help="inspect shard logs without starting anything")
    log_sub = log_cmd.add_subparsers(dest="log_command", required=True)
    verify = log_sub.add_parser("verify", help="check every record of every shard log")
    verify.add_argument("--data-dir", default="./durakv-data")
    dump = log_sub.add_parser("dump", help="print log records (effects) for debugging")
    dump.add_argument("--data-dir", default="./durakv-data")
    dump.add_argument("--shard", type=int, default=0)
    dump.add_argument("--from-seq", type=int, default=1)
    dump.add_argument("--limit", type=int)
    from server import snapshot_cli

    snapshot_cli.add_parsers(sub)
    args = parser.parse_args(argv)
    if args.command in snapshot_cli.COMMANDS:
        return snapshot_cli.run(args)
    if args.command == "log":
        from server.logtool import dump_log, verify_logs

        if args.log_command == "verify":
            return verify_logs(args.data_dir)
        return dump_log(args.data_dir, args.shard, args.from_seq, args.limit)

    try:
        config = _config(args)
    except (OSError, ValueError) as e:
        print(f"durakv: bad configuration: {e}", file=sys.stderr)
        return 2
    _setup_logging(config)
    if args.parent_pid:
        from server.supervisor import die_with_parent

        die_with_parent(args.parent_pid)

    if args.command == "serve":
        from server.supervisor import Supervisor
        from server.topology import TopologyMismatch

        try:
            return Supervisor(config).run()
        except TopologyMismatch as e:
            logging.getLogger("durakv").error("%s", e)
            return 2
    if args.command == "shard":
        from log import LogError
        from shards.server import run_shard
        from snapshotter import shard_hooks

        cannot_start = False
        try:
            trio.run(_run_until_signal, lambda: run_shard(config, args.index, shard_hooks))
        except* (LogError, shard_hooks.StartError) as group:
            for e in group.exceptions:
                logging.getLogger("durakv.shard").critical("shard %d cannot start: %s", args.index, e)
            cannot_start = True
        return 3 if cannot_start else 0
    if args.command == "router":
        from server.fdlimit import FdLimitTooLow
        from server.router import run_router

        fd_limit_too_low = False
        try:
            trio.run(_run_until_signal, lambda: run_router(config, args.index))
        except* FdLimitTooLow as group:
            problem = group
            while isinstance(problem, BaseExceptionGroup):
                problem = problem.exceptions[0]
            logging.getLogger("durakv.router").critical("%s", problem)
            fd_limit_too_low = True
        return EXIT_PERMANENT if fd_limit_too_low else 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
