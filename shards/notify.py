"""Keyspace notifications (Redis' notifyKeyspaceEvent): the event classes of
`notify-keyspace-events`, and the channels an event is published on. Command
handlers call `db.notify(CLASS, event, key)` (shards/keyspace.py) where Redis
calls notifyKeyspaceEvent; the shard hands what a batch produced to its routers
and its own node (shards/shard.py), which deliver them like a PUBLISH. Replay
produces none."""

from __future__ import annotations

KEYSPACE = 1 << 0  # K: __keyspace@0__:<key> <event>
KEYEVENT = 1 << 1  # E: __keyevent@0__:<event> <key>
GENERIC = 1 << 2  # g
STRING = 1 << 3  # $
LIST = 1 << 4  # l
SET = 1 << 5  # s
HASH = 1 << 6  # h
ZSET = 1 << 7  # z
EXPIRED = 1 << 8  # x
EVICTED = 1 << 9  # e
STREAM = 1 << 10  # t
KEY_MISS = 1 << 11  # m
MODULE = 1 << 13  # d
NEW = 1 << 14  # n
ALL = GENERIC | STRING | LIST | SET | HASH | ZSET | EXPIRED | EVICTED | STREAM | MODULE  # A

CLASS_FLAGS = {"g": GENERIC, "$": STRING, "l": LIST, "s": SET, "h": HASH, "z": ZSET, "x": EXPIRED, "e": EVICTED,
               "t": STREAM, "d": MODULE, "n": NEW, "K": KEYSPACE, "E": KEYEVENT, "m": KEY_MISS}
CLASS_ORDER = "g$lshzxetdn"  # how Redis prints the classes (keyspaceEventsFlagsToString), then K, E, m

KEYSPACE_PREFIX = b"__keyspace@0__:"
KEYEVENT_PREFIX = b"__keyevent@0__:"


def parse_flags(text: str) -> int | None:
    """keyspaceEventsStringToFlags: None for an unknown class character."""
    flags = 0
    for ch in text:
        if ch == "A":
            flags |= ALL
        elif ch in CLASS_FLAGS:
            flags |= CLASS_FLAGS[ch]
        else:
            return None
    return flags


def flags_text(flags: int) -> str:
    """keyspaceEventsFlagsToString."""
    out = "A" if flags & ALL == ALL else "".join(ch for ch in CLASS_ORDER if flags & CLASS_FLAGS[ch])
    return out + "".join(ch for ch in "KEm" if flags & CLASS_FLAGS[ch])


def event_messages(flags: int, event: bytes, key: bytes) -> list[tuple[bytes, bytes]]:
    """The (channel, message) pairs one event is published as."""
    out = []
    if flags & KEYSPACE:
        out.append((KEYSPACE_PREFIX + key, event))
    if flags & KEYEVENT:
        out.append((KEYEVENT_PREFIX + event, key))
    return out
