"""MONITOR: every command any client of any router or shard port runs, as
Redis' replicationFeedMonitors writes it (`+<sec>.<usec> [0 <addr>] "arg" ...`,
arguments escaped as sdscatrepr, passwords of AUTH/HELLO/MIGRATE redacted), and
the commands a script runs on a shard as `[0 lua]`.

A command is fed where it is dispatched (server/client.py: one test of
`monitors.active` per command), so a line is made once, in the process the
client is connected to, and goes to that process's monitors and to every peer
that has some. Peers learn who has monitors from leases over the pub/sub mesh
(server/pubsub.py): a process with monitors announces itself to every peer
(MONITOR's +OK waits until they answered, so no command after it is missed) and
again every MONITOR_ANNOUNCE_INTERVAL_MS; a peer forwards its lines while the
lease holds, so a process that died or lost its last monitor (it announces
"off") stops costing anything within MONITOR_LEASE_MS. While no monitor exists
anywhere, `active` is False and dispatch pays one attribute test.

Script commands run inside a shard: the shard port of that process (server/
node.py) sets the script hook `Scripting.on_call` while it is active."""

from __future__ import annotations

import logging
import re
import time
from typing import TYPE_CHECKING, Any, Callable

import trio

from durakv.shards.frames import VERB_LITERAL, VERB_ROUTER_IN_MULTI
from durakv.shards.table import MULTI_RUN_NOW, ROUTER, Command, command, find

from durakv.server.pubsub import NO_REPLY, PubSub

if TYPE_CHECKING:
    from durakv.server.client import Client

logger = logging.getLogger("durakv.router")

MONITOR_ANNOUNCE_INTERVAL_MS = 1000
MONITOR_LEASE_MS = 3000  # a peer's announcement holds this long (three announcements)
# A monitor is written to without backpressure (Redis counts it a replica, 256mb hard limit):
# past this many bytes waiting for its socket, or this many lines behind a pending reply, it is closed.
MAX_MONITOR_OUTPUT_BYTES = 256 * 1024 * 1024
MAX_MONITOR_QUEUED_LINES = 64 * 1024
OP_MONITOR_ON = "m"  # own path, lease ms -> None: the sender has monitors
OP_MONITOR_OFF = "M"  # own path -> None: the sender has none any more
OP_MONITOR_LINE = "l"  # line -> None: to this process's monitors

REDACTED = b"(redacted)"
ERR_REPLICA_KEYSPACE = b"-ERR Replica can't interact with the keyspace\r\n"
OK_BYTES = b"+OK\r\n"
ERR_MONITOR_IN_MULTI = b"-ERR MONITOR isn't allowed for DENY BLOCKING client\r\n"

# sdscatrepr: printable ASCII as it is but \ and ", which are escaped, and C escapes or \xHH for the rest.
_UNPRINTABLE = re.compile(rb'[^\x20\x21\x23-\x5b\x5d-\x7e]')
_ESCAPES = {i: b"\\x%02x" % i for i in range(256)}
_ESCAPES.update({ord("\\"): b"\\\\", ord('"'): b'\\"', ord("\n"): b"\\n", ord("\r"): b"\\r",
                 ord("\t"): b"\\t", 7: b"\\a", 8: b"\\b"})


def _escape(match: re.Match) -> bytes:
    return _ESCAPES[match[0][0]]


def repr_arg(arg: bytes) -> bytes:
    """Redis' sdscatrepr of one argument, quotes included."""
    return b'"' + _UNPRINTABLE.sub(_escape, arg) + b'"'


def monitor_line(source: bytes, argv: list[bytes]) -> bytes:
    """One line as replicationFeedMonitors makes it, with the time of now."""
    now_us = time.time_ns() // 1000
    seconds, micros = divmod(now_us, 1_000_000)
    return b"+%d.%06d [0 %s] %s\r\n" % (seconds, micros, source, b" ".join(repr_arg(bytes(a)) for a in argv))


def redacted(argv: list[bytes]) -> list[bytes]:
    """The arguments Redis replaces by "(redacted)" before monitors see them: AUTH's
    (when its arity is right), HELLO's AUTH pair, MIGRATE's AUTH and AUTH2."""
    name = argv[0].lower()
    if name == b"auth":
        return [argv[0], *[REDACTED] * (len(argv) - 1)] if len(argv) <= 3 else argv
    if name == b"hello":
        out = list(argv)
        j = 2
        while j < len(out):
            option = out[j].lower()
            if option == b"auth" and j + 2 < len(out):
                out[j + 1] = out[j + 2] = REDACTED
                j += 3
            elif option == b"setname" and j + 1 < len(out):
                j += 2
            else:
                break
        return out
    if name == b"migrate":
        out = list(argv)
        j = 6
        while j < len(out):
            option = out[j].lower()
            if option == b"auth" and j + 1 < len(out):
                out[j + 1] = REDACTED
                j += 2
            elif option == b"auth2" and j + 2 < len(out):
                out[j + 1] = out[j + 2] = REDACTED
                j += 3
            elif option == b"keys":
                break
            else:
                j += 1
        return out
    return argv


def _fed(cmd: Command | None) -> bool:
    """Redis does not show administrative commands (CONFIG, DEBUG, MONITOR...)."""
    return cmd is not None and "admin" not in cmd.flags


def _touches_keyspace(cmd: Command) -> bool:
    """What processCommand refuses a monitor (a replica): reads, writes and may_replicate."""
    return cmd.is_readonly or cmd.is_write or "may_replicate" in cmd.flags


