"""Server commands the router answers (with help from the shards where the
answer depends on data): COMMAND, CONFIG, INFO, TIME, LASTSAVE, DEBUG, FUNCTION."""

from __future__ import annotations

import time

from durakv.server import info as info_mod
from durakv.server.client import Client
from durakv.server.conn_commands import REDIS_VERSION
from durakv.server.fdlimit import adjust_open_files_limit
from durakv.server.links import Pending
from durakv.server.settings import set_failed
from durakv.shards.args import ERR_SYNTAX
from durakv.shards.glob import glob_match
from durakv.shards.numbers import strtod
from durakv.shards.resp import OK, Map, ReplyError, SetReply, Simple, Verbatim, encode, encode_error
from durakv.shards.shard_settings import SHARD_DEFAULTS
from durakv.shards.slots import key_slot
from durakv.shards.table import ROUTER, TABLE, Command, command, container

# --- COMMAND --------------------------------------------------------------------

# Redis' ACL categories in the order its replies list them (ACLCommandCategories).
ACL_CATEGORY_ORDER = (
    "keyspace", "read", "write", "set", "sortedset", "list", "hash", "string", "bitmap", "hyperloglog",
    "geo", "stream", "pubsub", "admin", "fast", "slow", "blocking", "dangerous", "connection",
    "transaction", "scripting",
)
# The category a command's group implies. Redis' server and cluster groups have none.
_GROUP_ACL = {
    "string": "string", "keyspace": "keyspace", "generic": "keyspace", "connection": "connection",
    "list": "list", "hash": "hash", "set": "set", "sorted_set": "sortedset", "bitmap": "bitmap",
    "hyperloglog": "hyperloglog", "transactions": "transaction", "scripting": "scripting",
    "stream": "stream", "geo": "geo",
}
# Categories Redis 7.0 declares beyond what the group and flags imply.
_EXTRA_ACL = {
    "command": ("connection",), "asking": ("connection",), "readonly": ("connection",),
    "readwrite": ("connection",), "info": ("dangerous",), "lastsave": ("admin", "dangerous"),
    "keys": ("dangerous",), "flushall": ("keyspace", "dangerous"), "flushdb": ("keyspace", "dangerous"),
    "dbsize": ("keyspace",), "sort": ("set", "sortedset", "list", "dangerous"),
    "sort_ro": ("set", "sortedset", "list", "dangerous"),
    "restore": ("dangerous",),
}
# Commands whose group in durakv's table implies a category Redis does not give them.
_NO_GROUP_ACL = frozenset({"sort", "sort_ro"})
# Flags that exist in the table but that COMMAND does not report.
_UNREPORTED_FLAGS = frozenset({"sentinel", "only_sentinel", "movablekeys"})

