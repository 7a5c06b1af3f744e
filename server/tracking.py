"""Client-side caching (Redis' tracking.c): CLIENT TRACKING, CACHING, GETREDIR and
TRACKINGINFO, and the invalidation messages, answered by the front (router or
shard port) the client is connected to.

The front keeps the tracking table: which keys each client read (default mode,
noted when the command is dispatched, which may invalidate a key once more than
Redis would but never misses a write), and the prefixes of BCAST clients. The
shards report the keys they change (shards/tracking.py) once a front has a
tracking client, after the write is durable and before its reply, so a client
whose write invalidates a key it read gets the push after that write's reply, as
in Redis 7.0. A REDIRECT target may be a client of any router or shard port
(client ids are unique across them): one of another front is asked for over the
pub/sub peer mesh (server/pubsub.py), both whether it exists (CLIENT TRACKING) and,
with each invalidation, to take it. A target that is gone (or whose process does
not answer) makes the client's invalidations `tracking-redir-broken` pushes."""

from __future__ import annotations

import logging
from itertools import islice
from typing import TYPE_CHECKING, Any

import durakv.server.conn_commands  # noqa: F401  (declares the CLIENT container)
from durakv.server.client import NODE_CLIENT_ID_BASE, Client
from durakv.server.links import LOST, Pending
from durakv.shards.args import ERR_SYNTAX
from durakv.shards.frames import PROTO_INTERNAL, VERB_TRACKING
from durakv.shards.numbers import parse_ll
from durakv.shards.resp import OK, Map, Push, ReplyError, SetReply, encode
from durakv.shards.table import ROUTER, Command, command, lookup
from durakv.shards.tracking import FLUSH_MARK, READ_MARK

if TYPE_CHECKING:
    from collections.abc import Iterable

logger = logging.getLogger("durakv.router")

# An invalidation: a RESP3 push, or (RESP2, to a subscribed REDIRECT target) a message on
# __redis__:invalidate; the keys (or a null, after FLUSHALL) follow.
PUSH_HEAD = b">2\r\n$10\r\ninvalidate\r\n"
MESSAGE_HEAD = b"*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n"
MAX_QUEUED_PUSHES = 64 * 1024  # a client's pushes waiting behind a pending reply (as pub/sub's bound)
SCRIPT_COMMANDS = frozenset({"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"})
MAX_FLUSH_ECHOES = 1024  # FLUSHALLs whose other shards' reports are awaited (more: some shard is down)
NULL_BY_PROTO = {2: b"$-1\r\n", 3: b"_\r\n"}
# Requests to the other fronts over the peer mesh (server/pubsub.py's extra_ops).
OP_HAS_CLIENT = "th"  # client id -> whether it is connected here
OP_INVALIDATE = "ti"  # target id, keys (None: all), the tracking client's protocol -> delivered here


class ClientTracking:
    """One client's CLIENT TRACKING state (Client.tracking; None while it is off)."""

    __slots__ = ("redirect", "bcast", "optin", "optout", "noloop", "caching", "prefixes", "broken", "script_reads")

    def __init__(self, redirect: int, bcast: bool, optin: bool, optout: bool, noloop: bool) -> None:
        self.redirect = redirect  # 0: none
        self.bcast = bcast
        self.optin = optin
        self.optout = optout
        self.noloop = noloop
        self.caching = False  # CLIENT CACHING YES|NO given for the next command
        self.prefixes: list[bytes] = []  # BCAST only
        self.broken = False  # the redirect target went away
        # Whether the keys a script's reads report (shards/tracking.py) are tracked:
        # OPTIN/OPTOUT as they stood when the script was sent.
        self.script_reads = True

    def list_flags(self) -> str:
        """CLIENT LIST's flags for tracking: t, R (broken redirect), B (BCAST)."""
        return "t" + ("R" if self.broken else "") + ("B" if self.bcast else "")

    def note(self, client: Client, cmd: Command, argv: list[bytes]) -> None:
        """Before `cmd` is dispatched: remember the keys it reads, and let a
        CLIENT CACHING flag live for this one command (a transaction: until EXEC)."""
        multi = client.multi
        runs_now = multi is None or cmd.name == "exec"  # queued commands run at EXEC
        if not runs_now:
            return
        if not self.bcast:
            wanted = not (self.optin and not self.caching or self.optout and self.caching)
            if cmd.name in SCRIPT_COMMANDS or multi is not None:
                self.script_reads = wanted
            if wanted and multi is not None:
                for queued in multi:
                    self._remember(client, queued)
            elif wanted:
                self._remember(client, argv, cmd)
        if not cmd.fullname.startswith("client|"):
            self.caching = False

    def _remember(self, client: Client, argv: list[bytes], cmd: Command | None = None) -> None:
        if cmd is None:
            try:
                cmd = lookup(argv)
            except ReplyError:
                return
        if not cmd.is_readonly or cmd.where == ROUTER or cmd.name in SCRIPT_COMMANDS:
            return
        try:
            indexes = cmd.key_indexes(argv)
        except ReplyError:
            return
        if indexes:
            client.router.tracking.remember(client.id, [argv[i] for i in indexes])


