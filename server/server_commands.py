"""Server commands the router answers (with help from the shards where the
answer depends on data): COMMAND, CONFIG, INFO, TIME, LASTSAVE, DEBUG, FUNCTION."""

from __future__ import annotations

import logging
import time

from durakv.server import info as info_mod
from durakv.server import replication
from durakv.server.client import Client
from durakv.server.config_rewrite import rewrite
from durakv.server.conn_commands import REDIS_VERSION
from durakv.server.fdlimit import adjust_open_files_limit
from durakv.server.links import Pending
from durakv.server.settings import set_failed
from durakv.server.tls import check_tls_changes
from durakv.shards.args import ERR_SYNTAX, int_arg
from durakv.shards.glob import glob_match
from durakv.shards.frames import VERB_DEBUG, VERB_INFO, VERB_RESETSTAT
from durakv.shards.internal import INFO_KEYSPACE, INFO_LATENCYSTATS
from durakv.shards.numbers import parse_ll, strtod
from durakv.shards.resp import OK, Map, ReplyError, SetReply, Simple, Verbatim, encode, encode_error
from durakv.shards.shard_settings import SHARD_PARAMS
from durakv.shards.slots import key_slot
from durakv.shards.table import (
    MULTI_REFUSED, ROUTER, TABLE, Command, KeySpec, command, container, find, find_fullname,
    keys_and_flags, subcommand_syntax_error,
)

logger = logging.getLogger("durakv.router")

# --- COMMAND --------------------------------------------------------------------


def _spec_flags(flags: str) -> SetReply:
    return SetReply([Simple(f.encode()) for f in flags.split()])


def _key_spec_reply(spec: KeySpec) -> Map:
    items = [] if spec.notes is None else [b"notes", spec.notes.encode()]
    if spec.begin == 0:
        unknown = Map([b"type", b"unknown", b"spec", Map([])])
        return Map(items + [b"flags", _spec_flags(spec.flags), b"begin_search", unknown, b"find_keys", unknown])
    if spec.keyword is None:
        begin = Map([b"type", b"index", b"spec", Map([b"index", spec.begin])])
    else:
        begin = Map([b"type", b"keyword", b"spec", Map([b"keyword", spec.keyword.encode(),
                                                         b"startfrom", spec.begin])])
    if spec.keynumidx is None:
        find_keys = Map([b"type", b"range", b"spec", Map([b"lastkey", spec.lastkey, b"keystep", spec.keystep,
                                                          b"limit", spec.limit])])
    else:
        find_keys = Map([b"type", b"keynum", b"spec", Map([b"keynumidx", spec.keynumidx,
                                                           b"firstkey", spec.firstkey,
                                                           b"keystep", spec.keystep])])
    items += [
        b"flags", _spec_flags(spec.flags),
        b"begin_search", begin,
        b"find_keys", find_keys,
    ]
    return Map(items)


def command_info(cmd: Command) -> list:
    return [
        cmd.fullname.encode(),
        cmd.arity,
        SetReply([Simple(f.encode()) for f in cmd.reported_flags]),
        cmd.first_key,
        cmd.last_key,
        cmd.key_step,
        SetReply([Simple(b"@" + c.encode()) for c in cmd.acl_categories]),
        SetReply([t.encode() for t in cmd.tips]),
        SetReply([_key_spec_reply(spec) for spec in cmd.key_specs]),
        # Redis answers an empty set when there are no subcommands, else an array.
        [command_info(sub) for sub in cmd.subcommands.values()] if cmd.subcommands else SetReply([]),
    ]


def _all_commands() -> list[Command]:
    """Every command and subcommand, parents first (COMMAND LIST's order)."""
    out = []
    for cmd in TABLE.values():
        out.append(cmd)
        out.extend(cmd.subcommands.values())
    return out


@command("command", -1, "loading stale", group="server", where=ROUTER,
         tips=("nondeterministic_output_order",),
         acl="connection")
def command_(client: Client, argv: list[bytes]):
    return [command_info(cmd) for cmd in TABLE.values()]


@command("command|count", 2, "loading stale", group="server", where=ROUTER,
         acl="connection")
def command_count(client: Client, argv: list[bytes]):
    return len(TABLE)


@command("command|info", -2, "loading stale", group="server", where=ROUTER,
         tips=("nondeterministic_output_order",),
         acl="connection")
def command_info_(client: Client, argv: list[bytes]):
    if len(argv) == 2:
        return [command_info(cmd) for cmd in TABLE.values()]
    out = []
    for name in argv[2:]:
        cmd = find_fullname(name)
        out.append(command_info(cmd) if cmd is not None else None)
    return out


