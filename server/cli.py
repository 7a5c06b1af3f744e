"""The `durakv` command line."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from durakv.server.listener import ClientListeners
from durakv.shards.config import DEFAULTS, Config, config_from_fd, load_config, shard_port, tls_shard_port
from durakv.shards.exit_codes import EXIT_OK, EXIT_PERMANENT, EXIT_USAGE

EXIT_IN_USE = 1  # the port or data dir is taken by another process
ETCD_CONFIG_HELP = ("the servers' TOML config file: with log-backend = \"etcd\" the shard logs are read from "
                    "etcd, else from its data-dir")


def _common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML config file")
    parser.add_argument("--config-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--bind", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default 6379)")
    parser.add_argument("--shards", type=int, help="shard processes (default: one per CPU core)")
    parser.add_argument("--routers", type=int, help="router processes sharing the port (default 1)")
    parser.add_argument("--replicas", type=int, help="replica processes per shard (default 0)")
    parser.add_argument("--data-dir", help=f"data directory (default {DEFAULTS.data_dir})")
    parser.add_argument("--requirepass-file", metavar="FILE",
                        help="read the default user's password from FILE's first line (-: stdin)")
    # Refused with a hint (_config): a password on argv shows in ps to every user.
    parser.add_argument("--requirepass", help=argparse.SUPPRESS)
    parser.add_argument("--snapshot-url", help="s3://BUCKET/PREFIX for snapshots and the log archive")
    parser.add_argument("--shard-port-base", type=int,
                        help="shard i serves cluster clients on this port + i (default: --port + 1)")
    parser.add_argument("--cluster-announce", choices=("shards", "router"),
                        help="CLUSTER SLOTS names the shards (default) or the router as the nodes")
    parser.add_argument("--node-id", help='this node\'s name, with log-backend = "etcd" on several machines')
    parser.add_argument("--advertise", metavar="HOST:PORT", help="where clients reach this node's router")
    parser.add_argument("--node-role", choices=("primary", "replica"),
                        help="replica: run only replicas, which take over a shard whose primary is gone")


def _config(args: argparse.Namespace) -> Config:
    if args.config_fd is not None:
        return config_from_fd(args.config_fd)
    if args.requirepass is not None:
        raise ValueError("--requirepass puts the password on the command line, where ps shows it to every "
                         "user; use --requirepass-file FILE (- reads stdin) or requirepass in the --config "
                         "file (mode 0600)")
    config = _load(args)
    from durakv.server.secret_sources import config_file_warning

    warning = config_file_warning(config)
    if warning:
        from durakv.server.logsetup import print_error

        print_error(f"durakv: {warning}")
    from durakv.server.settings import Settings

    Settings(config)  # ValueError for a bad [settings] entry, before anything starts
    return config


def _load(args: argparse.Namespace) -> Config:
    from durakv.server.secret_sources import read_password_file

    requirepass = read_password_file(args.requirepass_file) if args.requirepass_file else None
    return load_config(args.config, {
        "bind": args.bind, "port": args.port, "shards": args.shards, "routers": args.routers,
        "data_dir": args.data_dir, "requirepass": requirepass,
        "snapshot_url": args.snapshot_url, "shard_port_base": args.shard_port_base,
        "cluster_announce": args.cluster_announce, "replicas": args.replicas,
        "node_id": args.node_id, "advertise": args.advertise, "node_role": args.node_role,
    })


def _setup_logging(config: Config) -> str:
    """Logging as the config says (server/logsetup.py); a problem as one line ("" if none)."""
    from durakv.server.logsetup import setup_logging

    try:
        setup_logging(config.log_level, config.log_file)
    except OSError as e:
        return (f"cannot open log-file {config.log_file}: {e.strerror}; fix log-file (empty: log to stderr) "
                "or the file's permissions")
    return ""


async def _run_until_signal(main) -> None:
    import trio

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
    parser.add_argument("--version", action=_VersionAction, nargs=0, help="show program's version number and exit")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run routers and shards under a supervisor")
    _common_flags(serve)
    shard = sub.add_parser("shard", help="run one shard process (systemd units use this)")
    _common_flags(shard)
    shard.add_argument("--index", type=int, required=True)
    router = sub.add_parser("router", help="run one router process (systemd units use this)")
    _common_flags(router)
    router.add_argument("--index", type=int, default=0)
    router.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)
    router.add_argument("--tls-listen-fd", type=int, help=argparse.SUPPRESS)
    log_cmd = sub.add_parser("log", help="inspect shard logs without starting anything")
    log_sub = log_cmd.add_subparsers(dest="log_command", required=True)
    verify = log_sub.add_parser("verify", help="check every record of every shard log")
    verify.add_argument("--data-dir", default=DEFAULTS.data_dir)
    verify.add_argument("--config", help=ETCD_CONFIG_HELP)
    dump = log_sub.add_parser("dump", help="print log records (effects) for debugging")
    dump.add_argument("--data-dir", default=DEFAULTS.data_dir)
    dump.add_argument("--config", help=ETCD_CONFIG_HELP)
    dump.add_argument("--shard", type=int, default=0)
    dump.add_argument("--from-seq", type=int, default=1)
    dump.add_argument("--limit", type=int)
    truncate = log_sub.add_parser("truncate", help="repair a corrupt shard log: drop the damaged "
                                  "record and everything after it (dry run without --yes); on etcd "
                                  "(--config): drop the records a snapshot covers and every replica applied")
    truncate.add_argument("--data-dir", default=DEFAULTS.data_dir)
    truncate.add_argument("--config", help=ETCD_CONFIG_HELP)
    truncate.add_argument("--shard", type=int, required=True)
    truncate.add_argument("--yes", action="store_true", help="really drop them")
    from durakv.server import snapshot_cli

    snapshot_cli.add_parsers(sub)
    args = parser.parse_args(argv)
    if args.command in snapshot_cli.COMMANDS:
        return snapshot_cli.run(args)
    if args.command == "log":
        from durakv.server.logtool import dump_log, truncate_log, verify_logs

        if getattr(args, "config", None):
            return _log_tool_with_config(args)
        if args.log_command == "verify":
            return verify_logs(args.data_dir)
        if args.log_command == "truncate":
            return truncate_log(args.data_dir, args.shard, args.yes)
        return dump_log(args.data_dir, args.shard, args.from_seq, args.limit)

    try:
        config = _config(args)
    except (OSError, ValueError) as e:
        return _fail(f"bad configuration: {e}", EXIT_USAGE)
    if config.tls_port:
        from durakv.server.tls import TlsConfigError, build_context, config_values

        try:
            build_context(config_values(config))
        except TlsConfigError as e:
            return _fail(f"bad TLS configuration: {e}", EXIT_USAGE)
    from durakv.shards.link_tls import link_tls_problem

    problem = link_tls_problem(config)
    if problem:  # every shard's link port would fail on it, again at each restart
        return _fail(f"bad TLS configuration for links between nodes: {problem}", EXIT_USAGE)
    from durakv.server.listener import ListenError, open_listener

    listener = None
    shard_listeners: list[ClientListeners] = []
    replica_listeners: list[list[ClientListeners]] = []
    try:  # first: a port in use ends serve (or shard) before it creates anything
        if args.command == "serve":
            listener = _open_listeners(config, None)
            shard_listeners = [_open_listeners(config, i) for i in range(config.shards)]
            replica_listeners = [[_open_replica_listener(config, i, r) for r in range(config.replicas)]
                                 for i in range(config.shards)]
        elif args.command == "shard" and 0 <= args.index < config.shards:
            shard_listeners = [_open_listeners(config, args.index)]
    except ListenError as e:
        # `serve` exits as when its data dir is taken; a unit's router or shard with 2, which
        # its systemd unit does not restart (RestartPreventExitStatus).
        return _fail(str(e), EXIT_IN_USE if e.in_use and args.command == "serve" else EXIT_USAGE)
    problem = _startup_problem(args, config)
    if problem:
        return _fail(problem, EXIT_USAGE)
    problem = _setup_logging(config)
    if problem:
        return _fail(problem, EXIT_USAGE)
    if args.command == "serve":
        from durakv.shards.log_backend import etcd_problem

        problem = etcd_problem(config)
        if problem:
            return _fail(problem, 1)
    if args.parent_pid:
        from durakv.shards.lifeline import die_with_parent

        die_with_parent(args.parent_pid)

    from durakv.server.proctitle import set_title

    if args.command == "serve":
        from durakv.log import LockHeld
        from durakv.server.supervisor import Supervisor
        from durakv.server.topology import TopologyMismatch

        set_title("serve", f"{config.bind}:{config.port}", config.data_dir)
        assert listener is not None, "serve opened its listener first"
        try:
            return Supervisor(config, listener, shard_listeners, replica_listeners).run()
        except LockHeld as e:
            return _fail(f"{e}, or pass another --data-dir", EXIT_IN_USE)
        except TopologyMismatch as e:
            return _fail(str(e), EXIT_USAGE)
    if args.command == "shard":
        return shard_main(config, args.index, shard_listeners[0])
    if args.command == "router":
        set_title("router", args.index, f"{config.bind}:{config.port}", config.data_dir)
        from durakv.server.fdlimit import FdLimitTooLow
        from durakv.server.listener import listener_from_fd
        from durakv.server.router import run_router

        # Under the supervisor, the sockets it bound; started on its own, the ports it binds itself.
        own = args.parent_pid is None
        try:
            plain = (listener_from_fd(args.listen_fd) if args.listen_fd is not None
                     else open_listener(config.bind, config.port) if own and config.port else None)
            tls = (listener_from_fd(args.tls_listen_fd) if args.tls_listen_fd is not None
                   else open_listener(config.bind, config.tls_port, tls=True) if own and config.tls_port else None)
        except ListenError as e:
            return _fail(str(e), EXIT_USAGE)
        listener = ClientListeners(plain, tls)
        if not args.parent_pid:
            # Started on its own (the systemd unit): no supervisor cleared the previous run's CONFIG SETs.
            from durakv.server.acl import clear_runtime_users
            from durakv.server.runtime_changes import clear_runtime_changes

            clear_runtime_changes(config.data_dir)
            clear_runtime_users(config.data_dir, config.aclfile)
        fd_limit_too_low = False
        import trio

        try:
            trio.run(_run_until_signal, lambda: run_router(config, args.index, listener))
        except* FdLimitTooLow as group:
            cause: BaseException = group
            while isinstance(cause, BaseExceptionGroup):
                cause = cause.exceptions[0]
            logging.getLogger("durakv.router").critical("%s", cause)
            fd_limit_too_low = True
        return EXIT_PERMANENT if fd_limit_too_low else EXIT_OK
    return EXIT_USAGE


def _log_tool_with_config(args: argparse.Namespace) -> int:
    """`durakv log verify|dump|truncate --config FILE`: the logs the config names (on etcd with
    log-backend = "etcd", else in its data dir)."""
    from durakv.log.errors import LogError
    from durakv.server.etcd_logtool import dump_etcd_log, truncate_etcd_log, verify_etcd_logs
    from durakv.server.logtool import dump_log, render_record, truncate_log, verify_logs
    from durakv.shards.log_backend import uses_etcd

    try:
        config = load_config(args.config, {})
    except ValueError as e:
        return _fail(f"bad configuration: {e}", EXIT_USAGE)
    try:
        if args.log_command == "verify":
            return verify_etcd_logs(config) if uses_etcd(config) else verify_logs(config.data_dir)
        if args.log_command == "truncate":
            if uses_etcd(config):
                return truncate_etcd_log(config, args.shard, args.yes)
            return truncate_log(config.data_dir, args.shard, args.yes)
        if uses_etcd(config):
            return dump_etcd_log(config, args.shard, args.from_seq, args.limit, render_record)
        return dump_log(config.data_dir, args.shard, args.from_seq, args.limit)
    except LogError as e:  # etcd out of reach
        return _fail(str(e), 1)


class _VersionAction(argparse.Action):
    """--version, reading the package metadata only when asked: importlib.metadata and
    its scan of the installed distributions would otherwise cost every process that
    runs the CLI (the snapshotter, tests/test_process_memory.py) a few MB."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"durakv {_installed_version()}")
        parser.exit()


