"""Both ends of a router <-> shard link (server/links.py, shards/process.py) move
frames (shards/frames.py) with the same two pieces: a FrameReceiver, which reads
the socket into a reused buffer, splits it into frames and hands each read's
frames to its owner at once; and an Outbox, where messages queue until the
sending task takes them all and sends them as one frame ("the first put wakes,
the drainer swaps the list").

A message too big to be copied through msgpack and held in one frame (a large
reply or request argument, frames.LARGE_BYTES and up) travels as a large frame:
a small head, then its blobs in pieces (frames.PIECE_BYTES) that the receiver
reads straight into their own buffers, one piece per scheduling turn, so one big
value neither holds the loop nor passes through msgpack; the sender writes the
ordinary frames queued meanwhile between the pieces (send_batch's `between`), so
other clients' small requests and replies do not wait behind the value.
"""

from __future__ import annotations

import logging
import mmap
import socket
from collections.abc import Callable
from typing import Generic, TypeVar

import msgspec
import trio

from durakv.shards.bigbuf import Filling
from durakv.shards.frames import (
    FRAME_HEADER_BYTES, LARGE_FLAG, MAX_FRAME_BYTES, MAX_LARGE_BLOBS, MAX_LARGE_HEAD_BYTES, PIECE_BYTES, PIECE_HEADER,
    PIECE_HEADER_BYTES, Pieces, encode_frame, encode_large_head, large_head_decoder,
)

logger = logging.getLogger("durakv.framelink")

RECV_BYTES = 1024 * 1024
IOV_MAX = 1024  # buffers per sendmsg (Linux UIO_MAXIOV)
SOCKET_BUFFER_BYTES = 4 * 1024 * 1024  # fewer wakeups per large value on the Unix socket

T = TypeVar("T")


class LinkStats:
    """This process's count of ordinary frames written between a large message's
    pieces (INFO link_frames_passed_large: router and shards summed)."""

    __slots__ = ("frames_passed_large",)

    def __init__(self) -> None:
        self.frames_passed_large = 0


link_stats = LinkStats()


class Large:
    """A large message as received: its msgpack head (what the sender put in
    place of the blobs) and the blobs, each in its own buffer (none: its one blob
    went to a stream's sink, FrameReceiver)."""

    __slots__ = ("head", "blobs")

    def __init__(self, head: msgspec.Raw, blobs: list[bytes]) -> None:
        self.head = head
        self.blobs = blobs