class Tracking:
    """A front's tracking table and its BCAST prefixes."""

    def __init__(self, front: Any) -> None:
        self.front = front
        self.keys: dict[bytes, dict[int, None]] = {}  # key -> ids of the clients that read it
        self.items = 0  # sum of the id sets' sizes (INFO tracking_total_items)
        self.prefixes: dict[bytes, dict[int, None]] = {}  # BCAST prefix -> client ids
        self.clients = 0  # clients with tracking on (INFO tracking_clients)
        self.max_keys = 0  # tracking-table-max-keys (0: no limit), read by enforce_limit
        self._overflowed: list[Client] = []  # clients to close once the delivery in progress is over
        # A FLUSHALL sent to every shard is reported by each: writer id -> reports still to come,
        # skipped, so a client gets one null invalidation per FLUSHALL as in Redis.
        self._flush_echoes: dict[int, int] = {}
        front.pubsub.extra_ops[OP_HAS_CLIENT] = self.peer_request
        front.pubsub.extra_ops[OP_INVALIDATE] = self.peer_request

    # --- clients ---------------------------------------------------------------------

    def enable(self, client: Client, state: ClientTracking, prefixes: list[bytes]) -> None:
        old = client.tracking
        if old is None:
            self.clients += 1
            if self.clients == 1:
                self._tell_shards(True)
        else:
            state.caching = old.caching
            state.prefixes = old.prefixes
        client.tracking = state
        if state.bcast:
            for prefix in prefixes or [b""]:
                if prefix not in state.prefixes:
                    state.prefixes.append(prefix)
                self.prefixes.setdefault(prefix, {})[client.id] = None

    def restore(self, client: Client, old: ClientTracking, prefixes_before: int) -> None:
        """Put back the state `enable` replaced (a REDIRECT found invalid afterwards):
        the prefixes it added go (enable appends them to the list the states share)."""
        state = client.tracking
        assert state is not None and state.prefixes is old.prefixes, "restoring a state enable did not replace"
        for prefix in state.prefixes[prefixes_before:]:
            clients = self.prefixes.get(prefix)
            if clients is not None:
                clients.pop(client.id, None)
                if not clients:
                    del self.prefixes[prefix]
        del state.prefixes[prefixes_before:]
        client.tracking = old

    def disable(self, client: Client) -> None:
        state = client.tracking
        if state is None:
            return
        client.tracking = None
        for prefix in state.prefixes:
            clients = self.prefixes.get(prefix)
            if clients is not None:
                clients.pop(client.id, None)
                if not clients:
                    del self.prefixes[prefix]
        self.clients -= 1
        assert self.clients >= 0, "tracking clients counted below zero"
        if self.clients == 0:
            self._tell_shards(False)
            self._drop_table()  # no longer kept up to date by the shards

    def _tell_shards(self, on: bool) -> None:
        front = self.front
        links = [front.links[front.home_shard]] if front.cluster_node else front.links
        for link in links:
            self.send_state(link, on)

    def send_state(self, link: Any, on: bool | None = None) -> None:
        """Tell a shard whether to report changed keys here; also on every (re)connect."""
        if on is None:
            on = self.clients > 0
        if not link.up:
            return
        link.submit(None, PROTO_INTERNAL, [VERB_TRACKING, b"1" if on else b"0"],
                    Pending(None, on_fill=_log_refusal))

    # --- the table ---------------------------------------------------------------------

    def remember(self, client_id: int, keys: list[bytes]) -> None:
        table = self.keys
        for key in keys:
            ids = table.get(key)
            if ids is None:
                ids = table[key] = {}
            if client_id not in ids:
                ids[client_id] = None
                self.items += 1
        if self.max_keys and len(table) > self.max_keys:
            self._evict()

    def enforce_limit(self) -> None:
        """After CONFIG SET (or at start): read tracking-table-max-keys and apply it."""
        self.max_keys = int(self.front.settings.values["tracking-table-max-keys"])
        if self.max_keys and len(self.keys) > self.max_keys:
            self._evict()

    def _evict(self) -> None:
        """Over the limit: invalidate the oldest keys (Redis picks them at random)."""
        victims = list(islice(self.keys, len(self.keys) - self.max_keys))
        for key in victims:
            self._invalidate_key(key, 0)
        self._close_overflowed()

    def invalidate(self, events: Iterable[tuple[bytes, bytes]]) -> None:
        """The changed keys a shard reported (shards/tracking.py): default-mode
        clients get one message per key, BCAST clients one per prefix."""
        if not self.clients:
            return  # reports sent before the shards heard that nobody tracks here
        bcast: dict[bytes, dict[bytes, int]] = {}  # prefix -> key -> writer (-1: several)
        prefixes = self.prefixes
        for channel, key in events:
            if channel[:len(FLUSH_MARK)] == FLUSH_MARK:
                self._flush(int(channel[len(FLUSH_MARK):]))
                continue
            if channel[:2] == READ_MARK:
                self._script_read(int(channel[2:]), key)
                continue
            writer = int(channel[1:])
            if key in self.keys:
                self._invalidate_key(key, writer)
            if prefixes:
                for prefix in prefixes:
                    if key.startswith(prefix):
                        keys = bcast.setdefault(prefix, {})
                        keys[key] = writer if keys.get(key, writer) == writer else -1
        clients = self.front.clients
        for prefix, keys in bcast.items():
            for client_id in prefixes.get(prefix, ()):
                client = clients.get(client_id)
                if client is None or client.tracking is None:
                    continue
                if client.tracking.noloop:
                    wanted = [key for key, writer in keys.items() if writer != client_id]
                else:
                    wanted = list(keys)
                if wanted:
                    self._send(client, wanted)
        self._close_overflowed()

    def _script_read(self, client_id: int, key: bytes) -> None:
        client = self.front.clients.get(client_id)
        if client is None:
            return  # a client of another front
        state = client.tracking
        if state is not None and not state.bcast and state.script_reads:
            self.remember(client_id, [key])

    def _invalidate_key(self, key: bytes, writer: int) -> None:
        ids = self.keys.pop(key)
        self.items -= len(ids)
        clients = self.front.clients
        for client_id in ids:
            client = clients.get(client_id)
            if client is None or client.tracking is None or client.tracking.bcast:
                continue
            if client.tracking.noloop and client_id == writer:
                continue
            self._send(client, [key])

    def _flush(self, writer: int) -> None:
        """FLUSHALL/FLUSHDB: a null invalidation to every tracking client, once for
        the reports of all the shards the command went to."""
        echoes = self._flush_echoes
        left = echoes.pop(writer, 0)
        if left:
            if left > 1:
                echoes[writer] = left - 1
            return
        reports = 1 if self.front.cluster_node or writer >= NODE_CLIENT_ID_BASE else len(self.front.links)
        if reports > 1:
            if len(echoes) >= MAX_FLUSH_ECHOES:
                echoes.clear()
            echoes[writer] = reports - 1
        self._drop_table()
        for client in list(self.front.clients.values()):
            if client.tracking is not None:
                self._send(client, None)

    def shard_lost(self) -> None:
        """A shard died: a write it made durable may never have been reported, so
        every tracking client is told to drop its whole cache (a null
        invalidation, as after FLUSHALL), as a client of a crashed Redis would."""
        if self.clients:
            logger.warning("router %d: a shard died: every tracking client drops its cache", self.front.index)
            self._flush_echoes.clear()
            self._drop_table()
            for client in list(self.front.clients.values()):
                if client.tracking is not None:
                    self._send(client, None)
            self._close_overflowed()

    def _drop_table(self) -> None:
        self.keys = {}
        self.items = 0

    # --- sending --------------------------------------------------------------------

    def _send(self, client: Client, keys: list[bytes] | None) -> None:
        """Redis' sendTrackingMessage: a RESP3 push, or a RESP2 message on
        __redis__:invalidate to a subscribed redirect target; nothing otherwise."""
        state = client.tracking
        assert state is not None, "an invalidation for a client not tracking"
        if not state.redirect:
            self._deliver(client, keys, client.proto, False)
            return
        target = self.front.clients.get(state.redirect)
        if target is not None:
            self._deliver(target, keys, client.proto, True)
        elif state.broken:
            self._redirect_broken(client)
        else:
            self._send_elsewhere(client, state.redirect, keys)

    def _deliver(self, target: Client, keys: list[bytes] | None, null_proto: int, redirected: bool) -> None:
        payload = NULL_BY_PROTO[null_proto] if keys is None else encode(keys, target.proto)
        if target.proto == 3:
            self._push(target, PUSH_HEAD + payload)
        elif redirected and target.pubsub is not None:
            self._push(target, MESSAGE_HEAD + payload)

    def _redirect_broken(self, client: Client) -> None:
        state = client.tracking
        assert state is not None, "a broken redirect of a client not tracking"
        state.broken = True
        if client.proto == 3:
            self._push(client, encode(Push([b"tracking-redir-broken", state.redirect]), 3))

    def _send_elsewhere(self, client: Client, target_id: int, keys: list[bytes] | None) -> None:
        """The target is a client of another front: that front delivers it; none
        taking it breaks the redirect (client ids are never reused)."""
        def done(parts: list[Any]) -> None:
            if True in parts:
                return
            if client.tracking is not None and client.tracking.redirect == target_id and not client.closed:
                logger.info("router %d: tracking client %d: redirect target %d is gone",
                            self.front.index, client.id, target_id)
                self._redirect_broken(client)
                self._close_overflowed()
        self.front.pubsub.ask_peers(OP_INVALIDATE, [target_id, keys, client.proto], done)

    def peer_request(self, op: str, args: list[Any]) -> bool:
        """Another front's request (server/pubsub.py): does a client live here / take
        this invalidation for a client of mine you track for."""
        target = self.front.clients.get(args[0])
        if target is None:
            return False
        if op == OP_INVALIDATE:
            keys = args[1]
            self._deliver(target, None if keys is None else [bytes(k) for k in keys], args[2], True)
            self._close_overflowed()
        return True

    def _push(self, client: Client, data: bytes) -> None:
        """Queue a push behind the client's replies (as pub/sub messages); a client
        with MAX_QUEUED_PUSHES waiting behind a pending reply is closed."""
        if len(client.replies) >= MAX_QUEUED_PUSHES:
            if client not in self._overflowed:
                logger.warning("router: closing client %s: %d invalidations queued behind a pending reply",
                               client.addr, len(client.replies))
                self._overflowed.append(client)
            return
        client.push(data)
        client.reply_ready()

    def _close_overflowed(self) -> None:
        overflowed, self._overflowed = self._overflowed, []
        for client in overflowed:
            client.kill()  # disables its tracking: never while a delivery walks the table

    # --- INFO -----------------------------------------------------------------------

    def stats_lines(self) -> list[str]:
        return [f"tracking_total_keys:{len(self.keys)}", f"tracking_total_items:{self.items}",
                f"tracking_total_prefixes:{len(self.prefixes)}"]


