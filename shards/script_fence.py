"""The fence a shard puts up behind a script it sends back to the router (issue 16).

A router's script whose declared keys are on this shard but that reaches another
shard's key is put back (shards/script_undo.py) and answered NONLOCAL_RETRY; the
router runs it again as a cross-shard transaction (server/script_retry.py). The
requests its client pipelined after it came on the same link and would run here
before that retry, an order one Redis never gives. So the shard fences the client:
from the script's answer on, that client's later requests wait here, in arrival order
(`hold`), until the router says the retry is done (VERB_SCRIPT_UNFENCE, sent on the same
link after the retry's COMMIT), and then run as requests that waited for a lock do
(TxnState.deferred, drained in order). The coordinator's own requests (the TX* verbs,
which carry the client's id) pass: the retry needs them.

Costs nothing to a script that stays on its shard: nothing is fenced then, and the
check per request is behind TxnState's `busy` flag, which a fence raises.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from durakv.shards.frames import INTERNAL_PREFIX, VERB_AS_USER, VERB_EXEC, Request

if TYPE_CHECKING:
    from durakv.shards.hazards import ReplySink

# Bounded by the router: a client has at most server/client.py MAX_REPLIES_IN_FLIGHT requests out.
MAX_HELD_PER_CLIENT = 64 * 1024
MAX_FENCED_CLIENTS = 64 * 1024
CLIENT_VERBS = (VERB_AS_USER, VERB_EXEC)  # internal forms of a client's own requests: held too


class ScriptFence:
    """Clients fenced behind a script sent back to the router, and what they sent since."""

    __slots__ = ("fenced",)

    def __init__(self) -> None:
        # client id -> (the connection its script came on, its requests held since, in order)
        self.fenced: dict[int, tuple[ReplySink | None, deque[tuple[ReplySink, Request]]]] = {}

    def fence(self, cid: int, conn: ReplySink | None) -> None:
        """The client's script was sent back: its later requests wait for `unfence`."""
        assert cid, "a router's script carries its client's id"
        if cid not in self.fenced:
            assert len(self.fenced) < MAX_FENCED_CLIENTS, "fenced clients unbounded"
            self.fenced[cid] = (conn, deque())

    def hold(self, conn: ReplySink, req: Request) -> bool:
        """Whether req waits behind its client's fence (then it is kept, in order)."""
        fence = self.fenced.get(req.cid)
        if fence is None:
            return False
        verb = req.argv[0]
        if verb[:1] == INTERNAL_PREFIX and verb not in CLIENT_VERBS:
            return False  # the retry's own TX* requests, UNBLOCK...: they must not wait for it
        held = fence[1]
        assert len(held) < MAX_HELD_PER_CLIENT, "requests held behind a script fence unbounded"
        held.append((conn, req))
        return True

    def unfence(self, cid: int) -> deque[tuple[ReplySink, Request]]:
        """The retry is done: the requests held, to run now in order (none if not fenced)."""
        fence = self.fenced.pop(cid, None)
        return deque() if fence is None else fence[1]

    def conn_closed(self, conn: ReplySink) -> None:
        """A router's connection closed: nobody will unfence its clients; their
        requests held from it have nobody to answer."""
        for cid, (fenced_by, held) in list(self.fenced.items()):
            if fenced_by is conn:
                del self.fenced[cid]
            elif any(waiting is conn for waiting, _req in held):
                self.fenced[cid] = (fenced_by, deque(item for item in held if item[0] is not conn))
