"""ACL and its subcommands, answered by the router or shard port itself over
server/acl.py's `Users`; a change is acknowledged once every process has it
and it is durable (SettingsSync.propagate_users)."""

from __future__ import annotations

import secrets
import time

from durakv.server.client import Client
from durakv.shards.acl import ACL_OK, DENIED_CMD, DENIED_KEY, category_commands
from durakv.shards.numbers import parse_ll
from durakv.shards.resp import OK, Map, ReplyError, Simple, fixed_error
from durakv.shards.table import (
    ACL_CATEGORY_ORDER, ROUTER, arity_error, command, container, find, subcommand_syntax_error,
)

GENPASS_DEFAULT_BITS = 256
GENPASS_MAX_BITS = 4096
ERR_NO_ACLFILE = fixed_error(
    b"ERR This Redis instance is not configured to use an ACL file. You may want to specify users via the ACL "
    b"SETUSER command and then issue a CONFIG REWRITE (assuming you have a Redis configuration file set) in "
    b"order to store users in the Redis configuration.")

container("acl", "server", where=ROUTER)


@command("acl|setuser", -3, "admin noscript loading stale", group="server", where=ROUTER)
def acl_setuser(client: Client, argv: list[bytes]):
    name = argv[2]
    if any(c in b" \x00" for c in name):
        raise ReplyError(b"ERR Usernames can't contain spaces or null characters")
    client.router.acl.setuser(name, argv[3:], client)
    return client.router.settings_sync.propagate_users(client, argv[1:], b"+OK\r\n")


@command("acl|deluser", -3, "admin noscript loading stale", group="server", where=ROUTER)
def acl_deluser(client: Client, argv: list[bytes]):
    deleted = client.router.acl.deluser(argv[2:], client)
    return client.router.settings_sync.propagate_users(client, argv[1:], b":%d\r\n" % deleted)


@command("acl|getuser", 3, "admin noscript loading stale", group="server", where=ROUTER)
def acl_getuser(client: Client, argv: list[bytes]):
    user = client.router.acl.users.get(argv[2])
    if user is None:
        return None
    root = user.root
    fields = [
        b"flags", user.flags(),
        b"passwords", [h.encode() for h in user.passwords],
        b"commands", root.describe_commands().encode(),
        b"keys", root.describe_keys().encode(),
        b"channels", root.describe_channels_list().encode(),
        b"selectors", [Map([b"commands", s.describe_commands().encode(), b"keys", s.describe_keys().encode(),
                            b"channels", s.describe_channels_list().encode()]) for s in user.selectors[1:]],
    ]
    return Map(fields)


@command("acl|list", 2, "admin noscript loading stale", group="server", where=ROUTER)
def acl_list(client: Client, argv: list[bytes]):
    users = client.router.acl.users
    return [b"user %s %s" % (name, users[name].describe().encode()) for name in sorted(users)]


@command("acl|users", 2, "admin noscript loading stale", group="server", where=ROUTER)
def acl_users(client: Client, argv: list[bytes]):
    return sorted(client.router.acl.users)


@command("acl|whoami", 2, "noscript loading stale", group="server", where=ROUTER)
def acl_whoami(client: Client, argv: list[bytes]):
    return client.user.name


@command("acl|cat", -2, "noscript loading stale", group="server", where=ROUTER)
def acl_cat(client: Client, argv: list[bytes]):
    if len(argv) > 3:
        raise subcommand_syntax_error(argv)
    if len(argv) == 2:
        return [c.encode() for c in ACL_CATEGORY_ORDER]
    category = argv[2].decode(errors="replace").lower()
    if category not in ACL_CATEGORY_ORDER:
        raise ReplyError(b"ERR Unknown category '%s'" % argv[2])
    return sorted(name.encode() for name in category_commands(category))


