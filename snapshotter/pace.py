"""Keeping the snapshotter off the CPUs while the shards need them.

SCHED_IDLE (snapshotter.priority) makes every shard that wakes preempt the
snapshotter, but measured on a 2-core VM a SCHED_IDLE process that is always
runnable still costs a loaded server ~30% p99 (a pure `while True: pass` did;
a memory-churning one ~50%): CPUs that never idle cost the serving processes
wakeup placement, cache and, on a VM, the host's sibling threads. The same
churn runnable a quarter of the time cost <=1.2x. So while the rest of the
machine is busy the snapshotter works in short slices and sleeps between them;
while it is mostly idle (the other processes use under half of the CPUs the
snapshotter does not), nobody is slowed and the snapshotter runs flat out.

A Pacer is called often from the loops that touch every key or record."""

from __future__ import annotations

import os
import time

from durakv.shards.config import DEFAULTS

WORK_SLICE_MS = 5.0
CPU_PERCENT_DEFAULT = DEFAULTS.snapshot_cpu_percent
LOAD_SAMPLE_MS = 200.0      # how often the machine's load is read (/proc/stat ticks are 10 ms)
IDLE_SHARE_FREE_RUN = 0.5   # free run while others use less than this share of the other CPUs
PROC_STAT = "/proc/stat"
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _machine_busy_s() -> float | None:
    """CPU seconds spent busy by the whole machine since boot (None off Linux)."""
    try:
        with open(PROC_STAT, "rb") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return None
    ticks = [int(x) for x in fields[:8]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / CLOCK_TICKS_PER_S


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


class Pacer:
    """Call it often (each key, each record). While other processes keep the
    machine busy it sleeps so that the caller runs at most cpu_percent of wall
    time, in slices of work_slice_ms; while the machine is mostly idle it
    does not sleep."""

    __slots__ = ("work_slice_s", "rest_s", "slice_started", "rested_s", "free_run", "_sample_at",
                 "_busy_s", "_own_s", "_free_share_cpus")

    def __init__(self, cpu_percent: int = CPU_PERCENT_DEFAULT, work_slice_ms: float = WORK_SLICE_MS,
                 cpus: int | None = None) -> None:
        if not 1 <= cpu_percent <= 100:
            raise ValueError(f"cpu_percent must be in [1, 100], not {cpu_percent}")
        self.work_slice_s = work_slice_ms / 1000
        self.rest_s = self.work_slice_s * (100 - cpu_percent) / cpu_percent
        self.slice_started = time.perf_counter()
        self.rested_s = 0.0
        self.free_run = False
        cpus = cpus or os.cpu_count() or 1
        self._free_share_cpus = IDLE_SHARE_FREE_RUN * max(cpus - 1, 0)
        self._sample_at = 0.0
        self._busy_s = self._own_s = 0.0

    def __call__(self) -> None:
        if time.perf_counter() - self.slice_started >= self.work_slice_s:
            self.rest()

    def rest(self) -> None:
        now = time.perf_counter()
        if now - self._sample_at >= LOAD_SAMPLE_MS / 1000:
            self._sample(now)
        if self.rest_s and not self.free_run:
            time.sleep(self.rest_s)
            self.rested_s += self.rest_s
        self.slice_started = time.perf_counter()

    def _sample(self, now: float) -> None:
        busy_s, own_s = _machine_busy_s(), _own_cpu_s()
        if busy_s is not None and self._sample_at:
            others_cpus = ((busy_s - self._busy_s) - (own_s - self._own_s)) / (now - self._sample_at)
            self.free_run = others_cpus < self._free_share_cpus
        self._sample_at, self._busy_s, self._own_s = now, busy_s or 0.0, own_s


def unpaced() -> None:
    """The Pacer of code that may use every CPU it gets (shards starting, restore)."""