def tune_socket(sock: socket.socket) -> None:
    """Larger kernel buffers on a link: a large value moves in fewer turns."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER_BYTES)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER_BYTES)
    except OSError as e:  # the kernel caps it (net.core.wmem_max); defaults still work
        logger.warning("link socket buffers left at the kernel's defaults: %s", e)


class Outbox(Generic[T]):
    """Messages waiting for the sender task. The first put of a turn wakes it;
    it takes the whole list at once and leaves an empty one in its place."""

    __slots__ = ("items", "_wake")

    def __init__(self) -> None:
        self.items: list[T] = []
        self._wake = trio.Event()

    def put(self, item: T) -> None:
        items = self.items
        items.append(item)
        if len(items) == 1:
            self._wake.set()

    def wake(self) -> None:
        """For a caller that appended the first item to `items` itself."""
        self._wake.set()

    def extend(self, items: list[T]) -> None:
        if items:
            if not self.items:
                self._wake.set()
            self.items.extend(items)

    def clear(self) -> list[T]:
        """Take everything queued, without waiting (for a link that died)."""
        items = self.items
        self.items = []
        return items

    async def take(self) -> list[T]:
        """Wait until something is queued, then take all of it."""
        while not self.items:
            await self.wait()
        return self.clear()

    async def wait(self) -> None:
        """Wait for the next wake (a put, or wake() with or without items)."""
        await self._wake.wait()
        self._wake = trio.Event()


# stream(head, blob sizes) when a large message of one blob begins: a sink that takes its
# bytes piece by piece as they arrive, or None to collect the blob as usual.
Sink = Callable[[memoryview], None]
Stream = Callable[[msgspec.Raw, list[int]], "Sink | None"]


class FrameReceiver:
    """Reads frames from a link socket until it ends. `handle(items)` gets, for each
    read, the frames it completed in order: a frame body (bytes) or a Large.

    With `stream`, a large message of one blob may instead be passed on as it arrives
    (the router writes a big reply to its client while the shard is still sending it,
    rather than after holding all of it): its pieces go to the sink `stream` returned,
    each a view of the reused read buffer, valid only during the call, and the Large
    handed to `handle` once it is complete has no blobs."""

    __slots__ = ("sock", "handle", "stream", "views", "_buf", "_chunk", "_view", "_in_large", "_incoming", "_wait")

    def __init__(self, sock: socket.socket, handle: Callable[[list[bytes | Large]], None],
                 stream: Stream | None = None, views: bool = False) -> None:
        """views: hand ordinary frames over as memoryviews into the receive buffer, valid
        only during handle() (no copy of each frame body: a router's shard link carries
        every reply). Only for a handle that decodes them at once and never reads the
        socket itself (read_ready, which a busy script on a shard calls, changes the buffer)."""
        self.sock = sock
        self.handle = handle
        self.stream = stream
        self.views = views
        self._buf = bytearray()
        # Reused: a fresh 1 MiB bytes per recv costs an mmap. An anonymous mapping, not a
        # bytearray (which zeroes, so holds, all its pages): a link that only ever carries
        # small frames keeps the few pages its reads touched, not 1 MiB per link and process.
        self._chunk = mmap.mmap(-1, RECV_BYTES)
        self._view = memoryview(self._chunk)
        self._in_large = False  # reading a large message's piece: its bytes are the piece's
        self._incoming: _Incoming | None = None  # the large message whose pieces are arriving
        # A TLS link (shards/link_tls.py) may hold decrypted bytes the socket no longer shows.
        self._wait = getattr(sock, "wait_readable", trio.lowlevel.wait_readable)

    def read_ready(self) -> list[bytes]:
        """For synchronous code while the loop is held (a busy script, shards/busy.py):
        read what the socket holds now and take the ordinary frames at the front of
        the buffer; the rest stays for run(), which looks at the buffer before it
        waits. Nothing while a large message's blobs are being read."""
        if self._in_large:
            return []
        while True:
            try:
                size = self.sock.recv_into(self._chunk)
            except (BlockingIOError, InterruptedError):
                break
            if not size:
                break  # the end of the stream: run() sees it on its next read
            self._buf += self._view[:size]
        return _split_frames(self._buf)

    async def run(self) -> None:
        """Return at the end of the stream; raise OSError on a socket error and
        ValueError on a malformed frame (the caller closes the link)."""
        sock = self.sock
        wait = self._wait
        chunk = self._chunk
        view = self._view
        buf = self._buf
        while True:
            # The buffer first: read_ready may have filled it while a script held the loop.
            items: list[bytes | Large] = []
            while True:
                if self.views:
                    if items:  # a large message completed: handed on before the frames after it
                        self.handle(items)
                        items = []
                    self._handle_views(buf)
                else:
                    items.extend(_split_frames(buf))
                if len(buf) < FRAME_HEADER_BYTES or not buf[0] & 0x80:
                    break
                if buf[:FRAME_HEADER_BYTES] == PIECE_HEADER:
                    if len(buf) < PIECE_HEADER_BYTES:
                        break
                    if items:  # handed on before a read that may wait
                        self.handle(items)
                        items = []
                    self._in_large = True
                    try:
                        done = await self._receive_piece()
                    finally:
                        self._in_large = False
                    if done is not None:
                        items.append(done)
                        # This frame must not keep the message (its 512 MiB value, maybe
                        # deleted since) until the next large one (shards/lazyfree.py).
                        done = None
                    continue
                head_size = int.from_bytes(buf[:FRAME_HEADER_BYTES], "big") & ~LARGE_FLAG
                if head_size > MAX_LARGE_HEAD_BYTES:
                    raise ValueError(f"large frame head of {head_size} bytes exceeds {MAX_LARGE_HEAD_BYTES}")
                if len(buf) < FRAME_HEADER_BYTES + head_size:
                    break
                done = self._begin_large(head_size)
                if done is not None:
                    items.append(done)
                    done = None
            if items:
                self.handle(items)
                continue
            await wait(sock)
            # Inside a large message, a header alone first: most likely a piece's,
            # whose bytes are then read straight into the value, not through buf.
            limit = PIECE_HEADER_BYTES if self._incoming is not None and not buf else 0
            try:
                size = sock.recv_into(chunk, limit)
            except BlockingIOError:
                continue
            if not size:
                if self._incoming is not None:
                    raise ValueError("link closed before the end of a large message")
                return
            buf += view[:size]

    def _handle_views(self, buf: bytearray) -> None:
        """Hand the complete ordinary frames at the front of buf to handle() as views,
        then drop them from buf (no view may outlive the call: buf changes after it)."""
        view = memoryview(buf)
        frames: list = []
        pos = 0
        n = len(buf)
        try:
            while n - pos >= FRAME_HEADER_BYTES and not buf[pos] & 0x80:
                end = pos + FRAME_HEADER_BYTES + int.from_bytes(view[pos : pos + FRAME_HEADER_BYTES], "big")
                if end > n:
                    break
                frames.append(view[pos + FRAME_HEADER_BYTES : end])
                pos = end
            if frames:
                self.handle(frames)
        finally:
            for frame in frames:
                frame.release()
            view.release()
        if pos:
            del buf[:pos]

    def _begin_large(self, head_size: int) -> Large | None:
        """A large message's head is at the front of the buffer: take it, and set up
        where its blobs' pieces go. The message itself if it has no blob bytes."""
        if self._incoming is not None:
            raise ValueError("a large frame began inside another one")
        buf = self._buf
        head_end = FRAME_HEADER_BYTES + head_size
        sizes, head = large_head_decoder.decode(buf[FRAME_HEADER_BYTES:head_end])
        if not 0 < len(sizes) <= MAX_LARGE_BLOBS or not all(0 <= s <= MAX_FRAME_BYTES for s in sizes):
            raise ValueError(f"large frame with blob sizes {sizes[:8]}")
        del buf[:head_end]
        sink = self.stream(head, sizes) if self.stream is not None and len(sizes) == 1 else None
        incoming = _Incoming(head, sizes, sink)
        if incoming.next_blob():
            return Large(head, incoming.blobs)
        self._incoming = incoming
        return None

    async def _receive_piece(self) -> Large | None:
        """A piece's header is at the front of the buffer: put its bytes where they
        belong, taking what the buffer holds first, then reading the rest straight
        into the value (shards/bigbuf.py: no buffer grown piece by piece, no copy of
        the whole at the end). The large message once this piece completes it."""
        incoming = self._incoming
        if incoming is None:
            raise ValueError("a piece outside a large message")
        buf = self._buf
        size = int.from_bytes(buf[FRAME_HEADER_BYTES:PIECE_HEADER_BYTES], "big")
        if not 0 < size <= incoming.remaining:
            raise ValueError(f"a piece of {size} bytes where {incoming.remaining} remain of a blob")
        del buf[:PIECE_HEADER_BYTES]
        sink = incoming.sink
        fill = incoming.fill
        if buf:
            n = min(len(buf), size)
            if sink is not None:
                taken = bytes(buf[:n])  # a copy of what one read brought: the buffer must stay resizable
                sink(memoryview(taken))
            else:
                assert fill is not None, "a blob without a sink is filled"
                with memoryview(buf) as whole:
                    part = whole[:n]
                    fill.write(part)
                    part.release()
            del buf[:n]
            size -= n
            incoming.remaining -= n
        while size:
            await self._wait(self.sock)
            try:
                if sink is not None:
                    got = self.sock.recv_into(self._chunk, min(len(self._chunk), size))
                else:
                    assert fill is not None, "a blob without a sink is filled"
                    got = self.sock.recv_into(fill.space(), size)
            except BlockingIOError:
                continue
            if not got:
                raise ValueError(f"link closed {incoming.remaining} bytes before the end of a large message's blob")
            if sink is not None:
                sink(self._view[:got])
            else:
                assert fill is not None, "a blob without a sink is filled"
                fill.wrote(got)
            size -= got
            incoming.remaining -= got
        if incoming.remaining or not incoming.next_blob():
            return None
        self._incoming = None
        return Large(incoming.head, incoming.blobs)