@command("acl|genpass", -2, "noscript loading stale", group="server", where=ROUTER)
def acl_genpass(client: Client, argv: list[bytes]):
    if len(argv) > 3:
        raise subcommand_syntax_error(argv)
    bits = GENPASS_DEFAULT_BITS
    if len(argv) == 3:
        value = parse_ll(argv[2])
        if value is None:
            raise ReplyError(b"ERR value is not an integer or out of range")
        if value <= 0 or value > GENPASS_MAX_BITS:
            raise ReplyError(b"ERR ACL GENPASS argument must be the number of bits for the output password, "
                             b"a positive number up to 4096")
        bits = value
    chars = (bits + 3) // 4
    return secrets.token_hex((chars + 1) // 2)[:chars].encode()


@command("acl|log", -2, "admin noscript loading stale", group="server", where=ROUTER)
def acl_log(client: Client, argv: list[bytes]):
    if len(argv) > 3:
        raise subcommand_syntax_error(argv)
    log = client.router.acl.log
    count = len(log.entries)
    if len(argv) == 3:
        if argv[2].lower() == b"reset":
            log.entries.clear()
            return OK
        value = parse_ll(argv[2])
        if value is None:
            raise ReplyError(b"ERR value is not an integer or out of range")
        count = max(min(value, count), 0)
    now_ms = time.time() * 1000
    return [Map(entry.reply(now_ms)) for entry in list(log.entries)[:count]]


@command("acl|dryrun", -4, "admin noscript loading stale", group="server", where=ROUTER)
def acl_dryrun(client: Client, argv: list[bytes]):
    user = client.router.acl.users.get(argv[2])
    if user is None:
        raise ReplyError(b"ERR User '%s' not found" % argv[2])
    target = argv[3:]
    cmd = find(target)
    if cmd is None:
        raise ReplyError(b"ERR Command '%s' not found" % target[0])
    if not cmd.arity_ok(len(target)):
        raise arity_error(cmd.fullname.encode())
    result, index = user.check(cmd, target)
    if result == ACL_OK:
        return OK
    if result == DENIED_CMD:
        return b"This user has no permissions to run the '%s' command" % cmd.fullname.encode()
    if result == DENIED_KEY:
        return b"This user has no permissions to access the '%s' key" % target[index]
    return b"This user has no permissions to access the '%s' channel" % target[index]


@command("acl|save", 2, "admin noscript loading stale", group="server", where=ROUTER)
def acl_save(client: Client, argv: list[bytes]):
    acl = client.router.acl
    if not acl.aclfile:
        raise ERR_NO_ACLFILE
    try:
        acl.write_file(acl.aclfile)
    except OSError as e:
        raise ReplyError(b"ERR There was an error trying to save the ACLs. Please check the server logs for "
                         b"more information") from e
    return OK


@command("acl|load", 2, "admin noscript loading stale", group="server", where=ROUTER)
def acl_load(client: Client, argv: list[bytes]):
    acl = client.router.acl
    if not acl.aclfile:
        raise ERR_NO_ACLFILE
    acl.load_aclfile(client)
    return client.router.settings_sync.propagate_users(client, [b"load"], b"+OK\r\n")


_ACL_HELP = [
    b"ACL <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    b"CAT [<category>]",
    b"    List all commands that belong to <category>, or all command categories",
    b"    when no category is specified.",
    b"DELUSER <username> [<username> ...]",
    b"    Delete a list of users.",
    b"DRYRUN <username> <command> [<arg> ...]",
    b"    Returns whether the user can execute the given command without executing the command.",
    b"GETUSER <username>",
    b"    Get the user's details.",
    b"GENPASS [<bits>]",
    b"    Generate a secure 256-bit user password. The optional `bits` argument can",
    b"    be used to specify a different size.",
    b"LIST",
    b"    Show users details in config file format.",
    b"LOAD",
    b"    Reload users from the ACL file.",
    b"LOG [<count> | RESET]",
    b"    Show the ACL log entries.",
    b"SAVE",
    b"    Save the current config to the ACL file.",
    b"SETUSER <username> <attribute> [<attribute> ...]",
    b"    Create or modify a user with the specified attributes.",
    b"USERS",
    b"    List all the registered usernames.",
    b"WHOAMI",
    b"    Return the current connection username.",
    b"HELP",
    b"    Prints this help.",
]


@command("acl|help", 2, "loading stale", group="server", where=ROUTER)
def acl_help(client: Client, argv: list[bytes]):
    return [Simple(line) for line in _ACL_HELP]
