"""The one command table: the only home of facts about commands.

Like Redis' command table (its command JSON files), each entry declares name, arity,
flags, key positions, group, tips, ACL categories and key specs, and durakv adds
where it runs, how the router splits or merges it across shards, what MULTI does
with it, and whether it reads keys its key positions do not name. This structure
drives routing, the shard's read hazards, transactions, argument-count errors and
the COMMAND replies; nothing elsewhere lists commands by name. Entries are declared
next to their implementations with the `command` decorator; shard modules register
the commands a shard executes, `server/` registers the ones the router answers
itself. `lookup` is the one resolver (router, shard, replay), with Redis' errors.
Per-command tests on the hot path are attributes computed at declaration.
"""

from __future__ import annotations

import random
from typing import Callable, Mapping, NamedTuple

from durakv.shards.numbers import parse_ll
from durakv.shards.resp import ReplyError, encode

# Where a command runs.
SHARD = 0  # routed by its keys to the owning shard (keyless: shard 0)
ROUTER = 1  # answered by the router itself (connection state, cluster view)
FANOUT = 2  # sent to every shard, replies merged by the router (DBSIZE, KEYS)
CURSOR = 3  # routed by the slot encoded in its cursor argument (SCAN)

# How the router treats a keyed command whose keys fall on several shards.
SPLIT_NONE = 0  # CROSSSLOT
SPLIT_SUM = 1  # DEL, UNLINK, EXISTS, TOUCH: integer replies summed
SPLIT_MGET = 2  # MGET: per-key replies merged back in order


# What a transaction does with a command issued after MULTI (Redis' processCommand).
MULTI_QUEUE = 0  # queued, runs at EXEC
MULTI_RUN_NOW = 1  # runs at once even inside MULTI (EXEC, DISCARD, MULTI, WATCH, QUIT, RESET)
MULTI_REFUSED = 2  # "Command not allowed inside a transaction": a router command whose
#                    reply depends on the shards and would arrive after EXEC's

# Redis' ACL categories in the order its replies list them (ACLCommandCategories).
ACL_CATEGORY_ORDER = (
    "keyspace", "read", "write", "set", "sortedset", "list", "hash", "string", "bitmap", "hyperloglog",
    "geo", "stream", "pubsub", "admin", "fast", "slow", "blocking", "dangerous", "connection",
    "transaction", "scripting",
)
# The category a command's group implies unless it declares its own (`acl=`).
# Redis' server and cluster groups imply none.
_GROUP_ACL = {
    "string": "string", "keyspace": "keyspace", "generic": "keyspace", "connection": "connection",
    "list": "list", "hash": "hash", "set": "set", "sorted_set": "sortedset", "bitmap": "bitmap",
    "hyperloglog": "hyperloglog", "transactions": "transaction", "scripting": "scripting",
    "stream": "stream", "geo": "geo",
}
# Redis' documentation group names for the table's groups (COMMAND DOCS).
_DOC_GROUPS = {"keyspace": "generic", "sorted_set": "sorted-set"}
# Flags that exist in the table but that COMMAND does not report (Redis hides
# may_replicate and the sentinel flags; movablekeys is derived from keys_fn).
_UNREPORTED_FLAGS = frozenset({"sentinel", "only_sentinel", "movablekeys", "may_replicate"})
# The order COMMAND lists flags in, whatever the declaration's order (Redis'
# addReplyFlagsForCommand walks its flag bits in this order).
FLAG_REPLY_ORDER = (
    "write", "readonly", "denyoom", "module", "admin", "pubsub", "noscript", "blocking", "loading",
    "stale", "skip_monitor", "skip_slowlog", "asking", "fast", "no_auth", "no_mandatory_keys",
    "no_async_loading", "no_multi", "movablekeys", "allow_busy",
)


