"""A script sent through the router runs as on one Redis even when its shard cannot
run it alone (issue 16): it reached another shard's key, or its EVALSHA's script is
cached on another shard only.

The router sends EVAL/EVALSHA/FCALL whose declared keys are all on one shard to that
shard (the fast path, at one shard's speed). A script may still touch keys it did not
declare; when one is another shard's, the shard puts back whatever the script did
(shards/script_undo.py) and answers NONLOCAL_RETRY instead of a reply. The script's
place in the client's reply queue is a `ScriptRetry`: on that answer it starts the
script as a cross-shard transaction (server/txn.py), whose executor finds the
undeclared keys as it runs and locks them, and whose reply fills the same place, so
the client sees one reply. On NOSCRIPT it looks for the script on every shard
(server/script_cache.py), loads it on every shard and sends the EVALSHA again. Only on
a router over several shards: a shard port keeps Redis Cluster's "non local key" error.

A script that once reached another shard's key is remembered (`Reaching`, by its body,
sha or function name) and from then on goes straight to the cross-shard path, which
holds the client's later requests until it is done.

The first time, the client's requests pipelined after the script must not run before
its retry either (one Redis runs them after it). Those sent to the script's own shard
came behind it on the same link: the shard fences the client when it sends the script
back (shards/script_fence.py) and runs them once this module tells it the retry is done
(VERB_SCRIPT_UNFENCE, after the retry's COMMIT on the same link). Those for any other
shard, or for no shard, are not sent while the script is out (`holds`: the client's
`script_out`), since it may reach that shard: only a script's followers for another
shard wait for its reply, a pipeline of scripts on one shard does not, and neither does
one of scripts whose text shows they keep to their declared keys (server/script_scope.py).
A pipeline of other scripts spread over shards costs a round trip per change of shard
(scripts/eval_bench.py, load ~20: 2.4-3.9k -> 1.1-1.6k EVAL/s; router CPU 15-18 -> 54-59 µs).
An EVALSHA sent to a shard not known to have its script (script_scope.py `homes`) may be
answered NOSCRIPT and sent again: while it is out, every later request of its client
waits (`holds_all`), those for its own shard too, which would run there before the re-send.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

from durakv.server.links import Countdown, Pending
from durakv.server.script_cache import NOSCRIPT_PREFIX, body_here, find_body
from durakv.shards.frames import PROTO_INTERNAL, VERB_AS_USER, VERB_SCRIPT_UNFENCE
from durakv.shards.luaenv import sha1hex
from durakv.shards.resp import ReplyError
from durakv.shards.script_undo import NONLOCAL_RETRY_REPLY
from durakv.shards.slots import key_slot
from durakv.shards.table import SHARD, lookup

if TYPE_CHECKING:
    from durakv.server.client import Client

logger = logging.getLogger("durakv.router")

_MARK = NONLOCAL_RETRY_REPLY[:12]
MAX_REACHING_SCRIPTS = 1024  # remembered scripts; the oldest is forgotten past it
ACROSS_SHARDS = -1  # ScriptRetry.shard of a script run as a cross-shard transaction


class ScriptRetry(Pending):
    """The reply place of a script: runs it across shards when its shard answers
    NONLOCAL_RETRY, and finds an EVALSHA's script elsewhere on NOSCRIPT (each once).
    The link calls on_fill (it sets `data` itself only when there is none). Made for
    every script through a router over several shards: its __init__ is kept minimal."""

    __slots__ = ("run", "then", "shard", "kind", "moved", "healed", "fenced", "holds_all", "drops_seen")

    def __init__(self, client: Client, run: list[bytes], shard: int, kind: int,
                 then: Callable | None = None) -> None:
        self.data = None  # Pending's, set here rather than by a super() call (per script)
        self.client = client
        self.on_fill = _filled
        self.run = run  # the request as sent (VERB_AS_USER's form for an ACL user)
        self.then = then  # what fills it otherwise (an ACL user's: server/acl.py script_reply)
        self.shard = shard  # where it runs, or ACROSS_SHARDS
        self.kind = kind  # SCRIPT_EVAL or SCRIPT_FUNCTION (server/links.py times it)
        self.moved = False  # it already runs across shards
        self.healed = False  # its NOSCRIPT was already looked into
        self.fenced = -1  # the shard that sent it back and holds its client's later requests
        self.holds_all = False  # an EVALSHA that may be sent again: every later request waits (`holds`)
        # With holds_all: its link's ShardLink.scripts_dropped when sent (set by the client, not here).
        self.drops_seen: int


def _filled(pending: Pending, data: bytes | bytearray) -> None:
    assert type(pending) is ScriptRetry, "on_fill of a ScriptRetry"
    if data[:1] == b"-":
        if data[:12] == _MARK and not pending.moved:
            run = pending.run
            pending.client.router.reaching.add(run[2:] if run[0] == VERB_AS_USER else run)
            pending.moved = True
            pending.fenced = pending.shard  # shards/script_fence.py
            pending.shard = ACROSS_SHARDS
            _start_across_shards(pending)
            return
        if data[:9] == NOSCRIPT_PREFIX and not pending.healed:
            run = pending.run
            argv = run[2:] if run[0] == VERB_AS_USER else run
            if argv[0].lower().startswith(b"evalsha"):
                pending.healed = True
                _hold(pending)
                find_body(pending.client.router, argv[1], lambda body: _found(pending, body, data))
                return
    if pending.holds_all and pending.shard >= 0 and data[:1] != b"-":  # the shard has it: its next
        router = pending.client.router                                   # EVALSHAs there need not hold,
        if router.links[pending.shard].scripts_dropped == pending.drops_seen:  # unless a drop came since
            run = pending.run  # (told once its batch is over, it may pass this reply, held for a sync)
            router.script_scopes.note_cached(run[3 if run[0] == VERB_AS_USER else 1], 1 << pending.shard)
    if pending.fenced >= 0:  # after the retry's COMMIT on that link: what the client sent since runs
        link = pending.client.router.links[pending.fenced]
        pending.fenced = -1
        link.submit(None, PROTO_INTERNAL, [VERB_SCRIPT_UNFENCE, b"%d" % pending.client.id],
                    Pending(None, on_fill=_log_refusal))
    then = pending.then
    if then is not None:
        then(pending, data)
    else:
        pending.data = data
        pending.client.reply_ready()


def holds(client: Client, argv: list[bytes]) -> bool:
    """Whether the client's next request waits for its script out on one shard
    (`Client.script_out`): any request but a keyed one for that same shard (those
    wait there if the script is sent back, shards/script_fence.py). Called only while
    a script is out."""
    out = client.script_out
    assert out is not None, "holds is asked only while a script is out"
    if out.data is not None:
        client.script_out = None
        return False
    if out.holds_all:
        return True
    try:
        cmd = lookup(argv)
        if cmd.where != SHARD or client.multi is not None:
            return True
        indexes = cmd.key_indexes(argv)
    except ReplyError:
        return False  # answered with its error, in its place
    if not indexes:
        return True
    owner = client.router.slot_owner
    shard = out.shard
    for i in indexes:
        if owner[key_slot(argv[i])] != shard:
            return True
    return False


def _hold(pending: Pending) -> None:
    """The client's requests not yet sent wait for this reply."""
    client = pending.client
    if client.blocked_pending is None:
        client.blocked_pending = pending
        client.blocked_shard = -1


