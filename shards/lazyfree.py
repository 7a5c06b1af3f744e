"""Big values freed off the loop.

Freeing a 512 MiB bytes object returns its mapping to the kernel (munmap), which
takes 40-60 ms of CPU, with the GIL held, in whichever thread drops the last
reference: a shard overwriting or deleting a big value, a router that has
forwarded one, held every other client of the process for that long. A thread
that merely dropped the reference would hold the GIL as long. Instead `drop(value)`
hands a big value to a reaper thread, which waits until it holds the only
reference (a reply still streaming the value, or its log record not yet written,
may hold it meanwhile), then gives its pages back with madvise(MADV_DONTNEED)
with the GIL released, and drops it: the munmap that follows finds no pages left
and takes microseconds.

Only values of LAZY_FREE_MIN_BYTES and up come here: glibc serves every allocation
that big from a mapping of its own (its mmap threshold never grows past 32 MiB),
so the pages between the first and the last whole page of the value's bytes hold
nothing but the value, and freeing a smaller value costs a few ms at most. Once
the reaper holds the only reference, nothing else can reach the object (bytes
support no weak references and the garbage collector does not track them). INFO's
`lazyfreed_objects` counts the values freed so, `lazyfree_pending_objects` those held.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import queue
import sys
import threading

logger = logging.getLogger("durakv.lazyfree")

LAZY_FREE_MIN_BYTES = 32 * 1024 * 1024
MAX_HELD_VALUES = 64  # held while others still use them; past this, drop() frees in its caller as before
POLL_S = 0.01  # how often the reaper looks again at values others still hold
_MADV_DONTNEED = 4
_PAGE_BYTES = mmap.PAGESIZE
_DATA_OFFSET_BYTES = bytes.__basicsize__ - 1  # ob_sval, as shards/bigbuf.py
# The references the reaper's check sees on a value only it holds: its local name
# and getrefcount's argument.
_SOLE_OWNER_REFS = 2

_libc = ctypes.CDLL(None, use_errno=True)  # CDLL calls release the GIL
_madvise = _libc.madvise
_madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_madvise.restype = ctypes.c_int


class LazyFreeStats:
    """What INFO reads: values freed by the reaper, values it holds now."""

    __slots__ = ("freed", "held")

    def __init__(self) -> None:
        self.freed = 0
        self.held = 0


stats = LazyFreeStats()


class _Reaper:
    __slots__ = ("pid", "inbox", "thread")

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.inbox: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="lazyfree", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        held: list[bytes] = []
        inbox = self.inbox
        while True:
            try:
                held.append(inbox.get(timeout=POLL_S if held else None))
            except queue.Empty:
                pass
            kept: list[bytes] = []
            while held:
                value = held.pop()
                if sys.getrefcount(value) == _SOLE_OWNER_REFS:
                    _release_pages(value)
                    stats.freed += 1
                else:
                    kept.append(value)
                del value
            held = kept
            stats.held = len(held)


_reaper: _Reaper | None = None


def drop(value: object) -> None:
    """The caller is about to let go of `value`: if it is a big bytes object, the
    reaper frees it once nobody else holds it. Cheap for anything else (one type
    test), so callers on the hot path call it for every value they drop."""
    if type(value) is not bytes or len(value) < LAZY_FREE_MIN_BYTES:
        return
    global _reaper
    reaper = _reaper
    if reaper is None or reaper.pid != os.getpid():  # none yet in this process (forked children start their own)
        reaper = _reaper = _Reaper()
    if stats.held + reaper.inbox.qsize() >= MAX_HELD_VALUES:
        return  # the caller frees it, as before
    reaper.inbox.put(value)


def drop_each(values: list) -> None:
    """drop() for each of values (here, so that no loop variable of the caller's
    frame keeps the last one)."""
    for value in values:
        drop(value)


def _release_pages(value: bytes) -> None:
    """Give the value's whole pages back to the kernel (their bytes read as zeros
    after: only for a value nobody can read any more)."""
    start = id(value) + _DATA_OFFSET_BYTES
    first = -(-start // _PAGE_BYTES) * _PAGE_BYTES
    end = (start + len(value)) // _PAGE_BYTES * _PAGE_BYTES
    if end > first and _madvise(first, end - first, _MADV_DONTNEED) != 0:
        errno = ctypes.get_errno()
        logger.warning("lazyfree: madvise of %d bytes failed: %s (freed with the GIL held)",
                       end - first, os.strerror(errno))