def _installed_version() -> str:
    """The version pip installed (package metadata): the one place it is stated is pyproject.toml."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("durakv")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _fail(message: str, code: int) -> int:
    """An operator's mistake: one line on stderr, a non-zero exit, no traceback."""
    from durakv.server.logsetup import print_error

    print_error(f"durakv: {message}")
    return code


def _startup_problem(args: argparse.Namespace, config: Config) -> str:
    """What stops serve/shard/router from starting, as one line with the fix ("" if nothing)."""
    from durakv.server.topology import TopologyMismatch, ensure_topology

    if args.command == "shard" and not 0 <= args.index < config.shards:
        return (f"shard --index {args.index} is out of range: with {config.shards} shards the index "
                f"is 0..{config.shards - 1}; fix --index or --shards")
    if args.command == "router" and not 0 <= args.index < config.routers:
        return (f"router --index {args.index} is out of range: with {config.routers} routers the "
                f"index is 0..{config.routers - 1}; fix --index or --routers")
    problem = data_dir_problem(config.data_dir) or aclfile_problem(config)
    if problem or args.command != "router":
        return problem  # serve checks the topology once it holds the data-dir lock, a shard in _run_shard
    try:
        ensure_topology(config.data_dir, config.shards)
    except TopologyMismatch as e:
        return str(e)
    return ""


