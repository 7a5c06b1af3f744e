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
holds the client's later requests until it is done. Limit: the first time, the client's
requests sent after the script, before the shard's answer came back, have already gone
to their shards and may run before its retry; those after it wait for the retry.
Holding every script's followers instead costs a pipeline of scripts one round trip
per script (measured: EVAL P16 through 2 shards 11-22k/s -> 2.2-2.6k/s).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

from durakv.server.links import Pending
from durakv.server.script_cache import NOSCRIPT_PREFIX, find_body
from durakv.shards.frames import PROTO_INTERNAL, VERB_AS_USER
from durakv.shards.script_undo import NONLOCAL_RETRY_REPLY
from durakv.shards.table import lookup

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

    __slots__ = ("run", "then", "shard", "kind", "moved", "healed")

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


def _filled(pending: Pending, data: bytes | bytearray) -> None:
    assert type(pending) is ScriptRetry, "on_fill of a ScriptRetry"
    if data[:1] == b"-":
        if data[:12] == _MARK and not pending.moved:
            run = pending.run
            pending.client.router.reaching.add(run[2:] if run[0] == VERB_AS_USER else run)
            pending.moved = True
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
    then = pending.then
    if then is not None:
        then(pending, data)
    else:
        pending.data = data
        pending.client.reply_ready()


def _hold(pending: ScriptRetry) -> None:
    """The client's requests not yet sent wait for this reply."""
    client = pending.client
    if client.blocked_pending is None:
        client.blocked_pending = pending
        client.blocked_shard = -1


def _found(pending: ScriptRetry, body: bytes | None, noscript: bytes | bytearray) -> None:
    """The script's body from another shard (None: no shard has it: NOSCRIPT, as from one Redis)."""
    if body is None:
        _filled(pending, noscript)
        return
    router = pending.client.router
    # Ahead of the retry on each link: every cache has it again (a shard port: its own shard's).
    for link in [router.links[pending.shard]] if router.cluster_node else router.links:
        link.submit(None, PROTO_INTERNAL, [b"SCRIPT", b"LOAD", body], Pending(None, on_fill=_log_refusal))
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
