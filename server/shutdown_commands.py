"""SAVE and SHUTDOWN, on a router or a shard's client port.

SAVE asks the snapshotter for a snapshot of every shard (as BGSAVE does) and replies
once it has served the request. SHUTDOWN asks `durakv serve`'s supervisor to stop the
whole tree, as SIGTERM does (STOPPING=1 on its notify socket: shards/sdnotify.py), and,
as Redis, replies nothing when it succeeds: the connection closes when the process
exits. Every write a client was answered for is already in the durable log, so
NOSAVE loses nothing; SAVE first waits for a snapshot (shorter replay at the next
start), and without FORCE a failed snapshot cancels the shutdown."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from durakv.server.client import Client
from durakv.server.links import Pending
from durakv.shards import sdnotify
from durakv.shards.args import ERR_SYNTAX
from durakv.shards.resp import OK, ReplyError, encode, encode_error
from durakv.shards.table import MULTI_REFUSED, ROUTER, command
from durakv.snapshotter.runner import read_status, request_snapshot

logger = logging.getLogger("durakv.router")

SAVE_POLL_MS = 50
SAVE_TIMEOUT_MS = 10 * 60 * 1000  # a snapshot of every shard; beyond it SAVE fails
# The supervisor stops the tree within its grace period; past this the client is told.
SHUTDOWN_REPLY_TIMEOUT_MS = 60 * 1000
ERR_NO_SNAPSHOTTER = (b"ERR SAVE needs a snapshotter: this server runs none (snapshotter = false in its "
                      b"config) and has no snapshot URL; its data is durable in the log")
ERR_SHUTDOWN_FAILED = b"ERR Errors trying to SHUTDOWN. Check logs."


def _snapshot_configured(client: Client) -> bool:
    config = client.router.config
    return config.snapshotter or bool(config.snapshot_url)


def _snapshot_then(client: Client, done: Callable[[bytes | None], None]) -> None:
    """Request a snapshot and call done(None) once the snapshotter served it with every
    shard saved, else done(error message); polled from the router's loop."""
    data_dir = client.router.config.data_dir
    request = request_snapshot(data_dir)
    deadline = time.monotonic() + SAVE_TIMEOUT_MS / 1000

    def poll() -> None:
        status = read_status(data_dir)
        if status.request_served >= request:
            failed = [f"shard {s.shard}: {s.error}" for s in status.shards.values() if s.status == "error"]
            if failed:
                logger.error("SAVE: the snapshot failed: %s", "; ".join(failed))
                done(b"ERR SAVE failed: " + "; ".join(failed).encode(errors="replace")[:512])
            else:
                done(None)
        elif time.monotonic() > deadline:
            logger.error("SAVE: the snapshotter did not serve request %s within %d ms", request, SAVE_TIMEOUT_MS)
            done(b"ERR SAVE: the snapshotter did not finish within %d ms" % SAVE_TIMEOUT_MS)
        else:
            client.router.after(SAVE_POLL_MS / 1000, poll)

    client.router.after(SAVE_POLL_MS / 1000, poll)


@command("save", 1, "admin noscript no_async_loading no_multi", group="server", where=ROUTER,
         multi=MULTI_REFUSED)
def save(client: Client, argv: list[bytes]):
    if not _snapshot_configured(client):
        raise ReplyError(ERR_NO_SNAPSHOTTER)
    pending = Pending(client)
    client.replies.append(pending)

    def done(error: bytes | None) -> None:
        pending.fill(encode(OK, client.proto) if error is None else encode_error(error))

    _snapshot_then(client, done)
    return pending


def _shutdown_flags(argv: list[bytes]) -> tuple[set[bytes], bool]:
    """Redis' shutdownCommand parsing: the flags, and whether it is ABORT."""
    flags: set[bytes] = set()
    abort = False
    for arg in argv[1:]:
        word = arg.upper()
        if word == b"ABORT":
            abort = True
        elif word in (b"NOSAVE", b"SAVE", b"NOW", b"FORCE"):
            flags.add(word)
        else:
            raise ERR_SYNTAX
    if (abort and flags) or {b"NOSAVE", b"SAVE"} <= flags:
        raise ERR_SYNTAX
    return flags, abort


@command("shutdown", -1, "admin noscript loading stale no_multi allow_busy", group="server", where=ROUTER,
         multi=MULTI_REFUSED)
def shutdown(client: Client, argv: list[bytes]):
    flags, abort = _shutdown_flags(argv)
    if abort:
        raise ReplyError(b"ERR No shutdown in progress.")  # a SHUTDOWN never waits here but for SAVE
    router = client.router
    if b"NOSAVE" not in flags and router.scripts_in_flight:
        busy = router.busy_error(True)
        if busy is not None:
            raise ReplyError(busy[1:-2])  # as Redis: only NOSAVE stops a server busy with a script
    if not sdnotify.supervised():
        logger.error("SHUTDOWN refused: this process does not run under `durakv serve`; stop it with "
                     "its service manager")
        raise ReplyError(ERR_SHUTDOWN_FAILED)
    pending = Pending(client)
    client.replies.append(pending)

    def stop(error: bytes | None) -> None:
        if error is not None and b"FORCE" not in flags:
            logger.error("SHUTDOWN cancelled: the snapshot it waited for failed (FORCE stops anyway)")
            pending.fill(encode_error(ERR_SHUTDOWN_FAILED))
            return
        logger.warning("SHUTDOWN from client %s: asking the supervisor to stop the server", client.addr)
        sdnotify.notify(b"STOPPING=1")
        router.after(SHUTDOWN_REPLY_TIMEOUT_MS / 1000, still_running)

    def still_running() -> None:
        """No reply: the connection closes when this process stops. Should it not, say so."""
        if pending.data is None:
            logger.error("SHUTDOWN: the server did not stop within %d ms", SHUTDOWN_REPLY_TIMEOUT_MS)
            pending.fill(encode_error(ERR_SHUTDOWN_FAILED))

    if b"SAVE" in flags:
        if not _snapshot_configured(client):
            logger.error("SHUTDOWN SAVE: no snapshotter is configured")
            if b"FORCE" not in flags:
                client.replies.remove(pending)
                raise ReplyError(ERR_SHUTDOWN_FAILED)
            stop(None)
        else:
            _snapshot_then(client, stop)
    else:
        stop(None)
    return pending