class _Incoming:
    """A large message whose blobs are arriving: the blob being filled (or streamed
    to a sink: then `blobs` stays empty), and the bytes it still lacks."""

    __slots__ = ("head", "sizes", "sink", "blobs", "fill", "remaining", "index")

    def __init__(self, head: msgspec.Raw, sizes: list[int], sink: Sink | None) -> None:
        self.head = head
        self.sizes = sizes
        self.sink = sink
        self.blobs: list[bytes] = []
        self.fill: Filling | None = None
        self.remaining = 0
        self.index = 0  # of the next blob to start

    def next_blob(self) -> bool:
        """Done with the current blob (if any): start the next non-empty one. True
        when every blob is in."""
        if self.fill is not None:
            self.blobs.append(self.fill.take())
            self.fill = None
        while self.index < len(self.sizes):
            size = self.sizes[self.index]
            self.index += 1
            if not size:
                if self.sink is None:
                    self.blobs.append(b"")
                continue
            self.remaining = size
            if self.sink is None:
                # Received straight into the bytes it will be (shards/bigbuf.py).
                self.fill = Filling(size)
            return False
        return True


def _split_frames(buf: bytearray) -> list[bytes]:
    """Remove and return every complete ordinary frame body at the front of buf,
    stopping at a large frame's header."""
    frames = []
    pos = 0
    n = len(buf)
    while n - pos >= FRAME_HEADER_BYTES and not buf[pos] & 0x80:
        size = int.from_bytes(buf[pos : pos + FRAME_HEADER_BYTES], "big")
        end = pos + FRAME_HEADER_BYTES + size
        if end > n:
            break
        with memoryview(buf) as view:
            frames.append(bytes(view[pos + FRAME_HEADER_BYTES : end]))  # one copy, not a slice and then bytes
        pos = end
    if pos:
        del buf[:pos]
    return frames