def aclfile_problem(config: Config) -> str:
    """An aclfile that is configured but missing or unreadable stops the start, as in Redis."""
    if not config.aclfile:
        return ""
    import durakv.server.commands  # noqa: F401  (rules name commands: register them)
    import durakv.shards.commands  # noqa: F401
    from durakv.server.acl import Users, parse_users_file

    try:
        text = Users.read_file(config.aclfile)
        if text is None:
            raise ValueError("no such file")
        parse_users_file(text)
    except (OSError, ValueError) as e:
        return (f"aclfile {config.aclfile}: {e}; fix it (Redis' ACL file format: `user NAME RULES`, one a "
                "line) or unset aclfile")
    return ""


def data_dir_problem(data_dir: str) -> str:
    """Create the data dir if missing and prove it is a writable directory."""
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        return f"data dir {data_dir} is not a directory; pass --data-dir a directory path"
    try:
        os.makedirs(data_dir, exist_ok=True)
    except OSError as e:
        return f"cannot create data dir {data_dir}: {e.strerror}; create it or pass another --data-dir"
    probe = os.path.join(data_dir, f".write-test-{os.getpid()}")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as e:
        return (f"data dir {data_dir} is not writable ({e.strerror}); give uid {os.getuid()} write "
                "access to it or pass another --data-dir")
    return ""


