"""CONFIG SET across the nodes of a deployment (issue 15; a node: node-id set).

Within one node, server/settings_sync.py makes a CONFIG SET take effect on every
router, shard and replica before it answers. Across nodes, etcd carries it
(log/etcd_settings.py): the process that took the CONFIG SET, still holding the node's
settings lock, records the settings that travel (`Param.travels`: not the TLS files of
this machine, nothing fixed at start) under D/config/ before it answers OK (an error if
etcd did not take them: the change then holds on this node only, until its router 0
reads D/config/ again and, etcd being the truth, puts back the value recorded there; a
write that timed out may still be taken late, when etcd's quorum returns, and then every
node applies it). A value etcd holds replaces one this node changed only if it was read
by a request sent after the change (SettingsSync.changed_ns; etcd's range is
linearizable, so no member cut off from its quorum answers it): a node whose change etcd
could not record keeps it while etcd has no quorum. Router 0 of every
node follows D/config/ and, for every recorded value that differs from its own, runs
the same propagation as a CONFIG SET made on that node (without recording it again):
its routers, shards and replicas, DIR/run/settings, the default user's password. It
applies the latest state etcd holds (a notice older than one applied is ignored), so
every node ends on the value etcd wrote last, whatever order the notices came in; a node
started later (or whose router 0 restarted) reads D/config/ first and applies it too, and
router 0 reads it again every etcd-lease-ttl-s, so a node whose own change etcd did not
take (or whose watch missed one) comes back to etcd's values within that.

Unlike a single server's CONFIG SET, which lasts until the server restarts, a recorded
setting lasts as long as the deployment's keys: a node restarted with another value in
its config file takes the recorded one again. CONFIG REWRITE stays per node."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import trio

from durakv.shards.config import Config
from durakv.shards.log_backend import etcd_client
from durakv.shards.resp import ReplyError
from durakv.shards.shard_settings import SHARD_PARAMS

if TYPE_CHECKING:
    from durakv.server.settings import Settings
    from durakv.server.settings_sync import SettingsSync

logger = logging.getLogger("durakv.router")

SECRET_SETTINGS = frozenset({"requirepass", "masterauth", "tls-key-file-pass"})


def _shown(name: str, value: str) -> str:
    """A setting's value as a log line may show it (never a secret)."""
    return "(hidden)" if name in SECRET_SETTINGS else repr(value)