async def send_all(sock: socket.socket, data: bytes | bytearray | memoryview,
                   on_first_byte: Callable[[], None] | None = None) -> None:
    """Write all of data, yielding while the socket is full. OSError propagates."""
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            sent = 0
        if sent and on_first_byte is not None:
            on_first_byte()
            on_first_byte = None
        view = view[sent:]
        if view:
            await trio.lowlevel.wait_writable(sock)


async def send_parts(sock: socket.socket, parts: list[bytes | bytearray | memoryview]) -> None:
    """Write the buffers in order, as one sendmsg where the socket has it (a plain
    one; a TLS link writes them one by one), yielding while the socket is full."""
    if type(sock) is not socket.socket:
        for part in parts:
            await send_all(sock, part)
        return
    views = [memoryview(part) for part in parts if len(part)]
    try:
        while views:
            try:
                sent = sock.sendmsg(views[:IOV_MAX])
            except BlockingIOError:
                sent = 0
            while sent:
                head = views[0]
                if len(head) <= sent:
                    sent -= len(head)
                    views.pop(0).release()
                else:
                    views[0] = head[sent:]
                    head.release()
                    sent = 0
            if views:
                await trio.lowlevel.wait_writable(sock)
    finally:
        for view in views:
            view.release()


def _pieces(blob: bytes | Pieces) -> list[list[memoryview]]:
    """A blob's bytes as pieces of at most PIECE_BYTES, each the views of the blob's
    buffers it spans (a Pieces' header, value and CRLF go as one piece, not three)."""
    pieces: list[list[memoryview]] = []
    piece: list[memoryview] = []
    room = PIECE_BYTES
    parts = blob.parts if isinstance(blob, Pieces) else (blob,)
    for part in parts:
        whole = memoryview(part)
        offset = 0
        while offset < len(whole):
            take = whole[offset : offset + room]
            piece.append(take)
            offset += len(take)
            room -= len(take)
            if not room:
                pieces.append(piece)
                piece, room = [], PIECE_BYTES
    if piece:
        pieces.append(piece)
    return pieces


