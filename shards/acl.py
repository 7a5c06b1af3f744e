"""Redis 7.0's ACL users and rules, pure: parse and apply ACL SETUSER rules,
describe a user as ACL LIST and ACL GETUSER do, and check a command (its name,
first argument, keys and channels) against a user's selectors.

No I/O and no clock: the router and the shard port (server/acl_commands.py) keep
a `Users` registry and enforce it; a shard checks a script's redis.call against
the rules the router sends with it (`user_from_rules`). Command facts (categories,
key positions and key spec flags) come from the command table, so the categories
are those of the commands durakv has.
"""

from __future__ import annotations

import hashlib
import struct
from functools import lru_cache
from typing import Callable

import msgspec

from durakv.shards.glob import glob_match
from durakv.shards.numbers import parse_ll
from durakv.shards.table import ACL_CATEGORY_ORDER, TABLE, Command, keys_and_flags

# Redis' key pattern permissions (ACL_READ_PERMISSION, ACL_WRITE_PERMISSION).
PERM_READ = 1
PERM_WRITE = 2
PERM_ALL = PERM_READ | PERM_WRITE

# ACLCheckAllUserCommandPerm's results, in the order it prefers one to report.
ACL_OK = 0
DENIED_CMD = 1
DENIED_KEY = 2
DENIED_AUTH = 3
DENIED_CHANNEL = 4

PASSWORD_HASH_HEX_CHARS = 64
MAX_SCRIPT_DENIALS = 128  # per script run, reported to the router's ACL LOG
# Ahead of a script's reply when its redis.calls were denied: never a RESP type byte.
DENIALS_PREFIX = b"\x00acl"
DENIALS_LENGTH = struct.Struct(">I")
USER_RULES_CACHE_ENTRIES = 256
SPEC_FLAGS_CACHE_ENTRIES = 64
KEY_MATCHER_CACHE_ENTRIES = 1024

ERR_UNKNOWN_RULE = "Unknown command or category name in ACL"
ERR_SYNTAX = "Syntax error"
ERR_KEYS_AFTER_ALL = ("Adding a pattern after the * pattern (or the 'allkeys' flag) is not valid and does not "
                      "have any effect. Try 'resetkeys' to start with an empty list of patterns")
ERR_CHANNELS_AFTER_ALL = ("Adding a pattern after the * pattern (or the 'allchannels' flag) is not valid and does "
                          "not have any effect. Try 'resetchannels' to start with an empty list of channels")
ERR_NO_SUCH_PASSWORD = "The password you are trying to remove from the user does not exist"
ERR_BAD_HASH = ("The password hash must be exactly 64 characters and contain only lowercase hexadecimal "
                "characters")
ERR_SUBCOMMAND_FIRSTARG = "Allowing first-arg of a subcommand is not supported"

# The commands whose arguments are channels (Redis' getChannelsFromCommand):
# name -> (first channel index, is a pattern, is checked). Unsubscribing is never refused.
CHANNEL_COMMANDS = {
    "publish": (1, False, True), "spublish": (1, False, True),
    "subscribe": (1, False, True), "ssubscribe": (1, False, True), "psubscribe": (1, True, True),
}
# publish-style commands name one channel; the subscribe family name all their arguments.
_ONE_CHANNEL = frozenset({"publish", "spublish"})


class RuleError(ValueError):
    """A rule ACL SETUSER refuses; the message is Redis' (ACLSetUserStringError)."""


def password_hash(password: bytes) -> str:
    return hashlib.sha256(password).hexdigest()


def all_commands() -> list[Command]:
    """Every command and subcommand, parents before their subcommands."""
    out = []
    for cmd in TABLE.values():
        out.append(cmd)
        out.extend(cmd.subcommands.values())
    return out


@lru_cache(maxsize=len(ACL_CATEGORY_ORDER))
def category_commands(category: str) -> frozenset[str]:
    """The full names (`client|id`) of the commands in an ACL category."""
    return frozenset(c.fullname for c in all_commands() if category in c.acl_categories)


