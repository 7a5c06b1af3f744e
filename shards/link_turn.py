"""A router link's turn on a shard ends as a client poller's does: with the sync.

Requests through the router (every plain client's) reach the shard as frames on a
router link, each read handed to the link's on_frames (shards/process.py). Before,
a durable write appended there waited for trio's idle detection to be synced in the
loop (shards/idle_sync.py run): a task wakeup, trio's idle bookkeeping and two more
scheduler passes per sync, the cost the shard port's turn end (IdleSync.end_of_turn)
already saved its own clients. Now the link's turn ends the same way: when it
appended and nothing else waits to be read (no router link and no client of the
shard's port readable: one zero-timeout poll(2) over them all), it syncs right there,
within the same rules (IdleSync._inline); otherwise run() decides, as before.

Not looked at: a TLS link's decrypted bytes not yet read (shards/link_tls.py) and
other tasks' sockets (replicas' log followers): what they bring waits for this one
sync, which is fast (INLINE_SYNC_SLOW_US), as on a shard port.

READY is the shard process's set of those sockets: one shard per process, as
shards/busy.py's ROUTER_CONNS. A poll(2) object, not an epoll: it holds no
descriptor, so nothing to close or to inherit across the supervisor's forks.
"""

from __future__ import annotations

import logging
import select
from typing import Callable, TypeVar

from durakv.shards.idle_sync import IdleSync

logger = logging.getLogger("durakv.shard")

# Router links (shards/process.py: up to ROUTER_CONNECTIONS_MAX per listener, on a node
# also the link port's) and client ports. Past this, a link's turn never syncs (run() does).
MAX_WATCHED_FDS = 1024


class ReadyWatch:
    """The descriptors whose input the shard's loop serves: router links' sockets and
    the client port's poller (an epoll descriptor: readable while a client is). Each
    is watched by its owner (a link's task, a node) until the owner forgets it."""

    def __init__(self) -> None:
        self._poll = select.poll()
        self._owners: dict[int, object] = {}
        self._unwatched = 0  # owners past MAX_WATCHED_FDS: their input is not seen here

    def watch(self, fd: int, owner: object) -> None:
        """A descriptor left by an owner that closed it without forget() (a bug) goes
        to the new owner; the old one's forget() then leaves it alone."""
        assert fd >= 0, "a closed descriptor watched"
        if fd not in self._owners and len(self._owners) >= MAX_WATCHED_FDS:
            self._unwatched += 1
            return
        if fd in self._owners:
            logger.warning("shard: descriptor %d watched again without being forgotten", fd)
            self._poll.modify(fd, select.POLLIN)
        else:
            self._poll.register(fd, select.POLLIN)
        self._owners[fd] = owner

    def forget(self, fd: int, owner: object) -> None:
        """Before the descriptor closes (a closed one would read as always ready)."""
        if self._owners.get(fd) is owner:
            del self._owners[fd]
            self._poll.unregister(fd)
        elif self._unwatched:
            self._unwatched -= 1

    def nothing_ready(self) -> bool:
        """No watched descriptor has input (or an error) waiting: a zero-timeout poll(2).
        False while some are not watched (too many): their input could be waiting."""
        return not self._unwatched and not self._poll.poll(0)


READY = ReadyWatch()

T = TypeVar("T")


def link_turn(idle: IdleSync | None, handle: Callable[[T], None], items: T) -> None:
    """Run one read's worth of a router link's frames (`handle(items)`: execute, send
    the replies); then, if it appended and nothing else is ready, sync as a client
    poller's turn end does (IdleSync.end_of_turn), else wake the idle task as an
    append outside a turn would have."""
    if idle is None:  # no committer (starting, async durability, a log not synced in one call)
        handle(items)
        return
    assert not idle.in_turn, "a link's turn inside another turn"
    idle.in_turn = True
    try:
        handle(items)
    finally:
        idle.in_turn = False
        if idle.appended_since:
            idle.end_of_turn(READY)
