#!/usr/bin/env python3
"""RQ 3.0 (a Python job queue whose every enqueue is a MULTI/EXEC over keys that
land on different shards) through durakv's router, beside redis-server: enqueue
JOBS jobs, run a burst worker, check every result (issue 16).

    pip install 'rq==3.0.*'
    python scripts/rq_jobs.py [--shards 4] [--jobs 200]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))
from proctools import free_port, start_durakv_serve, start_group, stop_group  # noqa: E402

READY_TIMEOUT_S = 60.0


def add(x: int, y: int) -> int:
    """The job: run by the worker, which imports it as rq_jobs.add."""
    return x + y


def wait_ready(port: int) -> None:
    import redis
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if redis.Redis(port=port).ping():
                return
        except redis.RedisError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answers on port {port}")


def run_jobs(port: int, jobs: int) -> tuple[int, float, float]:
    """(jobs that finished with the right result, seconds to enqueue, seconds to work)."""
    import redis
    from rq import Queue, Worker

    conn = redis.Redis(port=port)
    queue = Queue("default", connection=conn)
    started = time.monotonic()
    enqueued = [queue.enqueue("rq_jobs.add", i, 1) for i in range(jobs)]
    enqueue_s = time.monotonic() - started
    started = time.monotonic()
    Worker([queue], connection=conn).work(burst=True, with_scheduler=False)
    work_s = time.monotonic() - started
    good = 0
    for i, job in enumerate(enqueued):
        job.refresh()
        if job.get_status() == "finished" and job.return_value() == i + 1:
            good += 1
    return good, enqueue_s, work_s


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--jobs", type=int, default=200)
    opts = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rq-jobs-"))
    procs = []
    failed = False
    try:
        durakv, dport = start_durakv_serve(tmp / "durakv", opts.shards)
        procs.append(durakv)
        rport = free_port()
        procs.append(start_group(["redis-server", "--port", str(rport), "--save", "", "--appendonly", "no",
                                  "--dir", str(tmp)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for name, port in ((f"durakv ({opts.shards} shards)", dport), ("redis-server", rport)):
            wait_ready(port)
            good, enqueue_s, work_s = run_jobs(port, opts.jobs)
            print(f"{name}: {good}/{opts.jobs} jobs finished with the right result; enqueue {enqueue_s:.2f} s, "
                  f"worker {work_s:.2f} s")
            failed = failed or good != opts.jobs
    finally:
        for proc in procs:
            stop_group(proc)
    if failed:
        print(f"durakv's log: {tmp / 'durakv.log'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
