"""Sync the log from the shard's loop when the loop has nothing else to run.

The commit thread (shards/commit.py) overlaps a sync with the next batch, but each
sync it runs costs the loop a futex wake with the GIL held and the thread three
GIL acquisitions (after its wake, after pwritev2, after the eventfd write), and the
loop an eventfd wakeup back: more CPU than the sync itself at a few SETs per batch.
When every client of the shard waits for its reply (a durable write at low
pipelining, the common case) and the disk is fast, there is little to overlap: the
loop would sleep in epoll during the sync anyway. Then the loop syncs itself, as
redis-server does with `appendfsync always`: one pwritev2(RWF_DSYNC) with the GIL
released, and the held replies leave from the same turn.

"Nothing else to run" is trio's own notion (wait_all_tasks_blocked: no task is
runnable and a zero-timeout epoll found no ready socket). A sync still goes to the
commit thread when the loop is busy (records are still pending when the next batch
starts: IdleSync.before_batch), when the pending bytes are many (a large value must
not hold the loop), when the last sync was slow (INLINE_SYNC_SLOW_US: then the
overlap is worth more than the handoffs, and a stalled disk must not hold the loop
twice), and always when the log is not one pwritev2 call (test hooks, the
journaling disk, etcd) or durability is async. Reads that arrive during a sync in
the loop wait for it, as they would in redis-server: that is at most one fast sync.

On a shard port the client poller's turn tells sooner (IdleSync.end_of_turn, called
by server/node.py's end_turn): when the turn that appended finds no client socket
ready, it syncs right there, as redis-server syncs in beforeSleep, and trio's idle
detection is not waited for. That detection cost a task wakeup, trio's idle
bookkeeping and two more scheduler passes (one a zero-timeout epoll) per sync:
callgrind's node_bench set1 (data on tmpfs) 124.1k -> 101.1k instructions per SET.
A router link's turn ends the same way (shards/link_turn.py), its TurnSource a poll
of every router link and the client port.
"""

from __future__ import annotations

from typing import Callable, Protocol

import trio

# trio.testing.wait_all_tasks_blocked is this function; importing trio.testing itself
# imports pytest where it is installed (~9 MB in every process of a tree).
from trio._core import wait_all_tasks_blocked

from durakv.log import Log

INLINE_SYNC_MAX_BYTES = 256 * 1024  # more pending than this: the commit thread writes it
# After a sync slower than this, the next goes to the commit thread. Syncing in the
# loop saves the thread handoffs (tens of µs of CPU) but holds the loop for the sync
# and gives up overlapping it with the next batch: worth it on a disk that syncs in
# well under a millisecond, not on a slow or contended one (measured: under load 15-20
# with the shared disk at several ms per fsync, syncing in the loop cost 15-30% of
# durable SET P1 throughput at the same CPU per command).
INLINE_SYNC_SLOW_US = 500


class SyncThread(Protocol):
    """What IdleSync uses of the commit thread (shards/commit.py CommitThread)."""

    def wake(self) -> None: ...

    def sync_in_loop(self) -> bool: ...


class TurnSource(Protocol):
    """What end_of_turn asks of the turn's source: the client poller (server/client.py
    ClientPoller) or, for a router link's turn, shards/link_turn.py's ReadyWatch."""

    def nothing_ready(self) -> bool: ...


class IdleSync:
    """The loop's side of group commit when it syncs while idle. The executor calls
    appended() after each append and before_batch() before each batch; run() is a
    task of the committer's nursery."""

    def __init__(self, wal: Log, thread: SyncThread, on_durable: Callable[[], None]) -> None:
        self._wal = wal
        self._thread = thread
        self._on_durable = on_durable
        self.appended_since = False  # records appended since run() or end_of_turn last looked
        self._parked: trio.lowlevel.Task | None = None  # run() waiting for an append
        self.handed_to_thread = 0  # syncs the loop left to the thread (busy, big, slow)
        # Set by the node around a turn of its client poller (end_turn): an append then
        # wakes nobody; the turn's end syncs or wakes run() (end_of_turn).
        self.in_turn = False
        self.synced_at_turn_end = 0

    def appended(self) -> None:
        """Records were appended: sync them at the loop's next idle moment."""
        self.appended_since = True
        if not self.in_turn:
            self._wake_run()

    def _wake_run(self) -> None:
        task = self._parked
        if task is not None:
            self._parked = None
            trio.lowlevel.reschedule(task)

    def end_of_turn(self, poller: TurnSource) -> None:
        """The client poller's turn ran its batch and wrote its replies. If the turn
        appended and no client socket is ready, sync now, as redis-server syncs in
        beforeSleep: the same sync run() would make once trio found the loop idle,
        without the task switches and the zero-timeout poll that cost (a few trio
        scheduler passes per fsync, most of a durable SET's extra instructions at
        P1). A ready client, or a sync the thread has in hand or the log refuses
        (sync_in_loop False): run() decides, as before. Other tasks' sockets (router
        links) are not looked at: what they bring waits for this one sync, which is
        fast (INLINE_SYNC_SLOW_US).
        With no client ready, a sync that may not run in the loop (large, or the last
        one was slow) goes to the thread from here: run() would hand it over too, only
        later, after trio's idle detection (a task switch and scheduler passes per sync,
        and that much later an fsync start that every client of the batch waits for).
        With a client ready it is left as before: the next batch's start wakes the
        thread (before_batch), which then takes that batch's records along in its fsync.
        The caller ended the turn (in_turn False) and saw appended_since set."""
        wal = self._wal
        if wal.tail_seq > wal.durable_seq and poller.nothing_ready():
            if not self._inline(wal):
                self.appended_since = False
                self.handed_to_thread += 1
                self._thread.wake()
                return
            if self._thread.sync_in_loop():
                self.appended_since = False
                self.synced_at_turn_end += 1
                self._on_durable()
                return
        self._wake_run()

    @staticmethod
    def _inline(wal: Log) -> bool:
        """Whether a sync of what is pending may run in the loop: small and the disk fast."""
        return wal.pending_bytes <= INLINE_SYNC_MAX_BYTES and wal.last_fsync_latency_us <= INLINE_SYNC_SLOW_US

    def before_batch(self) -> None:
        """A batch starts while records of an earlier one are not yet durable: the loop
        has not been idle since, so the thread syncs them, overlapped with this batch.
        The caller checked that records are pending."""
        self.handed_to_thread += 1
        self._thread.wake()

    async def run(self) -> None:
        wal = self._wal
        thread = self._thread
        while True:
            if not self.appended_since:
                await self._wait_for_append()
            await wait_all_tasks_blocked()
            self.appended_since = False
            if wal.tail_seq <= wal.durable_seq:
                continue  # the thread synced them meanwhile
            if not self._inline(wal):
                self.handed_to_thread += 1
                thread.wake()
            elif thread.sync_in_loop():
                self._on_durable()

    async def _wait_for_append(self) -> None:
        assert self._parked is None, "one IdleSync.run per shard"
        self._parked = trio.lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:
            self._parked = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)
