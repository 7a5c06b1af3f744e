"""The router process: owns client sockets, routes each command to the shard that
owns its keys, fans out and merges keyless and cross-shard reads (the shared
client-serving code is server/front.py; this adds the links to the shards)."""

from __future__ import annotations

import logging
import os

import trio

import durakv.server.commands  # noqa: F401  (registers the router's own commands)
import durakv.shards.commands  # noqa: F401  (registers the shard commands: routing needs keys)
from durakv.server import script_cache
from durakv.server.fdlimit import adjust_open_files_limit
from durakv.server.front import Front, _ignore_reply
from durakv.server.links import Pending, ShardLink
from durakv.server.cluster_view import node_entry
from durakv.server.config_sync import NodeSettingsFollower
from durakv.server.listener import ClientListeners
from durakv.server.node_links import NodeDirectory
from durakv.server.settings_sync import SettingsSync
from durakv.server.script_retry import Reaching
from durakv.server.script_scope import ScriptScopes
from durakv.server.txn import Coordinator
from durakv.server.txn_batch import start_write
from durakv.server.txn_read import start_read
from durakv.server.topology import ensure_topology, shard_node_ids
from durakv.shards import failure, sdnotify
from durakv.shards.config import Config
from durakv.shards.malloc_stats import release_free_heap
from durakv.shards.frames import PROTO_INTERNAL, VERB_CONFIG
from durakv.shards.shard_settings import SHARD_DEFAULTS, SHARD_TEXT_DEFAULTS
from durakv.shards.slots import slot_owner_table
from durakv.shards.slowlog import SlowLog
from durakv.shards.table import Command

logger = logging.getLogger("durakv.router")

SHARD_WAIT_POLL_S = 0.01