def queue_evalsha(client: Client, sha: bytes) -> None:
    """EVALSHA queued in MULTI (router over several shards, or a shard port): its QUEUED
    waits, and the client's EXEC with it, until every shard (a shard port: its own) has
    the script when any shard has it (one cache for the server, as one Redis:
    server/script_cache.py); an unknown one still fails inside EXEC with NOSCRIPT, as in
    Redis."""
    router = client.router
    if router.cluster_node and body_here(router, sha) is not None:
        client.push(b"+QUEUED\r\n")  # its own shard has it
        return
    pending = Pending(client)
    client.replies.append(pending)
    _hold(pending)

    links = [router.links[router.home_shard]] if router.cluster_node else router.links

    def found(body: bytes | None) -> None:
        if body is not None:  # ahead of the EXEC on every link (a shard port: its own shard's)
            for link in links:
                link.submit(None, PROTO_INTERNAL, [b"SCRIPT", b"LOAD", body], Pending(None, on_fill=_log_refusal))
        pending.fill(b"+QUEUED\r\n")

    # The body is asked of the processes over their peer sockets, which may overtake the
    # links: a PING on every link first lets the client's earlier requests there (an EVAL
    # of this very script, pipelined before the MULTI) run and cache it, as in one Redis.
    passed = Countdown(len(links), lambda: find_body(pending.client.router, sha, found))
    for link in links:
        link.submit(None, PROTO_INTERNAL, [b"PING"], Pending(None, on_fill=passed.tick))