def _docs(cmd: Command) -> Map:
    """Only what durakv knows for certain: the group and the subcommands (no
    invented summaries or versions)."""
    doc: list = [b"group", cmd.doc_group.encode()]
    if cmd.subcommands:
        subs: list = []
        for sub in cmd.subcommands.values():
            subs += [sub.fullname.encode(), _docs(sub)]
        doc += [b"subcommands", Map(subs)]
    return Map(doc)


@command("command|docs", -2, "loading stale", group="server", where=ROUTER,
         tips=("nondeterministic_output_order",),
         acl="connection")
def command_docs(client: Client, argv: list[bytes]):
    cmds = list(TABLE.values()) if len(argv) == 2 else [c for c in map(find_fullname, argv[2:]) if c is not None]
    items: list = []
    for cmd in cmds:
        items += [cmd.fullname.encode(), _docs(cmd)]
    return Map(items)


@command("command|list", -2, "loading stale", group="server", where=ROUTER,
         tips=("nondeterministic_output_order",),
         acl="connection")
def command_list(client: Client, argv: list[bytes]):
    """COMMAND LIST [FILTERBY MODULE|ACLCAT|PATTERN arg]... (the last filter wins)."""
    kind = value = None
    i = 2
    while i < len(argv):
        if argv[i].upper() != b"FILTERBY" or len(argv) - 1 - i != 2:
            raise ERR_SYNTAX
        kind = argv[i + 1].upper()
        if kind not in (b"MODULE", b"ACLCAT", b"PATTERN"):
            raise ERR_SYNTAX
        value = argv[i + 2]
        i += 3
    cmds = _all_commands()
    if kind == b"MODULE":
        return []
    if kind == b"ACLCAT":
        cat = value.decode(errors="replace").lower()
        cmds = [c for c in cmds if cat in c.acl_categories]
    elif kind == b"PATTERN":
        pattern = value.lower()
        cmds = [c for c in cmds if glob_match(pattern, c.fullname.encode())]
    return [c.fullname.encode() for c in cmds]


def _resolve_for_getkeys(target: list[bytes]) -> list[tuple[int, str]]:
    """Redis' getKeysSubcommandImpl checks, in its order; the keys' positions
    with the flags of the key spec that found each."""
    cmd = find(target)
    if cmd is None:
        raise ReplyError(b"ERR Invalid command specified")
    if cmd.first_key <= 0 and cmd.keys_fn is None:
        raise ReplyError(b"ERR The command has no key arguments")
    if not cmd.arity_ok(len(target)):
        raise ReplyError(b"ERR Invalid number of arguments specified for command")
    keys = keys_and_flags(cmd, target)
    if not keys and "no_mandatory_keys" not in cmd.flags:
        raise ReplyError(b"ERR Invalid arguments specified for command")
    return keys


@command("command|getkeys", -4, "loading stale", group="server", where=ROUTER,
         acl="connection")
def command_getkeys(client: Client, argv: list[bytes]):
    target = argv[2:]
    return [target[i] for i, _ in _resolve_for_getkeys(target)]


@command("command|getkeysandflags", -4, "loading stale", group="server", where=ROUTER,
         acl="connection")
def command_getkeysandflags(client: Client, argv: list[bytes]):
    """Each key with the flags of the key spec it was found by."""
    target = argv[2:]
    return [[target[i], SetReply([Simple(f.encode()) for f in flags.split() if f != "incomplete"])]
            for i, flags in _resolve_for_getkeys(target)]


@command("command|help", 2, "loading stale", group="server", where=ROUTER,
         acl="connection")
def command_help(client: Client, argv: list[bytes]):
    return [Simple(line) for line in (
        b"COMMAND <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        b"(no subcommand)", b"    Return details about all Redis commands.",
        b"COUNT", b"    Return the total number of commands in this Redis server.",
        b"LIST", b"    Return a list of all commands in this Redis server.",
        b"INFO [<command-name> ...]", b"    Return details about multiple Redis commands.",
        b"    If no command names are given, documentation details for all",
        b"    commands are returned.",
        b"DOCS [<command-name> ...]", b"    Return documentation details about multiple Redis commands.",
        b"    If no command names are given, documentation details for all",
        b"    commands are returned.",
        b"GETKEYS <full-command>", b"    Return the keys from a full Redis command.",
        b"GETKEYSANDFLAGS <full-command>", b"    Return the keys and the access flags from a full Redis command.",
        b"HELP", b"    Prints this help.",
    )]


# --- CONFIG -----------------------------------------------------------------------

container("config", "server", where=ROUTER)


@command("config|get", -3, "admin noscript loading stale", group="server", where=ROUTER)
def config_get(client: Client, argv: list[bytes]):
    return Map(client.router.settings.get(argv[2:]))