@lru_cache(maxsize=1)
def every_command() -> frozenset[str]:
    return frozenset(c.fullname for c in all_commands())


class Selector:
    """Redis' aclSelector: the commands allowed (full names), first arguments
    allowed for commands otherwise denied, key patterns with their permissions
    and channel patterns."""

    __slots__ = ("allowed", "firstargs", "future", "all_commands", "allkeys", "keys", "allchannels", "channels")

    def __init__(self, allchannels: bool = False) -> None:
        self.allowed: set[str] = set()
        self.firstargs: dict[str, list[bytes]] = {}
        self.future = False  # +@all: commands added later would be allowed (the description starts +@all)
        self.all_commands = False  # SELECTOR_FLAG_ALLCOMMANDS: the check skips the command bitmap
        self.allkeys = False
        self.keys: list[list] = []  # [pattern, permissions], in the order added
        self.allchannels = allchannels  # acl-pubsub-default allchannels
        self.channels: list[bytes] = []

    def copy(self) -> Selector:
        s = Selector()
        s.allowed = set(self.allowed)
        s.firstargs = {k: list(v) for k, v in self.firstargs.items()}
        s.future, s.all_commands = self.future, self.all_commands
        s.allkeys, s.keys = self.allkeys, [list(k) for k in self.keys]
        s.allchannels, s.channels = self.allchannels, list(self.channels)
        return s

    @property
    def unrestricted(self) -> bool:
        return self.all_commands and self.allkeys and self.allchannels

    # --- rules ---------------------------------------------------------------------

    def apply(self, rule: bytes) -> None:
        """One selector rule (ACLSetSelector); RuleError with Redis' message."""
        low = rule.lower()
        if low in (b"allkeys", b"~*"):
            self.allkeys = True
            self.keys = []
        elif low == b"resetkeys":
            self.allkeys = False
            self.keys = []
        elif low in (b"allchannels", b"&*"):
            self.allchannels = True
            self.channels = []
        elif low == b"resetchannels":
            self.allchannels = False
            self.channels = []
        elif low in (b"allcommands", b"+@all"):
            self.allowed = set(every_command())
            self.firstargs = {}
            self.future = self.all_commands = True
        elif low in (b"nocommands", b"-@all"):
            self.allowed = set()
            self.firstargs = {}
            self.future = self.all_commands = False
        elif rule[:1] == b"~" or rule[:1] == b"%":
            self._add_key_pattern(rule)
        elif rule[:1] == b"&":
            if self.allchannels:
                raise RuleError(ERR_CHANNELS_AFTER_ALL)
            if rule[1:] not in self.channels:
                self.channels.append(rule[1:])
        elif rule[:2] == b"+@" or rule[:2] == b"-@":
            category = rule[2:].decode(errors="replace").lower()
            if category not in ACL_CATEGORY_ORDER:
                raise RuleError(ERR_UNKNOWN_RULE)
            names = category_commands(category)
            if rule[:1] == b"+":
                self.allowed |= names
                for name in names:
                    self.firstargs.pop(name, None)
            else:
                self.allowed -= names
                self.all_commands = False
        elif rule[:1] == b"+" or rule[:1] == b"-":
            self._command_rule(rule[:1] == b"+", rule[1:])
        else:
            raise RuleError(ERR_SYNTAX)

    def _add_key_pattern(self, rule: bytes) -> None:
        if rule[:1] == b"~":
            perms, pattern = PERM_ALL, rule[1:]
        else:
            perms = 0
            at = 1
            while at < len(rule):
                ch = rule[at:at + 1].upper()
                if ch == b"R" and not perms & PERM_READ:
                    perms |= PERM_READ
                elif ch == b"W" and not perms & PERM_WRITE:
                    perms |= PERM_WRITE
                elif ch == b"~":
                    at += 1
                    break
                else:
                    raise RuleError(ERR_SYNTAX)
                at += 1
            else:
                raise RuleError(ERR_SYNTAX)
            if not perms:
                raise RuleError(ERR_SYNTAX)
            pattern = rule[at:]
        if self.allkeys:
            raise RuleError(ERR_KEYS_AFTER_ALL)
        for entry in self.keys:
            if entry[0] == pattern:
                entry[1] |= perms
                return
        self.keys.append([pattern, perms])

    def _command_rule(self, allow: bool, spec: bytes) -> None:
        """+cmd, -cmd, +cmd|sub, -cmd|sub, and +cmd|firstarg for a command without
        subcommands (ACLSetSelector: the last `|` splits off the first argument)."""
        spec = spec.lower()
        if not allow or b"|" not in spec:
            cmd = command_by_fullname(spec)
            if cmd is None:
                raise RuleError(ERR_UNKNOWN_RULE)
            self._set(cmd, allow)
            return
        head, _, first_arg = spec.rpartition(b"|")
        cmd = command_by_fullname(head)
        if cmd is None:
            raise RuleError(ERR_UNKNOWN_RULE)
        if cmd.parent is not None:
            raise RuleError(ERR_SUBCOMMAND_FIRSTARG)
        if not first_arg:
            raise RuleError(ERR_SYNTAX)
        if cmd.subcommands:
            sub = command_by_fullname(spec)
            if sub is None:
                raise RuleError(ERR_UNKNOWN_RULE)
            self._set(sub, True)
            return
        allowed = self.firstargs.setdefault(cmd.fullname, [])
        if first_arg not in allowed:
            allowed.append(first_arg)

    def _set(self, cmd: Command, allow: bool) -> None:
        names = [cmd.fullname, *(s.fullname for s in cmd.subcommands.values())]
        for name in names:
            self.firstargs.pop(name, None)
        if allow:
            self.allowed.update(names)
        else:
            self.allowed.difference_update(names)
            self.all_commands = False

    # --- checks --------------------------------------------------------------------

    def check(self, cmd: Command, argv: list[bytes]) -> tuple[int, int]:
        """(ACL_OK or DENIED_*, the argv index of the refused key or channel)."""
        if not self.all_commands and not cmd.no_auth and cmd.fullname not in self.allowed:
            allowed = self.firstargs.get(cmd.fullname)
            at = 2 if cmd.parent is not None else 1
            if allowed is None or len(argv) <= at or argv[at].lower() not in allowed:
                return DENIED_CMD, 0
        if not self.allkeys and (cmd.first_key > 0 or cmd.keys_fn is not None):
            flags = one_key_flags(cmd)
            if flags is not None:  # the usual case: argv[1], one key spec
                if "variable_flags" in flags and cmd.key_flags_fn is not None:
                    flags = cmd.key_flags_fn(argv)
                if "not_key" not in flags and not self.key_allowed(argv[1], spec_permissions(flags)):
                    return DENIED_KEY, 1
            else:
                for i, flags in keys_and_flags(cmd, argv):
                    if "not_key" in flags:  # a shard channel (SPUBLISH): checked as a channel
                        continue
                    if not self.key_allowed(argv[i], spec_permissions(flags)):
                        return DENIED_KEY, i
        if not self.allchannels:
            channels = CHANNEL_COMMANDS.get(cmd.fullname)
            if channels is not None:
                first, is_pattern, _ = channels
                last = first + 1 if cmd.fullname in _ONE_CHANNEL else len(argv)
                for i in range(first, min(last, len(argv))):
                    if not self.channel_allowed(argv[i], is_pattern):
                        return DENIED_CHANNEL, i
        return ACL_OK, 0

    def key_allowed(self, key: bytes, perms: int) -> bool:
        if self.allkeys:
            return True
        for pattern, allowed in self.keys:
            if allowed & perms == perms and key_matcher(pattern)(key):
                return True
        return False

    def channel_allowed(self, channel: bytes, is_pattern: bool) -> bool:
        if self.allchannels:
            return True
        if is_pattern:
            return channel in self.channels
        return any(glob_match(p, channel) for p in self.channels)

    # --- description ---------------------------------------------------------------

    def describe(self) -> str:
        """The selector as ACL LIST shows it: keys, channels, then commands."""
        parts = [self.describe_keys()] if self.allkeys or self.keys else []
        parts.append(self.describe_channels())
        parts.append(self.describe_commands())
        return " ".join(p for p in parts if p)

    def describe_keys(self) -> str:
        if self.allkeys:
            return "~*"
        prefixes = {PERM_ALL: "~", PERM_READ: "%R~", PERM_WRITE: "%W~"}
        return " ".join(prefixes[perms] + pattern.decode(errors="replace") for pattern, perms in self.keys)

    def describe_channels(self) -> str:
        if self.allchannels:
            return "&*"
        return " ".join(["resetchannels", *("&" + c.decode(errors="replace") for c in self.channels)])

    def describe_channels_list(self) -> str:
        """GETUSER's channels field (no resetchannels)."""
        if self.allchannels:
            return "&*"
        return " ".join("&" + c.decode(errors="replace") for c in self.channels)

    def describe_commands(self) -> str:
        """Redis 7.0's ACLDescribeSelectorCommandRules: +@all or -@all; then, while one
        fits, the category that most nearly matches the commands still to describe
        (fewest differences, then most matches); then each command that still differs
        (applied as it is named, so a container's subcommands follow it), and the
        first arguments allowed for commands otherwise denied."""
        additive = not self.future
        fake = Selector()
        words = ["-@all" if additive else "+@all"]
        fake.apply(words[0].encode())
        temp = set(self.allowed)
        applied: set[str] = set()
        while True:
            best, min_diff, max_same = None, None, 0
            for category in ACL_CATEGORY_ORDER:
                if category in applied:
                    continue
                names = category_commands(category)
                on = len(names & temp)
                off = len(names) - on
                diff, same = (off, on) if additive else (on, off)
                if same > diff and (min_diff is None or diff < min_diff or (diff == min_diff and same > max_same)):
                    best, min_diff, max_same = category, diff, same
            if best is None:
                break
            op = ("+@" if additive else "-@") + best
            fake.apply(op.encode())
            if additive:
                temp -= category_commands(best)
            else:
                temp |= category_commands(best)
            words.append(op)
            applied.add(best)
        self._describe_single(fake, list(TABLE.values()), words)
        assert fake.allowed == self.allowed, f"ACL description {words} does not give the selector's commands"
        return " ".join(words)

    def _describe_single(self, fake: Selector, commands: list[Command], words: list[str]) -> None:
        for cmd in commands:
            name = cmd.fullname
            mine = name in self.allowed
            if mine != (name in fake.allowed):
                words.append(("+" if mine else "-") + name)
                fake._set(cmd, mine)
            if cmd.subcommands:
                self._describe_single(fake, list(cmd.subcommands.values()), words)
            if not mine:
                words.extend(f"+{name}|{arg.decode(errors='replace')}" for arg in self.firstargs.get(name, ()))


