"""Client-side caching, the shard's half (Redis' signalModifiedKey feeding
tracking.c): while some front (a router, or this shard's node) has a client with
CLIENT TRACKING on, the shard reports every key a batch changes, with the id of
the client whose command changed it (0 for an expiry, which Redis attributes to
no client, so NOLOOP never hides it), and every FLUSHALL/FLUSHDB.

The reports ride with the keyspace notifications (`Keyspace.events`, handed out
by `Shard.hand_out_events` once the batch's record is durable, ahead of the
write's reply), to the fronts that asked for them: an invalidation is an event whose channel starts with NUL, which
no keyspace notification channel does. A script that calls a read-only command
reports its declared keys the same way (Redis tracks those for its caller), as
the front cannot know whether it will. server/tracking.py turns them into
`invalidate` pushes. A shard with no tracking front adds nothing: the cost of
the feature is one truth test per changed key."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from durakv.shards.hazards import ReplySink

MARK = b"\x00"  # the first byte of an invalidation event's channel
READ_MARK = b"\x00r"  # a script's read: its declared keys, to track for its caller
FLUSH_MARK = b"\x00flush"  # every key is gone (FLUSHALL, FLUSHDB): the channel, then the client's id


def invalidation(key: bytes, client_id: int) -> tuple[bytes, bytes]:
    """The event reporting that `client_id`'s command (0: an expiry) changed `key`."""
    return (b"\x00%d" % client_id, key)


def script_reads(command: list[bytes], client_id: int) -> list[tuple[bytes, bytes]]:
    """A script (EVAL*, FCALL*: `command`) called a read-only command: Redis then
    tracks the keys the script declared, for its caller."""
    numkeys = int(command[2])
    return [(b"\x00r%d" % client_id, key) for key in command[3:3 + numkeys]]


def flush_event(client_id: int) -> tuple[bytes, bytes]:
    return (FLUSH_MARK + b"%d" % client_id, b"")


def plain_events(events: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The keyspace notifications among `events`: what a front that tracks nothing gets."""
    return [event for event in events if event[0][:1] != MARK]


def set_front(fronts: set[ReplySink], conn: ReplySink, argv: list[bytes]) -> bool:
    """[VERB_TRACKING, b"1"|b"0"]: whether the front on `conn` (a router's
    connection, or the node's link) wants changed keys. A front sends it when its
    first client starts tracking and its last stops, and on every (re)connect; a
    connection that closes is forgotten (shards/process.py)."""
    if argv[1] == b"1":
        fronts.add(conn)
    else:
        fronts.discard(conn)
    return True
