"""A script past busy-reply-threshold holds the shard's loop (a script is atomic);
its Lua hook calls serve_while_busy, Redis' processEventsWhileBlocked: what the
routers sent since is read and answered BUSY (SCRIPT KILL / FUNCTION KILL act,
FUNCTION STATS answers), internal requests wait for the script's end. The shard's
own client port (server/node.py) registers in PORT_HOOKS to answer its cluster
clients the same way, as a Redis Cluster node does."""

from __future__ import annotations

import logging
import select
import socket
from typing import Callable, Protocol

from durakv.shards.framelink import FrameReceiver
from durakv.shards.frames import (
    INTERNAL_PREFIX, PROTO_INTERNAL, Reply, Request, encode_frame, encode_internal, request_batch_decoder,
)
from durakv.shards.luaenv import Run, scripting_of
from durakv.shards.resp import encode
from durakv.shards.t_function import stats

logger = logging.getLogger("durakv.shard")

BUSY_SEND_WAIT_S = 1.0


class BusyConn(Protocol):
    """What serve_while_busy uses of a router connection (shards/process.py's RouterConn)."""

    sock: socket.socket
    receiver: FrameReceiver
    sending: bool
    deferred: list[Request]

    def send(self, replies: list[Reply]) -> None: ...


# The open router connections of this shard process, for serve_while_busy.
ROUTER_CONNS: set[BusyConn] = set()
_BUSY_KILLS = {b"script": True, b"function": False}
# The client ports of this shard process (server/node.py), each called with the busy run to
# read its clients and answer them meanwhile (a higher layer: it passes itself in).
PORT_HOOKS: list[Callable[[Run], None]] = []


def serve_while_busy(run: Run) -> None:
    """Called from a script's Lua hook once it runs past busy-reply-threshold (Redis'
    processEventsWhileBlocked): read what the routers sent since, act on SCRIPT KILL
    and FUNCTION KILL, answer every other command BUSY, and keep internal requests
    for after the script. The trio loop is blocked meanwhile, so this reads and
    writes the sockets directly (never in the middle of a frame the writer started)."""
    for conn in list(ROUTER_CONNS):
        replies: list[Reply] = []
        for frame in conn.receiver.read_ready():
            for req in request_batch_decoder.decode(frame):
                argv = req.argv
                if argv[0][:1] == INTERNAL_PREFIX:
                    conn.deferred.append(req)
                    continue
                replies.append((req.rid, busy_reply(run, argv, req.proto)))
        if replies:
            if conn.sending:
                conn.send(replies)
            else:
                _send_now(conn.sock, bytes(encode_frame(replies)))
    for hook in PORT_HOOKS:
        hook(run)


def busy_reply(run: Run, argv: list[bytes], proto: int) -> bytes:
    """A request's reply while `run` is busy: KILL acts, FUNCTION STATS answers, the rest is BUSY."""
    if len(argv) == 2 and argv[0].lower() == b"function" and argv[1].lower() == b"stats":
        value = stats(scripting_of(run.ctx.db))
        return encode_internal(True, value) if proto == PROTO_INTERNAL else encode(value, proto)
    status = _busy_status(run, argv)
    is_kill = len(argv) == 2 and argv[0].lower() in _BUSY_KILLS and argv[1].lower() == b"kill"
    if proto != PROTO_INTERNAL:
        return status + b"\r\n"
    return encode_internal(True, status) if is_kill else encode_internal(False, status[1:])


def _busy_status(run: Run, argv: list[bytes]) -> bytes:
    """The RESP status line a request gets while `run` is busy."""
    name = argv[0].lower()
    if len(argv) == 2 and name in _BUSY_KILLS and argv[1].lower() == b"kill":
        if _BUSY_KILLS[name] != run.is_eval:
            return b"-" + run.busy_error()
        if run.wrote():
            return (b"-UNKILLABLE Sorry the script already executed write commands against the dataset. "
                    b"You can either wait the script termination or kill the server in a hard way using "
                    b"the SHUTDOWN NOSAVE command.")
        run.killed = True
        return b"+OK"
    return b"-" + run.busy_error()


def _send_now(sock: socket.socket, data: bytes) -> None:
    """Write a whole frame on a non-blocking socket from synchronous code."""
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view):]
        except BlockingIOError:
            select.select([], [sock], [], BUSY_SEND_WAIT_S)
        except OSError as e:
            logger.warning("shard: router connection lost while answering BUSY: %s", e)
            return