def command_by_fullname(name: bytes) -> Command | None:
    """The command or subcommand `cmd` or `cmd|sub` names (lowercase), or None."""
    parent, bar, sub = name.partition(b"|")
    cmd = TABLE.get(parent)
    if cmd is None or not bar:
        return cmd
    return cmd.subcommands.get(sub)


_SCRIPT_ERRORS = {
    DENIED_CMD: b"The user executing the script can't run this command or subcommand",
    DENIED_KEY: b"The user executing the script can't access at least one of the keys mentioned in the "
                b"command arguments",
    DENIED_CHANNEL: b"The user executing the script can't publish to the channel mentioned in the command",
}


def script_acl_error(user: User, cmd: Command, argv: list[bytes], denials: list[list]) -> bytes | None:
    """scriptVerifyACL's message for a redis.call the script's user may not run, else
    None; a denial is appended to `denials` as [reason, object] for the router's ACL LOG."""
    result, index = user.check(cmd, argv)
    if result == ACL_OK:
        return None
    if len(denials) < MAX_SCRIPT_DENIALS:
        denials.append([result, cmd.fullname.encode() if result == DENIED_CMD else argv[index]])
    return _SCRIPT_ERRORS[result]


def with_denials(reply: bytes, denials: list[list]) -> bytes:
    """A script's reply carrying its ACL denials ahead of it (split_denials undoes it)."""
    packed = msgspec.msgpack.encode(denials)
    return DENIALS_PREFIX + DENIALS_LENGTH.pack(len(packed)) + packed + reply


