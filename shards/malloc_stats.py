"""What the allocators of this process say about its memory, for MEMORY
MALLOC-STATS: glibc's mallinfo2 (whose figures cover the main arena only, as its
manual says; threads' arenas are not in them) and CPython's count of allocated
objects, beside the kernel's resident and data sizes. Read only when asked: a
mallinfo2 walks the arena's free lists."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import sys

logger = logging.getLogger("durakv.shard")

# struct mallinfo2 (glibc 2.33+), in its order: every field a size_t.
MALLINFO2_FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                    "keepcost")
# What each means, from mallinfo(3).
MALLINFO2_MEANING = {
    "arena": "bytes of non-mmapped memory obtained from the system (brk)",
    "ordblks": "free chunks",
    "smblks": "free fastbin chunks",
    "hblks": "regions mmapped for large allocations",
    "hblkhd": "bytes in regions mmapped for large allocations",
    "usmblks": "always 0",
    "fsmblks": "bytes in free fastbin chunks",
    "uordblks": "bytes in use (allocated chunks)",
    "fordblks": "bytes free (free chunks)",
    "keepcost": "releasable bytes at the top of the heap (malloc_trim)",
}
STATUS_FIELDS = ("VmRSS", "VmHWM", "VmData", "RssAnon", "RssFile")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in MALLINFO2_FIELDS]


def _mallinfo2() -> dict[str, int]:
    """{} where the C library has no mallinfo2 (not glibc, or glibc before 2.33)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.mallinfo2
    except (OSError, AttributeError) as e:
        logger.info("MEMORY MALLOC-STATS: no mallinfo2 in the C library (%s)", e)
        return {}
    fn.restype = _MallInfo2
    info = fn()
    return {name: int(getattr(info, name)) for name in MALLINFO2_FIELDS}


def release_free_heap() -> None:
    """Give the C heap's free pages back to the system (malloc_trim(0)). A process
    that has just started (the supervisor's preload; a child's own imports, a shard's
    snapshot load and log replay) leaves free chunks that malloc keeps resident: about
    1 MB of RSS in each process of an empty tree (scripts/process_memory.py). Called
    once, where a process is about to fork its children or has said it is ready; in a
    forked child it also drops free pages it still shared with its parent."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except AttributeError as e:  # not glibc: nothing to trim this way
        logger.info("no malloc_trim in the C library (%s)", e)
        return
    trim(0)


def _status_kb() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in STATUS_FIELDS:
                out[name] = int(value.split()[0])
    return out


def malloc_stats() -> dict:
    """This process's figures (msgpack-able: a shard sends them to the router)."""
    return {"mallinfo2": _mallinfo2(), "status_kb": _status_kb(),
            "python_allocated_blocks": sys.getallocatedblocks(), "gc_counts": list(gc.get_count())}


def format_stats(processes: list[tuple[str, int, dict]]) -> str:
    """MEMORY MALLOC-STATS' text for (name, pid, malloc_stats()) of each process."""
    lines = ["___ Begin durakv malloc statistics ___",
             "Allocator: libc (glibc malloc), with CPython's pymalloc for objects of 512 bytes or less.",
             "mallinfo2 covers the main arena only (threads' arenas are not in it); sizes in bytes."]
    for name, pid, stats in processes:
        lines += ["", f"{name} (pid {pid})"]
        for field, kb in stats["status_kb"].items():
            lines.append(f"  {field}: {kb * 1024}")
        mallinfo = stats["mallinfo2"]
        if not mallinfo:
            lines.append("  mallinfo2: not available in this C library")
        for field, value in mallinfo.items():
            lines.append(f"  mallinfo2.{field}: {value}  ({MALLINFO2_MEANING[field]})")
        lines.append(f"  python.allocated_blocks: {stats['python_allocated_blocks']}  (objects allocated now)")
        lines.append(f"  python.gc_counts: {' '.join(map(str, stats['gc_counts']))}  (per generation)")
    lines.append("--- End durakv malloc statistics ---")
    return "\n".join(lines) + "\n"
