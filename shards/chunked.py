"""Big array replies (KEYS over a million keys, LRANGE of five million elements)
encoded in pieces across loop turns, so that the shard's other clients are served
meanwhile instead of waiting for one encode of the whole array (~0.1 s per million
elements in C, longer in Python for mixed items).

Redis answers such a command atomically, and so does this: the handler takes the
list of items at once (a C-speed copy of the keys or the list slice: cheap), and
only the encoding of that fixed list is spread over turns. The items are bytes,
which nothing changes in place, so writes run between the pieces change the
keyspace but not the reply. `Shard._execute` turns a handler's list, SetReply
(SMEMBERS) or Map (HGETALL) of CHUNKED_MIN_ITEMS items or more into a ChunkedArray
(top-level commands only; inside
MULTI/EXEC, scripts or replay the list is encoded at once as before), and
`Shard.execute_batch` hands it to `send_chunked`, which encodes it in a system
task and delivers it as any reply: now, or held until the record it waits for is
durable.
"""

from __future__ import annotations

import logging
from typing import Callable

import trio

from durakv.shards.frames import LARGE_BYTES, Pieces, encode_internal
from durakv.shards.records import bin_header
from durakv.shards.resp import Map, Raw, SetReply, bulk_array, encode, encode_error

logger = logging.getLogger("durakv.shard")

CHUNKED_MIN_ITEMS = 50_000  # smaller arrays are encoded at once (a few ms)
CHUNK_ITEMS = 20_000  # items encoded per loop turn (~2 ms in C)


CHUNKABLE = frozenset({list, SetReply, Map})  # the reply types a ChunkedArray stands for


class ChunkedArray:
    """A handler's array reply (a list, SetReply or Map, whose items the handler
    made at once), to be encoded across turns."""

    __slots__ = ("items", "proto", "header")

    def __init__(self, items: list, proto: int, header: bytes) -> None:
        self.items = items
        self.proto = proto
        self.header = header


def as_chunked(result: list | SetReply | Map, proto: int) -> ChunkedArray | None:
    """A ChunkedArray for a reply of CHUNKED_MIN_ITEMS items or more, else None."""
    if isinstance(result, list):
        items = result
        header = b"*%d\r\n" % len(items)
    else:
        items = result.items
        if proto != 3:
            header = b"*%d\r\n" % len(items)
        elif type(result) is SetReply:
            header = b"~%d\r\n" % len(items)
        else:
            header = b"%%%d\r\n" % (len(items) // 2)
    if len(items) < CHUNKED_MIN_ITEMS:
        return None
    return ChunkedArray(items, proto, header)


class ChunkStats:
    """What INFO and the tests read: replies encoded in pieces, the loop turns
    they yielded, and commands the shard ran while one was being encoded."""

    __slots__ = ("replies", "turns", "in_progress", "commands_between")

    def __init__(self) -> None:
        self.replies = 0
        self.turns = 0
        self.in_progress = 0
        self.commands_between = 0


def encode_piece(items: list, proto: int) -> bytes | memoryview:
    """The items as the body of a RESP array (no header): in C when they are all bytes."""
    packed = bulk_array(items)
    if packed is None:
        return b"".join([encode(item, proto) for item in items])
    return memoryview(packed)[packed.index(b"\r\n") + 2 :]


def encode_all(chunked: ChunkedArray) -> bytes:
    """At once, where nothing may wait (no trio loop)."""
    data = chunked.header + bytes(encode_piece(chunked.items, chunked.proto or 2))
    return data if chunked.proto else encode_internal(True, Raw(data))


def send_chunked(chunked: ChunkedArray, stats: ChunkStats, takes_pieces: bool,
                 deliver: Callable[[bytes], None]) -> None:
    """Encode in a system task, then `deliver(data)`: data is a frames.Pieces of the
    encoded pieces for a sink that writes them as they are (a router link, for a
    reply of LARGE_BYTES or more), else one bytes."""
    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:  # not in a loop (a test driving execute_batch): encode at once
        deliver(encode_all(chunked))
        return
    stats.replies += 1
    stats.in_progress += 1
    trio.lowlevel.spawn_system_task(_encode_and_deliver, chunked, stats, takes_pieces, deliver,
                                    name="chunked reply")


async def _encode_and_deliver(chunked: ChunkedArray, stats: ChunkStats, takes_pieces: bool,
                              deliver: Callable[[bytes], None]) -> None:
    items = chunked.items
    proto = chunked.proto or 2
    data: bytes | Pieces
    try:
        parts: list[bytes | memoryview] = [chunked.header]
        for start in range(0, len(items), CHUNK_ITEMS):
            parts.append(encode_piece(items[start : start + CHUNK_ITEMS], proto))
            stats.turns += 1
            await trio.sleep(0)  # the shard's other clients are served between pieces
        size = sum(map(len, parts))
        if not chunked.proto:  # an internal reply (ok, Raw array): frames.encode_internal's bytes
            parts[0] = b"\x92\xc3" + bin_header(size) + parts[0]
            size = sum(map(len, parts))
        if takes_pieces and size >= LARGE_BYTES:
            data = Pieces.of(parts)
        else:
            data = b"".join(parts)
    except Exception:
        logger.exception("shard: encoding a reply of %d items failed", len(items))
        message = b"ERR internal error encoding a big reply"
        data = encode_error(message) if chunked.proto else encode_internal(False, message)
    finally:
        stats.in_progress -= 1
    deliver(data)  # type: ignore[arg-type]  # a Pieces goes where bytes go, to a router link only