async def send_batch(sock: socket.socket, batch: list[T], large: list[int],
                     split: Callable[[T], tuple[object, list[bytes]]],
                     on_first_byte: Callable[[], None] | None = None,
                     between: Callable[[], bytes | bytearray | list | None] | None = None,
                     frame_parts: Callable[[list[T]], list] | None = None) -> None:
    """Send a drained batch in order: ordinary messages as one frame, each message
    listed in `large` (indexes, ascending) as a large frame, `split(message)`
    giving its head and blobs. A blob is written from its own buffers, not copied,
    in pieces of PIECE_BYTES, each with its header in one write (the head too,
    with the first: a reply of 100 KB is one write, not seven); after each piece,
    the ordinary frame `between()` gives (what queued meanwhile and may pass the
    large message) is written. With `frame_parts` (frames.encode_frame_parts), an
    ordinary frame is written as the buffers it gives, not encoded into one (replies
    that hold big values)."""
    if not large:
        await _send_frame(sock, batch, frame_parts, on_first_byte)
        return
    start = 0
    for index in large:
        if index > start:
            await _send_frame(sock, batch[start:index], frame_parts, on_first_byte)
            on_first_byte = None
        head, blobs = split(batch[index])
        first: list[bytes | bytearray | memoryview] = [encode_large_head(head, [len(blob) for blob in blobs])]
        if on_first_byte is not None:  # the head alone first: its caller learns when it began
            await send_all(sock, first.pop(), on_first_byte)
            on_first_byte = None
        for blob in blobs:
            for piece in _pieces(blob):
                size = sum(map(len, piece))
                await send_parts(sock, [*first, PIECE_HEADER + size.to_bytes(FRAME_HEADER_BYTES, "big"), *piece])
                first = []
                for view in piece:
                    view.release()
                # send_parts waits only for a full socket: while the reader keeps up,
                # the pieces of a 512 MiB value went out in one turn (~60 ms).
                await trio.lowlevel.checkpoint()
                frame = between() if between is not None else None
                if frame:
                    link_stats.frames_passed_large += 1
                    if isinstance(frame, list):
                        await send_parts(sock, frame)
                    else:
                        await send_all(sock, frame)
        if first:  # a message whose blobs are all empty: its head alone
            await send_all(sock, first.pop())
        start = index + 1
    if start < len(batch):
        await _send_frame(sock, batch[start:], frame_parts)


async def _send_frame(sock: socket.socket, batch: list[T], frame_parts: Callable[[list[T]], list] | None,
                      on_first_byte: Callable[[], None] | None = None) -> None:
    if frame_parts is None:
        await send_all(sock, encode_frame(batch), on_first_byte)
        return
    assert on_first_byte is None, "a frame sent as parts tells nobody when it began"
    await send_parts(sock, frame_parts(batch))