def _log_refusal(pending: Pending, data: bytes) -> None:
    if data[:1] == b"-" and data is not LOST:
        logger.warning("router: shard refused the tracking request: %r", data[:200])


# --- commands -----------------------------------------------------------------------


def _overlap(a: bytes, b: bytes) -> bool:
    """Redis' stringCheckPrefix: one is a prefix of the other."""
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def _check_prefixes(existing: list[bytes], prefixes: list[bytes]) -> None:
    for i, prefix in enumerate(prefixes):
        for old in existing:
            if _overlap(old, prefix):
                raise ReplyError(b"ERR Prefix '%s' overlaps with an existing prefix '%s'. Prefixes for a single "
                                 b"client must not overlap." % (prefix, old))
        for other in prefixes[i + 1:]:
            if _overlap(prefix, other):
                raise ReplyError(b"ERR Prefix '%s' overlaps with another provided prefix '%s'. Prefixes for a "
                                 b"single client must not overlap." % (prefix, other))


@command("client|tracking", -3, "noscript loading stale", group="connection", where=ROUTER)
def client_tracking(client: Client, argv: list[bytes]):
    redirect = 0
    bcast = optin = optout = noloop = False
    prefixes: list[bytes] = []
    j = 3
    while j < len(argv):
        opt = argv[j].lower()
        more = j + 1 < len(argv)
        if opt == b"redirect" and more:
            j += 1
            if redirect:
                raise ReplyError(b"ERR A client can only redirect to a single other client")
            value = parse_ll(argv[j])
            if value is None:
                raise ReplyError(b"ERR value is not an integer or out of range")
            redirect = value
        elif opt == b"bcast":
            bcast = True
        elif opt == b"optin":
            optin = True
        elif opt == b"optout":
            optout = True
        elif opt == b"noloop":
            noloop = True
        elif opt == b"prefix" and more:
            j += 1
            prefixes.append(argv[j])
        else:
            raise ERR_SYNTAX
        j += 1
    mode = argv[2].lower()
    tracking = client.router.tracking
    if mode == b"on":
        old = client.tracking
        if not bcast and prefixes:
            raise ReplyError(b"ERR PREFIX option requires BCAST mode to be enabled")
        if old is not None and old.bcast != bcast:
            raise ReplyError(b"ERR You can't switch BCAST mode on/off before disabling tracking for this client, "
                             b"and then re-enabling it with a different mode.")
        if bcast and (optin or optout):
            raise ReplyError(b"ERR OPTIN and OPTOUT are not compatible with BCAST")
        if optin and optout:
            raise ReplyError(b"ERR You can't specify both OPTIN mode and OPTOUT mode")
        if old is not None and (optin and old.optout or optout and old.optin):
            raise ReplyError(b"ERR You can't switch OPTIN/OPTOUT mode before disabling tracking for this client, "
                             b"and then re-enabling it with a different mode.")
        if bcast:
            _check_prefixes(old.prefixes if old is not None else [], prefixes)
        if redirect and redirect not in client.router.clients:
            return _redirect_elsewhere(client, ClientTracking(redirect, bcast, optin, optout, noloop), prefixes)
        tracking.enable(client, ClientTracking(redirect, bcast, optin, optout, noloop), prefixes)
    elif mode == b"off":
        tracking.disable(client)
    else:
        raise ERR_SYNTAX
    return OK


