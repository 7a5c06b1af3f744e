"""The one command table: name, arity, flags, key positions, and where it runs.

Like Redis' command table, this single structure drives routing (which args are
keys), argument-count errors, and the COMMAND replies. Entries are declared next
to their implementations with the `command` decorator; shard modules register the
commands a shard executes, `server/` registers the ones the router answers itself.
"""

from __future__ import annotations

from typing import Callable

from durakv.shards.numbers import parse_ll
from durakv.shards.resp import ReplyError

# Where a command runs.
SHARD = 0  # routed by its keys to the owning shard (keyless: shard 0)
ROUTER = 1  # answered by the router itself (connection state, cluster view)
FANOUT = 2  # sent to every shard, replies merged by the router (DBSIZE, KEYS)
CURSOR = 3  # routed by the slot encoded in its cursor argument (SCAN)

# How the router treats a keyed command whose keys fall on several shards.
SPLIT_NONE = 0  # CROSSSLOT
SPLIT_SUM = 1  # DEL, UNLINK, EXISTS, TOUCH: integer replies summed
SPLIT_MGET = 2  # MGET: per-key replies merged back in order


class Command:
    __slots__ = (
        "name", "arity", "flags", "first_key", "last_key", "key_step", "group",
        "handler", "where", "keys_fn", "split", "subcommands", "parent", "fullname",
        "is_write", "is_readonly", "is_blocking", "tips",
    )

    def __init__(
        self,
        name: str,
        arity: int,
        flags: str,
        first_key: int,
        last_key: int,
        key_step: int,
        group: str,
        where: int,
        keys_fn: Callable[[list[bytes]], list[int]] | None,
        split: int,
        tips: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.fullname = name
        self.arity = arity
        self.flags = tuple(flags.split())
        self.first_key = first_key
        self.last_key = last_key
        self.key_step = key_step
        self.group = group
        self.where = where
        self.keys_fn = keys_fn
        self.split = split
        self.handler: Callable | None = None
        self.subcommands: dict[bytes, Command] = {}
        self.parent: Command | None = None
        self.is_write = "write" in self.flags
        self.is_readonly = "readonly" in self.flags
        self.is_blocking = "blocking" in self.flags
        self.tips = tips

    def arity_ok(self, argc: int) -> bool:
        a = self.arity
        return argc == a if a >= 0 else argc >= -a

    def key_indexes(self, argv: list[bytes]) -> list[int]:
        """Positions of the keys in argv; raises ReplyError for malformed key counts."""
        if self.keys_fn is not None:
            return self.keys_fn(argv)
        first = self.first_key
        if first == 0:
            return []
        last = self.last_key
        if last < 0:
            last = len(argv) + last
        step = self.key_step
        if first == last:
            return [first]
        return list(range(first, last + 1, step))


TABLE: dict[bytes, Command] = {}


def command(
    name: str,
    arity: int,
    flags: str = "",
    keys: tuple[int, int, int] = (0, 0, 0),
    group: str = "generic",
    where: int = SHARD,
    keys_fn: Callable[[list[bytes]], list[int]] | None = None,
    split: int = SPLIT_NONE,
    tips: tuple[str, ...] = (),
) -> Callable[[Callable], Callable]:
    """Declare a command (or `parent|sub` subcommand) and register its handler."""

    def register(fn: Callable) -> Callable:
        parent_name, _, sub_name = name.partition("|")
        cmd = Command(sub_name or parent_name, arity, flags, *keys, group=group, where=where,
                      keys_fn=keys_fn, split=split, tips=tips)
        cmd.handler = fn
        if sub_name:
            parent = TABLE[parent_name.encode()]
            assert sub_name.encode() not in parent.subcommands, name
            cmd.parent = parent
            cmd.fullname = f"{parent_name}|{sub_name}"
            parent.subcommands[sub_name.encode()] = cmd
        else:
            assert parent_name.encode() not in TABLE, f"command {name} declared twice"
            TABLE[parent_name.encode()] = cmd
        return fn

    return register


def container(name: str, group: str, where: int = SHARD) -> None:
    """Declare a command that only exists through its subcommands (CONFIG, OBJECT)."""
    assert name.encode() not in TABLE, name
    TABLE[name.encode()] = Command(name, -2, "", 0, 0, 0, group=group, where=where, keys_fn=None,
                                   split=SPLIT_NONE)


def lookup(argv: list[bytes]) -> Command:
    """Resolve argv to its command or subcommand, checking arity as Redis does."""
    name = argv[0]
    cmd = TABLE.get(name)
    if cmd is None:
        cmd = TABLE.get(name.lower())
        if cmd is None:
            raise ReplyError(unknown_command_message(argv))
    if cmd.subcommands:
        if len(argv) == 1:
            if cmd.handler is not None:  # a container that also runs bare (COMMAND)
                return cmd
            raise ReplyError(b"ERR wrong number of arguments for '%s' command" % cmd.name.encode())
        sub = cmd.subcommands.get(argv[1].lower())
        if sub is None:
            raise ReplyError(
                b"ERR unknown subcommand '%s'. Try %s HELP."
                % (_clip(argv[1]), cmd.name.upper().encode())
            )
        cmd = sub
    if not cmd.arity_ok(len(argv)):
        raise ReplyError(b"ERR wrong number of arguments for '%s' command" % cmd.fullname.encode())
    return cmd


def _clip(arg: bytes) -> bytes:
    return arg[:128]


def unknown_command_message(argv: list[bytes]) -> bytes:
    args = b"".join(b"'%s' " % _clip(a) for a in argv[1:])
    return b"ERR unknown command '%s', with args beginning with: %s" % (_clip(argv[0]), args)


def numkeys_keys(numkeys_index: int, fixed: tuple[int, ...] = ()) -> Callable[[list[bytes]], list[int]]:
    """keys_fn for commands with a numkeys argument (ZUNIONSTORE, LMPOP, SINTERCARD).
    It never raises: a bad count routes by the fixed keys only, so the command
    itself answers with its own Redis error text, as Redis Cluster does."""

    def keys_fn(argv: list[bytes]) -> list[int]:
        numkeys = parse_ll(argv[numkeys_index]) if numkeys_index < len(argv) else None
        start = numkeys_index + 1
        if numkeys is None or numkeys < 1 or start + numkeys > len(argv):
            return list(fixed)
        return [*fixed, *range(start, start + numkeys)]

    return keys_fn