def _found(pending: ScriptRetry, body: bytes | None, noscript: bytes | bytearray) -> None:
    """The script's body from another shard (None: no shard has it: NOSCRIPT, as from one Redis)."""
    if body is None:
        _filled(pending, noscript)
        return
    router = pending.client.router
    # Ahead of the retry on each link: every cache has it again (a shard port: its own shard's).
    links = [router.links[pending.shard]] if router.cluster_node else router.links
    for link in links:
        link.submit(None, PROTO_INTERNAL, [b"SCRIPT", b"LOAD", body], Pending(None, on_fill=_log_refusal))
    if not router.cluster_node:
        router.script_scopes.note_cached(sha1hex(body), (1 << len(links)) - 1)
    if pending.shard == ACROSS_SHARDS:
        _start_across_shards(pending)
    else:
        router.links[pending.shard].submit(pending.client, pending.client.proto, pending.run, pending,
                                           script=pending.kind)


def start_across_shards(client: Client, run: list[bytes], kind: int, then: Callable | None) -> ScriptRetry:
    """An EVALSHA whose keys span shards (or none): a cross-shard run whose NOSCRIPT is healed too."""
    pending = ScriptRetry(client, run, ACROSS_SHARDS, kind, then)
    pending.moved = True
    client.replies.append(pending)
    _start_across_shards(pending)
    return pending


def _start_across_shards(pending: ScriptRetry) -> None:
    """Start the script as a cross-shard transaction of its declared keys (the
    executor finds the others); its reply fills `pending`."""
    run = pending.run
    argv = run[2:] if run[0] == VERB_AS_USER else run
    keys = lookup(argv).key_indexes(argv)
    pending.client.router.retry_script(pending.client, pending, run, [argv[i] for i in keys])


def _log_refusal(_pending: Pending, data: bytes) -> None:
    if data[:1] == b"-":
        logger.warning("router: a shard refused a script found on another shard: %r", bytes(data[:200]))


class Reaching:
    """The scripts that reached another shard's key (bounded, oldest forgotten first)."""

    __slots__ = ("ids",)

    def __init__(self) -> None:
        self.ids: dict[bytes, None] = {}

    def __bool__(self) -> bool:
        return bool(self.ids)

    def add(self, argv: list[bytes]) -> None:
        ids = self.ids
        if len(ids) >= MAX_REACHING_SCRIPTS:
            del ids[next(iter(ids))]
        ids[_identity(argv)] = None

    def __contains__(self, argv: list[bytes]) -> bool:
        return _identity(argv) in self.ids


def _identity(argv: list[bytes]) -> bytes:
    """EVAL's body, EVALSHA's sha, FCALL's function name, each in its own namespace."""
    name = argv[0].lower()
    if name.startswith(b"evalsha"):
        return b"s" + argv[1].lower()
    return (b"b" if name.startswith(b"eval") else b"f") + argv[1]