# Key specifications Redis 7.0 gives the commands whose keys are not a plain
# RO/RW range: fullname -> [(flags, begin index, lastkey, keystep, notes), ...].
_KEY_SPECS = {
    "get": [("RO access", 1, 0, 1, None)],
    "set": [("RW access update variable_flags", 1, 0, 1, "RW and ACCESS due to the optional `GET` argument")],
    "setnx": [("OW insert", 1, 0, 1, None)],
    "setex": [("OW update", 1, 0, 1, None)],
    "psetex": [("OW update", 1, 0, 1, None)],
    "getset": [("RW access update", 1, 0, 1, None)],
    "getdel": [("RW access delete", 1, 0, 1, None)],
    "getex": [("RW access update", 1, 0, 1, "RW and UPDATE because it changes the TTL")],
    "mget": [("RO access", 1, -1, 1, None)],
    "mset": [("OW update", 1, -1, 2, None)],
    "msetnx": [("OW insert", 1, -1, 2, None)],
    "append": [("RW insert", 1, 0, 1, None)],
    "strlen": [("RO", 1, 0, 1, None)],
    "incr": [("RW access update", 1, 0, 1, None)],
    "decr": [("RW access update", 1, 0, 1, None)],
    "incrby": [("RW access update", 1, 0, 1, None)],
    "decrby": [("RW access update", 1, 0, 1, None)],
    "incrbyfloat": [("RW access update", 1, 0, 1, None)],
    "getrange": [("RO access", 1, 0, 1, None)],
    "substr": [("RO access", 1, 0, 1, None)],
    "setrange": [("RW update", 1, 0, 1, None)],
    "lcs": [("RO access", 1, 1, 1, None)],
    "del": [("RM delete", 1, -1, 1, None)],
    "unlink": [("RM delete", 1, -1, 1, None)],
    "exists": [("RO", 1, -1, 1, None)],
    "touch": [("RO", 1, -1, 1, None)],
    "type": [("RO", 1, 0, 1, None)],
    "expire": [("RW update", 1, 0, 1, None)],
    "pexpire": [("RW update", 1, 0, 1, None)],
    "expireat": [("RW update", 1, 0, 1, None)],
    "pexpireat": [("RW update", 1, 0, 1, None)],
    "persist": [("RW update", 1, 0, 1, None)],
    "ttl": [("RO access", 1, 0, 1, None)],
    "pttl": [("RO access", 1, 0, 1, None)],
    "expiretime": [("RO access", 1, 0, 1, None)],
    "pexpiretime": [("RO access", 1, 0, 1, None)],
    "rename": [("RW access delete", 1, 0, 1, None), ("OW update", 2, 0, 1, None)],
    "renamenx": [("RW access delete", 1, 0, 1, None), ("OW insert", 2, 0, 1, None)],
    "copy": [("RO access", 1, 0, 1, None), ("OW update", 2, 0, 1, None)],
    "dump": [("RO access", 1, 0, 1, None)],
    "restore": [("OW update", 1, 0, 1, None)],
    "object|encoding": [("RO", 2, 0, 1, None)],
    "object|freq": [("RO", 2, 0, 1, None)],
    "object|idletime": [("RO", 2, 0, 1, None)],
    "object|refcount": [("RO", 2, 0, 1, None)],
}


def acl_categories(cmd: Command) -> list[str]:
    """Redis' categories: implied by the flags (setImplicitACLCategories), by the
    group, and the few it declares explicitly; a bare container is only @slow."""
    flags = cmd.flags
    cats = set()
    if "write" in flags:
        cats.add("write")
    if "readonly" in flags and cmd.group != "scripting":
        cats.add("read")
    if "admin" in flags:
        cats |= {"admin", "dangerous"}
    if "pubsub" in flags:
        cats.add("pubsub")
    if "fast" in flags:
        cats.add("fast")
    if "blocking" in flags:
        cats.add("blocking")
    if cmd.handler is not None:
        group = _GROUP_ACL.get(cmd.group)
        if group and cmd.fullname not in _NO_GROUP_ACL:
            cats.add(group)
        cats.update(_EXTRA_ACL.get((cmd.parent or cmd).name, ()))
    if "fast" not in cats:
        cats.add("slow")
    return [c for c in ACL_CATEGORY_ORDER if c in cats]


def key_specs(cmd: Command) -> list[tuple[str, int, int, int, str | None]]:
    """(flags, begin index, lastkey, keystep, notes) per key spec; commands without
    a known specification get one range spec from the table's key positions."""
    known = _KEY_SPECS.get(cmd.fullname)
    if known is not None:
        return known
    if cmd.first_key <= 0:
        return []
    last = cmd.last_key
    lastkey = last if last < 0 else last - cmd.first_key
    flags = "RW update" if cmd.is_write else "RO access"
    return [(flags, cmd.first_key, lastkey, cmd.key_step, None)]


def _key_spec_reply(spec: tuple) -> Map:
    flags, index, lastkey, keystep, notes = spec
    items = [] if notes is None else [b"notes", notes.encode()]
    items += [
        b"flags", SetReply([Simple(f.encode()) for f in flags.split()]),
        b"begin_search", Map([b"type", b"index", b"spec", Map([b"index", index])]),
        b"find_keys", Map([b"type", b"range", b"spec", Map([b"lastkey", lastkey, b"keystep", keystep,
                                                            b"limit", 0])]),
    ]
    return Map(items)


def command_info(cmd: Command) -> list:
    flags = [Simple(f.encode()) for f in cmd.flags if f not in _UNREPORTED_FLAGS]
    if cmd.keys_fn is not None:
        flags.append(Simple(b"movablekeys"))
    return [
        cmd.fullname.encode(),
        cmd.arity,
        SetReply(flags),
        cmd.first_key,
        cmd.last_key,
        cmd.key_step,
        SetReply([Simple(b"@" + c.encode()) for c in acl_categories(cmd)]),
        SetReply([t.encode() for t in cmd.tips]),
        SetReply([_key_spec_reply(spec) for spec in key_specs(cmd)]),
        # Redis answers an empty set when there are no subcommands, else an array.
        [command_info(sub) for sub in cmd.subcommands.values()] if cmd.subcommands else SetReply([]),
    ]


