"""Measure log group-commit throughput on this machine: append a batch of N
100-byte records, sync() it (one write + one fdatasync), repeat for a while.
Prints records/s, payload MB/s, bytes written/s and sync latency percentiles.

    python scripts/log_bench.py [--dir DIR] [--seconds 3] [--batches 1,16,256]

DIR must be on the disk you care about (a tmpfs would measure nothing)."""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from durakv.log import Log  # noqa: E402

RECORD_BYTES = 100


def bench(path: str, batch: int, seconds: float) -> dict[str, float]:
    payloads = [os.urandom(RECORD_BYTES) for _ in range(batch)]
    with Log.open(path) as lg:
        lease = lg.take_lease("bench")
        latencies_us = []
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            lg.append(payloads, lg.tail_seq, lease)
            t0 = time.perf_counter_ns()
            lg.sync()
            latencies_us.append((time.perf_counter_ns() - t0) / 1000)
        elapsed = time.perf_counter() - started
        records, written = lg.durable_seq, lg.bytes_written
    latencies_us.sort()
    return {
        "records_per_s": records / elapsed,
        "payload_mb_per_s": records * RECORD_BYTES / elapsed / 1e6,
        "written_mb_per_s": written / elapsed / 1e6,
        "syncs_per_s": len(latencies_us) / elapsed,
        "p50_us": statistics.median(latencies_us),
        "p99_us": latencies_us[min(len(latencies_us) - 1, int(len(latencies_us) * 0.99))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None, help="parent directory for the test logs")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--batches", default="1,16,256")
    args = parser.parse_args()
    parent = tempfile.mkdtemp(prefix="log-bench-", dir=args.dir)
    try:
        print(f"{'batch':>6} {'records/s':>11} {'payload MB/s':>13} {'written MB/s':>13} "
              f"{'syncs/s':>8} {'sync p50 us':>12} {'sync p99 us':>12}")
        for batch in (int(b) for b in args.batches.split(",")):
            r = bench(os.path.join(parent, f"batch{batch}"), batch, args.seconds)
            print(f"{batch:>6} {r['records_per_s']:>11.0f} {r['payload_mb_per_s']:>13.2f} "
                  f"{r['written_mb_per_s']:>13.2f} {r['syncs_per_s']:>8.0f} "
                  f"{r['p50_us']:>12.0f} {r['p99_us']:>12.0f}")
    finally:
        shutil.rmtree(parent)


if __name__ == "__main__":
    main()
