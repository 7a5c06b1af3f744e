"""CPU and wall time per durable write of a small record on this machine's disk,
four ways a shard could make it durable; the numbers that decide the next step
for the durable write's CPU (BENCHMARKS.md, "Where durakv's CPU goes").

- inline: pwritev2(RWF_DSYNC) appending to a file, in the calling thread (a shard
  syncing in its loop, shards/idle_sync.py);
- prealloc: the same over space written with zeros and fsync'd beforehand (no size
  change, so no journal commit per sync; durakv's segments do not do this yet);
- thread: a Python thread does the inline write, woken through a lock and answering
  through an eventfd (shards/commit.py CommitThread);
- aio: a buffered pwritev in the calling thread, then io_submit(IOCB_CMD_FDSYNC)
  with an eventfd (Linux AIO through ctypes: no thread; the fdatasync's CPU is a
  kworker's and not in this process' figure).

    python scripts/sync_probe.py [--dir DIR] [--syncs 300] [--record-bytes 3000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import select
import sys
import tempfile
import threading
import time

SYS_IO_SETUP, SYS_IO_DESTROY, SYS_IO_GETEVENTS, SYS_IO_SUBMIT = 206, 207, 208, 209  # x86_64
IOCB_CMD_FDSYNC = 3
IOCB_FLAG_RESFD = 1


class Iocb(ctypes.Structure):
    """struct iocb (linux/aio_abi.h, little-endian)."""
    _fields_ = [("aio_data", ctypes.c_uint64), ("aio_key", ctypes.c_uint32), ("aio_rw_flags", ctypes.c_int32),
                ("aio_lio_opcode", ctypes.c_uint16), ("aio_reqprio", ctypes.c_int16),
                ("aio_fildes", ctypes.c_uint32), ("aio_buf", ctypes.c_uint64), ("aio_nbytes", ctypes.c_uint64),
                ("aio_offset", ctypes.c_int64), ("aio_reserved2", ctypes.c_uint64), ("aio_flags", ctypes.c_uint32),
                ("aio_resfd", ctypes.c_uint32)]


class IoEvent(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint64), ("obj", ctypes.c_uint64), ("res", ctypes.c_int64),
                ("res2", ctypes.c_int64)]


def inline(fd: int, record: bytes, syncs: int) -> None:
    offset = 0
    for _ in range(syncs):
        os.pwritev(fd, [record], offset, os.RWF_DSYNC)
        offset += len(record)


def threaded(fd: int, record: bytes, syncs: int) -> None:
    wake = threading.Lock()
    wake.acquire()
    done = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    poll = select.epoll()
    poll.register(done, select.EPOLLIN)
    stopping = False

    def run() -> None:
        offset = 0
        while True:
            wake.acquire()
            if stopping:
                return
            os.pwritev(fd, [record], offset, os.RWF_DSYNC)
            offset += len(record)
            os.eventfd_write(done, 1)

    thread = threading.Thread(target=run, name="probe commit")
    thread.start()
    try:
        for _ in range(syncs):
            wake.release()
            poll.poll()
            os.eventfd_read(done)
    finally:
        stopping = True
        wake.release()
        thread.join()
        poll.close()
        os.close(done)


def aio(fd: int, record: bytes, syncs: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    ctx = ctypes.c_ulong(0)
    if libc.syscall(SYS_IO_SETUP, 8, ctypes.byref(ctx)) != 0:
        raise OSError(ctypes.get_errno(), "io_setup")
    done = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    poll = select.epoll()
    poll.register(done, select.EPOLLIN)
    iocb = Iocb(aio_lio_opcode=IOCB_CMD_FDSYNC, aio_fildes=fd, aio_flags=IOCB_FLAG_RESFD, aio_resfd=done)
    iocbs = (ctypes.POINTER(Iocb) * 1)(ctypes.pointer(iocb))
    events = (IoEvent * 1)()
    try:
        offset = 0
        for _ in range(syncs):
            os.pwritev(fd, [record], offset)
            offset += len(record)
            if libc.syscall(SYS_IO_SUBMIT, ctx, 1, iocbs) != 1:
                raise OSError(ctypes.get_errno(), "io_submit")
            poll.poll()
            os.eventfd_read(done)
            if libc.syscall(SYS_IO_GETEVENTS, ctx, 1, 1, events, None) != 1 or events[0].res != 0:
                raise OSError(-events[0].res, "IOCB_CMD_FDSYNC")
    finally:
        libc.syscall(SYS_IO_DESTROY, ctx)
        poll.close()
        os.close(done)


def measure(directory: str, mode: str, record: bytes, syncs: int) -> tuple[float, float, float]:
    """(calling thread CPU µs, process CPU µs, wall µs) per sync."""
    path = os.path.join(directory, f"sync-probe-{mode}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        if mode == "prealloc":
            os.pwrite(fd, bytes(len(record) * syncs), 0)
            os.fsync(fd)
        run = {"inline": inline, "prealloc": inline, "thread": threaded, "aio": aio}[mode]
        thread_s, process_s, wall_s = time.thread_time(), time.process_time(), time.monotonic()
        run(fd, record, syncs)
        return ((time.thread_time() - thread_s) * 1e6 / syncs, (time.process_time() - process_s) * 1e6 / syncs,
                (time.monotonic() - wall_s) * 1e6 / syncs)
    finally:
        os.close(fd)
        os.unlink(path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", default=None, help="a directory on the disk to measure (default: the temp dir)")
    p.add_argument("--syncs", type=int, default=300)
    p.add_argument("--record-bytes", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=2)
    opts = p.parse_args()
    if not (1 <= opts.syncs <= 100_000 and 1 <= opts.record_bytes <= 1 << 20 and 1 <= opts.rounds <= 20):
        p.error("an argument is out of range")
    record = b"x" * opts.record_bytes
    with tempfile.TemporaryDirectory(prefix="durakv-sync-probe-", dir=opts.dir) as directory:
        print(f"{'mode':<9} {'thread CPU µs':>14} {'process CPU µs':>15} {'wall µs':>9}   (per sync; "
              f"load {os.getloadavg()[0]:.1f})")
        for _ in range(opts.rounds):
            for mode in ("inline", "prealloc", "thread", "aio"):
                thread_us, process_us, wall_us = measure(directory, mode, record, opts.syncs)
                print(f"{mode:<9} {thread_us:>14.1f} {process_us:>15.1f} {wall_us:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