def _find(name: bytes) -> Command | None:
    parent, _, sub = name.lower().partition(b"|")
    cmd = TABLE.get(parent)
    if cmd is not None and sub:
        return cmd.subcommands.get(sub)
    return cmd


def _all_commands() -> list[Command]:
    """Every command and subcommand, parents first (COMMAND LIST's order)."""
    out = []
    for cmd in TABLE.values():
        out.append(cmd)
        out.extend(cmd.subcommands.values())
    return out


@command("command", -1, "loading stale", group="server", where=ROUTER,
         tips=("nondeterministic_output_order",))
def command_(client: Client, argv: list[bytes]):
    return [command_info(cmd) for cmd in TABLE.values()]


@command("command|count", 2, "loading stale", group="server", where=ROUTER)
def command_count(client: Client, argv: list[bytes]):
    return len(TABLE)


@command("command|info", -2, "loading stale", group="server", where=ROUTER,
         tips=("nondeterministic_output_order",))
def command_info_(client: Client, argv: list[bytes]):
    if len(argv) == 2:
        return [command_info(cmd) for cmd in TABLE.values()]
    out = []
    for name in argv[2:]:
        cmd = _find(name)
        out.append(command_info(cmd) if cmd is not None else None)
    return out


# Redis' documentation group names for the table's groups.
_DOC_GROUPS = {"keyspace": "generic", "sorted_set": "sorted-set"}


def _docs(cmd: Command) -> Map:
    """Only what durakv knows for certain: the group and the subcommands (no
    invented summaries or versions)."""
    doc: list = [b"group", _DOC_GROUPS.get(cmd.group, cmd.group).encode()]
    if cmd.subcommands:
        subs: list = []
        for sub in cmd.subcommands.values():
            subs += [sub.fullname.encode(), _docs(sub)]
        doc += [b"subcommands", Map(subs)]
    return Map(doc)


@command("command|docs", -2, "loading stale", group="server", where=ROUTER,
         tips=("nondeterministic_output_order",))
def command_docs(client: Client, argv: list[bytes]):
    cmds = list(TABLE.values()) if len(argv) == 2 else [c for c in map(_find, argv[2:]) if c is not None]
    items: list = []
    for cmd in cmds:
        items += [cmd.fullname.encode(), _docs(cmd)]
    return Map(items)


@command("command|list", -2, "loading stale", group="server", where=ROUTER,
         tips=("nondeterministic_output_order",))
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
        cmds = [c for c in cmds if cat in acl_categories(c)]
    elif kind == b"PATTERN":
        pattern = value.lower()
        cmds = [c for c in cmds if glob_match(pattern, c.fullname.encode())]
    return [c.fullname.encode() for c in cmds]


def _resolve_for_getkeys(target: list[bytes]) -> tuple[Command, list[int]]:
    """Redis' getKeysSubcommandImpl checks, in its order."""
    cmd = TABLE.get(target[0].lower())
    if cmd is not None and cmd.subcommands and len(target) > 1:
        cmd = cmd.subcommands.get(target[1].lower())
    if cmd is None:
        raise ReplyError(b"ERR Invalid command specified")
    if cmd.first_key <= 0 and cmd.keys_fn is None:
        raise ReplyError(b"ERR The command has no key arguments")
    if not cmd.arity_ok(len(target)):
        raise ReplyError(b"ERR Invalid number of arguments specified for command")
    try:
        indexes = cmd.key_indexes(target)
    except ReplyError:
        indexes = []
    if not indexes and "no_mandatory_keys" not in cmd.flags:
        raise ReplyError(b"ERR Invalid arguments specified for command")
    return cmd, indexes


@command("command|getkeys", -4, "loading stale", group="server", where=ROUTER)
def command_getkeys(client: Client, argv: list[bytes]):
    target = argv[2:]
    _, indexes = _resolve_for_getkeys(target)
    return [target[i] for i in indexes]