def split_denials(data: bytes) -> tuple[list[list], bytes]:
    """([reason, object], ...) and the reply, from what with_denials made (or a plain reply)."""
    if not data.startswith(DENIALS_PREFIX):
        return [], data
    at = len(DENIALS_PREFIX)
    (size,) = DENIALS_LENGTH.unpack_from(data, at)
    at += DENIALS_LENGTH.size
    return msgspec.msgpack.decode(data[at:at + size]), data[at + size:]


def sort_pattern_error(user: User, cmd: Command, argv: list[bytes]) -> bytes | None:
    """SORT's refusal of BY/GET patterns for a user without access to every key
    (sortCommand), found by walking its options as it does; None when it has no
    such option, or stops first at an error the command itself reports."""
    j = 2
    while j < len(argv):
        left = len(argv) - j - 1
        option = argv[j].lower()
        if option in (b"asc", b"desc", b"alpha"):
            pass
        elif option == b"limit" and left >= 2:
            if parse_ll(argv[j + 1]) is None or parse_ll(argv[j + 2]) is None:
                return None
            j += 2
        elif option == b"store" and left >= 1 and cmd.name == "sort":
            j += 1
        elif option in (b"by", b"get") and left >= 1:
            if (option == b"get" or b"*" in argv[j + 1]) and not user.full_key_access(cmd, argv, PERM_READ):
                return b"ERR %s option of SORT denied due to insufficient ACL permissions." % option.upper()
            j += 1
        else:
            return None
        j += 1
    return None


