"""Server commands the router answers (with help from the shards where the
answer depends on data): COMMAND, CONFIG, INFO, TIME, LASTSAVE, DEBUG, FUNCTION."""

from __future__ import annotations

import re
import time

from server import info as info_mod
from server.client import Client
from server.conn_commands import REDIS_VERSION
from server.links import Pending
from shards.args import ERR_SYNTAX
from shards.glob import glob_match
from shards.resp import OK, Map, ReplyError, SetReply, Simple, Verbatim, encode, encode_error
from shards.shard_settings import SHARD_DEFAULTS
from shards.slots import key_slot
from shards.table import ROUTER, TABLE, Command, command, container, lookup

# --- COMMAND --------------------------------------------------------------------

_GROUP_ACL = {
    "string": "@string", "keyspace": "@keyspace", "connection": "@connection", "server": "@admin",
    "list": "@list", "hash": "@hash", "set": "@set", "sorted_set": "@sortedset", "bitmap": "@bitmap",
    "hyperloglog": "@hyperloglog", "transactions": "@transaction", "scripting": "@scripting",
    "pubsub": "@pubsub", "stream": "@stream", "geo": "@geo", "cluster": "@admin",
}


def _acl_categories(cmd: Command) -> list[Simple]:
    cats = ["@write" if cmd.is_write else "@read"] if ("write" in cmd.flags or "readonly" in cmd.flags) else []
    group = _GROUP_ACL.get(cmd.group)
    if group:
        cats.append(group)
    cats.append("@fast" if "fast" in cmd.flags else "@slow")
    if cmd.is_blocking:
        cats.append("@blocking")
    return [Simple(c.encode()) for c in cats]


def _key_specs(cmd: Command) -> list:
    if cmd.first_key <= 0:
        return []
    last = cmd.last_key
    lastkey = last if last < 0 else last - cmd.first_key
    flags = [Simple(b"RW")] if cmd.is_write else [Simple(b"RO")]
    return [Map([
        b"flags", SetReply(flags),
        b"begin_search", Map([b"type", b"index", b"spec", Map([b"index", cmd.first_key])]),
        b"find_keys", Map([b"type", b"range", b"spec",
                           Map([b"lastkey", lastkey, b"keystep", cmd.key_step, b"limit", 0])]),
    ])]


def command_info(cmd: Command) -> list:
    flags = [Simple(f.encode()) for f in cmd.flags]
    if cmd.keys_fn is not None:
        flags.append(Simple(b"movablekeys"))
    return [
        cmd.fullname.encode(),
        cmd.arity,
        SetReply(flags),
        cmd.first_key,
        cmd.last_key,
        cmd.key_step,
        SetReply(_acl_categories(cmd)),
        [t.encode() for t in cmd.tips],
        _key_specs(cmd),
        [command_info(sub) for sub in cmd.subcommands.values()],
    ]


def _find(name: bytes) -> Command | None:
    parent, _, sub = name.lower().partition(b"|")
    cmd = TABLE.get(parent)
    if cmd is not None and sub:
        return cmd.subcommands.get(sub)
    return cmd


@command("command", -1, "loading stale", group="server", where=ROUTER)
def command_(client: Client, argv: list[bytes]):
    return [command_info(cmd) for cmd in TABLE.values()]


@command("command|count", 2, "loading stale", group="server", where=ROUTER)
def command_count(client: Client, argv: list[bytes]):
    return len(TABLE)


@command("command|info", -2, "loading stale", group="server", where=ROUTER)
def command_info_(client: Client, argv: list[bytes]):
    if len(argv) == 2:
        return [command_info(cmd) for cmd in TABLE.values()]
    out = []
    for name in argv[2:]:
        cmd = _find(name)
        out.append(command_info(cmd) if cmd is not None else None)
    return out


@command("command|docs", -2, "loading stale", group="server", where=ROUTER)
def command_docs(client: Client, argv: list[bytes]):
    cmds = list(TABLE.values()) if len(argv) == 2 else [c for c in map(_find, argv[2:]) if c is not None]
    items: list = []
    for cmd in cmds:
        doc = [b"summary", cmd.fullname.upper().encode(), b"since", b"1.0.0", b"group", cmd.group.encode()]
        if cmd.subcommands:
            subs: list = []
            for sub in cmd.subcommands.values():
                subs += [sub.fullname.encode(), Map([b"summary", sub.fullname.upper().encode(),
                                                     b"since", b"1.0.0", b"group", sub.group.encode()])]
            doc += [b"subcommands", Map(subs)]
        items += [cmd.fullname.encode(), Map(doc)]
    return Map(items)


@command("command|list", -2, "loading stale", group="server", where=ROUTER)
def command_list(client: Client, argv: list[bytes]):
    names = [cmd.fullname.encode() for cmd in TABLE.values()]
    if len(argv) == 2:
        return names
    if len(argv) != 5 or argv[2].upper() != b"FILTERBY":
        raise ERR_SYNTAX
    kind, value = argv[3].upper(), argv[4]
    if kind == b"PATTERN":
        return [n for n in names if glob_match(value.lower(), n)]
    if kind == b"ACLCAT":
        cat = b"@" + value.lower()
        return [c.fullname.encode() for c in TABLE.values() if any(s.text == cat for s in _acl_categories(c))]
    if kind == b"MODULE":
        return []
    raise ERR_SYNTAX


