"""What the router and a shard's client port share: the client list and its
accept loop, reply flushing once per turn, and the routing helpers that fan a
command out to shards and merge their replies. `Router` (server/router.py)
reaches shards over ShardLinks; `ShardNode` (server/node.py) is a Redis Cluster
node inside a shard process whose one link executes locally. Clients
(server/client.py) see either through server/router_view.py's RouterView."""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from abc import ABC, abstractmethod
from typing import Any, Sequence

import trio

from durakv.server import client_limits, protected
from durakv.server.acl import Users
from durakv.server.client import Client, ClientPoller
from durakv.server.client_count import ClientCount
from durakv.server.links import LOST, Pending
from durakv.server.monitor import MONITOR_OPS, Monitors
from durakv.server.listener import ClientListeners
from durakv.server.pubsub import PubSub
from durakv.server.tracking import Tracking
from durakv.server.settings import Settings
from durakv.server.pause import ClientPause
from durakv.server.stats import ReplyStats
from durakv.server.tls import TlsPort, TlsSocket
from durakv.shards.config import Config
from durakv.shards.oom_flags import OomFlags
from durakv.shards.frames import (
    PROTO_INTERNAL, VERB_EXPIRY_PAUSE, VERB_UNBLOCK, VERB_UNWATCH, internal_reply_decoder,
)
from durakv.shards.resp import ReplyError, encode, encode_error
from durakv.shards.slots import SLOT_COUNT, key_slot
from durakv.server.logsetup import change_level as change_log_level
from durakv.server.rates import InstantRates
from durakv.shards.latency import LatencyMonitor
from durakv.shards.slowlog import SlowLog
from durakv.shards.table import Command, Merge

logger = logging.getLogger("durakv.router")

ACCEPT_ERROR_PAUSE_S = 0.1
MAX_ACCEPTS_PER_WAKEUP = 64
FD_SHORTAGE_LOG_INTERVAL_S = 10.0
ERR_MAX_CLIENTS = b"-ERR max number of clients reached\r\n"
SCAN_DEFAULT_COUNT = 10


class Gather:
    """One client reply assembled from several shard replies. If any part is
    LOST (its shard died with it in flight) the whole reply is: a DEL split over
    shards may have deleted some keys, so no count can be given."""

    __slots__ = ("pending", "parts", "left", "finish", "lost")

    def __init__(self, client: Client, count: int, finish) -> None:
        self.pending = Pending(client)
        self.parts: list = [None] * count
        self.left = count
        self.finish = finish
        self.lost = False
        client.replies.append(self.pending)

    def part(self, index: int) -> Pending:
        return Pending(self.pending.client, on_fill=lambda _pending, data: self._got(index, data))

    def _got(self, index: int, data: bytes) -> None:
        self.parts[index] = data
        self.left -= 1
        if data is LOST:
            self.lost = True
        if self.left == 0:
            self.complete()

    def complete(self) -> None:
        """Every part is in (or none was asked for): merge and fill the reply; one
        part of unknown outcome makes the whole reply unknown."""
        if self.lost:
            self.pending.fill(LOST)
            return
        try:
            reply = self.finish([decode_internal(p) for p in self.parts])
        except ReplyError as e:
            reply = encode_error(e.message)
        except Exception:
            logger.exception("router: merging shard replies failed")
            reply = encode_error(b"ERR internal error merging shard replies")
        self.pending.fill(reply)


def scan_count(argv: list[bytes]) -> int:
    """SCAN's COUNT hint (the shard validates it; a bad one errors there)."""
    for i in range(2, len(argv) - 1):
        if argv[i].upper() == b"COUNT" and argv[i + 1].isdigit():
            return int(argv[i + 1])
    return SCAN_DEFAULT_COUNT


def decode_internal(data: bytes) -> Any:
    """A shard's internal reply: the value, or raises ReplyError."""
    if data[:1] == b"-":
        raise ReplyError(data[1:-2])
    ok, value = internal_reply_decoder.decode(data)
    if not ok:
        raise ReplyError(value)
    return value


