"""Big array replies (KEYS over a million keys, LRANGE of five million elements)
encoded in pieces across loop turns, so that the shard's other clients are served
meanwhile instead of waiting for one encode of the whole array (~0.1 s per million
elements in C, longer in Python for mixed items).

Redis answers such a command atomically, and so does this: KEYS takes the list of
keys at once (a C-speed copy), and only the encoding of that fixed list is spread
over turns; LRANGE, SMEMBERS, HGETALL/HKEYS/HVALS and ZRANGE & co. of a big collection read the
collection itself a chunk per turn (a LiveRead), a write to it meanwhile changing a
copy (`writable`). The items are bytes, which nothing changes in place, so writes
run between the pieces change the keyspace but not the reply. `Shard._execute` turns a handler's list, SetReply
(SMEMBERS) or Map (HGETALL) of CHUNKED_MIN_ITEMS items or more into a ChunkedArray
(top-level commands only; inside
MULTI/EXEC, scripts or replay the list is encoded at once as before), and
`Shard.execute_batch` hands it to `send_chunked`, which encodes it in a system
task and delivers it as any reply: now, or held until the record it waits for is
durable.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from copy import copy
from itertools import islice
from operator import itemgetter
from typing import TYPE_CHECKING, Callable, TypeVar

import trio

from durakv.shards.bigbuf import Filling
from durakv.shards.frames import LARGE_BYTES, Pieces, encode_internal
from durakv.shards.records import bin_header
from durakv.shards.resp import Map, Raw, SetReply, bulk_array, encode, encode_error, format_double

if TYPE_CHECKING:
    from sortedcontainers import SortedList

    from durakv.shards.context import Ctx
    from durakv.shards.keyspace import Keyspace

logger = logging.getLogger("durakv.shard")

CHUNKED_MIN_ITEMS = 50_000  # smaller arrays are encoded at once (a few ms)
CHUNK_ITEMS = 20_000  # items encoded per loop turn (~2 ms in C)


JOIN_BYTES_PER_TURN = 4 * 1024 * 1024  # a big reply for one buffer is copied together this much per turn (~1 ms)
SKIP_ITEMS = 1_000_000  # items a DequeRange steps over per loop turn to reach its start (~3 ms)

# id of a collection (a list's deque, a set, a hash) -> the LiveReads reading it: a
# write to such a value changes a copy (`writable`), never the value a reply is read from.
being_read: dict[int, int] = {}

V = TypeVar("V")


def writable(db: Keyspace, key: bytes, value: V) -> V:
    """The value at key, for a command about to change it in place: while a big
    reply reads it across turns (a LiveRead), the key gets a copy (the type's
    __copy__, TTL kept), which the command changes; the reply keeps the value as it was."""
    if being_read and id(value) in being_read:
        value = copy(value)
        db.put(key, value, keep_ttl=True)
    return value


def reads_lazily(ctx: Ctx, size: int) -> bool:
    """Whether a handler may answer with a LiveRead of a collection of `size` items:
    a top-level command of a batch (not MULTI, a script or replay) to a client."""
    return size >= CHUNKED_MIN_ITEMS and ctx.chunks and bool(ctx.proto) and not ctx.in_multi


class LiveRead:
    """A big reply read from a collection in the keyspace a chunk per loop turn by
    the reply's encoder, where the handler copied all its items at once (2M set
    members: tens of ms of the loop, and as long again to free the copy). The reply
    is still the collection as the command saw it: while the read lives, the value
    is in `being_read`, and a command that changes it first puts a copy in the
    keyspace (`writable`) and changes the copy (copy-on-write: only while a big
    reply of that very value is in progress). A change that bypassed this would end
    the iterator with RuntimeError (or a short chunk): an error reply, logged, not a torn one."""

    __slots__ = ("source", "count", "_open")
    backwards = False  # chunks come in reply order

    def __init__(self, source: object, count: int) -> None:
        self.source = source
        self.count = count
        self._open = True
        key = id(source)
        being_read[key] = being_read.get(key, 0) + 1

    def __len__(self) -> int:
        return self.count

    def chunks(self, size: int) -> Iterator[list]:
        raise NotImplementedError

    def close(self) -> None:
        """Done reading: writes to the value change it in place again."""
        if self._open:
            self._open = False
            key = id(self.source)
            left = being_read[key] - 1
            if left:
                being_read[key] = left
            else:
                del being_read[key]

    def __del__(self) -> None:  # a read dropped unread must not leave its value copy-on-write
        self.close()


class LiveItems(LiveRead):
    """All items of a set or hash in its iteration order (SMEMBERS, HKEYS, HVALS,
    HGETALL's flat field, value pairs): `items` makes the iterator over `source`,
    which yields exactly `count` items."""

    __slots__ = ("items",)

    def __init__(self, source: object, count: int, items: Callable[[], Iterator]) -> None:
        super().__init__(source, count)
        self.items = items

    def chunks(self, size: int) -> Iterator[list]:
        """The items in lists of up to `size`."""
        yield from _take(self.items(), self.count, size, "a collection")


class DequeRange(LiveRead):
    """Items [start, start + count) of a deque (a list's value) for LRANGE, where it
    copied them all at once (5M items: 55-130 ms of the loop, and as long again to
    free the copy); a write to the list while the range lives changes a copy (LiveRead)."""

    __slots__ = ("deque", "start", "backwards")

    def __init__(self, items: deque, start: int, count: int) -> None:
        assert 0 <= start and 0 < count and start + count <= len(items), (start, count, len(items))
        super().__init__(items, count)
        self.deque = items
        self.start = start
        # From the nearer end: a range near the tail is walked backwards.
        self.backwards = start > len(items) - (start + count)

    def chunks(self, size: int) -> Iterator[list]:
        """The items in lists of up to `size` (in reverse order of chunks when
        `backwards`, each chunk in list order); [] for a turn spent skipping to the start."""
        items = self.deque
        if self.backwards:
            it = reversed(items)
            skip = len(items) - (self.start + self.count)
        else:
            it = iter(items)
            skip = self.start
        while skip:
            step = min(skip, SKIP_ITEMS)
            next(islice(it, step, step), None)
            skip -= step
            yield []
        for chunk in _take(it, self.count, size, "a list"):
            if self.backwards:
                chunk.reverse()
            yield chunk


class SortedRange(LiveRead):
    """Ranks [start, end) of a sorted set's order (a SortedList of (score, member)
    pairs, in reverse when `reverse`) for ZRANGE and friends, as format_pairs would
    reply (t_zset.py): members alone (MEMBERS), member, score flat (FLAT: RESP2
    WITHSCORES) or [member, score] pairs (PAIRS: RESP3). The handler built two
    lists of a million pairs at once; here a chunk of pairs is read and formatted
    per turn, its items bytes (or, for PAIRS, one Raw of the chunk encoded) so that
    encode_piece writes them in C, not item by item. Measured over 1M members (CPU of
    the loop's longest step): the handler's step 30-47 ms (579 ms for RESP3 WITHSCORES)
    -> 0.1 ms, the longest chunk 11-25 ms with scores -> under 7 ms."""

    __slots__ = ("order", "start", "end", "reverse", "shape")
    MEMBERS, FLAT, PAIRS = 0, 1, 2

    def __init__(self, source: object, order: SortedList, start: int, end: int, reverse: bool, shape: int) -> None:
        assert 0 <= start < end <= len(order), (start, end, len(order))
        super().__init__(source, (end - start) * (2 if shape == self.FLAT else 1))
        self.order = order
        self.start = start
        self.end = end
        self.reverse = reverse
        self.shape = shape

    def chunks(self, size: int) -> Iterator[list]:
        """Chunks of about `size` items' worth of encoding work each."""
        pairs = self.order.islice(self.start, self.end, reverse=self.reverse)
        shape = self.shape
        per_chunk = size if shape == self.MEMBERS else max(1, size // (2 if shape == self.FLAT else 4))
        for chunk in _take(pairs, self.end - self.start, per_chunk, "a sorted set"):
            if shape == self.MEMBERS:
                yield list(map(_MEMBER, chunk))
            elif shape == self.FLAT:
                yield [text for score, member in chunk for text in (member, format_double(score))]
            else:
                yield [Raw(b"".join([b"*2\r\n$%d\r\n%b\r\n,%b\r\n" % (len(member), member, format_double(score))
                                     for score, member in chunk]))]


_MEMBER = itemgetter(1)


def _take(it: Iterator, count: int, size: int, what: str) -> Iterator[list]:
    """The next `count` items of `it` in lists of up to `size`; RuntimeError if it ends
    early (the value changed behind LiveRead's copy-on-write)."""
    while count:
        chunk = list(islice(it, min(size, count)))
        if len(chunk) != min(size, count):
            raise RuntimeError(f"{what} changed under the reply reading it")
        count -= len(chunk)
        yield chunk


# The reply types a ChunkedArray stands for (a LiveItems may also come in a SetReply or Map).
CHUNKABLE = frozenset({list, SetReply, Map, DequeRange, LiveItems, SortedRange})


class ChunkedArray:
    """A handler's array reply (a list, SetReply or Map, whose items the handler
    made at once), to be encoded across turns."""

    __slots__ = ("items", "proto", "header")

    def __init__(self, items: list | LiveRead, proto: int, header: bytes) -> None:
        self.items = items
        self.proto = proto
        self.header = header


def as_chunked(result: list | SetReply | Map | LiveRead, proto: int) -> ChunkedArray | None:
    """A ChunkedArray for a reply of CHUNKED_MIN_ITEMS items or more, else None."""
    if isinstance(result, (list, LiveRead)):
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


def _pieces(items: list | LiveRead) -> Iterator[list]:
    if isinstance(items, LiveRead):
        return items.chunks(CHUNK_ITEMS)
    return (items[start : start + CHUNK_ITEMS] for start in range(0, len(items), CHUNK_ITEMS))


def _close(items: list | LiveRead) -> None:
    if isinstance(items, LiveRead):
        items.close()


async def _join_across_turns(parts: list[bytes | memoryview], size: int) -> bytes:
    """b"".join(parts), copying JOIN_BYTES_PER_TURN a loop turn into the bytes object
    it returns (shards/bigbuf.py): a node's client takes one buffer, and joining
    the 108 MB of a 5M-item reply at once held the loop ~70 ms."""
    filling = Filling(size)
    copied = 0
    for part in parts:
        with memoryview(part) as view:
            for offset in range(0, len(view), JOIN_BYTES_PER_TURN):
                copied += filling.write(view[offset : offset + JOIN_BYTES_PER_TURN])
                if copied >= JOIN_BYTES_PER_TURN:
                    copied = 0
                    await trio.sleep(0)
    return filling.take()


def encode_all(chunked: ChunkedArray) -> bytes:
    """At once, where nothing may wait (no trio loop)."""
    items = chunked.items
    try:
        body = [encode_piece(piece, chunked.proto or 2) for piece in _pieces(items)]
    finally:
        _close(items)
    if isinstance(items, LiveRead) and items.backwards:
        body.reverse()
    data = chunked.header + b"".join(body)
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
        try:
            for piece in _pieces(items):
                parts.append(encode_piece(piece, proto))
                stats.turns += 1
                await trio.sleep(0)  # the shard's other clients are served between pieces
        finally:
            _close(items)
        if isinstance(items, LiveRead) and items.backwards:
            parts[1:] = parts[:0:-1]
        size = sum(map(len, parts))
        if not chunked.proto:  # an internal reply (ok, Raw array): frames.encode_internal's bytes
            parts[0] = b"\x92\xc3" + bin_header(size) + parts[0]
            size = sum(map(len, parts))
        if takes_pieces and size >= LARGE_BYTES:
            data = Pieces.of(parts)
        elif size >= JOIN_BYTES_PER_TURN:
            data = await _join_across_turns(parts, size)
        else:
            data = b"".join(parts)
    except Exception:
        logger.exception("shard: encoding a reply of %d items failed", len(items))
        message = b"ERR internal error encoding a big reply"
        data = encode_error(message) if chunked.proto else encode_internal(False, message)
    finally:
        stats.in_progress -= 1
    deliver(data)  # type: ignore[arg-type]  # a Pieces goes where bytes go, to a router link only
