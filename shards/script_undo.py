"""Undo of a script that turns out to touch a key of another shard (issue 16).

Through the router, a script whose declared keys are all on one shard runs on that
shard (the fast path). Plain clients are promised one Redis, so when such a script
reaches for a key this shard does not own, it must not have done anything anyone can
see: the shard puts back every key the script wrote, drops the keyspace
notifications it made, and answers the router NONLOCAL_RETRY, an internal error that
never reaches a client; the router then runs the script again as a cross-shard
transaction (server/script_retry.py), whose executor finds the undeclared keys.

The undo record is kept only for such runs (a router's request on a server of several
shards, outside MULTI: Shard.scripts_undo): before a script's write command runs, the state
of each key it names is noted once (absent, the value itself when it is an immutable
string, else its DUMP payload). Putting back is RESTORE/DEL effects, logged in the
same record as the script's writes, so the log replays to the state memory holds
and a replica or snapshot never sees the script's writes alone (a record applies
whole). On a shard port Redis Cluster's "non local key" error stays.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast

from durakv.shards.engine import run_command
from durakv.shards.rdb.codec import dump_payload
from durakv.shards.resp import ReplyError

if TYPE_CHECKING:
    from durakv.shards.context import Ctx, ServingShardView
    from durakv.shards.table import Command

logger = logging.getLogger("durakv.shards.script_undo")

# The shard's answer to the router: run this script again across shards. Internal:
# the router never passes it on (a shard port never answers it).
NONLOCAL_RETRY = b"TXNONLOCAL script touches a key of another shard: run it across shards"
NONLOCAL_RETRY_REPLY = b"-" + NONLOCAL_RETRY + b"\r\n"
MAX_UNDO_KEYS = 100_000  # keys one script's undo record holds; past it the script gives up its retry
MAX_HELD_CALLS = 100_000  # redis.calls held for SLOWLOG/LATENCY; past it they are logged at once

_ABSENT = 0
_STRING = 1  # an immutable bytes value, kept as is (dumped only if it must be put back)
_PAYLOAD = 2


class Undo:
    """The keys one script run wrote, as they were before it, where its
    notifications started, and what it counted (a run put back counts nothing:
    commandstats, errorstats, WATCH, SLOWLOG and LATENCY see only the run across
    shards; its own call Shard._execute leaves out)."""

    __slots__ = ("before", "events_before", "usable", "stats_before", "errors_before", "dirty_before",
                 "held_calls", "changes_before")

    def __init__(self, events_before: int, dirty_before: set[int] | None = None) -> None:
        self.before: dict[bytes, tuple[int, object, int]] = {}  # key -> (kind, value or payload, expiry ms)
        self.events_before = events_before
        self.usable = True  # False after a write it cannot undo (FLUSHALL...): Redis Cluster's error stays
        self.stats_before: dict[int, tuple[Any, int, int, int, int]] = {}  # id -> (CommandStats, its four counts)
        self.errors_before: dict[bytes, int] = {}  # errorstats code -> its count before the run
        self.dirty_before = dirty_before  # the WATCHers already dirty (None: nobody watched anything)
        # The redis.calls run (command, argv, µs): SLOWLOG and LATENCY get them once the run counts.
        self.held_calls: list[tuple[Command, list[bytes], int]] = []
        self.changes_before = -1  # Keyspace.changes before the run's first write (shards/changes.py)

    def note_stat(self, stat: Any) -> None:
        """Before the run counts a call in `stat` (shards/shard.py CommandStats): its counts, once."""
        if id(stat) not in self.stats_before:
            self.stats_before[id(stat)] = (stat, stat.calls, stat.usec, stat.failed, stat.rejected)

    def note_error(self, counts: dict[bytes, int], code: bytes) -> None:
        """Before the run counts an error code (Scripting.error_counts): its count, once."""
        if code not in self.errors_before:
            self.errors_before[code] = counts.get(code, 0)

    def hold_call(self, shard: Any, cmd: Command, argv: list[bytes], duration_us: int) -> None:
        """A redis.call the run made, logged (Shard.log_script_call) only if the run counts;
        past MAX_HELD_CALLS at once (then a run put back leaves its later calls logged)."""
        if len(self.held_calls) >= MAX_HELD_CALLS:
            shard.log_script_call(cmd, argv, duration_us)
            return
        self.held_calls.append((cmd, argv, duration_us))

    def note_write(self, ctx: Ctx, cmd: Command, argv: list[bytes], indexes: list[int]) -> None:
        """Before a write command of the script runs: note each key's state the first time."""
        if self.changes_before < 0:
            self.changes_before = ctx.db.changes
        if not indexes or len(self.before) + len(indexes) > MAX_UNDO_KEYS:
            self.usable = False  # a keyless write (FLUSHALL, FLUSHDB): nothing to put back by key
            return
        before = self.before
        db = ctx.db
        for i in indexes:
            key = argv[i]
            if key in before:
                continue
            value = db.data.get(key)
            if value is None:
                before[key] = (_ABSENT, None, 0)
            elif type(value) is bytes:
                before[key] = (_STRING, value, db.expires.get(key, 0))
            else:
                lps = ctx.shard.settings["list-max-listpack-size"]
                before[key] = (_PAYLOAD, dump_payload(value, lps), db.expires.get(key, 0))

    def put_back(self, ctx: Ctx) -> None:
        """Restore every noted key (logged as RESTORE/DEL effects) and drop the
        notifications the script made; nothing it did stays visible."""
        db = ctx.db
        lps = ctx.shard.settings["list-max-listpack-size"]
        for key, (kind, value, when_ms) in self.before.items():
            if kind == _ABSENT:
                if key in db.data:
                    run_command(ctx, [b"DEL", key])
                continue
            payload = dump_payload(value, lps) if kind == _STRING else value
            assert type(payload) is bytes, "an undo payload is bytes"
            try:
                run_command(ctx, [b"RESTORE", key, b"%d" % when_ms, payload, b"REPLACE", b"ABSTTL"])
            except ReplyError as e:  # cannot happen for a payload this shard dumped: loud if it does
                logger.error("script undo: cannot put %r back: %s", key[:64], e.message.decode(errors="replace"))
        del db.events[self.events_before:]
        if self.changes_before >= 0:  # neither the run's writes nor their undo are a client's changes
            db.changes = self.changes_before
        ctx.acl_denials.clear()  # the run that commits reports its own
        self._uncount(ctx)

    def _uncount(self, ctx: Ctx) -> None:
        """Take back what the run counted and the WATCHers its writes (and their undo) made dirty."""
        for stat, calls, usec, failed, rejected in self.stats_before.values():
            stat.calls, stat.usec, stat.failed, stat.rejected = calls, usec, failed, rejected
        if self.errors_before:
            counts = cast(Any, ctx.db.scripting).error_counts
            for code, count in self.errors_before.items():
                if count:
                    counts[code] = count
                else:
                    counts.pop(code, None)
        if self.dirty_before is not None:
            watches = cast("ServingShardView", ctx.shard).watches
            watches.dirty_clients.intersection_update(self.dirty_before)