class Front(ABC):
    """The client-serving half of a router or a shard node. Subclasses set
    `links` (one per shard, indexed by shard), `slot_owner`, `node_id`,
    `shard_node_ids` and `settings_sync`, and give client ids. The routing
    rules here are the router's; a node (server/node.py) overrides them."""

    links: Sequence[Any]
    slot_owner: Sequence[int]
    node_id: str
    shard_node_ids: list[str]
    router_node_id: str  # the router's node id (the one node with cluster-announce "router")
    cluster_node = False  # a shard's node: Redis Cluster's per-slot rules (Client.dispatch)
    home_shard = 0  # where keyless commands that are not fanned out run
    scripts_retry = False  # a script reaching another shard's key runs again across shards (server/script_retry.py)
    reaching: Any = ()  # the scripts that did (script_retry.Reaching, where scripts_retry)
    script_scopes: Any = None  # script_scope.ScriptScopes, where scripts_retry
    scan_last_slot = SLOT_COUNT - 1  # SCAN hands on to the next shard until past this slot
    scripts_in_flight = 0  # EVAL/FCALL sent to shards and not answered yet (server/links.py counts)
    settings_sync: Any  # SettingsSync (imported by the subclasses)
    directory: Any = None  # NodeDirectory on a node of several (server/node_links.py)
    slowlog: SlowLog  # the commands answered here (a node shares its shard's)

    def __init__(self, config: Config, index: int) -> None:
        self.config = config
        self.index = index
        self.clients: dict[int, Client] = {}
        self.ready_clients: list[Client] = []
        self._flush_wake = trio.Event()
        self._client_seq = 0
        self.started_at = time.time()
        self.started_monotonic = time.monotonic()
        self.settings = Settings(config)
        self.settings.on_apply = self.settings_applied
        # The TLS side of this client port (server/tls.py), None without a tls-port.
        self.tls = TlsPort(self.settings.values) if config.tls_port else None
        self.output_backpressure_bytes = client_limits.output_backpressure_bytes(self.settings)
        self.output_hard_bytes = client_limits.output_hard_bytes(self.settings)
        self.latency = LatencyMonitor()  # LATENCY of the commands answered here (a node's is its shard's)
        self.log_level = self.settings.values["loglevel"]  # this process's, as CONFIG SET loglevel last set it
        self.stats_commands = 0
        self.stats_connections = 0
        self.stats_rejected_connections = 0
        self.stats_net_input_bytes = 0  # read from client sockets (server/client.py)
        self.stats_net_output_bytes = 0  # written to client sockets
        self.rates = InstantRates()  # INFO's instantaneous_* (server/rates.py)
        self.stats_protocol_errors = 0
        self.reply_stats = ReplyStats()  # errorstats and the commandstats of what this process answers
        self.pause = ClientPause()
        self.pause.on_change = self._pause_expiry
        self.large_requests = 0  # bumped by a client that read a large argument (server/links.py)
        self.port = config.port
        self.nursery: trio.Nursery | None = None
        self.poller = ClientPoller(self.end_turn)
        self.pubsub = PubSub(self)
        self.tracking = Tracking(self)
        self.tracking.enforce_limit()
        self.monitors = Monitors(self)
        for op in MONITOR_OPS:
            self.pubsub.extra_ops[op] = self.monitors.peer_request
        self.acl = Users(self)  # ACL users (server/acl.py)
        # maxclients counts the clients of every router and shard port (server/client_count.py).
        self.oom_flags = OomFlags(config.data_dir)
        self.client_count = ClientCount(config.data_dir, "shard" if self.cluster_node else "router", index,
                                        config.routers, config.shards)

    @abstractmethod
    def new_client_id(self) -> int: ...

    def settings_applied(self) -> None:
        """After every CONFIG SET applied here: what caches a parameter's value."""
        self.configure_slowlog()
        values = self.settings.values
        self.acl.settings_applied(values)
        self.tracking.enforce_limit()
        self.output_backpressure_bytes = client_limits.output_backpressure_bytes(self.settings)
        self.output_hard_bytes = client_limits.output_hard_bytes(self.settings)
        if self.tls is not None:
            self.tls.reconfigure(values)
        for name in ("latency-monitor-threshold", "latency-tracking"):
            self.latency.configure(name, values[name])
        if values["loglevel"] != self.log_level:
            self.log_level = values["loglevel"]
            change_log_level(self.log_level, "CONFIG SET loglevel")

    def configure_slowlog(self) -> None:
        values = self.settings.values
        self.slowlog.configure(int(values["slowlog-log-slower-than"]), int(values["slowlog-max-len"]))

    # --- reply flushing -----------------------------------------------------------

    def flush_ready_clients(self) -> None:
        ready = self.ready_clients
        if not ready:
            return
        self.ready_clients = []
        for client in ready:
            client.in_ready_set = False
            client.flush()

    def flush_complete_clients(self) -> None:
        """After a shard link's frames filled replies: write each ready client whose
        replies are all in. One whose later replies wait for another shard is left to
        the flusher task, which runs after the other links' receives woken with this
        one, so a pipeline across shards is usually written in one send, not one per
        shard (issue 11 §3); what is in by then goes out even if the rest is not."""
        ready = self.ready_clients
        if not ready:
            return
        self.ready_clients = []
        waiting = []
        for client in ready:
            replies = client.replies
            if len(replies) > 1:  # one reply (P1): nothing to wait for
                for reply in replies:
                    kind = type(reply)
                    if kind is Pending:  # the commonest kind, without a getattr call (per command)
                        if reply.data is None:
                            break
                    elif kind is not bytes and getattr(reply, "data", None) is None:  # not in (or SILENCED)
                        break
                else:
                    reply = None
                if reply is not None:
                    waiting.append(client)
                    continue
            client.in_ready_set = False
            client.flush()
        if waiting:
            self.ready_clients.extend(waiting)  # still in_ready_set
            self._flush_wake.set()

    def client_ready(self, client: Client) -> None:
        if not self.ready_clients and not self.poller.in_turn:
            self._flush_wake.set()  # in the poller's turn, end_turn flushes
        self.ready_clients.append(client)

    def end_turn(self) -> None:
        """After the poller handled a turn's client events: write the replies that
        became ready meanwhile (no flusher task woken per turn)."""
        self.flush_ready_clients()

    async def _flusher(self) -> None:
        while True:
            await self._flush_wake.wait()
            self._flush_wake = trio.Event()
            self.flush_ready_clients()

    # --- routing helpers ------------------------------------------------------------

    def keys_shard(self, client: Client, argv: list[bytes], indexes: list[int]) -> int:
        """The one shard owning every key at `indexes` (WATCH, MULTI), else CROSSSLOT."""
        owner = self.slot_owner
        shards = {owner[key_slot(argv[i])] for i in indexes}
        if len(shards) > 1:
            raise ReplyError(b"CROSSSLOT Keys in request don't hash to the same slot")
        return shards.pop()

    def single_shard(self) -> int:
        """The shard a whole-keyspace command runs on inside MULTI (one only)."""
        if len(self.links) > 1:
            raise ReplyError(b"CROSSSLOT Keys in request don't hash to the same slot")
        return 0

    def _pause_expiry(self, until_unix_ms: int) -> None:
        """CLIENT PAUSE freezes expiry on the shards until it ends (Redis keeps the
        dataset constant while clients are paused)."""
        for link in self.links:
            if link.up:
                link.submit(None, PROTO_INTERNAL, [VERB_EXPIRY_PAUSE, b"%d" % until_unix_ms],
                            Pending(None, on_fill=_ignore_reply))

    def fanout(self, client: Client, argv: list[bytes], merge: Merge) -> None:
        """A whole-keyspace command: to every shard, replies merged by the command's `merge`."""
        gather = Gather(client, len(self.links), lambda parts: merge(parts, client.proto))
        for i, link in enumerate(self.links):
            link.submit(client, PROTO_INTERNAL, argv, gather.part(i))

    def fanout_internal(self, client: Client, argv: list[bytes], finish,
                        shards: list[int] | None = None) -> Pending:
        """Ask every shard (or those listed) an internal question; `finish(values)`
        makes the reply bytes."""
        indexes = range(len(self.links)) if shards is None else shards
        gather = Gather(client, len(indexes), finish)
        for n, shard in enumerate(indexes):
            self.links[shard].submit(client, PROTO_INTERNAL, argv, gather.part(n))
        if not indexes:
            gather.complete()
        return gather.pending

    def after(self, seconds: float, fn) -> None:
        """Run fn after a delay (DEBUG SLEEP), in the router's nursery."""

        async def timer() -> None:
            await trio.sleep(seconds)
            fn()

        assert self.nursery is not None, "after() before serve() started"
        self.nursery.start_soon(timer)

    def ask_shard(self, client: Client, shard: int, argv: list[bytes], finish) -> Pending:
        gather = Gather(client, 1, lambda parts: finish(parts[0]))
        self.links[shard].submit(client, PROTO_INTERNAL, argv, gather.part(0))
        return gather.pending

    def split(self, client: Client, argv: list[bytes], cmd: Command, indexes: list[int]) -> None:
        """MGET, EXISTS, DEL... whose keys live on several shards, isolated from
        cross-shard writes (the router: server/txn_read.py); a shard's node answers
        CROSSSLOT, as Redis Cluster does."""
        raise ReplyError(b"CROSSSLOT Keys in request don't hash to the same slot")

    def split_watch(self, client: Client, argv: list[bytes]) -> set[int]:
        """WATCH on the router: each shard watches its own keys (EXEC checks them
        all, server/txn.py); one OK once all have. Returns the shards."""
        owner = self.slot_owner
        by_shard: dict[int, list[bytes]] = {}
        for key in argv[1:]:
            by_shard.setdefault(owner[key_slot(key)], []).append(key)
        gather = Gather(client, len(by_shard), lambda parts: b"+OK\r\n")
        for n, (shard, keys) in enumerate(by_shard.items()):
            self.links[shard].submit(client, PROTO_INTERNAL, [argv[0], *keys], gather.part(n))
        return set(by_shard)

    def cursor_shard(self, cursor: bytes) -> int:
        """SCAN cursors are hash slots: the shard owning the slot continues the scan."""
        slot = int(cursor) if cursor.isdigit() and len(cursor) < 6 else 0
        return self.slot_owner[min(slot, len(self.slot_owner) - 1)]

    def route_cursor(self, client: Client, argv: list[bytes]) -> None:
        """SCAN: start on the shard owning the cursor's slot; while a shard ends its
        range with fewer than COUNT keys, go on with the next shard, so a small
        keyspace is walked in one call and the last shard's end answers cursor 0."""
        count = scan_count(argv)
        pending = Pending(client)
        client.replies.append(pending)
        keys: list[bytes] = []
        proto = client.proto

        def step(shard: int, sub_argv: list[bytes]) -> None:
            self.links[shard].submit(client, PROTO_INTERNAL, sub_argv, Pending(client, on_fill=got))

        def got(_part: Pending, data: bytes) -> None:
            if data is LOST:
                pending.fill(LOST)
                return
            try:
                cursor, found = decode_internal(data)
            except ReplyError as e:
                pending.fill(encode_error(e.message))
                return
            keys.extend(found)
            next_slot = int(cursor)
            if next_slot > self.scan_last_slot:  # a node's scan ends with its own slots
                next_slot, cursor = 0, b"0"
            if next_slot and len(keys) < count:
                step(self.slot_owner[next_slot], [argv[0], cursor, *argv[2:]])
            else:
                pending.fill(encode([cursor, keys], proto))

        step(self.cursor_shard(argv[1]), argv)

    def unwatch(self, client_id: int, shards: set[int]) -> None:
        for shard in shards:
            self.links[shard].submit(None, PROTO_INTERNAL, [VERB_UNWATCH, b"%d" % client_id],
                                     Pending(None, on_fill=_ignore_reply))

    def cross_shard(self, client: Client, commands: list[list[bytes]], multi: bool) -> Pending:
        """Run commands whose keys live on several shards atomically (the router:
        server/txn.py); a shard's node answers CROSSSLOT, as Redis Cluster does."""
        raise ReplyError(b"CROSSSLOT Keys in request don't hash to the same slot")

    def retry_script(self, client: Client, pending: Pending, run: list[bytes], keys: list[bytes]) -> None:
        """Never on a shard's node (scripts_retry is False): its scripts keep Redis Cluster's error."""
        raise AssertionError("a shard's node does not run scripts again across shards")

    def blocking_move(self, client: Client, argv: list[bytes]) -> Pending:
        """BLMOVE/BRPOPLPUSH across shards (the router: server/txn.py)."""
        raise ReplyError(b"CROSSSLOT Keys in request don't hash to the same slot")

    def shards_up(self) -> bool:
        return all(link.up for link in self.links)

    @abstractmethod
    def busy_error(self, any_shard: bool) -> bytes | None: ...

    # --- clients ------------------------------------------------------------------

    def forget(self, client: Client) -> None:
        self.clients.pop(client.id, None)
        self.client_count.publish(len(self.clients))
        client.unwatch_all()
        if client.pubsub is not None:
            self.pubsub.forget(client)
        if client.tracking is not None:
            self.tracking.disable(client)
        if client.monitor:
            self.monitors.remove(client)
        if client.blocked_pending is not None and client.blocked_shard >= 0:  # -1: a cross-shard transaction
            self.links[client.blocked_shard].submit(
                None, PROTO_INTERNAL, [VERB_UNBLOCK, b"%d" % client.id, b"drop"],
                Pending(None, on_fill=_ignore_reply))

    async def serve_ports(self, listeners: ClientListeners, nursery: trio.Nursery) -> None:
        """Accept clients on the plain port and the TLS port, whichever are open."""
        nursery.start_soon(client_limits.cron, self)
        nursery.start_soon(self.rates.run, self)
        if listeners.tls is not None:
            assert self.tls is not None, "a TLS listener without a tls-port"
            nursery.start_soon(self._accept_loop, listeners.tls, nursery, self.tls)
        if listeners.plain is not None:
            await self._accept_loop(listeners.plain, nursery)

    async def _accept_loop(self, listener: socket.socket, nursery: trio.Nursery, tls: TlsPort | None = None) -> None:
        spare = SpareFd()
        while True:
            await trio.lowlevel.wait_readable(listener)
            # Every connection waiting, up to a bound, per wakeup (as Redis' acceptTcpHandler):
            # one wakeup each cost a trio task switch and an epoll_ctl re-arm per connection.
            for _ in range(MAX_ACCEPTS_PER_WAKEUP):
                try:
                    sock, peer = listener.accept()
                except BlockingIOError:
                    break
                except OSError as e:
                    if e.errno not in (errno.EMFILE, errno.ENFILE):
                        logger.error("router: accept failed: %s", e)
                        await trio.sleep(ACCEPT_ERROR_PAUSE_S)
                        break
                    # Out of descriptors: answer with the spare one rather than leave
                    # the connection mute in the backlog.
                    self.stats_connections += 1
                    self.stats_rejected_connections += 1
                    if not spare.refuse(listener, e):
                        await trio.sleep(ACCEPT_ERROR_PAUSE_S)
                        break
                    continue
                self._admit(sock, peer, nursery, tls)

    def _admit(self, sock: socket.socket, peer: tuple, nursery: trio.Nursery, tls: TlsPort | None) -> None:
        """A connection just accepted: refused (maxclients, protected mode), handed to
        its TLS handshake, or made a client of the poller."""
        self.stats_connections += 1
        if tls is not None:
            # maxclients is checked once the handshake is done, so the error reaches the client.
            if tls.handshakes >= self.settings.maxclients:
                self.stats_rejected_connections += 1
                sock.close()
                return
            self._prepare(sock)
            nursery.start_soon(tls.accept, self, sock)
            return
        if self.client_count.total() >= self.settings.maxclients:
            self.stats_rejected_connections += 1
            refuse(sock)
            return
        if protected.refused(self, sock, peer):
            return
        self._prepare(sock)
        client = Client(self, sock, self.new_client_id(), peer)
        self.clients[client.id] = client
        self.client_count.publish(len(self.clients))
        self.poller.add(client)

    def _prepare(self, sock: socket.socket) -> None:
        """A new connection's socket options: non-blocking, and over TCP no Nagle delay
        and the configured keepalive (a Unix socket has neither)."""
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client_limits.set_keepalive(sock, int(self.settings.values["tcp-keepalive"]))

    def add_tls_client(self, conn: TlsSocket) -> None:
        """A client whose TLS handshake is done (server/tls.py)."""
        if self.client_count.total() >= self.settings.maxclients:
            self.stats_rejected_connections += 1
            refuse(conn)
            return
        if protected.refused(self, conn):
            return
        client = Client(self, conn, self.new_client_id())
        self.clients[client.id] = client
        self.client_count.publish(len(self.clients))
        self.poller.add(client)
        client.on_readable()  # requests sent with the handshake's end wait in the TlsSocket, unseen by epoll