@lru_cache(maxsize=KEY_MATCHER_CACHE_ENTRIES)
def key_matcher(pattern: bytes) -> Callable[[bytes], bool]:
    """A key pattern's test: a prefix compare for `prefix*` (the usual ACL pattern), else Redis' glob."""
    head = pattern[:-1]
    if pattern[-1:] == b"*" and head and not any(c in head for c in b"*?[\\"):
        return lambda key: key.startswith(head)
    return lambda key: glob_match(pattern, key)


_ONE_KEY_FLAGS: dict[str, str | None] = {}


def one_key_flags(cmd: Command) -> str | None:
    """The key spec flags of a command whose one key is argv[1] (GET, SET, HSET), found
    once per command; None for the rest, whose keys keys_and_flags finds."""
    try:
        return _ONE_KEY_FLAGS[cmd.fullname]
    except KeyError:
        pass
    specs = cmd.key_specs
    simple = (cmd.single_key and len(specs) == 1 and specs[0].begin == 1 and specs[0].lastkey == 0
              and specs[0].keyword is None and specs[0].keynumidx is None)
    flags = _ONE_KEY_FLAGS[cmd.fullname] = specs[0].flags if simple else None
    return flags


@lru_cache(maxsize=SPEC_FLAGS_CACHE_ENTRIES)
def spec_permissions(flags: str) -> int:
    """The permissions a key spec's flags need (ACLSelectorCheckKey)."""
    perms = 0
    words = flags.split()
    if "access" in words:
        perms |= PERM_READ
    if "insert" in words or "delete" in words or "update" in words:
        perms |= PERM_WRITE
    return perms


