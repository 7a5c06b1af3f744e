"""A script's side effects outside the keyspace: PUBLISH and redis.log (issue 16).

A script may run more than once for one request: a keyless one through the router
runs again once it has found its keys (shards/txn.py's executor), and one sent to a
single shard that reaches another shard's key is put back and run again across shards
(shards/script_undo.py). Only the attempt that counts may be seen, so:

- PUBLISH from a script answers its receivers at once (counted where it runs, as
  before) but its message waits in the keyspace's `events`, with the notifications,
  marked by PUBLISH_MARK: it goes out when the record holding the script's writes is
  durable (Shard.publish_events calls release_publishes, which delivers through the
  node's pub/sub, to every router and shard port), and an attempt put back or thrown
  away drops it with its events. Redis publishes at once; a subscriber here sees the
  message once the script's writes are durable, as it sees their notifications.
- redis.log lines of a run that may be thrown away wait in Scripting.held_logs and
  are written when the attempt counts (`write_logs`), or dropped (`drop_logs`).
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("durakv.shards.lua")

PUBLISH_MARK = b"\x01"  # the first byte of a held PUBLISH's channel in Keyspace.events
MAX_HELD_LOG_LINES = 10_000  # per attempt; past it lines are counted, not kept


def hold_publish(events: list[tuple[bytes, bytes]], channel: bytes, message: bytes) -> None:
    events.append((PUBLISH_MARK + channel, message))


def held_publishes(events: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The held PUBLISHes among events (a scratch keyspace's, moved to the shard's)."""
    return [event for event in events if event[0][:1] == PUBLISH_MARK]


def release_publishes(scripting: Any, events: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Deliver the held PUBLISHes among durable events (through Scripting.on_publish);
    the other events, for the event sinks."""
    if not scripting.publishes_held:
        return events
    deliver = scripting.on_publish
    rest = []
    for channel, message in events:
        if channel[:1] != PUBLISH_MARK:
            rest.append((channel, message))
        elif deliver is not None:
            deliver(channel[1:], message)
        else:
            logger.error("script PUBLISH to %r dropped: no pub/sub in this process", channel[1:65])
    return rest


class HeldLogs:
    """redis.log lines of one attempt, written only if it counts."""

    __slots__ = ("lines", "dropped")

    def __init__(self) -> None:
        self.lines: list[tuple[int, str]] = []
        self.dropped = 0

    def add(self, level: int, text: str) -> None:
        if len(self.lines) < MAX_HELD_LOG_LINES:
            self.lines.append((level, text))
        else:
            self.dropped += 1

    def write(self) -> None:
        for level, text in self.lines:
            logger.log(level, "script: %s", text)
        if self.dropped:
            logger.warning("script: %d more redis.log lines not kept (at most %d per run)",
                           self.dropped, MAX_HELD_LOG_LINES)