def check_maxclients(router, changes: list[tuple[str, str]]) -> None:
    """As Redis' updateMaxclients: a higher maxclients raises the descriptor limit
    first, or is refused (also for a value another node recorded, server/config_sync.py)."""
    for name, value in changes:
        if name == "maxclients" and int(value) > router.settings.maxclients:
            fits = adjust_open_files_limit(int(value), len(router.links))
            if fits < int(value):
                raise set_failed(b"maxclients", b"The operating system is not able to handle the specified "
                                               b"number of clients, try with %d" % fits)


@command("config|set", -4, "admin noscript loading stale", group="server", where=ROUTER,
         tips=("request_policy:all_nodes", "response_policy:all_succeeded"))
def config_set(client: Client, argv: list[bytes]):
    if len(argv) % 2 != 0:
        raise ERR_SYNTAX
    router = client.router
    changes = router.settings.validate([(argv[i], argv[i + 1]) for i in range(2, len(argv), 2)])
    check_maxclients(router, changes)
    check_tls_changes(router, changes)
    router.settings.apply(changes)
    # The reply waits until every router and shard has the change (server/settings_sync.py).
    shard_changes = [(name, value) for name, value in changes if name in SHARD_PARAMS]
    return router.settings_sync.propagate(client, changes, shard_changes)


@command("config|resetstat", 2, "admin noscript loading stale", group="server", where=ROUTER,
         multi=MULTI_REFUSED)
def config_resetstat(client: Client, argv: list[bytes]):
    router = client.router
    router.stats_commands = 0
    router.reply_stats.reset()
    router.latency.reset_histograms()
    router.stats_connections = 0
    router.stats_rejected_connections = 0
    router.stats_net_input_bytes = 0
    router.stats_net_output_bytes = 0
    router.stats_protocol_errors = 0
    return router.fanout_internal(client, [VERB_RESETSTAT], lambda values: b"+OK\r\n")


@command("config|rewrite", 2, "admin noscript loading stale", group="server", where=ROUTER)
def config_rewrite(client: Client, argv: list[bytes]):
    """The changes since startup into the --config TOML file (server/config_rewrite.py)."""
    rewrite(client.router.settings, client.router.config.config_file)
    return OK


@command("config|help", 2, "loading stale", group="server", where=ROUTER)
def config_help(client: Client, argv: list[bytes]):
    return [Simple(line) for line in (
        b"CONFIG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        b"GET <pattern>", b"    Return parameters matching the glob-like <pattern> and their values.",
        b"SET <directive> <value>", b"    Set the configuration <directive> to <value>.",
        b"RESETSTAT", b"    Reset statistics reported by the INFO command.",
        b"REWRITE", b"    Rewrite the configuration file.",
        b"HELP", b"    Prints this help.",
    )]


# --- INFO, TIME, LASTSAVE -------------------------------------------------------


@command("info", -1, "loading stale", group="server", where=ROUTER,
         tips=("nondeterministic_output", "request_policy:all_shards", "response_policy:special"),
         acl="dangerous", multi=MULTI_REFUSED)
def info(client: Client, argv: list[bytes]):
    router = client.router
    sections = info_mod.wanted_sections(argv[1:])
    proto = client.proto

    def finish(values: list) -> bytes:
        return encode(Verbatim(info_mod.render(router, values, sections, REDIS_VERSION)), proto)

    # Shards that are down are left out (INFO cluster says which and why), so INFO still answers.
    up = [link.index for link in router.links if link.up]
    # Key counts are a keyless read: asking for them makes each shard wait for its pending records.
    request = [VERB_INFO, INFO_KEYSPACE] if "keyspace" in sections else [VERB_INFO]
    if "latencystats" in sections:
        request.append(INFO_LATENCYSTATS)
    return router.fanout_internal(client, request, finish, shards=up)


