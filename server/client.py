"""A client connection, on the router or on a shard's client port (behind a
RouterView: server/router.py or server/node.py): parse requests, dispatch them,
and write replies back strictly in the order the client sent the commands."""

from __future__ import annotations

import logging
import select
import socket
import time
from collections import deque
from typing import TYPE_CHECKING, Callable

import trio

from durakv.server.links import LOST, SCRIPT_EVAL, SCRIPT_FUNCTION, Pending, Propagating
from durakv.server.pause import note_script
from durakv.server.script_retry import ScriptRetry, holds, queue_evalsha, start_across_shards
from durakv.server.script_cache import FUNCTION_CHANGE_COMMANDS, router_flush, router_function_change
from durakv.shards.t_script import flush_option_ok
from durakv.shards.evict import OOM_MESSAGE
from durakv.shards.frames import LARGE_BYTES, VERB_AS_USER, VERB_LITERAL, VERB_ROUTER_IN_MULTI
from durakv.shards.resp import ProtocolError, ReplyError, RequestParser, encode, encode_error
from durakv.shards.table import BY_NAME, CURSOR, FANOUT, ROUTER, SHARD, SPLIT_NONE, Command, find, lookup
from durakv.shards.slots import key_slot
from durakv.shards.t_sort import reads_pattern_keys
from durakv.shards.txn import WHOLE_KEYSPACE

if TYPE_CHECKING:
    from durakv.server.pubsub import Subscriptions
    from durakv.server.tracking import ClientTracking
    from durakv.server.router_view import RouterView
    from durakv.server.tls import TlsSocket

logger = logging.getLogger("durakv.router")

# What one read takes from a client, as Redis' PROTO_IOBUF_LEN: the requests in it
# are parsed in the turn that reads them, which every other client waits for (a
# non-reader's 64 KiB of pipelined GETs held the loop 5-8 ms; issue 13). A big
# argument is read into its own buffer (_read_into_fill), not RECV_BYTES at a time.
RECV_BYTES = 16 * 1024
# A large argument always spans reads, so the parser sees it arrive (server/links.py
# relies on that to look for large requests only when one came).
assert RECV_BYTES < LARGE_BYTES
# Backpressure acts on the one client whose output piles up, never on a shard
# link: while this many of its replies are outstanding, or their bytes (estimated
# from its last replies' size) would pass MAX_IN_FLIGHT_BYTES, or this many bytes
# wait for its socket (a normal client-output-buffer-limit sets that bound instead:
# server/client_limits.py), the router dispatches none of its further requests
# (they wait, parsed, in its backlog) and stops reading it once the backlog is full.
# The byte cap bounds what a client of big replies puts on a shard link ahead of
# everyone else's requests. The router cannot know a reply's size before it comes,
# so the count grows as a window does: a client may have twice as many replies in
# flight as a write of its proved small (START_REPLIES_IN_FLIGHT at least), so one
# small reply (a PING, an OK) does not open MAX_REPLIES_IN_FLIGHT requests for big
# values at once (issue 13); only a client that had a write of 128 small replies
# (since their size last changed) may have 256 in flight, whatever they turn out to be.
MAX_REPLIES_IN_FLIGHT = 256
BACKED_UP_REPLIES_IN_FLIGHT = 16  # while output waits for the client's socket
MAX_IN_FLIGHT_BYTES = 256 * 1024
UNKNOWN_REPLY_BYTES = MAX_IN_FLIGHT_BYTES // BACKED_UP_REPLIES_IN_FLIGHT  # until its first reply was written
START_REPLIES_IN_FLIGHT = MAX_IN_FLIGHT_BYTES // UNKNOWN_REPLY_BYTES  # the window before any write proved more
# Under a normal hard output limit the window starts at one request and only doubles with
# what each write proved (no START_REPLIES_IN_FLIGHT floor): the first reply's size, times
# the requests waiting behind it, is what closes a client that asked past the limit
# (_asked_past_hard_limit), so a non-reader pipelining GETs of 100 KB costs its shard one
# GET and the link 100 KB, not 16 and 1.6 MB, and is closed sooner, with less of its
# pipeline in the router's socket buffer to drop (issue 13). A client that reads pays a
# few round trips more while its window opens, under such a limit only.
HARD_LIMIT_START_REPLIES_IN_FLIGHT = 1
OUTPUT_BACKPRESSURE_BYTES = 4 * 1024 * 1024
MAX_BACKLOG_REQUESTS = 16 * 1024
# While output waits for its socket, a client is read (RECV_BYTES a turn) while its
# backlog is shorter than this, even if none of it can run now: enough parsed ahead to
# tell whether what it asked would pass its hard output limit (check_output_limits),
# no more, as parsing what it cannot run soon costs the loop for nothing.
BACKED_UP_BACKLOG_REQUESTS = 1024
JOIN_BELOW_BYTES = 64 * 1024  # smaller replies are joined into one buffer, larger ones sent as they are
IOV_MAX = 1024  # buffers per sendmsg (Linux UIO_MAXIOV)

# Node client ids live above every router's (router ids count up from 1 with a
# stride of the router count): the shard keys WATCHes and blocked clients by id.
NODE_CLIENT_ID_BASE = 1 << 40

ERR_CROSSSLOT = b"-CROSSSLOT Keys in request don't hash to the same slot\r\n"
ERR_NOAUTH = b"-NOAUTH Authentication required.\r\n"
MAX_QUEUED_IN_MULTI = 1024 * 1024
ALLOWED_WHEN_SUBSCRIBED = frozenset({
    "subscribe", "unsubscribe", "psubscribe", "punsubscribe", "ssubscribe", "sunsubscribe", "ping", "quit", "reset",
})
# In `replies`: the reply after it is not sent (CLIENT REPLY OFF|SKIP).
SILENCED = object()
CROSS_SHARD_BLOCKING = frozenset({"blmove", "brpoplpush", "blmpop", "bzmpop",  # they run across shards
                                  "blpop", "brpop", "bzpopmin", "bzpopmax"})
CROSS_SHARD = -1  # multi_shard of a transaction whose keys live on several shards
SCRIPT_COMMANDS = frozenset({"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"})