@command("command|getkeysandflags", -4, "loading stale", group="server", where=ROUTER)
def command_getkeysandflags(client: Client, argv: list[bytes]):
    """Each key with the flags of the key spec it was found by."""
    target = argv[2:]
    cmd, indexes = _resolve_for_getkeys(target)
    specs = key_specs(cmd)
    out = []
    for i in indexes:
        spec = next((s for s in specs if s[1] <= i and (s[2] < 0 or i <= s[1] + s[2])),
                    specs[0] if specs else ("", 0, 0, 1, None))
        flags = spec[0]
        if "variable_flags" in flags:
            flags = _resolve_variable_flags(cmd, target, flags)
        out.append([target[i], SetReply([Simple(f.encode()) for f in flags.split() if f != "incomplete"])])
    return out


def _resolve_variable_flags(cmd: Command, target: list[bytes], flags: str) -> str:
    """SET's key is only read (RW access) when GET is among its options."""
    if cmd.fullname == "set":
        return "RW access update" if any(a.upper() == b"GET" for a in target[3:]) else "OW update"
    return flags.replace("variable_flags", "").strip()


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


@command("config|set", -4, "admin noscript loading stale", group="server", where=ROUTER,
         tips=("request_policy:all_nodes", "response_policy:all_succeeded"))
def config_set(client: Client, argv: list[bytes]):
    if len(argv) % 2 != 0:
        raise ERR_SYNTAX
    router = client.router
    changes = router.settings.validate([(argv[i], argv[i + 1]) for i in range(2, len(argv), 2)])
    for name, value in changes:
        if name == "maxclients" and int(value) > router.settings.maxclients:
            # As Redis' updateMaxclients: raise the descriptor limit first, or refuse.
            fits = adjust_open_files_limit(int(value), len(router.links))
            if fits < int(value):
                raise set_failed(b"maxclients", b"The operating system is not able to handle the specified "
                                               b"number of clients, try with %d" % fits)
    router.settings.apply(changes)
    # The reply waits until every router and shard has the change (server/settings_sync.py).
    shard_changes = [(name, value) for name, value in changes if name in SHARD_DEFAULTS]
    return router.settings_sync.propagate(client, changes, shard_changes)


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


@command("info", -1, "loading stale", group="server", where=ROUTER,
         tips=("nondeterministic_output", "request_policy:all_shards", "response_policy:special"))
def info(client: Client, argv: list[bytes]):
    router = client.router
    sections = info_mod.wanted_sections(argv[1:])
    proto = client.proto

    def finish(values: list) -> bytes:
        return encode(Verbatim(info_mod.render(router, values, sections, REDIS_VERSION)), proto)

    # Shards that are down are left out (INFO cluster says which and why), so INFO still answers.
    up = [link.index for link in router.links if link.up]
    return router.fanout_internal(client, [b"\x00info"], finish, shards=up)


@command("time", 1, "loading stale fast", group="server", where=ROUTER, tips=("nondeterministic_output",))
def time_(client: Client, argv: list[bytes]):
    now_us = time.time_ns() // 1000
    return [b"%d" % (now_us // 1_000_000), b"%d" % (now_us % 1_000_000)]


@command("lastsave", 1, "loading stale fast", group="server", where=ROUTER, tips=("nondeterministic_output",))
def lastsave(client: Client, argv: list[bytes]):
    """The newest published snapshot's time, or the start time before the first."""
    from durakv.server.snapshot_commands import newest_snapshot_time_s

    return newest_snapshot_time_s(client.router.config.data_dir) or int(client.router.started_at)


# --- DEBUG, FUNCTION --------------------------------------------------------------


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
        seconds, _ = strtod(argv[2])  # C strtod(text, NULL): the numeric prefix, 0 if none
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


container("function", "scripting", where=ROUTER)


@command("function|flush", -2, "write noscript", group="scripting", where=ROUTER,
         tips=("request_policy:all_shards", "response_policy:all_succeeded"))
def function_flush(client: Client, argv: list[bytes]):
    """Accepted (there are no functions yet), with Redis' argument checks."""
    if len(argv) > 3:
        raise subcommand_syntax_error(argv)
    if len(argv) == 3 and argv[2].upper() not in (b"ASYNC", b"SYNC"):
        raise ReplyError(b"ERR FUNCTION FLUSH only supports SYNC|ASYNC option")
    return OK
