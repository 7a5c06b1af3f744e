"""A shard's client port: the shard process is a Redis Cluster node there.

Clients on it are the router's `Client` (server/client.py) with this view behind
them instead of a Router: the same parsing, reply ordering, MULTI, blocking and
connection commands. What differs is dispatch. The link of this shard is a
`LocalLink`, which collects a turn's requests and runs them through the shard's
`execute_batch` (so replies after fsync and read hazards apply unchanged); the
link of every other shard is a `MovedLink`, which answers `-MOVED slot ip:port`
of that shard's port. Multi-key commands follow Redis Cluster's rule (every key
in one slot, else CROSSSLOT), and keyless and fan-out commands answer for this
shard's slots only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import trio

import durakv.server.commands  # noqa: F401  (registers the router's own commands)
from durakv.server import script_cache
from durakv.server.client import ERR_CROSSSLOT, NODE_CLIENT_ID_BASE, Client
from durakv.server.cluster_view import Node, announced_ip, primary_node
from durakv.server.front import Front, Gather
from durakv.server.links import SCRIPT_NONE, Pending
from durakv.server.listener import ClientListeners
from durakv.server.node_links import NodeDirectory
from durakv.server.tls import is_tls
from durakv.server.settings_sync import SettingsSync
from durakv.server.topology import ensure_topology, replica_node_id, shard_node_ids
from durakv.shards import busy, internal, link_turn
from durakv.shards.config import Config, replica_port, shard_port, tls_replica_port, tls_shard_port
from durakv.shards.frames import INTERNAL_PREFIX, PROTO_INTERNAL, VERB_CONFIG, Request
from durakv.shards.records import BIG_EFFECT_ARG_BYTES
from durakv.shards.resp import ReplyError, encode_error
from durakv.shards.process import ClientPort
from durakv.shards.luaenv import Run, scripting_of
from durakv.shards.shard import Shard
from durakv.shards.shard_settings import SHARD_PARAMS
from durakv.shards.slots import key_slot, slot_owner_table, slot_ranges
from durakv.shards.table import Merge, lookup

logger = logging.getLogger("durakv.node")

CROSSSLOT_MESSAGE = ERR_CROSSSLOT[1:-2]


class LocalLink:
    """ShardLink's interface (`submit`) over the shard in this process. Requests
    queued in one loop turn run as one `execute_batch`; the link is the batch's
    ReplySink, so held replies come back through `send` once durable."""

    __slots__ = ("node", "shard", "index", "up", "ever_up", "_queue", "_pending", "_next_rid", "_wake",
                 "frames_sent", "requests_sent", "busy_run")

    def __init__(self, node: ShardNode, shard: Shard) -> None:
        self.node = node
        self.shard = shard
        self.index = shard.index
        self.up = True
        self.ever_up = trio.Event()
        self.ever_up.set()
        self._queue: list[Request] = []
        self._pending: dict[int, Pending] = {}
        self._next_rid = 1
        self._wake = trio.Event()
        self.frames_sent = 0  # batches run (INFO reads these as it reads a ShardLink's)
        self.requests_sent = 0
        self.busy_run: Run | None = None  # the shard's script past busy-reply-threshold (ShardNode.serve_while_busy)

    def submit(self, client: Client | None, proto: int, argv: list[bytes], pending: Pending | None = None,
               script: int = SCRIPT_NONE) -> Pending:
        """`script` is for a router's timing of scripts: a node's own script holds
        this very loop, so nothing here could answer meanwhile."""
        if pending is None:
            pending = Pending(client)
        run = self.busy_run
        if run is not None:  # the shard holds the loop in a long script: answered as its hook answers
            pending.fill(busy.busy_reply(run, argv, proto))
            return pending
        if client is not None and client.parser.big_args and max(map(len, argv)) >= BIG_EFFECT_ARG_BYTES:
            self.shard.big_values_pending = True  # its record keeps the value in its own buffer
        rid = self._next_rid
        self._next_rid = rid + 1
        self._pending[rid] = pending
        self._queue.append(Request(rid, client.id if client is not None else 0, proto, argv))
        if len(self._queue) == 1 and not self.node.poller.in_turn:
            self._wake.set()  # in the poller's turn, ShardNode.end_turn runs the batch
        return pending

    def send(self, replies: list[tuple[int, bytes]]) -> None:
        """ReplySink: the shard's replies (now, or released after an fsync). Outside
        the poller's turn (the committer released them) the clients are written from
        here, as a turn of their own: no flusher task is woken."""
        poller = self.node.poller
        if poller.in_turn:
            self._fill(replies)
            return
        poller.in_turn = True
        try:
            self._fill(replies)
        finally:
            poller.in_turn = False
        if self._queue:
            self._wake.set()  # a fill's callback asked this shard more (a SCAN's next step)
        self.node.flush_ready_clients()

    def _fill(self, replies: list[tuple[int, bytes]]) -> None:
        """Pending.fill, Client.reply_ready and Front.client_ready inlined for a plain
        reply (three calls per command fewer): in the poller's turn, a ready client
        only joins the list end_turn or send flushes."""
        pending = self._pending
        node = self.node
        for rid, data in replies:
            place = pending.pop(rid)
            if place.on_fill is not None:
                place.fill(data)
                continue
            place.data = data
            client = place.client
            if not client.in_ready_set:
                client.in_ready_set = True
                node.ready_clients.append(client)  # not held across fills: a callback may flush

    async def run(self) -> None:
        """Runs what was submitted outside the poller's turn (timers, other tasks)."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            self.run_batch()
            self.node.flush_ready_clients()

    def run_batch(self) -> None:
        """Execute everything queued as one batch."""
        batch = self._queue
        if not batch:
            return
        self._queue = []
        self.frames_sent += 1
        self.requests_sent += len(batch)
        replies = self.shard.execute_batch(self, batch)
        if replies:
            self.send(replies)