@command("command|getkeys", -4, "loading stale", group="server", where=ROUTER)
def command_getkeys(client: Client, argv: list[bytes]):
    target = argv[2:]
    if target[0].lower() not in TABLE:
        raise ReplyError(b"ERR Invalid command specified")
    try:
        cmd = lookup(target)
    except ReplyError:
        raise ReplyError(b"ERR Invalid number of arguments specified for command") from None
    indexes = cmd.key_indexes(target)
    if not indexes:
        raise ReplyError(b"ERR The command has no key arguments")
    return [target[i] for i in indexes]


@command("command|help", 2, "loading stale", group="server", where=ROUTER)
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


@command("config|set", -4, "admin noscript loading stale", group="server", where=ROUTER)
def config_set(client: Client, argv: list[bytes]):
    if len(argv) % 2 != 0:
        raise ReplyError(b"ERR wrong number of arguments for 'config|set' command")
    router = client.router
    changes = router.settings.validate([(argv[i], argv[i + 1]) for i in range(2, len(argv), 2)])
    router.settings.apply(changes)
    # Shards apply forwarded settings in link order, before any later command of
    # this client reaches them, so the reply need not wait for them.
    for name, value in changes:
        if name in SHARD_DEFAULTS:
            router.fanout_internal_quiet([b"\x00config", name.encode(), value.encode()])
    return OK


@command("config|resetstat", 2, "admin noscript loading stale", group="server", where=ROUTER)
def config_resetstat(client: Client, argv: list[bytes]):
    router = client.router
    router.stats_commands = 0
    router.stats_rejected = 0
    router.stats_connections = 0
    router.stats_rejected_connections = 0
    router.stats_protocol_errors = 0
    return router.fanout_internal(client, [b"\x00resetstat"], lambda values: b"+OK\r\n")


@command("config|rewrite", 2, "admin noscript loading stale", group="server", where=ROUTER)
def config_rewrite(client: Client, argv: list[bytes]):
    raise ReplyError(b"ERR The server is running without a config file")


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


@command("info", -1, "loading stale sentinel", group="server", where=ROUTER)
def info(client: Client, argv: list[bytes]):
    router = client.router
    sections = info_mod.wanted_sections(argv[1:])
    proto = client.proto

    def finish(values: list) -> bytes:
        return encode(Verbatim(info_mod.render(router, values, sections, REDIS_VERSION)), proto)

    return router.fanout_internal(client, [b"\x00info"], finish)


@command("time", 1, "loading stale fast", group="server", where=ROUTER)
def time_(client: Client, argv: list[bytes]):
    now_us = time.time_ns() // 1000
    return [b"%d" % (now_us // 1_000_000), b"%d" % (now_us % 1_000_000)]


@command("lastsave", 1, "loading stale fast", group="server", where=ROUTER)
def lastsave(client: Client, argv: list[bytes]):
    return int(client.router.started_at)


# --- DEBUG, FUNCTION --------------------------------------------------------------


_STRTOD_PREFIX = re.compile(rb"[ \t\n\v\f\r]*[+-]?(?:inf(?:inity)?|nan|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)",
                            re.IGNORECASE)


def strtod_prefix(text: bytes) -> float:
    """C strtod(text, NULL): the longest numeric prefix, 0 when there is none."""
    m = _STRTOD_PREFIX.match(text)
    if m is None:
        return 0.0
    try:
        return float(m.group(0))
    except ValueError:
        return 0.0


def subcommand_syntax_error(argv: list[bytes]) -> ReplyError:
    """Redis' addReplySubcommandSyntaxError."""
    return ReplyError(b"ERR unknown subcommand or wrong number of arguments for '%s'. Try %s HELP."
                      % (argv[1][:128], argv[0].upper()))


@command("debug", -2, "admin noscript loading stale", group="server", where=ROUTER)
def debug(client: Client, argv: list[bytes]):
    """DEBUG SLEEP delays only this client's reply (Redis blocks the whole
    server); DEBUG OBJECT reports the encoding. Nothing else is supported."""
    sub = argv[1].lower()
    if sub == b"sleep" and len(argv) == 3:
        seconds = strtod_prefix(argv[2])
        slot = Pending(client)
        client.replies.append(slot)
        client.router.after(seconds if seconds > 0 else 0.0, lambda: slot.fill(b"+OK\r\n"))
        return slot
    if sub == b"object" and len(argv) == 3:
        router = client.router
        link = router.links[router.slot_owner[key_slot(argv[2])]]
        wrapper = Pending(client)
        client.replies.append(wrapper)

        def on_encoding(_slot, data: bytes) -> None:
            if data[:1] == b"-":
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


container("function", "scripting", where=ROUTER)


@command("function|flush", -2, "write noscript", group="scripting", where=ROUTER)
def function_flush(client: Client, argv: list[bytes]):
    """Accepted (there are no functions yet), with Redis' argument checks."""
    if len(argv) > 3:
        raise subcommand_syntax_error(argv)
    if len(argv) == 3 and argv[2].upper() not in (b"ASYNC", b"SYNC"):
        raise ReplyError(b"ERR FUNCTION FLUSH only supports SYNC|ASYNC option")
    return OK
