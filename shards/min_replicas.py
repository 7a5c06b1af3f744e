"""Redis' min-replicas-to-write N and min-replicas-max-lag S on a shard primary.

As Redis: while both are non-zero and fewer than N replicas are good (online, and
heard from within S seconds: a replica publishes on the shard's replica board,
shards/replica_board.py, every time it looks at the log), write commands are refused
with NOREPLICAS, and an EXEC holding a write is aborted with it.

Beyond Redis (issue 14): a write accepted while N replicas are good is acknowledged
only once its record is durable *and* N good replicas applied it, so an acknowledged
write is on N replicas too. Should the good replicas drop below N meanwhile (a replica
stalls: it stops being good after S seconds, which bounds the wait), the writes
already accepted are acknowledged once durable, as Redis acknowledged them at once:
their records are durable and cannot be taken back; new writes are refused.

The shard's executor reads one attribute per command (`Shard.noreplicas`, None unless
writes are refused) and its release of held replies asks release_seq(); `run` polls
the board: every POLL_HOLDING_S while acknowledgements wait for replicas (as often
as replicas poll the log), every POLL_IDLE_S while the feature is off or refusing."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Iterable

import trio

from durakv.shards.frames import VERB_AS_USER, VERB_LITERAL
from durakv.shards.replica_board import STATE_ONLINE, ReplicaBoard, ReplicaSlot
from durakv.shards.table import lookup

if TYPE_CHECKING:
    from durakv.shards.shard import Shard

NOREPLICAS = b"NOREPLICAS Not enough good replicas to write."
EXECABORT_NOREPLICAS = b"EXECABORT Transaction discarded because of: " + NOREPLICAS
POLL_HOLDING_S = 0.001
POLL_IDLE_S = 0.1
TO_WRITE, MAX_LAG = "min-replicas-to-write", "min-replicas-max-lag"
MIN_REPLICAS_PARAMS = frozenset((TO_WRITE, MAX_LAG))


def good_replicas(slots: Iterable[ReplicaSlot], now_ms: int, max_lag_s: int) -> list[ReplicaSlot]:
    """Redis' good replicas: online, and lag (whole seconds since last heard) <= max_lag_s."""
    return [slot for slot in slots
            if slot.state == STATE_ONLINE and max(now_ms - slot.heard_at_ms, 0) // 1000 <= max_lag_s]


def _running(slot: ReplicaSlot) -> bool:
    """The replica's process still exists (one kill(pid, 0), cheap enough to ask at every
    poll): a dead replica is a disconnected one, as Redis drops a closed replica link."""
    try:
        os.kill(slot.pid, 0)
    except (ProcessLookupError, PermissionError):   # gone (or its pid is another user's now)
        return False
    return True


def transaction_writes(commands: list[list[bytes]]) -> bool:
    """Whether a queued transaction (shards/t_multi.py) holds a write command."""
    for queued in commands:
        if queued[0] == VERB_LITERAL:
            continue
        if lookup(queued[2:] if queued[0] == VERB_AS_USER else queued).is_write:
            return True
    return False


class MinReplicas:
    """One primary's view of its replicas for min-replicas-to-write."""

    __slots__ = ("shard", "board", "replicas", "_through")

    def __init__(self, shard: "Shard") -> None:
        self.shard = shard
        self.board = ReplicaBoard(shard.config.data_dir, shard.index)
        self.replicas = shard.config.replicas
        # The seq N good replicas applied, while the feature is on and N are good; else
        # None (held replies wait for durability alone).
        self._through: int | None = None

    def refresh(self) -> None:
        """Read the board: refuse writes or not, and how far N good replicas applied."""
        settings = self.shard.settings
        to_write, max_lag_s = settings[TO_WRITE], settings[MAX_LAG]
        if not to_write or not max_lag_s:
            self._through = None
            self.shard.noreplicas = None
            return
        good = [slot for slot in good_replicas(self.board.slots(self.replicas), time.time_ns() // 1_000_000,
                                               max_lag_s) if _running(slot)]
        if len(good) < to_write:
            self._through = None
            self.shard.noreplicas = NOREPLICAS
            return
        self._through = sorted((slot.applied_seq for slot in good), reverse=True)[to_write - 1]
        self.shard.noreplicas = None

    def release_seq(self, durable_seq: int) -> int:
        """How far held replies may leave, durable_seq being durable."""
        through = self._through
        return durable_seq if through is None else min(durable_seq, through)

    async def run(self) -> None:
        shard = self.shard
        while True:
            self.refresh()
            if shard.held.count:
                shard.release_held(shard.hazards.durable_seq)
            await trio.sleep(POLL_IDLE_S if self._through is None else POLL_HOLDING_S)
