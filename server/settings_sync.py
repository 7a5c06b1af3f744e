"""CONFIG SET on one router takes effect on every router and shard before it is
acknowledged, and concurrent CONFIG SETs end with every router on the same value.

Every shard's client port (server/node.py) takes part as one more peer, with its
control socket DIR/run/node-NNN.sock: a CONFIG SET there propagates the same way
(its own shard gets the shard parameters; every other node applies them to its own
shard when told), and a router's CONFIG SET tells every node as well as every router.
So does every replica's port (DIR/run/replica-NNN-M.sock): it applies the shard
parameters to the replica's own keyspace, and one started later (a replacement after
a promotion) reads DIR/run/settings when it starts, as a restarted router does.

The router that receives CONFIG SET applies the change at once (so the client's next
command sees it), then, holding DIR/run/settings.lock (flock) for the whole
propagation: merges it into DIR/run/settings (0600, in the 0700 run dir, replaced
durably), applies the file's merged state, tells every other router over its control
socket (DIR/run/router-NNN.sock) to apply the file's state, and sends the shard
parameters to every shard; each wait is bounded by PEER_ACK_TIMEOUT_MS. Then it
replies OK. Within one process, changes propagate one at a time in the order they
were applied (an EXEC does not wait for its changes' propagation, and a client may
pipeline them). The lock orders concurrent CONFIG SETs, and since everyone applies the
file (the merged state of every change so far, in lock order) rather than a message,
a late or repeated notice cannot bring back an older value. A router that is down
misses the notice but reads DIR/run/settings when it starts; a shard that is down
gets the shard parameters from every router when its link comes up.

As in Redis, CONFIG SET lasts until the server restarts: whoever starts the routers
removes DIR/run/settings first (clear_runtime_changes): `durakv serve` when it starts,
and a router started on its own (the systemd unit, a single router) when it starts, so
a CONFIG SET there lasts until that router restarts.

On a node of several (node-id set), the settings that travel are also recorded in etcd
before the OK, and router 0 of every node applies what etcd records through this same
propagation (server/config_sync.py).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import time

import trio

from collections import deque
from collections.abc import Awaitable, Callable

from durakv.log.layout import ensure_run_dir, node_socket_path, replica_socket_path, router_socket_path
from durakv.server.config_sync import NodeSettingsRecord, travelling
from durakv.server.links import Pending, Propagating
from durakv.server.runtime_changes import (MAX_MESSAGE_BYTES, SETTINGS_LOCK_FILE, load_runtime_changes, settings_path,
                                           store_runtime_changes, try_lock_runtime_changes)
from durakv.server.pubsub import MAX_STREAM_MESSAGE_BYTES, STREAM_HELLO, MessageReader
from durakv.shards.frames import PROTO_INTERNAL, VERB_CONFIG
from durakv.shards.unixsock import bind_unix, peer_allowed, reachable_path

logger = logging.getLogger("durakv.router")

PEER_ACK_TIMEOUT_MS = 2000
# Another router holds the lock for at most its peers' and shards' ack timeouts.
SETTINGS_LOCK_WAIT_MS = 4 * PEER_ACK_TIMEOUT_MS
SETTINGS_LOCK_POLL_MS = 5
LENGTH = struct.Struct(">I")
ACK = b"ok"


async def _send_message(stream: trio.SocketStream, payload: bytes) -> None:
    await stream.send_all(LENGTH.pack(len(payload)) + payload)


async def _receive_message(stream: trio.SocketStream) -> bytes | None:
    buf = bytearray()
    need = LENGTH.size
    length = None
    while len(buf) < need:
        chunk = await stream.receive_some(max(need - len(buf), 4096))
        if not chunk:
            return None
        buf += chunk
        if length is None and len(buf) >= LENGTH.size:
            (length,) = LENGTH.unpack_from(buf)
            if length > MAX_MESSAGE_BYTES:
                raise ValueError(f"message of {length} bytes over the {MAX_MESSAGE_BYTES} limit")
            need = LENGTH.size + length
    return bytes(buf[LENGTH.size:need])


class SettingsSync:
    """One router's (or shard node's) side: the control socket its peers send
    changes to, and the propagation of its own CONFIG SET. `on_change` also gets
    every change applied (a node hands the shard parameters to its shard)."""

    def __init__(self, router, node: bool = False,
                 on_change: Callable[[dict[str, str]], None] | None = None, replica: int = -1) -> None:
        """replica >= 0: the node is that replica of its shard (shards/replica.py)."""
        self.router = router
        self.data_dir = router.config.data_dir
        self.on_change = on_change
        self.node = node
        data_dir, config = self.data_dir, router.config
        if replica >= 0:
            self.own_path = replica_socket_path(data_dir, router.index, replica)
        else:
            self.own_path = (node_socket_path if node else router_socket_path)(data_dir, router.index)
        peers = [router_socket_path(data_dir, i) for i in range(config.routers)]
        peers += [node_socket_path(data_dir, i) for i in range(config.shards)]
        peers += [replica_socket_path(data_dir, i, number) for i in range(config.shards)
                  for number in range(config.replicas)]
        self.peer_paths = [path for path in peers if path != self.own_path]
        # On a node of several (node-id set), CONFIG SETs are recorded in etcd for the others.
        self.node_record = NodeSettingsRecord(config) if config.node_id else None
        # Wall clock when this process learnt of each setting's latest CONFIG SET on this node
        # (its own or a peer's): router 0 reverts one to etcd's value only from a read after it.
        self.changed_ns: dict[str, int] = {}
        # ACL changes applied here whose store in the users file is still to come: this
        # process reloads the file only once none is, or the reload would take back the
        # later ones for a moment (three ACL SETUSERs in one EXEC: GETUSER of the third
        # answered nil after EXEC's reply).
        self.users_unstored = 0
        # Changes applied here propagate one at a time in the order they were applied
        # (the settings lock alone, polled by each, let a later change be stored first:
        # ACL DELUSER after an EXEC that created the user was stored before the EXEC's
        # SETUSER, and the reload brought the user back).
        self._in_order: deque[Callable[[], Awaitable[None]]] = deque()
        self._draining = False

    def _apply(self, changes: dict[str, str]) -> None:
        self.router.settings.apply_known(changes)
        if self.on_change is not None:
            self.on_change(changes)

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Listen on DIR/run/router-NNN.sock, then load the changes peers made
        before this router started (after binding, so none is missed)."""
        ensure_run_dir(self.data_dir)
        path = self.own_path
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        bind_unix(sock, path)  # replaces a socket file left by an earlier run of this router
        sock.listen(64)
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        changes = load_runtime_changes(self.data_dir)
        if changes:
            self._apply(changes)
            logger.info("router %d: loaded %d runtime settings from %s", self.router.index, len(changes),
                     settings_path(self.data_dir))
        task_status.started()
        try:
            await trio.serve_listeners(self._serve_peer, [listener])
        finally:  # cancelled: a promoted replica's node leaves the mesh to its replacement
            listener.socket.close()

    async def _serve_peer(self, stream: trio.SocketStream) -> None:
        async with stream:
            if not peer_allowed(stream.socket, f"router {self.router.index} control socket"):
                return
            reader = MessageReader(stream, MAX_MESSAGE_BYTES)
            try:
                with trio.fail_after(PEER_ACK_TIMEOUT_MS / 1000):
                    message = await reader.receive()
                    if message is None:
                        return
                    if message != STREAM_HELLO:
                        await self._settings_notice(stream, message)
                        return
                # A peer's pub/sub stream (server/pubsub.py): it lasts as long as the peer keeps it.
                reader.limit_bytes = MAX_STREAM_MESSAGE_BYTES
                await self.router.pubsub.serve_peer(stream, reader)
            except (trio.TooSlowError, trio.BrokenResourceError, ValueError, KeyError, TypeError) as e:
                logger.warning("router %d: bad control message: %s", self.router.index, e)

    async def _settings_notice(self, stream: trio.SocketStream, message: bytes) -> None:
        doc = json.loads(message)
        if doc.get("users"):  # an ACL change, stored in the users file (server/acl.py)
            self.router.acl.reload(kill_all=bool(doc.get("kill_all")))
            await _send_message(stream, ACK)
            return
        if doc.get("reload"):
            # The file holds every change so far in lock order: never older than the notice.
            changes = load_runtime_changes(self.data_dir)
        else:  # the sender could not record it: the notice is all there is
            changes = {str(name): str(value) for name, value in doc["changes"]}
        self._note_changed(doc["changes"])
        self._apply(changes)
        await _send_message(stream, ACK)

    def propagate(self, client, changes: list[tuple[str, str]], shard_changes: list[tuple[str, str]]) -> Pending:
        """Make changes already applied here take effect everywhere, one CONFIG SET
        at a time across routers; the returned pending (queued as the client's reply)
        is filled with +OK when that is done."""
        pending = Propagating(client, b"+OK\r\n")
        client.replies.append(pending)
        self._note_changed(changes)
        self._propagate_in_order(lambda: self._propagate(pending, changes, shard_changes))
        return pending

    def _propagate_in_order(self, job: Callable[[], Awaitable[None]]) -> None:
        """Run job after every propagation queued before it (one task drains them)."""
        self._in_order.append(job)
        if not self._draining:
            self._draining = True
            self.router.nursery.start_soon(self._drain)

    async def _drain(self) -> None:
        try:
            while self._in_order:
                await self._in_order.popleft()()
        finally:
            self._draining = False

    def _note_changed(self, changes: list[tuple[str, str]]) -> None:
        now_ns = time.time_ns()
        for name, _value in changes:
            self.changed_ns[str(name)] = now_ns

    async def lock(self) -> int:
        """The settings lock's fd (-1: waited too long, logged): it orders CONFIG SETs and ACL changes."""
        lock_fd = -1
        with trio.move_on_after(SETTINGS_LOCK_WAIT_MS / 1000):
            while (lock_fd := try_lock_runtime_changes(self.data_dir)) < 0:
                await trio.sleep(SETTINGS_LOCK_POLL_MS / 1000)
        if lock_fd < 0:
            logger.error("router %d: a change waited %d ms for %s; propagating without it", self.router.index,
                         SETTINGS_LOCK_WAIT_MS, SETTINGS_LOCK_FILE)
        return lock_fd

    @staticmethod
    def unlock(lock_fd: int) -> None:
        if lock_fd >= 0:
            os.close(lock_fd)

    async def _propagate(self, pending: Pending, changes: list[tuple[str, str]],
                         shard_changes: list[tuple[str, str]]) -> None:
        lock_fd = await self.lock()
        try:
            unrecorded = await self.propagate_locked(changes, shard_changes, record=True)
        finally:
            self.unlock(lock_fd)
        if unrecorded:  # it holds here, but the other nodes do not know of it
            why = " ".join(unrecorded.split()).encode(errors="replace")[:200]  # one line
            pending.fill(b"-ERR CONFIG SET could not be recorded in etcd for the other nodes (%s): it holds on "
                         b"this node only, until the node reads etcd's settings again (etcd may still take it late: "
                         b"then every node gets it); set it again\r\n" % why)
        else:
            pending.fill(b"+OK\r\n")

    async def propagate_locked(self, changes: list[tuple[str, str]], shard_changes: list[tuple[str, str]],
                               record: bool) -> str:
        """Under the settings lock: make changes applied here take effect on every
        router, shard and replica of this node, then (record, on a node of several)
        record the ones that travel in etcd for the other nodes (server/config_sync.py).
        Returns why they could not be recorded ("" if they were)."""
        await self._propagate_locked(changes, shard_changes)
        requirepass = [value for name, value in changes if name == "requirepass"]
        if requirepass:  # the default user's password, in the users file too
            await self._propagate_users_locked([b"requirepass", requirepass[-1].encode()])
        if not (record and self.node_record is not None):
            return ""
        return await trio.to_thread.run_sync(self.node_record.record, travelling(self.router.settings, changes))

    def propagate_users(self, client, change: list[bytes], reply: bytes) -> Pending:
        """An ACL change already applied here: store it in the users file, have every
        peer reload it, then answer `reply` (-ERR if it could not be stored)."""
        pending = Propagating(client, reply)
        client.replies.append(pending)
        self.users_unstored += 1
        self._propagate_in_order(lambda: self._propagate_users(pending, change, reply))
        return pending

    async def _propagate_users(self, pending: Pending, change: list[bytes], reply: bytes) -> None:
        lock_fd = await self.lock()
        try:
            stored = await self._propagate_users_locked(change, own=True)
        finally:
            self.unlock(lock_fd)
        pending.fill(reply if stored else b"-ERR cannot store the ACL change durably: see the server log\r\n")

    async def _propagate_users_locked(self, change: list[bytes], own: bool = False) -> bool:
        acl = self.router.acl
        try:
            await trio.to_thread.run_sync(acl.store_change, change, acl.snapshot())
        except (OSError, ValueError) as e:
            logger.error("router %d: cannot store an ACL change in %s: %s", self.router.index, acl.path, e)
            return False
        finally:
            if own:
                self.users_unstored -= 1
        kill_all = change[0] == b"load"
        if self.users_unstored == 0:
            acl.reload()  # this process already applied it (and killed what ACL LOAD kills)
        payload = json.dumps({"users": True, "kill_all": kill_all}).encode()
        async with trio.open_nursery() as nursery:
            for path in self.peer_paths:
                nursery.start_soon(self._send_to_peer, path, payload)
        return True

    async def _propagate_locked(self, changes: list[tuple[str, str]], shard_changes: list[tuple[str, str]]) -> None:
        recorded = True
        try:
            merged = await trio.to_thread.run_sync(store_runtime_changes, self.data_dir, changes)
            # A peer's earlier CONFIG SET may have reached us after we applied ours: the
            # file has both, in the order the lock gave them.
            self._apply(merged)
        except OSError as e:
            recorded = False
            logger.error("router: cannot record runtime settings in %s: %s", settings_path(self.data_dir), e)
        shards_done = self._send_to_shards(shard_changes)
        payload = json.dumps({"changes": changes, "reload": recorded}).encode()
        async with trio.open_nursery() as nursery:
            for path in self.peer_paths:
                nursery.start_soon(self._send_to_peer, path, payload)
        with trio.move_on_after(PEER_ACK_TIMEOUT_MS / 1000) as waited:
            await shards_done.wait()
        if waited.cancelled_caught:
            logger.warning("router: shards did not confirm CONFIG SET within %d ms", PEER_ACK_TIMEOUT_MS)

    def _send_to_shards(self, shard_changes: list[tuple[str, str]]) -> trio.Event:
        done = trio.Event()
        # A node reaches only its own shard: every other node applies them to its shard when told.
        links = [self.router.links[self.router.index]] if self.node else self.router.links
        left = len(links) * len(shard_changes)
        if not left:
            done.set()
            return done

        def acked(_pending: Pending, data: bytes) -> None:
            nonlocal left
            if data[:1] == b"-":
                # A shard that is down gets every setting again when its link comes up.
                logger.warning("router: a shard did not take a setting: %r", data[:200])
            left -= 1
            if left == 0:
                done.set()

        for link in links:
            for name, value in shard_changes:
                link.submit(None, PROTO_INTERNAL, [VERB_CONFIG, name.encode(), value.encode()],
                            Pending(None, on_fill=acked))
        return done

    async def _send_to_peer(self, path: str, payload: bytes) -> None:
        try:
            with trio.fail_after(PEER_ACK_TIMEOUT_MS / 1000):
                with reachable_path(path) as address:
                    stream = await trio.open_unix_socket(address)
                async with stream:
                    await _send_message(stream, payload)
                    reply = await _receive_message(stream)
            if reply != ACK:
                raise ValueError(f"unexpected reply {reply!r}")
        except (OSError, trio.TooSlowError, trio.BrokenResourceError, ValueError) as e:
            # Down or restarting: it loads DIR/run/settings when it starts.
            logger.warning("router %d: %s did not confirm CONFIG SET (%s); it reads %s when it starts",
                        self.router.index, os.path.basename(path), e, settings_path(self.data_dir))
