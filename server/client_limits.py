"""Client limits that need a clock or act at accept, on routers and shard ports
alike (server/front.py starts them):

- `tcp-keepalive`: SO_KEEPALIVE with TCP_KEEPIDLE at the setting, probes every
  third of it, three of them (Redis' anetKeepAlive), set on each new connection.
- A cron, as Redis' clientsCron: each of hz turns a second visits its share of
  the clients (at least CRON_MIN_CLIENTS_PER_TURN), so each is seen about once a
  second. It closes an idle client after `timeout` seconds (not a subscriber, a
  blocked or paused client, nor one with replies in flight or output queued, as
  Redis spares pub/sub and blocked clients) and a client that stayed over its
  soft output limit for the soft seconds with no new output (Client checks the
  limits itself whenever output is queued).
- `output_backpressure_bytes`: the output a normal client may have queued before
  the router stops running its requests. 4 MiB without a limit; with a normal
  client-output-buffer-limit, its soft limit (else its hard one): a client that
  never reads stops being served there, and is closed at once if the requests it
  sent would take it past the hard limit (Client.check_output_limits), as Redis,
  which runs them, would close it.
- `output_hard_bytes`: a normal client's hard limit (0: none), cached, as Client.write
  compares the replies a pipelining client asked for with it before writing any
  (Client._asked_past_hard_limit): Redis runs every request of a read at once and
  closes the client whose replies pass the limit before it sent it any of them.
"""

from __future__ import annotations

import logging
import math
import socket
import time
from typing import TYPE_CHECKING

import trio

from durakv.server.client import OUTPUT_BACKPRESSURE_BYTES

if TYPE_CHECKING:
    from durakv.server.client import Client
    from durakv.server.front import Front
    from durakv.server.settings import Settings

logger = logging.getLogger("durakv.router")

CRON_MIN_CLIENTS_PER_TURN = 5  # Redis' CLIENTS_CRON_MIN_ITERATIONS
KEEPALIVE_PROBES = 3


def set_keepalive(sock: socket.socket, seconds: int) -> None:
    """tcp-keepalive for a new connection (0: off, the kernel's default)."""
    if seconds <= 0:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, seconds)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(seconds // 3, 1))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)


def output_backpressure_bytes(settings: Settings) -> int:
    hard, soft, _ = settings.output_limits("normal")
    return soft or hard or OUTPUT_BACKPRESSURE_BYTES


def output_hard_bytes(settings: Settings) -> int:
    return settings.output_limits("normal")[0]


async def cron(front: Front) -> None:
    """Visit every client about once a second (see the module docstring)."""
    pending: list[Client] = []
    while True:
        hz = int(front.settings.values["hz"])
        await trio.sleep(1 / hz)
        if not pending:
            pending = list(front.clients.values())
        turn = max(math.ceil(len(front.clients) / hz), CRON_MIN_CLIENTS_PER_TURN)
        visit, pending = pending[-turn:], pending[:-turn]
        timeout_s = int(front.settings.values["timeout"])
        now = time.monotonic()
        for client in visit:
            if client.closed:
                continue
            if client.outbuf_bytes:
                client.check_output_limits()
            elif (timeout_s and now - client.last_cmd_at > timeout_s and client.pubsub is None
                  and client.blocked_pending is None and not client.paused and not client.replies
                  and not client.closed):
                logger.info("router: closing idle client %s (timeout %d s)", client.addr, timeout_s)
                client.kill()