def travelling(settings: Settings, changes: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The changes of a CONFIG SET that reach the other nodes."""
    return [(name, value) for name, value in changes if settings.params[name].travels]


class NodeSettingsRecord:
    """Records a node's CONFIG SETs in etcd (any router or shard port of a node)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._client: Any = None  # made at the first change: most processes never record one

    def record(self, changes: list[tuple[str, str]]) -> str:
        """Write the changes in etcd (blocking: call from a thread under the settings
        lock); "" once recorded, else why not (logged)."""
        from durakv.log.etcd_client import EtcdRequestFailed, EtcdUnavailable
        from durakv.log.etcd_settings import record_settings

        if not changes:
            return ""
        if self._client is None:
            self._client = etcd_client(self.config)
        try:
            record_settings(self._client, self.config.etcd_prefix, self.config.node_id, changes)
        except (EtcdUnavailable, EtcdRequestFailed) as e:
            logger.error("node %s: CONFIG SET of %s took effect on this node but could not be recorded in etcd "
                         "for the other nodes: %s", self.config.node_id, [name for name, _ in changes], e)
            return str(e)
        return ""


class NodeSettingsFollower:
    """Router 0's side: applies on this node what D/config/ records."""

    def __init__(self, sync: SettingsSync) -> None:
        self.sync = sync
        self._latest: dict[str, str] | None = None
        self._latest_read_ns = 0  # wall clock when the read the newest state came from was sent
        self._latest_fresh_ns: dict[str, int] = {}  # settings a watch event wrote since, when it arrived
        self._revision = 0  # of the newest state that arrived
        self._arrived = trio.Event()
        self._resync_failed = False
        self._watch: Any = None
        self._refused: dict[str, str] = {}  # name -> value refused here, reported once
        self._kept_logged: dict[str, int] = {}  # name -> the local change whose keeping was logged

    async def run(self) -> None:
        """Follow D/config/ until cancelled, applying the newest state each time."""
        from durakv.log.etcd_settings import settings_watch

        config = self.sync.router.config
        token = trio.lowlevel.current_trio_token()

        def from_thread(revision: int, recorded: dict[str, str], read_ns: int, fresh_ns: dict[str, int]) -> None:
            try:
                token.run_sync_soon(self._arrive, revision, recorded, read_ns, fresh_ns)
            except trio.RunFinishedError:
                self.close()

        self._watch = settings_watch(etcd_client(config), config.etcd_prefix, from_thread)
        self._watch.start()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._resync)
                while True:
                    await self._arrived.wait()
                    self._arrived = trio.Event()
                    recorded, self._latest = self._latest, None
                    if recorded is not None:
                        await self._apply(recorded, self._latest_read_ns, self._latest_fresh_ns)
        finally:
            self.close()

    async def _resync(self) -> None:
        """Read D/config/ again every etcd-lease-ttl-s: the watch tells only of changes,
        and this node may hold a value etcd never took (its CONFIG SET got an error)."""
        from durakv.log.errors import LogError
        from durakv.log.etcd_settings import read_settings

        config = self.sync.router.config
        client = etcd_client(config)
        while True:
            await trio.sleep(config.etcd_lease_ttl_s)
            read_ns = time.time_ns()  # etcd's range is linearizable: it answers what etcd held after this
            try:
                revision, recorded = await trio.to_thread.run_sync(read_settings, client, config.etcd_prefix,
                                                                   abandon_on_cancel=True)
            except (LogError, OSError) as e:
                if not self._resync_failed:
                    logger.warning("node %s: reading the settings recorded in etcd failed (%s); trying again "
                                   "every %d s", config.node_id, e, config.etcd_lease_ttl_s)
                self._resync_failed = True
                continue
            self._resync_failed = False
            self._arrive(revision, recorded, read_ns, {})

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()

    def _arrive(self, revision: int, recorded: dict[str, str], read_ns: int, fresh_ns: dict[str, int]) -> None:
        if revision < self._revision:  # read before a change the watch already told of
            return
        self._revision = revision
        self._latest = recorded  # each notice holds every setting: only the newest matters
        self._latest_read_ns, self._latest_fresh_ns = read_ns, fresh_ns
        self._arrived.set()

    def _changes(self, recorded: dict[str, str], read_ns: int, fresh_ns: dict[str, int]) -> list[tuple[str, str]]:
        """The recorded settings whose value here differs, checked as a CONFIG SET here,
        except those this node changed after etcd's value was known (kept until a read of
        etcd sent after the change: the change may be one etcd could not record)."""
        from durakv.server.server_commands import check_maxclients
        from durakv.server.tls import check_tls_changes

        router = self.sync.router
        settings = router.settings
        changes = []
        for name, value in sorted(recorded.items()):
            param = settings.params.get(name)
            if param is None or settings.values[name] == value:
                continue
            if self.sync.changed_ns.get(name, 0) >= max(read_ns, fresh_ns.get(name, 0)):
                self._kept(name, value)
                continue
            try:
                if not param.travels:
                    raise ReplyError(b"ERR a setting of one node")
                checked = settings.validate([(name.encode(), value.encode())])
                check_maxclients(router, checked)
                check_tls_changes(router, checked)
            except ReplyError as e:
                if self._refused.get(name) != value:
                    logger.error("node %s: not applying %s = %s recorded in etcd by another node: %s",
                                 router.config.node_id, name, _shown(name, value), e.message.decode(errors="replace"))
                    self._refused[name] = value
                continue
            changes += checked
        return changes

    def _kept(self, name: str, value: str) -> None:
        changed_ns = self.sync.changed_ns[name]
        if self._kept_logged.get(name) != changed_ns:
            logger.info("node %s: keeping this node's %s, changed after etcd's %s was read, until a read of etcd "
                        "after the change", self.sync.router.config.node_id, name, _shown(name, value))
            self._kept_logged[name] = changed_ns

    async def _apply(self, recorded: dict[str, str], read_ns: int, fresh_ns: dict[str, int]) -> None:
        sync = self.sync
        lock_fd = await sync.lock()
        try:
            # Compared under the lock: a CONFIG SET of this node may have just changed them.
            if self._latest is not None:  # a newer state arrived while this one waited: that one is applied next
                return
            changes = self._changes(recorded, read_ns, fresh_ns)
            if not changes:
                return
            logger.info("node %s: applying %s recorded in etcd", sync.router.config.node_id,
                        ", ".join(f"{name} = {_shown(name, value)}" for name, value in changes))
            sync.router.settings.apply(changes)
            await sync.propagate_locked(changes, [(n, v) for n, v in changes if n in SHARD_PARAMS], record=False)
        finally:
            sync.unlock(lock_fd)

