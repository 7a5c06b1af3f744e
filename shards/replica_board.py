"""DIR/run/shard-NNN.replicas: where each replica of a shard publishes how far it
applied the log, for WAIT, INFO replication and the supervisor's choice of whom to
promote. A small mmap'd file of fixed slots, one per replica number; a replica
writes only its own slot, every reader maps it read-only. Not durable: it describes
running processes."""

from __future__ import annotations

import mmap
import os
import struct
import time
from typing import NamedTuple

from durakv.log.layout import ensure_run_dir, replica_board_path

MAX_REPLICAS = 8
_SLOT = struct.Struct("<QQQII")   # pid, applied_seq, heard_at_ms, port, state
SLOT_BYTES = 32
BOARD_BYTES = SLOT_BYTES * MAX_REPLICAS
STATE_NONE, STATE_LOADING, STATE_ONLINE = 0, 1, 2


class ReplicaSlot(NamedTuple):
    number: int
    pid: int
    applied_seq: int
    heard_at_ms: int     # wall clock of the replica's last look at the log
    port: int
    state: int


def _open(data_dir: str, shard: int) -> mmap.mmap:
    ensure_run_dir(data_dir)
    fd = os.open(replica_board_path(data_dir, shard), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if os.fstat(fd).st_size < BOARD_BYTES:
            os.ftruncate(fd, BOARD_BYTES)
        return mmap.mmap(fd, BOARD_BYTES)
    finally:
        os.close(fd)


class ReplicaBoard:
    """One shard's board, as a replica (publish) or a reader (slots) sees it."""

    def __init__(self, data_dir: str, shard: int) -> None:
        self._map = _open(data_dir, shard)

    def publish(self, number: int, pid: int, applied_seq: int, port: int, state: int) -> None:
        """One copy of the 32 bytes: struct.pack_into would zero the slot first, and a
        reader meeting the zeroed slot (the writer preempted in between, under load)
        would see no replica at all."""
        assert 0 <= number < MAX_REPLICAS, "replica number within the board"
        offset = number * SLOT_BYTES
        self._map[offset:offset + SLOT_BYTES] = _SLOT.pack(pid, applied_seq, time.time_ns() // 1_000_000,
                                                           port, state)

    def slots(self, replicas: int) -> list[ReplicaSlot]:
        """The first `replicas` slots whose replica has published (state != none)."""
        out = []
        for number in range(min(replicas, MAX_REPLICAS)):
            for _ in range(3):   # a slot read while its replica writes it: read again
                first = _SLOT.unpack_from(self._map, number * SLOT_BYTES)
                if _SLOT.unpack_from(self._map, number * SLOT_BYTES) == first:
                    break
            if first[4] != STATE_NONE:
                out.append(ReplicaSlot(number, *first))
        return out

    def close(self) -> None:
        self._map.close()
