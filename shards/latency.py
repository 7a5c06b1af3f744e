"""The latency monitor (LATENCY LATEST/HISTORY/RESET/DOCTOR/GRAPH) and the
per-command latency histograms (LATENCY HISTOGRAM, INFO latencystats), kept where
commands execute, as SLOWLOG is (shards/slowlog.py): each shard for the commands
it runs and its log's fsyncs, each router or node for the commands it answers.
A router merges its own with every shard's (server/latency_commands.py).

Events follow Redis 7.0 (latency.c): a sample is kept when its latency in ms
reaches `latency-monitor-threshold` (0: off); one sample per event per second (the
largest), the newest LATENCY_TS_LEN per event. `command` and `fast-command` are
commands' execution times, `aof-fsync-always` the log's fdatasync (the
commit thread, shards/commit.py), `snapshot-upload` a snapshot's upload to its
store (the snapshotter).

The histograms are HdrHistograms as Redis keeps them (1 ns to 1 s, two significant
figures, durations recorded as whole microseconds times 1000): a dict from the
HDR counts index to its count, so the reply buckets and percentiles come out as
Redis' do. The hot path (`observe`) costs a comparison, a few integer operations
and one dict update per command while `latency-tracking` is on.
"""

from __future__ import annotations

import time
from collections import deque

LATENCY_TS_LEN = 160  # samples kept per event (Redis' LATENCY_TS_LEN)
MAX_EVENTS = 64  # distinct event names kept; durakv makes a handful
HIST_MIN_NS = 1
HIST_MAX_NS = 1_000_000_000
# HDR with 2 significant figures from 1 ns: 256 sub-buckets (half: 128, magnitude 7).
SUB_BUCKET_HALF_MAGNITUDE = 7
SUB_BUCKET_HALF = 1 << SUB_BUCKET_HALF_MAGNITUDE
SUB_BUCKET_MASK = (SUB_BUCKET_HALF << 1) - 1
CDF_FIRST_LEVEL_NS = 1024  # LATENCY HISTOGRAM's log iterator: 1024 ns, doubling
DEFAULT_PERCENTILES = (50.0, 99.0, 99.9)

# Event names (Redis' where it has one).
EVENT_COMMAND = "command"
EVENT_FAST_COMMAND = "fast-command"
EVENT_FSYNC = "aof-fsync-always"
EVENT_SNAPSHOT_UPLOAD = "snapshot-upload"

# A series as exported to a router (msgpack): [all-time max ms, [[unix s, ms], ...] oldest first].
MAX, SAMPLES = 0, 1


def hdr_index(value_ns: int) -> int:
    """The HDR counts index of a value (clamped to 1 ns .. 1 s)."""
    value = HIST_MIN_NS if value_ns < HIST_MIN_NS else HIST_MAX_NS if value_ns > HIST_MAX_NS else value_ns
    bucket = (value | SUB_BUCKET_MASK).bit_length() - (SUB_BUCKET_HALF_MAGNITUDE + 1)
    return ((bucket + 1) << SUB_BUCKET_HALF_MAGNITUDE) + (value >> bucket) - SUB_BUCKET_HALF


def hdr_highest_equivalent(index: int) -> int:
    """The largest value counted at `index` (what Redis reports for a bucket)."""
    bucket = (index >> SUB_BUCKET_HALF_MAGNITUDE) - 1
    sub = (index & (SUB_BUCKET_HALF - 1)) + SUB_BUCKET_HALF
    if bucket < 0:
        sub -= SUB_BUCKET_HALF
        bucket = 0
    return (sub << bucket) + (1 << bucket) - 1


# The index of each whole-microsecond duration below this, computed once: the hot
# path looks it up instead of doing the bit arithmetic per command.
FAST_INDEX_US = 4096
INDEX_BY_US = [hdr_index(us * 1000) for us in range(FAST_INDEX_US)]