class MovedLink:
    """Another shard, as seen from this node: whatever is sent to it is answered
    `-MOVED <slot> <ip>:<its port>`, as a cluster node answers for a slot it does
    not own. Only the first key decides (multi-key commands were checked for
    CROSSSLOT before)."""

    __slots__ = ("node", "index", "up", "frames_sent", "requests_sent")

    def __init__(self, node: ShardNode, index: int) -> None:
        self.node = node
        self.index = index
        self.up = True  # not watched from here; INFO on a node reports its own shard
        self.frames_sent = 0  # nothing is ever sent (INFO sums these over the links)
        self.requests_sent = 0

    def submit(self, client: Client | None, proto: int, argv: list[bytes], pending: Pending | None = None,
               script: int = SCRIPT_NONE) -> Pending:
        if pending is None:
            pending = Pending(client)
        pending.fill(self.node.moved_error(client, self.index, argv))
        return pending


class ReplicaGate:
    """A replica's own shard as its clients see it, as in Redis Cluster: reads of a
    connection that sent READONLY run here; writes, and reads of other connections,
    are answered MOVED to the shard's primary. Once the replica is promoted
    (shard.replica is None) everything runs here."""

    __slots__ = ("node", "local", "index")

    def __init__(self, node: ShardNode, local: LocalLink) -> None:
        self.node = node
        self.local = local
        self.index = local.index

    @property
    def up(self) -> bool:
        return self.local.up

    @property
    def frames_sent(self) -> int:
        return self.local.frames_sent

    @property
    def requests_sent(self) -> int:
        return self.local.requests_sent

    def submit(self, client: Client | None, proto: int, argv: list[bytes], pending: Pending | None = None,
               script: int = SCRIPT_NONE) -> Pending:
        node = self.node
        if node.shard.replica is not None and argv[0][:1] != INTERNAL_PREFIX:
            try:
                write = lookup(argv).is_write
            except ReplyError:
                write = False
            if write or client is None or client.id not in node.readonly_ids:
                if pending is None:
                    pending = Pending(client)
                pending.fill(node.moved_error(client, self.index, argv))
                return pending
        return self.local.submit(client, proto, argv, pending, script)