class Client:
    """One connection. Its socket is read and written by the router's ClientPoller
    (no task per client): `on_readable` parses and dispatches everything that
    arrived, replies go out in order through `flush`, and a write the kernel
    cannot take at once waits in `outbuf` for `on_writable`."""

    __slots__ = (
        "router", "sock", "id", "proto", "name", "authed", "user", "addr", "_laddr", "fd", "created",
        "last_cmd_at", "last_cmd", "parser", "replies", "outbuf", "outbuf_bytes", "closing", "closed", "reading",
        "lib_name", "lib_ver", "in_ready_set", "query_limit",
        "multi", "multi_error", "multi_shard", "watch_shards", "blocked_pending", "blocked_shard", "backlog",
        "soft_limit_since", "pubsub", "paused", "reply_off", "reply_skip", "tracking", "monitor",
        "reply_bytes", "in_flight_cap", "ahead_reply_min_bytes", "script_out",
    )

    def __init__(self, router: RouterView, sock: socket.socket | TlsSocket, client_id: int,
                 peer: tuple | None = None) -> None:
        self.router = router
        self.sock = sock
        self.id = client_id
        self.proto = 2
        self.name = b""
        self.lib_name = b""
        self.lib_ver = b""
        self.user = router.acl.default  # shards/acl.py's User: ACL users change in place
        self.authed = self.user.nopass and self.user.enabled
        if peer is None:  # (accept gave it, when the router accepted it)
            peer = sock.getpeername()
        self.addr = f"{peer[0]}:{peer[1]}"
        self._laddr = ""  # its local address, asked of the socket when first needed (as Redis does)
        self.fd = sock.fileno()
        self.created = time.monotonic()
        self.last_cmd_at = self.created
        self.last_cmd = "NULL"
        # A large argument is read into its own buffer as it comes and forwarded as it
        # is (a large frame's blob): never joined into one copy that holds the loop.
        self.parser = RequestParser(int(router.settings.values["proto-max-bulk-len"]), in_place_min_bytes=LARGE_BYTES)
        self.parser.authed = self.authed
        self.query_limit = int(router.settings.values["client-query-buffer-limit"])
        self.replies: deque = deque()
        # Output the kernel has not taken yet: the reply buffers themselves (or a
        # view of the unsent tail of one), never copied into a bigger buffer.
        self.outbuf: deque = deque()
        self.outbuf_bytes = 0
        self.soft_limit_since = 0.0  # when output first went over the soft limit (0: it is not)
        self.reply_bytes = UNKNOWN_REPLY_BYTES  # mean size of its last write's replies: caps replies in flight
        # The smallest reply of its last write that left requests waiting or output queued
        # (0 once a write leaves neither): what _asked_past_hard_limit counts each at.
        self.ahead_reply_min_bytes = 0
        self.closing = False  # close once the queued replies are written
        self.closed = False
        self.reading = True  # false while backpressure pauses reading
        self.in_ready_set = False
        self.multi: list[list[bytes]] | None = None  # queued commands after MULTI
        self.multi_error = False  # a queued command was rejected: EXEC aborts
        self.multi_shard: int | None = None  # the one shard the transaction runs on
        self.watch_shards: set[int] = set()
        # While a blocking command waits, later requests queue here, as Redis
        # stops processing a blocked client's input.
        self.blocked_pending: Pending | None = None
        self.blocked_shard = -1
        self.backlog: deque[list[bytes]] = deque()
        self.pubsub: Subscriptions | None = None  # server/pubsub.py; None while subscribed to nothing
        self.in_flight_cap = self._least_window()  # replies in flight can_dispatch allows, unbacked
        self.paused = False  # CLIENT PAUSE holds its next command (server/pause.py)
        self.reply_off = False  # CLIENT REPLY OFF
        self.reply_skip = False  # CLIENT REPLY SKIP: the next command's reply is dropped
        self.tracking: ClientTracking | None = None  # CLIENT TRACKING (server/tracking.py); None while off
        self.monitor = False  # MONITOR (server/monitor.py)
        # Its script out on one shard, which may reach another: requests for other shards wait (server/script_retry.py)
        self.script_out: ScriptRetry | None = None

    @property
    def laddr(self) -> str:
        """Its local address (CLIENT LIST's laddr, the address CLUSTER and ROLE announce)."""
        if not self._laddr:
            try:
                local = self.sock.getsockname()
            except OSError:  # closed meanwhile
                return "?:0"
            self._laddr = f"{local[0]}:{local[1]}"
        return self._laddr

    # --- reading and dispatch -------------------------------------------------

    def on_readable(self) -> None:
        if self.parser.fill is not None and type(self.sock) is socket.socket and self._read_into_fill():
            return
        try:
            data = self.sock.recv(RECV_BYTES)
        except BlockingIOError:
            return
        except OSError:
            self.kill()
            return
        if not data:
            self.kill()  # EOF: like Redis, replies still queued are dropped
            return
        size = len(data)
        self.router.stats_net_input_bytes += size
        parser = self.parser
        requests = parser.whole_small_read(data)  # the commonest read, in one call
        if requests is None:
            big_args = parser.big_args
            parser.feed(data)
            if parser.big_args != big_args:
                self.router.large_requests += 1  # RECV_BYTES <= frames.LARGE_BYTES: no large argument comes otherwise
        ran_auth = False
        try:
            if requests is None:
                requests = parser.requests()
            while parser.stopped_at_auth and not self.closing and not self.closed:
                # Unauthenticated: the parser stopped after an AUTH or HELLO; run it (and what
                # came before it) so that what follows is parsed with the limits it leaves.
                ran_auth = True
                self.backlog.extend(requests)
                self.run_backlog()
                requests = parser.requests()
        except ProtocolError as e:
            self.router.stats_protocol_errors += 1
            self.backlog.extend(e.requests)
            self.run_backlog(bounded=False)
            self.backlog.clear()
            self.push(encode_error(b"ERR Protocol error: " + e.args[0]))
            self.closing = True
            self.flush()
            return
        if parser.buffered_bytes() > self.query_limit:
            logger.warning("router: client %s closed: query buffer over %d bytes", self.addr, self.query_limit)
            self.kill()
            return
        if requests or ran_auth:
            self.last_cmd_at = time.monotonic()
            self.backlog.extend(requests)
            self.run_backlog()
            replies = self.replies
            if replies and not self.backlog and not self.closing and type(replies[0]) is Pending \
                    and replies[0].data is None:
                return  # nothing can be written yet, and the poller's interest is unchanged
            self.flush()
            if self.backlog and (self.blocked_pending is not None or self.paused):
                self._check_held_requests()
            elif self.backlog:
                if self.outbuf_bytes:
                    self.check_output_limits()  # what it asked for would pass the hard limit
                elif self._asked_past_hard_limit(0):
                    self._close_over_limit()

    def _read_into_fill(self) -> bool:
        """A big argument is arriving: receive straight into the value it will be
        (shards/resp.py RequestParser.fill), up to bigbuf.FILL_READ_BYTES a turn, rather than
        RECV_BYTES a turn copied through the parser's buffer. (Not "as much as the
        socket holds": while the client keeps sending, one recv of a 512 MiB space
        went on copying for 35-70 ms of the loop.) Its last byte is left
        to on_readable's ordinary read (False: do that now), which completes it and
        runs its request as for any argument."""
        parser = self.parser
        fill = parser.fill
        sock = self.sock
        assert fill is not None and type(sock) is socket.socket
        if fill.size - fill.have <= 1:
            return False
        try:
            got = fill.recv(sock, 1)
        except BlockingIOError:
            return True
        except OSError:
            self.kill()
            return True
        if not got:
            self.kill()  # EOF in the middle of an argument
            return True
        self.router.stats_net_input_bytes += got
        parser.filled(got)
        if parser.buffered_bytes() > self.query_limit:
            logger.warning("router: client %s closed: query buffer over %d bytes", self.addr, self.query_limit)
            self.kill()
        return True

    def _check_held_requests(self) -> None:
        """A blocked or paused client's requests wait parsed in its backlog, where
        Redis keeps them unparsed in its query buffer: they count against
        client-query-buffer-limit as there (an O(backlog) sum, in these states only)."""
        held = self.parser.buffered_bytes() + sum(len(arg) for argv in self.backlog for arg in argv)
        if held > self.query_limit:
            logger.warning("router: client %s closed: query buffer over %d bytes (%d bytes held while it waits)",
                           self.addr, self.query_limit, held)
            self.kill()

    def kill(self) -> None:
        """Close now, dropping whatever is queued: its requests not run yet too (before,
        a flush that closed it at its output limit went on to run some of them)."""
        if self.closed:
            return
        self.closed = True
        self.backlog.clear()
        self.router.poller.remove(self)
        self.sock.close()
        self.router.forget(self)

    def can_dispatch(self) -> bool:
        """False while this client's output is over its backpressure bounds."""
        outbuf_bytes = self.outbuf_bytes
        in_flight = len(self.replies)
        if not outbuf_bytes:
            return in_flight < self.in_flight_cap
        # Its socket is backed up: a shallow pipeline, so that its replies do not
        # queue long ahead of other clients' on the shard links.
        return (outbuf_bytes < self.router.output_backpressure_bytes and in_flight < BACKED_UP_REPLIES_IN_FLIGHT
                and in_flight * self.reply_bytes < MAX_IN_FLIGHT_BYTES)

    def run_backlog(self, bounded: bool = True) -> None:
        """Dispatch queued requests until one blocks, the client is closing or
        (bounded) its output is over the backpressure bounds."""
        backlog = self.backlog
        dispatch = self.dispatch
        router = self.router
        pause = router.pause
        replies = self.replies
        while backlog and self.blocked_pending is None and not self.closing:
            # can_dispatch, asked only past its cheap common case (nothing waits for the socket
            # and fewer replies in flight than fit its bounds: big ones queue ahead of other clients')
            if bounded and (self.outbuf_bytes or len(replies) >= self.in_flight_cap) and not self.can_dispatch():
                return
            if self.script_out is not None and holds(self, backlog[0]):
                return
            if pause.mode and pause.holds(self, backlog[0]):
                self.paused = True
                pause.hold(self)
                return
            # A plain client (none of the states dispatch checks for) in the common case:
            # its run of plain-routed commands is routed without the rest of dispatch.
            if (self.authed and self.multi is None and self.pubsub is None and self.tracking is None
                    and self.script_out is None and not (self.reply_off or self.reply_skip or pause.mode
                                                         or router.scripts_in_flight or router.monitors.active)
                    and self.user.unrestricted and not self.outbuf_bytes
                    and self._dispatch_plain(self.in_flight_cap - len(replies) if bounded else len(backlog))):
                continue
            dispatch(backlog.popleft())

    def _dispatch_plain(self, limit: int) -> int:
        """Route up to `limit` requests at the backlog's head while they are plain-routed
        commands of the right arity (table.Command.routes_plain: GET, SET, INCR...) to their
        key's shard, as dispatch's single-key path does, in one loop: the parse, the lookup
        and the slot once per command and no other check (run_backlog checked the client's
        and router's state once for the run, and routing one changes neither). Returns how
        many it routed; 0: the head needs dispatch."""
        backlog = self.backlog
        replies = self.replies
        router = self.router
        owner = router.slot_owner
        links = router.links
        proto = self.proto
        by_name = BY_NAME
        routed = 0
        last = None
        while routed < limit and backlog:
            argv = backlog.popleft()
            cmd = by_name.get(argv[0])
            if cmd is None or not cmd.routes_plain or len(argv) != cmd.arity and (
                    cmd.arity >= 0 or len(argv) < -cmd.arity):
                backlog.appendleft(argv)  # for dispatch
                break
            replies.append(links[owner[key_slot(argv[1])]].submit(self, proto, argv))
            routed += 1
            last = cmd
        if last is not None:
            router.stats_commands += routed
            self.last_cmd = last.fullname
        return routed

    def dispatch(self, argv: list[bytes]) -> None:
        router = self.router
        router.stats_commands += 1
        if self.reply_off or self.reply_skip:
            self.reply_skip = False
            self.replies.append(SILENCED)
        try:
            cmd = lookup(argv)
        except ReplyError as e:
            self.push(encode_error(e.message))
            known = find(argv)  # a known command with the wrong arity counts as rejected
            if known is not None:
                router.reply_stats.command(known.fullname).rejected += 1
            if self.multi is not None:
                self.multi_error = True
            return
        self.last_cmd = cmd.fullname
        if not self.authed and not cmd.no_auth:
            self._reject(cmd, ERR_NOAUTH)
            return
        if not self.user.unrestricted:
            refused = router.acl.refuse(self, cmd, argv)
            if refused is not None:
                if self.multi is not None:
                    self.multi_error = True
                self._reject(cmd, encode_error(refused))
                return
        if self.pubsub is not None and self.proto == 2 and cmd.fullname not in ALLOWED_WHEN_SUBSCRIBED:
            # RESP2 subscribed mode: the connection carries messages; only these may interleave.
            self._reject(cmd, b"-ERR Can't execute '%s': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / "
                         b"RESET are allowed in this context\r\n" % cmd.fullname.encode())
            return
        if router.scripts_in_flight and "allow_busy" not in cmd.flags:
            # Inside MULTI the router queues the command itself, so it answers BUSY too.
            busy = router.busy_error(cmd.where == ROUTER or cmd.where == FANOUT or self.multi is not None)
            if busy is not None:
                if cmd.name == "exec" and self.multi is not None:
                    # Redis' execCommandAbort: the transaction is discarded.
                    self.multi = None
                    self.multi_error = False
                    self.multi_shard = None
                    self.unwatch_all()
                    busy = b"-EXECABORT Transaction discarded because of: " + busy[1:]
                elif self.multi is not None:
                    self.multi_error = True
                self._reject(cmd, busy)
                return
        if router.monitors.active and router.monitors.intercept(self, cmd, argv):
            return
        if self.tracking is not None:
            self.tracking.note(self, cmd, argv)
        if self.multi is not None and not cmd.runs_in_multi:
            self._queue_in_multi(cmd, argv)
            return
        if cmd.name == "watch":
            if self.multi is not None:
                self.push(b"-ERR WATCH inside MULTI is not allowed\r\n")
                return
            if not router.cluster_node:
                self.watch_shards.update(router.split_watch(self, argv))
                return
            try:
                shard = router.keys_shard(self, argv, list(range(1, len(argv))))
            except ReplyError as e:
                self.push(encode_error(e.message))
                return
            self.watch_shards.add(shard)
        where = cmd.where
        try:
            if cmd.single_key and where == SHARD:  # most commands: no script or WATCH is single-key
                shard = router.slot_owner[key_slot(argv[1])]
                pending = router.links[shard].submit(self, self.proto, argv)
                self.replies.append(pending)
                if cmd.is_blocking and pending.data is None:
                    self.blocked_pending = pending
                    self.blocked_shard = shard
                return
            if where == ROUTER:
                self._run_router_command(cmd, argv)
                return
            if where == FANOUT:
                assert cmd.merge is not None, "the table refuses a fan-out command without merge"
                if cmd.fullname == "script|load":
                    note_script(argv[2])
                    if router.scripts_retry:
                        router.script_scopes.body_keeps(argv[2])  # its EVALSHAs' followers (server/script_scope.py)
                        router.script_scopes.note_loaded(argv[2], len(router.links))
                elif cmd.fullname == "script|flush" and router.scripts_retry and flush_option_ok(argv):
                    router.script_scopes.homes.clear()
                    router_flush(router, self, argv, cmd.merge)  # other routers forget too
                    return
                elif cmd.fullname in FUNCTION_CHANGE_COMMANDS and router.scripts_retry:
                    router_function_change(router, self, argv, cmd.merge)  # judged, other routers forget
                    return
                router.fanout(self, argv, cmd.merge)
                return
            if where == CURSOR:
                router.route_cursor(self, argv)
                return
            if cmd.name in SCRIPT_COMMANDS:
                self._submit_script(cmd, argv)
                return
            indexes = cmd.key_indexes(argv)
            if not indexes:
                self.replies.append(router.links[router.home_shard].submit(self, self.proto, argv))
                return
            if router.cluster_node:
                shards = {router.keys_shard(self, argv, indexes)}  # one slot, this node's (else CROSSSLOT, MOVED)
            elif cmd.reads_undeclared_keys is not None and len(router.links) > 1 and reads_pattern_keys(argv):
                router.cross_shard(self, [argv], False)  # SORT BY/GET patterns name keys on any shard
                return
            else:
                owner = router.slot_owner
                shards = {owner[key_slot(argv[i])] for i in indexes}
            if len(shards) == 1:
                shard = shards.pop()
                pending = router.links[shard].submit(self, self.proto, argv)
                self.replies.append(pending)
                if cmd.is_blocking and pending.data is None:
                    self.blocked_pending = pending
                    self.blocked_shard = shard
            elif cmd.split != SPLIT_NONE:
                router.split(self, argv, cmd, indexes)
            elif cmd.name in CROSS_SHARD_BLOCKING:
                router.blocking_move(self, argv)  # server/txn.py
            elif cmd.is_blocking:
                self._reject(cmd, ERR_CROSSSLOT)
            else:
                router.cross_shard(self, [argv], False)  # atomic across shards (server/txn.py)
        except ReplyError as e:
            self._reject(cmd, encode_error(e.message))  # CROSSSLOT, MOVED: refused before it ran

    def _run_router_command(self, cmd: Command, argv: list[bytes]) -> None:
        """A command the router answers itself, counted in its commandstats."""
        handler = cmd.handler
        assert handler is not None, f"router command {cmd.fullname} has no handler"
        stat = self.router.reply_stats.command(cmd.fullname)
        start = time.perf_counter_ns()
        try:
            reply = handler(self, argv)
        except ReplyError as e:
            stat.failed += 1
            self.push(encode_error(e.message))
        else:
            if not isinstance(reply, Pending):  # a Pending (or Propagating) is queued already
                self.push(encode(reply, self.proto))
        finally:
            self.time_slowlog(cmd, argv, start)
        stat.calls += 1
        stat.usec += (time.perf_counter_ns() - start) // 1000

    def _reject(self, cmd: Command, error: bytes) -> None:
        """Refuse a command before it runs (Redis' rejected_calls)."""
        self.router.reply_stats.command(cmd.fullname).rejected += 1
        self.push(error)

    def _submit_script(self, cmd, argv: list[bytes]) -> None:
        """EVAL*/FCALL*: routed by their keys like any command, and timed (busy-reply-threshold)."""
        router = self.router
        indexes = cmd.key_indexes(argv)
        if not indexes and len(router.links) > 1 and not router.cluster_node:
            # No declared keys: it may touch any shard's (found and locked as it runs, server/txn.py).
            if cmd.name == "eval":
                note_script(argv[1])
            self._script_across_shards(cmd, self._as_user(argv))
            return
        try:
            shard = router.keys_shard(self, argv, indexes) if indexes else router.home_shard
        except ReplyError as e:
            if router.cluster_node or not e.message.startswith(b"CROSSSLOT"):
                self._reject(cmd, encode_error(e.message))
            else:  # keys on several shards (server/txn.py); an ACL user's redis.calls obey its rules
                self._script_across_shards(cmd, self._as_user(argv))
            return
        if cmd.name == "eval":
            note_script(argv[1])
        if router.reaching and argv in router.reaching:  # it reached another shard's key before
            self._script_across_shards(cmd, self._as_user(argv))
            return
        kind = SCRIPT_FUNCTION if cmd.name.startswith("fcall") else SCRIPT_EVAL
        # Reaches another shard's key, or its script is cached elsewhere: server/script_retry.py.
        retries = router.scripts_retry or (router.cluster_node and cmd.name.startswith("evalsha"))
        # May it reach another shard? Then its followers for other shards wait for it; all of
        # them, if it is an EVALSHA that may be found elsewhere and sent again (script_scope.py).
        holds_all = (router.scripts_retry and cmd.name.startswith("evalsha")
                     and not router.script_scopes.cached_on(argv[1], shard))
        out = holds_all or (router.scripts_retry and not router.script_scopes.keeps(argv))
        on_fill = None if self.user.unrestricted else router.acl.script_reply  # its redis.calls obey its rules
        argv = self._as_user(argv)
        retry = ScriptRetry(self, argv, shard, kind, on_fill) if retries else None
        pending = retry if retry is not None or on_fill is None else Pending(self, on_fill)
        self.replies.append(router.links[shard].submit(self, self.proto, argv, pending, script=kind))
        if out and retry is not None and retry.data is None:
            retry.holds_all = holds_all
            retry.drops_seen = router.links[shard].scripts_dropped  # server/script_retry.py _filled
            self.script_out = retry  # its followers for other shards wait for it (server/script_retry.py)

    def _as_user(self, argv: list[bytes]) -> list[bytes]:
        """A script's request as the shard runs it: an ACL user's carries its rules, which
        its redis.calls obey."""
        return argv if self.user.unrestricted else [VERB_AS_USER, self.user.permissions(), *argv]

    def _script_across_shards(self, cmd, run: list[bytes]) -> None:
        """A script whose keys span shards, or that declares none (server/txn.py); an
        EVALSHA's script is found on any shard (server/script_retry.py)."""
        if cmd.name.startswith("evalsha"):
            then = None if self.user.unrestricted else self.router.acl.script_reply
            start_across_shards(self, run, SCRIPT_EVAL, then)
            return
        self.router.cross_shard(self, [run], False)

    # --- transactions -------------------------------------------------------------

    def _queue_in_multi(self, cmd, argv: list[bytes]) -> None:
        """Check a command issued after MULTI and queue it (or flag the transaction)."""
        try:
            shard = self._transaction_shard(cmd, argv)
            if self._out_of_memory(shard):
                raise ReplyError(OOM_MESSAGE)  # Redis refuses every command queued while out of memory
            if cmd.where == ROUTER:
                if cmd.refused_in_multi:
                    raise ReplyError(b"ERR Command not allowed inside a transaction")
                # Router-answered: runs at EXEC (see run_router_commands); those whose replies
                # depend on the shards were declared MULTI_REFUSED above.
                argv = [VERB_ROUTER_IN_MULTI, *argv]
            elif cmd.name in SCRIPT_COMMANDS:
                argv = self._as_user(argv)
        except ReplyError as e:
            self.multi_error = True
            self.push(encode_error(e.message))
            return
        if shard is not None:
            if self.multi_shard is not None and shard != self.multi_shard:
                if self.router.cluster_node:
                    self.multi_error = True
                    self.push(ERR_CROSSSLOT)
                    return
                shard = CROSS_SHARD  # EXEC runs it across shards (server/txn.py)
            self.multi_shard = shard
        queued = self.multi
        assert queued is not None, "queueing a command outside MULTI"
        if len(queued) >= MAX_QUEUED_IN_MULTI:
            self.multi_error = True
            self.push(b"-ERR transaction too long (more than %d queued commands)\r\n" % MAX_QUEUED_IN_MULTI)
            return
        queued.append(argv)
        if (self.router.scripts_retry or self.router.cluster_node) and cmd.name.startswith("evalsha"):
            queue_evalsha(self, argv[3] if argv[0] == VERB_AS_USER else argv[1])  # found on any shard first
            return
        self.push(b"+QUEUED\r\n")

    def _out_of_memory(self, shard: int | None) -> bool:
        """Whether the shard a queued command runs on (any, for one that runs on any or
        on several) is out of memory, as its last batch found it."""
        flags = self.router.oom_flags
        if shard is None or shard == CROSS_SHARD:
            return flags.any_oom(len(self.router.links))
        return flags.oom(shard)

    def _transaction_shard(self, cmd, argv: list[bytes]) -> int | None:
        """The shard a queued command must run on (None: any)."""
        router = self.router
        if cmd.where == ROUTER:
            return None
        if cmd.where == FANOUT:
            if cmd.name in WHOLE_KEYSPACE and len(router.links) > 1 and not router.cluster_node:
                return CROSS_SHARD  # every shard, locked whole at EXEC (server/txn.py)
            return router.single_shard()
        if cmd.where == CURSOR:
            return router.cursor_shard(argv[1])
        indexes = cmd.key_indexes(argv)
        if not indexes:
            return None
        if router.cluster_node:
            return router.keys_shard(self, argv, indexes)  # on a node, MOVED flags the transaction as in Redis
        if cmd.reads_undeclared_keys is not None and len(router.links) > 1 and reads_pattern_keys(argv):
            return CROSS_SHARD  # SORT BY/GET patterns name keys on any shard
        owner = router.slot_owner
        shards = {owner[key_slot(argv[i])] for i in indexes}
        return shards.pop() if len(shards) == 1 else CROSS_SHARD

    def run_router_commands(self, queued: list[list[bytes]]) -> list[list[bytes]]:
        """At EXEC: run the queued router-answered commands now and hand the shard
        their replies as literals, so they take effect only if the transaction runs
        and their errors land inside EXEC's reply, as in Redis."""
        out = []
        for argv in queued:
            if argv[0] == VERB_ROUTER_IN_MULTI:
                argv = argv[1:]
                start_ns = time.perf_counter_ns()
                queued_before = len(self.replies)
                try:
                    cmd = lookup(argv)
                    handler = cmd.handler
                    assert handler is not None, f"router command {argv[0]!r} has no handler"
                    try:
                        reply = handler(self, argv)
                    finally:
                        self.time_slowlog(cmd, argv, start_ns)
                    if type(reply) is Pending and reply.data == b"":
                        # SUBSCRIBE and friends pushed their replies (one per channel): all
                        # of them take this command's place in EXEC's reply, as in Redis.
                        pushed = [self.replies.pop() for _ in range(len(self.replies) - queued_before)]
                        data = b"".join(reversed(pushed))
                    elif isinstance(reply, Pending):
                        # CONFIG SET, ACL SETUSER/DELUSER (Propagating): it took effect here;
                        # EXEC does not wait for its propagation to the other routers and shards.
                        self.replies.remove(reply)
                        data = reply.reply if type(reply) is Propagating else b"+OK\r\n"
                    else:
                        data = encode(reply, self.proto)
                except ReplyError as e:
                    data = encode_error(e.message)
                argv = [VERB_LITERAL, data]
            out.append(argv)
        return out

    def time_slowlog(self, cmd, argv: list[bytes], start_ns: int) -> None:
        """SLOWLOG and LATENCY for a command answered here (a shard logs those it executes)."""
        duration_us = (time.perf_counter_ns() - start_ns) // 1000
        slowlog = self.router.slowlog
        if duration_us >= slowlog.threshold_us and "skip_slowlog" not in cmd.flags:
            slowlog.push(argv, duration_us, self.id, self.addr.encode(), self.name)
        self.router.latency.observe(cmd, duration_us)

    def unwatch_all(self) -> None:
        """Drop this client's WATCHes on every shard that holds some."""
        if self.watch_shards:
            self.router.unwatch(self.id, self.watch_shards)
            self.watch_shards = set()

    # --- replies ----------------------------------------------------------------

    def push(self, data: bytes) -> None:
        """Queue an already-complete reply behind everything sent before it."""
        self.replies.append(data)

    def reply_ready(self) -> None:
        if not self.in_ready_set:
            self.in_ready_set = True
            self.router.client_ready(self)

    def flush(self) -> None:
        """Write every reply at the head of the queue that is complete, and go on
        with the backlog when a blocking command finished or output drained."""
        replies = self.replies
        while not self.closed:
            chunks: list[bytes] = []
            size = 0
            while replies:
                head = replies[0]
                if head is SILENCED:
                    if not self._drop_silenced():
                        break
                    continue
                if type(head) is not bytes:
                    head = head.data
                    if head is None:
                        break
                    if head is LOST:
                        self._lose(chunks, size)
                        return
                if head[:1] == b"-":
                    self.router.reply_stats.error(head)
                chunks.append(head)
                size += len(head)
                replies.popleft()
            if chunks:
                self.write(chunks, size)
            blocked = self.blocked_pending
            if blocked is not None and blocked.data is not None:
                self.blocked_pending = None
                self.blocked_shard = -1
            if not (self.backlog and self.blocked_pending is None and not self.closing and self.can_dispatch()
                    and not self.paused and (self.script_out is None or self.script_out.data is not None)):
                break
            self.run_backlog()
        self._update_interest()

    def silence_current(self) -> None:
        """Drop the reply of the command running now (CLIENT REPLY OFF|SKIP)."""
        if not (self.replies and self.replies[-1] is SILENCED):
            self.replies.append(SILENCED)

    def unsilence_current(self) -> None:
        """Send the reply of the command running now after all (CLIENT REPLY ON)."""
        if self.replies and self.replies[-1] is SILENCED:
            self.replies.pop()

    def _drop_silenced(self) -> bool:
        """The head is SILENCED: drop it and the reply after it once that is complete
        (still counted in errorstats). False while that reply is not complete."""
        replies = self.replies
        if len(replies) < 2:
            return False
        reply = replies[1]
        data = reply if type(reply) is bytes else reply.data
        if data is None or data is LOST:
            if data is LOST:
                replies.popleft()  # flush then meets the LOST reply at the head
                return True
            return False
        if data[:1] == b"-":
            self.router.reply_stats.error(data)
        replies.popleft()
        replies.popleft()
        return True

    def _lose(self, chunks: list[bytes], size: int) -> None:
        """The reply at the head of the queue is LOST (its shard died with the
        command in flight): send the replies before it, then close, as a crashed
        Redis would; nothing after it is answered or run."""
        logger.warning("router: closing client %s: its shard died with a command in flight", self.addr)
        if self.blocked_pending is self.replies[0]:
            self.blocked_pending = None  # its shard is gone, and with it the wait
            self.blocked_shard = -1
        self.replies.clear()
        self.backlog.clear()
        self.closing = True
        if chunks:
            self.write(chunks, size)
        self._update_interest()

    def write(self, chunks: list[bytes], size: int) -> None:
        """Send complete replies, queueing what the kernel does not take."""
        if self.closed:
            return
        written = len(chunks)
        reply_bytes = size // written
        # The window grows as writes prove more small replies; it shrinks back to what
        # the last write proved when the replies' size changes (cheap while neither does).
        if reply_bytes != self.reply_bytes or (written << 1 > self.in_flight_cap
                                               and self.in_flight_cap < MAX_REPLIES_IN_FLIGHT):
            self.reply_bytes = reply_bytes
            self.in_flight_cap = in_flight_cap(reply_bytes, written, self._least_window())
        if self.backlog or self.outbuf:
            self.ahead_reply_min_bytes = min(map(len, chunks))
            if self.backlog and self._asked_past_hard_limit(size):
                self._close_over_limit()
                return
        elif self.ahead_reply_min_bytes:
            self.ahead_reply_min_bytes = 0  # it keeps up: no estimate from older, maybe bigger, replies
        if self.outbuf:
            if len(chunks) > 1 and size < JOIN_BELOW_BYTES:
                chunks = [b"".join(chunks)]
            self.outbuf.extend(chunks)
            self.outbuf_bytes += size
            self.check_output_limits()
            return
        replies = chunks
        if len(chunks) > 1 and size < JOIN_BELOW_BYTES:
            chunks = [b"".join(chunks)]
        try:
            sent = self.sock.send(chunks[0]) if len(chunks) == 1 else self.sock.sendmsg(chunks[:IOV_MAX])
        except BlockingIOError:
            sent = 0
        except OSError:
            self.kill()
            return
        self.router.stats_net_output_bytes += sent
        if sent == size:
            return
        self.ahead_reply_min_bytes = min(map(len, replies))  # each reply's size, not the joined buffer's
        self.outbuf.extend(chunks)
        self.outbuf_bytes += size
        self._drop_sent(sent)
        self.check_output_limits()

    def _asked_past_hard_limit(self, size: int) -> bool:
        """Whether a normal client's output (with `size` bytes about to be written), and
        the replies of the requests it sent that are not answered yet counted at the
        size of the smallest reply of its last write that left some waiting
        (ahead_reply_min_bytes), would pass its hard limit. Redis runs every request
        it read before it writes a reply, and reads a pipelining client again as soon
        as it wrote some: so it closes such a client within its next reads, having
        sent it little (redis-server 7.0: 700 pipelined GETs of 100 KB under a 64 MB
        limit get no reply, read or not). Here it is closed when a write or a read
        shows it, whether or not its output waits for its socket: a client that
        pipelines big GETs and never reads costs the router and its shard a window
        or two of replies, not the ~4 MB its socket buffers would have taken first
        (issue 13: the other clients' latency on the cores they share)."""
        return self._hard_limited() and self.outbuf_bytes + size + (
            len(self.backlog) + len(self.replies)) * self.ahead_reply_min_bytes >= self.router.output_hard_bytes

    def _hard_limited(self) -> bool:
        """A normal client (not a subscriber, whose limit is the pubsub class's) under a hard
        output limit: its window opens at one request and it is read ahead."""
        return bool(self.router.output_hard_bytes) and self.pubsub is None

    def _least_window(self) -> int:
        """The window a client's replies in flight start from (in_flight_cap's `least`)."""
        return HARD_LIMIT_START_REPLIES_IN_FLIGHT if self._hard_limited() else START_REPLIES_IN_FLIGHT

    def _close_over_limit(self) -> None:
        """Close a client over its output limit, with Redis' words in the log."""
        logger.warning("router: client %s closed for overcoming of output buffer limits (%d bytes queued, "
                       "%d requests waiting)", self.addr, self.outbuf_bytes, len(self.backlog))
        self.kill()

    def write_piece(self, piece: memoryview) -> None:
        """A piece of the large reply at the head of the queue, as its shard sends it
        (server/links.py `_stream_reply`): written at once; what the socket does not
        take is copied into outbuf, as piece is the link's reused read buffer."""
        if self.closed:
            return
        size = len(piece)
        if self.outbuf:
            self.outbuf.append(bytes(piece))
            self.outbuf_bytes += size
        else:
            try:
                sent = self.sock.send(piece)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.kill()
                return
            self.router.stats_net_output_bytes += sent
            if sent == size:
                return
            self.outbuf.append(bytes(piece[sent:]))
            self.outbuf_bytes += size - sent
        self.check_output_limits()
        self._update_interest()

    def end_stream(self, pending) -> None:
        """The large reply write_piece wrote is complete: the replies after it may go."""
        pending.data = b""  # complete (a blocked command's reply is looked at so)
        if self.closed:
            return
        replies = self.replies
        assert replies and replies[0] is pending, "a streamed reply left the head of its client's queue"
        replies.popleft()
        self.flush()

    def check_output_limits(self) -> None:
        """Redis' client-output-buffer-limit: for normal clients (default 0 0 0:
        none; backpressure already bounds what a client can pile up), and for a
        subscriber (default 32mb 8mb 60: messages are not backpressured).

        A normal client is closed as soon as the requests it has sent would take it
        past the hard limit, as they would in Redis, which runs what it read at once
        (_asked_past_hard_limit, also asked by write and on_readable before any of its
        output waits for its socket). Over its soft limit it is no longer served (the
        backpressure bound is the soft limit)."""
        hard, soft, soft_seconds = self.router.settings.output_limits("normal" if self.pubsub is None else "pubsub")
        used = self.outbuf_bytes
        over = (bool(hard) and used >= hard) or (bool(self.backlog) and self._asked_past_hard_limit(0))
        if soft and used >= soft:
            now = time.monotonic()
            if not self.soft_limit_since:
                self.soft_limit_since = now
            elif now - self.soft_limit_since > soft_seconds:
                over = True
        else:
            self.soft_limit_since = 0.0
        if over:
            self._close_over_limit()

    def _drop_sent(self, sent: int) -> None:
        outbuf = self.outbuf
        self.outbuf_bytes -= sent
        while sent:
            head = outbuf[0]
            if len(head) <= sent:
                sent -= len(head)
                outbuf.popleft()
            else:
                outbuf[0] = memoryview(head)[sent:]
                sent = 0

    def on_writable(self) -> None:
        outbuf = self.outbuf
        try:
            if len(outbuf) == 1:
                sent = self.sock.send(outbuf[0])
            else:
                sent = self.sock.sendmsg([outbuf[i] for i in range(min(len(outbuf), IOV_MAX))])
        except BlockingIOError:
            return
        except OSError:
            self.kill()
            return
        self.router.stats_net_output_bytes += sent
        self._drop_sent(sent)
        if not self.outbuf_bytes:
            self.soft_limit_since = 0.0  # all written: no longer over a soft limit
        if self.backlog:
            self.flush()  # dispatches more of the backlog if output is now under the bounds
        else:
            self._update_interest()

    def _update_interest(self) -> None:
        """Pause reading under backpressure, ask for writability while output is
        queued, and finish a QUIT or protocol error once everything is written."""
        if self.closed:
            return
        backlog = self.backlog
        if not (backlog or self.outbuf or self.closing or self.soft_limit_since):
            self.router.poller.set_interest(self, True, False)  # the common case: read, nothing to write
            return
        if self.closing and not self.replies and not self.outbuf:
            self.kill()
            return
        if self.soft_limit_since and self.pubsub is None:
            # Over its soft limit it is no longer served, but read on, so that what it asks
            # counts against the hard limit (check_output_limits).
            reading = not self.closing and len(backlog) < MAX_BACKLOG_REQUESTS
        elif self.outbuf_bytes:
            # Backed up: read on (RECV_BYTES a turn) until BACKED_UP_BACKLOG_REQUESTS wait, even
            # if none can run now, so that what it asked counts against the hard limit
            # (check_output_limits) and a non-reader is closed soon, not served 2 replies at a time.
            reading = not self.closing and len(backlog) < BACKED_UP_BACKLOG_REQUESTS
        elif self._hard_limited():
            # Under a hard limit, read ahead as while backed up, also while its window is
            # full: as Redis runs what it reads at once, what it asked counts against the
            # limit (_asked_past_hard_limit), and a non-reader is closed at its first write.
            reading = not self.closing and (len(backlog) < BACKED_UP_BACKLOG_REQUESTS or self.can_dispatch()) \
                and len(backlog) < MAX_BACKLOG_REQUESTS
        else:
            reading = not self.closing and (not backlog or self.can_dispatch()) and len(backlog) < MAX_BACKLOG_REQUESTS
        self.router.poller.set_interest(self, reading, bool(self.outbuf))


