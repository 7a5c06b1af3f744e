"""MEMORY USAGE: an estimate of the bytes a key and its value hold in this
shard (Python object sizes, sampled for big containers as Redis samples)."""

from __future__ import annotations

import itertools
import sys

from durakv.shards.args import ERR_SYNTAX, int_arg
from durakv.shards.context import Ctx
from durakv.shards.resp import Simple
from durakv.shards.table import KeySpec, command, container

DEFAULT_SAMPLES = 5
DICT_ENTRY_OVERHEAD_BYTES = 24

container("memory", "server")


def _element_bytes(item: object) -> int:
    if isinstance(item, tuple):
        return sum(sys.getsizeof(part) for part in item)
    return sys.getsizeof(item)


def estimate_bytes(key: bytes, value: object, samples: int) -> int:
    size = sys.getsizeof(key) + sys.getsizeof(value) + DICT_ENTRY_OVERHEAD_BYTES
    if isinstance(value, (bytes, bytearray)):
        return size
    items = value.items() if isinstance(value, dict) else value
    count = len(value) if hasattr(value, "__len__") else 0
    if not count:
        return size
    if samples == 0 or samples >= count:
        return size + sum(_element_bytes(item) for item in items)
    sampled = list(itertools.islice(iter(items), samples))
    return size + sum(_element_bytes(item) for item in sampled) * count // len(sampled)


@command("memory|usage", -3, "readonly", (2, 2, 1), "server",
         key_specs=(KeySpec("RO", 2, 0, 1),))
def memory_usage(ctx: Ctx, argv: list[bytes]):
    samples = DEFAULT_SAMPLES
    i = 3
    while i < len(argv):
        if argv[i].upper() == b"SAMPLES" and i + 1 < len(argv):
            samples = max(int_arg(argv[i + 1]), 0)
            i += 2
        else:
            raise ERR_SYNTAX
    value = ctx.db.peek(argv[2])
    if value is None:
        return None
    return estimate_bytes(argv[2], value, samples)


@command("memory|help", 2, "loading stale", (0, 0, 0), "server")
def memory_help(ctx: Ctx, argv: list[bytes]):
    return [Simple(line) for line in (
        b"MEMORY <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        b"DOCTOR",
        b"    Return memory problems reports.",
        b"MALLOC-STATS",
        b"    Return internal statistics report from the memory allocator.",
        b"PURGE",
        b"    Attempt to purge dirty pages for reclamation by the allocator.",
        b"STATS",
        b"    Return information about the memory usage of the server.",
        b"USAGE <key> [SAMPLES <count>]",
        b"    Return memory in bytes used by <key> and its value. Nested values are",
        b"    sampled up to <count> times (default: 5, 0 means sample all).",
        b"HELP",
        b"    Prints this help.",
    )]