class ShardNode(Front):
    """The RouterView of clients on a shard's port (see the module docstring)."""

    cluster_node = True

    def __init__(self, config: Config, shard: Shard) -> None:
        super().__init__(config, shard.index)
        self.shard = shard
        self.busy_run: Run | None = None  # the shard's script past busy-reply-threshold, while it runs
        self.local = LocalLink(self, shard)
        self.links = [self.local if i == shard.index else MovedLink(self, i) for i in range(config.shards)]
        script_cache.install(self)  # one script cache for the server (server/script_cache.py)
        # A replica's node (shard.replica set when it starts): READONLY connections, its own id and port.
        self.replica_number = shard.replica.number if shard.replica is not None else -1
        self.readonly_ids: set[int] = set()
        if shard.replica is not None:
            self.links[shard.index] = ReplicaGate(self, self.local)
        # A standby on etcd: where its shard's primary is, as the leader key says.
        self.standby = shard.replica.etcd if shard.replica is not None else None
        self.home_shard = shard.index
        self.scan_last_slot = shard.slot_range[1]
        self.slot_owner = slot_owner_table(config.shards)
        self.slot_range = shard.slot_range
        topology = ensure_topology(config.data_dir, config.shards)
        self.shard_node_ids = shard_node_ids(topology)
        self.node_id = (self.shard_node_ids[shard.index] if shard.replica is None
                        else replica_node_id(topology, shard.index, self.replica_number))
        self.router_node_id = topology["node_id"]
        self.settings_sync = SettingsSync(self, node=True, on_change=self._shard_settings_changed,
                                          replica=self.replica_number)
        self.slowlog = shard.slowlog  # one log per process: the shard's commands and the node's
        self.latency = shard.latency  # likewise LATENCY's events and histograms
        shard.event_sinks[self.local] = self.pubsub.keyspace_events
        self.monitors.on_active_change = self._monitor_scripts
        scripting_of(shard.db).on_publish = self.pubsub.publish_here_and_forward
        scripting_of(shard.db).count_receivers = self.pubsub.receivers_here
        self.port = (shard_port(config, shard.index) if shard.replica is None
                     else replica_port(config, shard.index, self.replica_number))
        self.directory = NodeDirectory(config) if config.node_id else None
        self.slot_ranges = slot_ranges(config.shards)

    def forget(self, client: Client) -> None:
        self.readonly_ids.discard(client.id)
        super().forget(client)

    def end_turn(self) -> None:
        """The poller's turn is over: its requests run as one batch, then replies go out;
        then the batch's record is synced if no client is ready (shards/idle_sync.py)."""
        idle = self.shard.idle_sync
        if idle is None:
            self.local.run_batch()
            self.flush_ready_clients()
            return
        idle.in_turn = True
        try:
            self.local.run_batch()
            self.flush_ready_clients()
        finally:
            idle.in_turn = False
            if idle.appended_since:
                idle.end_of_turn(self.poller)

    def _shard_settings_changed(self, changes: dict[str, str]) -> None:
        for name, value in changes.items():
            if name in SHARD_PARAMS:
                internal.set_config(self.shard, [VERB_CONFIG, name.encode(), value.encode()])

    def _monitor_scripts(self, active: bool) -> None:
        """While a MONITOR exists anywhere, this shard's scripts feed it their commands."""
        scripting_of(self.shard.db).on_call = self.monitors.feed_lua if active else None

    def new_client_id(self) -> int:
        self._client_seq += 1
        return NODE_CLIENT_ID_BASE + self._client_seq * self.config.shards + self.index

    # --- routing (Redis Cluster's rules) ------------------------------------------------

    def moved_message(self, client: Client | None, slot: int, shard: int) -> bytes:
        """MOVED to `shard`'s port of the client's kind: a TLS client is sent to its
        TLS port (as Redis with tls-cluster yes), a plain client to its plain port."""
        tls = client is not None and is_tls(client.sock)
        standby = self.standby
        if (shard == self.index and standby is not None and standby.primary is not None
                and self.shard.replica is not None):
            # A standby on etcd: its primary may be on another node (shards/standby.py).
            where = standby.primary.for_client(tls)
            if where:
                return b"MOVED %d %s" % (slot, where.encode())
        ip = announced_ip(self.config, client.laddr if client is not None else "")
        port = tls_shard_port(self.config, shard) if tls else shard_port(self.config, shard)
        if self.directory is not None:  # the shard's primary may be on another node
            first, last = self.slot_ranges[shard]
            primary = primary_node(self.directory, Node(self.shard_node_ids[shard], port, port, first, last, shard))
            ip, port = primary.ip or ip, primary.tls_port if tls else primary.port
        return b"MOVED %d %s:%d" % (slot, ip, port)

    def moved_error(self, client: Client | None, shard: int, argv: list[bytes]) -> bytes:
        """The MOVED reply for a request sent to another shard's link."""
        slot = 0
        if argv[0][:1] != INTERNAL_PREFIX:
            try:
                indexes = lookup(argv).key_indexes(argv)
            except ReplyError:
                indexes = []
            if indexes:
                slot = key_slot(argv[indexes[0]])
        return encode_error(self.moved_message(client, slot, shard))

    def keys_shard(self, client: Client, argv: list[bytes], indexes: list[int]) -> int:
        """The shard of a multi-key command: every key in one slot (else CROSSSLOT),
        and that slot this node's (else MOVED)."""
        slot = key_slot(argv[indexes[0]])
        for i in indexes:
            if key_slot(argv[i]) != slot:
                raise ReplyError(CROSSSLOT_MESSAGE)
        shard = self.slot_owner[slot]
        if shard != self.index:
            raise ReplyError(self.moved_message(client, slot, shard))
        return shard

    def single_shard(self) -> int:
        return self.index

    def fanout(self, client: Client, argv: list[bytes], merge: Merge) -> None:
        if argv[0].lower() in (b"script", b"function") and script_cache.node_command(self, client, argv, merge):
            return  # SCRIPT EXISTS, FUNCTION changes: over every shard (server/script_cache.py)
        gather = Gather(client, 1, lambda parts: merge(parts, client.proto))
        self.local.submit(client, PROTO_INTERNAL, argv, gather.part(0))

    def fanout_internal(self, client: Client, argv: list[bytes], finish: Callable[[list[Any]], bytes],
                        shards: list[int] | None = None) -> Pending:
        """Internal questions go to this node's shard only: INFO, CONFIG RESETSTAT
        and the key counts describe this node."""
        gather = Gather(client, 1, finish)
        self.local.submit(client, PROTO_INTERNAL, argv, gather.part(0))
        return gather.pending

    def cursor_shard(self, cursor: bytes) -> int:
        return self.index

    def shards_up(self) -> bool:
        return True

    def busy_error(self, any_shard: bool) -> bytes | None:
        """BUSY for the commands this node answers itself while its shard runs a long script
        (a keyed one gets BUSY from LocalLink.submit, or MOVED first, as in Redis Cluster)."""
        run = self.busy_run
        if run is None or not any_shard:
            return None
        return b"-" + run.busy_error() + b"\r\n"

    def serve_while_busy(self, run: Run) -> None:
        """Called from the script's Lua hook (shards/busy.py PORT_HOOKS), the trio loop held:
        answer this port's clients as a Redis Cluster node does meanwhile (BUSY, SCRIPT KILL,
        FUNCTION KILL and STATS), not only the routers' (before, a cluster client of this
        port waited for the script's end and could not kill it here)."""
        self.busy_run = self.local.busy_run = run
        self.scripts_in_flight += 1  # Client.dispatch asks busy_error only while this is set
        try:
            self.poller.serve_idle_clients()
            self.flush_ready_clients()
        finally:
            self.scripts_in_flight -= 1
            self.busy_run = self.local.busy_run = None

    # --- serving ----------------------------------------------------------------------

    async def serve(self, listener: ClientListeners, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        busy.PORT_HOOKS.append(self.serve_while_busy)
        poller_fd = self.poller.fileno()
        link_turn.READY.watch(poller_fd, self)  # a router link's turn end syncs only if no client is ready
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                # Replicas too: CONFIG SET, ACL changes and PUBLISH reach every port.
                await nursery.start(self.settings_sync.serve)
                self.pubsub.start(nursery, self.settings_sync.peer_paths)
                if self.directory is not None:
                    await self.directory.start(links=False)
                nursery.start_soon(self._flusher)
                nursery.start_soon(self.poller.run)
                nursery.start_soon(self.local.run)
                self.port = listener.plain.getsockname()[1] if listener.plain is not None else 0
                tls_port = (tls_shard_port(self.config, self.index) if self.replica_number < 0
                            else tls_replica_port(self.config, self.index, self.replica_number))
                logger.info("shard %d: serving cluster clients on %s port %d tls-port %d, pid %d",
                            self.index, self.config.bind, self.port, tls_port, os.getpid())
                task_status.started(self.port)
                await self.serve_ports(listener, nursery)
        finally:
            busy.PORT_HOOKS.remove(self.serve_while_busy)
            link_turn.READY.forget(poller_fd, self)
            if self.replica_number >= 0 and self.shard.replica is None:
                self._leave(listener)

    def _leave(self, listener: ClientListeners) -> None:
        """A promoted replica's node, stopped (shards/replica.py run_replica): its port,
        node id and control socket pass to the replacement replica the supervisor
        starts, so its listener and its clients close (they reconnect there, as to a
        restarted node); the process serves on as the primary's node."""
        logger.info("shard %d: promoted replica %d closes its replica port %d and %d clients",
                    self.index, self.replica_number, self.port, len(self.clients))
        self.shard.event_sinks.pop(self.local, None)
        self.poller.close()
        listener.close()


def node_port(config: Config, listener: ClientListeners) -> ClientPort:
    """The shard's ClientPort (shards/process.py): serve `listener` as this shard's node."""

    async def serve(shard: Shard, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        await ShardNode(config, shard).serve(listener, task_status=task_status)

    return serve
