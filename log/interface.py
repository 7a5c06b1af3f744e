"""The seam between durakv and its log backend: what a shard primary, a replica and
the snapshotter may ask of a shard's log. The local segment files (log/writer.py,
log/follow.py) are the embedded backend; a distributed one (etcd: records, lease and
epoch checked in one fenced transaction) implements the same two Protocols, so
primaries and replicas can later run on different machines. Rules for the local
backend's bytes and its fencing are in log/FORMAT.md ("Leases and fencing").

Two roles:

- `ShardLog`, the writer (a shard primary). Exactly one holder is current: the one
  with the highest epoch. A holder's lease has a duration; it renews it well before
  it runs out. Another process may take the lease (a higher epoch) once the lease
  expired or its holder is gone; from that moment the old holder's sync() raises
  LeaseLost and nothing it writes afterwards is ever visible to a reader or to
  replay. Replies to writes leave only after sync() returned a durable_seq that
  covers them (invariant 1), so a deposed writer never acknowledges anything.
  Reads are safe to answer only while `lease.valid_until_ns` is ahead of the local
  CLOCK_MONOTONIC by a margin: a new holder cannot exist before that instant.

- `LogFollower`, a reader that sees only durable records (a replica, the snapshotter):
  the durable tail as published by the current holder, records up to it, the lease
  (to know who writes and whether it is alive), and a tail notification.

Clocks: `valid_until_ns` and expiry are CLOCK_MONOTONIC nanoseconds of this machine
(time.monotonic_ns()), which every process of the machine shares. A remote backend
converts its TTL into the same local clock at the moment its renewal was sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol, Sequence, runtime_checkable

from .format import PayloadPieces

# (seq, epoch, payload): one record as every read yields it.
Record = tuple[int, int, bytes]


@dataclass(frozen=True, slots=True)
class LeaseState:
    """What a follower can see of the current lease: who holds which epoch, until when."""
    epoch: int
    holder: str
    holder_pid: int
    valid_until_ns: int   # CLOCK_MONOTONIC; 0 = no holder has taken it yet


@runtime_checkable
class LeaseLike(Protocol):
    """The lease a ShardLog hands its holder (log.writer.Lease for local segments)."""
    holder: str
    epoch: int
    valid_until_ns: int


@runtime_checkable
class ShardLog(Protocol):
    """A shard's log as its one writer sees it.

    Opening it as a writer (`Log.open(path, holder=..., lease_duration_ms=...,
    takeover_wait_ms=...)` for local segments) recovers the durable prefix; with
    takeover_wait_ms > 0 a previous holder that is still alive (paused, partitioned)
    is fenced once its lease expired, instead of the open failing."""

    path: str
    tail_seq: int        # last appended (maybe not durable)
    durable_seq: int     # last durable; the highest seq any reply may depend on

    @property
    def epoch(self) -> int: ...

    def take_lease(self, holder: str) -> LeaseLike:
        """Become the current holder with a new, higher epoch (durably)."""
        ...

    def renew(self, lease: LeaseLike) -> LeaseLike:
        """Extend the lease by its duration from now; LeaseLost if another holder took it."""
        ...

    def append(self, payloads: Sequence[bytes | PayloadPieces], after_seq: int, lease: LeaseLike) -> int:
        """Queue records seq after_seq+1..; SequenceMismatch unless after_seq is the tail,
        LeaseLost unless `lease` is current. Returns the new tail_seq. A PayloadPieces
        is one payload in several buffers (bytes() joins it)."""
        ...

    def sync(self) -> int:
        """Make everything appended durable; return durable_seq. LeaseLost (and
        nothing of it ever visible) if the lease passed to another holder meanwhile."""
        ...

    def read(self, from_seq: int = 1, *, through_seq: int | None = None) -> Iterator[Record]:
        """Durable records from from_seq on."""
        ...

    @property
    def buffered_bytes(self) -> int:
        """Memory held for records not yet durable: not the dataset's, so maxmemory
        leaves it out (as Redis its AOF buffer)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class LogFollower(Protocol):
    """A shard's log as a replica (or any lock-free reader) sees it: durable records only."""

    def durable_seq(self) -> int:
        """The durable tail the current holder published (monotonic: never goes back)."""
        ...

    def lease(self) -> LeaseState:
        """The current lease (epoch, holder, expiry)."""
        ...

    def read(self, from_seq: int, through_seq: int) -> Iterator[Record]:
        """Records from_seq..through_seq (through_seq <= durable_seq()), in order.
        RecordsDropped if from_seq was dropped (the follower must start again from a
        snapshot), LogCorrupt on damage."""
        ...

    def wait_durable(self, after_seq: int, timeout_ms: int) -> int:
        """Tail notification: block (a thread, not a trio task) until durable_seq()
        > after_seq or timeout_ms passed; return durable_seq()."""
        ...

    def close(self) -> None: ...