class User:
    """Redis' user: enabled, passwords (SHA-256 hex), nopass, and its selectors,
    the first being the root selector."""

    __slots__ = ("name", "enabled", "nopass", "passwords", "sanitize", "selectors", "unrestricted", "_rules",
                 "allchannels_default")

    def __init__(self, name: bytes, allchannels_default: bool = False) -> None:
        """allchannels_default: acl-pubsub-default is allchannels (new selectors and reset)."""
        self.name = name
        self.allchannels_default = allchannels_default
        self.enabled = False
        self.nopass = False
        self.passwords: list[str] = []
        self.sanitize: str | None = None  # "sanitize-payload" | "skip-sanitize-payload" | None
        root = Selector(allchannels_default)
        self.selectors: list[Selector] = [root]
        # True when the root selector allows everything: the check is skipped.
        self.unrestricted = False
        self._rules: bytes | None = None  # permissions() once computed, until the next change

    @property
    def root(self) -> Selector:
        return self.selectors[0]

    def copy(self) -> User:
        u = User(self.name, self.allchannels_default)
        u.enabled, u.nopass, u.passwords, u.sanitize = self.enabled, self.nopass, list(self.passwords), self.sanitize
        u.selectors = [s.copy() for s in self.selectors]
        u.unrestricted = self.unrestricted
        return u

    def set_from(self, other: User) -> None:
        """Take other's rules in place (clients keep pointing at this object)."""
        for name in User.__slots__:
            if name not in ("name", "allchannels_default"):
                setattr(self, name, getattr(other, name))
        self._rules = None

    def apply_rules(self, rules: list[bytes]) -> None:
        """Apply ACL SETUSER's rules in order (the caller works on a copy: a
        failed rule leaves the user as it was). RuleError names the rule."""
        for rule in merge_selector_arguments(rules):
            try:
                self.apply(rule)
            except RuleError as e:
                raise RuleError(f"Error in ACL SETUSER modifier '{rule.decode(errors='replace')}': {e}") from None
        self.unrestricted = self.root.unrestricted
        self._rules = None

    def permissions(self) -> bytes:
        """The selectors' rules, without passwords: what a shard needs to check a script's calls."""
        if self._rules is None:
            selectors = self.selectors
            self._rules = " ".join([selectors[0].describe(), *(f"({s.describe()})" for s in selectors[1:])]).encode()
        return self._rules

    def apply(self, rule: bytes) -> None:
        low = rule.lower()
        if low == b"on":
            self.enabled = True
        elif low == b"off":
            self.enabled = False
        elif low == b"nopass":
            self.nopass = True
            self.passwords = []
        elif low == b"resetpass":
            self.nopass = False
            self.passwords = []
        elif low == b"skip-sanitize-payload":
            self.sanitize = "skip-sanitize-payload"
        elif low == b"sanitize-payload":
            self.sanitize = "sanitize-payload"
        elif low == b"clearselectors":
            del self.selectors[1:]
        elif low == b"reset":
            for word in (b"resetpass", b"resetkeys", b"resetchannels", b"off", b"-@all", b"clearselectors",
                         b"sanitize-payload"):
                self.apply(word)
            if self.allchannels_default:
                self.apply(b"allchannels")
        elif rule[:1] == b">" or rule[:1] == b"<":
            digest = password_hash(rule[1:])
            self._password(rule[:1] == b">", digest)
        elif rule[:1] == b"#" or rule[:1] == b"!":
            digest = rule[1:].decode(errors="replace")
            if len(digest) != PASSWORD_HASH_HEX_CHARS or any(c not in "0123456789abcdef" for c in digest):
                raise RuleError(ERR_BAD_HASH)
            self._password(rule[:1] == b"#", digest)
        elif rule[:1] == b"(" and rule[-1:] == b")":
            selector = Selector(self.allchannels_default)
            for word in rule[1:-1].split():
                if word.lower() in (b"allchannels", b"resetchannels") or word[:1] in b"~%&+-" or word.lower() in (
                        b"allkeys", b"resetkeys", b"allcommands", b"nocommands"):
                    selector.apply(word)
                else:
                    raise RuleError(ERR_SYNTAX)
            self.selectors.append(selector)
        else:
            self.root.apply(rule)

    def _password(self, add: bool, digest: str) -> None:
        if add:
            self.nopass = False
            if digest not in self.passwords:
                self.passwords.append(digest)
        elif digest in self.passwords:
            self.passwords.remove(digest)
        else:
            raise RuleError(ERR_NO_SUCH_PASSWORD)

    def password_ok(self, password: bytes) -> bool:
        return self.nopass or password_hash(password) in self.passwords

    def check(self, cmd: Command, argv: list[bytes]) -> tuple[int, int]:
        """ACLCheckAllUserCommandPerm: allowed if any selector allows; else the
        most relevant denial (a key or channel over the command, the later index)."""
        error, index = DENIED_CMD, 0
        for selector in self.selectors:
            result, at = selector.check(cmd, argv)
            if result == ACL_OK:
                return ACL_OK, 0
            if result > error or (result == error and at > index):
                error, index = result, at
        return error, index

    def full_key_access(self, cmd: Command, argv: list[bytes], perms: int) -> bool:
        """ACLUserCheckCmdWithUnrestrictedKeyAccess: a selector that allows argv
        reaches every key (allkeys, or the pattern `*` with these permissions)."""
        for selector in self.selectors:
            if selector.check(cmd, argv)[0] == ACL_OK and (selector.allkeys or any(
                    pattern == b"*" and allowed & perms == perms for pattern, allowed in selector.keys)):
                return True
        return False

    def flags(self) -> list[bytes]:
        out = [b"on" if self.enabled else b"off"]
        if self.nopass:
            out.append(b"nopass")
        if self.sanitize is not None:
            out.append(self.sanitize.encode())
        return out

    def describe(self) -> str:
        """The rules after `user NAME` in ACL LIST (and an ACL file)."""
        parts = [f.decode() for f in self.flags()]
        parts += ["#" + h for h in self.passwords]
        parts.append(self.root.describe())
        parts += [f"({s.describe()})" for s in self.selectors[1:]]
        return " ".join(p for p in parts if p)


