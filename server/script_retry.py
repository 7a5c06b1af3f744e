"""A script sent to one shard that reached a key of another shard runs again across shards (issue 16).

The router sends EVAL/EVALSHA/FCALL whose declared keys are all on one shard to that
shard (the fast path, at one shard's speed). A script may still touch keys it did not
declare; when one is another shard's, the shard puts back whatever the script did
(shards/script_undo.py) and answers NONLOCAL_RETRY instead of a reply. The script's
place in the client's reply queue is a `ScriptRetry`: on that answer it starts the
script as a cross-shard transaction (server/txn.py), whose executor finds the
undeclared keys as it runs and locks them, and whose reply fills the same place, so
the client sees one reply, as from one Redis. Only on a router over several shards:
a shard port keeps Redis Cluster's "non local key" error.

Limit: the client's requests sent after the script, before the shard's answer came
back, have already gone to their shards; those after it wait for the retry.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

from durakv.server.links import Pending
from durakv.shards.frames import VERB_AS_USER
from durakv.shards.script_undo import NONLOCAL_RETRY_REPLY
from durakv.shards.table import lookup

if TYPE_CHECKING:
    from durakv.server.client import Client

logger = logging.getLogger("durakv.router")

_MARK = NONLOCAL_RETRY_REPLY[:12]


class ScriptRetry(Pending):
    """The reply place of a script sent to one shard: runs it across shards when
    that shard answers NONLOCAL_RETRY (once: the cross-shard run never answers it).
    The link calls on_fill (it sets `data` itself only when there is none)."""

    __slots__ = ("run", "then")

    def __init__(self, client: Client, run: list[bytes], then: Callable | None = None) -> None:
        super().__init__(client, _filled)
        self.run: list[bytes] | None = run  # the request as sent (VERB_AS_USER's form for an ACL user)
        self.then = then  # what fills it otherwise (an ACL user's: server/acl.py script_reply)


def _filled(pending: Pending, data: bytes | bytearray) -> None:
    assert isinstance(pending, ScriptRetry), "on_fill of a ScriptRetry"
    run = pending.run
    if run is not None and data[:12] == _MARK:
        pending.run = None
        _run_across_shards(pending.client, pending, run)
        return
    then = pending.then
    if then is not None:
        then(pending, data)
    else:
        pending.data = data
        pending.client.reply_ready()


def _run_across_shards(client: Client, pending: Pending, run: list[bytes]) -> None:
    """Start the script as a cross-shard transaction of its declared keys (the
    executor finds the others); its reply fills `pending`."""
    argv = run[2:] if run[0] == VERB_AS_USER else run
    keys = lookup(argv).key_indexes(argv)
    logger.debug("router: a script reached another shard's key; running it across shards")
    client.router.retry_script(client, pending, run, [argv[i] for i in keys])