def cdf(counts: dict[int, int]) -> list[tuple[int, int]]:
    """LATENCY HISTOGRAM's histogram_usec: (bucket upper bound in µs, cumulative
    count) at 1024 ns, 2048 ns, ... up to the last value, where the count grows."""
    total = sum(counts.values())
    ordered = sorted(counts.items())
    out: list[tuple[int, int]] = []
    cumulative = 0
    at = 0
    level = CDF_FIRST_LEVEL_NS
    while cumulative < total:
        limit = hdr_index(level)
        before = cumulative
        while at < len(ordered) and ordered[at][0] <= limit:
            cumulative += ordered[at][1]
            at += 1
        if cumulative > before:
            out.append((hdr_highest_equivalent(limit) // 1000, cumulative))
        level *= 2
    return out


def percentile_ns(counts: dict[int, int], percentile: float) -> int:
    """hdr_value_at_percentile: the highest equivalent value at that rank."""
    total = sum(counts.values())
    if not total:
        return 0
    wanted = max(int(min(percentile, 100.0) / 100 * total + 0.5), 1)
    seen = 0
    for index, count in sorted(counts.items()):
        seen += count
        if seen >= wanted:
            return hdr_highest_equivalent(index)
    return hdr_highest_equivalent(max(counts))


def merge_histograms(parts: list[dict]) -> dict[str, dict[int, int]]:
    """Sum histograms ({command: {index: count}}) of several processes, first-seen order."""
    merged: dict[str, dict[int, int]] = {}
    for part in parts:
        for name, counts in part.items():
            into = merged.setdefault(name, {})
            for index, count in counts.items():
                into[int(index)] = into.get(int(index), 0) + count
    return merged


def merge_events(parts: list[dict]) -> dict[str, list]:
    """Merge exported series: per event, samples of one second keep the largest,
    the newest LATENCY_TS_LEN stay; the all-time max is the largest."""
    merged: dict[str, list] = {}
    for part in parts:
        for name, (peak, samples) in part.items():
            entry = merged.setdefault(name, [0, {}])
            entry[MAX] = max(entry[MAX], peak)
            by_second = entry[SAMPLES]
            for second, ms in samples:
                if ms > by_second.get(second, -1):
                    by_second[second] = ms
    return {name: [peak, sorted(by_second.items())[-LATENCY_TS_LEN:]]
            for name, (peak, by_second) in merged.items()}


class LatencyMonitor:
    """One process's latency events and command histograms."""

    __slots__ = ("threshold_ms", "tracking", "events", "histograms")

    def __init__(self) -> None:
        self.threshold_ms = 0  # latency-monitor-threshold; 0: no events kept
        self.tracking = True  # latency-tracking
        self.events: dict[str, list] = {}  # name -> [all-time max ms, deque of [unix s, ms]]
        self.histograms: dict[str, dict[int, int]] = {}

    def configure(self, name: str, value: str) -> None:
        """latency-monitor-threshold or latency-tracking, as CONFIG SET normalised it."""
        if name == "latency-monitor-threshold":
            self.threshold_ms = int(value)
        else:
            assert name == "latency-tracking", f"not a latency parameter: {name}"
            self.tracking = value == "yes"

    def observe(self, cmd, duration_us: int) -> None:
        """A command (shards/table.py Command) that ran for duration_us: its histogram
        and, past the threshold, a `command` or `fast-command` event."""
        if self.tracking:
            counts = self.histograms.get(cmd.fullname)
            if counts is None:
                counts = self.histograms[cmd.fullname] = {}
            index = INDEX_BY_US[duration_us] if duration_us < FAST_INDEX_US else hdr_index(duration_us * 1000)
            counts[index] = counts.get(index, 0) + 1
        threshold = self.threshold_ms
        if threshold and duration_us >= threshold * 1000:
            self.add_sample(EVENT_FAST_COMMAND if "fast" in cmd.flags else EVENT_COMMAND, duration_us // 1000)

    def add_sample_if_needed(self, event: str, latency_ms: int, at_s: int | None = None) -> None:
        threshold = self.threshold_ms
        if threshold and latency_ms >= threshold:
            self.add_sample(event, latency_ms, at_s)

    def add_sample(self, event: str, latency_ms: int, at_s: int | None = None) -> None:
        now = int(time.time()) if at_s is None else at_s
        series = self.events.get(event)
        if series is None:
            if len(self.events) >= MAX_EVENTS:
                return
            series = self.events[event] = [0, deque(maxlen=LATENCY_TS_LEN)]
        if latency_ms > series[MAX]:
            series[MAX] = latency_ms
        samples = series[SAMPLES]
        if samples and samples[-1][0] == now:
            if latency_ms > samples[-1][1]:
                samples[-1][1] = latency_ms
            return
        samples.append([now, latency_ms])

    def reset_events(self, names: list[str]) -> list[str]:
        """Drop the named events (case-insensitively; all when none named): the names dropped."""
        wanted = {name.lower() for name in names}
        gone = [name for name in self.events if not names or name.lower() in wanted]
        for name in gone:
            del self.events[name]
        return gone

    def reset_histograms(self) -> None:
        """CONFIG RESETSTAT clears the histograms, as Redis' resetCommandTableStats."""
        self.histograms.clear()

    def export_events(self) -> dict[str, list]:
        return {name: [peak, [list(s) for s in samples]] for name, (peak, samples) in self.events.items()}

    def export_histograms(self) -> dict[str, dict[int, int]]:
        return {name: dict(counts) for name, counts in self.histograms.items()}
