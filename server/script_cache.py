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
from durakv.shards.resp import encode
from durakv.shards.t_script import flush_option_ok

if TYPE_CHECKING:
    from durakv.server.client import Client
    from durakv.server.front import Front

logger = logging.getLogger("durakv.router")

OP_SCRIPT_BODY = "sb"  # sha -> this process's shard's body of the script, or None
OP_SCRIPT_EXISTS = "se"  # shas -> whether this process's shard has each (a router: None)
OP_SCRIPT_FLUSH = "sf"  # this process's shard forgets every script
NOSCRIPT_PREFIX = b"-NOSCRIPT"


def install(front: Front) -> None:
    """Answer the mesh's script requests in this process (a router has no scripts)."""
    ops = front.pubsub.extra_ops
    ops[OP_SCRIPT_BODY] = lambda _op, args: body_here(front, args[0])
    ops[OP_SCRIPT_EXISTS] = lambda _op, args: _exists_here(front, args[0])
    ops[OP_SCRIPT_FLUSH] = lambda _op, _args: _flush_here(front)


def _scripts_here(front: Front) -> dict[bytes, Any] | None:
    shard = getattr(front, "shard", None)  # a shard port's process holds its shard
    return None if shard is None else scripting_of(shard.db).scripts


def _exists_here(front: Front, shas: list[bytes]) -> list[int] | None:
    scripts = _scripts_here(front)
    return None if scripts is None else [int(sha.lower() in scripts) for sha in shas]


def _flush_here(front: Front) -> None:
    scripts = _scripts_here(front)
    if scripts is not None:
        scripts.clear()


def node_command(front: Front, client: Client, argv: list[bytes]) -> bool:
    """SCRIPT EXISTS and SCRIPT FLUSH on a shard port: over every process's shard, as
    through the router (True: answered here)."""
    sub = argv[1].lower() if len(argv) > 1 else b""
    if sub == b"exists":
        shas = argv[2:]

        def merge(parts: list[Any]) -> bytes:
            found = [0] * len(shas)
            for part in parts:
                if isinstance(part, list) and len(part) == len(shas):
                    found = [a | b for a, b in zip(found, part)]
            return encode(found, client.proto)

        front.pubsub.ask_all(client, OP_SCRIPT_EXISTS, [shas], merge)
        return True
    if sub == b"flush" and flush_option_ok(argv):
        front.pubsub.ask_peers(OP_SCRIPT_FLUSH, [], lambda _parts: None)  # this shard flushes as it answers
    return False


def body_here(front: Front, sha: bytes) -> bytes | None:
    scripts = _scripts_here(front)
    cached = None if scripts is None else scripts.get(sha.lower())
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
