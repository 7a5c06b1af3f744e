"""One script cache for the whole server, as Redis has (issue 16).

Each shard keeps the scripts it compiled (shards/luaenv.py Scripting.scripts): SCRIPT
LOAD goes to every shard, but EVAL caches where it ran, and a shard that restarted has
none. So an EVALSHA answered NOSCRIPT by one shard asks every process of the server
over the peer mesh (server/pubsub.py, OP_SCRIPT_BODY) whether its shard has the body
(a shard port answers from its shard's cache, a router has none); if one has, the body
is loaded on every shard (SCRIPT LOAD, ahead of the retry on each shard's link, so the
caches agree again) and the EVALSHA runs again into the same reply place. Only when no
shard has the script does the client get NOSCRIPT, as from one Redis. A shard port
does the same for its cluster clients, loading the body into its own shard; an EVALSHA
queued in MULTI is found before its QUEUED (server/script_retry.py queue_evalsha).

SCRIPT EXISTS through the router answers 1 when any shard has the script, and SCRIPT
FLUSH flushes every shard and tells every other process (`router_flush`: routers forget
which shards they knew to have a script); on a shard port they ask (EXISTS) or tell
(FLUSH) every process the same way (`node_command`). A script a shard drops from its
full cache stays runnable there until every router knows (shards/script_evict.py).
Functions are durable and every FUNCTION change through the router goes to every
shard; one made on a shard port is followed by that shard's FUNCTION DUMP, which every
other primary restores (FLUSH policy), so an FCALL finds the function wherever its
keys route.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, Callable

import hiredis

from durakv.server.links import LOST, Countdown, Pending
from durakv.shards.frames import PROTO_INTERNAL, encode_internal
from durakv.shards.luaenv import scripting_of, sha1hex
from durakv.shards.resp import ReplyError, encode
from durakv.shards.t_script import flush_option_ok

if TYPE_CHECKING:
    from durakv.server.client import Client
    from durakv.server.front import Front
    from durakv.server.router_view import RouterView
    from durakv.shards.table import Merge

logger = logging.getLogger("durakv.router")

OP_SCRIPT_BODY = "sb"  # sha -> this process's shard's body of the script, or None
OP_SCRIPT_EXISTS = "se"  # shas -> whether this process's shard has each (a router: None)
OP_SCRIPT_FLUSH = "sf"  # this process's shard forgets every script
OP_FUNCTION_SET = "fs"  # a FUNCTION DUMP payload: this process's shard (a primary) restores it, FLUSH policy
OP_FUNCTIONS_CHANGED = "fc"  # a FUNCTION change through a router: other routers forget their verdicts
OP_FUNCTIONS_SETTLED = "fd"  # change id: a change is done on every shard: routers judge the shards' libraries
NOSCRIPT_PREFIX = b"-NOSCRIPT"
FUNCTION_CHANGES = (b"load", b"delete", b"flush", b"restore")
FUNCTION_CHANGE_COMMANDS = frozenset(f"function|{sub.decode()}" for sub in FUNCTION_CHANGES)  # table names
# A peer that did not take a settled notice (restarting, or its stream in pubsub's PEER_RETRY_PAUSE_MS of
# 500 ms after a failed connect) is told again once that pause is over, then after twice as long each
# time (0.6, 1.2, 2.4... s): at most this many tells in all (~19 s).
MAX_SETTLED_TELLS = 6
SETTLED_RETRY_PAST_PAUSE_MS = 100
# Test only: a FUNCTION change through a router reaches shard 0 at once, the other shards once this file
# exists (looked for every HOLD_POLL_MS, at most HOLD_MAX_MS): a router can start while the shards differ.
TEST_HOLD_PATH = os.environ.get("DURAKV_TEST_FUNCTION_CHANGE_HOLD")
HOLD_POLL_MS = 20
HOLD_MAX_MS = 30_000


def install(front: Front) -> None:
    """Answer the mesh's script requests in this process (a router has no scripts)."""
    ops = front.pubsub.extra_ops
    ops[OP_SCRIPT_BODY] = lambda _op, args: body_here(front, args[0])
    ops[OP_SCRIPT_EXISTS] = lambda _op, args: _exists_here(front, args[0])
    ops[OP_SCRIPT_FLUSH] = lambda _op, _args: _flush_here(front)
    ops[OP_FUNCTION_SET] = lambda _op, args: _take_library_set(front, args[0])
    ops[OP_FUNCTIONS_CHANGED] = lambda _op, _args: _forget_functions(front)
    ops[OP_FUNCTIONS_SETTLED] = lambda _op, args: _settled_here(front, args[0])


