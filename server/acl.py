"""The ACL users of one router or shard port, their enforcement, ACL LOG, and
how a change becomes durable and identical in every process.

Every process (router or shard port) holds the same `Users`. The users' one
durable home is a file in Redis' ACL file format (`user NAME rules`, one a line):
DIR/users.acl when no `aclfile` is configured (it survives restarts: an
acknowledged ACL SETUSER is never lost), or DIR/run/users.acl when one is (the
running state, cleared at every start, as Redis' users last until ACL SAVE).
A change (ACL SETUSER, DELUSER, LOAD, CONFIG SET requirepass) is applied here at
once, then under DIR/run/settings.lock re-applied to the file's state, written
durably, applied from the file here and announced to every peer, which reloads
the file (server/settings_sync.py); the client's reply waits for all of that.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from typing import TYPE_CHECKING

from durakv.log.durable_file import replace_file
from durakv.log.layout import run_dir
from durakv.server.conn_commands import client_info_line
from durakv.shards.acl import (
    ACL_OK, DENIED_AUTH, DENIED_CHANNEL, DENIED_CMD, DENIED_KEY, RuleError, User, new_default_user,
    set_requirepass, sort_pattern_error, split_denials,
)
from durakv.shards.resp import ReplyError
from durakv.shards.table import Command

if TYPE_CHECKING:
    from durakv.server.client import Client
    from durakv.server.links import Pending
    from durakv.server.router_view import RouterView

logger = logging.getLogger("durakv.router")

USERS_FILE = "users.acl"
USERS_FILE_MODE = 0o600
MAX_USERS_FILE_BYTES = 64 * 1024 * 1024
ACL_LOG_MAX_ENTRIES = 128  # Redis' acllog-max-len default
ACL_LOG_GROUPING_MS = 60_000  # an entry repeated within this long is counted, not added

CONTEXT_TOPLEVEL = b"toplevel"
CONTEXT_MULTI = b"multi"
CONTEXT_LUA = b"lua"
SORT_COMMANDS = frozenset({"sort", "sort_ro"})  # BY/GET patterns need access to every key
_REASONS = {DENIED_CMD: b"command", DENIED_KEY: b"key", DENIED_AUTH: b"auth", DENIED_CHANNEL: b"channel"}


def users_path(data_dir: str, aclfile: str) -> str:
    """Where this run's users are kept (see the module docstring)."""
    return os.path.join(run_dir(data_dir), USERS_FILE) if aclfile else os.path.join(data_dir, USERS_FILE)


def clear_runtime_users(data_dir: str, aclfile: str) -> None:
    """With an aclfile, a new run starts from it: forget the previous run's changes."""
    if aclfile:
        try:
            os.unlink(users_path(data_dir, aclfile))
        except FileNotFoundError:
            pass


def noperm_message(result: int, cmd: Command) -> bytes:
    """The NOPERM error of a refused command (processCommand)."""
    if result == DENIED_CMD:
        return b"NOPERM this user has no permissions to run the '%s' command" % cmd.fullname.encode()
    if result == DENIED_KEY:
        return b"NOPERM this user has no permissions to access one of the keys used as arguments"
    return b"NOPERM this user has no permissions to access one of the channels used as arguments"


class LogEntry:
    __slots__ = ("count", "reason", "context", "obj", "username", "created_ms", "client_info")

    def __init__(self, reason: bytes, context: bytes, obj: bytes, username: bytes, client_info: bytes) -> None:
        self.count = 1
        self.reason, self.context, self.obj, self.username = reason, context, obj, username
        self.created_ms = time.time() * 1000
        self.client_info = client_info

    def reply(self, now_ms: float) -> list:
        return [b"count", self.count, b"reason", self.reason, b"context", self.context, b"object", self.obj,
                b"username", self.username, b"age-seconds", (now_ms - self.created_ms) / 1000,
                b"client-info", self.client_info]


class AclLog:
    """ACL LOG: the newest denials first, repeats within a minute counted together."""

    def __init__(self) -> None:
        self.entries: deque[LogEntry] = deque()
        self.max_entries = ACL_LOG_MAX_ENTRIES  # acllog-max-len

    def add(self, entry: LogEntry) -> None:
        for old in self.entries:
            if (old.reason, old.context, old.obj, old.username) == (entry.reason, entry.context, entry.obj,
                                                                    entry.username) \
                    and entry.created_ms - old.created_ms < ACL_LOG_GROUPING_MS:
                old.count += 1
                old.created_ms = entry.created_ms
                old.client_info = entry.client_info
                self.entries.remove(old)
                self.entries.appendleft(old)
                return
        self.entries.appendleft(entry)
        while len(self.entries) > self.max_entries:
            self.entries.pop()


