"""One script cache for the whole server, as Redis has (issue 16).

Each shard keeps the scripts it compiled (shards/luaenv.py Scripting.scripts): SCRIPT
LOAD goes to every shard, but EVAL caches where it ran, and a shard that restarted has
none. So an EVALSHA answered NOSCRIPT by one shard asks every process of the server
over the peer mesh (server/pubsub.py, OP_SCRIPT_BODY) whether its shard has the body
(a shard port answers from its shard's cache, a router has none); if one has, the body
is loaded on every shard (SCRIPT LOAD, ahead of the retry on each shard's link, so the
caches agree again) and the EVALSHA runs again into the same reply place. Only when no
shard has the script does the client get NOSCRIPT, as from one Redis. A shard port
does the same for its cluster clients, loading the body into its own shard.

SCRIPT EXISTS through the router answers 1 when any shard has the script, and SCRIPT
FLUSH flushes every shard; on a shard port they ask (EXISTS) or tell (FLUSH) every
process the same way (`exists_everywhere`, `flush_everywhere`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

from durakv.shards.luaenv import scripting_of, sha1hex

if TYPE_CHECKING:
    from durakv.server.front import Front

logger = logging.getLogger("durakv.router")

OP_SCRIPT_BODY = "sb"  # sha -> this process's shard's body of the script, or None
NOSCRIPT_PREFIX = b"-NOSCRIPT"


def install(front: Front) -> None:
    """Answer the mesh's script requests in this process (a router has no scripts)."""
    front.pubsub.extra_ops[OP_SCRIPT_BODY] = lambda _op, args: body_here(front, args[0])


def body_here(front: Front, sha: bytes) -> bytes | None:
    shard = getattr(front, "shard", None)  # a shard port's process holds its shard
    if shard is None or shard.db.scripting is None:
        return None
    cached = scripting_of(shard.db).scripts.get(sha.lower())
    return None if cached is None else cached[0]


def find_body(front: Front, sha: bytes, done: Callable[[bytes | None], None]) -> None:
    """Ask every process for the script's body; `done` gets it (checked against the sha) or None."""
    sha = sha.lower()
    local = body_here(front, sha)
    if local is not None:
        done(local)
        return

    def answered(parts: list[Any]) -> None:
        for part in parts:
            if isinstance(part, bytes) and sha1hex(part) == sha:
                done(part)
                return
        done(None)

    front.pubsub.ask_peers(OP_SCRIPT_BODY, [sha], answered)
