"""A script dropped from a full cache stays runnable until every router knows (issue 16).

A router that believes this shard caches script X sends EVALSHA X straight here and
lets its client's later requests for other shards go at once (server/script_scope.py
`homes`). When the cache drops X past its bound (shards/t_script.py MAX_CACHED_SCRIPTS),
an EVALSHA X a router sent before it learnt of the drop would be answered NOSCRIPT,
found on another shard and run again after those followers: an order one Redis never
shows. So the dropped body moves to `Evicting`, where EVALSHA still finds it (and puts
it back in the cache: it is wanted), and every router's connection is told once the
batch that dropped it is over (an event on the link, SCRIPTS_EVICTED_CHANNEL, one for
the batch's drops). A router forgets X for this shard, then
answers on the same link (VERB_SCRIPTS_EVICTED_SEEN): every EVALSHA it sent under the old
belief came before that answer, on the same ordered link, and has run. The body is
forgotten once every connection told has answered or closed, and no request waits for
a lock or behind a script fence (one of them may be an EVALSHA of X that the answer
passed); checked at every drop and every answer, so a body may stay longer (harmless: an
EVALSHA of it puts it back). A connection that does not answer within
ANSWER_TIMEOUT_MS, or the table past MAX_EVICTING_SCRIPTS, forgets bodies anyway, logged:
then an EVALSHA sent under the old belief may still meet NOSCRIPT and run after its
followers, as before this module.

Routers of other nodes reach the shard over the link port (shards/process.py
serve_router, as local ones): they are told and answer alike. What it costs a batch of
drops: one event per router connection and one small request back on each link, no
round trip waited for by any client.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from typing import Any, Callable

logger = logging.getLogger("durakv.shard")

MAX_EVICTING_SCRIPTS = 1024  # dropped bodies waiting for the routers' answers; the oldest go past it
ANSWER_TIMEOUT_MS = 5000  # a router connection that has not answered by then is not waited for


class _Entry:
    __slots__ = ("body", "function", "waiting", "deadline")

    def __init__(self, body: bytes, function: Any) -> None:
        self.body = body
        self.function = function
        self.waiting: set[Any] | None = None  # the connections told that have not answered (None: not told yet)
        self.deadline = 0.0  # time.monotonic() past which they are not waited for


class Evicting:
    """Bodies dropped from the cache, by sha, oldest first, until every router knows."""

    __slots__ = ("entries", "tell", "soon", "untold", "busy", "shard_index")

    def __init__(self) -> None:
        self.entries: dict[bytes, _Entry] = {}
        # Set by a serving shard (shards/process.py): tells every router connection of
        # these drops, returns those told. None (a test's keyspace): nobody to wait for.
        self.tell: Callable[[list[bytes]], Collection[Any]] | None = None
        # Runs a callback once the batch under way is over (trio's run_sync_soon): the drops
        # of a batch are told together. None: at once.
        self.soon: Callable[[Callable[[], None]], object] | None = None
        self.untold: list[bytes] = []
        # Whether requests wait for locks or behind a fence (shards/txn.py), which an answer passes.
        self.busy: Callable[[], bool] = lambda: False
        self.shard_index = -1

    def dropped(self, sha: bytes, body: bytes, function: Any) -> None:
        """The cache dropped this script: the body waits for the routers' answers to its telling."""
        if self.tell is None:
            return
        entries = self.entries
        entries.pop(sha, None)
        entries[sha] = _Entry(body, function)
        self.untold.append(sha)
        if len(self.untold) == 1:
            if self.soon is None:
                self.tell_untold()
            else:
                self.soon(self.tell_untold)
        while len(entries) > MAX_EVICTING_SCRIPTS:
            oldest = next(iter(entries))
            waiting = entries.pop(oldest).waiting
            if waiting is None or waiting:
                logger.warning("shard %d: more than %d dropped scripts wait for the routers' answers: script "
                               "%s is forgotten before they all answered (an EVALSHA of it sent meanwhile is "
                               "answered NOSCRIPT and run again after its followers)", self.shard_index,
                               MAX_EVICTING_SCRIPTS, oldest.decode())

    def tell_untold(self) -> None:
        """Tell the routers of the drops not told yet (those taken back meanwhile are cached:
        a router that takes them for cached is right)."""
        untold, self.untold = self.untold, []
        entries = self.entries
        shas = [sha for sha in dict.fromkeys(untold) if sha in entries and entries[sha].waiting is None]
        if not shas:
            return
        assert self.tell is not None, "drops are kept only where routers are told"
        try:
            conns = self.tell(shas)
        except Exception:  # a callback of trio's loop must not raise: the bodies go, loudly
            logger.exception("shard %d: telling the routers of %d dropped scripts failed", self.shard_index,
                             len(shas))
            conns = ()
        deadline = time.monotonic() + ANSWER_TIMEOUT_MS / 1000
        for sha in shas:
            entry = entries[sha]
            entry.waiting = set(conns)
            entry.deadline = deadline
        self.sweep()

    def take(self, sha: bytes) -> tuple[bytes, Any] | None:
        """An EVALSHA of a dropped script: its (body, function), which the caller caches again."""
        entry = self.entries.pop(sha, None)
        return None if entry is None else (entry.body, entry.function)

    def answered(self, conn: Any, shas: list[bytes]) -> int:
        """A router has forgotten these for this shard, and what it sent before has run:
        how many of them still waited for its answer."""
        seen = 0
        for sha in shas:
            entry = self.entries.get(sha)
            if entry is not None and entry.waiting is not None and conn in entry.waiting:
                entry.waiting.discard(conn)
                seen += 1
        self.sweep()
        return seen

    def conn_closed(self, conn: Any) -> None:
        """A router connection is gone: nothing more comes on it (its router forgets every
        script it knew here when it reconnects, server/script_scope.py forget_shard)."""
        for entry in self.entries.values():
            if entry.waiting is not None:
                entry.waiting.discard(conn)

    def sweep(self) -> None:
        """Forget the bodies every router has answered for (none while requests wait:
        one of them may be an EVALSHA of it) and those past their deadline (logged)."""
        if not self.entries or self.busy():
            return
        now = time.monotonic()
        for sha in [sha for sha, entry in self.entries.items()
                    if entry.waiting is not None and (not entry.waiting or entry.deadline <= now)]:
            entry = self.entries.pop(sha)
            if entry.waiting:
                logger.warning("shard %d: %d router connections did not answer the drop of script %s within "
                               "%d ms: forgotten anyway", self.shard_index, len(entry.waiting), sha.decode(),
                               ANSWER_TIMEOUT_MS)

    def clear(self) -> None:
        """SCRIPT FLUSH: no script is kept, dropped or not (the routers forget them all)."""
        self.entries.clear()
        self.untold.clear()