class KeySpec(NamedTuple):
    """One of Redis' key specifications. begin_search: the index `begin`, or, with
    `keyword`, the first argument equal to it searching from `begin` (startfrom;
    negative: from the end, backwards). find_keys: a range, through `lastkey`
    (relative to the first key; negative: from the end of argv) in steps of
    `keystep`, at most `limit` (0: no limit); or, with `keynumidx`, keynum: the
    key count at keynumidx, the first key at `firstkey`, both relative to the
    begin_search position, in steps of `keystep`."""

    flags: str
    begin: int
    lastkey: int
    keystep: int
    notes: str | None = None
    keyword: str | None = None
    keynumidx: int | None = None
    firstkey: int = 1
    limit: int = 0


def keynum_spec(flags: str, begin: int, keynumidx: int = 0, firstkey: int = 1, keystep: int = 1,
                notes: str | None = None) -> KeySpec:
    """A key spec whose keys follow a numkeys argument (ZUNIONSTORE, EVAL)."""
    return KeySpec(flags, begin, 0, keystep, notes=notes, keynumidx=keynumidx, firstkey=firstkey)


def unknown_spec(flags: str, notes: str) -> KeySpec:
    """Redis' "unknown" key spec (begin 0): only the command itself knows where
    these keys are (SORT's BY/GET patterns and STORE)."""
    return KeySpec(flags, 0, 0, 0, notes=notes)


def keys_from_specs(specs: tuple[KeySpec, ...], argv: list[bytes]) -> list[tuple[int, str]] | None:
    """Every key the specs find, in spec order, with its spec's flags (Redis'
    getKeysUsingKeySpecs, which COMMAND GETKEYS[ANDFLAGS] prefer); None when a
    spec is unknown or does not fit argv (Redis falls back to the command's own
    key finder then)."""
    out: list[tuple[int, str]] = []
    for spec in specs:
        indexes = spec_key_indexes(spec, argv)
        if indexes is None:
            return None
        out += [(i, spec.flags) for i in indexes]
    return out