def merge_selector_arguments(rules: list[bytes]) -> list[bytes]:
    """ACLMergeSelectorArguments: `(`...`)` spread over several arguments is one rule."""
    out: list[bytes] = []
    open_at: list[bytes] | None = None
    for rule in rules:
        if open_at is not None:
            open_at.append(rule)
            if rule[-1:] == b")":
                out.append(b" ".join(open_at))
                open_at = None
        elif rule[:1] == b"(" and rule[-1:] != b")":
            open_at = [rule]
        else:
            out.append(rule)
    if open_at is not None:
        raise RuleError(f"Unmatched parenthesis in acl selector starting at '{open_at[0].decode(errors='replace')}'.")
    return out


def new_default_user(requirepass: str) -> User:
    """The default user as Redis creates it, with requirepass as its password."""
    user = User(b"default")
    user.apply_rules([b"on", b"~*", b"&*", b"+@all"])
    set_requirepass(user, requirepass)
    return user


def set_requirepass(user: User, requirepass: str) -> None:
    """CONFIG SET requirepass: the default user's only password, or nopass when empty."""
    user.apply(b"resetpass")
    user.apply(b">" + requirepass.encode() if requirepass else b"nopass")


@lru_cache(maxsize=USER_RULES_CACHE_ENTRIES)
def user_from_rules(rules: bytes) -> User:
    """A user rebuilt from its ACL LIST description (a script's caller, on the
    shard): cached, as the same user runs many scripts."""
    user = User(b"")
    user.apply_rules(rules.split())
    return user
