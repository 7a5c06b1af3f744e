"""INFO's instantaneous_ops_per_sec and instantaneous_input/output_kbps, as Redis
computes them (server.c trackInstantaneousMetric): every 100 ms the rate since the
previous sample is kept in a ring of 16, and the figure is their mean (a ring not
yet full counts its empty slots as zero, as Redis' does), so it covers the last
1.6 seconds. Each router and shard node samples its own counters: the commands it
dispatched and the bytes its client sockets read and wrote (server/client.py)."""

from __future__ import annotations

import time

import trio

SAMPLE_INTERVAL_MS = 100  # Redis samples in serverCron's run_with_period(100)
SAMPLES = 16  # STATS_METRIC_SAMPLES
OPS, NET_INPUT, NET_OUTPUT = range(3)


class InstantRates:
    __slots__ = ("rings", "at", "last", "last_ms")

    def __init__(self) -> None:
        self.rings = [[0.0] * SAMPLES for _ in range(3)]
        self.at = 0
        self.last = [0, 0, 0]
        self.last_ms = 0

    def sample(self, now_ms: int, totals: tuple[int, int, int]) -> None:
        """Record the rate of each counter since the previous sample (per second)."""
        elapsed_ms = now_ms - self.last_ms
        for metric, total in enumerate(totals):
            delta = total - self.last[metric]
            # A reset counter (CONFIG RESETSTAT) counts from zero, not negatively.
            rate = max(delta, 0) * 1000 / elapsed_ms if self.last_ms and elapsed_ms > 0 else 0.0
            self.rings[metric][self.at] = rate
            self.last[metric] = total
        self.last_ms = now_ms
        self.at = (self.at + 1) % SAMPLES

    def per_second(self, metric: int) -> float:
        return sum(self.rings[metric]) / SAMPLES

    def lines(self) -> list[str]:
        """The INFO stats lines."""
        return [f"instantaneous_ops_per_sec:{int(self.per_second(OPS))}",
                f"instantaneous_input_kbps:{self.per_second(NET_INPUT) / 1024:.2f}",
                f"instantaneous_output_kbps:{self.per_second(NET_OUTPUT) / 1024:.2f}"]

    async def run(self, front) -> None:
        """Sample `front`'s counters (a router or shard node) every SAMPLE_INTERVAL_MS."""
        while True:
            self.sample(time.monotonic_ns() // 1_000_000,
                        (front.stats_commands, front.stats_net_input_bytes, front.stats_net_output_bytes))
            await trio.sleep(SAMPLE_INTERVAL_MS / 1000)
