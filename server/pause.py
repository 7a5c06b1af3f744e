"""CLIENT PAUSE / UNPAUSE on one router or shard client port, as Redis 7.0: while a
pause lasts, the commands it covers (WRITE: write and may-replicate commands, and an
EXEC whose transaction holds one; ALL: every command) wait, parsed, in their client's
backlog (server/client.py), and the client counts as blocked. Commands refused before
they would run (unknown, wrong arity, NOAUTH) are answered at once, as in Redis.

A pause holds the clients of the process that received it: with several routers,
each pauses only its own clients (COMPATIBILITY.md)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

from durakv.shards.frames import VERB_ROUTER_IN_MULTI
from durakv.shards.resp import ReplyError
from durakv.shards.luaenv import sha1hex
from durakv.shards.t_script import shebang_flags
from durakv.shards.table import Command, lookup

if TYPE_CHECKING:
    from durakv.server.client import Client

# The shas of read-only (`#!lua flags=no-writes`) scripts this process saw loaded.
MAX_NO_WRITES_SHAS = 10_000
_NO_WRITES_SHAS: set[bytes] = set()

PAUSE_WRITE = 1
PAUSE_ALL = 2
_WRITE_FLAGS = ("write", "may_replicate")


def _no_writes(body: bytes) -> bool:
    try:
        flags, _ = shebang_flags(body)
    except ReplyError:
        return True  # refused when it runs, and so writes nothing
    return flags is not None and b"no-writes" in flags


def note_script(body: bytes) -> None:
    """SCRIPT LOAD or EVAL of a `no-writes` script passed here: remember its sha, so a
    pause lets its EVALSHA through (Redis knows every cached script's flags)."""
    if body.startswith(b"#!") and _no_writes(body):
        if len(_NO_WRITES_SHAS) >= MAX_NO_WRITES_SHAS:
            _NO_WRITES_SHAS.clear()  # forgetting only pauses an EVALSHA that need not wait
        _NO_WRITES_SHAS.add(sha1hex(body))


class ClientPause:
    __slots__ = ("mode", "end", "held", "no_writes_functions", "on_change")

    def __init__(self) -> None:
        self.mode = 0  # 0: no pause; else PAUSE_WRITE or PAUSE_ALL
        self.end = 0.0  # time.monotonic() the pause ends at
        self.held: dict[int, Client] = {}  # clients whose next command waits, by id
        # Functions flagged no-writes, asked of a shard when a WRITE pause starts.
        self.no_writes_functions: frozenset[bytes] = frozenset()
        # Told the pause's end as unix ms (0: over), so the shards stop expiring keys meanwhile.
        self.on_change: Callable[[int], None] | None = None

    def pause(self, timeout_ms: int, mode: int) -> None:
        """As Redis' pauseClients: the later end and the stricter mode win."""
        end = time.monotonic() + timeout_ms / 1000
        self.end = max(self.end, end) if self.mode else end
        self.mode = max(self.mode, mode)
        if self.on_change is not None:
            self.on_change(int((time.time() + self.end - time.monotonic()) * 1000))

    def holds(self, client: Client, argv: list[bytes]) -> bool:
        """Whether this request must wait (checked only while a pause is set)."""
        if time.monotonic() >= self.end:
            self.unpause()
            return False
        try:
            cmd = lookup(argv)
        except ReplyError:
            return False  # answered with its error at once
        if not client.authed and not cmd.no_auth:
            return False
        if self.mode == PAUSE_ALL:
            return True
        if self._may_write(cmd, argv):
            return True
        return cmd.name == "exec" and client.multi is not None and any(self._writes(q) for q in client.multi)

    def _writes(self, argv: list[bytes]) -> bool:
        """A write or may-replicate command (a queued router command carries a marker verb)."""
        if argv and argv[0] == VERB_ROUTER_IN_MULTI:
            argv = argv[1:]
        try:
            cmd = lookup(argv)
        except ReplyError:
            return False
        return self._may_write(cmd, argv)

    def _may_write(self, cmd: Command, argv: list[bytes]) -> bool:
        """Redis' is_may_replicate_command, with a script's flags in place of the
        command's (a `no-writes` script or function is not paused). An EVALSHA counts
        as a write unless note_script saw its script here."""
        if not any(f in cmd.flags for f in _WRITE_FLAGS):
            return False
        if cmd.name == "eval":
            return not _no_writes(argv[1])
        if cmd.name == "evalsha":
            return argv[1].lower() not in _NO_WRITES_SHAS
        if cmd.name == "fcall":
            return argv[1].lower() not in self.no_writes_functions
        return True

    def hold(self, client: Client) -> None:
        self.held[client.id] = client

    def unpause(self) -> None:
        """End the pause and let every held client go on with its backlog."""
        if self.mode and self.on_change is not None:
            self.on_change(0)
        self.mode = 0
        held = list(self.held.values())
        self.held.clear()
        for client in held:
            client.paused = False
            if not client.closed:
                client.flush()

    def expire(self) -> None:
        """The pause's timer: ends it unless a later CLIENT PAUSE extended it."""
        if self.mode and time.monotonic() >= self.end:
            self.unpause()