def spec_key_indexes(spec: KeySpec, argv: list[bytes]) -> list[int] | None:
    """The argv positions one key spec finds: none when its keyword is absent,
    None for an unknown spec or one argv does not fit (a bad count, out of range)."""
    argc = len(argv)
    if spec.begin == 0:
        return None
    if spec.keyword is None:
        first = spec.begin
    else:
        keyword = spec.keyword.encode().lower()
        # As Redis' getKeysUsingKeySpecs: the last argument (searching forward) and
        # argv[1] (backward) are never the keyword, which must have keys after it.
        start, stop, step = ((spec.begin, argc - 1, 1) if spec.begin > 0 else (argc + spec.begin, 1, -1))
        found = [i for i in range(start, stop, step) if argv[i].lower() == keyword]
        if not found:
            return []
        first = found[0] + 1
    if spec.keynumidx is not None:
        at = first + spec.keynumidx
        numkeys = parse_ll(argv[at]) if at < argc else None
        if numkeys is None or numkeys < 0:
            return None
        first = first + spec.firstkey
        last = first + numkeys - 1  # as Redis: the count, not the keystep, sets the end
    elif spec.lastkey >= 0:
        last = first + spec.lastkey
    elif spec.limit == 0:
        last = argc + spec.lastkey
    else:
        last = first + ((argc - first) // spec.limit + spec.lastkey)
    if first >= argc or last >= argc or last < first:
        return None
    return list(range(first, last + 1, spec.keystep))


def keys_and_flags(cmd: Command, target: list[bytes]) -> list[tuple[int, str]]:
    """As Redis' getKeysFromCommandWithSpecs: the key specs when they fit argv and
    have fixed flags, else the command's own key finder (its routing keys)."""
    specs = cmd.key_specs
    if specs and not any("variable_flags" in s.flags for s in specs):
        found = keys_from_specs(specs, target)
        if found is not None:
            return found
        if any(s.keynumidx is not None for s in specs):
            return []  # Redis' numkeys key finders find nothing when the count does not fit
    try:
        indexes = cmd.key_indexes(target)
    except ReplyError:
        indexes = []
    return [(i, flags_at(cmd, target, i)) for i in indexes]


def flags_at(cmd: Command, target: list[bytes], i: int) -> str:
    """The flags of the index/range spec covering position i; else of the last unknown
    spec (the keys the command finds itself, SORT's STORE) or the first spec; variable
    flags resolved by the command's key_flags_fn."""
    specs = cmd.key_specs
    ranges = [s for s in specs if s.begin > 0 and s.keyword is None and s.keynumidx is None]
    unknown = [s for s in specs if s.begin == 0]
    spec = next((s for s in ranges if s.begin <= i and (s.lastkey < 0 or i <= s.begin + s.lastkey)),
                unknown[-1] if unknown else specs[0] if specs else None)
    flags = spec.flags if spec is not None else ""
    if "variable_flags" in flags:
        flags = (cmd.key_flags_fn(target) if cmd.key_flags_fn is not None
                 else flags.replace("variable_flags", "").strip())
    return flags

# How the router merges the replies of a command sent to every shard (where=FANOUT):
# merge(parts, proto) -> the client's reply bytes, `parts` being each shard's value.
def merge_sum(parts: list, proto: int) -> bytes:
    return b":%d\r\n" % sum(parts)


def merge_arrays(parts: list, proto: int) -> bytes:
    """Each part is a shard's reply already encoded as a RESP array (the same bytes
    in RESP2 and RESP3): one header for the sum of their counts, then their items
    as they are, so a KEYS over a million keys costs the router a copy, not a
    decode and an encode of every key."""
    count = 0
    bodies: list[memoryview] = []
    for part in parts:
        end = part.index(b"\r\n")
        assert part[:1] == b"*", "a merged part must be an encoded array"
        count += int(part[1:end])
        bodies.append(memoryview(part)[end + 2 :])
    return b"".join([b"*%d\r\n" % count, *bodies])  # one copy (a concatenation after the join was a second)


def merge_random(parts: list, proto: int) -> bytes:
    found = [p for p in parts if p is not None]
    return encode(random.choice(found) if found else None, proto)


def merge_ok(parts: list, proto: int) -> bytes:
    return b"+OK\r\n"


Merge = Callable[[list, int], bytes]
KeysFn = Callable[[list[bytes]], list[int]]


class Command:
    """One declared command or subcommand. Besides what is declared, it carries
    facts derived once at declaration (the `is_*`/`single_key`/`waits_for_all`
    flags, ACL categories, key specs), so dispatch reads attributes and never
    scans flags or names per command."""

    __slots__ = (
        "name", "arity", "flags", "first_key", "last_key", "key_step", "group",
        "handler", "where", "keys_fn", "split", "subcommands", "parent", "fullname",
        "is_write", "is_readonly", "is_blocking", "tips", "no_auth", "single_key", "routes_plain", "waits_for_all",
        "reads_undeclared_keys", "merge", "multi", "runs_in_multi", "refused_in_multi",
        "acl_categories", "key_specs", "key_flags_fn", "reported_flags", "doc_group",
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
        keys_fn: KeysFn | None,
        split: int,
        tips: tuple[str, ...] = (),
        handler: Callable | None = None,
        parent: Command | None = None,
        acl: str | None = None,
        key_specs: tuple[KeySpec, ...] | None = None,
        key_flags_fn: Callable[[list[bytes]], str] | None = None,
        reads_undeclared_keys: Callable[[list[bytes]], bool] | None = None,
        merge: Merge | None = None,
        multi: int = MULTI_QUEUE,
    ) -> None:
        self.name = name
        self.fullname = f"{parent.name}|{name}" if parent is not None else name
        self.parent = parent
        self.arity = arity
        self.flags = tuple(flags.split())
        self.first_key = first_key
        self.last_key = last_key
        self.key_step = key_step
        self.group = group
        self.where = where
        self.keys_fn = keys_fn
        self.split = split
        self.handler = handler
        self.subcommands: dict[bytes, Command] = {}
        self.tips = tips
        self.is_write = "write" in self.flags
        self.is_readonly = "readonly" in self.flags
        self.is_blocking = "blocking" in self.flags
        self.no_auth = "no_auth" in self.flags
        # The one key is argv[1]: routing and hazards need no key_indexes call.
        self.single_key = keys_fn is None and first_key == 1 and last_key == 1
        # Routed by its key and nothing else (no wait, no subcommand): a plain client's run of
        # these skips the rest of the router's dispatch (server/client.py `_dispatch_plain`).
        self.routes_plain = self.single_key and where == SHARD and not self.is_blocking and parent is None
        # Reads the whole keyspace (fanned out, or a cursor walk): waits for every pending write.
        self.waits_for_all = where == FANOUT or where == CURSOR
        # Given argv, whether it may read keys no key position names (SORT BY/GET
        # patterns), so its reply waits for every pending write too.
        self.reads_undeclared_keys = reads_undeclared_keys
        assert (merge is not None) == (where == FANOUT), f"{self.fullname}: merge is for FANOUT commands"
        self.merge = merge
        self.multi = multi
        self.runs_in_multi = multi == MULTI_RUN_NOW
        self.refused_in_multi = multi == MULTI_REFUSED
        self.key_specs = key_specs if key_specs is not None else self._range_key_specs()
        self.key_flags_fn = key_flags_fn
        self.acl_categories = self._acl_categories(acl)
        reported = {f for f in self.flags if f not in _UNREPORTED_FLAGS}
        if keys_fn is not None:
            reported.add("movablekeys")
        assert reported <= set(FLAG_REPLY_ORDER), f"{self.fullname}: unknown flag in {reported}"
        self.reported_flags = tuple(f for f in FLAG_REPLY_ORDER if f in reported)
        self.doc_group = _DOC_GROUPS.get(group, group)

    def _range_key_specs(self) -> tuple[KeySpec, ...]:
        """Commands that declare no key specs get one range spec from their key positions."""
        if self.first_key <= 0:
            return ()
        last = self.last_key
        lastkey = last if last < 0 else last - self.first_key
        flags = "RW update" if self.is_write else "RO access"
        return (KeySpec(flags, self.first_key, lastkey, self.key_step),)

    def _acl_categories(self, acl: str | None) -> tuple[str, ...]:
        """Redis' categories: implied by the flags (setImplicitACLCategories), and
        either declared (`acl`) or implied by the group; a bare container is only @slow."""
        flags = self.flags
        cats = set()
        if "write" in flags:
            cats.add("write")
        if "readonly" in flags and self.group != "scripting":
            cats.add("read")
        if "admin" in flags:
            cats |= {"admin", "dangerous"}
        if "pubsub" in flags:
            cats.add("pubsub")
        if "fast" in flags:
            cats.add("fast")
        if "blocking" in flags:
            cats.add("blocking")
        if self.handler is not None:
            if acl is not None:
                cats.update(acl.split())
            elif self.group in _GROUP_ACL:
                cats.add(_GROUP_ACL[self.group])
        if "fast" not in cats:
            cats.add("slow")
        assert cats <= set(ACL_CATEGORY_ORDER), f"{self.fullname}: unknown ACL category in {cats}"
        return tuple(c for c in ACL_CATEGORY_ORDER if c in cats)

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
# Every top-level command by its lower- and upper-case name, so `lookup` finds
# the usual spellings with one dict lookup and no allocation (and the router's
# plain-run dispatch with it: read it, never change it).
_BY_NAME: dict[bytes, Command] = {}
BY_NAME: Mapping[bytes, Command] = _BY_NAME


def _register(cmd: Command) -> None:
    key = cmd.name.encode()
    assert key not in TABLE, f"command {cmd.name} declared twice"
    TABLE[key] = cmd
    _BY_NAME[key] = _BY_NAME[key.upper()] = cmd


def command(
    name: str,
    arity: int,
    flags: str = "",
    keys: tuple[int, int, int] = (0, 0, 0),
    group: str = "generic",
    where: int = SHARD,
    keys_fn: KeysFn | None = None,
    split: int = SPLIT_NONE,
    tips: tuple[str, ...] = (),
    *,
    acl: str | None = None,
    key_specs: tuple[KeySpec, ...] | None = None,
    key_flags_fn: Callable[[list[bytes]], str] | None = None,
    reads_undeclared_keys: Callable[[list[bytes]], bool] | None = None,
    merge: Merge | None = None,
    multi: int = MULTI_QUEUE,
) -> Callable[[Callable], Callable]:
    """Declare a command (or `parent|sub` subcommand) and register its handler.

    Beyond Redis' arity/flags/key positions/group/tips: `where` it runs, `keys_fn`
    for movable keys, `split`/`merge` for how the router combines per-shard replies,
    `acl` (the ACL categories Redis declares, replacing the group's), `key_specs`
    (Redis' key specs when not the plain range; `key_flags_fn(argv)` resolves
    variable_flags), `reads_undeclared_keys(argv)` and `multi` (MULTI_*)."""

    def register(fn: Callable) -> Callable:
        parent_name, _, sub_name = name.partition("|")
        parent = TABLE[parent_name.encode()] if sub_name else None
        cmd = Command(sub_name or parent_name, arity, flags, *keys, group=group, where=where,
                      keys_fn=keys_fn, split=split, tips=tips, handler=fn, parent=parent, acl=acl,
                      key_specs=key_specs, key_flags_fn=key_flags_fn,
                      reads_undeclared_keys=reads_undeclared_keys, merge=merge, multi=multi)
        if parent is not None:
            assert sub_name.encode() not in parent.subcommands, name
            assert not parent.routes_plain, f"{parent.name}: a plain-routed command has no subcommands"
            parent.subcommands[sub_name.encode()] = cmd
        else:
            _register(cmd)
        return fn

    return register


def container(name: str, group: str, where: int = SHARD) -> None:
    """Declare a command that only exists through its subcommands (CONFIG, OBJECT)."""
    _register(Command(name, -2, "", 0, 0, 0, group=group, where=where, keys_fn=None, split=SPLIT_NONE))


def lookup(argv: list[bytes]) -> Command:
    """Resolve argv to its command or subcommand, checking arity, with Redis'
    error texts. The one resolver: the router's dispatch, the shard's execution,
    replay and COMMAND all go through it."""
    name = argv[0]
    cmd = _BY_NAME.get(name)
    if cmd is None:
        cmd = TABLE.get(name.lower())
        if cmd is None:
            raise ReplyError(unknown_command_message(argv))
    argc = len(argv)
    if cmd.subcommands:
        if argc == 1:
            if cmd.handler is not None:  # a container that also runs bare (COMMAND)
                return cmd
            raise arity_error(cmd.name.encode())
        sub = cmd.subcommands.get(argv[1].lower())
        if sub is None:
            raise ReplyError(
                b"ERR unknown subcommand '%s'. Try %s HELP."
                % (_clip(argv[1]), cmd.name.upper().encode())
            )
        cmd = sub
    arity = cmd.arity
    if argc != arity if arity >= 0 else argc < -arity:
        raise arity_error(cmd.fullname.encode())
    return cmd


def find(argv: list[bytes]) -> Command | None:
    """The command argv names, or None; no arity or error texts (COMMAND GETKEYS
    checks those itself, in Redis' order)."""
    cmd = TABLE.get(argv[0].lower())
    if cmd is not None and cmd.subcommands and len(argv) > 1:
        cmd = cmd.subcommands.get(argv[1].lower())
    return cmd


def find_fullname(name: bytes) -> Command | None:
    """The command or subcommand a `parent|sub` name (COMMAND INFO/DOCS) names, or None."""
    parent, _, sub = name.lower().partition(b"|")
    cmd = TABLE.get(parent)
    if cmd is not None and sub:
        return cmd.subcommands.get(sub)
    return cmd


def _clip(arg: bytes) -> bytes:
    return arg[:128]


def arity_error(name: bytes) -> ReplyError:
    """Redis' wrong-arity error; also for the arity rules a handler checks
    itself (HSET's field/value pairs, MSET's, LPOP's count)."""
    return ReplyError(b"ERR wrong number of arguments for '%s' command" % name)


def subcommand_syntax_error(argv: list[bytes]) -> ReplyError:
    """Redis' addReplySubcommandSyntaxError."""
    return ReplyError(b"ERR unknown subcommand or wrong number of arguments for '%s'. Try %s HELP."
                      % (argv[1][:128], argv[0].upper()))


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