def _open_listeners(config: Config, shard: int | None) -> ClientListeners:
    """The plain and TLS listening sockets of the router's port (shard None) or a
    shard's, each only if its port is configured."""
    from durakv.server.listener import open_listener

    if shard is None:
        plain_port, tls_port = config.port, config.tls_port
    else:
        plain_port, tls_port = shard_port(config, shard), tls_shard_port(config, shard)
    plain = open_listener(config.bind, plain_port, shard=shard) if plain_port else None
    tls = open_listener(config.bind, tls_port, shard=shard, tls=True) if tls_port else None
    return ClientListeners(plain, tls)


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    """The exceptions in a group, nested nursery groups opened up."""
    out: list[BaseException] = []
    for e in group.exceptions:
        out += _leaves(e) if isinstance(e, BaseExceptionGroup) else [e]
    return out


def _open_replica_listener(config: Config, shard: int, number: int) -> ClientListeners:
    """A replica's client port: plain, and TLS with a tls-port (as a shard's)."""
    from durakv.server.listener import open_listener
    from durakv.shards.config import replica_port, tls_replica_port

    port, tls_port = replica_port(config, shard, number), tls_replica_port(config, shard, number)
    return ClientListeners(open_listener(config.bind, port, shard=shard) if port else None,
                           open_listener(config.bind, tls_port, shard=shard, tls=True) if tls_port else None)