def _redirect_elsewhere(client: Client, state: ClientTracking, prefixes: list[bytes]) -> Pending:
    """REDIRECT to a client of another front (or of none): tracking is on at once, so
    reads pipelined behind this command are tracked, and is put back as it was if no
    front has that client (Redis' error for an unknown id)."""
    tracking = client.router.tracking
    old = client.tracking
    prefixes_before = len(old.prefixes) if old is not None else 0
    tracking.enable(client, state, prefixes)

    def finish(parts: list[Any]) -> bytes:
        if True in parts:
            return b"+OK\r\n"
        if client.tracking is state:
            if old is None:
                tracking.disable(client)
            else:
                tracking.restore(client, old, prefixes_before)
        return b"-ERR The client ID you want redirect to does not exist\r\n"
    return client.router.pubsub.ask_all(client, OP_HAS_CLIENT, [state.redirect], finish)


@command("client|caching", 3, "noscript loading stale", group="connection", where=ROUTER)
def client_caching(client: Client, argv: list[bytes]):
    state = client.tracking
    if state is None:
        raise ReplyError(b"ERR CLIENT CACHING can be called only when the client is in tracking mode with OPTIN "
                         b"or OPTOUT mode enabled")
    opt = argv[2].lower()
    if opt == b"yes":
        if not state.optin:
            raise ReplyError(b"ERR CLIENT CACHING YES is only valid when tracking is enabled in OPTIN mode.")
    elif opt == b"no":
        if not state.optout:
            raise ReplyError(b"ERR CLIENT CACHING NO is only valid when tracking is enabled in OPTOUT mode.")
    else:
        raise ERR_SYNTAX
    state.caching = True
    return OK


@command("client|getredir", 2, "noscript loading stale", group="connection", where=ROUTER)
def client_getredir(client: Client, argv: list[bytes]):
    return client.tracking.redirect if client.tracking is not None else -1


@command("client|trackinginfo", 2, "noscript loading stale", group="connection", where=ROUTER)
def client_trackinginfo(client: Client, argv: list[bytes]):
    state = client.tracking
    if state is None:
        return Map([b"flags", SetReply([b"off"]), b"redirect", -1, b"prefixes", []])
    flags = [b"on"]
    if state.bcast:
        flags.append(b"bcast")
    if state.optin:
        flags.append(b"optin")
        if state.caching:
            flags.append(b"caching-yes")
    if state.optout:
        flags.append(b"optout")
        if state.caching:
            flags.append(b"caching-no")
    if state.noloop:
        flags.append(b"noloop")
    if state.broken:
        flags.append(b"broken_redirect")
    return Map([b"flags", SetReply(flags), b"redirect", state.redirect, b"prefixes", sorted(state.prefixes)])
