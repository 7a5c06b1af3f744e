"""Building a snapshot in a forked child, so that the snapshotter process gives
all of a build's memory back when the build ends.

A build materialises one shard's whole keyspace (snapshotter/build.py). Freed in
the long-lived snapshotter, most of it stays resident: pymalloc's arenas and
malloc's heap are fragmented by the few objects that outlive the build, and
measured with 316k keys x 100 B the process stayed at 90-100 MB after a build
(37 MB before), with gc.collect() and malloc_trim(0) (issue 11 section 4). A
child's memory all returns to the system when it exits, so between builds the
snapshotter is its empty self. Forking costs a few milliseconds; the child dies
with the snapshotter (shards/lifeline.py), which would otherwise find its own
lock held by it after a restart.

The child reports back through a pipe: b"+" (a snapshot was built), b"-"
(nothing new to build) or the pickled exception the build raised, which the
parent raises again."""

from __future__ import annotations

import os
import pickle
import signal
import sys
from typing import Callable

from durakv.shards.lifeline import die_with_parent
from durakv.snapshotter.errors import SnapshotterError


REPORT_MAX_BYTES = 1 << 20  # a pickled exception; more is a broken child
BUILT, NOTHING = b"+", b"-"


class BuildChildFailed(SnapshotterError):
    """The build child died or answered something unreadable."""


def run_in_child(build: Callable[[], object]) -> bool:
    """Run build() in a forked child; True if it returned a result (not None).
    An exception it raised is raised here; so is BuildChildFailed if the child
    died without a report."""
    read_fd, write_fd = os.pipe()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read_fd)
        code = 1
        try:
            die_with_parent(parent)
            for signum in (signal.SIGTERM, signal.SIGINT):  # the parent's handlers only set its stop event
                signal.signal(signum, signal.SIG_DFL)
            report = BUILT if build() is not None else NOTHING
            code = 0
        except BaseException as e:  # noqa: BLE001 - handed to the parent, which raises and logs it
            report = _pickled(e)
        finally:
            try:
                os.write(write_fd, report[:REPORT_MAX_BYTES])
            finally:
                os._exit(code)
    os.close(write_fd)
    try:
        report = _read_all(read_fd)
    finally:
        os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    if report == BUILT:
        return True
    if report == NOTHING:
        return False
    if report:
        try:
            error = pickle.loads(report)
        except Exception as e:  # noqa: BLE001 - reported as the child's failure
            raise BuildChildFailed(f"build child {pid} sent an unreadable report: {e}") from None
        if isinstance(error, BaseException):
            raise error
    raise BuildChildFailed(f"build child {pid} ended without a report ({_describe(status)})")


def _pickled(error: BaseException) -> bytes:
    """The exception as the parent can raise it; a RuntimeError with its text when
    it does not pickle (an exception with an unusual constructor)."""
    try:
        data = pickle.dumps(error)
        pickle.loads(data)
        return data
    except Exception:  # noqa: BLE001 - replaced by a plain error carrying the text
        return pickle.dumps(RuntimeError(f"{type(error).__name__}: {error}"))


def _read_all(fd: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    while size <= REPORT_MAX_BYTES:
        data = os.read(fd, 65536)
        if not data:
            break
        parts.append(data)
        size += len(data)
    return b"".join(parts)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"