@command("time", 1, "loading stale fast", group="server", where=ROUTER, tips=("nondeterministic_output",))
def time_(client: Client, argv: list[bytes]):
    now_us = time.time_ns() // 1000
    return [b"%d" % (now_us // 1_000_000), b"%d" % (now_us % 1_000_000)]


@command("lastsave", 1, "loading stale fast", group="server", where=ROUTER, tips=("nondeterministic_output",),
         acl="admin dangerous")
def lastsave(client: Client, argv: list[bytes]):
    """The newest published snapshot's time, or the start time before the first."""
    from durakv.server.snapshot_commands import newest_snapshot_time_s

    return newest_snapshot_time_s(client.router.config.data_dir) or int(client.router.started_at)


# --- LOLWUT, ROLE ------------------------------------------------------------------


@command("lolwut", -1, "readonly fast", group="server", where=ROUTER)
def lolwut(client: Client, argv: list[bytes]):
    """Redis 7.0's own LOLWUT: the version line. The art of VERSION 5 and 6 (drawn
    from random numbers) is not drawn; their version line is answered instead."""
    if len(argv) >= 3 and argv[1].lower() == b"version":
        int_arg(argv[2])
    return Verbatim(b"Redis ver. %s\n" % REDIS_VERSION)


@command("role", 1, "noscript loading stale fast sentinel", group="server", where=ROUTER,
         acl="admin dangerous")
def role(client: Client, argv: list[bytes]):
    """A router or a primary's node is a master (its replicas listed); a replica's node a slave."""
    return replication.role_reply(client.router, client.laddr)


# --- DEBUG, FUNCTION --------------------------------------------------------------


DEBUG_HELP = [
    b"DEBUG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    b"CHANGE-REPL-ID",
    b"    Accepted; durakv has no replication IDs.",
    b"ERROR <string>",
    b"    Return a Redis protocol error with <string> as message.",
    b"LOG <message>",
    b"    Write <message> to the server log.",
    b"OBJECT <key>",
    b"    Show low level info about `key` and associated value.",
    b"QUICKLIST-PACKED-THRESHOLD <size>",
    b"    Accepted; durakv's lists have no plain or packed nodes.",
    b"RELOAD [option ...]",
    b"    Pass every value through the RDB codec and back, as Redis saves and reloads.",
    b"SET-ACTIVE-EXPIRE <0|1>",
    b"    Setting it to 0 disables expiring keys in background when they are not",
    b"    accessed. Setting it to 1 reenables back the default.",
    b"SLEEP <seconds>",
    b"    Delay this client's reply for <seconds>. Decimals allowed.",
    b"HELP",
    b"    Prints this help.",
]


def _debug_ok(values: list) -> bytes:
    return b"+OK\r\n"


@command("debug", -2, "admin noscript loading stale", group="server", where=ROUTER,
         multi=MULTI_REFUSED)
def debug(client: Client, argv: list[bytes]):
    """The DEBUG subcommands that make sense for durakv (DEBUG_HELP). DEBUG SLEEP
    delays only this client's reply (Redis blocks the whole server); DEBUG OBJECT
    reports the encoding; RELOAD passes every value through the RDB codec on every
    shard; the replication and quicklist knobs are accepted and change nothing."""
    sub = argv[1].lower()
    router = client.router
    if sub == b"help" and len(argv) == 2:
        return [Simple(line) for line in DEBUG_HELP]
    if sub == b"reload":
        if any(opt.lower() not in (b"merge", b"noflush", b"nosave") for opt in argv[2:]):
            raise ReplyError(b"ERR DEBUG RELOAD only supports the MERGE, NOFLUSH and NOSAVE options.")
        return router.fanout_internal(client, [VERB_DEBUG, b"reload"], _debug_ok)
    if sub == b"set-active-expire" and len(argv) == 3:
        enabled = (parse_ll(argv[2].split(b".")[0]) or 0) != 0  # atoi
        return router.fanout_internal(client, [VERB_DEBUG, b"set-active-expire", b"1" if enabled else b"0"],
                                      _debug_ok)
    if sub == b"change-repl-id" and len(argv) == 2:
        return OK  # no replication IDs to change
    if sub == b"quicklist-packed-threshold" and len(argv) == 3:
        return OK  # durakv's lists have no plain/packed nodes to choose between
    if sub == b"log" and len(argv) == 3:
        logger.warning("DEBUG LOG: %s", argv[2].decode(errors="replace"))
        return OK
    if sub == b"error" and len(argv) == 3:
        raise ReplyError(argv[2])
    if sub == b"sleep" and len(argv) == 3:
        seconds, _ = strtod(argv[2])  # C strtod(text, NULL): the numeric prefix, 0 if none
        pending = Pending(client)
        client.replies.append(pending)
        client.router.after(seconds if seconds > 0 else 0.0, lambda: pending.fill(b"+OK\r\n"))
        return pending
    if sub == b"object" and len(argv) == 3:
        router = client.router
        link = router.links[router.slot_owner[key_slot(argv[2])]]
        wrapper = Pending(client)
        client.replies.append(wrapper)

        def on_encoding(_pending, data: bytes) -> None:
            if data[:1] == b"-":  # an error, or LOST: passed on as it is
                wrapper.fill(data)
            elif data.startswith(b"$-1") or data.startswith(b"_"):
                wrapper.fill(encode_error(b"ERR no such key"))
            else:
                encoding = data.split(b"\r\n")[1]
                wrapper.fill(b"+Value at:0x0 refcount:1 encoding:%s serializedlength:0 lru:0 "
                             b"lru_seconds_idle:0\r\n" % encoding)

        link.submit(client, client.proto, [b"OBJECT", b"ENCODING", argv[2]], Pending(client, on_encoding))
        return wrapper
    raise subcommand_syntax_error(argv)