class Users:
    """This process's users, ACL LOG and the users file."""

    def __init__(self, router: RouterView) -> None:
        self.router = router
        config = router.config
        self.path = users_path(config.data_dir, config.aclfile)
        self.aclfile = config.aclfile
        self.users: dict[bytes, User] = {b"default": new_default_user(config.requirepass)}
        self.log = AclLog()
        self.requirepass = config.requirepass
        self.load_at_start()

    def allchannels_default(self) -> bool:
        return self.router.settings.values["acl-pubsub-default"] == "allchannels"

    @property
    def default(self) -> User:
        return self.users[b"default"]

    # --- the file ----------------------------------------------------------------------

    def load_at_start(self) -> None:
        """The users of this run: the users file, else the aclfile, else the default user."""
        text = self.read_file(self.path)
        if text is None and self.aclfile:
            text = self.read_file(self.aclfile)
        if text is None:
            return
        try:
            users = parse_users_file(text, self.allchannels_default())
        except ValueError as e:
            logger.error("router: ignoring the users in %s: %s", self.path, e)
            return
        self.replace(users)

    @staticmethod
    def read_file(path: str) -> str | None:
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_USERS_FILE_BYTES + 1)
        except FileNotFoundError:
            return None
        if len(raw) > MAX_USERS_FILE_BYTES:
            raise ValueError(f"{path} is over {MAX_USERS_FILE_BYTES} bytes")
        return raw.decode(errors="replace")

    def text(self) -> str:
        return users_file_text(self.users)

    def write_file(self, path: str) -> None:
        replace_file(path, self.text().encode(), mode=USERS_FILE_MODE)

    def reload(self, kill_all: bool = False) -> None:
        """A change was stored: take the file's users (never older than the notice)."""
        try:
            text = self.read_file(self.path)
            if text is not None:
                self.replace(parse_users_file(text, self.allchannels_default()), kill_all)
        except ValueError as e:
            logger.error("router: cannot reload the users from %s: %s", self.path, e)

    def load_aclfile(self, caller: Client | None = None) -> None:
        """ACL LOAD here: the aclfile's users, or ReplyError and nothing changes."""
        try:
            text = self.read_file(self.aclfile)
            if text is None:
                raise ValueError(f"cannot open {self.aclfile}: no such file")
            users = parse_users_file(text, self.allchannels_default())
        except (OSError, ValueError) as e:
            raise ReplyError(b"ERR Error loading ACLs, user definitions were not loaded: " + str(e).encode()) \
                from None
        users.setdefault(b"default", new_default_user(self.requirepass))  # a file without it: a fresh one
        self.replace(users, kill_all=True, caller=caller)

    def snapshot(self) -> dict[bytes, User]:
        """Copies of the users, taken on the loop for store_change's thread."""
        return {name: user.copy() for name, user in self.users.items()}

    def store_change(self, change: list[bytes], current: dict[bytes, User]) -> None:
        """Under the settings lock: re-apply a change (ACL SETUSER/DELUSER argv from the
        subcommand on, [b"load"], or [b"requirepass", value]) to the file's users (to
        `current`, this process's snapshot, when there is no file yet) and write them
        durably. Runs in a thread."""
        text = self.read_file(self.path)
        # The default user is in the file only once an ACL command changed it: until then
        # its password is requirepass, which a CONFIG SET changes until the next start.
        users = parse_users_file(text, self.allchannels_default()) if text is not None else {
            name: user for name, user in current.items() if name != b"default"}
        verb = change[0].lower()
        if verb == b"setuser":
            name = change[1]
            if name == b"default" and name not in users:
                users[name] = current[b"default"]
            user = users.setdefault(name, User(name, self.allchannels_default()))
            user.apply_rules(change[2:])
        elif verb == b"deluser":
            for name in change[1:]:
                users.pop(name, None)
        elif verb == b"load":
            aclfile = self.read_file(self.aclfile)
            if aclfile is None:
                raise ValueError(f"cannot open {self.aclfile}: no such file")
            users = parse_users_file(aclfile, self.allchannels_default())
            users.setdefault(b"default", new_default_user(self.requirepass))
        else:
            assert verb == b"requirepass", f"unknown users change {verb!r}"
            if b"default" not in users:
                return  # requirepass alone lasts until the next start, as a CONFIG SET does
            set_requirepass(users[b"default"], change[1].decode())
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        replace_file(self.path, users_file_text(users).encode(), mode=USERS_FILE_MODE)

    # --- changes ---------------------------------------------------------------------

    def replace(self, users: dict[bytes, User], kill_all: bool = False, caller: Client | None = None) -> None:
        """Take a new set of users: the same user objects keep their clients; clients of
        a removed or disabled user, or (kill_all, ACL LOAD) of any user but default, close."""
        for name, user in users.items():
            mine = self.users.get(name)
            if mine is None:
                self.users[name] = user
            else:
                mine.set_from(user)
        gone = [name for name in self.users if name not in users and name != b"default"]
        for name in gone:
            del self.users[name]
        self.kill_clients(kill_all, caller)

    def kill_clients(self, kill_all: bool = False, caller: Client | None = None) -> None:
        """Close the clients whose user is gone or (kill_all, ACL LOAD) any but default's,
        and subscribers whose channels the user may no longer hear (Redis'
        ACLKillPubsubClientsIfNeeded); the caller closes once its reply is written."""
        for client in list(self.router.clients.values()):
            user = client.user
            if client.closing:
                continue
            if self.users.get(user.name) is not user or (kill_all and user.name != b"default") or (
                    client.pubsub is not None and not user.unrestricted and not subscriptions_allowed(client)):
                if client is caller:
                    client.closing = True
                else:
                    client.kill()

    def setuser(self, name: bytes, rules: list[bytes], caller: Client | None = None) -> None:
        user = self.users.get(name)
        changed = user.copy() if user is not None else User(name, self.allchannels_default())
        try:
            changed.apply_rules(rules)
        except RuleError as e:
            raise ReplyError(b"ERR " + str(e).encode()) from None
        if user is None:
            self.users[name] = changed
        else:
            user.set_from(changed)
            self.kill_clients(caller=caller)

    def deluser(self, names: list[bytes], caller: Client | None = None) -> int:
        if b"default" in names:
            raise ReplyError(b"ERR The 'default' user cannot be removed")
        deleted = 0
        for name in names:
            if self.users.pop(name, None) is not None:
                deleted += 1
        if deleted:
            self.kill_clients(caller=caller)
        return deleted

    def settings_applied(self, values: dict[str, str]) -> None:
        """CONFIG SET (here or on a peer): requirepass is the default user's password."""
        self.log.max_entries = int(values["acllog-max-len"])
        while len(self.log.entries) > self.log.max_entries:
            self.log.entries.pop()
        self.set_requirepass(values["requirepass"])

    def set_requirepass(self, requirepass: str) -> None:
        if requirepass != self.requirepass:
            self.requirepass = requirepass
            set_requirepass(self.default, requirepass)

    # --- authentication and checks ----------------------------------------------------------

    def authenticate(self, client: Client, username: bytes, password: bytes, command: bytes) -> None:
        """AUTH/HELLO AUTH: WRONGPASS (logged, the object being the command as the
        client spelled it) unless the user exists, is on and the password fits."""
        user = self.users.get(username)
        if user is None or not user.enabled or not user.password_ok(password):
            self.log_denial(client, DENIED_AUTH, CONTEXT_TOPLEVEL, command, username)
            raise ReplyError(b"WRONGPASS invalid username-password pair or user is disabled.")
        client.user = user
        client.authed = True
        client.parser.authed = True

    def refuse(self, client: Client, cmd: Command, argv: list[bytes], user: User | None = None,
               context: bytes | None = None) -> bytes | None:
        """None when the client's user may run argv; else the error (a NOPERM one logged)."""
        user = client.user if user is None else user
        result, index = user.check(cmd, argv)
        if result == ACL_OK:
            return sort_pattern_error(user, cmd, argv) if cmd.name in SORT_COMMANDS else None
        if context is None:
            context = CONTEXT_MULTI if client.multi is not None else CONTEXT_TOPLEVEL
        obj = cmd.fullname.encode() if result == DENIED_CMD else argv[index]
        self.log_denial(client, result, context, obj, user.name)
        return noperm_message(result, cmd)

    def script_reply(self, pending: Pending, data: bytes | bytearray) -> None:
        """A restricted user's script answered: log the redis.calls it was refused
        (context lua), then hand the client its reply."""
        client = pending.client
        if data[:1] == b"\x00":  # rare: a big reply (a bytearray) is copied
            denials, data = split_denials(data if isinstance(data, bytes) else bytes(data))
            for reason, obj in denials:
                self.log_denial(client, reason, CONTEXT_LUA, obj, client.user.name)
        pending.data = data
        client.reply_ready()

    def log_denial(self, client: Client, result: int, context: bytes, obj: bytes, username: bytes) -> None:
        info = client_info_line(client, time.monotonic())
        self.log.add(LogEntry(_REASONS[result], context, obj, username, info))


