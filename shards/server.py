"""A shard process: owns a range of hash slots and their keyspace, serves frames
of commands from the routers over Unix sockets.

Each frame is executed as one batch; its replies go back as one frame. Effects
recorded by the batch are handed to the shard's effect sink once per batch.
"""

from __future__ import annotations

import logging
import os
import socket
import time

import trio

import shards.commands  # noqa: F401  (registers every shard command)
from shards.config import Config
from shards.context import Ctx
from shards.frames import (
    PROTO_INTERNAL, encode_frame, encode_internal, request_batch_decoder, shard_socket_name,
    split_frames,
)
from shards.keyspace import Keyspace
from shards.resp import ReplyError, encode, encode_error
from shards.shard_settings import SHARD_DEFAULTS
from shards.slots import slot_ranges
from shards.table import TABLE, Command
from shards import internal

log = logging.getLogger("durakv.shard")

RECV_BYTES = 1024 * 1024
ROUTER_CONNECTIONS_MAX = 64


class CommandStats:
    __slots__ = ("calls", "usec", "failed")

    def __init__(self) -> None:
        self.calls = 0
        self.usec = 0
        self.failed = 0


class Shard:
    def __init__(self, config: Config, index: int) -> None:
        self.config = config
        self.index = index
        self.slot_range = slot_ranges(config.shards)[index]
        self.db = Keyspace()
        self.ctx = Ctx(self.db, self)
        self.stats: dict[str, CommandStats] = {}
        self.started_at = time.time()
        self.total_commands = 0
        self.routers = 0
        self.settings = dict(SHARD_DEFAULTS)

    def execute_batch(self, requests: list) -> list[tuple[int, bytes]]:
        """Run a frame's requests in order; returns their encoded replies."""
        ctx = self.ctx
        db = self.db
        out = []
        table = TABLE
        perf = time.perf_counter_ns
        for req in requests:
            argv = req.argv
            name = argv[0]
            if name[:1] == b"\x00":
                out.append((req.rid, internal.run(self, argv)))
                continue
            cmd: Command | None = table.get(name) or table.get(name.lower())
            ctx.client_id = req.cid
            proto = ctx.proto = req.proto
            db.frozen_ms = time.time_ns() // 1_000_000
            start = perf()
            try:
                if cmd is None:
                    raise ReplyError(b"ERR unknown command")
                if cmd.subcommands:
                    cmd = cmd.subcommands[argv[1].lower()]
                result = cmd.handler(ctx, argv)
                data = encode(result, proto) if proto else encode_internal(True, result)
            except ReplyError as e:
                data = encode_error(e.message) if proto else encode_internal(False, e.message)
                self._stat(cmd).failed += 1
            except Exception:
                log.exception("shard %d: command %r failed", self.index, argv[:3])
                message = b"ERR internal error executing '%s'" % name[:64]
                data = encode_error(message) if proto else encode_internal(False, message)
            stat = self._stat(cmd)
            stat.calls += 1
            stat.usec += (perf() - start) // 1000
            out.append((req.rid, data))
        db.frozen_ms = 0
        self.total_commands += len(requests)
        self.commit_effects()
        return out

    def _stat(self, cmd: Command | None) -> CommandStats:
        name = cmd.fullname if cmd is not None else "unknown"
        stat = self.stats.get(name)
        if stat is None:
            stat = self.stats[name] = CommandStats()
        return stat

    def commit_effects(self) -> None:
        """Hand the batch's effects on. Until the durable log exists the effects
        are only counted; the list must not grow across batches."""
        self.db.effects.clear()

    async def serve_router(self, sock: socket.socket) -> None:
        buf = bytearray()
        self.routers += 1
        try:
            while True:
                await trio.lowlevel.wait_readable(sock)
                try:
                    data = sock.recv(RECV_BYTES)
                except BlockingIOError:
                    continue
                except OSError as e:
                    log.warning("shard %d: router connection error: %s", self.index, e)
                    return
                if not data:
                    return
                buf += data
                frames = split_frames(buf)
                if not frames:
                    continue
                replies = []
                for frame in frames:
                    replies.extend(self.execute_batch(request_batch_decoder.decode(frame)))
                await send_all(sock, encode_frame(replies))
        finally:
            self.routers -= 1
            sock.close()

    async def active_expire_loop(self) -> None:
        period_s = 1.0 / max(self.config.hz, 1)
        while True:
            await trio.sleep(period_s)
            if self.db.expires and self.db.active_expire():
                self.commit_effects()


async def send_all(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            sent = 0
        view = view[sent:]
        if view:
            await trio.lowlevel.wait_writable(sock)


async def run_shard(config: Config, index: int, notify: object = None) -> None:
    shard = Shard(config, index)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(shard_socket_name(config.data_dir, index))
    listener.listen(ROUTER_CONNECTIONS_MAX)
    listener.setblocking(False)
    os.makedirs(os.path.join(config.data_dir, f"shard-{index:03d}"), exist_ok=True)
    first, last = shard.slot_range
    log.info("shard %d ready: slots %d-%d, pid %d", index, first, last, os.getpid())
    if callable(notify):
        notify()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(shard.active_expire_loop)
        while True:
            await trio.lowlevel.wait_readable(listener)
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                continue
            conn.setblocking(False)
            nursery.start_soon(shard.serve_router, conn)