class Router(Front):
    def __init__(self, config: Config, index: int = 0) -> None:
        super().__init__(config, index)
        self.links = [ShardLink(self, i, config.data_dir) for i in range(config.shards)]
        self.directory = NodeDirectory(config) if config.node_id else None
        for link in self.links:
            link.directory = self.directory
        self.slot_owner = slot_owner_table(config.shards)
        self.scripts_retry = config.shards > 1
        self.reaching = Reaching()
        self.script_scopes = ScriptScopes()  # scripts whose followers need not wait (server/script_scope.py)
        script_cache.install(self)  # one script cache for the server (server/script_cache.py)
        topology = ensure_topology(config.data_dir, config.shards)
        self.node_id = self.router_node_id = topology["node_id"]
        self.shard_node_ids = shard_node_ids(topology)
        self.settings_sync = SettingsSync(self)
        self._links_up: set[int] = set()
        # Shards take slowlog id slots 0..S-1, routers S..S+R-1 (shards/slowlog.py).
        self.slowlog = SlowLog(config.shards + index, config.shards + config.routers)
        self.configure_slowlog()
        self.txn = Coordinator(self)
        self._resolving = False
        self._resolve_again = False

    # --- long scripts -------------------------------------------------------------

    def busy_error(self, any_shard: bool) -> bytes | None:
        """Redis' BUSY reply while a shard runs a script past busy-reply-threshold, for
        a command the router answers itself (the shard answers its own commands from
        the script's hook, shards/process.py)."""
        if not any_shard:
            return None
        threshold_ms = int(self.settings.values["busy-reply-threshold"])
        for link in self.links:
            is_eval = link.busy_script(threshold_ms)
            if is_eval is not None:
                what = b"SCRIPT KILL" if is_eval else b"FUNCTION KILL"
                return b"-BUSY Redis is busy running a script. You can only call %s or SHUTDOWN NOSAVE.\r\n" % what
        return None

    def end_turn(self) -> None:
        """After the poller's turn: each shard's requests of the turn leave as one frame
        written from here (ShardLink.send_now), then ready replies are flushed."""
        for link in self.links:
            link.send_now()
        self.flush_ready_clients()

    def on_link_change(self) -> None:
        self.flush_ready_clients()
        for link in self.links:
            if link.up and link.index not in self._links_up:
                self._send_shard_settings(link)
                self.tracking.send_state(link)
        up = {link.index for link in self.links if link.up}
        if self._links_up - up:
            self.tracking.shard_lost()
        came_up = bool(up - self._links_up)
        self._links_up = up
        if came_up:
            self.resolve_soon()
            if self.scripts_retry:
                script_cache.refresh_functions(self)  # functions loaded before this link came up

    def cross_shard(self, client, commands: list[list[bytes]], multi: bool) -> Pending:
        return start_write(self.txn, client, commands, multi)

    def retry_script(self, client, pending: Pending, run: list[bytes], keys: list[bytes]) -> None:
        self.txn.start_in(client, pending, [run], keys)

    def split(self, client, argv: list[bytes], cmd: Command, indexes: list[int]) -> None:
        if cmd.is_write:  # DEL, UNLINK
            self.txn.start(client, [argv], False)
        else:
            start_read(self.txn, client, argv, cmd, indexes)

    def blocking_move(self, client, argv: list[bytes]) -> Pending:
        return self.txn.start_blocking_move(client, argv)

    def resolve_soon(self) -> None:
        """Settle the shards' cross-shard transactions in doubt (server/txn.py), in
        the background; a request while one pass runs makes it run once more."""
        if self.nursery is None:
            return
        if self._resolving:
            self._resolve_again = True
            return
        self._resolving = True
        self.nursery.start_soon(self._resolve)

    async def _resolve(self) -> None:
        try:
            while True:
                self._resolve_again = False
                await self.txn.resolve_in_doubt()
                if not self._resolve_again:
                    return
        finally:
            self._resolving = False

    def _send_shard_settings(self, link: ShardLink) -> None:
        """A shard that (re)started has the defaults: give it the shard parameters
        CONFIG SET changed, ahead of any client request on the new link."""
        settings = self.settings.values
        for name, default in [*SHARD_DEFAULTS.items(), *SHARD_TEXT_DEFAULTS.items()]:
            if settings[name] != str(default):
                link.submit(None, PROTO_INTERNAL, [VERB_CONFIG, name.encode(), settings[name].encode()],
                            Pending(None, on_fill=_ignore_reply))

    def new_client_id(self) -> int:
        self._client_seq += 1
        return self._client_seq * self.config.routers + self.index + 1

    async def serve(self, listener: ClientListeners, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve clients from `listener` (bound already: by the supervisor, shared by
        every router, or by the CLI for a router of its own)."""
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            await nursery.start(self.settings_sync.serve)
            self.pubsub.start(nursery, self.settings_sync.peer_paths)
            maxclients = adjust_open_files_limit(self.settings.maxclients, len(self.links))
            self.settings.values["maxclients"] = str(maxclients)
            nursery.start_soon(self._flusher)
            nursery.start_soon(self.poller.run)
            try:
                if self.directory is not None:
                    entry = (node_entry(self.config, self.router_node_id, self.shard_node_ids) if self.index == 0
                             else None)
                    await self.directory.start(links=True, entry=entry)
                    if self.index == 0:  # CONFIG SETs of the other nodes (server/config_sync.py)
                        nursery.start_soon(NodeSettingsFollower(self.settings_sync).run)
                for link in self.links:
                    nursery.start_soon(link.run)
                await self._wait_for_shards()
                self.port = listener.plain.getsockname()[1] if listener.plain is not None else 0
                logger.info("router %d ready: listening on %s port %d tls-port %d, %d shards, pid %d", self.index,
                            self.config.bind, self.port, self.config.tls_port, len(self.links), os.getpid())
                sdnotify.notify(b"READY=1")
                release_free_heap()
                task_status.started(self.port)
                await self.serve_ports(listener, nursery)
            finally:
                if self.directory is not None:  # a clean stop: the node's entry goes now, not a TTL later
                    self.directory.leave()

    async def _wait_for_shards(self) -> None:
        """Before accepting, wait (at most startup-shard-wait-ms) until every shard
        is up or has failed permanently (shards.failure: waiting for it would only
        delay the shards that serve). A replica node's router does not wait: its shards
        serve only once one of its replicas leads (node-role = "replica")."""
        wait_ms = self.config.startup_shard_wait_ms if self.config.node_role == "primary" else 0
        with trio.move_on_after(wait_ms / 1000):
            while not all(link.ever_up.is_set() or self._failed(link.index) for link in self.links):
                await trio.sleep(SHARD_WAIT_POLL_S)
        down = [link.index for link in self.links if not link.up]
        if down:
            logger.warning("router: shards %s not reachable; their slots answer CLUSTERDOWN", down)

    def _failed(self, shard: int) -> bool:
        return bool(failure.read(self.config.data_dir, shard))


async def run_router(config: Config, index: int, listener: ClientListeners) -> None:
    """Run a router on the supervisor's shared listening socket, or (standalone,
    as the systemd unit runs it) on one the CLI bound before anything else."""
    await Router(config, index).serve(listener)