def _scripts_here(front: Front | RouterView) -> dict[bytes, Any] | None:
    shard = getattr(front, "shard", None)  # a shard port's process holds its shard
    return None if shard is None else scripting_of(shard.db).scripts


def _exists_here(front: Front, shas: list[bytes]) -> list[int] | None:
    scripts = _scripts_here(front)
    return None if scripts is None else [int(sha.lower() in scripts) for sha in shas]


def _send_library_set(front: Front, then: Callable[[], None]) -> Callable[[Pending, bytes], None]:
    """The fill of this shard's FUNCTION DUMP after a change: every other primary restores
    it (each answers once its restore is durable, at most the mesh's timeout), then every
    router is told the change is settled (tell_settled), then `then`."""
    def send(_pending: Pending, data: bytes) -> None:
        reader = hiredis.Reader()
        reader.feed(bytes(data))
        payload = reader.gets()
        if not isinstance(payload, bytes):
            logger.error("node: FUNCTION DUMP after a change answered %r: other shards keep theirs", bytes(data[:200]))
            then()
            return
        front.pubsub.ask_peers(OP_FUNCTION_SET, [payload], lambda _parts: tell_settled(front, then))
    return send


def _take_library_set(front: Front, payload: bytes) -> Any:
    """Another shard's libraries after a FUNCTION change on its port: this primary takes
    them, answering once they are durable (a pubsub Later); a router forgets its verdicts
    on functions (it judges again on the settled notice that follows)."""
    from durakv.server.pubsub import Later  # here: pubsub imports client, which imports this module
    _forget_functions(front)
    shard = getattr(front, "shard", None)
    if shard is None or shard.replica is not None:
        return True  # a router holds none; a replica takes its primary's from the log
    later = Later()

    def restored(_pending: Pending, data: bytes) -> None:
        _log_refusal(data)
        later.set(True)

    getattr(front, "local").submit(None, PROTO_INTERNAL, [b"FUNCTION", b"RESTORE", payload, b"FLUSH"],  # noqa: B009
                                   Pending(None, on_fill=restored))
    return later


def _refused(data: bytes) -> bytes | None:
    """A shard's internal reply's error text (None: it succeeded)."""
    from durakv.server.front import decode_internal  # here: front imports client, which imports this module
    try:
        decode_internal(data)
    except ReplyError as e:
        return bytes(e.message)
    return None


def _log_refusal(data: bytes) -> None:
    error = _refused(data)
    if error is not None:
        logger.warning("node: a shard refused another shard's libraries: %s", error[:200].decode(errors="replace"))


def tell_settled(front: Front | RouterView, done: Callable[[], None]) -> None:
    """A FUNCTION change made here is done on every shard: every other process is told
    (OP_FUNCTIONS_SETTLED, with an id of this change), and `done` runs once the first
    telling is answered. A router judges the shards' libraries on a change id new to it;
    a peer that did not answer (it was restarting, or its stream was paused after a failed
    connect: it may have missed the change's other notices while asking the shards for
    their libraries mid-change) is told again, up to MAX_SETTLED_TELLS times in all."""
    from durakv.server.pubsub import PEER_RETRY_PAUSE_MS  # here: pubsub imports client, which imports this module
    change = os.urandom(8)
    pubsub = front.pubsub

    def tell(tells: int, delay_ms: int, then: Callable[[], None] | None) -> None:
        def answered(parts: list[Any]) -> None:
            if then is not None:
                then()
            missing = len(pubsub.peers) - sum(1 for part in parts if part is True)
            if missing and tells < MAX_SETTLED_TELLS:
                front.after(delay_ms / 1000, lambda: tell(tells + 1, delay_ms * 2, None))
            elif missing:
                logger.warning("router: %d processes did not take a FUNCTION change's settled notice in %d tries;"
                               " they judge libraries when their links next come up", missing, tells)
        pubsub.ask_peers(OP_FUNCTIONS_SETTLED, [change], answered)

    tell(1, PEER_RETRY_PAUSE_MS + SETTLED_RETRY_PAST_PAUSE_MS, done)


def _settled_here(front: Front, change: bytes) -> bool:
    """A FUNCTION change elsewhere is done on every shard: a router that had not heard of
    this one forgets its verdicts on functions (it may have missed the change's first
    notice and judged the libraries before it) and judges the shards' libraries."""
    scopes = front.script_scopes
    if scopes is not None and not front.cluster_node and scopes.first_settled(change):
        scopes.forget_functions()
        refresh_functions(front)
    return True


