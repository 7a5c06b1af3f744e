"""CONFIG SET on one router takes effect on every router and shard before it is
acknowledged.

The router that receives CONFIG SET applies the change, records it in
DIR/run/settings (0600, in the 0700 run dir, replaced durably), sends it to every
other router over their control sockets (DIR/run/router-NNN.sock) and waits for
their acks (bounded by PEER_ACK_TIMEOUT_MS), and sends the shard parameters to
every shard and waits for theirs; then it replies OK. A router that is down
misses the message but reads DIR/run/settings when it starts; a shard that is
down gets the shard parameters from every router when its link comes up.

As in Redis, CONFIG SET lasts until the server stops: DIR/run/settings carries
the run id of the supervisor that started this server (its pid and start time),
and a router started by another supervisor ignores it (the next CONFIG SET
replaces it).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import struct

import trio

from durakv.log.layout import ensure_run_dir, router_socket_path, run_dir
from durakv.log.durable_file import replace_file
from durakv.server.links import Pending
from durakv.shards.frames import PROTO_INTERNAL
from durakv.shards.unixsock import bind_unix, peer_allowed, reachable_path

logger = logging.getLogger("durakv.router")

SETTINGS_FILE = "settings"
SETTINGS_LOCK_FILE = "settings.lock"
SETTINGS_FILE_MODE = 0o600
MAX_MESSAGE_BYTES = 1024 * 1024
PEER_ACK_TIMEOUT_MS = 2000
LENGTH = struct.Struct(">I")
ACK = b"ok"


def server_run_id() -> str:
    """Who started this server: the parent's pid and its start time (in clock
    ticks since boot, /proc/PID/stat field 22), so a reused pid does not match."""
    ppid = os.getppid()
    try:
        with open(f"/proc/{ppid}/stat", "rb") as f:
            stat = f.read()
        start_ticks = stat[stat.rindex(b")") + 2:].split()[19].decode()
    except (OSError, ValueError, IndexError):
        start_ticks = "?"
    return f"{ppid}:{start_ticks}"


def settings_path(data_dir: str) -> str:
    return os.path.join(run_dir(data_dir), SETTINGS_FILE)


def _read_changes(path: str, run_id: str) -> dict[str, str]:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_MESSAGE_BYTES + 1)
    except FileNotFoundError:
        return {}
    try:
        doc = json.loads(raw)
        values = doc["values"]
        if doc["run_id"] != run_id:
            return {}  # left by an earlier server: CONFIG SET does not outlive a restart
        if not (isinstance(values, dict) and all(isinstance(v, str) for v in values.values())):
            raise ValueError("values must map names to strings")
    except (ValueError, KeyError, TypeError) as e:
        logger.error("router: ignoring unreadable %s: %s", path, e)
        return {}
    return values


def load_runtime_changes(data_dir: str, run_id: str) -> dict[str, str]:
    """The CONFIG SET changes made since this server started (name -> value)."""
    return _read_changes(settings_path(data_dir), run_id)


def store_runtime_changes(data_dir: str, run_id: str, changes: list[tuple[str, str]]) -> None:
    """Merge changes into DIR/run/settings under a lock (routers may write at
    once): temp file 0600, fsync, rename, fsync the directory."""
    directory = ensure_run_dir(data_dir)
    path = settings_path(data_dir)
    lock_fd = os.open(os.path.join(directory, SETTINGS_LOCK_FILE), os.O_RDWR | os.O_CREAT, SETTINGS_FILE_MODE)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        values = _read_changes(path, run_id)
        values.update(changes)
        data = json.dumps({"run_id": run_id, "values": values}, sort_keys=True).encode()
        replace_file(path, data, mode=SETTINGS_FILE_MODE)
    finally:
        os.close(lock_fd)


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
    """One router's side: the control socket other routers send changes to, and
    the propagation of this router's own CONFIG SET."""

    def __init__(self, router) -> None:
        self.router = router
        self.data_dir = router.config.data_dir
        self.run_id = server_run_id()

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Listen on DIR/run/router-NNN.sock, then load the changes peers made
        before this router started (after binding, so none is missed)."""
        ensure_run_dir(self.data_dir)
        path = router_socket_path(self.data_dir, self.router.index)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        bind_unix(sock, path)  # replaces a socket file left by an earlier run of this router
        sock.listen(64)
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        changes = load_runtime_changes(self.data_dir, self.run_id)
        if changes:
            self.router.settings.apply_known(changes)
            logger.info("router %d: loaded %d runtime settings from %s", self.router.index, len(changes),
                     settings_path(self.data_dir))
        task_status.started()
        await trio.serve_listeners(self._serve_peer, [listener])

    async def _serve_peer(self, stream: trio.SocketStream) -> None:
        async with stream:
            if not peer_allowed(stream.socket, f"router {self.router.index} control socket"):
                return
            try:
                with trio.fail_after(PEER_ACK_TIMEOUT_MS / 1000):
                    message = await _receive_message(stream)
                    if message is None:
                        return
                    changes = [(str(name), str(value)) for name, value in json.loads(message)["changes"]]
                    self.router.settings.apply_known(dict(changes))
                    await _send_message(stream, ACK)
            except (trio.TooSlowError, trio.BrokenResourceError, ValueError, KeyError, TypeError) as e:
                logger.warning("router %d: bad control message: %s", self.router.index, e)

    def propagate(self, client, changes: list[tuple[str, str]], shard_changes: list[tuple[str, str]]) -> Pending:
        """Make already-applied changes take effect everywhere; the returned slot
        (queued as the client's reply) is filled with +OK when that is done."""
        slot = Pending(client)
        client.replies.append(slot)
        self.router.nursery.start_soon(self._propagate, slot, changes, shard_changes)
        return slot

    async def _propagate(self, slot: Pending, changes: list[tuple[str, str]],
                         shard_changes: list[tuple[str, str]]) -> None:
        shards_done = self._send_to_shards(shard_changes)
        try:
            await trio.to_thread.run_sync(store_runtime_changes, self.data_dir, self.run_id, changes)
        except OSError as e:
            logger.error("router: cannot record runtime settings in %s: %s", settings_path(self.data_dir), e)
        payload = json.dumps({"changes": changes}).encode()
        async with trio.open_nursery() as nursery:
            for index in range(self.router.config.routers):
                if index != self.router.index:
                    nursery.start_soon(self._send_to_peer, index, payload)
        with trio.move_on_after(PEER_ACK_TIMEOUT_MS / 1000) as waited:
            await shards_done.wait()
        if waited.cancelled_caught:
            logger.warning("router: shards did not confirm CONFIG SET within %d ms", PEER_ACK_TIMEOUT_MS)
        slot.fill(b"+OK\r\n")

    def _send_to_shards(self, shard_changes: list[tuple[str, str]]) -> trio.Event:
        done = trio.Event()
        links = self.router.links
        left = len(links) * len(shard_changes)
        if not left:
            done.set()
            return done

        def acked(_slot: Pending, data: bytes) -> None:
            nonlocal left
            if data[:1] == b"-":
                # A shard that is down gets every setting again when its link comes up.
                logger.warning("router: a shard did not take a setting: %r", data[:200])
            left -= 1
            if left == 0:
                done.set()

        for link in links:
            for name, value in shard_changes:
                link.submit(None, PROTO_INTERNAL, [b"\x00config", name.encode(), value.encode()], Pending(None, on_fill=acked))
        return done

    async def _send_to_peer(self, index: int, payload: bytes) -> None:
        path = router_socket_path(self.data_dir, index)
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
            logger.warning("router %d: router %d did not confirm CONFIG SET (%s); it reads %s when it starts",
                        self.router.index, index, e, settings_path(self.data_dir))
