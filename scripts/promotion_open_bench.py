"""What a promoted replica pays to open its shard's log, against the retained log size
(issue 14): Log.open plus reading the records after the replica's applied seq, done
three ways: a full recovery (every retained segment validated), from the applied seq
(read_through_seq: the segments after it), and from the byte offset where the
replica's follower stands (next_record_at: what was written since). The last must
not grow with the log.

    python scripts/promotion_open_bench.py [--sizes-mb 4 16 64] [--behind 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

from durakv.log import Log
from durakv.log.follow import Follower
from durakv.log.manifest import list_segments

SEGMENT_BYTES = 4 * 1024 * 1024   # the default segment-size-bytes
RECORD_BYTES = 100
RECORDS_PER_SYNC = 1000
ROUNDS = 3


def _fill(path: str, size_mb: int) -> int:
    records = size_mb * 1024 * 1024 // (RECORD_BYTES + 30)
    with Log.open(path, segment_size_bytes=SEGMENT_BYTES) as log:
        lease = log.take_lease("bench")
        for _ in range(0, records, RECORDS_PER_SYNC):
            log.append([b"x" * RECORD_BYTES] * RECORDS_PER_SYNC, log.tail_seq, lease)
            log.sync()
        return log.tail_seq


def _open_ms(path: str, applied: int, **kw) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.perf_counter()
        log = Log.open(path, segment_size_bytes=SEGMENT_BYTES, **kw)
        for _ in log.read(applied + 1):
            pass
        best = min(best, time.perf_counter() - started)
        log.close()
    return best * 1000


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes-mb", type=int, nargs="+", default=[4, 16, 64])
    p.add_argument("--behind", type=int, default=10, help="records the replica has still to apply")
    opts = p.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f}", flush=True)
    for size_mb in opts.sizes_mb:
        scratch = tempfile.mkdtemp(prefix="promotion-open-")
        try:
            path = os.path.join(scratch, "log")
            tail = _fill(path, size_mb)
            applied = tail - opts.behind
            follower = Follower(path)
            for _ in follower.read(list_segments(path)[-1][0], applied):
                pass
            at = follower.next_record_at(applied + 1)
            follower.close()
            full = _open_ms(path, applied)
            from_seq = _open_ms(path, applied, read_through_seq=applied)
            from_offset = _open_ms(path, applied, read_through_seq=applied, next_record_at=at)
            print(f"{size_mb} MB retained ({tail} records): full recovery {full:.1f} ms, from the applied seq "
                  f"{from_seq:.1f} ms, from the follower's offset {from_offset:.1f} ms", flush=True)
        finally:
            shutil.rmtree(scratch)
    print(f"load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