def _flush_here(front: Front) -> None:
    """A SCRIPT FLUSH through another process: a shard port's shard forgets its scripts,
    a router which shards it knew to have each (script_scope.py `homes`)."""
    shard = getattr(front, "shard", None)
    if shard is not None:
        state = scripting_of(shard.db)
        state.scripts.clear()
        state.evicting.clear()
    scopes = front.script_scopes
    if scopes is not None:
        scopes.homes.clear()


def router_flush(front: RouterView, client: Client, argv: list[bytes], merge: Merge) -> None:
    """SCRIPT FLUSH through a router: every shard flushes, and every other process
    forgets what it knew cached (other routers' `homes`), before the reply, so an
    EVALSHA through any router after it holds its followers (server/script_retry.py)."""
    _fanout_telling_peers(front, client, argv, lambda parts: merge(parts, client.proto), OP_SCRIPT_FLUSH)


def router_function_change(front: RouterView, client: Client, argv: list[bytes], merge: Merge) -> None:
    """FUNCTION LOAD/DELETE/FLUSH/RESTORE through a router: every shard makes the change,
    and every other router forgets what it judged of functions before the reply (so an
    FCALL of a function replaced elsewhere holds its followers, server/script_scope.py);
    this router judges a loaded library's functions once every shard has it, and tells
    every other router so (OP_FUNCTIONS_SETTLED) before the reply: each asks the shards
    for their libraries on its links ahead of any request its clients send after it."""
    from durakv.server.front import Gather  # here: front imports client, which imports this module
    scopes = front.script_scopes
    loads = argv[1].lower() == b"load"
    scopes.forget_library(argv[-1] if loads else None)  # its functions may be replaced meanwhile
    links = front.links

    def finish(parts: list[Any]) -> bytes:
        reply = merge(parts[:len(links)], client.proto)
        if loads and reply[:1] != b"-":
            scopes.note_library(argv[-1])
        refresh_functions(front)  # the other libraries' verdicts too (a DELETE or FLUSH forgot them all)
        return reply

    gather = Gather(client, len(links) + 2, finish)
    settled = gather.part(len(links) + 1)
    # Every shard answered: the change is done (or refused) everywhere.
    answered = Countdown(len(links), lambda: tell_settled(front, lambda: settled.fill(encode_internal(True, None))))

    def on_shard(part: Pending) -> Pending:
        def fill(_pending: Pending, data: bytes) -> None:
            part.fill(data)
            answered.tick()
        return Pending(client, on_fill=fill)

    def send(shards: range) -> None:
        for i in shards:
            links[i].submit(client, PROTO_INTERNAL, argv, on_shard(gather.part(i)))

    hold = TEST_HOLD_PATH
    if hold is None:
        send(range(len(links)))
    else:
        send(range(1))
        _when_file(front, hold, HOLD_MAX_MS // HOLD_POLL_MS, lambda: send(range(1, len(links))))
    told = gather.part(len(links))
    front.pubsub.ask_peers(OP_FUNCTIONS_CHANGED, [], lambda _parts: told.fill(encode_internal(True, None)))


def _when_file(front: RouterView, path: str, polls: int, then: Callable[[], None]) -> None:
    """Test only (TEST_HOLD_PATH): `then` once `path` exists, or after `polls` looks."""
    if os.path.exists(path) or polls <= 0:
        then()
    else:
        front.after(HOLD_POLL_MS / 1000, lambda: _when_file(front, path, polls - 1, then))


def _fanout_telling_peers(front: RouterView, client: Client, argv: list[bytes],
                          finish: Callable[[list[Any]], bytes], op: str) -> None:
    """argv to every shard and `op` to every other process; the reply, `finish` of the
    shards' parts, once all have answered (a silent peer: after the mesh's timeout)."""
    from durakv.server.front import Gather  # here: front imports client, which imports this module
    links = front.links
    gather = Gather(client, len(links) + 1, lambda parts: finish(parts[:-1]))
    for i, link in enumerate(links):
        link.submit(client, PROTO_INTERNAL, argv, gather.part(i))
    peers = gather.part(len(links))
    front.pubsub.ask_peers(op, [], lambda _parts: peers.fill(encode_internal(True, None)))


def _forget_functions(front: Front) -> None:
    """A FUNCTION change through another process: a router's verdicts on functions go."""
    scopes = front.script_scopes
    if scopes is not None:
        scopes.forget_functions()


def refresh_functions(front: Front | RouterView) -> None:
    """A router asks every shard for its libraries (FUNCTION LIST WITHCODE) and judges
    their functions (server/script_scope.py judge_shards_libraries), so an FCALL of a
    function loaded through another process, or before this router started, need not
    hold its client's other requests. Asked when the links come up and when another
    process's FUNCTION change is done on every shard (OP_FUNCTIONS_SETTLED; its
    OP_FUNCTIONS_CHANGED or OP_FUNCTION_SET came before: what was asked for earlier is not
    judged). Once per generation of changes seen."""
    scopes = front.script_scopes
    if scopes is None or front.cluster_node or not all(link.up for link in front.links):
        return  # a router whose links are not all up asks once the last comes up
    generation = scopes.functions_generation
    if scopes.functions_asked == generation:
        return
    scopes.functions_asked = generation
    links = front.links
    per_shard: list[list[bytes] | None] = [None] * len(links)

    def judge() -> None:
        if scopes.functions_asked == generation:
            scopes.functions_asked = -1  # asked again at this generation only if not judged below
        answered = [codes for codes in per_shard if codes is not None]
        if len(answered) == len(links) and scopes.judge_shards_libraries(generation, answered):
            scopes.functions_asked = generation

    all_in = Countdown(len(links), judge)

    def got(index: int, data: bytes) -> None:
        per_shard[index] = _library_codes(index, data)
        all_in.tick()

    for i, link in enumerate(links):
        link.submit(None, 2, [b"FUNCTION", b"LIST", b"WITHCODE"],
                    Pending(None, on_fill=lambda _pending, data, i=i: got(i, data)))


def _library_codes(shard: int, data: bytes) -> list[bytes] | None:
    """The library texts in a RESP2 FUNCTION LIST WITHCODE reply (None: not one)."""
    reader = hiredis.Reader()
    reader.feed(bytes(data))
    reply = reader.gets()
    if not isinstance(reply, list):
        logger.warning("router: shard %d's FUNCTION LIST answered %r: its functions are not judged",
                       shard, bytes(data[:200]))
        return None
    codes = []
    for library in reply:
        fields = dict(zip(library[::2], library[1::2])) if isinstance(library, list) else {}
        code = fields.get(b"library_code")
        if not isinstance(code, bytes):
            return None
        codes.append(code)
    return codes


def node_command(front: Front, client: Client, argv: list[bytes], merge: Merge) -> bool:
    """SCRIPT EXISTS and SCRIPT FLUSH on a shard port: over every process's shard, as
    through the router; a FUNCTION change runs here, then every other shard takes this
    shard's library set (True: answered here)."""
    sub = argv[1].lower() if len(argv) > 1 else b""
    if argv[0].lower() == b"function":
        if sub not in FUNCTION_CHANGES:
            return False
        from durakv.server.front import Gather  # here: front imports client, which imports this module
        local = getattr(front, "local")  # noqa: B009  (a shard port's LocalLink)

        # The reply waits until every other primary has the change and every router was told.
        gather = Gather(client, 2, lambda parts: merge(parts[:1], client.proto))
        here, spread = gather.part(0), gather.part(1)

        def spread_done() -> None:
            spread.fill(encode_internal(True, None))

        def changed(_pending: Pending, data: bytes) -> None:
            here.fill(data)
            if data is LOST or _refused(data) is not None:
                spread_done()
            else:
                dumped = Pending(None, on_fill=_send_library_set(front, spread_done))
                local.submit(None, 2, [b"FUNCTION", b"DUMP"], dumped)

        local.submit(client, PROTO_INTERNAL, argv, Pending(client, on_fill=changed))
        return True
    if sub == b"exists":
        shas = argv[2:]

        def any_shard(parts: list[Any]) -> bytes:
            found = [0] * len(shas)
            for part in parts:
                if isinstance(part, list) and len(part) == len(shas):
                    found = [a | b for a, b in zip(found, part)]
            return encode(found, client.proto)

        front.pubsub.ask_all(client, OP_SCRIPT_EXISTS, [shas], any_shard)
        return True
    if sub == b"flush" and flush_option_ok(argv):  # this shard flushes in its turn; the reply waits for every peer
        from durakv.server.front import Gather  # here: front imports client, which imports this module
        gather = Gather(client, 2, lambda parts: merge(parts[:1], client.proto))
        getattr(front, "local").submit(client, PROTO_INTERNAL, argv, gather.part(0))  # noqa: B009
        peers = gather.part(1)
        front.pubsub.ask_peers(OP_SCRIPT_FLUSH, [], lambda _parts: peers.fill(encode_internal(True, None)))
        return True
    return False


def body_here(front: Front | RouterView, sha: bytes) -> bytes | None:
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