def in_flight_cap(reply_bytes: int, written: int, least: int = START_REPLIES_IN_FLIGHT) -> int:
    """How many replies can_dispatch lets a client have in flight while its output is
    not backed up, after a write of `written` replies of reply_bytes each (their mean):
    as many as fit MAX_IN_FLIGHT_BYTES at that size, and no more than twice what the
    write proved, or `least` (a window, see MAX_REPLIES_IN_FLIGHT and
    HARD_LIMIT_START_REPLIES_IN_FLIGHT)."""
    window = max(least, written << 1)
    return min(MAX_REPLIES_IN_FLIGHT, window, -(-MAX_IN_FLIGHT_BYTES // max(reply_bytes, 1)))


class ClientPoller:
    """Reads and writes every client socket from one task: a level-triggered epoll
    set of its own, watched through trio. A task per client would cost a task
    switch and an epoll_ctl per request; this costs one epoll_wait per turn."""

    MAX_EVENTS_PER_TURN = 512

    def __init__(self, end_turn: Callable[[], None] | None = None) -> None:
        self._epoll = select.epoll()
        self._clients: dict[int, Client] = {}
        self._interest: dict[int, int] = {}
        # True while a turn's events are handled: what they queue (requests for a local
        # shard, ready clients) is run and flushed by end_turn, without waking a task.
        # (A node's LocalLink.send sets it too while it fills replies, then flushes.)
        self.in_turn = False
        self._end_turn = end_turn

    def add(self, client: Client) -> None:
        self._clients[client.fd] = client
        self._interest[client.fd] = select.EPOLLIN
        self._epoll.register(client.fd, select.EPOLLIN)

    def remove(self, client: Client) -> None:
        if self._clients.pop(client.fd, None) is not None:
            del self._interest[client.fd]
            self._epoll.unregister(client.fd)

    def set_interest(self, client: Client, reading: bool, writing: bool) -> None:
        mask = (select.EPOLLIN if reading else 0) | (select.EPOLLOUT if writing else 0)
        if self._interest.get(client.fd) != mask and client.fd in self._clients:
            self._interest[client.fd] = mask
            self._epoll.modify(client.fd, mask)

    async def run(self) -> None:
        epoll = self._epoll
        clients = self._clients
        readable = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR
        writable = select.EPOLLOUT
        while True:
            await trio.lowlevel.wait_readable(epoll.fileno())
            self.in_turn = True
            try:
                for fd, events in epoll.poll(0, self.MAX_EVENTS_PER_TURN):
                    client = clients.get(fd)
                    if client is None:
                        continue
                    try:
                        if events & writable:
                            client.on_writable()
                        if events & readable and not client.closed:
                            client.on_readable()
                    except Exception:
                        # A bug must cost one connection, never the router.
                        logger.exception("router: closing client %s after an internal error", client.addr)
                        client.kill()
            finally:
                self.in_turn = False
            if self._end_turn is not None:
                self._end_turn()

    def fileno(self) -> int:
        """The epoll set's descriptor: readable while a client socket has an event."""
        return self._epoll.fileno()

    def nothing_ready(self) -> bool:
        """No client socket has an event waiting (a zero-timeout epoll_wait)."""
        return not self._epoll.poll(0, 1)

    def serve_idle_clients(self) -> None:
        """While the shard of this process holds the loop in a long script (server/node.py's
        ShardNode.serve_while_busy): handle what the sockets hold now, without ending the
        turn (no batch may run), for the clients that wait for no reply, as Redis'
        processEventsWhileBlocked leaves the script's caller (and blocked clients) unread."""
        readable = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR
        was_in_turn = self.in_turn
        self.in_turn = True
        try:
            for fd, events in self._epoll.poll(0, self.MAX_EVENTS_PER_TURN):
                client = self._clients.get(fd)
                if client is None:
                    continue
                try:
                    if events & select.EPOLLOUT:
                        client.on_writable()
                    if events & readable and not client.closed and not client.replies:
                        client.on_readable()
                except Exception:
                    logger.exception("router: closing client %s after an internal error", client.addr)
                    client.kill()
        finally:
            self.in_turn = was_in_turn

    def close(self) -> None:
        for client in list(self._clients.values()):
            client.kill()
        self._epoll.close()
