"""maxclients over the whole server: every router and every shard's client port
publishes how many clients it holds in its own 8-byte slot of DIR/run/clients,
a file each of them maps; a new connection is refused once the slots sum to
maxclients, as Redis counts every client of its one process.

One writer per slot (its process; the supervisor zeroes a dead child's), so no
lock: aligned 8-byte stores are atomic. Two processes accepting at the same
instant can each admit the last place, so the total may pass maxclients by at
most one per other process for as long as those clients stay.
"""

from __future__ import annotations

import mmap
import os

from durakv.log.layout import clients_count_path, ensure_run_dir
from durakv.shards.config import LIMITS

SLOT_BYTES = 8
ROUTER_SLOTS = int(LIMITS["routers"][1])
SHARD_SLOTS = int(LIMITS["shards"][1])
FILE_BYTES = (ROUTER_SLOTS + SHARD_SLOTS) * SLOT_BYTES


def slot_of(role: str, index: int) -> int:
    """A router's slot, or a shard port's ("shard")."""
    assert role in ("router", "shard") and index >= 0, (role, index)
    return index if role == "router" else ROUTER_SLOTS + index


class ClientCount:
    """This process's slot, and the server's total (see the module docstring)."""

    def __init__(self, data_dir: str, role: str, index: int, routers: int, shards: int) -> None:
        ensure_run_dir(data_dir)
        fd = os.open(clients_count_path(data_dir), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(fd).st_size < FILE_BYTES:
                os.ftruncate(fd, FILE_BYTES)  # zeros; a peer that grew it first is not shrunk
            self._map = mmap.mmap(fd, FILE_BYTES)
        finally:
            os.close(fd)
        self._slots = memoryview(self._map).cast("q")
        self.slot = slot_of(role, index)
        self._routers = routers
        self._shards = shards
        self.publish(0)  # the clients of this slot's previous process died with it

    def publish(self, clients: int) -> None:
        self._slots[self.slot] = clients

    def total(self) -> int:
        slots = self._slots
        return sum(slots[:self._routers]) + sum(slots[ROUTER_SLOTS:ROUTER_SLOTS + self._shards])


def clear_slot(data_dir: str, role: str, index: int) -> None:
    """The supervisor, when a child died: its clients are gone (no-op without the file)."""
    try:
        ensure_run_dir(data_dir)
        fd = os.open(clients_count_path(data_dir), os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        os.pwrite(fd, bytes(SLOT_BYTES), slot_of(role, index) * SLOT_BYTES)
    finally:
        os.close(fd)
