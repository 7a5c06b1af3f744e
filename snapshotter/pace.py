"""Keeping the snapshotter off the CPUs most of the time.

SCHED_IDLE (snapshotter.priority) makes every shard that wakes preempt the
snapshotter, but measured on a 2-core VM a SCHED_IDLE process that is always
runnable still costs a loaded server ~30% p99 (a pure `while True: pass` did;
a memory-churning one ~50%): CPUs that never idle cost the serving processes
wakeup placement, cache and, on a VM, the host's sibling threads. The same
churn runnable a quarter of the time cost ≤1.2x. So the snapshotter works in
short slices and sleeps between them: a Pacer is called often from the loops
that touch every key or record, and sleeps once a slice of wall time is used."""

from __future__ import annotations

import time

WORK_SLICE_MS = 5.0
CPU_PERCENT_DEFAULT = 25


class Pacer:
    """Call it often (each key, each record); it sleeps so that the caller runs at
    most cpu_percent of wall time, in slices of work_slice_ms."""

    __slots__ = ("work_slice_s", "rest_s", "slice_started", "rested_s")

    def __init__(self, cpu_percent: int = CPU_PERCENT_DEFAULT, work_slice_ms: float = WORK_SLICE_MS) -> None:
        if not 1 <= cpu_percent <= 100:
            raise ValueError(f"cpu_percent must be in [1, 100], not {cpu_percent}")
        self.work_slice_s = work_slice_ms / 1000
        self.rest_s = self.work_slice_s * (100 - cpu_percent) / cpu_percent
        self.slice_started = time.perf_counter()
        self.rested_s = 0.0

    def __call__(self) -> None:
        if time.perf_counter() - self.slice_started >= self.work_slice_s:
            self.rest()

    def rest(self) -> None:
        if self.rest_s:
            time.sleep(self.rest_s)
            self.rested_s += self.rest_s
        self.slice_started = time.perf_counter()


def unpaced() -> None:
    """The Pacer of code that may use every CPU it gets (shards starting, restore)."""