def subscriptions_allowed(client: Client) -> bool:
    """Whether the client's user may still hear every channel and pattern it subscribed to."""
    subs = client.pubsub
    root = client.user.root
    if subs is None or root.allchannels:
        return True
    selectors = client.user.selectors
    for channel in list(subs.channels) + list(subs.shard_channels):
        if not any(s.channel_allowed(channel, False) for s in selectors):
            return False
    for pattern in subs.patterns:
        if not any(s.channel_allowed(pattern, True) for s in selectors):
            return False
    return True


def users_file_text(users: dict[bytes, User]) -> str:
    """Redis' ACL file: `user NAME RULES` per user, sorted by name (ACL SAVE)."""
    return "".join(f"user {name.decode(errors='replace')} {users[name].describe()}\n" for name in sorted(users))


def parse_users_file(text: str, allchannels_default: bool = False) -> dict[bytes, User]:
    """An ACL file's users: ValueError naming the line of a mistake."""
    users: dict[bytes, User] = {}
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words:
            continue
        if words[0] != "user" or len(words) < 2:
            raise ValueError(f"line {number}: should start with user keyword")
        name = words[1].encode()
        if name in users:
            raise ValueError(f"Duplicate user '{words[1]}' found")
        user = User(name, allchannels_default)
        try:
            user.apply_rules([w.encode() for w in words[2:]])
        except RuleError as e:
            raise ValueError(f"line {number}: {e}") from None
        users[name] = user
    return users