def refuse(sock: socket.socket | TlsSocket) -> None:
    try:
        sock.send(ERR_MAX_CLIENTS)
    except OSError:
        pass
    finally:
        sock.close()


class SpareFd:
    """One descriptor held in reserve: when accept fails for lack of
    descriptors, it is freed to accept the connection and refuse it with Redis'
    error, then taken again. Logged once per interval, with a count."""

    def __init__(self) -> None:
        self.fd: int | None = os.open(os.devnull, os.O_RDONLY)
        self.refused = 0
        self.logged_at = -FD_SHORTAGE_LOG_INTERVAL_S

    def refuse(self, listener: socket.socket, error: OSError) -> bool:
        """Accept and refuse one connection; False if even that was impossible."""
        self.refused += 1
        now = time.monotonic()
        if now - self.logged_at >= FD_SHORTAGE_LOG_INTERVAL_S:
            logger.warning("router: accept failed: %s; refused %d connections with 'max number of clients "
                        "reached' since the last report (raise 'ulimit -n' or lower maxclients)",
                        error, self.refused)
            self.logged_at = now
            self.refused = 0
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        try:
            sock, _ = listener.accept()
            refuse(sock)  # closed before the spare is taken again: it uses that descriptor
            return True
        except OSError:
            return False
        finally:
            try:
                self.fd = os.open(os.devnull, os.O_RDONLY)
            except OSError:
                self.fd = None


def _ignore_reply(pending: Pending, data: bytes) -> None:
    if data[:1] == b"-" and data is not LOST:
        logger.warning("router: shard rejected an internal request: %r", data[:200])


