"""CLIENT UNBLOCK: end another client's blocking wait on whichever shard holds it."""

from __future__ import annotations

import durakv.server.conn_commands  # noqa: F401  (declares the CLIENT container)
from durakv.server.client import Client
from durakv.shards.frames import VERB_UNBLOCK
from durakv.shards.numbers import parse_ll
from durakv.shards.resp import ReplyError
from durakv.shards.table import MULTI_REFUSED, ROUTER, command


@command("client|unblock", -3, "admin noscript loading stale", group="connection", where=ROUTER,
         multi=MULTI_REFUSED)
def client_unblock(client: Client, argv: list[bytes]):
    target = parse_ll(argv[2])
    if target is None:
        raise ReplyError(b"ERR value is not an integer or out of range")
    mode = b"timeout"
    if len(argv) == 4:
        mode = argv[3].lower()
        if mode not in (b"timeout", b"error"):
            raise ReplyError(b"ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR")
    elif len(argv) > 4:
        raise ReplyError(b"ERR syntax error")
    blocked = client.router.clients.get(target)
    if blocked is None or blocked.blocked_pending is None or blocked.blocked_shard < 0:
        return 0
    return client.router.ask_shard(client, blocked.blocked_shard, [VERB_UNBLOCK, b"%d" % target, mode],
                                   lambda unblocked: b":1\r\n" if unblocked else b":0\r\n")