def shard_main(config: Config, index: int, listener: ClientListeners,
               replica: tuple[int, ClientListeners] | None = None) -> int:
    """Run one shard (`durakv shard`, or a child the supervisor forked), serving
    cluster clients on `listener` (its client port, bound by the caller). A permanent
    failure (corrupt log, snapshot cache that does not fit the log) is recorded in
    DIR/shard-NNN/FAILED for the router and ends the process with EXIT_PERMANENT, so
    it is reported rather than restarted in a loop."""
    from durakv.log import LeaseLost, LogCorrupt, LogError, LogLocked
    from durakv.log.errors import EtcdUnavailable
    from durakv.server.node import node_port
    from durakv.server.proctitle import set_title
    from durakv.shards import failure
    from durakv.shards.process import run_shard
    from durakv.snapshotter import shard_hooks

    from durakv.server.topology import TopologyMismatch, ensure_topology

    from durakv.server.secret_sources import export_s3_credentials
    import trio

    set_title("shard", index, config.data_dir)
    export_s3_credentials(config)  # a shard starts from the snapshot store's newest snapshot
    shard_log = logging.getLogger("durakv.shard")
    reasons: list[str] = []
    code = EXIT_OK
    try:
        ensure_topology(config.data_dir, config.shards)  # else it would serve another shard's slots
        if replica is None:
            trio.run(_run_until_signal, lambda: run_shard(config, index, shard_hooks, node_port(config, listener)))
        else:
            from durakv.shards.replica import run_replica

            number, replica_listener = replica
            set_title("replica", index, number, config.data_dir)
            primary_port = node_port(config, listener)

            async def promoted_port(shard, task_status=trio.TASK_STATUS_IGNORED) -> None:
                set_title("shard", index, config.data_dir)  # promoted: `ps` shows the shard's primary
                await primary_port(shard, task_status=task_status)

            trio.run(_run_until_signal, lambda: run_replica(config, index, number, shard_hooks,
                                                            node_port(config, replica_listener), promoted_port))
    except* LeaseLost as deposed:
        for lost in _leaves(deposed):  # another writer took the log: stop; a restart campaigns again
            shard_log.critical("shard %d stops: %s", index, lost)
        code = 1
    except* (LogLocked, EtcdUnavailable) as group:
        # Another process still holds the log, or the log on etcd is out of reach: worth a retry.
        for e in _leaves(group):
            shard_log.critical("shard %d cannot start: %s", index, e)
        code = 1
    except* LogCorrupt as group:
        reasons += [f"{e}; repair: restore from S3 (durakv restore) or drop the damaged record and "
                    f"everything after it with: durakv log truncate --data-dir {config.data_dir} "
                    f"--shard {index}" for e in group.exceptions]
    except* TopologyMismatch as group:
        for mismatch in group.exceptions:  # this process's flags are wrong, not the shard's data: no FAILED
            shard_log.critical("shard %d cannot start: %s", index, mismatch)
        code = EXIT_PERMANENT
    except* (LogError, shard_hooks.StartError) as group:
        reasons += [str(e) for e in group.exceptions]
    for reason in reasons:
        if replica is not None:   # the shard's primary may serve: the shard has not failed
            shard_log.critical("shard %d replica %d cannot start: %s", index, replica[0], reason)
        else:
            shard_log.critical("shard %d cannot start: %s", index, reason)
            failure.record(config.data_dir, index, reason)
        code = EXIT_PERMANENT
    return code

if __name__ == "__main__":
    sys.exit(main())