class Monitors:
    """This process's MONITOR clients, and the peers that have some (leases)."""

    def __init__(self, front: Any) -> None:
        self.front = front
        self.clients: dict[Client, None] = {}
        self.leases: dict[str, float] = {}  # peer control socket path -> monotonic expiry
        self.active = False  # some monitor exists here or at a peer: dispatch feeds
        self.on_active_change: Callable[[bool], None] | None = None  # a shard port's script hook
        self._announcing = False
        self._overflowed: list[Client] = []

    @property
    def pubsub(self) -> PubSub:
        return self.front.pubsub

    def _update_active(self) -> None:
        active = bool(self.clients or self.leases)
        if active != self.active:
            self.active = active
            if self.on_active_change is not None:
                self.on_active_change(active)

    # --- monitors here ----------------------------------------------------------------

    def add(self, client: Client) -> Any:
        """MONITOR: the reply waits until every peer that is up heard of it."""
        self.clients[client] = None
        client.monitor = True
        self._update_active()
        if not self._announcing:
            self._announcing = True
            assert self.front.nursery is not None, "MONITOR before serve() started"
            self.front.nursery.start_soon(self._announce)
        own = self.front.settings_sync.own_path
        return self.pubsub.ask_all(client, OP_MONITOR_ON, [own, MONITOR_LEASE_MS], lambda _parts: OK_BYTES)

    def remove(self, client: Client) -> None:
        if client in self.clients:
            del self.clients[client]
            client.monitor = False
            if not self.clients:
                own = self.front.settings_sync.own_path
                for peer in self.pubsub.peers:
                    peer.send(0, [0, OP_MONITOR_OFF, own])
            self._update_active()

    async def _announce(self) -> None:
        """Renew this process's lease at every peer while it has monitors (the last
        one to go says "off", `remove`)."""
        own = self.front.settings_sync.own_path
        try:
            while self.clients:
                await trio.sleep(MONITOR_ANNOUNCE_INTERVAL_MS / 1000)
                if not self.clients:
                    break
                for peer in self.pubsub.peers:
                    peer.send(0, [0, OP_MONITOR_ON, own, MONITOR_LEASE_MS])
        finally:
            self._announcing = False

    # --- feeding ----------------------------------------------------------------------

    def intercept(self, client: Client, cmd: Command, argv: list[bytes]) -> bool:
        """Called by dispatch while `active`: refuse a monitor's keyspace commands as
        Redis refuses a replica's (True: refused), else feed the command unless it
        is queued in MULTI (EXEC feeds the queued commands before itself)."""
        if client.monitor and _touches_keyspace(cmd):
            client._reject(cmd, ERR_REPLICA_KEYSPACE)
            return True
        if client.multi is not None and not cmd.runs_in_multi:
            return False
        if not _fed(cmd):
            return False
        source = client.addr.encode()
        if cmd.name == "exec" and client.multi is not None and not client.multi_error:
            for queued in client.multi:
                if queued[0] == VERB_ROUTER_IN_MULTI:
                    queued = queued[1:]
                if _fed(find(queued)):
                    self.deliver(monitor_line(source, redacted(queued)))
        elif cmd.name == "reset" and client.monitor:
            self.remove(client)  # RESET ends monitoring before Redis feeds it
        self.deliver(monitor_line(source, redacted(argv)))
        return False

    def feed_lua(self, argv: list[bytes]) -> None:
        """A command a script ran on this process's shard (Scripting.on_call)."""
        self.deliver(monitor_line(b"lua", argv))

    def deliver(self, line: bytes) -> None:
        """To the monitors here and to every peer whose lease holds."""
        self._deliver_here(line)
        if self.leases:
            now = time.monotonic()
            expired = [path for path, until in self.leases.items() if until < now]
            for path in expired:
                del self.leases[path]
            if expired:
                self._update_active()
            for peer in self.pubsub.peers:
                if peer.path in self.leases:
                    peer.send(0, [0, OP_MONITOR_LINE, line])
        elif not self.clients:
            self._update_active()

    def _deliver_here(self, line: bytes) -> None:
        for client in self.clients:
            if client.outbuf_bytes > MAX_MONITOR_OUTPUT_BYTES or len(client.replies) > MAX_MONITOR_QUEUED_LINES:
                logger.warning("router %d: closing monitor %s: %d bytes of output waiting",
                               self.front.index, client.addr, client.outbuf_bytes)
                self._overflowed.append(client)
                continue
            client.push(line)
            client.reply_ready()
        if self._overflowed:
            overflowed, self._overflowed = self._overflowed, []
            for client in overflowed:
                client.kill()  # forgets it: never while the loop above walks the monitors

    # --- requests from peers (server/pubsub.py's PubSub.local) -------------------------

    def peer_request(self, op: str, args: list[Any]) -> None:
        if op == OP_MONITOR_LINE:
            self._deliver_here(args[0])
            return None
        path = args[0]
        if path == self.front.settings_sync.own_path:
            return None  # MONITOR's ask_all answers here first
        if op == OP_MONITOR_ON:
            self.leases[path] = time.monotonic() + int(args[1]) / 1000
        else:
            self.leases.pop(path, None)
        self._update_active()
        return None


MONITOR_OPS = (OP_MONITOR_ON, OP_MONITOR_OFF, OP_MONITOR_LINE)


@command("monitor", 1, "admin noscript loading stale", group="server", where=ROUTER, multi=MULTI_RUN_NOW)
def monitor(client: Client, argv: list[bytes]):
    if client.multi is not None:
        # Queued, and refused when EXEC runs it, as Redis refuses a client that must not block.
        client.multi.append([VERB_LITERAL, ERR_MONITOR_IN_MULTI])
        client.push(b"+QUEUED\r\n")
        return NO_REPLY
    if client.monitor:
        return NO_REPLY  # Redis ignores MONITOR from a monitor: no reply at all
    return client.router.monitors.add(client)

